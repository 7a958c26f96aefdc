#ifndef WD_FUZZ_AMQP_HARNESS_H
#define WD_FUZZ_AMQP_HARNESS_H

/* One warden AMQP server without sockets, for fuzz_amqp, fuzz_tls and
 * fuzz_seedgen: a store in a temporary directory, a wd_amqp_t with no
 * listeners, and connections whose bytes the caller moves through a fake raw
 * connection into warden's own handlers (protocol/driver.h).
 *
 * Store writes finish on the store's writer thread, which hands their results
 * to the connection as posted jobs and wakes its raw connection - which only
 * sets a flag on the fake. So after a round that may have written to the
 * store, the harness waits for the writer to get past a write of its own (the
 * writer runs callbacks in submission order) and then delivers the wake:
 * settlements, egress pumps and closes then run inside the same input, as
 * they would on a real connection.
 *
 * Single-threaded: one connection at a time. */

#include <proton/connection_driver.h>
#include <proton/raw_connection.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/amqp.h"

/* Who the connection logs in as; the fuzz input's first byte picks it. */
typedef enum {
  FH_RAW = 0,  /* nobody: the input starts at the first byte of the connection */
  FH_SERVICE,  /* PLAIN "svc" with its secret, every scope */
  FH_DEVICE,   /* PLAIN "dev-1" with a SAS token; may reach dev-2 through group grp-a */
  FH_PEER,     /* PLAIN "dev-2" with a SAS token; member of grp-a, no peers */
  FH_N_MODES
} fh_mode_t;

#define FH_HOSTNAME "localhost"
#define FH_SERVICE_NAME "svc"
#define FH_SERVICE_SECRET "svc-secret-for-fuzzing"
#define FH_DEVICE_ID "dev-1"
#define FH_PEER_ID "dev-2"
#define FH_GROUP "grp-a"
#define FH_CONTAINER "fuzz-client"

/* Opens the store and the server, registers the devices and builds the login
 * prefixes. Idempotent; registers fh_fini with atexit. Returns 0 or < 0. */
int fh_init(void);

/* Closes everything and removes the temporary directory. */
void fh_fini(void);

/* The server, for a harness that serves connections its own way (fuzz_tls). */
wd_amqp_t *fh_amqp(void);

/* Returns once the store writer has completed every write submitted so far,
 * and so has posted their jobs to their connections. */
void fh_store_barrier(void);

/* The user and password a client of `mode` logs in with (borrowed; valid
 * until fh_fini). NULL for FH_RAW. */
const char *fh_user(fh_mode_t mode);
const char *fh_password(fh_mode_t mode);

/* The key every registered device has (WD_KEY_BYTES). dev-3 is disabled. */
const uint8_t *fh_device_key(void);

/* What a client of `mode` writes before its first AMQP frame: the SASL
 * header, its sasl-init, and the AMQP header. *sasl_len is where the AMQP
 * header starts. NULL for FH_RAW. */
const uint8_t *fh_prefix(fh_mode_t mode, size_t *len, size_t *sasl_len);

/* The raw connection warden is given: Proton's is replaced at link time
 * (-Wl,--wrap, see CMakeLists.txt) by this fake, so the harness decides how
 * bytes arrive, when warden's writes complete and how the connection ends,
 * and delivers the raw connection's events itself. One at a time. */
#define FH_WRITE_SLOTS 16 /* write buffers the fake takes at once */
typedef struct {
  void *context;
  pn_raw_buffer_t rbuf; /* the read buffer warden gave */
  bool rbuf_given, rbuf_filled;
  pn_raw_buffer_t writes[FH_WRITE_SLOTS]; /* handed to us, not yet written */
  size_t n_writes;
  pn_raw_buffer_t written[FH_WRITE_SLOTS]; /* written, for warden to take back */
  size_t n_written;
  bool read_close_asked, write_close_asked;
  bool read_closed, write_closed; /* CLOSED_READ / CLOSED_WRITE delivered */
  atomic_bool woken;
} fh_raw_t;

/* The live one, from warden's pn_raw_connection() until fh_raw_disconnect. */
extern fh_raw_t *fh_raw;

/* Accepts a connection (plain or TLS) and delivers CONNECTED. */
void fh_raw_accept(bool tls);

/* Delivers one event to warden. */
void fh_raw_event(pn_event_type_t type);

/* Delivers what warden asked for, as Proton would: wakes, and the close of a
 * half (the write half once everything handed out before was written).
 * Returns whether it delivered anything. */
bool fh_raw_answer(void);

/* Fills warden's read buffers from p, `chunk` bytes at most per read (0: as
 * much as a buffer holds), a READ event each. Returns the bytes taken: fewer
 * than n once warden reads no more. */
size_t fh_raw_deliver(const uint8_t *p, size_t n, size_t chunk);

/* Writes everything warden handed out to sink (NULL: discarded), then
 * delivers WRITTEN. Returns whether there was anything. */
typedef void (*fh_sink_fn)(void *arg, const uint8_t *data, size_t len);
bool fh_raw_complete_writes(fh_sink_fn sink, void *arg);

/* The peer is gone: delivers the closed halves, DRAIN_BUFFERS and
 * DISCONNECTED, checks that warden took back every buffer and left nothing
 * in its registry, and frees the fake. */
void fh_raw_disconnect(void);

/* One accepted plain connection, on fh_raw. */
typedef struct {
  int barriers; /* store round trips so far; bounded per connection */
} fh_server_t;

/* Accepts a plain connection. Returns 0 or < 0. */
int fh_server_start(fh_server_t *s);

/* Answers warden until it asks for nothing more, letting store work come
 * back as posted jobs in between. */
void fh_server_events(fh_server_t *s);

/* Offers bytes to warden; returns how many it took (0: it reads no more). */
size_t fh_server_read(fh_server_t *s, const uint8_t *data, size_t len);

/* Takes what the server wrote. sink may be NULL (discarded). */
void fh_server_write(fh_server_t *s, fh_sink_fn sink, void *arg);

/* True once warden has closed its write side: it will say nothing more. */
bool fh_server_write_closed(const fh_server_t *s);

/* The peer goes away (fh_raw_disconnect). */
void fh_server_finish(fh_server_t *s);

/* Serves one whole connection: the prefix of `mode`, then `data` in pieces,
 * handling events after each piece, then a disconnect. Pieces are `chunk`
 * bytes, or with FH_FRAMES one frame (or protocol header) each - as a client
 * that waits for answers sends them, so a recorded session replays as it ran. */
#define FH_FRAMES 0
void fh_serve(fh_mode_t mode, const uint8_t *data, size_t len, size_t chunk);

/* The length of the protocol header or frame at p, as its size field says
 * (a size that cannot be right: all `left` bytes). */
size_t fh_frame_len(const uint8_t *p, size_t left);

/* A Proton client connected to a server connection in memory, recording
 * every byte it sends: how the login prefixes and the seed corpus are made
 * without encoding frames by hand. */
typedef struct {
  pn_connection_driver_t c; /* the client; use c.connection to open sessions and links */
  fh_server_t s;
  uint8_t *sent; /* every byte the client wrote, owned */
  size_t sent_len, sent_cap;
} fh_loop_t;

/* Starts a client that logs in with `mechs` (e.g. "PLAIN") as user/password,
 * or without SASL when mechs is NULL, and opens its connection. Returns 0 or < 0. */
int fh_loop_start(fh_loop_t *l, const char *mechs, const char *user, const char *password);

/* Moves bytes both ways and handles both sides' events until neither moves. */
void fh_loop_pump(fh_loop_t *l);

/* Disconnects and frees both sides; l->sent stays for the caller to free. */
void fh_loop_finish(fh_loop_t *l);

#endif

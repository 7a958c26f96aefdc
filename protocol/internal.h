#ifndef WD_PROTOCOL_INTERNAL_H
#define WD_PROTOCOL_INTERNAL_H

/* Shared between the files of protocol/ only. */

#include <proton/codec.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <openssl/ssl.h>
#include <proton/proactor.h>
#include <proton/raw_connection.h>
#include <proton/transport.h>
#include <pthread.h>
#include <stdatomic.h>

#include "gateway/base/metrics.h"
#include "protocol/address.h"
#include "protocol/amqp.h"
#include "protocol/engine.h"

typedef struct wd_conn wd_conn_t;
typedef struct wd_link_ctx wd_link_ctx_t;

/* Work handed to a connection from another thread. It runs on the
 * connection's proactor batch with discard = false, or - when the connection
 * is gone or closing - with c = NULL and discard = true, on whatever thread
 * noticed. Either way exactly once. */
typedef void (*wd_job_fn)(wd_conn_t *c, void *arg, bool discard);

typedef struct wd_job {
  struct wd_job *next;
  wd_job_fn fn;
  void *arg;
} wd_job_t;

/* Who is on the other end, fixed when SASL succeeds. */
typedef struct {
  bool authenticated;
  bool is_device;
  char id[WD_ID_MAX + 1]; /* device id or service name */
  unsigned scopes;
  uint64_t device_generation; /* the registry generation the credential was checked against */
  int64_t token_expiry_s;     /* 0 when the credential does not expire */
  const char *mech;           /* static string */
} wd_identity_t;

/* What warden knows of one source address: for per-address limits. */
typedef struct wd_peer_addr {
  struct wd_peer_addr *next;
  uint32_t conns;         /* live connections */
  uint32_t failures;      /* authentication failures in the current window */
  int64_t window_start_ms;
  int64_t blocked_until_ms;
  char ip[64];
} wd_peer_addr_t;

struct wd_conn {
  uint64_t id;
  wd_amqp_t *amqp;
  pn_connection_t *pn;      /* a service's: Proton's engine, once it has logged in; NULL before */
  wd_engine_t *engine;      /* a device's: warden's own engine, once it has logged in (decision 8) */
  wd_link_ctx_t *links;     /* a device's link contexts: attached, or detached and still held by store writes */
  pn_raw_connection_t *raw; /* its socket (stream.c), woken for posted jobs */
  _Atomic int64_t tick_due_ms; /* when the engine's heartbeat or idle deadline next needs a tick; 0 none */
  _Atomic bool tick_on_time;   /* the peer's idle time-out is too short for the once-a-second housekeeping */
  bool tls;
  char remote[64];
  wd_identity_t who;
  _Atomic int64_t last_seen_ms;

  /* Under amqp->conns_lock. */
  wd_peer_addr_t *peer;       /* its source address, once bound */
  int64_t accepted_mono_ms;   /* SASL must finish within sasl_timeout of this */
  bool admitted;              /* authenticated and opened */
  wd_conn_t *throttled_next;  /* list of device connections waiting for their rate to allow credit */
  wd_conn_t *idle_next;       /* list of connections whose first idle deadline warden watches */
  wd_conn_t **idle_pprev;
  bool idle_watched;
  int64_t idle_deadline_ms;   /* monotonic */
  bool throttled;
  wd_job_t *jobs_head, *jobs_tail;
  bool gone;                  /* transport closed: posts run discarded */
  wd_conn_t *by_id_next;      /* hash chain by id */
  wd_conn_t *all_next;        /* list of every connection, whose engine ticks warden drives */
  wd_conn_t **all_pprev;
  wd_conn_t *by_device_next;  /* hash chain by device id, when is_device and registered */
  bool in_device_index;
  wd_conn_t *consumer_next;   /* list of connections that read telemetry */
  bool in_consumer_list;
  _Atomic bool pump_pending;  /* a pump job is queued */
  bool has_egress;            /* a device receiving its queue; under conns_lock */
  wd_conn_t *closing_next;    /* list of connections we closed, awaiting the peer */
  bool in_closing_list;
  int64_t close_deadline_ms;  /* monotonic */

  /* Owned by the connection's batches. */
  uint64_t idle_frames;       /* frames read when the idle watch began */
  double rate_tokens;         /* messages the device may still be granted (device_rate) */
  int64_t rate_refill_ms;
  _Atomic int64_t *gauge; /* the connections gauge it counts in, once open */
  int n_links;
  bool closing;
};

/* What a link is for; stored as the link's context. It outlives a detached
 * link while store writes that will touch it are pending. */
struct wd_link_ctx {
  wd_address_t addr;
  wd_conn_t *conn;
  pn_link_t *pn;            /* a service's link (Proton) */
  wd_engine_link_t *lean;   /* a device's link (warden's engine); NULL once detached */
  wd_link_ctx_t *next;      /* in conn->links (devices) */
  int pending_commits;      /* store writes whose completion will touch this link */
  bool closed;              /* detached: free when pending_commits reaches 0 */
  bool counted;             /* counts against the connection's max_links */
  wd_store_log_t *log;      /* inbound: the log written (NULL: per message); outbound: the log read */
  wd_store_group_t *group;  /* outbound log consumers */
  bool egress_ready;        /* device egress: recovered, may deliver */
  bool window_blocked;      /* device egress: the next message does not fit the device's session window; waits for its next flow */
  uint64_t *inflight;       /* device egress: sequence numbers sent (or being marked), not yet settled */
  int marking;              /* device egress: marks in flight, each to be sent when it commits */
  size_t n_inflight, cap_inflight;
  uint64_t *awaiting;       /* device egress: sent, and no outcome from the device yet */
  size_t n_awaiting, cap_awaiting;
};

/* A delivery warden received, to be settled once its message is stored. */
typedef struct {
  pn_delivery_t *pn;         /* a service's (Proton); NULL otherwise */
  wd_engine_delivery_t lean; /* a device's (warden's engine) */
  bool presettled;           /* the peer wants no outcome */
} wd_inbound_t;

struct wd_amqp {
  wd_amqp_config_t cfg; /* strings and services owned (deep copy) */
  wd_store_t *store;
  pn_proactor_t *proactor;
  pn_listener_t *listeners[2];
  bool listener_tls[2];
  SSL_CTX *ssl_ctx;       /* TLS listener only */
  BIO_METHOD *bio_method;

  pthread_mutex_t listen_lock;
  pthread_cond_t listen_cond;
  int listeners_pending;
  int listen_error;

  _Atomic bool stopping;
  _Atomic int inflight_commits; /* telemetry handed to the store, not yet settled */
  _Atomic int streams;          /* raw connections accepted and not yet disconnected (stream.c) */

  pthread_mutex_t conns_lock;
  wd_conn_t **by_id;
  wd_conn_t **by_device;
  size_t n_buckets;
  size_t n_conns;
  uint64_t next_conn_id;
  wd_conn_t *consumers;
  wd_conn_t *closing;
  wd_conn_t *throttled;
  wd_conn_t *idle_watch;
  wd_conn_t *all; /* every connection, for the 1 s tick (cheaper than the hash buckets) */
  wd_peer_addr_t **peers; /* by source address, n_buckets */

  /* The proactor's one timeout: housekeeping once a second, and sooner when an
     engine's heartbeat or idle deadline is due sooner. */
  pthread_mutex_t timer_lock;
  _Atomic int64_t timer_due_ms;  /* monotonic; when the timeout is set to fire */
  int64_t housekeeping_due_ms;   /* the timeout handler's (one at a time) */
  bool pressure; /* the store's pressure at the last tick; the timer's (one at a time) */

  pthread_mutex_t waiters_lock; /* REST requests waiting for a device's response */
  struct wd_waiter *waiters;
  bool waits_ended; /* under waiters_lock */
};

/* connections.c */
int wd_amqp__conns_init(wd_amqp_t *a);
void wd_amqp__conns_fini(wd_amqp_t *a);
wd_conn_t *wd_amqp__conn_new(wd_amqp_t *a, pn_raw_connection_t *raw);
/* Registers the device connection, closing (by post) any older one of the same device. */
void wd_amqp__conn_index_device(wd_conn_t *c);
void wd_amqp__conn_add_consumer(wd_conn_t *c);
/* Called on PN_TRANSPORT_CLOSED: unregisters, then runs what was posted with discard. */
void wd_amqp__conn_gone(wd_conn_t *c);
void wd_amqp__conn_free(wd_conn_t *c);
size_t wd_amqp__conn_count(wd_amqp_t *a);
/* Hands fn(arg) to connection `id`. Thread-safe. Runs fn exactly once (see wd_job_fn). */
void wd_amqp__post(wd_amqp_t *a, uint64_t conn_id, wd_job_fn fn, void *arg);
/* Runs every job posted to c; called on PN_CONNECTION_WAKE. */
void wd_amqp__conn_run_jobs(wd_conn_t *c);
/* Posts a pump to each connection that reads a log. */
void wd_amqp__post_consumers(wd_amqp_t *a);
/* Posts a pump to the device's connection if it receives its queue. */
void wd_amqp__post_device(wd_amqp_t *a, const char *device_id);
/* The same for every device connection that receives its queue. */
void wd_amqp__post_devices(wd_amqp_t *a);
/* Posts fn to every connection. */
void wd_amqp__post_all(wd_amqp_t *a, wd_job_fn fn);
/* Posts fn to each device connection whose token expired by now_s. */
void wd_amqp__post_expired(wd_amqp_t *a, int64_t now_s, wd_job_fn fn);

/* Counts c against its source address. Returns WD_ERR_DENIED when the
 * address is blocked for failed logins (SASL then refuses it), WD_ERR_LIMIT
 * when it has too many connections; c is counted either way
 * (wd_amqp__conn_gone uncounts it). */
int wd_amqp__conn_bind(wd_conn_t *c, const char *ip);
/* Records a failed login from ip; enough of them block the address. Thread-safe. */
void wd_amqp__auth_failed(wd_amqp_t *a, const char *ip);
/* True while ip is blocked for failed logins. Thread-safe. */
bool wd_amqp__addr_blocked(wd_amqp_t *a, const char *ip);
/* Marks c admitted (authenticated and opened). */
void wd_amqp__conn_admitted(wd_conn_t *c);
/* Posts fn to connections still not admitted sasl_timeout after accept, and
 * forgets idle address entries. */
void wd_amqp__post_unadmitted(wd_amqp_t *a, int64_t now_mono_ms, wd_job_fn fn);

/* Wakes every connection whose tick_due_ms has come; returns the earliest one
   still to come of those whose ticks must be on time (INT64_MAX when none). */
int64_t wd_amqp__wake_ticks_due(wd_amqp_t *a, int64_t now_mono_ms);

/* Watches c until deadline: wd_amqp__post_idle_due then posts fn to it once. */
void wd_amqp__conn_watch_idle(wd_conn_t *c, int64_t deadline_mono_ms);
void wd_amqp__post_idle_due(wd_amqp_t *a, int64_t now_mono_ms, wd_job_fn fn);

/* Parks c until its rate allows credit again; wd_amqp__post_throttled posts fn to each parked one. */
void wd_amqp__conn_throttle(wd_conn_t *c);
void wd_amqp__post_throttled(wd_amqp_t *a, wd_job_fn fn);

/* Remembers that c was closed by us; past the deadline wd_amqp__post_overdue posts fn to it. */
void wd_amqp__conn_closing(wd_conn_t *c, int64_t deadline_mono_ms);
void wd_amqp__post_overdue(wd_amqp_t *a, int64_t now_mono_ms, wd_job_fn fn);

/* Closes the connection with a condition and logs why. On the connection's batch. */
void wd_amqp__conn_close_PT(wd_conn_t *c, const char *condition, const char *description);

/* sasl.c: the login, before a connection has an engine. */
typedef struct wd_sasl wd_sasl_t;
typedef enum { WD_SASL_MORE, WD_SASL_DONE, WD_SASL_FAILED } wd_sasl_status_t;
/* Sends bytes to the peer; < 0 when it cannot. */
typedef int (*wd_sasl_send_fn)(void *arg, const uint8_t *p, size_t n);
/* ip: the peer's address without port (per-address blocking); remote: with it, for logs. */
wd_sasl_t *wd_amqp__sasl_new(wd_amqp_t *a, bool tls, const char *ip, const char *remote);
void wd_amqp__sasl_free(wd_sasl_t *s);
/* The SHA-256 thumbprint (lowercase hex) of the verified client certificate: offers EXTERNAL. */
void wd_amqp__sasl_set_client_cert(wd_sasl_t *s, const char *thumbprint);
/* Reads the plaintext the peer sent so far (p, n) and answers through send.
 * *used: the bytes it is done with (whole frames). MORE: send the rest again
 * with what follows. DONE: *who is the peer, and the bytes after *used belong
 * to the AMQP layer. FAILED: close once the answer is sent. */
wd_sasl_status_t wd_amqp__sasl_read(wd_sasl_t *s, const uint8_t *p, size_t n, size_t *used, wd_sasl_send_fn send,
                                    void *arg, wd_identity_t *who);

/* logs.c: device messages into logs; services reading logs. */
/* A device's link on telemetry or inquiries writes its log. */
void wd_amqp__log_open_PT(wd_link_ctx_t *lc);
/* A device's message into its link's log (or, for a response, the log its command names). msg: borrowed. */
void wd_amqp__log_message_PT(wd_link_ctx_t *lc, const wd_inbound_t *d, const uint8_t *msg, size_t n);
int wd_amqp__log_outbound_open_PT(wd_conn_t *c, pn_link_t *link, wd_link_ctx_t *lc);
void wd_amqp__log_pump_PT(wd_conn_t *c, pn_link_t *link);
void wd_amqp__log_outbound_update_PT(pn_link_t *link, pn_delivery_t *d);
void wd_amqp__log_release_unsettled_PT(pn_link_t *link);
void wd_amqp__log_appended(void *arg, wd_store_log_t *log);

/* commands.c: enqueueing, and delivering device queues. */
/* A message for a device's queue (or a group's), from a service or a permitted device. raw: borrowed. */
void wd_amqp__enqueue_PT(wd_link_ctx_t *lc, const wd_inbound_t *d, const uint8_t *raw, size_t n);
/* A device receiving its queue (warden's engine). */
void wd_amqp__egress_open_PT(wd_link_ctx_t *lc);
void wd_amqp__egress_pump_PT(wd_conn_t *c, wd_link_ctx_t *lc);
void wd_amqp__egress_outcome_PT(wd_link_ctx_t *lc, wd_engine_delivery_t d, const wd_engine_outcome_t *o);
/* The link or connection is gone: deliveries without an outcome count as failed. */
void wd_amqp__egress_lost_PT(wd_link_ctx_t *lc);
void wd_amqp__codec_install(wd_amqp_t *a, uint32_t max_delivery_count);
/* Posts an egress pump to the device's connection, if it has one. Thread-safe. */
void wd_amqp__notify_device(wd_amqp_t *a, const char *device_id);
/* Posts an egress pump to every device connection that receives its queue. Thread-safe. */
void wd_amqp__notify_all_devices(wd_amqp_t *a);

/* The text form of a message-id or correlation-id, the key of a command's
 * status: strings as they are, ulongs in decimal, UUIDs canonical, binary in hex. */
#define WD_MSGID_KEY_MAX 1024
int wd_amqp__msgid_key(pn_msgid_t id, char *out, size_t cap);

/* The metric label of an address. */
wd_metric_address_t wd_amqp__metric_address(wd_addr_kind_t kind);

/* Delivery tags of outbound messages are their store sequence numbers, 8 bytes big-endian. */
void wd_amqp__seq_tag(uint64_t seq, uint8_t tag[8]);
uint64_t wd_amqp__tag_seq(pn_delivery_t *d);

/* A posted job that pumps every outbound link of the connection. */
void wd_amqp__pump_job(wd_conn_t *c, void *arg, bool discard);

/* REST waits (commands.c): a device's response, a command's failure, or the deadline ends them. */
void wd_amqp__waiter_respond(wd_amqp_t *a, const char *device_id, const char *message_id, const void *body,
                             size_t len, const char *content_type);
void wd_amqp__waiters_expire(wd_amqp_t *a, int64_t now_mono_ms);
void wd_amqp__waiters_fini(wd_amqp_t *a);

/* Reads a complete incoming delivery of a service into a buffer, enforcing the
 * size limit. Returns the buffer (owned) or NULL after settling/closing as appropriate. */
uint8_t *wd_amqp__recv_PT(wd_link_ctx_t *lc, pn_delivery_t *d, size_t *len);
/* Logs a message refused for its size. */
void wd_amqp__oversize_PT(wd_link_ctx_t *lc, size_t len);
/* Settles a received delivery: accepted when condition is NULL, else
 * rejected with it; one the peer pre-settled is just let go. */
void wd_amqp__inbound_done_PT(wd_conn_t *c, const wd_inbound_t *d, const char *condition, const char *description);
/* Grants credit so that credit plus commits pending stays near WD_CREDIT_WINDOW. */
void wd_amqp__top_up_PT(wd_link_ctx_t *lc);
/* Detaches a link that broke a rule; what it still has in flight is settled by the usual paths. */
void wd_amqp__link_end_PT(wd_link_ctx_t *lc, const char *condition, const char *description);
/* A store write that held lc is done. Returns true when that freed it (its link had gone). */
bool wd_amqp__link_unpin_PT(wd_link_ctx_t *lc);

/* amqp.c */
/* Registers a connection the moment its socket is accepted and counts it
 * against its source address (ip receives the address, 64 bytes). Sets
 * c->closing when the address has too many connections: the caller closes
 * it. NULL when out of memory. */
wd_conn_t *wd_amqp__conn_accepted(wd_amqp_t *a, pn_raw_connection_t *raw, bool tls, char *ip);
/* The peer logged in as c->who: sets up its engine's connection and transport (limits). */
void wd_amqp__engine_start(wd_conn_t *c, pn_connection_t *pc, pn_transport_t *t);
/* Handles one event of the proactor or of a connection's engine. Returns false when this thread should stop. */
bool wd_amqp__handle(wd_amqp_t *a, pn_event_t *e);
/* An engine needs a tick at due (monotonic ms; after storing it in its tick_due_ms): brings the proactor's
   timeout forward if it would fire later. Thread-safe. */
void wd_amqp__tick_needed(wd_amqp_t *a, int64_t due);

/* stream.c */
int wd_amqp__tls_init(wd_amqp_t *a);
void wd_amqp__tls_fini(wd_amqp_t *a);
/* Accepts a connection on listener l (NULL: a test's, see driver.h). */
void wd_amqp__stream_accept(wd_amqp_t *a, pn_listener_t *l, bool tls);
void wd_amqp__stream_event(pn_event_type_t type, pn_raw_connection_t *raw);
/* Sends bytes to the peer of c (through TLS on the TLS port); < 0 when it cannot. */
int wd_amqp__stream_write_PT(wd_conn_t *c, const uint8_t *p, size_t n);
/* Stops reading and writing at once: no close frame, no waiting for the peer. */
void wd_amqp__conn_abort_PT(wd_conn_t *c);

/* Frees a link's context (NULL: nothing); release also lets go of a service's Proton link. */
void wd_amqp__link_ctx_free(wd_link_ctx_t *lc);
void wd_amqp__link_ctx_release_PT(wd_link_ctx_t *lc);
void wd_amqp__link_refuse_PT(pn_link_t *link, const char *condition, const char *description);
/* Decides an attach by the address rules, the registry and max_links.
 * Returns a new context, counted against the connection; or NULL with the
 * condition and reason to refuse it with. */
wd_link_ctx_t *wd_amqp__link_decide_PT(wd_conn_t *c, bool inbound, const char *address, const char **condition,
                                       const char **why);
/* The link no longer counts against max_links (once, whoever detached first). */
void wd_amqp__link_uncount_PT(wd_link_ctx_t *lc);
/* The peer's open: admits the connection or closes it. *local_idle: the idle time-out warden will keep. */
bool wd_amqp__conn_open_PT(wd_conn_t *c, uint32_t remote_idle, uint32_t *local_idle);
/* An admitted connection's end: gauges and presence. */
void wd_amqp__conn_opened_gone_PT(wd_conn_t *c);

/* device.c: a device's connection on warden's own engine. */
/* Gives the device's connection its engine (c->engine); NULL when out of memory. */
wd_engine_t *wd_amqp__device_engine_new(wd_conn_t *c);
/* The connection's socket is gone: detaches every link, frees the engine. */
void wd_amqp__device_gone_PT(wd_conn_t *c);

/* Messages a link may have outstanding (credit plus commits pending). With
 * commits of 0.4-1 ms that is still 100 000 msg/s for one link; a larger window
 * only lengthens the queue at the store: 10 devices x 100 unsettled settled at
 * p99 2.6-3.5 ms and 258-322k msg/s with 96, against 5.7-7.1 ms and 241-281k
 * msg/s with 256 (same machine, runs alternated). */
#define WD_CREDIT_WINDOW 96

#endif

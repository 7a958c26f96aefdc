/* See amqp_harness.h. Everything here runs on the fuzzer's thread except the
 * store callback, which runs on the store's writer thread and only signals. */

#include "amqp_harness.h"

#include <errno.h>
#include <proton/connection.h>
#include <proton/event.h>
#include <proton/object.h>
#include <proton/sasl.h>
#include <proton/transport.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fuzz_util.h"
#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "protocol/amqp.h"
#include "protocol/driver.h"
#include "protocol/sas.h"
#include "store/store.h"

#define STORE_MAX_SIZE (UINT64_C(256) << 20)
#define BARRIERS_MAX 64  /* store round trips per connection */
#define SETTLE_ROUNDS 2  /* a posted job may cause more store work: follow it this far */
#define WRITER_TIMEOUT_S 30

static const char barrier_device[] = "fuzz-barrier";
static const uint8_t device_key[WD_KEY_BYTES] = "fuzzing-key-0123456789abcdef-012";
static const uint8_t sasl_header[8] = {'A', 'M', 'Q', 'P', 3, 1, 0, 0};
static const uint8_t amqp_header[8] = {'A', 'M', 'Q', 'P', 0, 1, 0, 0};

static struct {
  bool ready;
  char dir[256];
  wd_store_t *store;
  wd_amqp_t *amqp;
  char *token[FH_N_MODES];
  uint8_t *prefix[FH_N_MODES];
  size_t prefix_len[FH_N_MODES], sasl_len[FH_N_MODES];

  pthread_mutex_t lock; /* the store callback's result */
  pthread_cond_t cond;
  bool done;
  int rc;
} H = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* ------------------------------------------------------------------- store */

static void on_device_written(void *ctx, int rc, const wd_device_t *after) {
  (void)ctx;
  (void)after;
  pthread_mutex_lock(&H.lock);
  H.rc = rc;
  H.done = true;
  pthread_cond_signal(&H.cond);
  pthread_mutex_unlock(&H.lock);
}

/* Submits a registry change and waits for its commit. The writer completes
 * writes in submission order, so every write submitted before this one has
 * completed - and posted its job to its connection - by the time it returns. */
static int device_write_wait(wd_device_op_t op, const wd_device_t *d) {
  pthread_mutex_lock(&H.lock);
  H.done = false;
  pthread_mutex_unlock(&H.lock);
  int rc = wd_store_device_write(H.store, op, d, on_device_written, NULL);
  if (rc < 0) return rc;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += WRITER_TIMEOUT_S;
  pthread_mutex_lock(&H.lock);
  while (!H.done && pthread_cond_timedwait(&H.cond, &H.lock, &deadline) != ETIMEDOUT) {
  }
  bool done = H.done;
  rc = H.rc;
  pthread_mutex_unlock(&H.lock);
  if (!done) {
    fprintf(stderr, "fuzz harness: the store writer did not complete a write in %d s\n", WRITER_TIMEOUT_S);
    abort();
  }
  return rc;
}

static int add_device(const char *id, const char *groups, const char *peers, bool has_key) {
  wd_device_t *d = wd_device_new();
  if (!d) return WD_ERR_NOMEM;
  snprintf(d->id, sizeof d->id, "%s", id);
  free(d->groups);
  free(d->peers);
  d->groups = strdup(groups);
  d->peers = strdup(peers);
  d->has_key = has_key;
  if (has_key) memcpy(d->key, device_key, sizeof d->key);
  int rc = d->groups && d->peers ? device_write_wait(WD_DEVICE_CREATE, d) : WD_ERR_NOMEM;
  wd_device_free(d);
  return rc;
}

void fh_store_barrier(void) {
  wd_device_t *d = wd_device_new();
  if (!d) abort();
  snprintf(d->id, sizeof d->id, "%s", barrier_device);
  device_write_wait(WD_DEVICE_ENABLE, d);
  wd_device_free(d);
}

/* ------------------------------------------------------ the raw connection */

fh_raw_t *fh_raw;

pn_raw_connection_t *__wrap_pn_raw_connection(void);
void __wrap_pn_listener_raw_accept(pn_listener_t *l, pn_raw_connection_t *raw);
void __wrap_pn_raw_connection_set_context(pn_raw_connection_t *raw, void *context);
void *__wrap_pn_raw_connection_get_context(pn_raw_connection_t *raw);
const struct pn_netaddr_t *__wrap_pn_raw_connection_remote_addr(pn_raw_connection_t *raw);
size_t __wrap_pn_raw_connection_give_read_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t const *b, size_t n);
size_t __wrap_pn_raw_connection_take_read_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t *b, size_t n);
size_t __wrap_pn_raw_connection_write_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t const *b, size_t n);
size_t __wrap_pn_raw_connection_take_written_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t *b, size_t n);
size_t __wrap_pn_raw_connection_write_buffers_capacity(pn_raw_connection_t *raw);
void __wrap_pn_raw_connection_close(pn_raw_connection_t *raw);
void __wrap_pn_raw_connection_read_close(pn_raw_connection_t *raw);
void __wrap_pn_raw_connection_write_close(pn_raw_connection_t *raw);
void __wrap_pn_raw_connection_wake(pn_raw_connection_t *raw);

static fh_raw_t *of(pn_raw_connection_t *raw) {
  CHECK((fh_raw_t *)raw == fh_raw && fh_raw, "warden used a raw connection that is gone");
  return fh_raw;
}

pn_raw_connection_t *__wrap_pn_raw_connection(void) {
  CHECK(!fh_raw, "a second raw connection while one is live");
  fh_raw = calloc(1, sizeof *fh_raw);
  return (pn_raw_connection_t *)fh_raw;
}

void __wrap_pn_listener_raw_accept(pn_listener_t *l, pn_raw_connection_t *raw) {
  (void)l;
  (void)of(raw);
}

void __wrap_pn_raw_connection_set_context(pn_raw_connection_t *raw, void *context) { of(raw)->context = context; }

void *__wrap_pn_raw_connection_get_context(pn_raw_connection_t *raw) { return of(raw)->context; }

const struct pn_netaddr_t *__wrap_pn_raw_connection_remote_addr(pn_raw_connection_t *raw) {
  (void)of(raw);
  return NULL;
}

size_t __wrap_pn_raw_connection_give_read_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t const *b, size_t n) {
  fh_raw_t *f = of(raw);
  if (n == 0 || f->rbuf_given || f->read_close_asked) return 0;
  CHECK(b[0].bytes && b[0].capacity > 0, "warden gave an empty read buffer");
  f->rbuf = b[0];
  f->rbuf.size = f->rbuf.offset = 0;
  f->rbuf_given = true;
  f->rbuf_filled = false;
  return 1;
}

/* Read buffers come back filled after a read, or unread once reading has ended. */
size_t __wrap_pn_raw_connection_take_read_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t *b, size_t n) {
  fh_raw_t *f = of(raw);
  if (n == 0 || !f->rbuf_given || !(f->rbuf_filled || f->read_closed)) return 0;
  b[0] = f->rbuf;
  f->rbuf_given = f->rbuf_filled = false;
  return 1;
}

size_t __wrap_pn_raw_connection_write_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t const *b, size_t n) {
  fh_raw_t *f = of(raw);
  CHECK(!f->write_close_asked, "warden wrote after closing its side");
  size_t took = 0;
  for (; took < n && f->n_writes < FH_WRITE_SLOTS; took++) f->writes[f->n_writes++] = b[took];
  return took;
}

size_t __wrap_pn_raw_connection_take_written_buffers(pn_raw_connection_t *raw, pn_raw_buffer_t *b, size_t n) {
  fh_raw_t *f = of(raw);
  size_t k = n < f->n_written ? n : f->n_written;
  memcpy(b, f->written, k * sizeof *b);
  memmove(f->written, f->written + k, (f->n_written - k) * sizeof *b);
  f->n_written -= k;
  return k;
}

size_t __wrap_pn_raw_connection_write_buffers_capacity(pn_raw_connection_t *raw) {
  fh_raw_t *f = of(raw);
  return f->write_close_asked ? 0 : FH_WRITE_SLOTS - f->n_writes;
}

void __wrap_pn_raw_connection_read_close(pn_raw_connection_t *raw) { of(raw)->read_close_asked = true; }

void __wrap_pn_raw_connection_write_close(pn_raw_connection_t *raw) { of(raw)->write_close_asked = true; }

void __wrap_pn_raw_connection_close(pn_raw_connection_t *raw) {
  fh_raw_t *f = of(raw);
  f->read_close_asked = f->write_close_asked = true;
}

/* Called from the store's writer thread, under warden's registry lock. */
void __wrap_pn_raw_connection_wake(pn_raw_connection_t *raw) { atomic_store(&((fh_raw_t *)raw)->woken, true); }

void fh_raw_event(pn_event_type_t type) { wd_amqp_driver_event((pn_raw_connection_t *)fh_raw, type); }

void fh_raw_accept(bool tls) {
  wd_amqp_driver_accept(H.amqp, tls);
  CHECK(fh_raw && fh_raw->context, "warden did not accept the connection");
  fh_raw_event(PN_RAW_CONNECTION_CONNECTED);
}

bool fh_raw_answer(void) {
  bool delivered = false;
  if (atomic_exchange(&fh_raw->woken, false)) {
    fh_raw_event(PN_RAW_CONNECTION_WAKE);
    delivered = true;
  }
  if (fh_raw->read_close_asked && !fh_raw->read_closed) {
    fh_raw->read_closed = true;
    fh_raw_event(PN_RAW_CONNECTION_CLOSED_READ);
    delivered = true;
  }
  if (fh_raw->write_close_asked && !fh_raw->write_closed && fh_raw->n_writes == 0) {
    fh_raw->write_closed = true;
    fh_raw_event(PN_RAW_CONNECTION_CLOSED_WRITE);
    delivered = true;
  }
  return delivered;
}

size_t fh_raw_deliver(const uint8_t *p, size_t n, size_t chunk) {
  size_t done = 0;
  while (done < n && fh_raw->rbuf_given && !fh_raw->read_close_asked && !fh_raw->read_closed) {
    size_t k = fh_raw->rbuf.capacity;
    if (chunk && chunk < k) k = chunk;
    if (k > n - done) k = n - done;
    memcpy(fh_raw->rbuf.bytes, p + done, k);
    fh_raw->rbuf.size = (uint32_t)k;
    fh_raw->rbuf_filled = true;
    done += k;
    fh_raw_event(PN_RAW_CONNECTION_READ);
  }
  return done;
}

bool fh_raw_complete_writes(fh_sink_fn sink, void *arg) {
  if (fh_raw->n_writes == 0) return false;
  for (size_t i = 0; i < fh_raw->n_writes; i++) {
    const pn_raw_buffer_t *b = &fh_raw->writes[i];
    CHECK(b->offset + b->size <= b->capacity, "a write buffer past its capacity");
    if (b->size && sink) sink(arg, (const uint8_t *)b->bytes + b->offset, b->size);
    CHECK(fh_raw->n_written < FH_WRITE_SLOTS, "warden left %zu written buffers untaken", fh_raw->n_written);
    fh_raw->written[fh_raw->n_written++] = *b;
  }
  fh_raw->n_writes = 0;
  fh_raw_event(PN_RAW_CONNECTION_WRITTEN);
  return true;
}

void fh_raw_disconnect(void) {
  fh_raw_complete_writes(NULL, NULL);
  fh_raw_answer();
  if (!fh_raw->read_closed) {
    fh_raw->read_close_asked = fh_raw->read_closed = true;
    fh_raw_event(PN_RAW_CONNECTION_CLOSED_READ);
  }
  fh_raw_complete_writes(NULL, NULL);
  if (!fh_raw->write_closed) {
    fh_raw->write_close_asked = fh_raw->write_closed = true;
    fh_raw_event(PN_RAW_CONNECTION_CLOSED_WRITE);
  }
  fh_raw_complete_writes(NULL, NULL);
  fh_raw_event(PN_RAW_CONNECTION_DRAIN_BUFFERS);
  fh_store_barrier();
  atomic_store(&fh_raw->woken, false); /* a wake after the close finds the connection gone */
  fh_raw_event(PN_RAW_CONNECTION_DISCONNECTED);
  CHECK(fh_raw->n_written == 0, "warden did not take back %zu written buffers", fh_raw->n_written);
  CHECK(!fh_raw->rbuf_given, "warden did not take back its read buffer");
  CHECK(fh_raw->context == NULL, "warden kept its context on a disconnected raw connection");
  free(fh_raw);
  fh_raw = NULL;
  fh_store_barrier();
  size_t live = wd_amqp_driver_connections(H.amqp);
  CHECK(live == 0, "%zu connection(s) left in warden's registry after the disconnect", live);
}

/* ------------------------------------------------------------------ server */

int fh_server_start(fh_server_t *s) {
  memset(s, 0, sizeof *s);
  fh_raw_accept(false);
  return WD_OK;
}

void fh_server_events(fh_server_t *s) {
  while (fh_raw_answer()) {
  }
  /* Store work the last bytes caused comes back as a wake once the writer has done it. */
  for (int round = 0; round < SETTLE_ROUNDS && s->barriers < BARRIERS_MAX; round++) {
    s->barriers++;
    fh_store_barrier();
    bool any = false;
    while (fh_raw_answer()) any = true;
    if (!any) break;
  }
}

size_t fh_server_read(fh_server_t *s, const uint8_t *data, size_t len) {
  (void)s;
  return fh_raw_deliver(data, len, 0);
}

void fh_server_write(fh_server_t *s, fh_sink_fn sink, void *arg) {
  (void)s;
  while (fh_raw_complete_writes(sink, arg)) {
  }
}

bool fh_server_write_closed(const fh_server_t *s) {
  (void)s;
  return fh_raw->write_close_asked && fh_raw->n_writes == 0;
}

void fh_server_finish(fh_server_t *s) {
  (void)s;
  fh_raw_disconnect();
}

size_t fh_frame_len(const uint8_t *p, size_t left) {
  if (left < 8) return left;
  if (memcmp(p, "AMQP", 4) == 0) return 8;
  uint32_t size = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
  return size < 8 || size > left ? left : size;
}

/* The next piece to hand over: with FH_FRAMES one protocol header or frame. */
static size_t next_piece(const uint8_t *p, size_t left, size_t chunk) {
  if (chunk != FH_FRAMES) return left < chunk ? left : chunk;
  return fh_frame_len(p, left);
}

void fh_serve(fh_mode_t mode, const uint8_t *data, size_t len, size_t chunk) {
  fh_server_t s;
  if (fh_server_start(&s) < 0) abort();
  fh_server_events(&s);
  if (mode != FH_RAW && mode < FH_N_MODES) {
    /* As a client sends it: the SASL part, then, once the outcome is in, the AMQP header. */
    const uint8_t *p = H.prefix[mode];
    fh_server_read(&s, p, H.sasl_len[mode]);
    fh_server_events(&s);
    fh_server_write(&s, NULL, NULL);
    fh_server_read(&s, p + H.sasl_len[mode], H.prefix_len[mode] - H.sasl_len[mode]);
    fh_server_events(&s);
    fh_server_write(&s, NULL, NULL);
  }
  size_t off = 0;
  while (off < len) {
    size_t took = fh_server_read(&s, data + off, next_piece(data + off, len - off, chunk));
    fh_server_events(&s);
    fh_server_write(&s, NULL, NULL);
    if (!took) break;
    off += took;
  }
  fh_server_events(&s);
  fh_server_write(&s, NULL, NULL);
  fh_server_finish(&s);
}

/* -------------------------------------------------------------------- loop */

static void record(fh_loop_t *l, const uint8_t *p, size_t n) {
  if (l->sent_len + n > l->sent_cap) {
    size_t cap = l->sent_cap ? l->sent_cap : 1024;
    while (cap < l->sent_len + n) cap *= 2;
    uint8_t *grown = realloc(l->sent, cap);
    if (!grown) abort();
    l->sent = grown;
    l->sent_cap = cap;
  }
  memcpy(l->sent + l->sent_len, p, n);
  l->sent_len += n;
}

/* What the server wrote reaches the client, as far as it reads. */
static void to_client(void *arg, const uint8_t *p, size_t n) {
  fh_loop_t *l = arg;
  while (n > 0) {
    pn_rwbytes_t r = pn_connection_driver_read_buffer(&l->c);
    if (!r.size) return; /* the client reads no more */
    size_t k = n < r.size ? n : r.size;
    memcpy(r.start, p, k);
    pn_connection_driver_read_done(&l->c, k);
    p += k;
    n -= k;
  }
}

int fh_loop_start(fh_loop_t *l, const char *mechs, const char *user, const char *password) {
  memset(l, 0, sizeof *l);
  if (pn_connection_driver_init(&l->c, NULL, NULL) != 0) return WD_ERR_NOMEM;
  pn_connection_t *c = l->c.connection;
  pn_connection_set_container(c, FH_CONTAINER);
  pn_connection_set_hostname(c, FH_HOSTNAME);
  if (mechs) {
    pn_sasl_t *sasl = pn_sasl(l->c.transport);
    pn_sasl_allowed_mechs(sasl, mechs);
    pn_sasl_set_allow_insecure_mechs(sasl, true);
    if (user) pn_connection_set_user(c, user);
    if (password) pn_connection_set_password(c, password);
  }
  pn_connection_open(c);
  return fh_server_start(&l->s);
}

void fh_loop_pump(fh_loop_t *l) {
  for (int i = 0; i < 1000; i++) {
    bool moved = false;
    while (pn_connection_driver_next_event(&l->c)) moved = true;
    for (;;) { /* client to server */
      pn_bytes_t b = pn_connection_driver_write_buffer(&l->c);
      if (!b.size) break;
      size_t took = fh_server_read(&l->s, (const uint8_t *)b.start, b.size);
      if (!took) { /* the server reads no more: the rest is lost, as on a closed socket */
        pn_connection_driver_write_close(&l->c);
        break;
      }
      record(l, (const uint8_t *)b.start, took);
      pn_connection_driver_write_done(&l->c, took);
      fh_server_events(&l->s);
      moved = true;
    }
    fh_server_events(&l->s);
    moved |= fh_raw->n_writes > 0;
    fh_server_write(&l->s, to_client, l);
    if (fh_server_write_closed(&l->s) && !pn_connection_driver_read_closed(&l->c)) {
      pn_connection_driver_read_close(&l->c);
      moved = true;
    }
    if (!moved) return;
  }
}

void fh_loop_finish(fh_loop_t *l) {
  fh_loop_pump(l);
  fh_server_finish(&l->s);
  pn_connection_driver_destroy(&l->c);
}

/* ------------------------------------------------------------------- setup */

const char *fh_user(fh_mode_t mode) {
  switch (mode) {
    case FH_SERVICE: return FH_SERVICE_NAME;
    case FH_DEVICE: return FH_DEVICE_ID;
    case FH_PEER: return FH_PEER_ID;
    default: return NULL;
  }
}

const char *fh_password(fh_mode_t mode) {
  return mode == FH_SERVICE ? FH_SERVICE_SECRET : mode < FH_N_MODES ? H.token[mode] : NULL;
}

const uint8_t *fh_device_key(void) { return device_key; }

wd_amqp_t *fh_amqp(void) { return H.amqp; }

const uint8_t *fh_prefix(fh_mode_t mode, size_t *len, size_t *sasl_len) {
  if (mode == FH_RAW || mode >= FH_N_MODES) return NULL;
  *len = H.prefix_len[mode];
  if (sasl_len) *sasl_len = H.sasl_len[mode];
  return H.prefix[mode];
}

/* Logs in as `mode` through a real client and keeps what it sent up to its AMQP header. */
static int build_prefix(fh_mode_t mode) {
  fh_loop_t l;
  if (fh_loop_start(&l, "PLAIN", fh_user(mode), fh_password(mode)) < 0) return WD_ERR_NOMEM;
  fh_loop_pump(&l);
  bool opened = pn_connection_state(l.c.connection) & PN_REMOTE_ACTIVE;
  size_t at = 0;
  for (size_t i = sizeof sasl_header; !at && i + sizeof amqp_header <= l.sent_len; i++)
    if (memcmp(l.sent + i, amqp_header, sizeof amqp_header) == 0) at = i;
  fh_loop_finish(&l);
  if (!opened || !at || memcmp(l.sent, sasl_header, sizeof sasl_header) != 0) {
    fprintf(stderr, "fuzz harness: %s could not log in\n", fh_user(mode));
    free(l.sent);
    return WD_ERR_DENIED;
  }
  H.prefix[mode] = l.sent;
  H.sasl_len[mode] = at;
  H.prefix_len[mode] = at + sizeof amqp_header;
  return WD_OK;
}

void fh_fini(void) {
  if (H.store) fh_store_barrier();
  wd_amqp_free(H.amqp);
  H.amqp = NULL;
  wd_store_close(H.store);
  H.store = NULL;
  for (int m = 0; m < FH_N_MODES; m++) {
    free(H.token[m]);
    free(H.prefix[m]);
    H.token[m] = NULL;
    H.prefix[m] = NULL;
  }
  if (H.dir[0]) fz_rmdir(H.dir);
  H.dir[0] = '\0';
  H.ready = false;
}

int fh_init(void) {
  if (H.ready) return WD_OK;
  const char *level = getenv("WARDEN_FUZZ_LOG"); /* e.g. "debug" to watch warden decide */
  if (!level || !wd_log_parse_level(level, &wd_log_threshold)) wd_log_threshold = WD_LOG_NONE;
  if (fz_tempdir("amqp", H.dir, sizeof H.dir) < 0) return WD_ERR_IO;
  atexit(fh_fini);
  int rc = wd_store_open(H.dir, STORE_MAX_SIZE, &H.store);
  /* dev-1 may reach dev-2 (a member of grp-a) but not dev-3, which is disabled anyway. */
  if (rc == WD_OK) rc = add_device(FH_DEVICE_ID, "", FH_GROUP, true);
  if (rc == WD_OK) rc = add_device(FH_PEER_ID, FH_GROUP, "", true);
  if (rc == WD_OK) rc = add_device("dev-3", FH_GROUP, FH_DEVICE_ID, true);
  if (rc == WD_OK) rc = add_device(barrier_device, "", "", false);
  if (rc == WD_OK) {
    wd_device_t *d = wd_device_new();
    if (!d) return WD_ERR_NOMEM;
    snprintf(d->id, sizeof d->id, "dev-3");
    rc = device_write_wait(WD_DEVICE_DISABLE, d);
    wd_device_free(d);
  }
  if (rc < 0) return rc;

  const wd_amqp_service_t svc = {.name = FH_SERVICE_NAME, .secret = FH_SERVICE_SECRET, .scopes = WD_SCOPE_ALL};
  const wd_amqp_config_t cfg = {
      .hostname = FH_HOSTNAME,
      .max_message_size = 65536,
      .max_links = 64,
      .max_sessions = 16,
      .max_frame_size = 65536,
      .default_ttl_ms = 60000,
      .max_ttl_ms = 600000,
      .queue_limit = 50,
      .max_delivery_count = 10,
      .idle_timeout_ms = 120000,
      .max_idle_timeout_ms = 1800000,
      .max_connections = 1000,
      .max_connections_per_address = 1000,
      .sasl_timeout_ms = 10000,
      .auth_failures_per_address = 1000000,
      .auth_block_ms = 1000,
      .dev_mode = true,
      .services = &svc,
      .n_services = 1,
  };
  if ((rc = wd_amqp_new(&cfg, H.store, &H.amqp)) < 0) return rc;

  int64_t expiry = wd_now_ms() / 1000 + INT64_C(3650) * 86400; /* raw seeds carry it */
  H.token[FH_DEVICE] = wd_sas_build(FH_HOSTNAME, FH_DEVICE_ID, device_key, expiry);
  H.token[FH_PEER] = wd_sas_build(FH_HOSTNAME, FH_PEER_ID, device_key, expiry);
  if (!H.token[FH_DEVICE] || !H.token[FH_PEER]) return WD_ERR_NOMEM;
  for (int m = FH_SERVICE; m < FH_N_MODES; m++)
    if ((rc = build_prefix((fh_mode_t)m)) < 0) return rc;
  H.ready = true;
  return WD_OK;
}

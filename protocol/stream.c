/* Every AMQP connection, plain or TLS: a Proton raw connection whose bytes
 * warden moves itself - through OpenSSL on the TLS listener, through warden's
 * own SASL exchange (protocol/sasl.c) until the peer has logged in, and only
 * then into an engine: a device's into warden's own (protocol/engine.c, via
 * device.c), a service's, behind the frame guard, into Proton's, driven
 * through a pn_connection_driver. A peer that has not logged in holds a raw
 * connection, a read buffer and (TLS) an SSL object, not an engine; an idle
 * device holds warden's engine and the same small read buffer (decision 8).
 *
 * Why not Proton's TLS layer: per idle connection it holds a BIO pair (two
 * 17 KiB rings), two 4 KiB application buffers and OpenSSL's record buffer,
 * 40 KiB resident in all (docs/PERFORMANCE.md). Here OpenSSL reads straight
 * from the bytes the raw connection read and writes into a buffer that exists
 * only while there is something to send; an idle connection keeps the SSL
 * object and one small read buffer. Its buffers come from OpenSSL's allocator,
 * so that the large passing ones stay out of the malloc heap like OpenSSL's
 * own (gateway/crypto_memory.c). A service's plain connection, once its
 * engine runs, reads straight into the engine's input buffer.
 *
 * Everything of one connection runs in its raw connection's events, which
 * Proton serializes: the engine's events go through wd_amqp__handle. Proton
 * cannot time a raw connection, so the engine's heartbeat and idle deadline
 * (pn_transport_tick) are kept in wd_conn_t.tick_due_ms, and the proactor's
 * timeout, brought forward when one is due before it, wakes the connections
 * due. */

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <proton/connection_driver.h>
#include <proton/raw_connection.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/frame_guard.h"
#include "protocol/internal.h"

/* A raw connection always holds one read buffer. An idle connection's stays
   small; one that fills it gets a large one for its next read. */
#define READ_SMALL 1024
#define READ_LARGE (16 * 1024 + 512)
/* Plaintext handed to SSL_write at once: one full record. */
#define WRITE_CHUNK (16 * 1024)
/* What a plain connection copies out of the engine at once: fewer, larger
   socket writes when a consumer drains a log. */
#define PLAIN_WRITE_CHUNK (64 * 1024)
/* Bytes not yet written to the socket, past which the engine keeps what it
   has to send: a peer that stops reading holds no more than this. */
#define UNWRITTEN_MAX (256 * 1024)
/* Plaintext read before the login is done and not yet used: one SASL frame
   and what a client sent after it in the same read. */
#define PENDING_MAX (32 * 1024)

typedef struct {
  wd_amqp_t *amqp;
  pn_raw_connection_t *raw;
  wd_conn_t *conn;      /* warden's connection; once the engine runs, also its context */
  bool tls;
  SSL *ssl;
  bool handshake_done;  /* always, on a plain connection */
  bool tls_failed;      /* nothing more goes through OpenSSL */
  bool shutdown_sent;   /* close_notify written */
  const uint8_t *in;    /* ciphertext read, not yet taken by OpenSSL */
  size_t in_len;
  uint8_t *out;         /* bytes for the peer, not yet handed to the raw connection */
  size_t out_len, out_cap;
  size_t unwritten;     /* bytes handed to the raw connection, not yet written */
  uint8_t *rbuf;
  size_t rbuf_cap;
  bool rbuf_given;
  bool reading_into_engine; /* the buffer given is the engine's own input buffer (plain) */
  bool raw_read_closed, raw_write_closed;

  wd_sasl_t *sasl;      /* until the login ends */
  uint8_t *pending;     /* plaintext read during the login, not yet used */
  size_t pending_len, pending_cap;
  bool ending;          /* no engine will run: send what is queued, then close */

  bool lean;            /* a device's: warden's own engine runs (c->engine) */
  pn_connection_driver_t driver; /* a service's: Proton's engine */
  bool driver_ready;
  wd_frame_guard_t guard;
  size_t engine_read;   /* bytes the engine read, counted up to its AMQP header (8) */
} stream_t;

/* The BIO under every SSL: reads take the bytes of the current raw read,
   writes collect into the connection's output buffer. */
static int bio_read(BIO *b, char *buf, int len) {
  stream_t *w = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (w->in_len == 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  size_t n = w->in_len < (size_t)len ? w->in_len : (size_t)len;
  memcpy(buf, w->in, n);
  w->in += n;
  w->in_len -= n;
  return (int)n;
}

/* Queues bytes for the peer: ciphertext from OpenSSL, or a plain connection's. */
static int append_out(stream_t *w, const void *buf, size_t len) {
  if (w->out_len + len > w->out_cap) {
    size_t cap = w->out_cap ? w->out_cap : 4096;
    while (cap < w->out_len + len) cap *= 2;
    uint8_t *p = OPENSSL_realloc(w->out, cap);
    if (!p) return -1;
    w->out = p;
    w->out_cap = cap;
  }
  memcpy(w->out + w->out_len, buf, len);
  w->out_len += len;
  return (int)len;
}

static int bio_write(BIO *b, const char *buf, int len) {
  stream_t *w = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  return append_out(w, buf, (size_t)len);
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

int wd_amqp__tls_init(wd_amqp_t *a) {
  const wd_amqp_config_t *cfg = &a->cfg;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "warden");
  if (!ctx || !m || !BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
    SSL_CTX_free(ctx);
    BIO_meth_free(m);
    return WD_ERR_NOMEM;
  }
  a->ssl_ctx = ctx;
  a->bio_method = m;
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    wd_log("amqp", WD_LOG_ERROR, "cannot load TLS certificate %s with key %s", cfg->tls_cert, cfg->tls_key);
    return WD_ERR_INVALID;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  /* Forward secrecy and AEAD only for TLS 1.2 (TLS 1.3's suites all are). */
  const char *ciphers = cfg->tls_ciphers ? cfg->tls_ciphers : "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL";
  if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
    wd_log("amqp", WD_LOG_ERROR, "[amqp] tls_ciphers: OpenSSL accepts none of '%s'", ciphers);
    return WD_ERR_INVALID;
  }
  /* With tls_ca, client certificates are requested but optional (devices on
     PLAIN + SAS tokens share the listener) and verified against it when sent. */
  if (cfg->tls_ca) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_ca);
    if (!names || SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      wd_log("amqp", WD_LOG_ERROR, "cannot load TLS client CA %s", cfg->tls_ca);
      return WD_ERR_INVALID;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  /* Resumption (a session id cache and one ticket per handshake) saves a
     reconnecting device most of its handshake. */
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"warden", 6);
  SSL_CTX_set_num_tickets(ctx, 1);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  /* OpenSSL's record buffers are given back whenever they run empty. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  ERR_clear_error();
  return WD_OK;
}

void wd_amqp__tls_fini(wd_amqp_t *a) {
  SSL_CTX_free(a->ssl_ctx);
  BIO_meth_free(a->bio_method);
  a->ssl_ctx = NULL;
  a->bio_method = NULL;
}

static wd_conn_t *conn_of(stream_t *w) {
  return w->driver_ready ? pn_connection_get_context(w->driver.connection) : w->conn;
}

static void tls_error(stream_t *w, const char *what) {
  unsigned long e = ERR_peek_last_error();
  char reason[160];
  ERR_error_string_n(e, reason, sizeof reason);
  ERR_clear_error();
  wd_conn_t *c = conn_of(w);
  wd_log("amqp", WD_LOG_DEBUG, "[C%llu] TLS %s failed: %s", c ? (unsigned long long)c->id : 0ull, what,
         e ? reason : "connection reset");
  w->tls_failed = true;
  w->in_len = 0;
  if (!w->driver_ready) {
    w->ending = true;
    return;
  }
  pn_condition_t *cond = pn_transport_condition(w->driver.transport);
  if (!pn_condition_is_set(cond)) {
    pn_condition_set_name(cond, "amqp:connection:framing-error");
    pn_condition_set_description(cond, "TLS failed");
  }
  pn_connection_driver_close(&w->driver);
}

/* Plaintext for the peer. */
static int send_plain(void *arg, const uint8_t *p, size_t n) {
  stream_t *w = arg;
  if (!w->tls) return append_out(w, p, n);
  for (size_t done = 0; done < n;) {
    size_t chunk = n - done < WRITE_CHUNK ? n - done : WRITE_CHUNK;
    int r = SSL_write(w->ssl, p + done, (int)chunk);
    if (r <= 0) {
      tls_error(w, "write");
      return -1;
    }
    done += (size_t)r;
  }
  return (int)n;
}

/* The engine's input buffer holds n more bytes from the peer, at p: the frame
 * guard reads them before Proton does, and a refusal ends the connection. */
static void engine_took(stream_t *w, const uint8_t *p, size_t n) {
  if (pn_connection_driver_read_closed(&w->driver)) return; /* refused already, or the peer ended */
  const char *condition;
  const char *why = wd_frame_guard_feed(&w->guard, p, n, &condition);
  if (!why) {
    if (w->engine_read < 8) w->engine_read += n;
    pn_connection_driver_read_done(&w->driver, n);
    return;
  }
  wd_conn_t *c = conn_of(w);
  wd_log("amqp", WD_LOG_WARNING, "[C%llu] closing the connection of '%s' from %s: %s",
         c ? (unsigned long long)c->id : 0ull, c ? c->who.id : "?", c ? c->remote : "?", why);
  wd_metric_add(&wd_metrics.frames_refused, 1);
  pn_condition_t *cond = pn_transport_condition(w->driver.transport);
  pn_condition_set_name(cond, condition);
  pn_condition_set_description(cond, why);
  /* Before the AMQP header Proton has no way to say why: the socket just closes. */
  if (w->engine_read >= 8)
    pn_connection_driver_read_close(&w->driver);
  else
    pn_connection_driver_close(&w->driver);
}

/* Plaintext after the login, into the engine. */
static void engine_in(stream_t *w, const uint8_t *p, size_t n) {
  if (w->lean) {
    if (n > 0) wd_engine_input(w->conn->engine, p, n, wd_mono_ms());
    return;
  }
  while (n > 0) {
    pn_rwbytes_t room = pn_connection_driver_read_buffer(&w->driver);
    if (room.size == 0) return; /* the engine reads no more */
    size_t take = room.size < n ? room.size : n;
    memcpy(room.start, p, take);
    engine_took(w, (const uint8_t *)room.start, take);
    p += take;
    n -= take;
  }
}

/* The peer has logged in: its connection gets an engine. */
static bool start_engine(stream_t *w, const wd_identity_t *who) {
  if (who->is_device) {
    w->conn->who = *who;
    return (w->lean = wd_amqp__device_engine_new(w->conn) != NULL);
  }
  pn_connection_t *pc = pn_connection();
  pn_transport_t *t = pn_transport();
  if (!pc || !t) {
    if (pc) pn_connection_free(pc);
    if (t) pn_transport_free(t);
    return false;
  }
  w->conn->who = *who;
  wd_amqp__engine_start(w->conn, pc, t);
  if (pn_connection_driver_init(&w->driver, pc, t) != 0) { /* a failed init freed pc and t */
    w->conn->pn = NULL;
    return false;
  }
  w->driver_ready = true;
  wd_frame_guard_init(&w->guard);
  /* The driver binds its transport to the connection once CONNECTION_INIT is
     handled; a transport fed (or closed) before that has no connection. */
  pn_event_t *e;
  while ((e = pn_connection_driver_next_event(&w->driver))) wd_amqp__handle(w->amqp, e);
  return true;
}

static void end_login(stream_t *w) {
  wd_amqp__sasl_free(w->sasl);
  w->sasl = NULL;
  free(w->pending);
  w->pending = NULL;
  w->pending_len = w->pending_cap = 0;
}

/* Plaintext from the peer: its login, then its engine's. */
static void plain_in(stream_t *w, const uint8_t *p, size_t n) {
  if (w->driver_ready || w->lean) {
    engine_in(w, p, n);
    return;
  }
  if (w->ending || !w->sasl || n == 0) return;
  if (w->pending_len + n > w->pending_cap) {
    size_t cap = w->pending_len + n;
    uint8_t *q = cap <= PENDING_MAX ? realloc(w->pending, cap) : NULL;
    if (!q) {
      w->ending = true;
      end_login(w);
      return;
    }
    w->pending = q;
    w->pending_cap = cap;
  }
  memcpy(w->pending + w->pending_len, p, n);
  w->pending_len += n;

  size_t used = 0;
  wd_identity_t who = {0};
  wd_sasl_status_t st = wd_amqp__sasl_read(w->sasl, w->pending, w->pending_len, &used, send_plain, w, &who);
  if (st == WD_SASL_MORE) {
    memmove(w->pending, w->pending + used, w->pending_len - used);
    w->pending_len -= used;
    return;
  }
  if (st == WD_SASL_DONE && !start_engine(w, &who)) {
    wd_log("amqp", WD_LOG_ERROR, "out of memory starting the engine of '%s'", who.id);
    st = WD_SASL_FAILED;
  }
  explicit_bzero(&who, sizeof who);
  if (st == WD_SASL_FAILED) {
    w->ending = true;
    end_login(w);
    return;
  }
  /* A client may send its AMQP header and first frames without waiting for the outcome. */
  uint8_t *rest = w->pending;
  size_t rest_len = w->pending_len - used;
  w->pending = NULL;
  end_login(w);
  engine_in(w, rest + used, rest_len);
  free(rest);
}

/* The certificate a client sent (verified against tls_ca by OpenSSL) is what EXTERNAL authenticates. */
static void handshake_done(stream_t *w) {
  w->handshake_done = true;
  X509 *peer = SSL_get0_peer_certificate(w->ssl);
  if (!peer || SSL_get_verify_result(w->ssl) != X509_V_OK || !w->sasl) return;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(peer, EVP_sha256(), md, &n) != 1 || n * 2 != WD_THUMBPRINT_HEX) return;
  char hex[WD_THUMBPRINT_HEX + 1];
  for (unsigned i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  wd_amqp__sasl_set_client_cert(w->sasl, hex);
}

/* Takes what was read: decrypted first on a TLS connection. */
static void feed(stream_t *w, const uint8_t *bytes, size_t len) {
  if (!w->tls) {
    plain_in(w, bytes, len);
    return;
  }
  w->in = bytes;
  w->in_len = len;
  if (w->tls_failed) {
    w->in_len = 0;
    return;
  }
  if (!w->handshake_done) {
    int r = SSL_do_handshake(w->ssl);
    if (r == 1) {
      handshake_done(w);
    } else {
      if (SSL_get_error(w->ssl, r) != SSL_ERROR_WANT_READ) tls_error(w, "handshake");
      return;
    }
  }
  /* Reading on with nothing left to read would set up a record buffer again
     and keep it for the idle time that follows. */
  while (w->in_len > 0 || SSL_has_pending(w->ssl)) {
    uint8_t login_buf[1024];
    pn_rwbytes_t room = w->driver_ready ? pn_connection_driver_read_buffer(&w->driver)
                                        : (pn_rwbytes_t){sizeof login_buf, (char *)login_buf};
    if (room.size == 0 || w->ending) { /* nobody reads any more */
      w->in_len = 0;
      break;
    }
    int r = SSL_read(w->ssl, room.start, room.size < INT32_MAX ? (int)room.size : INT32_MAX);
    if (r > 0) {
      if (w->driver_ready)
        engine_took(w, (const uint8_t *)room.start, (size_t)r);
      else
        plain_in(w, login_buf, (size_t)r);
      continue;
    }
    int err = SSL_get_error(w->ssl, r);
    if (err == SSL_ERROR_WANT_READ) break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      if (w->driver_ready)
        pn_connection_driver_read_close(&w->driver);
      else
        w->ending = true;
      w->in_len = 0;
      break;
    }
    tls_error(w, "read");
    break;
  }
}

/* Hands the bytes collected so far to the raw connection. */
static void hand_out(stream_t *w) {
  if (w->out_len == 0 || w->raw_write_closed || pn_raw_connection_write_buffers_capacity(w->raw) == 0) return;
  /* context keeps the length: Proton may move offset and size as it writes */
  pn_raw_buffer_t b = {.context = w->out_len, .bytes = (char *)w->out, .capacity = (uint32_t)w->out_cap,
                       .size = (uint32_t)w->out_len};
  if (pn_raw_connection_write_buffers(w->raw, &b, 1) != 1) return;
  w->unwritten += w->out_len;
  w->out = NULL;
  w->out_len = w->out_cap = 0;
}

/* Runs the engine's events and sends what it has to send. */
static void run_engine(stream_t *w) {
  /* Early is harmless: the engine sends a heartbeat or times out only when due. */
  pn_transport_tick(w->driver.transport, wd_mono_ms());
  for (;;) {
    pn_event_t *e;
    while ((e = pn_connection_driver_next_event(&w->driver))) wd_amqp__handle(w->amqp, e);
    if (w->tls_failed) break; /* nothing more goes out */
    hand_out(w);
    if (w->unwritten + w->out_len >= UNWRITTEN_MAX) break;
    pn_bytes_t pending = pn_connection_driver_write_buffer(&w->driver);
    if (pending.size == 0) break;
    size_t chunk = w->tls ? WRITE_CHUNK : PLAIN_WRITE_CHUNK;
    size_t n = pending.size < chunk ? pending.size : chunk;
    if (send_plain(w, (const uint8_t *)pending.start, n) < 0) {
      if (!w->tls) pn_connection_driver_close(&w->driver); /* out of memory */
      continue; /* the close it caused has events of its own */
    }
    pn_connection_driver_write_done(&w->driver, n);
  }
  /* Ticked again after everything was sent: the next heartbeat dates from that output. */
  int64_t next_tick = pn_transport_tick(w->driver.transport, wd_mono_ms());
  wd_conn_t *c = conn_of(w);
  if (!c) return;
  atomic_store(&c->tick_due_ms, next_tick);
  if (next_tick > 0 && atomic_load(&c->tick_on_time)) wd_amqp__tick_needed(w->amqp, next_tick);
}

/* A device's engine: what its settles and flows left pending goes out, and
 * the next heartbeat or idle deadline is noted for the proactor's timeout. */
static void run_lean(stream_t *w) {
  wd_conn_t *c = w->conn;
  wd_engine_flush(c->engine);
  int64_t next_tick = wd_engine_tick(c->engine, wd_mono_ms());
  if (next_tick == INT64_MAX) next_tick = 0;
  atomic_store(&c->tick_due_ms, next_tick);
  if (next_tick > 0 && atomic_load(&c->tick_on_time)) wd_amqp__tick_needed(w->amqp, next_tick);
}

/* Runs what there is to run, then closes the socket's halves once nothing
 * more will be said on them. */
static void process(stream_t *w) {
  if (w->driver_ready) run_engine(w);
  if (w->lean) run_lean(w);
  bool lean_done = w->lean && wd_engine_finished(w->conn->engine);
  bool done_writing = w->driver_ready ? pn_connection_driver_write_closed(&w->driver) || w->tls_failed
                                      : w->ending || lean_done;
  bool done_reading = w->driver_ready ? pn_connection_driver_read_closed(&w->driver) : w->ending || lean_done;
  if (done_writing && w->tls && w->handshake_done && !w->tls_failed && !w->shutdown_sent) {
    w->shutdown_sent = true;
    SSL_shutdown(w->ssl); /* close_notify, so the peer knows nothing was cut off */
    ERR_clear_error();
  }
  hand_out(w);
  if (done_writing && w->out_len == 0 && !w->raw_write_closed) {
    w->raw_write_closed = true;
    pn_raw_connection_write_close(w->raw);
  }
  if (done_reading && !w->raw_read_closed) {
    w->raw_read_closed = true;
    pn_raw_connection_read_close(w->raw);
  }
}

static void give_read_buffer(stream_t *w, size_t want) {
  if (w->rbuf_given || w->raw_read_closed) return;
  if (!w->tls && w->driver_ready) {
    /* Straight into the engine: nothing moves its input buffer until read_done. */
    pn_rwbytes_t room = pn_connection_driver_read_buffer(&w->driver);
    if (room.size == 0) return;
    OPENSSL_free(w->rbuf);
    w->rbuf = NULL;
    w->rbuf_cap = 0;
    pn_raw_buffer_t b = {.bytes = room.start, .capacity = room.size < UINT32_MAX ? (uint32_t)room.size : UINT32_MAX};
    if (pn_raw_connection_give_read_buffers(w->raw, &b, 1) == 1) w->rbuf_given = w->reading_into_engine = true;
    return;
  }
  if (want != w->rbuf_cap) {
    uint8_t *p = OPENSSL_realloc(w->rbuf, want);
    if (!p && !w->rbuf) return; /* no buffer: the connection reads nothing more and times out */
    if (p) {
      w->rbuf = p;
      w->rbuf_cap = want;
    }
  }
  pn_raw_buffer_t b = {.bytes = (char *)w->rbuf, .capacity = (uint32_t)w->rbuf_cap};
  if (pn_raw_connection_give_read_buffers(w->raw, &b, 1) == 1) w->rbuf_given = true;
}

static void on_connected(stream_t *w) {
  wd_amqp_t *a = w->amqp;
  char ip[64];
  wd_conn_t *c = wd_amqp__conn_accepted(a, w->raw, w->tls, ip);
  BIO *bio = NULL;
  if (c && w->tls) {
    w->ssl = SSL_new(a->ssl_ctx);
    bio = BIO_new(a->bio_method);
  }
  if (c) w->sasl = wd_amqp__sasl_new(a, w->tls, ip, c->remote);
  if (!c || !w->sasl || (w->tls && (!w->ssl || !bio))) {
    wd_log("amqp", WD_LOG_ERROR, "out of memory accepting a connection");
    BIO_free(bio);
    w->conn = c; /* let go on DISCONNECTED */
    pn_raw_connection_close(w->raw);
    return;
  }
  w->conn = c;
  if (c->closing) { /* refused: too many connections from its address */
    pn_raw_connection_close(w->raw);
    return;
  }
  if (w->tls) {
    BIO_set_data(bio, w);
    SSL_set_bio(w->ssl, bio, bio);
    SSL_set_accept_state(w->ssl);
  } else {
    w->handshake_done = true;
  }
  give_read_buffer(w, READ_SMALL);
  process(w);
}

static void on_read(stream_t *w) {
  pn_raw_buffer_t bufs[4];
  size_t n;
  bool filled = false;
  while ((n = pn_raw_connection_take_read_buffers(w->raw, bufs, 4)) > 0) {
    for (size_t i = 0; i < n; i++) {
      w->rbuf_given = false;
      filled = bufs[i].size == bufs[i].capacity;
      const uint8_t *bytes = (const uint8_t *)bufs[i].bytes + bufs[i].offset;
      if (w->reading_into_engine) {
        w->reading_into_engine = false;
        if (w->driver_ready) engine_took(w, bytes, bufs[i].size);
      } else if (w->conn) {
        feed(w, bytes, bufs[i].size);
      }
    }
  }
  process(w);
  give_read_buffer(w, filled ? READ_LARGE : READ_SMALL);
}

static void on_written(stream_t *w) {
  pn_raw_buffer_t bufs[8];
  size_t n;
  while ((n = pn_raw_connection_take_written_buffers(w->raw, bufs, 8)) > 0)
    for (size_t i = 0; i < n; i++) {
      w->unwritten -= (size_t)bufs[i].context;
      OPENSSL_free(bufs[i].bytes);
    }
}

/* Buffers the raw connection gives back unread are the connection's own read buffer. */
static void take_back_buffers(stream_t *w) {
  on_written(w);
  pn_raw_buffer_t bufs[4];
  while (pn_raw_connection_take_read_buffers(w->raw, bufs, 4) > 0) w->rbuf_given = w->reading_into_engine = false;
}

static void on_disconnected(stream_t *w) {
  take_back_buffers(w);
  if (w->driver_ready) {
    pn_connection_driver_close(&w->driver);
    pn_event_t *e;
    while ((e = pn_connection_driver_next_event(&w->driver))) wd_amqp__handle(w->amqp, e);
    pn_connection_driver_destroy(&w->driver);
    wd_frame_guard_fini(&w->guard);
  } else if (w->lean) {
    wd_amqp__device_gone_PT(w->conn);
  } else if (w->conn) {
    wd_amqp__conn_gone(w->conn);
    wd_amqp__conn_free(w->conn);
  }
  end_login(w);
  SSL_free(w->ssl);
  ERR_clear_error();
  OPENSSL_free(w->rbuf);
  OPENSSL_free(w->out);
  atomic_fetch_sub(&w->amqp->streams, 1);
  free(w);
}

/* A half of the socket closed: the engine's half, or, before the login is
 * done, the end of it (an engine exists only once TLS and SASL are done). */
static void on_half_closed(stream_t *w, bool reading) {
  if (reading)
    w->raw_read_closed = true;
  else
    w->raw_write_closed = true;
  if (!w->driver_ready)
    w->ending = true;
  else if (reading)
    pn_connection_driver_read_close(&w->driver);
  else
    pn_connection_driver_write_close(&w->driver);
  process(w);
}

int wd_amqp__stream_write_PT(wd_conn_t *c, const uint8_t *p, size_t n) {
  stream_t *w = pn_raw_connection_get_context(c->raw);
  return w && !w->tls_failed ? send_plain(w, p, n) : -1;
}

void wd_amqp__conn_abort_PT(wd_conn_t *c) {
  stream_t *w = pn_raw_connection_get_context(c->raw);
  if (!w) return;
  if (w->driver_ready) {
    pn_transport_close_tail(w->driver.transport);
    pn_transport_close_head(w->driver.transport);
  } else {
    w->ending = true;
    end_login(w);
    pn_raw_connection_close(w->raw);
  }
}

void wd_amqp__stream_accept(wd_amqp_t *a, pn_listener_t *l, bool tls) {
  stream_t *w = calloc(1, sizeof *w);
  pn_raw_connection_t *raw = pn_raw_connection();
  if (!w || !raw) {
    wd_log("amqp", WD_LOG_ERROR, "out of memory accepting a connection");
    free(w);
    if (raw) { /* accepted only to be closed: the listener must not leave the peer waiting */
      pn_listener_raw_accept(l, raw);
      pn_raw_connection_close(raw);
    }
    return;
  }
  w->amqp = a;
  w->raw = raw;
  w->tls = tls;
  atomic_fetch_add(&a->streams, 1);
  pn_raw_connection_set_context(raw, w);
  pn_listener_raw_accept(l, raw);
}

void wd_amqp__stream_event(pn_event_type_t type, pn_raw_connection_t *raw) {
  stream_t *w = pn_raw_connection_get_context(raw);
  if (!w) return;
  switch (type) {
    case PN_RAW_CONNECTION_CONNECTED:
      on_connected(w);
      break;
    case PN_RAW_CONNECTION_NEED_READ_BUFFERS:
      give_read_buffer(w, READ_SMALL);
      break;
    case PN_RAW_CONNECTION_READ:
      on_read(w);
      break;
    case PN_RAW_CONNECTION_WRITTEN:
      on_written(w);
      process(w);
      break;
    case PN_RAW_CONNECTION_WAKE: {
      wd_conn_t *c = conn_of(w);
      if (c) wd_amqp__conn_run_jobs(c);
      process(w);
      break;
    }
    case PN_RAW_CONNECTION_CLOSED_READ:
      on_half_closed(w, true);
      break;
    case PN_RAW_CONNECTION_CLOSED_WRITE:
      on_half_closed(w, false);
      break;
    case PN_RAW_CONNECTION_DRAIN_BUFFERS:
      take_back_buffers(w);
      break;
    case PN_RAW_CONNECTION_DISCONNECTED:
      pn_raw_connection_set_context(raw, NULL);
      on_disconnected(w);
      break;
    default: break;
  }
}

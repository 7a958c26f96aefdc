/* warden-bench: load generator for warden's telemetry path (AMQP 1.0, Qpid Proton proactor).
 *
 *   warden-bench ingest --port P --devices FILE [--connections N] [--window W] [--size S] [--messages M]
 *   warden-bench drain  --port P --user NAME (--password PW | --password-file F) [--group G] [--window W]
 *                       [--messages M]
 *   warden-bench commands --port P --devices FILE --user NAME (--password PW | --password-file F)
 *                       [--connections N] [--window W] [--messages M | --rate R --duration D]
 *   warden-bench rest   --port P --http-port H --devices FILE (--token T | --token-file F)
 *                       [--connections N] [--concurrency C] [--messages M | --rate R --duration D]
 *
 * ingest: N device connections (SASL PLAIN, username = device id, password = a SAS token built from the
 * device's key), each with a sender on `telemetry` keeping up to W unsettled messages in flight. M messages
 * in total are drawn from one shared pool, so a slow connection does not hold the run back. Every message must
 * be settled `accepted`; any other outcome, and anything in flight when a connection is lost, is an error.
 * Reports throughput (first send to last settlement) and the send-to-accepted latency percentiles.
 *
 * drain: one service connection with a receiver on `telemetry/<group>`, credit window W, accepting each
 * message, until M messages are read. Reports msgs/s from the link's attach to the M-th message.
 *
 * commands: one service connection (SASL PLAIN, name/secret) with a sender per device on
 * `devices/<id>/commands` (or, with --anonymous, one sender on the anonymous relay setting `to`), and N device
 * connections (SAS tokens as in ingest), each with a receiver on `commands` accepting every message. Commands
 * are spread round-robin over the devices, at most W unsettled at the service; unpaced (as fast as credit and
 * window allow) or, with --rate, paced at R commands/s for D seconds. Each command carries its send time
 * (application property `bench-sent-ns`, this process's monotonic clock). Reports the enqueue rate (commands
 * settled `accepted` per second) and the enqueue->device-receipt latency percentiles, and checks that every
 * accepted command reaches its device exactly once and in order.
 *
 * rest: N device connections as in commands, and a REST client (libcurl multi, HTTP/1.1 keep-alive, up to C
 * requests in flight) POSTing commands to /v1/devices/<id>/commands (bearer token), round-robin over the
 * devices, unpaced or paced as above. Each body carries its send time (this process's monotonic clock).
 * Reports the rate of 202 answers, the send->202 latency and the send->device-receipt latency, and checks that
 * every 202'd command reaches its device exactly once, and after every command to that device whose 202 came
 * before it was sent.
 *
 * e2e: ingest and drain at once: N sender connections as in ingest and one receiver connection as in drain.
 * Each payload carries its send time (this process's monotonic clock), a per-invocation run id and a global
 * sequence number; the receiver records receipt time - send time. Reports the end-to-end rate (messages of
 * this run received per second) and latency percentiles, the ingest rate and the send-to-accepted latency.
 *
 * connections: N idle connections (SASL, AMQP open, a session and, for devices, a receiver on `commands`),
 * plain or TLS (--tls, --ca; --external: each device presents its client certificate and logs in with SASL
 * EXTERNAL), at most C connecting at once. Reports the time to connect them all and, with
 * --pid P, the server's RSS growth per connection (/proc/P/status VmRSS) and its CPU time per connection. With
 * --reconnect it then closes and reconnects each (a few at a time) and reports that pass too; --resume adds a
 * Proton SSL session id per connection and counts the TLS sessions resumed. Above 1 000 connections to a
 * loopback host the source addresses are spread over 127.0.0.x (see connect() below).
 *
 * Generic mode (any AMQP 1.0 broker): --user/--password (every connection logs in with them) or
 * --sasl-anonymous instead of --devices; --address names the queue senders send to and receivers read from;
 * --durable-terminus asks for a durable queue where the broker declares queues on attach (RabbitMQ /queue/X).
 *
 * Output: one JSON object on stdout, one human line on stderr. Exit 0 only if everything completed without
 * error before --timeout; 1 otherwise; 2 on bad usage. */

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <curl/curl.h>
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include "gateway/base/util.h"
#include "protocol/sas.h"

#define MAX_THREADS 16
#define TICK_MS 250
#define GRACE_MS 5000 /* after --timeout: time allowed for connections to close */

typedef enum { SC_INGEST, SC_DRAIN, SC_COMMANDS, SC_REST, SC_E2E, SC_CONNECTIONS } scenario_t;

/* e2e payload header (host byte order; same process): connection index, per-link counter, send time
 * (CLOCK_MONOTONIC ns), run id, global sequence number. ingest stamps the first two (and the rest when the
 * payload has room). */
#define E2E_HDR 40

/* ------------------------------------------------------------------ options */

static struct {
  scenario_t scenario;
  const char *host, *port;
  const char *devices_file, *sas_host, *address;
  const char *user, *password, *password_file, *group;
  long connections, window, size, messages, timeout_s, threads, progress_s, trace_gaps_ms;
  bool verify;
  /* commands */
  double rate;       /* commands/s; 0 = unpaced */
  long duration_s;   /* paced: seconds of sending */
  long device_credit;
  bool anonymous, feedback, messages_given;
  /* rest */
  const char *http_port;
  long concurrency;
  /* generic mode, e2e */
  bool sasl_anonymous, durable_terminus, address_given;
  const char *source;  /* receiver source override (drain, e2e) */
  long drain_window;   /* e2e: the receiver's credit window */
  /* connections */
  bool tls, no_link;
  bool external;       /* devices log in with their client certificates (SASL EXTERNAL) */
  const char *ca;
  bool resume;         /* a TLS session id per connection */
  bool reconnect;      /* after connecting all, close and reconnect each */
  long server_pid;     /* 0 = unknown */
  long connect_concurrency, hold_s, source_addrs, settle_ms;
} opt = {
    .host = "127.0.0.1",
    .sas_host = "localhost",
    .address = "telemetry",
    .group = "bench",
    .connections = 1,
    .window = 100,
    .size = 256,
    .messages = 10000,
    .timeout_s = 120,
    .threads = 1,
    .duration_s = 10,
    .device_credit = 100,
    .concurrency = 32,
    .drain_window = 500,
    .connect_concurrency = 100,
    .source_addrs = -1,
    .settle_ms = 2000,
};

/* ------------------------------------------------------------------ shared state */

typedef struct bench_conn {
  int index;
  char *device_id;
  char *password;
  pn_ssl_domain_t *ssl_domain; /* --external: a domain holding this device's certificate */
  pn_connection_t *pn;
  pn_link_t *link;
  long inflight;      /* ingest: unsettled deliveries on the link */
  uint64_t next_tag;  /* ingest: delivery tag counter */
  uint8_t *msg;       /* ingest: this connection's copy of the encoded message (stamped per send) */
  bool closing;
  bool failed;
  /* commands */
  bool is_service;
  pn_link_t **senders;   /* service: one per device, or one anonymous sender */
  long n_senders;
  long links_open;       /* service: senders attached by warden */
  pn_link_t *fb_link;    /* service: receiver on `feedback` (--feedback) */
  long rr;               /* service: next device, round-robin */
  int64_t last_seq;      /* device: last sequence number received (-1 = none) */
  int64_t max_sent_seen; /* rest device: latest send time of the commands received so far */
  /* connections */
  bool ready;            /* open (and its link attached) in the current pass, or failed before */
  bool rolling;          /* closed by the reconnect pass, to be connected again */
  int64_t t_connect;     /* when this pass started connecting it */
} bench_conn_t;

static pn_proactor_t *proactor;
static bench_conn_t *conns;
static long n_conns;

static atomic_long pool;          /* ingest: messages not yet claimed by a sender */
static atomic_long sent;          /* ingest: messages sent */
static atomic_long completed;     /* accepted (ingest) / received and accepted (drain) */
static atomic_long errors;        /* non-accepted outcomes, lost in-flight, malformed */
static atomic_long conn_failures; /* connections closed with an error condition */
static atomic_long live_conns;
static atomic_int timed_out;
static atomic_int stopping;
static atomic_int_least64_t t_start_ns;      /* first send (ingest) / receiver attached (drain); 0 = unset */
static atomic_int_least64_t t_last_ns;       /* last settlement / last message */
static atomic_int_least64_t t_prev_event_ns; /* for max_gap */
static atomic_int_least64_t max_gap_ns;      /* longest pause between two completions */
static atomic_int_least64_t t_last_settle_ns; /* ingest, e2e: last settlement at a sender */
static int64_t t_launch_ns;

static uint64_t *latencies; /* ingest: ns from send to ACCEPTED, one per accepted message */
static atomic_long n_latencies;

static uint8_t *msg_template; /* ingest: the encoded message; the payload is its last opt.size bytes */
static size_t msg_len;

/* drain --verify */
static atomic_long duplicates;
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *seen_bits;
static size_t seen_cap; /* bits */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int failure_reports;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void atomic_max64(atomic_int_least64_t *a, int64_t v) {
  int64_t cur = atomic_load(a);
  while (v > cur && !atomic_compare_exchange_weak(a, &cur, v)) {
  }
}

static void mark_start(int64_t t) {
  int64_t zero = 0;
  if (atomic_compare_exchange_strong(&t_start_ns, &zero, t)) atomic_store(&t_prev_event_ns, t);
}

static void mark_completion(int64_t t) {
  atomic_max64(&t_last_ns, t);
  int64_t prev = atomic_exchange(&t_prev_event_ns, t);
  if (prev && t > prev) {
    atomic_max64(&max_gap_ns, t - prev);
    if (opt.trace_gaps_ms > 0 && t - prev >= opt.trace_gaps_ms * 1000000) {
      struct timespec wall;
      clock_gettime(CLOCK_REALTIME, &wall);
      struct tm tm;
      gmtime_r(&wall.tv_sec, &tm);
      fprintf(stderr, "warden-bench: %02d:%02d:%02d.%03ldZ: no completion for %.1f ms (%ld completed so far)\n",
              tm.tm_hour, tm.tm_min, tm.tm_sec, wall.tv_nsec / 1000000, (double)(t - prev) / 1e6,
              atomic_load(&completed));
    }
  }
}

static void report_failure(const bench_conn_t *bc, const char *what, pn_condition_t *cond) {
  pthread_mutex_lock(&log_lock);
  if (failure_reports++ < 10)
    fprintf(stderr, "warden-bench: connection %d (%s): %s: %s: %s\n", bc->index,
            bc->device_id ? bc->device_id : opt.user ? opt.user : "anonymous", what,
            cond && pn_condition_is_set(cond) ? pn_condition_get_name(cond) : "(no condition)",
            cond && pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
  else if (failure_reports == 11)
    fprintf(stderr, "warden-bench: (further connection failures not shown)\n");
  pthread_mutex_unlock(&log_lock);
}

/* ------------------------------------------------------------------ ingest */

static int build_template(void) {
  pn_message_t *m = pn_message();
  if (!m) return -1;
  uint8_t *payload = malloc((size_t)opt.size ? (size_t)opt.size : 1);
  if (!payload) {
    pn_message_free(m);
    return -1;
  }
  for (long i = 0; i < opt.size; i++) payload[i] = (uint8_t)('a' + i % 26);
  pn_message_set_durable(m, true);
  pn_message_set_content_type(m, "application/octet-stream");
  pn_message_set_inferred(m, true); /* binary body as a Data section, not an AmqpValue */
  pn_data_put_binary(pn_message_body(m), pn_bytes((size_t)opt.size, (const char *)payload));
  size_t cap = (size_t)opt.size + 256;
  int rc;
  for (;;) {
    msg_template = realloc(msg_template, cap);
    if (!msg_template) break;
    msg_len = cap;
    rc = pn_message_encode(m, (char *)msg_template, &msg_len);
    if (rc != PN_OVERFLOW) break;
    cap *= 2;
  }
  pn_message_free(m);
  bool ok = msg_template && rc == 0 && msg_len >= (size_t)opt.size &&
            memcmp(msg_template + msg_len - (size_t)opt.size, payload, (size_t)opt.size) == 0;
  free(payload);
  if (!ok) fprintf(stderr, "warden-bench: cannot encode the message template\n");
  return ok ? 0 : -1;
}

static uint64_t run_id; /* commands, rest, e2e: this invocation's random id */

/* Stamps connection index and per-link sequence into the payload (when it has room) and, when it has room for
 * the whole e2e header, the send time, run id and the message's global sequence number; then sends. */
static void send_one(bench_conn_t *bc, uint64_t seq) {
  uint64_t tag_n = bc->next_tag++;
  uint8_t tag[8];
  for (int b = 0; b < 8; b++) tag[b] = (uint8_t)(tag_n >> (56 - 8 * b));
  pn_delivery_t *d = pn_delivery(bc->link, pn_dtag((const char *)tag, sizeof tag));
  int64_t t = now_ns();
  if (opt.size >= 16) {
    uint8_t *p = bc->msg + msg_len - (size_t)opt.size;
    uint64_t ci = (uint64_t)bc->index;
    memcpy(p, &ci, 8);
    memcpy(p + 8, &tag_n, 8);
    if (opt.size >= E2E_HDR) {
      uint64_t v[3] = {(uint64_t)t, run_id, seq};
      memcpy(p + 16, v, sizeof v);
    }
  }
  mark_start(t);
  pn_delivery_set_context(d, (void *)(uintptr_t)t);
  pn_link_send(bc->link, (const char *)bc->msg, msg_len);
  pn_link_advance(bc->link);
  bc->inflight++;
  atomic_fetch_add(&sent, 1);
}

static void close_conn(bench_conn_t *bc) {
  if (bc->closing || !bc->pn) return;
  bc->closing = true;
  if (bc->link) pn_link_close(bc->link);
  pn_connection_close(bc->pn);
}

static atomic_int send_go; /* commands, rest: every link is attached; e2e: the receiver is attached */

static atomic_int_least64_t pace_t0;  /* e2e --rate: schedule origin (the first send) */
static atomic_int_least64_t pace_lag; /* e2e --rate: worst delay of a send behind its schedule */

static void ingest_pump(bench_conn_t *bc) {
  if (bc->closing || !bc->link || atomic_load(&stopping)) return;
  if (opt.scenario == SC_E2E && !atomic_load(&send_go)) return;
  bool paced = opt.scenario == SC_E2E && opt.rate > 0;
  while (pn_link_credit(bc->link) > 0 && bc->inflight < opt.window) {
    int64_t t0 = 0;
    if (paced) { /* message k is due k / rate seconds after the first send */
      int64_t now = now_ns(), zero = 0;
      atomic_compare_exchange_strong(&pace_t0, &zero, now);
      t0 = atomic_load(&pace_t0);
      long claimed = opt.messages - atomic_load(&pool);
      if (claimed >= (long)((double)(now - t0) * opt.rate / 1e9) + 1) break; /* the tick wakes us */
    }
    long left = atomic_fetch_sub(&pool, 1);
    if (left <= 0) {
      atomic_fetch_add(&pool, 1);
      break;
    }
    long seq = opt.messages - left;
    if (paced) atomic_max64(&pace_lag, now_ns() - (t0 + (int64_t)((double)seq * 1e9 / opt.rate)));
    send_one(bc, (uint64_t)seq);
  }
  if (bc->inflight == 0 && atomic_load(&pool) <= 0) close_conn(bc);
}

static void ingest_settled(bench_conn_t *bc, pn_delivery_t *d) {
  uint64_t state = pn_delivery_remote_state(d);
  int64_t t = now_ns();
  if (state == PN_ACCEPTED) {
    int64_t t0 = (int64_t)(uintptr_t)pn_delivery_get_context(d);
    long i = atomic_fetch_add(&n_latencies, 1);
    if (i < opt.messages) latencies[i] = (uint64_t)(t - t0);
    atomic_fetch_add(&completed, 1);
  } else {
    atomic_fetch_add(&errors, 1);
    pthread_mutex_lock(&log_lock);
    if (failure_reports++ < 10) {
      pn_condition_t *cond = pn_disposition_condition(pn_delivery_remote(d));
      const char *who = bc->device_id; /* commands: the service; name the link's target */
      if (!who) who = pn_terminus_get_address(pn_link_target(pn_delivery_link(d)));
      if (!who) who = "anonymous relay";
      fprintf(stderr, "warden-bench: %s: delivery settled %s%s%s%s%s\n", who, pn_disposition_type_name(state),
              pn_condition_is_set(cond) ? " " : "", pn_condition_is_set(cond) ? pn_condition_get_name(cond) : "",
              pn_condition_get_description(cond) ? ": " : "",
              pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
    }
    pthread_mutex_unlock(&log_lock);
  }
  mark_completion(t);
  atomic_max64(&t_last_settle_ns, t);
  pn_delivery_settle(d);
  bc->inflight--;
}

/* ------------------------------------------------------------------ drain */

static void seen_mark(uint64_t seq) {
  pthread_mutex_lock(&seen_lock);
  if (seq >= seen_cap) {
    size_t cap = seen_cap ? seen_cap : 1 << 20;
    while (cap <= seq) cap *= 2;
    uint8_t *b = realloc(seen_bits, cap / 8);
    if (!b) {
      pthread_mutex_unlock(&seen_lock);
      return;
    }
    memset(b + seen_cap / 8, 0, (cap - seen_cap) / 8);
    seen_bits = b;
    seen_cap = cap;
  }
  if (seen_bits[seq / 8] & (1u << (seq % 8)))
    atomic_fetch_add(&duplicates, 1);
  else
    seen_bits[seq / 8] |= (uint8_t)(1u << (seq % 8));
  pthread_mutex_unlock(&seen_lock);
}

/* --verify: the message decodes, carries x-opt-device-id and x-opt-sequence-number, and (with --size) its
 * Data body has that size. Returns false on a malformed message. */
static bool verify_message(const char *buf, size_t len) {
  pn_message_t *m = pn_message();
  bool ok = m && pn_message_decode(m, buf, len) == 0;
  bool have_dev = false, have_seq = false;
  if (ok) {
    pn_data_t *ann = pn_message_annotations(m);
    pn_data_rewind(ann);
    if (pn_data_next(ann) && pn_data_type(ann) == PN_MAP) {
      size_t n = pn_data_get_map(ann);
      pn_data_enter(ann);
      for (size_t i = 0; i + 1 < n; i += 2) {
        if (!pn_data_next(ann)) break;
        pn_bytes_t key = pn_data_type(ann) == PN_SYMBOL ? pn_data_get_symbol(ann) : pn_bytes(0, NULL);
        if (!pn_data_next(ann)) break;
        if (key.size == 15 && memcmp(key.start, "x-opt-device-id", 15) == 0) have_dev = true;
        if (key.size == 21 && memcmp(key.start, "x-opt-sequence-number", 21) == 0) {
          int64_t seq = pn_data_type(ann) == PN_LONG ? pn_data_get_long(ann)
                        : pn_data_type(ann) == PN_ULONG ? (int64_t)pn_data_get_ulong(ann) : -1;
          if (seq >= 0) {
            have_seq = true;
            seen_mark((uint64_t)seq);
          }
        }
      }
      pn_data_exit(ann);
    }
    ok = have_dev && have_seq;
    if (ok && opt.size >= 0) {
      pn_data_t *body = pn_message_body(m);
      pn_data_rewind(body);
      ok = pn_data_next(body) && pn_data_type(body) == PN_BINARY && (long)pn_data_get_binary(body).size == opt.size;
    }
  }
  if (m) pn_message_free(m);
  return ok;
}

static void drain_top_up(bench_conn_t *bc) {
  long want = opt.messages - atomic_load(&completed);
  int credit = pn_link_credit(bc->link);
  long target = want < opt.window ? want : opt.window;
  if (credit <= opt.window / 2 && target > credit) pn_link_flow(bc->link, (int)(target - credit));
}

static void drain_delivery(bench_conn_t *bc, pn_link_t *l, pn_delivery_t *d) {
  static _Thread_local char *buf;
  static _Thread_local size_t cap;
  if (pn_delivery_aborted(d)) {
    pn_delivery_settle(d);
    atomic_fetch_add(&errors, 1);
    return;
  }
  if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
  size_t pending = pn_delivery_pending(d);
  if (pending > cap) {
    char *nb = realloc(buf, pending);
    if (!nb) return;
    buf = nb;
    cap = pending;
  }
  ssize_t n = pn_link_recv(l, buf, pending);
  pn_link_advance(l);
  bool ok = n >= 0 && (!opt.verify || verify_message(buf, (size_t)n));
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  if (!ok) atomic_fetch_add(&errors, 1);
  long done = atomic_fetch_add(&completed, 1) + 1;
  mark_completion(now_ns());
  if (done >= opt.messages)
    close_conn(bc);
  else
    drain_top_up(bc);
}

/* ------------------------------------------------------------------ events */

static void stop_all(void) {
  if (atomic_exchange(&stopping, 1)) return;
  pn_proactor_disconnect(proactor, NULL);
}

/* ------------------------------------------------------------------ commands */

/* Every command carries these application properties; devices check them. */
#define PROP_RUN "bench-run"     /* ulong: this invocation's random id (older runs' leftovers are "stale") */
#define PROP_SEQ "bench-seq"     /* ulong: 0..M-1, in send order */
#define PROP_DEV "bench-device"  /* int: index of the device it was sent to */
#define PROP_SENT "bench-sent-ns" /* long: send time, CLOCK_MONOTONIC ns of this process */

static bench_conn_t *svc; /* commands: the service connection (the last entry of conns) */
static long n_devices;
static char run_hex[17];
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER; /* guards bc->pn for cross-connection wakes */

static atomic_long devices_ready;  /* device receivers attached by warden */
static atomic_int all_done;        /* every command settled and every accepted one received */
static atomic_long cmd_settled;    /* commands settled at the service, any outcome */
static atomic_long received;       /* this run's commands received by devices (duplicates included) */
static atomic_long received_unique;
static atomic_long stale;          /* messages from an earlier run received by a device (accepted, ignored) */
static atomic_long out_of_order, misrouted, malformed;
static atomic_long fb_completed, fb_other, fb_stale;
static atomic_int_least64_t t_last_recv_ns;
static uint64_t *recv_lat; /* ns from send to device receipt, one per unique received command */
static atomic_long n_recv_lat;
static atomic_uchar *seen; /* per sequence number: received yet */
static long svc_sent;       /* service connection only */
static int64_t t_pace0;     /* paced: schedule origin */
static int64_t max_lag_ns;  /* paced: worst delay of a send behind its schedule */
static pn_message_t *cmd_msg;
static char *cmd_buf;
static size_t cmd_cap;
static uint8_t *cmd_payload;

static void wake(bench_conn_t *bc) {
  pthread_mutex_lock(&conn_lock);
  if (bc->pn) pn_connection_wake(bc->pn);
  pthread_mutex_unlock(&conn_lock);
}

static void check_done(void) {
  long settled = atomic_load(&cmd_settled), acc = atomic_load(&completed), rec = atomic_load(&received_unique);
  if (settled < opt.messages || rec < acc) return;
  if (opt.feedback && atomic_load(&fb_completed) + atomic_load(&fb_other) < rec) return;
  if (atomic_exchange(&all_done, 1)) return;
  for (long i = 0; i < n_conns; i++) wake(&conns[i]);
}

static void maybe_go(void) {
  if (opt.scenario == SC_REST) { /* the REST thread polls send_go */
    if (atomic_load(&devices_ready) >= n_devices) atomic_store(&send_go, 1);
    return;
  }
  if (atomic_load(&devices_ready) < n_devices || !svc || svc->links_open < svc->n_senders) return;
  if (!atomic_exchange(&send_go, 1)) wake(svc);
}

static int put_prop(pn_data_t *p, const char *key) { return pn_data_put_string(p, pn_bytes(strlen(key), key)); }

/* Encodes command `seq` for device `dev`, stamped with send time t, into cmd_buf; returns its length or 0. */
static size_t encode_command(long seq, long dev, int64_t t) {
  pn_message_t *m = cmd_msg;
  pn_message_clear(m);
  pn_message_set_durable(m, true);
  char id[64];
  int idn = snprintf(id, sizeof id, "%s-%ld", run_hex, seq);
  pn_msgid_t mid = {.type = PN_STRING};
  mid.u.as_bytes = pn_bytes((size_t)idn, id);
  pn_message_set_id(m, mid);
  if (opt.anonymous) {
    char to[300];
    snprintf(to, sizeof to, "devices/%s/commands", conns[dev].device_id);
    pn_message_set_address(m, to);
  }
  pn_message_set_content_type(m, "application/octet-stream");
  pn_data_t *p = pn_message_properties(m);
  pn_data_put_map(p);
  pn_data_enter(p);
  put_prop(p, PROP_RUN);
  pn_data_put_ulong(p, run_id);
  put_prop(p, PROP_SEQ);
  pn_data_put_ulong(p, (uint64_t)seq);
  put_prop(p, PROP_DEV);
  pn_data_put_int(p, (int32_t)dev);
  put_prop(p, PROP_SENT);
  pn_data_put_long(p, t);
  pn_data_exit(p);
  pn_message_set_inferred(m, true);
  pn_data_put_binary(pn_message_body(m), pn_bytes((size_t)opt.size, (const char *)cmd_payload));
  for (;;) {
    size_t len = cmd_cap;
    int rc = cmd_buf ? pn_message_encode(m, cmd_buf, &len) : PN_OVERFLOW;
    if (rc == 0) return len;
    if (rc != PN_OVERFLOW) return 0;
    size_t cap = cmd_cap ? cmd_cap * 2 : (size_t)opt.size + 512;
    char *nb = realloc(cmd_buf, cap);
    if (!nb) return 0;
    cmd_buf = nb;
    cmd_cap = cap;
  }
}

/* The service connection: sends what is due (all of M unpaced; by the schedule paced), within the window. */
static void svc_pump(bench_conn_t *bc) {
  if (bc->closing || !atomic_load(&send_go) || atomic_load(&stopping) || svc_sent >= opt.messages) return;
  int64_t now = now_ns();
  long due = opt.messages;
  if (opt.rate > 0) {
    if (!t_pace0) t_pace0 = now;
    long sched = (long)((double)(now - t_pace0) * opt.rate / 1e9) + 1;
    if (sched < due) due = sched;
  }
  while (svc_sent < due && bc->inflight < opt.window) {
    pn_link_t *l = NULL;
    long dev = bc->rr;
    if (opt.anonymous) {
      if (pn_link_credit(bc->senders[0]) > 0) l = bc->senders[0];
    } else {
      for (long k = 0; k < n_devices && !l; k++) {
        long cand = (bc->rr + k) % n_devices;
        if (pn_link_credit(bc->senders[cand]) > 0) {
          l = bc->senders[cand];
          dev = cand;
        }
      }
    }
    if (!l) break; /* no credit anywhere: PN_LINK_FLOW resumes */
    long seq = svc_sent;
    int64_t t = now_ns();
    size_t len = encode_command(seq, dev, t);
    if (!len) {
      fprintf(stderr, "warden-bench: cannot encode a command\n");
      atomic_fetch_add(&errors, 1);
      stop_all();
      return;
    }
    if (opt.rate > 0) {
      int64_t lag = t - (t_pace0 + (int64_t)((double)seq * 1e9 / opt.rate));
      if (lag > max_lag_ns) max_lag_ns = lag;
    }
    uint8_t tag[8];
    for (int b = 0; b < 8; b++) tag[b] = (uint8_t)((uint64_t)seq >> (56 - 8 * b));
    pn_delivery_t *d = pn_delivery(l, pn_dtag((const char *)tag, sizeof tag));
    mark_start(t);
    pn_delivery_set_context(d, (void *)(uintptr_t)t);
    pn_link_send(l, cmd_buf, len);
    pn_link_advance(l);
    bc->inflight++;
    svc_sent++;
    atomic_fetch_add(&sent, 1);
    bc->rr = (dev + 1) % n_devices;
  }
}

static void svc_settled(bench_conn_t *bc, pn_delivery_t *d) {
  ingest_settled(bc, d); /* accepted: completed + latency; else error, logged */
  atomic_fetch_add(&cmd_settled, 1);
  svc_pump(bc);
  check_done();
}

static void top_up(pn_link_t *l, long window) {
  int credit = pn_link_credit(l);
  if (credit <= window / 2) pn_link_flow(l, (int)(window - credit));
}

/* The bench-* application properties of a received command. */
typedef struct {
  bool have_run, have_seq, have_dev, have_sent;
  uint64_t run, seq;
  int64_t dev, sent;
} cmd_props_t;

static bool get_u64(pn_data_t *d, uint64_t *out) {
  switch (pn_data_type(d)) {
    case PN_ULONG: *out = pn_data_get_ulong(d); return true;
    case PN_LONG: *out = (uint64_t)pn_data_get_long(d); return true;
    case PN_UINT: *out = pn_data_get_uint(d); return true;
    case PN_INT: *out = (uint64_t)(int64_t)pn_data_get_int(d); return true;
    default: return false;
  }
}

static cmd_props_t read_props(pn_message_t *m) {
  cmd_props_t r = {0};
  pn_data_t *p = pn_message_properties(m);
  pn_data_rewind(p);
  if (!pn_data_next(p) || pn_data_type(p) != PN_MAP) return r;
  size_t n = pn_data_get_map(p);
  pn_data_enter(p);
  for (size_t i = 0; i + 1 < n; i += 2) {
    if (!pn_data_next(p)) break;
    pn_bytes_t k = pn_data_type(p) == PN_STRING ? pn_data_get_string(p) : pn_bytes(0, NULL);
    if (!pn_data_next(p)) break;
    uint64_t v;
#define KEY_IS(s) (k.size == sizeof(s) - 1 && memcmp(k.start, s, k.size) == 0)
    if (KEY_IS(PROP_RUN) && get_u64(p, &v)) r.have_run = true, r.run = v;
    else if (KEY_IS(PROP_SEQ) && get_u64(p, &v)) r.have_seq = true, r.seq = v;
    else if (KEY_IS(PROP_DEV) && get_u64(p, &v)) r.have_dev = true, r.dev = (int64_t)v;
    else if (KEY_IS(PROP_SENT) && get_u64(p, &v)) r.have_sent = true, r.sent = (int64_t)v;
#undef KEY_IS
  }
  pn_data_exit(p);
  return r;
}

/* Receives one whole delivery into a thread-local buffer and decodes it; NULL (delivery settled, counted as
 * malformed) if aborted or undecodable, NULL (untouched) if not complete yet. */
static pn_message_t *recv_message(pn_link_t *l, pn_delivery_t *d) {
  static _Thread_local char *buf;
  static _Thread_local size_t cap;
  static _Thread_local pn_message_t *m;
  if (pn_delivery_aborted(d)) {
    pn_delivery_settle(d);
    atomic_fetch_add(&malformed, 1);
    return NULL;
  }
  if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return NULL;
  size_t pending = pn_delivery_pending(d);
  if (pending > cap) {
    char *nb = realloc(buf, pending);
    if (!nb) pending = 0;
    else buf = nb, cap = pending;
  }
  ssize_t n = pn_link_recv(l, buf, pending);
  pn_link_advance(l);
  if (!m) m = pn_message();
  if (n < 0 || !m || (pn_message_clear(m), pn_message_decode(m, buf, (size_t)n)) != 0) {
    pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    atomic_fetch_add(&malformed, 1);
    return NULL;
  }
  return m;
}

/* A device received a command: accept it, check it is ours, for this device, new and in order; record latency. */
static void device_delivery(bench_conn_t *bc, pn_link_t *l, pn_delivery_t *d) {
  pn_message_t *m = recv_message(l, d);
  if (!m) return;
  int64_t t = now_ns();
  cmd_props_t p = read_props(m);
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  top_up(l, opt.device_credit);
  if (!p.have_run || p.run != run_id) {
    atomic_fetch_add(&stale, 1);
    return;
  }
  if (!p.have_seq || !p.have_sent || !p.have_dev || p.seq >= (uint64_t)opt.messages) {
    atomic_fetch_add(&malformed, 1);
    return;
  }
  atomic_fetch_add(&received, 1);
  if (p.dev != bc->index) atomic_fetch_add(&misrouted, 1);
  if (atomic_exchange(&seen[p.seq], 1)) {
    atomic_fetch_add(&duplicates, 1);
  } else {
    if ((int64_t)p.seq < bc->last_seq) atomic_fetch_add(&out_of_order, 1);
    else bc->last_seq = (int64_t)p.seq;
    long i = atomic_fetch_add(&n_recv_lat, 1);
    if (i < opt.messages) recv_lat[i] = (uint64_t)(t > p.sent ? t - p.sent : 0);
    atomic_max64(&t_last_recv_ns, t);
    atomic_fetch_add(&received_unique, 1);
  }
  check_done();
}

/* --feedback: the service's receiver on `feedback`; counts this run's outcomes by status. */
static void feedback_delivery(pn_link_t *l, pn_delivery_t *d) {
  pn_message_t *m = recv_message(l, d);
  if (!m) return;
  pn_msgid_t cid = pn_message_get_correlation_id(m);
  bool ours = (cid.type == PN_STRING || cid.type == PN_SYMBOL) && cid.u.as_bytes.size > 17 &&
              memcmp(cid.u.as_bytes.start, run_hex, 16) == 0 && cid.u.as_bytes.start[16] == '-';
  bool completed_status = false;
  if (ours) {
    pn_data_t *p = pn_message_properties(m);
    pn_data_rewind(p);
    if (pn_data_next(p) && pn_data_type(p) == PN_MAP) {
      size_t n = pn_data_get_map(p);
      pn_data_enter(p);
      for (size_t i = 0; i + 1 < n; i += 2) {
        if (!pn_data_next(p)) break;
        pn_bytes_t k = pn_data_type(p) == PN_STRING ? pn_data_get_string(p) : pn_bytes(0, NULL);
        if (!pn_data_next(p)) break;
        if (k.size == 6 && memcmp(k.start, "status", 6) == 0 && pn_data_type(p) == PN_STRING) {
          pn_bytes_t v = pn_data_get_string(p);
          completed_status = v.size == 9 && memcmp(v.start, "completed", 9) == 0;
          if (!completed_status) {
            pthread_mutex_lock(&log_lock);
            if (failure_reports++ < 10)
              fprintf(stderr, "warden-bench: feedback %.*s for %.*s\n", (int)v.size, v.start,
                      (int)cid.u.as_bytes.size, cid.u.as_bytes.start);
            pthread_mutex_unlock(&log_lock);
          }
        }
      }
      pn_data_exit(p);
    }
  }
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  top_up(l, opt.device_credit);
  if (!ours)
    atomic_fetch_add(&fb_stale, 1);
  else
    atomic_fetch_add(completed_status ? &fb_completed : &fb_other, 1);
  check_done();
}

static void commands_open(bench_conn_t *bc, pn_session_t *s) {
  if (!bc->is_service) {
    pn_link_t *l = pn_receiver(s, "bench-commands");
    pn_terminus_set_address(pn_link_source(l), "commands");
    pn_terminus_set_address(pn_link_target(l), "bench-commands");
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
    pn_link_open(l);
    pn_link_flow(l, (int)opt.device_credit);
    bc->link = l;
    return;
  }
  for (long i = 0; i < bc->n_senders; i++) {
    char name[300], addr[300];
    snprintf(name, sizeof name, "bench-cmd-%ld", i);
    pn_link_t *l = pn_sender(s, name);
    if (!opt.anonymous) {
      snprintf(addr, sizeof addr, "devices/%s/commands", conns[i].device_id);
      pn_terminus_set_address(pn_link_target(l), addr);
    } /* anonymous relay: a target without an address */
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
    pn_link_open(l);
    bc->senders[i] = l;
  }
  if (opt.feedback) {
    pn_link_t *l = pn_receiver(s, "bench-feedback");
    pn_terminus_set_address(pn_link_source(l), "feedback");
    pn_terminus_set_address(pn_link_target(l), "bench-feedback");
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
    pn_link_open(l);
    pn_link_flow(l, (int)opt.device_credit);
    bc->fb_link = l;
  }
}


/* ------------------------------------------------------------------ rest */

/* A REST command's body: this header, then filler up to --size bytes. Same process, so host byte order. */
#define REST_MAGIC "WBREST01"
#define REST_HDR 40 /* magic[8] run[8] seq[8] device index[8] send time (CLOCK_MONOTONIC ns)[8] */
#define REST_RESP_MAX 512

typedef struct {
  CURL *easy;
  long seq, dev;
  int64_t t_sent;
  char *body;
  char url[600];
  char resp[REST_RESP_MAX];
  size_t resp_len;
} rest_slot_t;

static atomic_int_least64_t *rest_t202; /* per sequence number: when its 202 was read (0 = not yet/never) */
static const char *rest_token;
static char *rest_base;                  /* http://host:port */
static long http_status[600];            /* rest thread only: non-202 answers by status (0 = no answer) */
static long http_errors;                 /* rest thread only: requests not answered 202 */
static long http_connections;            /* rest thread only: connections libcurl opened */
static long rest_unanswered;             /* rest thread only: requests in flight when the run was stopped */
static long rest_max_active;             /* rest thread only: most requests in flight at once */
static int64_t rest_max_lag_ns;          /* rest thread only: paced, worst delay of a send behind its schedule */

static size_t rest_write(char *data, size_t size, size_t n, void *arg) {
  rest_slot_t *slot = arg;
  size_t len = size * n, room = REST_RESP_MAX - 1 - slot->resp_len;
  memcpy(slot->resp + slot->resp_len, data, len < room ? len : room);
  slot->resp_len += len < room ? len : room;
  slot->resp[slot->resp_len] = '\0';
  return len;
}

static void rest_log_error(const rest_slot_t *slot, CURLcode res, long code) {
  pthread_mutex_lock(&log_lock);
  if (failure_reports++ < 10) {
    if (res != CURLE_OK)
      fprintf(stderr, "warden-bench: POST %s (command %ld): %s\n", slot->url, slot->seq, curl_easy_strerror(res));
    else
      fprintf(stderr, "warden-bench: POST %s (command %ld): HTTP %ld %.*s\n", slot->url, slot->seq, code,
              (int)strcspn(slot->resp, "\r\n"), slot->resp);
  } else if (failure_reports == 11) {
    fprintf(stderr, "warden-bench: (further failures not shown)\n");
  }
  pthread_mutex_unlock(&log_lock);
}

/* Fills slot with command seq for device dev, stamped now, and starts it. */
static int rest_start(CURLM *multi, rest_slot_t *slot, long seq, long dev) {
  slot->seq = seq;
  slot->dev = dev;
  slot->resp_len = 0;
  slot->resp[0] = '\0';
  snprintf(slot->url, sizeof slot->url, "%s/v1/devices/%s/commands", rest_base, conns[dev].device_id);
  curl_easy_setopt(slot->easy, CURLOPT_URL, slot->url);
  uint64_t v[4] = {run_id, (uint64_t)seq, (uint64_t)dev, 0};
  int64_t t = now_ns();
  v[3] = (uint64_t)t;
  memcpy(slot->body, REST_MAGIC, 8);
  memcpy(slot->body + 8, v, sizeof v);
  slot->t_sent = t;
  mark_start(t);
  atomic_fetch_add(&sent, 1);
  return curl_multi_add_handle(multi, slot->easy) == CURLM_OK ? 0 : -1;
}

/* One answer: a 202 carrying a messageId completes the command; anything else is an error. */
static void rest_answered(rest_slot_t *slot, CURLcode res) {
  int64_t t = now_ns();
  long code = 0, nc = 0;
  if (res == CURLE_OK) curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &code);
  if (curl_easy_getinfo(slot->easy, CURLINFO_NUM_CONNECTS, &nc) == CURLE_OK) http_connections += nc;
  if (res == CURLE_OK && code == 202 && strstr(slot->resp, "\"messageId\"")) {
    atomic_store(&rest_t202[slot->seq], t);
    long i = atomic_fetch_add(&n_latencies, 1);
    if (i < opt.messages) latencies[i] = (uint64_t)(t - slot->t_sent);
    atomic_fetch_add(&completed, 1);
  } else {
    http_errors++;
    http_status[res == CURLE_OK && code > 0 && code < 600 ? code : 0]++;
    atomic_fetch_add(&errors, 1);
    rest_log_error(slot, res, code);
  }
  mark_completion(t);
  atomic_fetch_add(&cmd_settled, 1);
  check_done();
}

/* The REST client: its own thread and libcurl multi handle, C easy handles (one per request slot) sharing
 * the multi's connection cache, so connections are kept alive and reused. */
static void *rest_main(void *arg) {
  (void)arg;
  long C = opt.concurrency;
  CURLM *multi = curl_multi_init();
  rest_slot_t *slots = calloc((size_t)C, sizeof *slots);
  rest_slot_t **free_slots = calloc((size_t)C, sizeof *free_slots);
  struct curl_slist *hdrs = NULL;
  size_t alen = strlen(rest_token) + 32;
  char *auth = malloc(alen);
  bool ok = multi && slots && free_slots && auth;
  if (ok) {
    snprintf(auth, alen, "Authorization: Bearer %s", rest_token);
    struct curl_slist *h1 = curl_slist_append(NULL, auth);
    struct curl_slist *h2 = h1 ? curl_slist_append(h1, "Content-Type: application/octet-stream") : NULL;
    struct curl_slist *h3 = h2 ? curl_slist_append(h2, "Expect:") : NULL;
    hdrs = h3 ? h3 : h2 ? h2 : h1;
    ok = h3 != NULL;
    explicit_bzero(auth, strlen(auth));
  }
  free(auth);
  if (ok) {
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, C);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, C);
  }
  for (long i = 0; ok && i < C; i++) {
    rest_slot_t *sl = &slots[i];
    sl->easy = curl_easy_init();
    sl->body = malloc((size_t)opt.size);
    if (!sl->easy || !sl->body) {
      ok = false;
      break;
    }
    for (long b = REST_HDR; b < opt.size; b++) sl->body[b] = (char)('a' + b % 26);
    curl_easy_setopt(sl->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(sl->easy, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(sl->easy, CURLOPT_POST, 1L);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDS, sl->body);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDSIZE, (long)opt.size);
    curl_easy_setopt(sl->easy, CURLOPT_WRITEFUNCTION, rest_write);
    curl_easy_setopt(sl->easy, CURLOPT_WRITEDATA, sl);
    curl_easy_setopt(sl->easy, CURLOPT_PRIVATE, sl);
    curl_easy_setopt(sl->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(sl->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(sl->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    free_slots[i] = sl;
  }
  if (!ok) {
    fprintf(stderr, "warden-bench: cannot set up the REST client\n");
    atomic_fetch_add(&errors, 1);
    stop_all();
  }

  /* Sending starts once every device's receiver is attached. */
  while (ok && !atomic_load(&send_go) && !atomic_load(&stopping)) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }

  long issued = 0, active = 0, n_free = C;
  int64_t pace0 = 0;
  while (ok && !atomic_load(&stopping)) {
    int64_t now = now_ns();
    long due = opt.messages;
    if (opt.rate > 0) {
      if (!pace0) pace0 = now;
      long sched = (long)((double)(now - pace0) * opt.rate / 1e9) + 1;
      if (sched < due) due = sched;
    }
    while (issued < due && n_free > 0) {
      rest_slot_t *sl = free_slots[--n_free];
      if (rest_start(multi, sl, issued, issued % n_devices) < 0) {
        fprintf(stderr, "warden-bench: curl_multi_add_handle failed\n");
        atomic_fetch_add(&errors, 1);
        free_slots[n_free++] = sl;
        stop_all();
        break;
      }
      if (opt.rate > 0) {
        int64_t lag = sl->t_sent - (pace0 + (int64_t)((double)issued * 1e9 / opt.rate));
        if (lag > rest_max_lag_ns) rest_max_lag_ns = lag;
      }
      issued++;
      active++;
      if (active > rest_max_active) rest_max_active = active;
    }
    int running;
    curl_multi_perform(multi, &running);
    CURLMsg *msg;
    int left;
    long answered = 0;
    while ((msg = curl_multi_info_read(multi, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      rest_slot_t *sl = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
      CURLcode res = msg->data.result;
      curl_multi_remove_handle(multi, sl->easy);
      rest_answered(sl, res);
      free_slots[n_free++] = sl;
      active--;
      answered++;
    }
    if (issued >= opt.messages && active == 0) break;
    if (answered && issued < opt.messages && (opt.rate <= 0 || issued < due)) continue; /* refill at once */
    int timeout_ms = 100;
    if (opt.rate > 0 && issued < opt.messages && n_free > 0) {
      int64_t wait = pace0 + (int64_t)((double)issued * 1e9 / opt.rate) - now_ns();
      timeout_ms = wait <= 0 ? 0 : (int)((wait + 999999) / 1000000);
    }
    curl_multi_poll(multi, NULL, 0, timeout_ms, NULL);
  }

  rest_unanswered = active;
  for (long i = 0; i < C && slots; i++) {
    if (slots[i].easy) {
      curl_multi_remove_handle(multi, slots[i].easy); /* harmless when not added */
      curl_easy_cleanup(slots[i].easy);
    }
    free(slots[i].body);
  }
  if (active > 0) atomic_fetch_add(&errors, active); /* in flight when stopped: outcome unknown */
  curl_slist_free_all(hdrs);
  if (multi) curl_multi_cleanup(multi);
  free(slots);
  free(free_slots);
  return NULL;
}

/* A device received a REST command: accept it, check it is ours, for this device and new; record latency. */
static void rest_device_delivery(bench_conn_t *bc, pn_link_t *l, pn_delivery_t *d) {
  pn_message_t *m = recv_message(l, d);
  if (!m) return;
  int64_t t = now_ns();
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  top_up(l, opt.device_credit);
  pn_data_t *body = pn_message_body(m);
  pn_data_rewind(body);
  pn_bytes_t b = pn_data_next(body) && pn_data_type(body) == PN_BINARY ? pn_data_get_binary(body) : pn_bytes(0, NULL);
  uint64_t v[4];
  if (b.size < REST_HDR || memcmp(b.start, REST_MAGIC, 8) != 0 || (memcpy(v, b.start + 8, sizeof v), v[0] != run_id)) {
    atomic_fetch_add(&stale, 1); /* not a command of this run (another scenario's, or an earlier run's) */
    return;
  }
  uint64_t seq = v[1];
  int64_t dev = (int64_t)v[2], sent_t = (int64_t)v[3];
  if ((long)b.size != opt.size || seq >= (uint64_t)opt.messages) {
    atomic_fetch_add(&malformed, 1);
    return;
  }
  atomic_fetch_add(&received, 1);
  if (dev != bc->index) atomic_fetch_add(&misrouted, 1);
  if (atomic_exchange(&seen[seq], 1)) {
    atomic_fetch_add(&duplicates, 1);
  } else {
    /* Order: a command whose 202 was read before an earlier-received one was even sent must not come after it. */
    int64_t a202 = atomic_load(&rest_t202[seq]);
    if (a202 && a202 < bc->max_sent_seen) atomic_fetch_add(&out_of_order, 1);
    if (sent_t > bc->max_sent_seen) bc->max_sent_seen = sent_t;
    long i = atomic_fetch_add(&n_recv_lat, 1);
    if (i < opt.messages) recv_lat[i] = (uint64_t)(t > sent_t ? t - sent_t : 0);
    atomic_max64(&t_last_recv_ns, t);
    atomic_fetch_add(&received_unique, 1);
  }
  check_done();
}

/* ------------------------------------------------------------------ e2e */

static bench_conn_t *rcv;         /* e2e: the receiver connection (the last entry of conns) */
static atomic_long senders_closed; /* e2e: sender connections closed */

/* The receiver is done once it has every message of this run, or every sender connection is gone and it has
 * everything that was accepted. */
static void e2e_check_done(void) {
  long got = atomic_load(&received_unique);
  bool done = got >= opt.messages ||
              (atomic_load(&senders_closed) >= n_conns - 1 && got >= atomic_load(&completed));
  if (!done || atomic_exchange(&all_done, 1)) return;
  wake(rcv);
}

/* The e2e payload header of a received message: the last opt.size bytes of the transfer when the body is the
 * last section (the usual case, whatever the broker put before it); otherwise the message is decoded and its
 * Data body used. Returns NULL if the message is not of this run (*bad: not even decodable). */
static const uint8_t *e2e_header(const char *buf, size_t n, bool *bad) {
  static _Thread_local pn_message_t *m;
  *bad = false;
  if (n >= (size_t)opt.size) {
    const uint8_t *p = (const uint8_t *)buf + n - (size_t)opt.size;
    uint64_t rid;
    memcpy(&rid, p + 24, 8);
    if (rid == run_id) return p;
  }
  if (!m) m = pn_message();
  if (!m || (pn_message_clear(m), pn_message_decode(m, buf, n)) != 0) {
    *bad = true;
    return NULL;
  }
  pn_data_t *body = pn_message_body(m);
  pn_data_rewind(body);
  if (!pn_data_next(body) || pn_data_type(body) != PN_BINARY) return NULL;
  pn_bytes_t b = pn_data_get_binary(body);
  if (b.size < E2E_HDR) return NULL;
  uint64_t rid;
  memcpy(&rid, b.start + 24, 8);
  return rid == run_id ? (const uint8_t *)b.start : NULL;
}

static void e2e_delivery(bench_conn_t *bc, pn_link_t *l, pn_delivery_t *d) {
  static _Thread_local char *buf;
  static _Thread_local size_t cap;
  (void)bc;
  if (pn_delivery_aborted(d)) {
    pn_delivery_settle(d);
    atomic_fetch_add(&malformed, 1);
    return;
  }
  if (!pn_delivery_readable(d) || pn_delivery_partial(d)) return;
  size_t pending = pn_delivery_pending(d);
  if (pending > cap) {
    char *nb = realloc(buf, pending);
    if (!nb) pending = cap;
    else buf = nb, cap = pending;
  }
  ssize_t n = pn_link_recv(l, buf, pending);
  pn_link_advance(l);
  int64_t t = now_ns();
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  top_up(l, opt.drain_window);
  bool bad = n < 0;
  const uint8_t *h = bad ? NULL : e2e_header(buf, (size_t)n, &bad);
  if (!h) {
    atomic_fetch_add(bad ? &malformed : &stale, 1);
    return;
  }
  uint64_t v[3]; /* send time, run id, sequence */
  memcpy(v, h + 16, sizeof v);
  if (v[2] >= (uint64_t)opt.messages) {
    atomic_fetch_add(&malformed, 1);
    return;
  }
  atomic_fetch_add(&received, 1);
  if (atomic_exchange(&seen[v[2]], 1)) {
    atomic_fetch_add(&duplicates, 1);
  } else {
    int64_t sent_t = (int64_t)v[0];
    long i = atomic_fetch_add(&n_recv_lat, 1);
    if (i < opt.messages) recv_lat[i] = (uint64_t)(t > sent_t ? t - sent_t : 0);
    atomic_max64(&t_last_recv_ns, t);
    atomic_fetch_add(&received_unique, 1);
  }
  mark_completion(t);
  e2e_check_done();
}

/* ------------------------------------------------------------------ connections */

static void start_connection(bench_conn_t *bc);
static void finish(void);

/* Pass 1 connects all N (C at once); with --reconnect (or --resume) pass 2 then closes and reconnects them one
 * by one, at most ROLL_WIDTH cycling at once: Proton 0.37 saves a client's TLS session under its session id when
 * the connection shuts down, in a process-wide cache of only 4 (SSL_CACHE_SIZE in ssl/openssl.c), and offers it
 * to the next transport with that id; reconnecting each connection right after closing it keeps its session in
 * that cache, so every reconnect can resume. */
#define ROLL_WIDTH 3

typedef enum { CP_CONNECTING, CP_ROLLING, CP_SETTLING, CP_HOLDING, CP_CLOSING, CP_CLOSED, CP_DONE } conn_phase_t;

typedef struct {
  long ready, failed, resumed;
  int64_t t_start, t_all;            /* pass started; every connection ready or failed */
  uint64_t *lat;                     /* ns from starting a connection to it being ready */
  long n_lat;
  long server_rss_kb, client_rss_kb; /* after the settle time; -1 = unknown */
  double server_cpu0, server_cpu1, client_cpu0, client_cpu1; /* CPU seconds at t_start and t_all; < 0 = unknown */
} conn_pass_t;

static pthread_mutex_t cp_lock = PTHREAD_MUTEX_INITIALIZER; /* guards everything below */
static conn_phase_t cp_phase;
static int cp_pass;       /* 0 = connect all, 1 = rolling reconnect */
static conn_pass_t cp[2];
static long cp_next;      /* next connection to start (pass 1) or to close and reconnect (pass 2) */
static long cp_pending;   /* started (pass 2: or closing), neither ready nor failed */
static int64_t cp_phase_end;
static long cp_rss0_server = -1, cp_rss0_client = -1;
static long cp_rss_closed_server = -1; /* once the server is quiet after every connection closed */
/* After the last close: the server counts as quiet once it used under QUIET_CPU_S of CPU in a QUIET_WINDOW_NS
 * window; its RSS is read the settle time after that (warden trims its heap once connections stop going), or at
 * QUIET_MAX_NS after the last close if it never got quiet. */
#define QUIET_WINDOW_NS 1000000000LL
#define QUIET_CPU_S 0.02
#define QUIET_MAX_NS 120000000000LL
static int64_t cp_closed_at, cp_quiet_at, cp_cpu_sampled_at;
static double cp_cpu_sampled = -1;
static pn_ssl_domain_t *ssl_domain;
static long src_addrs;    /* source addresses in use (1 = the kernel's choice) */
static atomic_long src_counter;
static char tls_protocol[32], tls_cipher[64]; /* of the first TLS connection ready */

/* VmRSS of a process (0 = this one) in kB, -1 if unknown. */
static long rss_kb(long pid) {
  char path[64], line[256];
  if (pid > 0) snprintf(path, sizeof path, "/proc/%ld/status", pid);
  else snprintf(path, sizeof path, "/proc/self/status");
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

/* User + system CPU seconds of a process (0 = this one, all threads), -1 if unknown. */
static double cpu_s(long pid) {
  char path[64], buf[1024];
  if (pid > 0) snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  else snprintf(path, sizeof path, "/proc/self/stat");
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the command name may hold spaces; fields resume after it */
  if (!p) return -1;
  unsigned long long ut = 0, st = 0;
  /* after ')': state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime */
  if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
  long hz = sysconf(_SC_CLK_TCK);
  return hz > 0 ? (double)(ut + st) / (double)hz : -1;
}

/* Interposes libc's connect() (Proton's proactor calls it through the PLT, and an executable's definition
 * wins): Proton 0.37 has no way to bind a client socket before connecting, and one source address gives at
 * most ~28 000 connections to one server port (the ephemeral range, fewer with TIME_WAIT). With
 * src_addrs K > 1, sockets connecting to 127.x.x.x are bound to 127.0.0.1 ... 127.0.0.K round-robin first
 * (IP_BIND_ADDRESS_NO_PORT: the port is still picked at connect time, per 4-tuple). Anything else, and every
 * other scenario, goes straight to the system call. */
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  if (src_addrs > 1 && addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in dst;
    memcpy(&dst, addr, sizeof dst);
    if ((ntohl(dst.sin_addr.s_addr) >> 24) == 127) {
      long k = atomic_fetch_add(&src_counter, 1) % src_addrs;
      struct sockaddr_in src;
      memset(&src, 0, sizeof src);
      src.sin_family = AF_INET;
      src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)k);
      int one = 1;
      setsockopt(fd, IPPROTO_IP, 24 /* IP_BIND_ADDRESS_NO_PORT */, &one, sizeof one);
      (void)bind(fd, (const struct sockaddr *)&src, sizeof src); /* on failure the kernel picks, as usual */
    }
  }
  return (int)syscall(SYS_connect, fd, addr, len);
}

static void cp_start_one(bench_conn_t *bc) {
  bc->ready = bc->closing = bc->failed = bc->rolling = false;
  bc->link = NULL;
  bc->t_connect = now_ns();
  start_connection(bc);
}

/* Pass 1: starts connections until C are in progress or all are started. Pass 2: closes connections (each is
 * reconnected when its transport has closed) until ROLL_WIDTH are cycling. Called with cp_lock held. */
static void cp_pump_locked(void) {
  while (!atomic_load(&stopping) && cp_next < n_conns) {
    bench_conn_t *bc = &conns[cp_next];
    if (cp_phase == CP_CONNECTING && cp_pending < opt.connect_concurrency) {
      atomic_fetch_add(&live_conns, 1);
      cp_start_one(bc);
    } else if (cp_phase == CP_ROLLING && cp_pending < ROLL_WIDTH) {
      pthread_mutex_lock(&conn_lock);
      bool open = bc->pn != NULL;
      if (open) {
        bc->rolling = true;
        pn_connection_wake(bc->pn); /* closes itself in its WAKE, restarts in its TRANSPORT_CLOSED */
      }
      pthread_mutex_unlock(&conn_lock);
      if (!open) { /* lost since pass 1: just connect it */
        atomic_fetch_add(&live_conns, 1);
        cp_start_one(bc);
      }
    } else {
      break;
    }
    cp_next++;
    cp_pending++;
  }
}

static void cp_begin_pass(int pass) {
  pthread_mutex_lock(&cp_lock);
  cp_pass = pass;
  cp_phase = pass == 0 ? CP_CONNECTING : CP_ROLLING;
  cp_next = 0;
  cp_pending = 0;
  conn_pass_t *p = &cp[pass];
  p->t_start = now_ns();
  p->server_rss_kb = p->client_rss_kb = -1;
  p->server_cpu0 = opt.server_pid ? cpu_s(opt.server_pid) : -1;
  p->client_cpu0 = cpu_s(0);
  cp_pump_locked();
  pthread_mutex_unlock(&cp_lock);
}

/* A connection is ready (ok) or failed before it was: account for it, start the next one. */
static void cp_settle_one(bench_conn_t *bc, bool ok) {
  int64_t t = now_ns();
  pthread_mutex_lock(&cp_lock);
  conn_pass_t *p = &cp[cp_pass];
  bc->ready = true; /* not counted twice */
  if (ok) {
    p->ready++;
    if (p->n_lat < n_conns) p->lat[p->n_lat++] = (uint64_t)(t - bc->t_connect);
    if (opt.tls && bc->pn) {
      pn_transport_t *tr = pn_connection_transport(bc->pn);
      if (tr && pn_ssl_resume_status(pn_ssl(tr)) == PN_SSL_RESUME_REUSED) p->resumed++;
      if (tr && !tls_protocol[0]) {
        pn_ssl_get_protocol_name(pn_ssl(tr), tls_protocol, sizeof tls_protocol);
        pn_ssl_get_cipher_name(pn_ssl(tr), tls_cipher, sizeof tls_cipher);
      }
    }
  } else {
    p->failed++;
  }
  cp_pending--;
  if (cp_phase == CP_CONNECTING || cp_phase == CP_ROLLING) {
    if (p->ready + p->failed >= n_conns) {
      p->t_all = t;
      p->server_cpu1 = opt.server_pid ? cpu_s(opt.server_pid) : -1;
      p->client_cpu1 = cpu_s(0);
      cp_phase = CP_SETTLING;
      cp_phase_end = t + opt.settle_ms * 1000000;
    } else {
      cp_pump_locked();
    }
  }
  pthread_mutex_unlock(&cp_lock);
}

/* Pass 2: a connection closed to be reconnected has closed: connect it again (same session id). */
static void cp_restart(bench_conn_t *bc) {
  pthread_mutex_lock(&cp_lock);
  cp_start_one(bc);
  pthread_mutex_unlock(&cp_lock);
}

static void cp_close_all(void) {
  for (long i = 0; i < n_conns; i++) wake(&conns[i]); /* each closes itself in its own WAKE */
}

/* Every connection has closed. */
static void cp_all_closed(void) {
  pthread_mutex_lock(&cp_lock);
  if (cp_phase != CP_CLOSING) { /* e.g. every connection failed: the tick gets to CP_CLOSING and calls again */
    pthread_mutex_unlock(&cp_lock);
    return;
  }
  /* What the server gives back once its connections are gone is measured once it has finished closing them
   * (a server may take seconds for thousands of TLS connections), after the same settle time. */
  cp_phase = CP_CLOSED;
  cp_closed_at = cp_cpu_sampled_at = now_ns();
  cp_quiet_at = 0;
  cp_cpu_sampled = opt.server_pid ? cpu_s(opt.server_pid) : -1;
  pthread_mutex_unlock(&cp_lock);
}

/* Called on every tick: moves through settle -> hold -> (rolling reconnect -> settle ->) close. */
static void cp_tick(void) {
  int64_t t = now_ns();
  bool close_now = false, roll_now = false;
  pthread_mutex_lock(&cp_lock);
  if (cp_phase == CP_SETTLING && t >= cp_phase_end) {
    cp[cp_pass].server_rss_kb = opt.server_pid ? rss_kb(opt.server_pid) : -1;
    cp[cp_pass].client_rss_kb = rss_kb(0);
    cp_phase = CP_HOLDING;
    cp_phase_end = t + (cp_pass == 0 ? opt.hold_s * 1000000000LL : 0);
  }
  if (cp_phase == CP_HOLDING && t >= cp_phase_end) {
    if (cp_pass == 0 && opt.reconnect) {
      roll_now = true;
    } else {
      cp_phase = CP_CLOSING;
      close_now = true;
    }
  }
  bool done_now = false;
  if (cp_phase == CP_CLOSED && opt.server_pid && !cp_quiet_at && t - cp_cpu_sampled_at >= QUIET_WINDOW_NS) {
    double cpu = cpu_s(opt.server_pid);
    if (cpu < 0 || cp_cpu_sampled < 0 || cpu - cp_cpu_sampled < QUIET_CPU_S || t - cp_closed_at >= QUIET_MAX_NS)
      cp_quiet_at = cp_cpu_sampled_at; /* quiet since the window began */
    cp_cpu_sampled = cpu;
    cp_cpu_sampled_at = t;
  }
  if (cp_phase == CP_CLOSED && (!opt.server_pid || (cp_quiet_at && t >= cp_quiet_at + opt.settle_ms * 1000000))) {
    cp_rss_closed_server = opt.server_pid ? rss_kb(opt.server_pid) : -1;
    cp_phase = CP_DONE;
    done_now = true;
  }
  pthread_mutex_unlock(&cp_lock);
  if (roll_now) cp_begin_pass(1);
  if (close_now) cp_close_all();
  if (done_now) finish();
}

/* SSL client domain for --tls: verifies the server against --ca (and its name against --sas-host), or, without
 * --ca, does not verify it at all; presents cert with key when they are given. NULL on error (said). */
static pn_ssl_domain_t *client_domain(const char *cert, const char *key) {
  pn_ssl_domain_t *d = pn_ssl_domain(PN_SSL_MODE_CLIENT);
  if (!d) return NULL;
  if (opt.ca) {
    if (pn_ssl_domain_set_trusted_ca_db(d, opt.ca) != 0 ||
        pn_ssl_domain_set_peer_authentication(d, PN_SSL_VERIFY_PEER_NAME, NULL) != 0) {
      fprintf(stderr, "warden-bench: cannot use %s as the CA\n", opt.ca);
      pn_ssl_domain_free(d);
      return NULL;
    }
  } else if (pn_ssl_domain_set_peer_authentication(d, PN_SSL_ANONYMOUS_PEER, NULL) != 0) {
    pn_ssl_domain_free(d);
    return NULL;
  }
  if (cert && pn_ssl_domain_set_credentials(d, cert, key, NULL) != 0) {
    fprintf(stderr, "warden-bench: cannot use the certificate %s with the key %s\n", cert, key);
    pn_ssl_domain_free(d);
    return NULL;
  }
  return d;
}

static atomic_int finished;

static void finish(void) {
  if (atomic_exchange(&finished, 1)) return;
  pn_proactor_cancel_timeout(proactor);
  pn_proactor_interrupt(proactor);
}

static void on_tick(void) {
  int64_t t = now_ns();
  double elapsed = (double)(t - t_launch_ns) / 1e9;
  static double last_progress;
  if (opt.progress_s > 0 && elapsed - last_progress >= (double)opt.progress_s) {
    last_progress = elapsed;
    if (opt.scenario == SC_COMMANDS || opt.scenario == SC_REST || opt.scenario == SC_E2E)
      fprintf(stderr, "warden-bench: %.1fs: %ld sent, %ld accepted, %ld received, %ld errors, %ld connections live\n",
              elapsed, atomic_load(&sent), atomic_load(&completed), atomic_load(&received), atomic_load(&errors),
              atomic_load(&live_conns));
    else if (opt.scenario == SC_CONNECTIONS)
      fprintf(stderr, "warden-bench: %.1fs: pass %d: %ld ready, %ld failed, %ld connections live\n", elapsed,
              cp_pass + 1, cp[cp_pass].ready, cp[cp_pass].failed, atomic_load(&live_conns));
    else
      fprintf(stderr, "warden-bench: %.1fs: %ld completed, %ld errors, %ld connections live\n", elapsed,
              atomic_load(&completed), atomic_load(&errors), atomic_load(&live_conns));
  }
  if (atomic_load(&timed_out)) {
    /* Grace period over: connections did not close. Give up on them. */
    if (elapsed > (double)opt.timeout_s + GRACE_MS / 1000.0) {
      fprintf(stderr, "warden-bench: connections did not close within %d ms of the timeout\n", GRACE_MS);
      finish();
      return;
    }
  } else if (elapsed >= (double)opt.timeout_s) {
    atomic_store(&timed_out, 1);
    if (opt.scenario == SC_CONNECTIONS)
      fprintf(stderr, "warden-bench: timeout after %ld s in pass %d: %ld of %ld connections ready\n", opt.timeout_s,
              cp_pass + 1, cp[cp_pass].ready, n_conns);
    else
      fprintf(stderr, "warden-bench: timeout after %ld s: %ld of %ld messages completed\n", opt.timeout_s,
              atomic_load(&completed), opt.messages);
    stop_all();
    if (opt.scenario == SC_CONNECTIONS && atomic_load(&live_conns) == 0) finish();
  }
  if (opt.scenario == SC_CONNECTIONS && !atomic_load(&stopping)) {
    cp_tick();
    if (cp_phase == CP_CLOSING && atomic_load(&live_conns) == 0) cp_all_closed();
  }
  /* Paced commands: wake the service connection every millisecond to send what the schedule says is due. */
  bool pacing = opt.scenario == SC_COMMANDS && opt.rate > 0 && atomic_load(&send_go) && !atomic_load(&all_done) &&
                !atomic_load(&stopping) && atomic_load(&sent) < opt.messages;
  if (pacing) wake(svc);
  /* Paced e2e: wake the senders every millisecond the same way; once everything is sent, at every tick, so a
   * sender that was idle waiting for its turn when the last message went out still closes. */
  bool e2e_pacing = opt.scenario == SC_E2E && opt.rate > 0 && !atomic_load(&stopping) && atomic_load(&pool) > 0;
  if (opt.scenario == SC_E2E && opt.rate > 0 && !atomic_load(&stopping) && atomic_load(&send_go))
    for (long i = 0; i < n_conns - 1; i++) wake(&conns[i]);
  pn_proactor_set_timeout(proactor, pacing || e2e_pacing ||
                                            (opt.scenario == SC_COMMANDS && opt.rate > 0 && !atomic_load(&send_go))
                                        ? 1 : TICK_MS);
}

static void on_open(bench_conn_t *bc) {
  pn_connection_t *c = bc->pn;
  pn_session_t *s = pn_session(c);
  pn_session_open(s);
  if (opt.scenario == SC_COMMANDS || opt.scenario == SC_REST) {
    commands_open(bc, s); /* rest: device connections only */
  } else if (opt.scenario == SC_CONNECTIONS) {
    /* An idle device: a receiver on its `commands` (or, generic, on --address); --no-link: none. */
    const char *addr = opt.address_given ? opt.address : bc->device_id ? "commands" : NULL;
    if (addr && !opt.no_link) {
      pn_link_t *l = pn_receiver(s, "bench-idle");
      pn_terminus_set_address(pn_link_source(l), addr);
      pn_terminus_set_address(pn_link_target(l), "bench-idle");
      pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
      pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
      pn_link_open(l);
      pn_link_flow(l, (int)opt.device_credit);
      bc->link = l;
    }
  } else if (opt.scenario == SC_INGEST || (opt.scenario == SC_E2E && !bc->is_service)) {
    pn_link_t *l = pn_sender(s, "bench-telemetry");
    pn_terminus_set_address(pn_link_target(l), opt.address);
    if (opt.durable_terminus) pn_terminus_set_durability(pn_link_target(l), PN_CONFIGURATION);
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
    pn_link_open(l);
    bc->link = l;
  } else {
    /* drain, and the e2e receiver: --source, else --address (a broker's queue), else warden's
     * telemetry/<group> */
    char addr[300];
    if (opt.source)
      snprintf(addr, sizeof addr, "%s", opt.source);
    else if (opt.address_given)
      snprintf(addr, sizeof addr, "%s", opt.address);
    else
      snprintf(addr, sizeof addr, "telemetry/%s", opt.group);
    pn_link_t *l = pn_receiver(s, "bench-drain");
    pn_terminus_set_address(pn_link_source(l), addr);
    if (opt.durable_terminus) pn_terminus_set_durability(pn_link_source(l), PN_CONFIGURATION);
    pn_terminus_set_address(pn_link_target(l), "bench-drain");
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_set_rcv_settle_mode(l, PN_RCV_FIRST);
    pn_link_open(l);
    bc->link = l;
    long window = opt.scenario == SC_E2E ? opt.drain_window : opt.window;
    long target = opt.messages < window ? opt.messages : window;
    pn_link_flow(l, (int)target);
  }
}

/* Returns false when this thread should leave its loop. */
static bool handle(pn_event_t *e) {
  pn_connection_t *c = pn_event_connection(e);
  bench_conn_t *bc = c ? pn_connection_get_context(c) : NULL;
  switch (pn_event_type(e)) {
    case PN_CONNECTION_INIT:
      pn_connection_open(c);
      if (bc) on_open(bc);
      break;

    case PN_CONNECTION_REMOTE_OPEN:
      if (opt.scenario == SC_CONNECTIONS && bc && !bc->link && !bc->ready && !bc->closing) cp_settle_one(bc, true);
      break;

    case PN_LINK_REMOTE_OPEN: {
      pn_link_t *l = pn_event_link(e);
      if (opt.scenario == SC_DRAIN && pn_link_is_receiver(l)) mark_start(now_ns());
      if (opt.scenario == SC_CONNECTIONS && bc && l == bc->link && !bc->ready && !bc->closing &&
          pn_link_remote_source(l) && pn_terminus_get_address(pn_link_remote_source(l)))
        cp_settle_one(bc, true);
      if (opt.scenario == SC_E2E && bc && bc->is_service && pn_link_is_receiver(l) && !atomic_exchange(&send_go, 1))
        for (long i = 0; i < n_conns - 1; i++) wake(&conns[i]);
      if ((opt.scenario == SC_COMMANDS || opt.scenario == SC_REST) && bc && !bc->closing) {
        if (!bc->is_service && l == bc->link) {
          atomic_fetch_add(&devices_ready, 1);
          maybe_go();
        } else if (bc->is_service && pn_link_is_sender(l)) {
          bc->links_open++;
          maybe_go();
        }
      }
      break;
    }

    case PN_CONNECTION_WAKE:
      if (bc && opt.scenario == SC_CONNECTIONS) close_conn(bc); /* the only reason to wake one */
      if (bc && opt.scenario == SC_E2E) {
        if (bc->is_service) {
          if (atomic_load(&all_done)) close_conn(bc);
        } else {
          ingest_pump(bc); /* send_go */
        }
      }
      if (bc && (opt.scenario == SC_COMMANDS || opt.scenario == SC_REST)) {
        if (atomic_load(&all_done))
          close_conn(bc);
        else if (bc->is_service)
          svc_pump(bc);
      }
      break;

    case PN_LINK_FLOW:
      if (bc && (opt.scenario == SC_INGEST || opt.scenario == SC_E2E) && pn_link_is_sender(pn_event_link(e)))
        ingest_pump(bc);
      if (bc && opt.scenario == SC_COMMANDS && bc->is_service && pn_link_is_sender(pn_event_link(e))) svc_pump(bc);
      break;

    case PN_DELIVERY: {
      pn_delivery_t *d = pn_event_delivery(e);
      pn_link_t *l = pn_event_link(e);
      if (!bc) break;
      if (opt.scenario == SC_REST) {
        if (!pn_link_is_sender(l)) rest_device_delivery(bc, l, d);
      } else if (opt.scenario == SC_CONNECTIONS) {
        if (!pn_link_is_sender(l) && pn_delivery_readable(d) && !pn_delivery_partial(d)) {
          pn_link_advance(l); /* an idle device accepts whatever it is sent */
          pn_delivery_update(d, PN_ACCEPTED);
          pn_delivery_settle(d);
        }
      } else if (opt.scenario == SC_E2E && !pn_link_is_sender(l)) {
        e2e_delivery(bc, l, d);
      } else if (opt.scenario == SC_COMMANDS) {
        if (pn_link_is_sender(l)) {
          uint64_t st = pn_delivery_remote_state(d);
          if (pn_delivery_settled(d) || st == PN_ACCEPTED || st == PN_REJECTED || st == PN_RELEASED ||
              st == PN_MODIFIED)
            svc_settled(bc, d);
        } else if (bc->is_service) {
          feedback_delivery(l, d);
        } else {
          device_delivery(bc, l, d);
        }
      } else if (pn_link_is_sender(l)) {
        uint64_t st = pn_delivery_remote_state(d);
        if (pn_delivery_settled(d) || st == PN_ACCEPTED || st == PN_REJECTED || st == PN_RELEASED ||
            st == PN_MODIFIED) {
          ingest_settled(bc, d);
          ingest_pump(bc);
        }
      } else {
        drain_delivery(bc, l, d);
      }
      break;
    }

    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH: {
      pn_link_t *l = pn_event_link(e);
      if (bc && !bc->closing) {
        report_failure(bc, "link closed by warden", pn_link_remote_condition(l));
        bc->failed = true;
        close_conn(bc);
      }
      break;
    }

    case PN_SESSION_REMOTE_CLOSE:
      if (bc && !bc->closing) {
        report_failure(bc, "session closed by warden", pn_session_remote_condition(pn_event_session(e)));
        bc->failed = true;
        close_conn(bc);
      }
      break;

    case PN_CONNECTION_REMOTE_CLOSE:
      if (bc && !bc->closing) {
        report_failure(bc, "connection closed by warden", pn_connection_remote_condition(c));
        bc->failed = true;
        close_conn(bc);
      } else if (bc && pn_condition_is_set(pn_connection_remote_condition(c))) {
        report_failure(bc, "connection closed by warden", pn_connection_remote_condition(c));
        bc->failed = true;
      }
      break;

    case PN_TRANSPORT_ERROR:
      if (bc && !atomic_load(&stopping)) {
        report_failure(bc, "transport error", pn_transport_condition(pn_event_transport(e)));
        bc->failed = true;
      }
      break;

    case PN_TRANSPORT_CLOSED:
      if (bc) {
        if (bc->failed || (!bc->closing && !atomic_load(&stopping))) atomic_fetch_add(&conn_failures, 1);
        if (bc->inflight > 0) atomic_fetch_add(&errors, bc->inflight); /* unsettled: outcome unknown */
        bc->inflight = 0;
        pthread_mutex_lock(&conn_lock);
        bc->pn = NULL;
        pthread_mutex_unlock(&conn_lock);
        bc->link = NULL;
        if (opt.scenario == SC_CONNECTIONS) {
          if (bc->rolling && !atomic_load(&stopping)) {
            cp_restart(bc); /* still live: not counted down */
            break;
          }
          if (!bc->ready) cp_settle_one(bc, false);
          long left = atomic_fetch_sub(&live_conns, 1) - 1;
          if (left == 0) {
            if (atomic_load(&stopping))
              finish();
            else
              cp_all_closed();
          }
          break;
        }
        if (opt.scenario == SC_E2E && !bc->is_service) {
          atomic_fetch_add(&senders_closed, 1);
          e2e_check_done();
        } else if (opt.scenario == SC_E2E && !atomic_load(&all_done) && !atomic_load(&stopping)) {
          stop_all(); /* the receiver is gone: the run cannot complete */
        }
        /* commands: every connection is needed to the end; losing one early ends the run */
        if ((opt.scenario == SC_COMMANDS || opt.scenario == SC_REST) && !atomic_load(&all_done) &&
            !atomic_load(&stopping))
          stop_all();
        if (atomic_fetch_sub(&live_conns, 1) == 1) finish();
      }
      break;

    case PN_PROACTOR_TIMEOUT:
      on_tick();
      break;

    case PN_PROACTOR_INACTIVE:
      /* connections: between two passes nothing may be open for a moment; cp_all_closed() finishes */
      if (opt.scenario != SC_CONNECTIONS || atomic_load(&stopping)) finish();
      break;

    case PN_PROACTOR_INTERRUPT:
      return false; /* the worker passes it on to the next thread after leaving the batch */

    default:
      break;
  }
  return true;
}

static void *worker(void *arg) {
  (void)arg;
  for (bool go = true; go;) {
    pn_event_batch_t *b = pn_proactor_wait(proactor);
    pn_event_t *e;
    while ((e = pn_event_batch_next(b)))
      if (!handle(e)) go = false;
    pn_proactor_done(proactor, b);
  }
  /* Interrupts coalesce: wake the next thread only now (inside the batch it would be re-delivered here). */
  if (opt.threads > 1) pn_proactor_interrupt(proactor);
  return NULL;
}

/* ------------------------------------------------------------------ setup */

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
  return s;
}

/* Reads `device_id base64key [cert.pem key.pem]` lines (bench/make-devices.py); builds a SAS token for each of
 * the first opt.connections, or with --external an SSL domain presenting its certificate. */
static int load_devices(void) {
  FILE *f = fopen(opt.devices_file, "r");
  if (!f) {
    fprintf(stderr, "warden-bench: %s: %s\n", opt.devices_file, strerror(errno));
    return -1;
  }
  char line[1024];
  long n = 0, lineno = 0;
  int64_t expiry = (int64_t)time(NULL) + opt.timeout_s + 3600;
  while (n < opt.connections && fgets(line, sizeof line, f)) {
    lineno++;
    char *s = trim(line);
    if (!*s || *s == '#') continue;
    char *sp = strpbrk(s, " \t");
    if (!sp) goto bad;
    *sp = '\0';
    char *key64 = strtok(sp + 1, " \t"), *cert = strtok(NULL, " \t"), *cert_key = strtok(NULL, " \t");
    uint8_t key[64];
    int klen = key64 ? wd_base64_decode(key64, strlen(key64), key, sizeof key) : -1;
    if (klen != WD_KEY_BYTES || !wd_id_valid(s) || (opt.external && !cert_key)) goto bad;
    conns[n].device_id = strdup(s);
    conns[n].password = wd_sas_build(opt.sas_host, s, key, expiry);
    explicit_bzero(key, sizeof key);
    if (!conns[n].device_id || !conns[n].password) {
      fclose(f);
      fprintf(stderr, "warden-bench: cannot build a SAS token for %s\n", s);
      return -1;
    }
    if (opt.external && !(conns[n].ssl_domain = client_domain(cert, cert_key))) {
      fclose(f);
      return -1;
    }
    n++;
    continue;
  bad:
    fclose(f);
    fprintf(stderr, "warden-bench: %s:%ld: expected 'device_id base64key%s' with a 32-byte key\n", opt.devices_file,
            lineno, opt.external ? " cert.pem key.pem" : "");
    return -1;
  }
  fclose(f);
  if (n < opt.connections) {
    fprintf(stderr, "warden-bench: %s has %ld devices, %ld connections asked for\n", opt.devices_file, n,
            opt.connections);
    return -1;
  }
  return 0;
}

static void start_connection(bench_conn_t *bc) {
  pn_connection_t *c = pn_connection();
  pn_transport_t *t = pn_transport();
  char container[160];
  snprintf(container, sizeof container, "warden-bench-%ld-%d", (long)getpid(), bc->index);
  pn_connection_set_container(c, container);
  pn_connection_set_hostname(c, opt.sas_host);
  pn_sasl_t *s = pn_sasl(t);
  if (opt.sasl_anonymous && !bc->device_id) {
    pn_sasl_allowed_mechs(s, "ANONYMOUS");
  } else if (bc->ssl_domain) {
    pn_sasl_allowed_mechs(s, "EXTERNAL"); /* warden knows the device by its certificate */
  } else {
    pn_connection_set_user(c, bc->device_id ? bc->device_id : opt.user);
    pn_connection_set_password(c, bc->password);
    pn_sasl_allowed_mechs(s, "PLAIN");
    pn_sasl_set_allow_insecure_mechs(s, true);
  }
  if (ssl_domain) {
    /* --resume: Proton keeps the session of a transport that shut down under its session id and offers it
     * again to a new transport with the same id (its cache holds the last 4 sessions, process-wide). */
    char sid[80];
    snprintf(sid, sizeof sid, "warden-bench-%ld-%d", (long)getpid(), bc->index);
    pn_ssl_t *ssl = pn_ssl(t);
    pn_ssl_init(ssl, bc->ssl_domain ? bc->ssl_domain : ssl_domain, opt.resume ? sid : NULL);
    pn_ssl_set_peer_hostname(ssl, opt.sas_host);
  }
  pn_connection_set_context(c, bc);
  pthread_mutex_lock(&conn_lock);
  bc->pn = c;
  pthread_mutex_unlock(&conn_lock);
  char addr[300];
  pn_proactor_addr(addr, sizeof addr, opt.host, opt.port);
  pn_proactor_connect2(proactor, c, t, addr);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double percentile_ms(const uint64_t *v, long n, double p) {
  if (n <= 0) return NAN;
  long rank = (long)ceil(p * (double)n);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return (double)v[rank - 1] / 1e6;
}

/* Sorts v in place and reads p50, p99 and p99.9 from it; NAN when it is empty. */
static void sorted_percentiles(uint64_t *v, long n, double *p50, double *p99, double *p999) {
  if (n > 0) qsort(v, (size_t)n, sizeof *v, cmp_u64);
  *p50 = percentile_ms(v, n, 0.50);
  *p99 = percentile_ms(v, n, 0.99);
  *p999 = percentile_ms(v, n, 0.999);
}

static void json_num(const char *name, double v, bool last) {
  if (isnan(v))
    printf("\"%s\":null%s", name, last ? "" : ",");
  else
    printf("\"%s\":%.3f%s", name, v, last ? "" : ",");
}

/* "<prefix>p50_ms", "<prefix>p99_ms" and "<prefix>p999_ms". */
static void json_percentiles(const char *prefix, double p50, double p99, double p999) {
  char k[64];
  snprintf(k, sizeof k, "%sp50_ms", prefix);
  json_num(k, p50, false);
  snprintf(k, sizeof k, "%sp99_ms", prefix);
  json_num(k, p99, false);
  snprintf(k, sizeof k, "%sp999_ms", prefix);
  json_num(k, p999, false);
}

/* What every message scenario reports alike: how much was done, how fast, the
 * latency percentiles, the longest pause, and the errors. */
static void json_run(long done, double secs, double rate, double p50, double p99, double p999, long errs) {
  printf("\"messages\":%ld,\"completed\":%ld,", opt.messages, done);
  json_num("seconds", secs, false);
  json_num("rate", rate, false);
  json_percentiles("", p50, p99, p999);
  json_num("max_gap_ms", (double)atomic_load(&max_gap_ns) / 1e6, false);
  printf("\"errors\":%ld,\"connection_failures\":%ld,", errs, atomic_load(&conn_failures));
}

/* target_rate, duration and max_send_lag_ms of a paced run; nulls for an unpaced one. */
static void json_pacing(int64_t lag_ns) {
  if (opt.rate > 0) {
    json_num("target_rate", opt.rate, false);
    printf("\"duration\":%ld,", opt.messages_given ? (long)ceil((double)opt.messages / opt.rate) : opt.duration_s);
    json_num("max_send_lag_ms", (double)lag_ns / 1e6, false);
  } else {
    printf("\"target_rate\":null,\"duration\":null,\"max_send_lag_ms\":null,");
  }
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: warden-bench ingest --port P --devices FILE [options]\n"
          "       warden-bench drain  --port P --user NAME (--password PW | --password-file F) [options]\n"
          "       warden-bench commands --port P --devices FILE --user NAME (--password PW | --password-file F)\n"
          "                           [options]\n"
          "       warden-bench rest --port P --http-port H --devices FILE (--token T | --token-file F) [options]\n"
          "       warden-bench e2e --port P (--devices FILE | CREDS) [receiver: --user NAME --password PW | ...]\n"
          "                           [options]\n"
          "       warden-bench connections --port P (--devices FILE | CREDS) --connections N [options]\n"
          "CREDS (generic mode, any AMQP 1.0 broker): --user NAME (--password PW | --password-file F), or\n"
          "         --sasl-anonymous\n"
          "\n"
          "common:  --host H (127.0.0.1)  --port P  --window W (100)  --messages M (10000)\n"
          "         --timeout SECONDS (120)  --threads T (1, proactor threads)  --progress SECONDS (0 = off)\n"
          "ingest:  --devices FILE (lines 'device_id base64key')  --connections N (1)  --size BYTES (256)\n"
          "         --sas-host NAME (localhost, warden's [gateway] hostname)  --address A (telemetry)\n"
          "drain:   --user NAME  --password PW | --password-file F  --group G (bench)\n"
          "         --verify (decode each message; check annotations, body size with --size, duplicates)\n"
          "commands: --devices FILE  --connections N (1, device connections)  --user NAME (the service)\n"
          "         --password PW | --password-file F  --window W (100, unsettled commands at the service)\n"
          "         --messages M (10000, unpaced)  --rate R (0 = unpaced; commands/s)  --duration D (10, paced:\n"
          "         M = R x D unless --messages)  --size BYTES (256)  --device-credit C (100)  --anonymous\n"
          "         (one sender on the anonymous relay, with `to`)  --feedback (also read `feedback`; wait for\n"
          "         one `completed` per received command)  --sas-host NAME (localhost)\n"
          "rest:    --http-port H (warden's REST port on --host)  --token T | --token-file F (bearer; commands:send)\n"
          "         --devices FILE  --connections N (1, device connections)  --concurrency C (32, requests in\n"
          "         flight)  --messages M (10000, unpaced)  --rate R (0 = unpaced; requests/s)  --duration D (10,\n"
          "         paced: M = R x D unless --messages)  --size BYTES (256, at least 40)  --device-credit C (100)\n"
          "e2e:     senders as in ingest (--devices, or CREDS), one receiver as in drain (--user/--password or\n"
          "         --sasl-anonymous; --group G) with credit --drain-window W (500); --size at least 40;\n"
          "         --rate R (messages/s, paced; M = R x --duration D (10) unless --messages)\n"
          "generic: --address A (ingest/e2e: the senders' target; drain/e2e: also the receiver's source)\n"
          "         --source A (drain/e2e: the receiver's source alone)  --durable-terminus (ask for a durable\n"
          "         queue: terminus durability `configuration`)  --tls [--ca FILE] (verify the server and its name,\n"
          "         --sas-host, against FILE; without --ca: no verification)\n"
          "connections: --connections N  --connect-concurrency C (100, connecting at once)  --pid P (the server:\n"
          "         RSS per connection)  --settle MS (2000, wait before reading RSS)  --hold S (0, stay idle)\n"
          "         --reconnect (then close and reconnect each, 3 at a time)  --resume (--reconnect with a TLS\n"
          "         session id per connection: count resumed sessions)  --external (with --tls: each device logs in\n"
          "         with its certificate, SASL EXTERNAL; --devices lines `id key cert.pem key.pem`, as\n"
          "         bench/make-devices.py --certs writes them)  --no-link (devices: no receiver on\n"
          "         `commands`)  --source-addresses K (bind to 127.0.0.1..K round-robin; default 1 up to 1 000\n"
          "         connections, else ceil(N / 1000), at most 254)\n");
}

static bool parse_long(const char *s, long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || !*s || *end || v < min || v > max) return false;
  *out = v;
  return true;
}

static int parse_args(int argc, char **argv) {
  if (argc < 2) return -1;
  if (strcmp(argv[1], "ingest") == 0)
    opt.scenario = SC_INGEST;
  else if (strcmp(argv[1], "drain") == 0)
    opt.scenario = SC_DRAIN;
  else if (strcmp(argv[1], "commands") == 0)
    opt.scenario = SC_COMMANDS;
  else if (strcmp(argv[1], "rest") == 0)
    opt.scenario = SC_REST;
  else if (strcmp(argv[1], "e2e") == 0)
    opt.scenario = SC_E2E;
  else if (strcmp(argv[1], "connections") == 0)
    opt.scenario = SC_CONNECTIONS;
  else
    return -1;
  bool size_given = false;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool ok = true, takes = true;
    if (strcmp(a, "--host") == 0 && v) opt.host = v;
    else if (strcmp(a, "--port") == 0 && v) opt.port = v;
    else if (strcmp(a, "--devices") == 0 && v) opt.devices_file = v;
    else if (strcmp(a, "--sas-host") == 0 && v) opt.sas_host = v;
    else if (strcmp(a, "--address") == 0 && v) opt.address = v, opt.address_given = true;
    else if (strcmp(a, "--source") == 0 && v) opt.source = v;
    else if (strcmp(a, "--sasl-anonymous") == 0) opt.sasl_anonymous = true, takes = false;
    else if (strcmp(a, "--durable-terminus") == 0) opt.durable_terminus = true, takes = false;
    else if (strcmp(a, "--drain-window") == 0 && v) ok = parse_long(v, 1, 1000000, &opt.drain_window);
    else if (strcmp(a, "--tls") == 0) opt.tls = true, takes = false;
    else if (strcmp(a, "--ca") == 0 && v) opt.ca = v;
    else if (strcmp(a, "--external") == 0) opt.external = true, takes = false;
    else if (strcmp(a, "--resume") == 0) opt.resume = opt.reconnect = true, takes = false;
    else if (strcmp(a, "--reconnect") == 0) opt.reconnect = true, takes = false;
    else if (strcmp(a, "--no-link") == 0) opt.no_link = true, takes = false;
    else if (strcmp(a, "--pid") == 0 && v) ok = parse_long(v, 1, 1L << 30, &opt.server_pid);
    else if (strcmp(a, "--connect-concurrency") == 0 && v) ok = parse_long(v, 1, 100000, &opt.connect_concurrency);
    else if (strcmp(a, "--settle") == 0 && v) ok = parse_long(v, 0, 3600000, &opt.settle_ms);
    else if (strcmp(a, "--hold") == 0 && v) ok = parse_long(v, 0, 86400, &opt.hold_s);
    else if (strcmp(a, "--source-addresses") == 0 && v) ok = parse_long(v, 1, 254, &opt.source_addrs);
    else if (strcmp(a, "--user") == 0 && v) opt.user = v;
    else if (strcmp(a, "--password") == 0 && v) opt.password = v;
    else if (strcmp(a, "--password-file") == 0 && v) opt.password_file = v;
    else if (strcmp(a, "--token") == 0 && v) opt.password = v;
    else if (strcmp(a, "--token-file") == 0 && v) opt.password_file = v;
    else if (strcmp(a, "--http-port") == 0 && v) opt.http_port = v;
    else if (strcmp(a, "--concurrency") == 0 && v) ok = parse_long(v, 1, 10000, &opt.concurrency);
    else if (strcmp(a, "--group") == 0 && v) opt.group = v;
    else if (strcmp(a, "--connections") == 0 && v) ok = parse_long(v, 1, 100000, &opt.connections);
    else if (strcmp(a, "--window") == 0 && v) ok = parse_long(v, 1, 1000000, &opt.window);
    else if (strcmp(a, "--size") == 0 && v) ok = (size_given = parse_long(v, 0, 64L << 20, &opt.size));
    else if (strcmp(a, "--messages") == 0 && v) ok = (opt.messages_given = parse_long(v, 1, 1000000000L, &opt.messages));
    else if (strcmp(a, "--rate") == 0 && v) {
      char *end;
      errno = 0;
      opt.rate = strtod(v, &end);
      ok = !errno && *v && !*end && opt.rate >= 0 && opt.rate <= 1e7;
    }
    else if (strcmp(a, "--duration") == 0 && v) ok = parse_long(v, 1, 86400, &opt.duration_s);
    else if (strcmp(a, "--device-credit") == 0 && v) ok = parse_long(v, 1, 100000, &opt.device_credit);
    else if (strcmp(a, "--anonymous") == 0) opt.anonymous = true, takes = false;
    else if (strcmp(a, "--feedback") == 0) opt.feedback = true, takes = false;
    else if (strcmp(a, "--timeout") == 0 && v) ok = parse_long(v, 1, 86400, &opt.timeout_s);
    else if (strcmp(a, "--threads") == 0 && v) ok = parse_long(v, 1, MAX_THREADS, &opt.threads);
    else if (strcmp(a, "--progress") == 0 && v) ok = parse_long(v, 0, 86400, &opt.progress_s);
    else if (strcmp(a, "--trace-gaps") == 0 && v) ok = parse_long(v, 0, 86400000, &opt.trace_gaps_ms);
    else if (strcmp(a, "--verify") == 0) opt.verify = true, takes = false;
    else ok = false;
    if (!ok) {
      fprintf(stderr, "warden-bench: bad or incomplete argument '%s'\n", a);
      return -1;
    }
    if (takes) i++;
  }
  if (!opt.port) {
    fprintf(stderr, "warden-bench: --port is required\n");
    return -1;
  }
  bool generic = opt.scenario == SC_INGEST || opt.scenario == SC_E2E || opt.scenario == SC_CONNECTIONS;
  bool have_creds = opt.sasl_anonymous || (opt.user && (opt.password || opt.password_file));
  if (opt.scenario != SC_DRAIN && !opt.devices_file && !(generic && have_creds)) {
    fprintf(stderr, "warden-bench: %s needs --devices FILE%s\n", argv[1],
            generic ? " or --user/--password or --sasl-anonymous" : "");
    return -1;
  }
  if ((opt.resume || opt.ca || opt.external) && !opt.tls) {
    fprintf(stderr, "warden-bench: --resume, --ca and --external need --tls\n");
    return -1;
  }
  if (opt.external && (opt.scenario != SC_CONNECTIONS || !opt.devices_file)) {
    fprintf(stderr, "warden-bench: --external is for connections with --devices\n");
    return -1;
  }
  if (opt.scenario == SC_E2E) {
    if (!have_creds) {
      fprintf(stderr, "warden-bench: e2e needs --user and --password (the receiver) or --sasl-anonymous\n");
      return -1;
    }
    if (opt.size < E2E_HDR) {
      fprintf(stderr, "warden-bench: e2e needs --size of at least %d (the payload's header)\n", E2E_HDR);
      return -1;
    }
  }
  if (opt.scenario == SC_REST) {
    if (!opt.http_port || (!opt.password && !opt.password_file)) {
      fprintf(stderr, "warden-bench: rest needs --http-port and --token or --token-file\n");
      return -1;
    }
    if (opt.size < REST_HDR) {
      fprintf(stderr, "warden-bench: rest needs --size of at least %d (the body's header)\n", REST_HDR);
      return -1;
    }
  }
  if (opt.rate > 0 && opt.scenario != SC_COMMANDS && opt.scenario != SC_REST && opt.scenario != SC_E2E) {
    fprintf(stderr, "warden-bench: --rate is for commands, rest and e2e\n");
    return -1;
  }
  if (opt.scenario == SC_E2E && opt.rate > 0 && !opt.messages_given) {
    double m = opt.rate * (double)opt.duration_s;
    if (m < 1 || m > 1e9) {
      fprintf(stderr, "warden-bench: --rate x --duration must be 1 to 1e9 messages\n");
      return -1;
    }
    opt.messages = (long)m;
  }
  if (opt.scenario == SC_COMMANDS || opt.scenario == SC_REST) {
    if (opt.scenario == SC_COMMANDS && (!opt.user || (!opt.password && !opt.password_file))) {
      fprintf(stderr, "warden-bench: commands needs --user and --password or --password-file (the service)\n");
      return -1;
    }
    if (opt.rate > 0 && !opt.messages_given) {
      double m = opt.rate * (double)opt.duration_s;
      if (m < 1 || m > 1e9) {
        fprintf(stderr, "warden-bench: --rate x --duration must be 1 to 1e9 commands\n");
        return -1;
      }
      opt.messages = (long)m;
    }
  }
  if (opt.scenario == SC_DRAIN) {
    if (!have_creds) {
      fprintf(stderr, "warden-bench: drain needs --user and --password or --password-file, or --sasl-anonymous\n");
      return -1;
    }
    opt.connections = 1;
    if (!size_given) opt.size = -1; /* unknown: not checked, reported as null */
  }
  return 0;
}

/* commands: prints the JSON object and the stderr line; returns the exit status. */
static int report_commands(long accepted, long errs, double secs, double rate, long nl) {
  double a50, a99, a999, p50, p99, p999;
  sorted_percentiles(latencies, nl, &a50, &a99, &a999);
  long nr = atomic_load(&n_recv_lat);
  if (nr > opt.messages) nr = opt.messages;
  sorted_percentiles(recv_lat, nr, &p50, &p99, &p999);
  long uniq = atomic_load(&received_unique);
  long missing = accepted > uniq ? accepted - uniq : 0;
  long dups = atomic_load(&duplicates), ooo = atomic_load(&out_of_order), mis = atomic_load(&misrouted);
  long bad = atomic_load(&malformed);
  long fbc = atomic_load(&fb_completed), fbo = atomic_load(&fb_other);
  long fb_missing = opt.feedback && uniq > fbc + fbo ? uniq - fbc - fbo : 0;
  long rejected = errs; /* non-accepted outcomes + commands in flight when the service connection was lost */
  errs += missing + dups + ooo + mis + bad + fbo + fb_missing;
  int64_t t0 = atomic_load(&t_start_ns), tr = atomic_load(&t_last_recv_ns);
  double dsecs = t0 && tr > t0 ? (double)(tr - t0) / 1e9 : 0.0;
  double drate = dsecs > 0 ? (double)uniq / dsecs : 0.0;

  printf("{\"scenario\":\"commands\",\"connections\":%ld,\"window\":%ld,\"size\":%ld,", n_devices, opt.window,
         opt.size);
  json_run(accepted, secs, rate, p50, p99, p999, errs);
  json_pacing(max_lag_ns);
  printf("\"anonymous\":%s,\"device_credit\":%ld,", opt.anonymous ? "true" : "false", opt.device_credit);
  json_percentiles("accept_", a50, a99, a999);
  printf("\"rejected\":%ld,\"received\":%ld,\"missing\":%ld,\"duplicates\":%ld,\"out_of_order\":%ld,"
         "\"misrouted\":%ld,\"malformed\":%ld,\"stale\":%ld,",
         rejected, uniq, missing, dups, ooo, mis, bad, atomic_load(&stale));
  json_num("delivered_seconds", dsecs, false);
  json_num("delivered_rate", drate, false);
  if (opt.feedback)
    printf("\"feedback_completed\":%ld,\"feedback_other\":%ld,\"feedback_missing\":%ld,\"feedback_stale\":%ld,", fbc,
           fbo, fb_missing, atomic_load(&fb_stale));
  else
    printf("\"feedback_completed\":null,\"feedback_other\":null,\"feedback_missing\":null,\"feedback_stale\":null,");
  printf("\"timed_out\":%s}\n", atomic_load(&timed_out) ? "true" : "false");
  fflush(stdout);

  char pace[64] = "unpaced";
  if (opt.rate > 0) snprintf(pace, sizeof pace, "paced %.0f/s (max lag %.1f ms)", opt.rate, (double)max_lag_ns / 1e6);
  fprintf(stderr,
          "warden-bench commands: 1 service -> %ld devices, window %ld, %ld B, %s: %ld/%ld accepted in %.2f s = %.0f "
          "cmd/s (accept p50 %.2f p99 %.2f ms); %ld received in %.2f s = %.0f cmd/s; send->device latency p50 %.2f ms "
          "p99 %.2f ms p99.9 %.2f ms; %ld errors (%ld rejected/lost, %ld missing, %ld dup, %ld out of order, %ld "
          "misrouted)%s%s\n",
          n_devices, opt.window, opt.size, pace, accepted, opt.messages, secs, rate, a50, a99, uniq, dsecs, drate, p50,
          p99, p999, errs, rejected, missing, dups, ooo, mis,
          opt.feedback ? (fbo || fb_missing ? "; feedback NOT all completed" : "; feedback all completed") : "",
          atomic_load(&timed_out) ? " (TIMED OUT)" : "");
  return errs || accepted < opt.messages || atomic_load(&timed_out) || atomic_load(&conn_failures) ? 1 : 0;
}

/* rest: prints the JSON object and the stderr line; returns the exit status. */
static int report_rest(long ok202, long errs, double secs, double rate, long nl) {
  double a50, a99, a999, p50, p99, p999;
  sorted_percentiles(latencies, nl, &a50, &a99, &a999);
  long nr = atomic_load(&n_recv_lat);
  if (nr > opt.messages) nr = opt.messages;
  sorted_percentiles(recv_lat, nr, &p50, &p99, &p999);
  long uniq = atomic_load(&received_unique);
  long missing = ok202 > uniq ? ok202 - uniq : 0;
  long dups = atomic_load(&duplicates), ooo = atomic_load(&out_of_order), mis = atomic_load(&misrouted);
  long bad = atomic_load(&malformed);
  errs += missing + dups + ooo + mis + bad;
  int64_t t0 = atomic_load(&t_start_ns), tr = atomic_load(&t_last_recv_ns);
  double dsecs = t0 && tr > t0 ? (double)(tr - t0) / 1e9 : 0.0;
  double drate = dsecs > 0 ? (double)uniq / dsecs : 0.0;

  printf("{\"scenario\":\"rest\",\"connections\":%ld,\"window\":%ld,\"concurrency\":%ld,\"size\":%ld,", n_devices,
         opt.concurrency, opt.concurrency, opt.size);
  json_run(ok202, secs, rate, p50, p99, p999, errs);
  json_pacing(rest_max_lag_ns);
  printf("\"device_credit\":%ld,", opt.device_credit);
  json_percentiles("accept_", a50, a99, a999);
  printf("\"http_errors\":%ld,\"http_status\":{", http_errors);
  bool first = true;
  for (int c = 0; c < 600; c++)
    if (http_status[c]) printf("%s\"%d\":%ld", first ? "" : ",", c, http_status[c]), first = false;
  printf("},\"unanswered\":%ld,\"http_connections\":%ld,\"max_in_flight\":%ld,", rest_unanswered, http_connections,
         rest_max_active);
  printf("\"received\":%ld,\"missing\":%ld,\"duplicates\":%ld,\"out_of_order\":%ld,\"misrouted\":%ld,"
         "\"malformed\":%ld,\"stale\":%ld,",
         uniq, missing, dups, ooo, mis, bad, atomic_load(&stale));
  json_num("delivered_seconds", dsecs, false);
  json_num("delivered_rate", drate, false);
  printf("\"timed_out\":%s}\n", atomic_load(&timed_out) ? "true" : "false");
  fflush(stdout);

  char pace[64] = "unpaced";
  if (opt.rate > 0)
    snprintf(pace, sizeof pace, "paced %.0f/s (max lag %.1f ms)", opt.rate, (double)rest_max_lag_ns / 1e6);
  fprintf(stderr,
          "warden-bench rest: %ld devices, concurrency %ld (%ld HTTP connections opened), %ld B, %s: %ld/%ld answered "
          "202 in %.2f s = %.0f req/s (202 p50 %.2f p99 %.2f p99.9 %.2f ms); %ld received in %.2f s = %.0f cmd/s; "
          "send->device latency p50 %.2f ms p99 %.2f ms p99.9 %.2f ms; %ld errors (%ld HTTP, %ld unanswered, %ld "
          "missing, %ld dup, %ld out of order, %ld misrouted, %ld malformed)%s\n",
          n_devices, opt.concurrency, http_connections, opt.size, pace, ok202, opt.messages, secs, rate, a50, a99,
          a999, uniq, dsecs, drate, p50, p99, p999, errs, http_errors, rest_unanswered, missing, dups, ooo, mis, bad,
          atomic_load(&timed_out) ? " (TIMED OUT)" : "");
  return errs || ok202 < opt.messages || atomic_load(&timed_out) || atomic_load(&conn_failures) ? 1 : 0;
}

/* e2e: prints the JSON object and the stderr line; returns the exit status. */
static int report_e2e(long accepted, long errs, long nl) {
  double a50, a99, a999, p50, p99, p999;
  sorted_percentiles(latencies, nl, &a50, &a99, &a999);
  long nr = atomic_load(&n_recv_lat);
  if (nr > opt.messages) nr = opt.messages;
  sorted_percentiles(recv_lat, nr, &p50, &p99, &p999);
  long uniq = atomic_load(&received_unique), dups = atomic_load(&duplicates), bad = atomic_load(&malformed);
  long missing = accepted > uniq ? accepted - uniq : 0;
  long send_errors = errs;
  errs += missing + dups + bad;
  int64_t t0 = atomic_load(&t_start_ns), tr = atomic_load(&t_last_recv_ns), ts = atomic_load(&t_last_settle_ns);
  double secs = t0 && tr > t0 ? (double)(tr - t0) / 1e9 : 0.0;
  double rate = secs > 0 ? (double)uniq / secs : 0.0;
  double isecs = t0 && ts > t0 ? (double)(ts - t0) / 1e9 : 0.0;
  double irate = isecs > 0 ? (double)accepted / isecs : 0.0;

  char pace[80] = "";
  if (opt.rate > 0)
    snprintf(pace, sizeof pace, ", paced %.0f/s (max lag %.1f ms)", opt.rate, (double)atomic_load(&pace_lag) / 1e6);
  printf("{\"scenario\":\"e2e\",\"connections\":%ld,\"window\":%ld,\"size\":%ld,\"drain_window\":%ld,", n_conns - 1,
         opt.window, opt.size, opt.drain_window);
  json_run(uniq, secs, rate, p50, p99, p999, errs);
  printf("\"accepted\":%ld,", accepted);
  json_num("ingest_seconds", isecs, false);
  json_num("ingest_rate", irate, false);
  json_percentiles("accept_", a50, a99, a999);
  json_pacing(atomic_load(&pace_lag));
  printf("\"send_errors\":%ld,\"missing\":%ld,\"duplicates\":%ld,\"malformed\":%ld,\"stale\":%ld,", send_errors,
         missing, dups, bad, atomic_load(&stale));
  printf("\"timed_out\":%s}\n", atomic_load(&timed_out) ? "true" : "false");
  fflush(stdout);
  fprintf(stderr,
          "warden-bench e2e: %ld conn x window %ld, %ld B, receiver window %ld%s: %ld/%ld received in %.2f s = %.0f "
          "msg/s; end-to-end latency p50 %.2f ms p99 %.2f ms p99.9 %.2f ms; ingest %.0f msg/s (accept p50 %.2f p99 "
          "%.2f ms); %ld errors (%ld send, %ld missing, %ld dup, %ld malformed), %ld stale%s\n",
          n_conns - 1, opt.window, opt.size, opt.drain_window, pace, uniq, opt.messages, secs, rate, p50, p99, p999,
          irate,
          a50, a99, errs, send_errors, missing, dups, bad, atomic_load(&stale),
          atomic_load(&timed_out) ? " (TIMED OUT)" : "");
  return errs || uniq < opt.messages || atomic_load(&timed_out) || atomic_load(&conn_failures) ? 1 : 0;
}

static void json_kb(const char *name, long kb) {
  if (kb < 0)
    printf("\"%s\":null,", name);
  else
    printf("\"%s\":%ld,", name, kb);
}

/* One pass of the connections scenario as JSON fields with a prefix ("" or "reconnect_"). */
static void json_pass(const char *px, conn_pass_t *p) {
  char k[64];
  if (p->n_lat > 0) qsort(p->lat, (size_t)p->n_lat, sizeof *p->lat, cmp_u64);
  double secs = p->t_all > p->t_start ? (double)(p->t_all - p->t_start) / 1e9 : NAN;
  double scpu = p->server_cpu0 >= 0 && p->server_cpu1 >= 0 ? p->server_cpu1 - p->server_cpu0 : NAN;
  double ccpu = p->client_cpu0 >= 0 && p->client_cpu1 >= 0 ? p->client_cpu1 - p->client_cpu0 : NAN;
#define K(name) (snprintf(k, sizeof k, "%s%s", px, name), k)
  printf("\"%s\":%ld,", K("connected"), p->ready);
  printf("\"%s\":%ld,", K("failed"), p->failed);
  json_num(K("seconds"), secs, false);
  json_num(K("rate"), secs > 0 ? (double)p->ready / secs : NAN, false);
  json_num(K("connect_p50_ms"), p->n_lat ? percentile_ms(p->lat, p->n_lat, 0.50) : NAN, false);
  json_num(K("connect_p99_ms"), p->n_lat ? percentile_ms(p->lat, p->n_lat, 0.99) : NAN, false);
  json_num(K("connect_max_ms"), p->n_lat ? (double)p->lat[p->n_lat - 1] / 1e6 : NAN, false);
  printf("\"%s\":%ld,", K("resumed"), p->resumed);
  json_kb(K("server_rss_kb"), p->server_rss_kb);
  json_kb(K("client_rss_kb"), p->client_rss_kb);
  json_num(K("server_cpu_s"), scpu, false);
  json_num(K("server_cpu_us_per_connection"), p->ready > 0 ? scpu * 1e6 / (double)p->ready : NAN, false);
  json_num(K("client_cpu_s"), ccpu, false);
  json_num(K("client_cpu_us_per_connection"), p->ready > 0 ? ccpu * 1e6 / (double)p->ready : NAN, false);
#undef K
}

/* connections: prints the JSON object and the stderr line; returns the exit status. */
static int report_connections(void) {
  conn_pass_t *p = &cp[0], *q = &cp[1];
  double srv_per = NAN, cli_per = NAN;
  if (p->ready > 0 && cp_rss0_server >= 0 && p->server_rss_kb >= 0)
    srv_per = (double)(p->server_rss_kb - cp_rss0_server) / (double)p->ready;
  if (p->ready > 0 && cp_rss0_client >= 0 && p->client_rss_kb >= 0)
    cli_per = (double)(p->client_rss_kb - cp_rss0_client) / (double)p->ready;
  printf("{\"scenario\":\"connections\",\"connections\":%ld,\"tls\":%s,\"external\":%s,\"reconnect\":%s,\"resume\":%s,"
         "\"link\":%s,",
         n_conns, opt.tls ? "true" : "false", opt.external ? "true" : "false", opt.reconnect ? "true" : "false",
         opt.resume ? "true" : "false",
         !opt.no_link && (opt.address_given || opt.devices_file) ? "true" : "false");
  printf("\"connect_concurrency\":%ld,\"reconnect_concurrency\":%d,\"source_addresses\":%ld,", opt.connect_concurrency,
         ROLL_WIDTH, src_addrs);
  if (tls_protocol[0])
    printf("\"tls_protocol\":\"%s\",\"tls_cipher\":\"%s\",", tls_protocol, tls_cipher);
  else
    printf("\"tls_protocol\":null,\"tls_cipher\":null,");
  if (opt.server_pid) printf("\"server_pid\":%ld,", opt.server_pid);
  else printf("\"server_pid\":null,");
  json_kb("server_rss_before_kb", cp_rss0_server);
  json_kb("client_rss_before_kb", cp_rss0_client);
  json_pass("", p);
  json_num("server_rss_per_connection_kb", srv_per, false);
  json_num("client_rss_per_connection_kb", cli_per, false);
  json_kb("server_rss_after_close_kb", cp_rss_closed_server);
  json_num("server_close_seconds", opt.server_pid && cp_quiet_at ? (double)(cp_quiet_at - cp_closed_at) / 1e9 : NAN,
           false);
  if (opt.reconnect) {
    json_pass("reconnect_", q);
  } else {
    static const char *const f[] = {"connected", "failed", "seconds", "rate", "connect_p50_ms", "connect_p99_ms",
                                    "connect_max_ms", "resumed", "server_rss_kb", "client_rss_kb", "server_cpu_s",
                                    "server_cpu_us_per_connection", "client_cpu_s", "client_cpu_us_per_connection"};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) printf("\"reconnect_%s\":null,", f[i]);
  }
  long failed = p->failed + (opt.reconnect ? q->failed : 0);
  printf("\"errors\":%ld,\"connection_failures\":%ld,\"timed_out\":%s}\n", failed, atomic_load(&conn_failures),
         atomic_load(&timed_out) ? "true" : "false");
  fflush(stdout);
  double s0 = p->t_all > p->t_start ? (double)(p->t_all - p->t_start) / 1e9 : NAN;
  double c0 = p->server_cpu0 >= 0 && p->server_cpu1 >= 0 && p->ready
                  ? (p->server_cpu1 - p->server_cpu0) * 1e6 / (double)p->ready
                  : NAN;
  fprintf(stderr,
          "warden-bench connections: %ld %s connections (%ld at once, %ld source address%s): %ld ready, %ld failed in "
          "%.2f s (%.0f/s; connect p50 %.1f ms p99 %.1f ms); server RSS %+.1f kB and CPU %.0f us per connection, "
          "client RSS %+.1f kB/connection",
          n_conns, opt.external ? "TLS client-certificate" : opt.tls ? "TLS" : "plain", opt.connect_concurrency, src_addrs, src_addrs == 1 ? "" : "es", p->ready,
          p->failed, s0, s0 > 0 ? (double)p->ready / s0 : 0.0,
          p->n_lat ? percentile_ms(p->lat, p->n_lat, 0.50) : NAN,
          p->n_lat ? percentile_ms(p->lat, p->n_lat, 0.99) : NAN,
          srv_per, c0, cli_per);
  if (opt.reconnect) {
    double s1 = q->t_all > q->t_start ? (double)(q->t_all - q->t_start) / 1e9 : NAN;
    double c1 = q->server_cpu0 >= 0 && q->server_cpu1 >= 0 && q->ready
                    ? (q->server_cpu1 - q->server_cpu0) * 1e6 / (double)q->ready
                    : NAN;
    fprintf(stderr,
            "; reconnected one by one (%d at once%s): %ld ready, %ld failed, %ld TLS sessions resumed, in %.2f s "
            "(connect p50 %.2f ms p99 %.2f ms; server CPU %.0f us per close + reconnect)",
            ROLL_WIDTH, opt.resume ? ", a session id each" : "", q->ready, q->failed, q->resumed, s1,
            q->n_lat ? percentile_ms(q->lat, q->n_lat, 0.50) : NAN,
            q->n_lat ? percentile_ms(q->lat, q->n_lat, 0.99) : NAN,
            c1);
  }
  if (cp_rss_closed_server >= 0 && cp_rss0_server >= 0)
    fprintf(stderr, "; server RSS %+.1f MB from before the first connection once all closed (server busy %.1f s after "
            "the last close)",
            (double)(cp_rss_closed_server - cp_rss0_server) / 1024.0, (double)(cp_quiet_at - cp_closed_at) / 1e9);
  fprintf(stderr, "%s\n", atomic_load(&timed_out) ? " (TIMED OUT)" : "");
  return failed || atomic_load(&timed_out) || atomic_load(&conn_failures) || p->ready < n_conns ||
                 (opt.reconnect && q->ready < n_conns)
             ? 1
             : 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (parse_args(argc, argv) < 0) {
    usage(stderr);
    return 2;
  }

  /* Many connections need many descriptors: take what the hard limit allows. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (opt.scenario == SC_CONNECTIONS && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      (rlim_t)opt.connections + 64 > rl.rlim_cur)
    fprintf(stderr, "warden-bench: warning: RLIMIT_NOFILE is %llu, too few for %ld connections\n",
            (unsigned long long)rl.rlim_cur, opt.connections);

  n_devices = opt.connections;
  /* commands: + the service; e2e: + the receiver */
  n_conns = opt.scenario == SC_COMMANDS || opt.scenario == SC_E2E ? opt.connections + 1 : opt.connections;
  conns = calloc((size_t)n_conns, sizeof *conns);
  if (!conns) return 1;
  for (long i = 0; i < n_conns; i++) conns[i].index = (int)i, conns[i].last_seq = -1;

  char *file_password = NULL;
  if (opt.password_file) {
    size_t len;
    file_password = wd_read_file(opt.password_file, &len);
    if (!file_password) {
      fprintf(stderr, "warden-bench: %s: %s\n", opt.password_file, strerror(errno));
      return 2;
    }
    opt.password = trim(file_password);
  }
  if (opt.tls && !(ssl_domain = client_domain(NULL, NULL))) return 2;
  if (opt.scenario == SC_INGEST || opt.scenario == SC_E2E || opt.scenario == SC_CONNECTIONS) {
    /* senders / idle connections: devices, or generic credentials shared by every connection */
    if (opt.devices_file) {
      if (load_devices() < 0) return 2;
    } else if (!opt.sasl_anonymous) {
      for (long i = 0; i < opt.connections; i++)
        if (!(conns[i].password = strdup(opt.password))) return 1;
    }
    if (opt.scenario == SC_E2E || opt.scenario == SC_CONNECTIONS) {
      if (wd_random_bytes(&run_id, sizeof run_id) < 0) run_id = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    }
    if (opt.scenario == SC_E2E) {
      rcv = &conns[n_conns - 1];
      rcv->is_service = true;
      if (!opt.sasl_anonymous && !(rcv->password = strdup(opt.password))) return 1;
      recv_lat = malloc((size_t)opt.messages * sizeof *recv_lat);
      seen = calloc((size_t)opt.messages, sizeof *seen);
      if (!recv_lat || !seen) {
        fprintf(stderr, "warden-bench: out of memory for %ld messages\n", opt.messages);
        return 1;
      }
    }
  }
  if (opt.scenario == SC_CONNECTIONS) {
    for (int p = 0; p < 2; p++)
      if (!(cp[p].lat = calloc((size_t)n_conns, sizeof *cp[p].lat))) return 1;
    bool loopback = strncmp(opt.host, "127.", 4) == 0 || strcmp(opt.host, "localhost") == 0;
    if (opt.source_addrs > 0)
      src_addrs = opt.source_addrs;
    else
      src_addrs = loopback && opt.connections > 1000 ? (opt.connections + 999) / 1000 : 1;
    if (src_addrs > 254) src_addrs = 254;
    if (opt.server_pid) cp_rss0_server = rss_kb(opt.server_pid);
    if (opt.server_pid && cp_rss0_server < 0)
      fprintf(stderr, "warden-bench: warning: cannot read /proc/%ld/status\n", opt.server_pid);
    cp_rss0_client = rss_kb(0);
  } else if (opt.scenario == SC_INGEST || opt.scenario == SC_E2E) {
    if (build_template() < 0) return 1;
    for (long i = 0; i < opt.connections; i++) {
      if (!(conns[i].msg = malloc(msg_len))) {
        fprintf(stderr, "warden-bench: out of memory\n");
        return 1;
      }
      memcpy(conns[i].msg, msg_template, msg_len);
    }
    latencies = malloc((size_t)opt.messages * sizeof *latencies);
    if (!latencies) {
      fprintf(stderr, "warden-bench: out of memory for %ld latency samples\n", opt.messages);
      return 1;
    }
    atomic_store(&pool, opt.messages);
  } else {
    if ((opt.scenario == SC_COMMANDS || opt.scenario == SC_REST) && load_devices() < 0) return 2;
    if (opt.scenario == SC_COMMANDS) {
      svc = &conns[n_devices];
      svc->is_service = true;
      svc->password = strdup(opt.password);
      svc->n_senders = opt.anonymous ? 1 : n_devices;
      svc->senders = calloc((size_t)svc->n_senders, sizeof *svc->senders);
      latencies = malloc((size_t)opt.messages * sizeof *latencies);
      recv_lat = malloc((size_t)opt.messages * sizeof *recv_lat);
      seen = calloc((size_t)opt.messages, sizeof *seen);
      cmd_payload = malloc((size_t)opt.size + 1);
      cmd_msg = pn_message();
      if (!svc->password || !svc->senders || !latencies || !recv_lat || !seen || !cmd_payload || !cmd_msg) {
        fprintf(stderr, "warden-bench: out of memory for %ld commands\n", opt.messages);
        return 1;
      }
      for (long i = 0; i < opt.size; i++) cmd_payload[i] = (uint8_t)('a' + i % 26);
      if (wd_random_bytes(&run_id, sizeof run_id) < 0) run_id = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
      snprintf(run_hex, sizeof run_hex, "%016" PRIx64, run_id);
    } else if (opt.scenario == SC_REST) {
      rest_token = opt.password;
      size_t blen = strlen(opt.host) + strlen(opt.http_port) + 16;
      rest_base = malloc(blen);
      latencies = malloc((size_t)opt.messages * sizeof *latencies);
      recv_lat = malloc((size_t)opt.messages * sizeof *recv_lat);
      seen = calloc((size_t)opt.messages, sizeof *seen);
      rest_t202 = calloc((size_t)opt.messages, sizeof *rest_t202);
      if (!rest_base || !latencies || !recv_lat || !seen || !rest_t202) {
        fprintf(stderr, "warden-bench: out of memory for %ld commands\n", opt.messages);
        return 1;
      }
      snprintf(rest_base, blen, strchr(opt.host, ':') ? "http://[%s]:%s" : "http://%s:%s", opt.host, opt.http_port);
      if (wd_random_bytes(&run_id, sizeof run_id) < 0) run_id = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
      if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "warden-bench: curl_global_init failed\n");
        return 1;
      }
    } else if (!opt.sasl_anonymous) {
      conns[0].password = strdup(opt.password);
    }
  }

  proactor = pn_proactor();
  t_launch_ns = now_ns();
  if (opt.scenario == SC_CONNECTIONS) {
    cp_begin_pass(0); /* live_conns counts them as they start */
  } else {
    atomic_store(&live_conns, n_conns);
    for (long i = 0; i < n_conns; i++) start_connection(&conns[i]);
  }
  bool paced = (opt.scenario == SC_COMMANDS || opt.scenario == SC_E2E) && opt.rate > 0;
  pn_proactor_set_timeout(proactor, paced ? 1 : TICK_MS);

  pthread_t th[MAX_THREADS], rest_th;
  bool rest_started = false;
  if (opt.scenario == SC_REST) {
    rest_started = pthread_create(&rest_th, NULL, rest_main, NULL) == 0;
    if (!rest_started) {
      fprintf(stderr, "warden-bench: cannot start the REST thread\n");
      atomic_fetch_add(&errors, 1);
      stop_all();
    }
  }
  long started = 0;
  for (; started < opt.threads - 1; started++)
    if (pthread_create(&th[started], NULL, worker, NULL) != 0) break;
  worker(NULL);
  for (long i = 0; i < started; i++) pthread_join(th[i], NULL);
  if (rest_started) {
    stop_all(); /* normally a no-op: the REST client has finished before the devices close */
    pthread_join(rest_th, NULL);
  }

  /* ---- report */
  long done = atomic_load(&completed), errs = atomic_load(&errors);
  int64_t t0 = atomic_load(&t_start_ns), t1 = atomic_load(&t_last_ns);
  double secs = t0 && t1 > t0 ? (double)(t1 - t0) / 1e9 : 0.0;
  double rate = secs > 0 ? (double)done / secs : 0.0;
  double p50 = NAN, p99 = NAN, p999 = NAN;
  long nl = atomic_load(&n_latencies);
  if (nl > opt.messages) nl = opt.messages;
  if (opt.scenario == SC_INGEST) sorted_percentiles(latencies, nl, &p50, &p99, &p999);
  bool incomplete = done < opt.messages;
  if (opt.scenario == SC_E2E || opt.scenario == SC_CONNECTIONS) {
    int rc = opt.scenario == SC_E2E ? report_e2e(done, errs, nl) : report_connections();
    pn_proactor_free(proactor);
    if (ssl_domain) pn_ssl_domain_free(ssl_domain);
    for (long i = 0; i < n_conns; i++) {
      if (conns[i].ssl_domain) pn_ssl_domain_free(conns[i].ssl_domain);
      free(conns[i].device_id);
      if (conns[i].password) explicit_bzero(conns[i].password, strlen(conns[i].password));
      free(conns[i].password);
      free(conns[i].msg);
    }
    free(conns);
    free(latencies);
    free(recv_lat);
    free(seen);
    free(msg_template);
    free(cp[0].lat);
    free(cp[1].lat);
    if (file_password) explicit_bzero(file_password, strlen(file_password));
    free(file_password);
    return rc;
  }
  if (opt.scenario == SC_REST) {
    int rc = report_rest(done, errs, secs, rate, nl);
    pn_proactor_free(proactor);
    for (long i = 0; i < n_conns; i++) {
      free(conns[i].device_id);
      if (conns[i].password) explicit_bzero(conns[i].password, strlen(conns[i].password));
      free(conns[i].password);
    }
    free(conns);
    free(latencies);
    free(recv_lat);
    free(seen);
    free(rest_t202);
    free(rest_base);
    if (file_password) explicit_bzero(file_password, strlen(file_password));
    free(file_password);
    curl_global_cleanup();
    return rc;
  }
  if (opt.scenario == SC_COMMANDS) {
    int rc = report_commands(done, errs, secs, rate, nl);
    pn_proactor_free(proactor);
    if (cmd_msg) pn_message_free(cmd_msg);
    for (long i = 0; i < n_conns; i++) {
      free(conns[i].device_id);
      if (conns[i].password) explicit_bzero(conns[i].password, strlen(conns[i].password));
      free(conns[i].password);
      free(conns[i].senders);
    }
    free(conns);
    free(latencies);
    free(recv_lat);
    free(seen);
    free(cmd_buf);
    free(cmd_payload);
    if (file_password) explicit_bzero(file_password, strlen(file_password));
    free(file_password);
    return rc;
  }
  const char *name = opt.scenario == SC_INGEST ? "ingest" : "drain";

  printf("{\"scenario\":\"%s\",\"connections\":%ld,\"window\":%ld,", name, n_conns, opt.window);
  if (opt.size >= 0)
    printf("\"size\":%ld,", opt.size);
  else
    printf("\"size\":null,");
  json_run(done, secs, rate, p50, p99, p999, errs);
  if (opt.scenario == SC_DRAIN && opt.verify) printf("\"duplicates\":%ld,", atomic_load(&duplicates));
  printf("\"timed_out\":%s}\n", atomic_load(&timed_out) ? "true" : "false");
  fflush(stdout);

  if (opt.scenario == SC_INGEST)
    fprintf(stderr,
            "warden-bench ingest: %ld conn x window %ld, %ld B: %ld/%ld accepted in %.2f s = %.0f msg/s; "
            "latency p50 %.2f ms p99 %.2f ms p99.9 %.2f ms; %ld errors%s\n",
            n_conns, opt.window, opt.size, done, opt.messages, secs, rate, p50, p99, p999, errs,
            atomic_load(&timed_out) ? " (TIMED OUT)" : "");
  else
    fprintf(stderr, "warden-bench drain: group %s, window %ld: %ld/%ld received in %.2f s = %.0f msg/s; %ld errors%s\n",
            opt.group, opt.window, done, opt.messages, secs, rate, errs, atomic_load(&timed_out) ? " (TIMED OUT)" : "");

  pn_proactor_free(proactor);
  for (long i = 0; i < n_conns; i++) {
    free(conns[i].device_id);
    if (conns[i].password) explicit_bzero(conns[i].password, strlen(conns[i].password));
    free(conns[i].password);
    free(conns[i].msg);
  }
  free(conns);
  free(latencies);
  free(msg_template);
  free(seen_bits);
  if (file_password) explicit_bzero(file_password, strlen(file_password));
  free(file_password);
  return errs || incomplete || atomic_load(&timed_out) || atomic_load(&conn_failures) ? 1 : 0;
}

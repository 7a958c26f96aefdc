/* Unit tests for protocol/engine.c, warden's AMQP engine for devices.
 *
 * The peer is Proton's own client engine (a pn_connection_driver with no
 * SASL), so every frame warden writes is read by an independent AMQP
 * implementation and every frame warden reads was written by one. The two
 * are joined in memory: the client's output goes to wd_engine_input, whole,
 * one byte at a time or in random pieces, and what the engine writes is fed
 * to the client. Frames no client would send are built with Proton's codec. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/engine.h"

enum { WHOLE, BYTES, RANDOM };
enum { ATTACH_OPEN, ATTACH_REFUSE };
#define MAX_REC 2048

typedef struct {
  wd_engine_state_t state;
  bool settled, failed, undeliverable;
  char tag[33];
  wd_engine_delivery_t d;
} outcome_rec_t;

/* Everything one test's engine and client did. */
typedef struct {
  wd_engine_t *e;
  pn_connection_driver_t drv;
  int pieces;
  unsigned seed;
  int64_t now;
  uint8_t *out; /* written by the engine, not yet read by the client */
  size_t out_len, out_cap;
  uint64_t written; /* bytes the engine wrote in all */
  /* how the owner behaves */
  bool answer_open;
  uint32_t open_idle;
  int attach_mode;
  uint32_t max_message_size;
  int grant;       /* credit given to an inbound link when it opens */
  bool auto_settle; /* accept every message at once ... */
  bool regrant;     /* ... and grant its credit again */
  /* what the engine reported */
  int opens, attaches, detaches, flows, closes, messages, refused_messages, outcomes;
  uint32_t peer_idle;
  wd_engine_link_t *links[16];
  int n_links;
  int link_ctx[16];
  void *detached_ctx[16];
  bool close_by_peer;
  char close_condition[128], close_description[256];
  wd_engine_delivery_t deliveries[MAX_REC];
  bool delivery_settled[MAX_REC];
  int n_deliveries;
  uint8_t last_msg[16384];
  size_t last_len;
  bool last_msg_null;
  int out_of_order;
  outcome_rec_t outcome[MAX_REC];
  /* what the client saw */
  int c_accepted, c_rejected, c_released, c_modified, c_remote_settled;
  char c_reject_condition[128];
  pn_delivery_t *c_rx[64];
  uint8_t c_rx_body[64][2048];
  size_t c_rx_len[64];
  int c_n_rx;
  int c_link_flows;
} shuttle_t;

static shuttle_t *T;

/* ------------------------------------------------------------- the owner */

static int on_write(void *ctx, const uint8_t *p, size_t n) {
  shuttle_t *t = ctx;
  if (t->out_len + n > t->out_cap) {
    size_t cap = t->out_cap ? t->out_cap * 2 : 4096;
    while (cap < t->out_len + n) cap *= 2;
    t->out = realloc(t->out, cap);
    assert_non_null(t->out);
    t->out_cap = cap;
  }
  memcpy(t->out + t->out_len, p, n);
  t->out_len += n;
  t->written += n;
  return 0;
}

static void on_open(void *ctx, uint32_t idle_ms) {
  shuttle_t *t = ctx;
  t->opens++;
  t->peer_idle = idle_ms;
  if (t->answer_open) wd_engine_open(t->e, t->open_idle, t->now);
}

static void on_attach(void *ctx, wd_engine_link_t *l) {
  shuttle_t *t = ctx;
  t->attaches++;
  if (t->n_links < 16) {
    t->links[t->n_links] = l;
    if (t->attach_mode == ATTACH_OPEN) wd_engine_link_set_context(l, &t->link_ctx[t->n_links]);
    t->n_links++;
  }
  if (t->attach_mode == ATTACH_REFUSE) {
    wd_engine_link_refuse(l, "amqp:not-found", "no such address");
    return;
  }
  wd_engine_link_open(l, t->max_message_size);
  if (wd_engine_link_inbound(l) && t->grant) wd_engine_link_flow(l, t->grant);
}

static void on_flow(void *ctx, wd_engine_link_t *l) {
  (void)l;
  ((shuttle_t *)ctx)->flows++;
}

static void on_message(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, bool settled, const uint8_t *msg,
                       size_t len) {
  shuttle_t *t = ctx;
  t->messages++;
  t->last_msg_null = msg == NULL;
  if (!msg) t->refused_messages++;
  if (msg) {
    t->last_len = len;
    memcpy(t->last_msg, msg, len < sizeof t->last_msg ? len : sizeof t->last_msg);
    /* messages from send_many say their number: they must come in order */
    char head[16] = "";
    memcpy(head, msg, len < sizeof head - 1 ? len : sizeof head - 1);
    int n;
    if (sscanf(head, "m%d.", &n) == 1 && n != t->messages - 1 - t->refused_messages)
      t->out_of_order++;
  }
  if (t->n_deliveries < MAX_REC) {
    t->delivery_settled[t->n_deliveries] = settled;
    t->deliveries[t->n_deliveries++] = d;
  }
  if (t->auto_settle && !settled && msg) wd_engine_settle(t->e, d, WD_ENGINE_ACCEPTED, NULL, NULL);
  if (t->regrant) wd_engine_link_flow(l, 1);
}

static void on_outcome(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, const wd_engine_outcome_t *o) {
  shuttle_t *t = ctx;
  (void)l;
  if (t->outcomes < MAX_REC) {
    outcome_rec_t *r = &t->outcome[t->outcomes];
    r->state = o->state;
    r->settled = o->settled;
    r->failed = o->delivery_failed;
    r->undeliverable = o->undeliverable_here;
    memcpy(r->tag, o->tag, o->tag_len);
    r->tag[o->tag_len] = '\0';
    r->d = d;
  }
  t->outcomes++;
}

static void on_detach(void *ctx, wd_engine_link_t *l) {
  shuttle_t *t = ctx;
  if (t->detaches < 16) t->detached_ctx[t->detaches] = wd_engine_link_get_context(l);
  t->detaches++;
  for (int i = 0; i < t->n_links; i++)
    if (t->links[i] == l) t->links[i] = NULL;
}

static void on_close(void *ctx, bool by_peer, const char *condition, const char *description) {
  shuttle_t *t = ctx;
  t->closes++;
  t->close_by_peer = by_peer;
  snprintf(t->close_condition, sizeof t->close_condition, "%s", condition ? condition : "");
  snprintf(t->close_description, sizeof t->close_description, "%s", description ? description : "");
}

static const wd_engine_handler_t handler = {on_write,   on_open,   on_attach, on_flow,
                                            on_message, on_outcome, on_detach, on_close};

/* ------------------------------------------------------------ the client */

static void client_event(shuttle_t *t, pn_event_t *ev) {
  pn_delivery_t *dv = pn_event_delivery(ev);
  switch (pn_event_type(ev)) {
    case PN_LINK_FLOW: t->c_link_flows++; break;
    case PN_DELIVERY:
      if (pn_link_is_sender(pn_delivery_link(dv))) {
        if (!pn_delivery_settled(dv)) break; /* the remote side has not settled it yet */
        uint64_t state = pn_delivery_remote_state(dv);
        if (state == PN_ACCEPTED) t->c_accepted++;
        if (state == PN_REJECTED) {
          t->c_rejected++;
          const char *c = pn_condition_get_name(pn_disposition_condition(pn_delivery_remote(dv)));
          snprintf(t->c_reject_condition, sizeof t->c_reject_condition, "%s", c ? c : "");
        }
        t->c_remote_settled++;
        pn_delivery_settle(dv);
      } else if (pn_delivery_readable(dv) && !pn_delivery_partial(dv)) {
        pn_link_t *rcv = pn_delivery_link(dv);
        int i = t->c_n_rx < 64 ? t->c_n_rx++ : 63;
        ssize_t n = pn_link_recv(rcv, (char *)t->c_rx_body[i], sizeof t->c_rx_body[i]);
        t->c_rx_len[i] = n > 0 ? (size_t)n : 0;
        t->c_rx[i] = dv;
        pn_link_advance(rcv);
      }
      break;
    default: break;
  }
}

static void feed_engine(shuttle_t *t, const uint8_t *p, size_t n) {
  while (n > 0) {
    size_t k = n;
    if (t->pieces == BYTES) k = 1;
    if (t->pieces == RANDOM) k = 1 + (size_t)(rand_r(&t->seed) % 97);
    if (k > n) k = n;
    wd_engine_input(t->e, p, k, t->now);
    p += k;
    n -= k;
  }
}

/* Moves bytes both ways until neither side has anything more to say. */
static void pump(shuttle_t *t) {
  for (int round = 0; round < 100000; round++) {
    bool progress = false;
    pn_event_t *ev;
    while ((ev = pn_connection_driver_next_event(&t->drv))) {
      client_event(t, ev);
      progress = true;
    }
    pn_bytes_t wb = pn_connection_driver_write_buffer(&t->drv);
    if (wb.size) {
      feed_engine(t, (const uint8_t *)wb.start, wb.size);
      pn_connection_driver_write_done(&t->drv, wb.size);
      progress = true;
    }
    wd_engine_flush(t->e);
    size_t at = 0;
    while (at < t->out_len) {
      pn_rwbytes_t rb = pn_connection_driver_read_buffer(&t->drv);
      if (!rb.size) break;
      size_t k = t->out_len - at < rb.size ? t->out_len - at : rb.size;
      memcpy(rb.start, t->out + at, k);
      pn_connection_driver_read_done(&t->drv, k);
      at += k;
    }
    if (at) {
      memmove(t->out, t->out + at, t->out_len - at);
      t->out_len -= at;
      progress = true;
    }
    if (!progress) return;
  }
  fail_msg("the shuttle never settled down");
}

static wd_engine_config_t config(uint32_t max_frame, uint32_t max_links) {
  return (wd_engine_config_t){.container_id = "warden", .max_frame_size = max_frame, .channel_max = 7,
                              .max_links = max_links};
}

static shuttle_t *start_with(int pieces, const wd_engine_config_t *cfg, uint32_t client_max_frame, uint32_t client_idle) {
  shuttle_t *t = calloc(1, sizeof *t);
  assert_non_null(t);
  T = t;
  t->pieces = pieces;
  t->seed = 12345;
  t->now = 1000000;
  t->answer_open = true;
  t->grant = 100;
  t->auto_settle = true;
  t->regrant = true;
  t->e = wd_engine_new(cfg, &handler, t);
  assert_non_null(t->e);
  assert_int_equal(pn_connection_driver_init(&t->drv, pn_connection(), pn_transport()), 0);
  pn_connection_set_container(t->drv.connection, "device-1");
  if (client_max_frame) pn_transport_set_max_frame(t->drv.transport, client_max_frame);
  if (client_idle) pn_transport_set_idle_timeout(t->drv.transport, client_idle);
  return t;
}

static shuttle_t *start(int pieces) {
  wd_engine_config_t cfg = config(0, 8);
  return start_with(pieces, &cfg, 0, 0);
}

static void finish(shuttle_t *t) {
  wd_engine_free(t->e);
  pn_connection_driver_destroy(&t->drv);
  free(t->out);
  free(t);
  T = NULL;
}

static pn_session_t *open_session(shuttle_t *t) {
  pn_connection_open(t->drv.connection);
  pn_session_t *s = pn_session(t->drv.connection);
  pn_session_open(s);
  return s;
}

static pn_link_t *open_sender(pn_session_t *s, const char *name, const char *address) {
  pn_link_t *l = pn_sender(s, name);
  pn_terminus_set_address(pn_link_target(l), address);
  pn_terminus_set_address(pn_link_source(l), name);
  pn_link_open(l);
  return l;
}

static pn_link_t *open_receiver(pn_session_t *s, const char *name, const char *address) {
  pn_link_t *l = pn_receiver(s, name);
  pn_terminus_set_address(pn_link_source(l), address);
  pn_terminus_set_address(pn_link_target(l), name);
  pn_link_open(l);
  return l;
}

static void send_bytes(pn_link_t *snd, int i, const void *p, size_t n, bool settled) {
  char tag[16];
  int len = snprintf(tag, sizeof tag, "%d", i);
  pn_delivery_t *dv = pn_delivery(snd, pn_dtag(tag, (size_t)len));
  assert_int_equal(pn_link_send(snd, p, n), (ssize_t)n);
  pn_link_advance(snd);
  if (settled) pn_delivery_settle(dv);
}

/* n messages of `size` bytes ("m<i>." then filler), pumping as it goes. */
static void send_many(shuttle_t *t, pn_link_t *snd, int first, int n, size_t size, bool settled) {
  char buf[4096];
  assert_true(size <= sizeof buf && size >= 16);
  for (int i = first; i < first + n; i++) {
    memset(buf, 'x', size);
    int k = snprintf(buf, sizeof buf, "m%d.", i);
    buf[k] = 'x';
    send_bytes(snd, i, buf, size, settled);
    if (i % 50 == 0) pump(t);
  }
  pump(t);
}

static const char *remote_condition(pn_condition_t *c) {
  const char *name = pn_condition_get_name(c);
  return name ? name : "";
}

/* The engine's link for a client link, by name. */
static wd_engine_link_t *engine_link(shuttle_t *t, const char *name) {
  for (int i = 0; i < t->n_links; i++)
    if (t->links[i] && strcmp(wd_engine_link_name(t->links[i]), name) == 0) return t->links[i];
  return NULL;
}

/* --------------------------------------------------------------- frames */

/* A frame whose body is the value d holds, encoded by Proton. */
static size_t frame_of(pn_data_t *d, uint16_t channel, uint8_t *out, size_t cap) {
  ssize_t n = pn_data_encode(d, (char *)out + 8, cap - 8);
  assert_true(n > 0);
  uint32_t size = (uint32_t)n + 8;
  out[0] = (uint8_t)(size >> 24);
  out[1] = (uint8_t)(size >> 16);
  out[2] = (uint8_t)(size >> 8);
  out[3] = (uint8_t)size;
  out[4] = 2;
  out[5] = 0;
  out[6] = (uint8_t)(channel >> 8);
  out[7] = (uint8_t)channel;
  return size;
}

static pn_data_t *performative(uint64_t code) {
  pn_data_t *d = pn_data(16);
  pn_data_put_described(d);
  pn_data_enter(d);
  pn_data_put_ulong(d, code);
  pn_data_put_list(d);
  pn_data_enter(d);
  return d;
}

static void inject(shuttle_t *t, pn_data_t *d, uint16_t channel) {
  pn_data_exit(d);
  pn_data_exit(d);
  uint8_t f[1024];
  size_t n = frame_of(d, channel, f, sizeof f);
  pn_data_free(d);
  wd_engine_input(t->e, f, n, t->now);
}

/* ---------------------------------------------------------------- tests */

static void handshake_in(int pieces) {
  shuttle_t *t = start(pieces);
  pn_session_t *s = open_session(t);
  pn_link_t *snd = open_sender(s, "tx", "telemetry");
  pump(t);
  assert_int_equal(t->opens, 1);
  assert_int_equal(pn_connection_state(t->drv.connection) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  assert_string_equal(pn_connection_remote_container(t->drv.connection), "warden");
  assert_int_equal(pn_transport_get_remote_max_frame(t->drv.transport), 65536);
  assert_int_equal(pn_session_state(s) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  assert_int_equal(pn_link_state(snd) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  assert_string_equal(pn_terminus_get_address(pn_link_remote_target(snd)), "telemetry");
  assert_string_equal(pn_terminus_get_address(pn_link_remote_source(snd)), "tx");
  assert_int_equal(pn_link_credit(snd), 100);
  wd_engine_link_t *l = engine_link(t, "tx");
  assert_non_null(l);
  assert_true(wd_engine_link_inbound(l));
  assert_string_equal(wd_engine_link_address(l), "telemetry");
  assert_true(wd_engine_link_active(l));
  assert_int_equal(wd_engine_link_snd_settle_mode(l), 2);
  assert_ptr_equal(wd_engine_link_engine(l), t->e);
  assert_false(wd_engine_finished(t->e));
  assert_true(wd_engine_frames_in(t->e) >= 3);

  pn_connection_close(t->drv.connection);
  pump(t);
  assert_int_equal(t->detaches, 1);
  assert_ptr_equal(t->detached_ctx[0], &t->link_ctx[0]);
  assert_int_equal(t->closes, 1);
  assert_true(t->close_by_peer);
  assert_string_equal(t->close_condition, "");
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(pn_connection_state(t->drv.connection) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  finish(t);
}

static void test_handshake_whole(void **state) {
  (void)state;
  handshake_in(WHOLE);
}

static void test_handshake_byte_by_byte(void **state) {
  (void)state;
  handshake_in(BYTES);
}

static void test_handshake_random_pieces(void **state) {
  (void)state;
  handshake_in(RANDOM);
}

static void thousand_at_least_once(int pieces) {
  shuttle_t *t = start(pieces);
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  send_many(t, snd, 0, 1000, 256, false);
  assert_int_equal(t->messages, 1000);
  assert_int_equal(t->out_of_order, 0);
  assert_int_equal(t->last_len, 256);
  assert_memory_equal(t->last_msg, "m999.xxx", 8);
  for (int i = 0; i < 1000; i++) {
    assert_false(t->delivery_settled[i]);
    assert_int_equal(t->deliveries[i].id, (uint32_t)i);
    assert_false(t->deliveries[i].outbound);
  }
  assert_int_equal(t->c_accepted, 1000);
  assert_int_equal(t->c_remote_settled, 1000);
  assert_int_equal(pn_link_unsettled(snd), 0);
  assert_int_equal(pn_link_credit(snd), 100); /* every settle gave its credit back */
  /* settling again, or one never delivered, writes nothing */
  size_t before = t->written;
  wd_engine_settle(t->e, t->deliveries[5], WD_ENGINE_ACCEPTED, NULL, NULL);
  wd_engine_settle(t->e, (wd_engine_delivery_t){.session = t->deliveries[0].session, .id = 5000}, WD_ENGINE_ACCEPTED,
                   NULL, NULL);
  wd_engine_flush(t->e);
  assert_int_equal(t->written, before);
  finish(t);
}

static void test_thousand_at_least_once(void **state) {
  (void)state;
  thousand_at_least_once(WHOLE);
}

static void test_thousand_at_least_once_in_pieces(void **state) {
  (void)state;
  thousand_at_least_once(RANDOM);
}

static void test_thousand_presettled(void **state) {
  (void)state;
  shuttle_t *t = start(RANDOM);
  pn_link_t *snd = pn_sender(open_session(t), "tx");
  pn_terminus_set_address(pn_link_target(snd), "telemetry");
  pn_link_set_snd_settle_mode(snd, PN_SND_SETTLED);
  pn_link_open(snd);
  t->auto_settle = false;
  pump(t);
  assert_int_equal(wd_engine_link_snd_settle_mode(engine_link(t, "tx")), 1);
  send_many(t, snd, 0, 1000, 64, true);
  assert_int_equal(t->messages, 1000);
  assert_int_equal(t->out_of_order, 0);
  for (int i = 0; i < 1000; i++) assert_true(t->delivery_settled[i]);
  assert_int_equal(t->c_accepted, 0);
  finish(t);
}

/* Dispositions of consecutive settles go out as ranges. */
static void test_settles_are_coalesced(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  t->auto_settle = false;
  t->regrant = false;
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  send_many(t, snd, 0, 20, 32, false);
  assert_int_equal(t->n_deliveries, 20);
  assert_int_equal(t->c_accepted, 0);
  size_t before = t->written;
  for (int i = 0; i < 20; i++) wd_engine_settle(t->e, t->deliveries[i], WD_ENGINE_ACCEPTED, NULL, NULL);
  assert_int_equal(t->written, before); /* nothing until the flush */
  wd_engine_flush(t->e);
  /* one disposition with first and last: 8 + 3 + 3 + 1 + 2 + 2 + 1 + 3 + 1 bytes */
  assert_true(t->written - before <= 32);
  pump(t);
  assert_int_equal(t->c_accepted, 20);
  /* a rejection with a condition goes out by itself */
  t->c_accepted = 0;
  send_many(t, snd, 20, 1, 32, false);
  wd_engine_settle(t->e, t->deliveries[20], WD_ENGINE_REJECTED, "amqp:invalid-field", "bad telemetry");
  pump(t);
  assert_int_equal(t->c_rejected, 1);
  assert_string_equal(t->c_reject_condition, "amqp:invalid-field");
  finish(t);
}

static void test_no_credit_no_message(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  t->grant = 0;
  t->regrant = false;
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  wd_engine_link_t *l = engine_link(t, "tx");
  assert_int_equal(wd_engine_link_credit(l), 0);
  send_many(t, snd, 0, 3, 32, false);
  assert_int_equal(t->messages, 0);
  wd_engine_link_flow(l, 2);
  assert_int_equal(wd_engine_link_credit(l), 2);
  pump(t);
  assert_int_equal(t->messages, 2);
  assert_int_equal(wd_engine_link_credit(l), 0);
  wd_engine_link_flow(l, 1);
  pump(t);
  assert_int_equal(t->messages, 3);
  assert_int_equal(t->c_accepted, 3);
  finish(t);
}

static void test_multi_frame_message(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(512, 8);
  shuttle_t *t = start_with(RANDOM, &cfg, 512, 0);
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  assert_int_equal(pn_transport_get_remote_max_frame(t->drv.transport), 512);
  static uint8_t msg[10240];
  for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(i * 7);
  send_bytes(snd, 0, msg, sizeof msg, false);
  pump(t);
  assert_int_equal(t->messages, 1);
  assert_int_equal(t->last_len, sizeof msg);
  assert_memory_equal(t->last_msg, msg, sizeof msg);
  assert_int_equal(t->c_accepted, 1);
  /* and an empty message arrives as one, not as nothing */
  send_bytes(snd, 1, "", 0, false);
  pump(t);
  assert_int_equal(t->messages, 2);
  assert_false(t->last_msg_null);
  assert_int_equal(t->last_len, 0);
  finish(t);
}

static void test_message_over_max_size_is_rejected(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(512, 8);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 0);
  t->max_message_size = 1000;
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  assert_int_equal(pn_link_remote_max_message_size(snd), 1000);
  static uint8_t big[3000];
  memset(big, 'b', sizeof big);
  send_bytes(snd, 0, big, 2000, false); /* four frames of 512 */
  pump(t);
  assert_int_equal(t->messages, 1);
  assert_true(t->last_msg_null);
  assert_int_equal(t->c_rejected, 1);
  assert_string_equal(t->c_reject_condition, "amqp:link:message-size-exceeded");
  send_bytes(snd, 1, big, 1000, false); /* exactly the limit */
  pump(t);
  assert_int_equal(t->messages, 2);
  assert_false(t->last_msg_null);
  assert_int_equal(t->last_len, 1000);
  assert_int_equal(t->c_accepted, 1);
  send_bytes(snd, 2, big, 1001, true); /* pre-settled: dropped */
  pump(t);
  assert_int_equal(t->messages, 3);
  assert_true(t->last_msg_null);
  assert_true(t->delivery_settled[2]);
  assert_int_equal(t->c_rejected, 1);
  finish(t);
}

static void test_message_far_over_max_size_closes_link(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(512, 8);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 0);
  t->max_message_size = 100;
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  size_t size = 100 + 64 * 1024 + 1000;
  uint8_t *big = calloc(1, size);
  send_bytes(snd, 0, big, size, false);
  free(big);
  pump(t);
  assert_int_equal(t->messages, 0);
  assert_int_equal(pn_link_state(snd) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  assert_string_equal(remote_condition(pn_link_remote_condition(snd)), "amqp:link:message-size-exceeded");
  pn_link_close(snd);
  pump(t);
  assert_int_equal(t->detaches, 1);
  assert_false(wd_engine_finished(t->e));
  finish(t);
}

static void outbound_in(int pieces) {
  wd_engine_config_t cfg = config(0, 8);
  shuttle_t *t = start_with(pieces, &cfg, 512, 0);
  pn_link_t *rcv = open_receiver(open_session(t), "rx", "commands");
  pn_link_flow(rcv, 10);
  pump(t);
  wd_engine_link_t *l = engine_link(t, "rx");
  assert_non_null(l);
  assert_false(wd_engine_link_inbound(l));
  assert_string_equal(wd_engine_link_address(l), "commands");
  assert_string_equal(pn_terminus_get_address(pn_link_remote_source(rcv)), "commands");
  assert_true(t->flows >= 1);
  assert_int_equal(wd_engine_link_credit(l), 10);
  assert_false(wd_engine_link_draining(l));
  static const char head[] = "HEAD:";
  char body[600];
  for (int i = 0; i < (int)sizeof body; i++) body[i] = (char)('a' + i % 26);
  wd_engine_delivery_t d[10];
  for (int i = 0; i < 10; i++) {
    char tag[8];
    int n = snprintf(tag, sizeof tag, "t%d", i);
    assert_int_equal(wd_engine_send(l, (const uint8_t *)tag, (size_t)n, head, 5, body, sizeof body, false, &d[i]), 0);
    assert_true(d[i].outbound);
  }
  assert_int_equal(wd_engine_link_credit(l), 0);
  assert_true(wd_engine_send(l, (const uint8_t *)"x", 1, head, 5, body, 10, false, NULL) < 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 10);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(t->c_rx_len[i], 5 + sizeof body);
    assert_memory_equal(t->c_rx_body[i], head, 5);
    assert_memory_equal(t->c_rx_body[i] + 5, body, sizeof body);
    pn_delivery_tag_t tag = pn_delivery_tag(t->c_rx[i]);
    assert_int_equal(tag.size, 2);
    assert_int_equal(tag.start[1], '0' + i);
  }
  for (int i = 0; i < 10; i++) {
    pn_delivery_t *dv = t->c_rx[i];
    if (i < 5) {
      pn_delivery_update(dv, PN_ACCEPTED);
    } else {
      pn_disposition_set_failed(pn_delivery_local(dv), true);
      pn_disposition_set_undeliverable(pn_delivery_local(dv), i == 9);
      pn_delivery_update(dv, PN_MODIFIED);
    }
    pn_delivery_settle(dv);
  }
  pump(t);
  assert_int_equal(t->outcomes, 10);
  for (int i = 0; i < 10; i++) {
    char tag[8];
    snprintf(tag, sizeof tag, "t%d", i);
    outcome_rec_t *o = NULL; /* Proton writes the dispositions in an order of its own */
    for (int j = 0; j < 10; j++)
      if (strcmp(t->outcome[j].tag, tag) == 0) o = &t->outcome[j];
    assert_non_null(o);
    assert_true(o->settled);
    assert_int_equal(o->d.id, d[i].id);
    assert_int_equal(o->state, i < 5 ? WD_ENGINE_ACCEPTED : WD_ENGINE_MODIFIED);
    assert_int_equal(o->failed, i >= 5);
    assert_int_equal(o->undeliverable, i == 9);
  }
  /* the peer settled them all: settling them now says nothing */
  size_t before = t->written;
  wd_engine_settle(t->e, d[0], WD_ENGINE_ACCEPTED, NULL, NULL);
  wd_engine_flush(t->e);
  assert_int_equal(t->written, before);

  /* an outcome without settling: warden settles it */
  pn_link_flow(rcv, 1);
  pump(t);
  assert_int_equal(wd_engine_link_credit(l), 1);
  wd_engine_delivery_t d11;
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"t10", 3, NULL, 0, "hello", 5, false, &d11), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 11);
  pn_delivery_t *dv = t->c_rx[10];
  pn_delivery_update(dv, PN_RELEASED);
  pump(t);
  assert_int_equal(t->outcomes, 11);
  assert_int_equal(t->outcome[10].state, WD_ENGINE_RELEASED);
  assert_false(t->outcome[10].settled);
  assert_false(pn_delivery_settled(dv));
  wd_engine_settle(t->e, d11, WD_ENGINE_NONE, NULL, NULL);
  pump(t);
  assert_true(pn_delivery_settled(dv));
  /* pre-settled sends need no outcome */
  pn_link_flow(rcv, 1);
  pump(t);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"t11", 3, NULL, 0, "hi", 2, true, NULL), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 12);
  assert_true(pn_delivery_settled(t->c_rx[11]));
  finish(t);
}

static void test_outbound_link(void **state) {
  (void)state;
  outbound_in(WHOLE);
}

static void test_outbound_link_in_pieces(void **state) {
  (void)state;
  outbound_in(BYTES);
}

/* Frames too large for the engine's stack buffer: performative, then the bytes. */
/* A message needing more frames than the peer's session window has room for does not fit, and is not sent. */
static void test_outbound_fits_the_session_window(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(0, 8);
  shuttle_t *t = start_with(WHOLE, &cfg, 512, 0);
  pn_session_t *s = open_session(t);
  pn_session_set_incoming_capacity(s, 1024); /* two frames of 512 */
  pn_link_t *rcv = open_receiver(s, "rx", "commands");
  pn_link_flow(rcv, 10);
  pump(t);
  wd_engine_link_t *l = engine_link(t, "rx");
  static char body[2000];
  memset(body, 'w', sizeof body);
  assert_true(wd_engine_link_fits(l, 100));
  assert_false(wd_engine_link_fits(l, sizeof body));
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"a", 1, NULL, 0, body, sizeof body, false, NULL), -1);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"b", 1, NULL, 0, body, 100, false, NULL), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 1);
  assert_int_equal(t->c_rx_len[0], 100);
  finish(t);
}

static void test_outbound_large_frames(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  pn_link_t *rcv = open_receiver(open_session(t), "rx", "commands");
  pn_link_flow(rcv, 3);
  pump(t);
  wd_engine_link_t *l = engine_link(t, "rx");
  static char body[2000];
  for (size_t i = 0; i < sizeof body; i++) body[i] = (char)('A' + i % 23);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"a", 1, NULL, 0, body, sizeof body, false, NULL), 0);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"b", 1, body, 700, NULL, 0, false, NULL), 0);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"c", 1, body, 1000, body + 1000, 1000, false, NULL), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 3);
  assert_int_equal(t->c_rx_len[0], sizeof body);
  assert_memory_equal(t->c_rx_body[0], body, sizeof body);
  assert_int_equal(t->c_rx_len[1], 700);
  assert_memory_equal(t->c_rx_body[1], body, 700);
  assert_int_equal(t->c_rx_len[2], sizeof body);
  assert_memory_equal(t->c_rx_body[2], body, sizeof body);
  finish(t);
}

/* A peer with a session window of 0: warden may not send until a flow opens it. */
static void test_session_window_opened_by_flow(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  wd_engine_input(t->e, (const uint8_t *)"AMQP\0\1\0\0", 8, t->now);
  pn_data_t *d = performative(0x10);
  pn_data_put_string(d, pn_bytes(3, "dev"));
  inject(t, d, 0);
  d = performative(0x11); /* begin: incoming-window 0 */
  pn_data_put_null(d);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  inject(t, d, 0);
  d = performative(0x12); /* attach as receiver: warden sends */
  pn_data_put_string(d, pn_bytes(2, "rx"));
  pn_data_put_uint(d, 0);
  pn_data_put_bool(d, true);
  inject(t, d, 0);
  wd_engine_link_t *l = engine_link(t, "rx");
  assert_non_null(l);
  assert_null(wd_engine_link_address(l));
  d = performative(0x13); /* link credit 5, window still 0 */
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 5);
  inject(t, d, 0);
  assert_int_equal(t->flows, 1);
  assert_int_equal(wd_engine_link_credit(l), 0);
  assert_true(wd_engine_send(l, (const uint8_t *)"t", 1, NULL, 0, "x", 1, true, NULL) < 0);
  d = performative(0x13); /* a session-only flow: window 2 */
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 2);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  inject(t, d, 0);
  assert_int_equal(t->flows, 2);
  assert_int_equal(wd_engine_link_credit(l), 2);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"t", 1, NULL, 0, "x", 1, true, NULL), 0);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"u", 1, NULL, 0, "y", 1, true, NULL), 0);
  assert_int_equal(wd_engine_link_credit(l), 0);
  assert_true(wd_engine_send(l, (const uint8_t *)"v", 1, NULL, 0, "z", 1, true, NULL) < 0);
  assert_false(wd_engine_finished(t->e));
  finish(t);
}

static void test_aborted_delivery_is_discarded(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(512, 8);
  shuttle_t *t = start_with(RANDOM, &cfg, 0, 0);
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  static char part[3000];
  memset(part, 'p', sizeof part);
  pn_delivery_t *dv = pn_delivery(snd, pn_dtag("a", 1));
  pn_link_send(snd, part, sizeof part);
  pump(t);
  pn_delivery_abort(dv);
  pump(t);
  /* no message, but a callback: the credit it spent may be granted again */
  assert_int_equal(t->messages, 1);
  assert_true(t->last_msg_null);
  assert_true(t->delivery_settled[0]);
  send_bytes(snd, 1, "whole", 5, false);
  pump(t);
  assert_int_equal(t->messages, 2);
  assert_int_equal(t->last_len, 5);
  assert_memory_equal(t->last_msg, "whole", 5);
  assert_int_equal(t->c_accepted, 1);
  finish(t);
}

/* Deliveries of a link that is gone: no outcome, and settling them says nothing. */
static void test_settle_after_detach_does_nothing(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  t->auto_settle = false;
  pn_session_t *s = open_session(t);
  pn_link_t *snd = open_sender(s, "tx", "telemetry");
  pn_link_t *rcv = open_receiver(s, "rx", "commands");
  pn_link_flow(rcv, 2);
  pump(t);
  send_many(t, snd, 0, 2, 32, false);
  assert_int_equal(t->n_deliveries, 2);
  wd_engine_delivery_t out;
  assert_int_equal(wd_engine_send(engine_link(t, "rx"), (const uint8_t *)"t", 1, NULL, 0, "x", 1, false, &out), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 1);
  pn_link_close(snd);
  pn_link_close(rcv);
  pump(t);
  assert_int_equal(t->detaches, 2);
  size_t before = t->written;
  wd_engine_settle(t->e, t->deliveries[0], WD_ENGINE_ACCEPTED, NULL, NULL);
  wd_engine_settle(t->e, t->deliveries[1], WD_ENGINE_REJECTED, "amqp:invalid-field", NULL);
  wd_engine_settle(t->e, out, WD_ENGINE_NONE, NULL, NULL);
  wd_engine_flush(t->e);
  assert_int_equal(t->written, before);
  assert_int_equal(t->outcomes, 0);
  finish(t);
}

static void test_drain(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  pn_link_t *rcv = open_receiver(open_session(t), "rx", "commands");
  pump(t);
  wd_engine_link_t *l = engine_link(t, "rx");
  int flows = t->flows;
  pn_link_drain(rcv, 5);
  pump(t);
  assert_true(t->flows > flows);
  assert_true(wd_engine_link_draining(l));
  assert_int_equal(wd_engine_link_credit(l), 5);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"a", 1, NULL, 0, "one", 3, true, NULL), 0);
  assert_int_equal(wd_engine_send(l, (const uint8_t *)"b", 1, NULL, 0, "two", 3, true, NULL), 0);
  wd_engine_link_drained(l);
  assert_int_equal(wd_engine_link_credit(l), 0);
  pump(t);
  assert_int_equal(t->c_n_rx, 2);
  assert_int_equal(pn_link_credit(rcv), 0);
  assert_false(pn_link_draining(rcv));
  finish(t);
}

static void test_link_refused(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(0, 1);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 0);
  t->attach_mode = ATTACH_REFUSE;
  pn_session_t *s = open_session(t);
  pn_link_t *snd = open_sender(s, "tx", "nowhere");
  pump(t);
  assert_int_equal(t->attaches, 1);
  assert_int_equal(pn_link_state(snd) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  assert_null(pn_terminus_get_address(pn_link_remote_target(snd)));
  assert_int_equal(pn_terminus_get_type(pn_link_remote_target(snd)), PN_UNSPECIFIED);
  assert_string_equal(remote_condition(pn_link_remote_condition(snd)), "amqp:not-found");
  assert_string_equal(pn_condition_get_description(pn_link_remote_condition(snd)), "no such address");
  assert_int_equal(t->detaches, 0);
  pn_link_close(snd);
  pump(t);
  assert_int_equal(t->detaches, 1);
  assert_null(t->detached_ctx[0]);
  /* a refused outbound link has no source */
  pn_link_t *rcv = open_receiver(s, "rx", "nowhere");
  pump(t);
  assert_int_equal(pn_link_state(rcv) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  assert_int_equal(pn_terminus_get_type(pn_link_remote_source(rcv)), PN_UNSPECIFIED);
  pn_link_close(rcv);
  pump(t);
  assert_int_equal(t->detaches, 2);
  assert_false(wd_engine_finished(t->e)); /* max_links 1: each refused link was gone before the next */
  finish(t);
}

static void test_detach_and_end_report_each_link_once(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  pn_session_t *s = open_session(t);
  pn_link_t *a = open_sender(s, "a", "telemetry");
  pn_link_t *b = open_receiver(s, "b", "commands");
  pn_link_flow(b, 3);
  pump(t);
  assert_int_equal(t->attaches, 2);
  pn_link_close(a);
  pump(t);
  assert_int_equal(t->detaches, 1);
  assert_int_equal(pn_link_state(a) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  wd_engine_link_t *lb = engine_link(t, "b");
  wd_engine_delivery_t d;
  assert_int_equal(wd_engine_send(lb, (const uint8_t *)"t", 1, NULL, 0, "x", 1, false, &d), 0);
  pn_session_close(s);
  pump(t);
  assert_int_equal(t->detaches, 2);
  assert_int_equal(pn_session_state(s) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  size_t before = t->written;
  wd_engine_settle(t->e, d, WD_ENGINE_ACCEPTED, NULL, NULL); /* its session ended */
  wd_engine_flush(t->e);
  assert_int_equal(t->written, before);
  /* the channel can be used again */
  pn_session_t *s2 = pn_session(t->drv.connection);
  pn_session_open(s2);
  pn_link_t *c = open_sender(s2, "c", "telemetry");
  pump(t);
  assert_int_equal(pn_link_state(c) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  send_many(t, c, 0, 3, 32, false);
  assert_int_equal(t->messages, 3);
  assert_int_equal(t->c_accepted, 3);
  wd_engine_free(t->e); /* the last link is detached by the free */
  t->e = NULL;
  assert_int_equal(t->detaches, 3);
  pn_connection_driver_destroy(&t->drv);
  free(t->out);
  free(t);
}

static void test_close_by_warden_with_condition(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  wd_engine_close(t->e, "amqp:unauthorized-access", "token expired");
  wd_engine_close(t->e, "amqp:internal-error", "again"); /* idempotent */
  pump(t);
  assert_int_equal(pn_connection_state(t->drv.connection) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  pn_condition_t *c = pn_connection_remote_condition(t->drv.connection);
  assert_string_equal(remote_condition(c), "amqp:unauthorized-access");
  assert_string_equal(pn_condition_get_description(c), "token expired");
  assert_false(wd_engine_finished(t->e));
  assert_int_equal(t->closes, 0);
  pn_connection_close(t->drv.connection);
  pump(t);
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(t->closes, 1);
  assert_true(t->close_by_peer);
  finish(t);
}

static void test_close_by_peer_with_condition(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  pn_condition_set_name(pn_connection_condition(t->drv.connection), "amqp:internal-error");
  pn_condition_set_description(pn_connection_condition(t->drv.connection), "going away");
  pn_connection_close(t->drv.connection);
  pump(t);
  assert_int_equal(t->closes, 1);
  assert_true(t->close_by_peer);
  assert_string_equal(t->close_condition, "amqp:internal-error");
  assert_string_equal(t->close_description, "going away");
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(t->detaches, 1);
  assert_int_equal(pn_connection_state(t->drv.connection) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  /* bytes after the end are ignored */
  uint64_t frames = wd_engine_frames_in(t->e);
  wd_engine_input(t->e, (const uint8_t *)"\0\0\0\x08\x02\0\0\0", 8, t->now);
  assert_int_equal(wd_engine_frames_in(t->e), frames);
  finish(t);
}

static void test_open_answered_later(void **state) {
  (void)state;
  shuttle_t *t = start(RANDOM);
  t->answer_open = false;
  pn_link_t *snd = open_sender(open_session(t), "tx", "telemetry");
  pump(t);
  assert_int_equal(t->opens, 1);
  assert_int_equal(t->attaches, 0); /* held until warden's open */
  wd_engine_open(t->e, 0, t->now);
  pump(t);
  assert_int_equal(t->attaches, 1);
  assert_int_equal(pn_link_state(snd) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  finish(t);
}

static void test_heartbeat_and_idle_timeout(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(0, 8);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 8000);
  t->open_idle = 3000;
  open_session(t);
  pump(t);
  assert_true(t->peer_idle > 0);
  uint32_t half = t->peer_idle / 2;
  int64_t opened = t->now;
  int64_t due = wd_engine_tick(t->e, t->now);
  assert_true(due <= opened + half);
  assert_int_equal(t->out_len, 0);
  /* the peer keeps talking; warden says nothing for half the peer's time-out */
  t->now = opened + half;
  wd_engine_input(t->e, (const uint8_t *)"\0\0\0\x08\x02\0\0\0", 8, t->now);
  due = wd_engine_tick(t->e, t->now);
  assert_int_equal(t->out_len, 8);
  assert_memory_equal(t->out, "\0\0\0\x08\x02\0\0\0", 8);
  assert_int_equal(due, t->now + half < t->now + 3000 ? t->now + half : t->now + 3000);
  pump(t);
  /* the peer falls silent for warden's 3 s */
  int64_t last_in = t->now;
  t->now = last_in + 2999;
  wd_engine_tick(t->e, t->now);
  assert_false(wd_engine_finished(t->e));
  t->now = last_in + 3000;
  assert_int_equal(wd_engine_tick(t->e, t->now), INT64_MAX);
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(t->closes, 1);
  assert_false(t->close_by_peer);
  assert_string_equal(t->close_condition, "amqp:resource-limit-exceeded");
  assert_string_equal(t->close_description, "local-idle-timeout expired");
  pump(t);
  assert_string_equal(remote_condition(pn_connection_remote_condition(t->drv.connection)),
                      "amqp:resource-limit-exceeded");
  finish(t);
}

/* A connection with the client's open and begin done, then frames by hand. */
static shuttle_t *started_session(void) {
  shuttle_t *t = start(WHOLE);
  open_session(t);
  pump(t);
  assert_int_equal(t->opens, 1);
  return t;
}

static void assert_violation(shuttle_t *t, const char *condition) {
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(t->closes, 1);
  assert_false(t->close_by_peer);
  assert_string_equal(t->close_condition, condition);
  pump(t);
  assert_int_equal(pn_connection_state(t->drv.connection) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  assert_string_equal(remote_condition(pn_connection_remote_condition(t->drv.connection)), condition);
}

static void test_transfer_on_unknown_handle(void **state) {
  (void)state;
  shuttle_t *t = started_session();
  pn_data_t *d = performative(0x14);
  pn_data_put_uint(d, 7);
  pn_data_put_uint(d, 0);
  pn_data_put_binary(d, pn_bytes(1, "t"));
  inject(t, d, 0);
  assert_violation(t, "amqp:session:unattached-handle");
  finish(t);
}

static void test_begin_with_remote_channel(void **state) {
  (void)state;
  shuttle_t *t = started_session();
  pn_data_t *d = performative(0x11);
  pn_data_put_ushort(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  pn_data_put_uint(d, 100);
  inject(t, d, 1);
  assert_violation(t, "amqp:not-allowed");
  finish(t);
}

static void test_frame_on_channel_not_begun(void **state) {
  (void)state;
  shuttle_t *t = started_session();
  pn_data_t *d = performative(0x16);
  pn_data_put_uint(d, 0);
  pn_data_put_bool(d, true);
  inject(t, d, 3);
  assert_violation(t, "amqp:not-allowed");
  finish(t);
}

static void test_unknown_performative(void **state) {
  (void)state;
  shuttle_t *t = started_session();
  inject(t, performative(0x30), 0);
  assert_violation(t, "amqp:decode-error");
  finish(t);
}

static void test_transfer_beyond_credit_closes_link(void **state) {
  (void)state;
  shuttle_t *t = started_session();
  t->grant = 0;
  pn_link_t *snd = open_sender(pn_session_head(t->drv.connection, 0), "tx", "telemetry");
  pump(t);
  pn_data_t *d = performative(0x14);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 0);
  pn_data_put_binary(d, pn_bytes(1, "t"));
  inject(t, d, 0);
  assert_false(wd_engine_finished(t->e));
  assert_int_equal(t->messages, 0);
  pump(t);
  assert_int_equal(pn_link_state(snd) & PN_REMOTE_CLOSED, PN_REMOTE_CLOSED);
  assert_string_equal(remote_condition(pn_link_remote_condition(snd)), "amqp:link:transfer-limit-exceeded");
  finish(t);
}

static void test_garbage_after_header(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  wd_engine_input(t->e, (const uint8_t *)"AMQP\0\1\0\0\xff\xff\xff\xff\0\0\0\0", 16, t->now);
  assert_violation(t, "amqp:connection:framing-error");
  finish(t);
}

static void test_frame_before_open(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  wd_engine_input(t->e, (const uint8_t *)"AMQP\0\1\0\0", 8, t->now);
  pn_data_t *d = performative(0x11);
  pn_data_put_null(d);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  pn_data_put_uint(d, 100);
  inject(t, d, 0);
  assert_violation(t, "amqp:not-allowed");
  finish(t);
}

static void test_frame_over_max_frame_size(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(512, 8);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 0);
  wd_engine_input(t->e, (const uint8_t *)"AMQP\0\1\0\0\0\0\x02\x01\x02\0\0\0", 16, t->now);
  assert_violation(t, "amqp:connection:framing-error");
  finish(t);
}

static void test_invalid_protocol_header(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  wd_engine_input(t->e, (const uint8_t *)"AMQP\3\1\0\0", 8, t->now);
  assert_true(wd_engine_finished(t->e));
  assert_int_equal(t->closes, 1);
  assert_string_equal(t->close_condition, "amqp:connection:framing-error");
  assert_int_equal(t->out_len, 8);
  assert_memory_equal(t->out, "AMQP\0\1\0\0", 8);
  finish(t);
}

static void test_max_links_exceeded(void **state) {
  (void)state;
  wd_engine_config_t cfg = config(0, 2);
  shuttle_t *t = start_with(WHOLE, &cfg, 0, 0);
  pn_session_t *s = open_session(t);
  t->attach_mode = ATTACH_REFUSE;
  open_sender(s, "a", "nowhere"); /* refused, and the client does not detach it */
  pump(t);
  t->attach_mode = ATTACH_OPEN;
  open_sender(s, "b", "telemetry");
  pump(t);
  assert_false(wd_engine_finished(t->e));
  open_sender(s, "c", "telemetry");
  pump(t);
  assert_int_equal(t->attaches, 2);
  assert_true(wd_engine_finished(t->e));
  assert_string_equal(t->close_condition, "amqp:resource-limit-exceeded");
  assert_string_equal(remote_condition(pn_connection_remote_condition(t->drv.connection)),
                      "amqp:resource-limit-exceeded");
  finish(t);
}

static void test_sessions_bounded_by_channel_max(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  pn_connection_open(t->drv.connection);
  pn_session_t *s[8];
  for (int i = 0; i < 8; i++) pn_session_open(s[i] = pn_session(t->drv.connection));
  pump(t);
  assert_int_equal(pn_transport_remote_channel_max(t->drv.transport), 7);
  for (int i = 0; i < 8; i++) assert_int_equal(pn_session_state(s[i]) & PN_REMOTE_ACTIVE, PN_REMOTE_ACTIVE);
  assert_false(wd_engine_finished(t->e));
  pn_data_t *d = performative(0x11);
  pn_data_put_null(d);
  pn_data_put_uint(d, 0);
  pn_data_put_uint(d, 100);
  pn_data_put_uint(d, 100);
  inject(t, d, 8);
  assert_violation(t, "amqp:not-allowed");
  finish(t);
}

/* The owner calls wd_engine_link_drained on every pump: once answered, a drain
   is not answered again until the peer flows again. */
static void test_drained_answered_once(void **state) {
  (void)state;
  shuttle_t *t = start(WHOLE);
  pn_link_t *rcv = open_receiver(open_session(t), "rx", "commands");
  pump(t);
  wd_engine_link_t *l = engine_link(t, "rx");
  pn_link_drain(rcv, 5);
  pump(t);
  wd_engine_link_drained(l);
  pump(t);
  uint64_t before = t->written;
  wd_engine_link_drained(l);
  wd_engine_link_drained(l);
  pump(t);
  assert_int_equal(t->written, before); /* one drained flow per drain the peer asked for */
  assert_true(wd_engine_link_draining(l));
  /* a new drain from the peer is answered again */
  pn_link_drain(rcv, 2);
  pump(t);
  wd_engine_link_drained(l);
  pump(t);
  assert_int_equal(pn_link_credit(rcv), 0);
  assert_false(pn_link_draining(rcv));
  finish(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handshake_whole),
      cmocka_unit_test(test_handshake_byte_by_byte),
      cmocka_unit_test(test_handshake_random_pieces),
      cmocka_unit_test(test_thousand_at_least_once),
      cmocka_unit_test(test_thousand_at_least_once_in_pieces),
      cmocka_unit_test(test_thousand_presettled),
      cmocka_unit_test(test_settles_are_coalesced),
      cmocka_unit_test(test_no_credit_no_message),
      cmocka_unit_test(test_multi_frame_message),
      cmocka_unit_test(test_message_over_max_size_is_rejected),
      cmocka_unit_test(test_message_far_over_max_size_closes_link),
      cmocka_unit_test(test_outbound_link),
      cmocka_unit_test(test_outbound_link_in_pieces),
      cmocka_unit_test(test_outbound_fits_the_session_window),
      cmocka_unit_test(test_outbound_large_frames),
      cmocka_unit_test(test_session_window_opened_by_flow),
      cmocka_unit_test(test_aborted_delivery_is_discarded),
      cmocka_unit_test(test_settle_after_detach_does_nothing),
      cmocka_unit_test(test_drain),
      cmocka_unit_test(test_link_refused),
      cmocka_unit_test(test_detach_and_end_report_each_link_once),
      cmocka_unit_test(test_close_by_warden_with_condition),
      cmocka_unit_test(test_close_by_peer_with_condition),
      cmocka_unit_test(test_open_answered_later),
      cmocka_unit_test(test_heartbeat_and_idle_timeout),
      cmocka_unit_test(test_transfer_on_unknown_handle),
      cmocka_unit_test(test_begin_with_remote_channel),
      cmocka_unit_test(test_frame_on_channel_not_begun),
      cmocka_unit_test(test_unknown_performative),
      cmocka_unit_test(test_transfer_beyond_credit_closes_link),
      cmocka_unit_test(test_garbage_after_header),
      cmocka_unit_test(test_frame_before_open),
      cmocka_unit_test(test_frame_over_max_frame_size),
      cmocka_unit_test(test_invalid_protocol_header),
      cmocka_unit_test(test_max_links_exceeded),
      cmocka_unit_test(test_sessions_bounded_by_channel_max),
      cmocka_unit_test(test_drained_answered_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

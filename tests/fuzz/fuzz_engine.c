/* libFuzzer target: warden's AMQP engine for devices (protocol/engine.c),
 * fed what a peer sends after SASL, from its protocol header on.
 *
 * Input: a control byte, then the peer's bytes.
 *   bits 0-4: the size of the pieces the bytes arrive in (0: all at once)
 *   bit 5: the owner answers the peer's open only after the first piece
 *   bit 6: warden's max-frame-size is 512 (else 64 KiB), and links have a
 *          max_message_size of 1000 (else none)
 *   bit 7: every other attach is refused
 * The owner opens every link it does not refuse, grants inbound links
 * credit, settles every message (accepting most, rejecting some), sends on
 * every outbound link while it has credit, settles outcomes, and now and then
 * closes a link, flows, ticks, or closes the connection.
 *
 * Checks: every frame warden writes is a well-formed frame whose body Proton's
 * codec decodes as a performative (or empty); on_close comes at most once; every link
 * on_attach reported gets exactly one on_detach by the time the engine is
 * freed, and none other does. */

#include <proton/codec.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "protocol/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LINKS 8
#define OUT_CHECKED (256 * 1024) /* output bytes kept for the frame check */

typedef struct {
  wd_engine_t *e;
  uint8_t ctrl;
  int64_t now;
  unsigned calls; /* a counter that varies what the owner does */
  int closes;
  int attached, detached;
  wd_engine_link_t *links[MAX_LINKS * 2];
  int n_links;
  uint8_t *out;
  size_t out_len;
  bool out_truncated;
} fuzz_t;

static int fz_write(void *ctx, const uint8_t *p, size_t n) {
  fuzz_t *f = ctx;
  if (f->out_truncated || f->out_len + n > OUT_CHECKED) {
    f->out_truncated = true;
    return 0;
  }
  memcpy(f->out + f->out_len, p, n);
  f->out_len += n;
  return 0;
}

static void fz_open(void *ctx, uint32_t idle_ms) {
  fuzz_t *f = ctx;
  (void)idle_ms;
  if (!(f->ctrl & 0x20)) wd_engine_open(f->e, 1000, f->now);
}

/* Sends on an outbound link while it may, a few messages at a time. */
static void send_some(fuzz_t *f, wd_engine_link_t *l) {
  static uint8_t body[1500];
  for (int i = 0; i < 4 && wd_engine_link_credit(l) > 0; i++) {
    char tag[16];
    int n = snprintf(tag, sizeof tag, "c%u", f->calls++);
    size_t len = (f->calls * 37) % sizeof body;
    bool settled = f->calls % 5 == 0;
    /* A message of several frames may not fit the peer's session window. */
    if (wd_engine_send(l, (const uint8_t *)tag, (size_t)n, "H", f->calls % 2, body, len, settled, NULL) < 0) break;
  }
  if (wd_engine_link_draining(l)) wd_engine_link_drained(l);
}

static void fz_attach(void *ctx, wd_engine_link_t *l) {
  fuzz_t *f = ctx;
  CHECK(f->n_links < MAX_LINKS, "more links attached at once than max_links");
  f->links[f->n_links++] = l;
  f->attached++;
  if ((f->ctrl & 0x80) && f->attached % 2 == 0) {
    wd_engine_link_refuse(l, "amqp:not-found", "refused by the fuzzer");
    return;
  }
  wd_engine_link_open(l, (f->ctrl & 0x40) ? 1000 : 0);
  if (wd_engine_link_inbound(l)) wd_engine_link_flow(l, 5);
}

static void fz_flow(void *ctx, wd_engine_link_t *l) {
  fuzz_t *f = ctx;
  CHECK(!wd_engine_link_inbound(l), "on_flow for an inbound link");
  send_some(f, l);
}

static void fz_message(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, bool settled, const uint8_t *msg,
                       size_t len) {
  fuzz_t *f = ctx;
  CHECK(wd_engine_link_inbound(l) && !d.outbound, "a message on an outbound link");
  CHECK(msg || !len || (f->ctrl & 0x40), "a message refused with no max_message_size");
  if (msg && len) {
    volatile uint8_t ends = msg[0] ^ msg[len - 1]; /* ASan checks that the bytes are there */
    (void)ends;
  }
  unsigned c = f->calls++;
  if (!settled) {
    if (c % 7 == 3)
      wd_engine_settle(f->e, d, WD_ENGINE_REJECTED, "amqp:invalid-field", "rejected by the fuzzer");
    else
      wd_engine_settle(f->e, d, c % 11 == 5 ? WD_ENGINE_NONE : WD_ENGINE_ACCEPTED, NULL, NULL);
    if (c % 13 == 7) wd_engine_settle(f->e, d, WD_ENGINE_ACCEPTED, NULL, NULL); /* twice: nothing */
  }
  if (c % 17 == 9)
    wd_engine_link_close(l, "amqp:internal-error", "closed by the fuzzer");
  else
    wd_engine_link_flow(l, 1);
}

static void fz_outcome(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, const wd_engine_outcome_t *o) {
  fuzz_t *f = ctx;
  (void)l;
  CHECK(d.outbound, "an outcome for an inbound delivery");
  CHECK(o->tag_len <= 32, "a tag longer than warden's");
  if (!o->settled || f->calls++ % 3 == 0) wd_engine_settle(f->e, d, o->state, NULL, NULL);
}

static void fz_detach(void *ctx, wd_engine_link_t *l) {
  fuzz_t *f = ctx;
  int at = -1;
  for (int i = 0; i < f->n_links; i++)
    if (f->links[i] == l) at = i;
  CHECK(at >= 0, "on_detach for a link never attached, or detached twice");
  f->links[at] = f->links[--f->n_links];
  f->detached++;
}

static void fz_close(void *ctx, bool by_peer, const char *condition, const char *description) {
  fuzz_t *f = ctx;
  (void)by_peer;
  (void)description;
  CHECK(by_peer || condition, "warden closed without a condition");
  f->closes++;
  CHECK(f->closes == 1, "on_close called twice");
}

static const wd_engine_handler_t handler = {fz_write,   fz_open,    fz_attach, fz_flow,
                                            fz_message, fz_outcome, fz_detach, fz_close};

/* Every frame warden wrote: a sound header and a body Proton reads. */
static void check_output(const fuzz_t *f) {
  static const uint8_t header[8] = {'A', 'M', 'Q', 'P', 0, 1, 0, 0};
  size_t n = f->out_len, at = 8;
  if (n == 0) return;
  CHECK(n >= 8 && memcmp(f->out, header, 8) == 0, "warden's output does not start with the protocol header");
  pn_data_t *d = pn_data(16);
  CHECK(d, "out of memory");
  while (at + 8 <= n) {
    const uint8_t *fr = f->out + at;
    uint32_t size = (uint32_t)fr[0] << 24 | (uint32_t)fr[1] << 16 | (uint32_t)fr[2] << 8 | fr[3];
    CHECK(size >= 8 && fr[4] == 2 && fr[5] == 0, "warden wrote a malformed frame header");
    if (at + size > n) break; /* cut off by OUT_CHECKED */
    if (size > 8) {
      pn_data_clear(d);
      ssize_t used = pn_data_decode(d, (const char *)fr + 8, size - 8);
      CHECK(used > 0, "warden wrote a frame body Proton cannot decode");
      pn_data_rewind(d);
      CHECK(pn_data_next(d) && pn_data_type(d) == PN_DESCRIBED, "warden wrote a body that is not described");
      pn_data_enter(d);
      CHECK(pn_data_next(d) && pn_data_type(d) == PN_ULONG, "warden wrote a body without a code");
      uint64_t code = pn_data_get_ulong(d);
      CHECK(code >= 0x10 && code <= 0x18, "warden wrote an unknown performative");
      CHECK(code == 0x14 || (size_t)used == size - 8, "a payload after a performative other than transfer");
    }
    at += size;
  }
  pn_data_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  static uint8_t out[OUT_CHECKED];
  fuzz_t f = {.ctrl = data[0], .now = 1000, .out = out};
  wd_engine_config_t cfg = {.container_id = "warden-fuzz",
                            .max_frame_size = (f.ctrl & 0x40) ? 512 : 0,
                            .channel_max = 3,
                            .max_links = MAX_LINKS};
  f.e = wd_engine_new(&cfg, &handler, &f);
  CHECK(f.e, "out of memory");
  const uint8_t *p = data + 1;
  size_t n = size - 1, piece = f.ctrl & 0x1f;
  int pieces = 0;
  while (n > 0) {
    size_t k = piece && piece < n ? piece : n;
    wd_engine_input(f.e, p, k, f.now);
    p += k;
    n -= k;
    pieces++;
    if ((f.ctrl & 0x20) && pieces == 1) wd_engine_open(f.e, 1000, f.now);
    if (pieces % 16 == 0) {
      for (int i = 0; i < f.n_links; i++)
        if (!wd_engine_link_inbound(f.links[i]) && wd_engine_link_active(f.links[i])) send_some(&f, f.links[i]);
      f.now += 300;
      wd_engine_tick(f.e, f.now);
    }
    if (pieces % 8 == 0) wd_engine_flush(f.e);
  }
  wd_engine_flush(f.e);
  int64_t due = wd_engine_tick(f.e, f.now);
  CHECK(due > f.now || wd_engine_finished(f.e), "a tick that is due again at once");
  if (f.calls % 4 == 1) wd_engine_close(f.e, "amqp:internal-error", "closed by the fuzzer");
  if (f.calls % 8 == 2) wd_engine_tick(f.e, f.now + 5000); /* the local idle time-out */
  wd_engine_free(f.e);
  CHECK(f.detached == f.attached && f.n_links == 0, "links attached %d, detached %d", f.attached, f.detached);
  check_output(&f);
  if (f.ctrl == 0xff) wd_engine_thread_done();
  return 0;
}

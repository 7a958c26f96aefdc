/* Unit tests for protocol/frame_guard.c: which frames a peer may send after
 * SASL reach Proton. The cases are fed whole, one byte at a time and in
 * 7-byte pieces, since TCP may split the bytes anywhere. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "protocol/frame_guard.h"

enum { BEGIN = 0x11, ATTACH = 0x12, TRANSFER = 0x14, DISPOSITION = 0x15, DETACH = 0x16 };
#define ABSENT (-1)

typedef struct {
  uint8_t b[2048];
  size_t n;
} bytes_t;

static void put(bytes_t *x, const void *p, size_t n) {
  assert_true(x->n + n <= sizeof x->b);
  memcpy(x->b + x->n, p, n);
  x->n += n;
}

static void put_u8(bytes_t *x, uint8_t v) { put(x, &v, 1); }

static void put_be32(bytes_t *x, uint32_t v) {
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  put(x, b, 4);
}

static void put_uint(bytes_t *x, uint32_t v) {
  put_u8(x, 0x70);
  put_be32(x, v);
}

/* One frame holding body, with doff words of header (2 = no extension). */
static void frame(bytes_t *out, uint16_t channel, uint8_t doff, uint8_t type, const bytes_t *body) {
  put_be32(out, (uint32_t)(doff * 4 + body->n));
  uint8_t rest[4] = {doff, type, (uint8_t)(channel >> 8), (uint8_t)channel};
  put(out, rest, 4);
  for (int i = 8; i < doff * 4; i++) put_u8(out, 0xee);
  put(out, body->b, body->n);
}

/* A performative with only a handle (attach, detach) or nothing (begin). */
static void performative(bytes_t *out, uint16_t channel, uint8_t code, int64_t handle) {
  bytes_t body = {.n = 0};
  uint8_t head[3] = {0x00, 0x53, code};
  put(&body, head, 3);
  if (handle == ABSENT) {
    put_u8(&body, 0x45);
  } else {
    uint8_t list[3] = {0xc0, 6, 1};
    put(&body, list, 3);
    put_uint(&body, (uint32_t)handle);
  }
  frame(out, channel, 2, 0, &body);
}

typedef struct {
  uint16_t channel;
  int64_t handle; /* ABSENT: a string where the handle belongs */
  int64_t id;     /* ABSENT: null */
  size_t tag_len;
  bool more;
  int aborted; /* ABSENT: the list stops after `more` */
  uint8_t doff;
  uint32_t count;      /* 0: the number of fields written */
  uint8_t more_len;    /* > 0: `more` written as more_raw */
  uint8_t more_raw[8];
  uint8_t aborted_len; /* > 0: `aborted` written as aborted_raw */
  uint8_t aborted_raw[4];
} xfer_t;

static void transfer(bytes_t *out, xfer_t x) {
  bytes_t fields = {.n = 0};
  if (x.handle == ABSENT) {
    uint8_t s[3] = {0xa1, 1, 'h'};
    put(&fields, s, 3);
  } else {
    put_uint(&fields, (uint32_t)x.handle);
  }
  if (x.id == ABSENT)
    put_u8(&fields, 0x40);
  else
    put_uint(&fields, (uint32_t)x.id);
  put_u8(&fields, 0xb0);
  put_be32(&fields, (uint32_t)x.tag_len);
  for (size_t i = 0; i < x.tag_len; i++) put_u8(&fields, (uint8_t)i);
  put_u8(&fields, 0x43);                  /* message-format */
  put_u8(&fields, 0x42);                  /* settled */
  if (x.more_len)
    put(&fields, x.more_raw, x.more_len);
  else
    put_u8(&fields, x.more ? 0x41 : 0x42);
  uint32_t count = 6;
  if (x.aborted != ABSENT) {
    uint8_t between[3] = {0x40, 0x40, 0x42}; /* rcv-settle-mode, state, resume */
    put(&fields, between, 3);
    if (x.aborted_len)
      put(&fields, x.aborted_raw, x.aborted_len);
    else
      put_u8(&fields, x.aborted ? 0x41 : 0x42);
    count = 10;
  }
  if (x.count) count = x.count;
  bytes_t body = {.n = 0};
  uint8_t head[3] = {0x00, 0x53, TRANSFER};
  put(&body, head, 3);
  put_u8(&body, 0xd0);
  put_be32(&body, (uint32_t)fields.n + 4);
  put_be32(&body, count);
  put(&body, fields.b, fields.n);
  static const uint8_t payload[] = {0x00, 0x53, 0x75, 0xa0, 0x02, 'h', 'i'};
  put(&body, payload, sizeof payload);
  frame(out, x.channel, x.doff ? x.doff : 2, 0, &body);
}

static bytes_t with_header(void) {
  bytes_t b = {.n = 0};
  put(&b, "AMQP\x00\x01\x00\x00", 8);
  return b;
}

/* Feeds bytes in pieces of `piece`; the first refusal and its condition. */
static const char *feed(const bytes_t *b, size_t piece, const char **condition) {
  wd_frame_guard_t g;
  wd_frame_guard_init(&g);
  const char *why = NULL;
  *condition = NULL;
  for (size_t off = 0; off < b->n && !why; off += piece) {
    size_t n = b->n - off < piece ? b->n - off : piece;
    why = wd_frame_guard_feed(&g, b->b + off, n, condition);
  }
  wd_frame_guard_fini(&g);
  return why;
}

/* The verdict must not depend on how the bytes are split. */
static void assert_passes(const bytes_t *b) {
  const char *condition;
  assert_null(feed(b, b->n, &condition));
  assert_null(feed(b, 1, &condition));
  assert_null(feed(b, 7, &condition));
}

static void assert_refused(const bytes_t *b, const char *want_condition) {
  const char *condition;
  assert_non_null(feed(b, b->n, &condition));
  assert_string_equal(condition, want_condition);
  assert_non_null(feed(b, 1, &condition));
  assert_string_equal(condition, want_condition);
  assert_non_null(feed(b, 7, &condition));
  assert_string_equal(condition, want_condition);
}

static void test_continuations_may_leave_out_the_delivery_id(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = false, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = false, .aborted = ABSENT}); /* single frame */
  assert_passes(&b);
}

static void test_a_first_frame_with_more_needs_a_delivery_id(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&b, "amqp:invalid-field");
}

static void test_after_the_last_frame_the_next_delivery_starts_fresh(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = false, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&b, "amqp:invalid-field");
}

static void test_an_abort_ends_the_delivery(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = true});
  assert_passes(&b);
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = false});
  assert_refused(&b, "amqp:invalid-field");
}

static void test_a_delivery_in_progress_belongs_to_its_channel_and_handle(void **state) {
  (void)state;
  bytes_t other_handle = with_header();
  transfer(&other_handle, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&other_handle, (xfer_t){.handle = 1, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&other_handle, "amqp:invalid-field");

  bytes_t other_channel = with_header();
  transfer(&other_channel, (xfer_t){.channel = 0, .handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&other_channel, (xfer_t){.channel = 1, .handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&other_channel, "amqp:invalid-field");
}

static void test_link_and_session_changes_forget_the_channel(void **state) {
  (void)state;
  const uint8_t codes[] = {BEGIN, ATTACH, DETACH};
  for (size_t i = 0; i < sizeof codes; i++) {
    bytes_t b = with_header();
    transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
    performative(&b, 0, codes[i], codes[i] == BEGIN ? ABSENT : 0);
    transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
    assert_refused(&b, "amqp:invalid-field");
  }
  /* a disposition changes no link */
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  performative(&b, 0, DISPOSITION, 0);
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_passes(&b);
}

static void test_an_unreadable_handle_forgets_the_channel(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = ABSENT, .id = 5, .tag_len = 1, .more = false, .aborted = ABSENT});
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&b, "amqp:invalid-field");
}

static void test_a_transfer_behind_an_extended_header_is_read(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT, .doff = 40});
  assert_refused(&b, "amqp:invalid-field");
}

static void test_tags_beyond_the_window_are_refused(void **state) {
  (void)state;
  bytes_t fits = with_header();
  transfer(&fits, (xfer_t){.handle = 0, .id = 0, .tag_len = 32, .more = true, .aborted = ABSENT});
  assert_passes(&fits);
  bytes_t too_long = with_header();
  transfer(&too_long, (xfer_t){.handle = 0, .id = 0, .tag_len = WD_GUARD_WINDOW, .more = false, .aborted = ABSENT});
  assert_refused(&too_long, "amqp:decode-error");
}

static void test_only_amqp_frames_after_the_amqp_header(void **state) {
  (void)state;
  bytes_t tls_upgrade = {.n = 0};
  put(&tls_upgrade, "AMQP\x02\x01\x00\x00", 8);
  assert_refused(&tls_upgrade, "amqp:connection:framing-error");

  bytes_t sasl_frame = with_header();
  bytes_t empty = {.n = 0};
  frame(&sasl_frame, 0, 2, 1, &empty);
  assert_refused(&sasl_frame, "amqp:connection:framing-error");

  bytes_t short_size = with_header();
  put_be32(&short_size, 7);
  put(&short_size, "\x02\x00\x00\x00", 4);
  assert_refused(&short_size, "amqp:connection:framing-error");

  bytes_t heartbeats = with_header();
  frame(&heartbeats, 0, 2, 0, &empty);
  frame(&heartbeats, 3, 2, 0, &empty);
  assert_passes(&heartbeats);
}

/* Proton reads fields to the end of the list's size, whatever the count says. */
static void test_fields_past_the_count_are_read(void **state) {
  (void)state;
  bytes_t b = with_header();
  transfer(&b, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT, .count = 4});
  assert_refused(&b, "amqp:invalid-field");
}

/* Whatever Proton might read as more=true needs a delivery-id; only what it
 * surely reads as more=true and not aborted starts a delivery in progress. */
static void test_unusual_boolean_encodings_are_read_strictly(void **state) {
  (void)state;
  bytes_t two = with_header();
  transfer(&two, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .aborted = ABSENT, .more_len = 2,
                          .more_raw = {0x56, 0x02}});
  assert_refused(&two, "amqp:invalid-field");

  bytes_t described_true = with_header();
  transfer(&described_true, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .aborted = ABSENT, .more_len = 4,
                                     .more_raw = {0x00, 0x53, 0x01, 0x41}});
  assert_refused(&described_true, "amqp:invalid-field");

  bytes_t not_started = with_header();
  transfer(&not_started, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .aborted = ABSENT, .more_len = 2,
                                  .more_raw = {0x56, 0x02}});
  transfer(&not_started, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&not_started, "amqp:invalid-field");

  bytes_t maybe_aborted = with_header();
  transfer(&maybe_aborted, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = true, .aborted = false,
                                    .aborted_len = 2, .aborted_raw = {0x56, 0x07}});
  transfer(&maybe_aborted, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  assert_refused(&maybe_aborted, "amqp:invalid-field");
}

static void test_nothing_passes_after_a_refusal(void **state) {
  (void)state;
  bytes_t bad = with_header();
  transfer(&bad, (xfer_t){.handle = 0, .id = ABSENT, .tag_len = 1, .more = true, .aborted = ABSENT});
  bytes_t good = {.n = 0};
  transfer(&good, (xfer_t){.handle = 0, .id = 0, .tag_len = 1, .more = false, .aborted = ABSENT});
  wd_frame_guard_t g;
  wd_frame_guard_init(&g);
  const char *condition;
  assert_non_null(wd_frame_guard_feed(&g, bad.b, bad.n, &condition));
  assert_non_null(wd_frame_guard_feed(&g, good.b, good.n, &condition));
  wd_frame_guard_fini(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_continuations_may_leave_out_the_delivery_id),
      cmocka_unit_test(test_a_first_frame_with_more_needs_a_delivery_id),
      cmocka_unit_test(test_after_the_last_frame_the_next_delivery_starts_fresh),
      cmocka_unit_test(test_an_abort_ends_the_delivery),
      cmocka_unit_test(test_a_delivery_in_progress_belongs_to_its_channel_and_handle),
      cmocka_unit_test(test_link_and_session_changes_forget_the_channel),
      cmocka_unit_test(test_an_unreadable_handle_forgets_the_channel),
      cmocka_unit_test(test_a_transfer_behind_an_extended_header_is_read),
      cmocka_unit_test(test_tags_beyond_the_window_are_refused),
      cmocka_unit_test(test_only_amqp_frames_after_the_amqp_header),
      cmocka_unit_test(test_fields_past_the_count_are_read),
      cmocka_unit_test(test_unusual_boolean_encodings_are_read_strictly),
      cmocka_unit_test(test_nothing_passes_after_a_refusal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

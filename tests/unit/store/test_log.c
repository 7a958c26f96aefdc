/* Unit tests for store/log.c: durable logs (telemetry and the others), their
 * sequence numbers, consumer groups (claim / ack / release), persistence of
 * group progress, and trimming of what every group has acknowledged. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>

#include "store_fixture.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

/* Appends "rec-1" .. "rec-n" (numbered from `from`) in one go and waits. */
static void append_many(fx_t *fx, int from, int n) {
  fx_call_t *calls = calloc((size_t)n, sizeof *calls);
  assert_non_null(calls);
  for (int i = 0; i < n; i++) {
    char text[32];
    snprintf(text, sizeof text, "rec-%d", from + i);
    assert_int_equal(fx_append_submit(fx, text, strlen(text), SIZE_MAX, &calls[i]), WD_OK);
  }
  fx_wait_all(fx);
  for (int i = 0; i < n; i++) {
    assert_int_equal(calls[i].rc, WD_OK);
    assert_int_equal(calls[i].runs, 1);
    assert_false(calls[i].on_test_thread);
  }
  free(calls);
}

/* Claims up to max records; checks each is "rec-<seq>" and returns their seqs. */
static int claim(wd_store_group_t *g, uint64_t *seqs, size_t max) {
  wd_store_record_t *recs = calloc(max ? max : 1, sizeof *recs);
  assert_non_null(recs);
  int n = fx_claim(g, recs, max);
  assert_true(n >= 0 && (size_t)n <= max);
  for (int i = 0; i < n; i++) {
    char expect[32];
    snprintf(expect, sizeof expect, "rec-%llu", (unsigned long long)recs[i].seq);
    if (recs[i].len != strlen(expect) || memcmp(recs[i].data, expect, recs[i].len) != 0)
      fail_msg("record %llu holds '%.*s'", (unsigned long long)recs[i].seq, (int)recs[i].len, (char *)recs[i].data);
    if (seqs) seqs[i] = recs[i].seq;
    free(recs[i].data);
  }
  free(recs);
  return n;
}

/* Claims and expects exactly the seqs listed (in that order). */
static void expect_claim(wd_store_group_t *g, size_t max, const uint64_t *expect, int n_expect) {
  uint64_t got[64];
  assert_true(max <= 64);
  int n = claim(g, got, max);
  if (n != n_expect) fail_msg("claimed %d records, expected %d", n, n_expect);
  for (int i = 0; i < n; i++)
    if (got[i] != expect[i]) fail_msg("claim %d: seq %llu, expected %llu", i, (unsigned long long)got[i], (unsigned long long)expect[i]);
}

static void expect_range(wd_store_group_t *g, size_t max, uint64_t first, uint64_t last) {
  uint64_t want[64];
  int n = 0;
  for (uint64_t s = first; s <= last; s++) want[n++] = s;
  expect_claim(g, max, want, n);
}

/* Runs one writer batch (a registry write), which persists group progress and trims. */
static void sync_writer(fx_t *fx) {
  static int n;
  char id[32];
  snprintf(id, sizeof id, "sync-%d", ++n);
  wd_device_t *d = fx_device(id);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_free(d);
}

/* The first record a new group of the telemetry log starts at (0: none is
 * left). The probe group acknowledges all it claims, so it never holds back
 * trimming, and it waits for the writer to persist that. */
static uint64_t first_seq(fx_t *fx) {
  static int n;
  char name[32];
  snprintf(name, sizeof name, "probe-%d", ++n);
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, name, &g), WD_OK);
  uint64_t first = 0;
  wd_store_record_t rec;
  while (fx_claim(g, &rec, 1) == 1) {
    if (!first) first = rec.seq;
    free(rec.data);
    wd_store_group_ack(g, rec.seq);
  }
  return first;
}

static wd_store_group_t *group_of(wd_store_log_t *log, const char *name) {
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(log, name, &g), WD_OK);
  assert_non_null(g);
  return g;
}

static wd_store_group_t *group(fx_t *fx, const char *name) { return group_of(fx->log, name); }

/* ------------------------------------------------------------ appending */

static void test_append_assigns_increasing_sequence_numbers_from_one(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  append_many(fx, 1, 3);
  wd_store_group_t *g = group(fx, "g");
  expect_range(g, 10, 1, 3);
  append_many(fx, 4, 2);
  expect_range(g, 10, 4, 5);
  assert_int_equal(first_seq(fx), 1);
}

static void test_append_patches_big_endian_seq_at_offset(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  uint8_t data[20];
  memset(data, 0xee, sizeof data);
  assert_int_equal(fx_append(fx, data, sizeof data, 4), WD_OK);
  assert_int_equal(fx_append(fx, data, sizeof data, sizeof data - 8), WD_OK); /* the last 8 bytes */
  assert_int_equal(fx_append(fx, data, sizeof data, SIZE_MAX), WD_OK);        /* untouched */

  wd_store_group_t *g = group(fx, "g");
  wd_store_record_t recs[4];
  assert_int_equal(fx_claim(g, recs, 4), 3);

  assert_int_equal(recs[0].seq, 1);
  assert_int_equal(recs[0].len, 20);
  assert_int_equal(be64((uint8_t *)recs[0].data + 4), 1);
  assert_int_equal(((uint8_t *)recs[0].data)[3], 0xee);
  assert_int_equal(((uint8_t *)recs[0].data)[12], 0xee);

  assert_int_equal(recs[1].seq, 2);
  assert_int_equal(be64((uint8_t *)recs[1].data + 12), 2);
  assert_int_equal(((uint8_t *)recs[1].data)[11], 0xee);

  assert_int_equal(recs[2].seq, 3);
  assert_memory_equal(recs[2].data, data, sizeof data);
  for (int i = 0; i < 3; i++) free(recs[i].data);
}

static void test_append_rejects_offset_outside_the_record(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  uint8_t data[16] = {0};
  fx_call_t c;
  assert_int_equal(fx_append_submit(fx, data, sizeof data, 9, &c), WD_ERR_INVALID);
  assert_int_equal(fx_append_submit(fx, data, sizeof data, 16, &c), WD_ERR_INVALID);
  assert_int_equal(fx_append_submit(fx, data, 7, 0, &c), WD_ERR_INVALID);
  assert_int_equal(fx_append_submit(fx, data, 0, 0, &c), WD_ERR_INVALID);
  assert_int_equal(fx_append_submit(fx, data, sizeof data, SIZE_MAX - 1, &c), WD_ERR_INVALID);
  assert_int_equal(c.runs, 0);
  fx_wait_all(fx);
  assert_int_equal(first_seq(fx), 0); /* nothing was appended */
  fx_append_text(fx, "rec-1");         /* and no number was used up */
  expect_range(group(fx, "g"), 10, 1, 1);
}

static void test_append_of_empty_record_is_stored(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  assert_int_equal(fx_append(fx, "", 0, SIZE_MAX), WD_OK);
  wd_store_group_t *g = group(fx, "g");
  wd_store_record_t rec;
  assert_int_equal(fx_claim(g, &rec, 1), 1);
  assert_int_equal(rec.seq, 1);
  assert_int_equal(rec.len, 0);
  free(rec.data);
}

typedef struct {
  fx_t *fx;
  int calls;
  wd_store_log_t *last;
  bool wrong_thread;
} listener_t;

static void on_appended(void *arg, wd_store_log_t *log) {
  listener_t *l = arg;
  pthread_mutex_lock(&l->fx->mu);
  l->calls++;
  l->last = log;
  l->wrong_thread |= pthread_equal(pthread_self(), l->fx->test_thread);
  pthread_cond_broadcast(&l->fx->cv);
  pthread_mutex_unlock(&l->fx->mu);
}

/* Waits until the listener has heard of `log`; returns its call count. */
static int wait_listener(listener_t *l, wd_store_log_t *log) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += FX_WAIT_MS / 1000;
  pthread_mutex_lock(&l->fx->mu);
  int rc = 0;
  while (l->last != log && rc == 0) rc = pthread_cond_timedwait(&l->fx->cv, &l->fx->mu, &deadline);
  wd_store_log_t *got = l->last;
  int calls = l->calls;
  assert_false(l->wrong_thread);
  l->last = NULL;
  pthread_mutex_unlock(&l->fx->mu);
  if (got != log) fail_msg("the append listener did not hear of log %s", wd_store_log_name(log));
  return calls;
}

static void test_append_listener_hears_which_log_grew(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  /* Listeners stay for the store's life, which ends in the teardown: keep l alive as long. */
  static listener_t l;
  l = (listener_t){.fx = fx};
  assert_int_equal(wd_store_add_append_listener(fx->store, on_appended, &l), WD_OK);
  fx_append_text(fx, "rec-1");
  wait_listener(&l, fx->log);
  wd_store_log_t *feedback = NULL;
  assert_int_equal(wd_store_log_open(fx->store, "feedback", &feedback), WD_OK);
  fx_call_t c;
  assert_int_equal(fx_log_append_submit(fx, feedback, "f", 1, SIZE_MAX, &c), WD_OK);
  fx_wait_all(fx);
  int calls = wait_listener(&l, feedback);
  /* A registry write appends nothing, so the listener stays quiet. */
  sync_writer(fx);
  pthread_mutex_lock(&fx->mu);
  assert_int_equal(l.calls, calls);
  pthread_mutex_unlock(&fx->mu);
}

/* --------------------------------------------------------------- groups */

static void test_group_open_validates_the_name(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, "", &g), WD_ERR_INVALID);
  char name[WD_ID_MAX + 2];
  memset(name, 'n', WD_ID_MAX + 1);
  name[WD_ID_MAX + 1] = '\0';
  assert_int_equal(wd_store_group_open(fx->log, name, &g), WD_ERR_INVALID);
  name[WD_ID_MAX] = '\0';
  assert_int_equal(wd_store_group_open(fx->log, name, &g), WD_OK);
  assert_int_equal(wd_store_group_open(fx->log, "$default", &g), WD_OK);
}

static void test_group_open_twice_returns_the_same_group(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *a = group(fx, "shared"), *b = group(fx, "shared"), *c = group(fx, "other");
  assert_ptr_equal(a, b);
  assert_ptr_not_equal(a, c);
}

static void test_each_group_sees_every_record(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *a = group(fx, "a"), *b = group(fx, "b");
  append_many(fx, 1, 5);
  expect_range(a, 10, 1, 5);
  expect_range(b, 10, 1, 5);
  wd_store_group_t *c = group(fx, "c"); /* opened later, nothing trimmed yet */
  expect_range(c, 10, 1, 5);
}

static void test_consumers_of_one_group_share_the_records(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *c1 = group(fx, "work"), *c2 = group(fx, "work");
  append_many(fx, 1, 6);
  expect_range(c1, 2, 1, 2);
  expect_range(c2, 3, 3, 5);
  expect_range(c1, 10, 6, 6);
  expect_claim(c2, 10, NULL, 0);
}

static void test_claim_respects_max_and_returns_zero_when_caught_up(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  expect_claim(g, 10, NULL, 0);
  append_many(fx, 1, 4);
  expect_claim(g, 0, NULL, 0);
  expect_range(g, 1, 1, 1);
  expect_range(g, 2, 2, 3);
  expect_range(g, 5, 4, 4);
  expect_claim(g, 5, NULL, 0);
}

static void test_released_records_come_back_first(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 6);
  expect_range(g, 3, 1, 3);
  wd_store_group_release(g, 3);
  wd_store_group_release(g, 2);
  static const uint64_t want[] = {2, 3, 4, 5};
  expect_claim(g, 4, want, 4);
  /* Released again: comes back again, as often as it takes. */
  wd_store_group_release(g, 4);
  static const uint64_t want2[] = {4};
  expect_claim(g, 1, want2, 1);
}

static void test_ack_is_final_and_stray_settlements_are_ignored(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 4);
  expect_range(g, 2, 1, 2);
  wd_store_group_ack(g, 1);
  wd_store_group_release(g, 1);  /* already acknowledged */
  wd_store_group_ack(g, 1);      /* twice */
  wd_store_group_release(g, 3);  /* never claimed */
  wd_store_group_ack(g, 4);      /* never claimed */
  wd_store_group_release(g, 99); /* beyond the log */
  wd_store_group_ack(g, 0);
  expect_range(g, 10, 3, 4);
  /* A released record is no longer claimed: acknowledging it before it is claimed again does nothing. */
  wd_store_group_release(g, 2);
  wd_store_group_ack(g, 2);
  static const uint64_t want[] = {2};
  expect_claim(g, 10, want, 1);
}

static void test_out_of_order_acks_trim_only_below_the_first_gap(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 5);
  expect_range(g, 5, 1, 5);
  wd_store_group_ack(g, 5);
  wd_store_group_ack(g, 4);
  wd_store_group_ack(g, 3);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 1);
  wd_store_group_ack(g, 1);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 2);
  wd_store_group_ack(g, 2);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 0); /* all trimmed */
}

static void test_records_acked_by_every_group_are_trimmed(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *a = group(fx, "a"), *b = group(fx, "b");
  append_many(fx, 1, 6);
  expect_range(a, 10, 1, 6);
  expect_range(b, 10, 1, 6);
  for (uint64_t s = 1; s <= 6; s++) wd_store_group_ack(a, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 1); /* b still needs them all */
  for (uint64_t s = 1; s <= 3; s++) wd_store_group_ack(b, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 4);
  for (uint64_t s = 4; s <= 6; s++) wd_store_group_ack(b, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 0); /* all trimmed */
}

static void test_new_group_starts_at_the_oldest_retained_record(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *a = group(fx, "a");
  append_many(fx, 1, 5);
  expect_range(a, 3, 1, 3);
  for (uint64_t s = 1; s <= 3; s++) wd_store_group_ack(a, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 4);
  wd_store_group_t *late = group(fx, "late");
  expect_range(late, 10, 4, 5);
  /* The late group now holds back trimming of what it has not acknowledged. */
  expect_range(a, 10, 4, 5);
  wd_store_group_ack(a, 4);
  wd_store_group_ack(a, 5);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 4);
}

static void test_log_is_kept_while_no_group_exists(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  append_many(fx, 1, 3);
  sync_writer(fx);
  wd_store_group_t *g = group(fx, "first");
  expect_range(g, 10, 1, 3);
}

typedef struct {
  wd_store_group_t *g;
  uint64_t last;
  size_t handed;
} ack_in_callback_t;

/* Acknowledges each record while the claim is still handing them over. */
static void ack_as_handed(void *ctx, uint64_t seq, const void *data, size_t len) {
  ack_in_callback_t *a = ctx;
  char expect[32];
  snprintf(expect, sizeof expect, "rec-%llu", (unsigned long long)seq);
  assert_int_equal(len, strlen(expect));
  assert_memory_equal(data, expect, len);
  assert_true(seq > a->last);
  a->last = seq;
  a->handed++;
  wd_store_group_ack(a->g, seq);
}

static void test_claim_hands_records_in_order_and_they_may_be_settled_there(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, WD_STORE_CLAIM_MAX + 10);
  ack_in_callback_t a = {g, 0, 0};
  /* one call claims at most WD_STORE_CLAIM_MAX, whatever is asked */
  assert_int_equal(wd_store_group_claim(g, WD_STORE_CLAIM_MAX + 10, ack_as_handed, &a), WD_STORE_CLAIM_MAX);
  assert_int_equal(a.handed, WD_STORE_CLAIM_MAX);
  assert_int_equal(wd_store_group_claim(g, 100, ack_as_handed, &a), 10);
  assert_int_equal(a.last, WD_STORE_CLAIM_MAX + 10);
  assert_int_equal(wd_store_group_claim(g, 100, ack_as_handed, &a), 0);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 0); /* all acknowledged in the callback, so all trimmed */
}

static void test_group_tracks_many_records_in_flight(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 2500);
  assert_int_equal(claim(g, NULL, 1000), 1000); /* 1..1000 */
  for (uint64_t s = 1; s <= 600; s++) wd_store_group_ack(g, s);
  assert_int_equal(claim(g, NULL, 400), 400); /* 1001..1400: wraps around the state ring */
  uint64_t seqs[500];
  assert_int_equal(claim(g, seqs, 500), 500); /* 1401..1900: the ring grows while wrapped */
  assert_int_equal(seqs[0], 1401);
  assert_int_equal(seqs[499], 1900);
  wd_store_group_release(g, 700);
  wd_store_group_release(g, 1500);
  wd_store_group_release(g, 1900);
  static const uint64_t want[] = {700, 1500, 1900, 1901};
  expect_claim(g, 4, want, 4);
  for (uint64_t s = 1901; s > 600; s--) wd_store_group_ack(g, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 1902);
  assert_int_equal(claim(g, seqs, 500), 500);
  assert_int_equal(seqs[0], 1902);
  assert_int_equal(claim(g, NULL, 500), 99);
}

/* ------------------------------------------------------------ many logs */

static wd_store_log_t *log_named(fx_t *fx, const char *name) {
  wd_store_log_t *log = NULL;
  assert_int_equal(wd_store_log_open(fx->store, name, &log), WD_OK);
  assert_non_null(log);
  assert_string_equal(wd_store_log_name(log), name);
  return log;
}

/* Appends "rec-<i>" for i in [from, from+n) to `log` and waits. */
static void append_log(fx_t *fx, wd_store_log_t *log, int from, int n) {
  fx_call_t *calls = calloc((size_t)n, sizeof *calls);
  assert_non_null(calls);
  for (int i = 0; i < n; i++) {
    char text[32];
    snprintf(text, sizeof text, "rec-%d", from + i);
    assert_int_equal(fx_log_append_submit(fx, log, text, strlen(text), SIZE_MAX, &calls[i]), WD_OK);
  }
  fx_wait_all(fx);
  for (int i = 0; i < n; i++) assert_int_equal(calls[i].rc, WD_OK);
  free(calls);
}

static void test_log_open_returns_one_handle_per_name(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_log_t *a = log_named(fx, "feedback"), *b = log_named(fx, "feedback"), *t = log_named(fx, "telemetry");
  assert_ptr_equal(a, b);
  assert_ptr_equal(t, fx->log);
  assert_ptr_not_equal(a, t);
}

static void test_log_open_validates_the_name(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_log_t *log = NULL;
  assert_int_equal(wd_store_log_open(fx->store, "", &log), WD_ERR_INVALID);
  char name[WD_REPLY_TO_MAX + 2];
  int n = snprintf(name, sizeof name, "responses/");
  memset(name + n, 'r', sizeof name - (size_t)n - 1);
  name[sizeof name - 1] = '\0'; /* one too long */
  assert_int_equal(wd_store_log_open(fx->store, name, &log), WD_ERR_INVALID);
  name[sizeof name - 2] = '\0'; /* the longest */
  assert_int_equal(wd_store_log_open(fx->store, name, &log), WD_OK);
  append_log(fx, log, 1, 1);
  expect_range(group_of(log, "g"), 10, 1, 1);
}

static void test_logs_number_and_deliver_independently(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_log_t *fb = log_named(fx, "feedback"), *dl = log_named(fx, "deadletter");
  append_many(fx, 1, 3);
  append_log(fx, fb, 1, 2);
  append_many(fx, 4, 1);
  expect_range(group(fx, "g"), 10, 1, 4);
  expect_range(group_of(fb, "g"), 10, 1, 2);
  expect_claim(group_of(dl, "g"), 10, NULL, 0);
  /* Same group name, different logs: different groups. */
  assert_ptr_not_equal(group(fx, "g"), group_of(fb, "g"));
}

static void test_trimming_one_log_leaves_the_others(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_log_t *fb = log_named(fx, "feedback");
  wd_store_group_t *t = group(fx, "t"), *f = group_of(fb, "f");
  append_many(fx, 1, 3);
  append_log(fx, fb, 1, 3);
  expect_range(t, 10, 1, 3);
  for (uint64_t s = 1; s <= 3; s++) wd_store_group_ack(t, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 0);
  expect_range(group_of(fb, "late"), 10, 1, 3);
  expect_range(f, 10, 1, 3);
}

static void test_logs_and_their_groups_survive_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_log_t *fb = log_named(fx, "feedback"), *rs = log_named(fx, "responses/app");
  wd_store_group_t *f = group_of(fb, "f");
  append_log(fx, rs, 1, 2);
  append_log(fx, fb, 1, 4);
  append_many(fx, 1, 1);
  expect_range(f, 10, 1, 4);
  wd_store_group_ack(f, 1);
  wd_store_group_ack(f, 2);
  fx_reopen(fx);
  fb = log_named(fx, "feedback");
  rs = log_named(fx, "responses/app");
  expect_range(group_of(fb, "f"), 10, 3, 4);
  append_log(fx, fb, 5, 1);
  append_log(fx, rs, 3, 1);
  expect_range(group_of(fb, "f"), 10, 5, 5);
  expect_range(group_of(rs, "r"), 10, 1, 3);
  expect_range(group(fx, "t"), 10, 1, 1);
}

typedef struct {
  fx_t *fx;
  _Atomic bool stop;
  int opened;
} opener_t;

/* Opens new logs, each with a consumer group, as fast as it can. */
static void *open_logs(void *arg) {
  opener_t *o = arg;
  while (!atomic_load(&o->stop) && o->opened < 20000) {
    char name[32];
    snprintf(name, sizeof name, "responses/r%d", o->opened++);
    wd_store_log_t *log = NULL;
    wd_store_group_t *g = NULL;
    if (wd_store_log_open(o->fx->store, name, &log) != WD_OK || wd_store_group_open(log, "g", &g) != WD_OK) break;
  }
  return NULL;
}

static void test_logs_opened_while_the_writer_commits_survive_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  opener_t o = {.fx = fx};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, open_logs, &o), 0);
  for (int i = 0; i < 40; i++) sync_writer(fx);
  atomic_store(&o.stop, true);
  pthread_join(t, NULL);
  assert_true(o.opened > 0);
  fx_close(fx);
  wd_store_t *s = NULL;
  int rc = wd_store_open(fx->path, FX_MAP_SIZE, &s);
  wd_store_close(s);
  if (rc != WD_OK) fail_msg("reopening after %d logs were opened during commits: %s", o.opened, wd_err_str(rc));
}

/* ----------------------------------------------------------- persistence */

static void test_group_progress_survives_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g"), *other = group(fx, "other");
  append_many(fx, 1, 6);
  expect_range(g, 10, 1, 6);
  wd_store_group_ack(g, 1);
  wd_store_group_ack(g, 2);
  wd_store_group_ack(g, 4); /* above the first gap: not durable on its own */
  /* 3, 5 and 6 stay claimed, unsettled. */
  fx_reopen(fx);
  g = group(fx, "g");
  expect_range(g, 10, 3, 6); /* at-least-once: 4 comes again */
  other = group(fx, "other");
  expect_range(other, 10, 1, 6);
}

static void test_records_survive_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  append_many(fx, 1, 3);
  fx_reopen(fx);
  append_many(fx, 4, 2);
  wd_store_group_t *g = group(fx, "g");
  expect_range(g, 10, 1, 5);
}

static void test_sequence_numbers_continue_after_everything_was_trimmed(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 3);
  expect_range(g, 10, 1, 3);
  for (uint64_t s = 1; s <= 3; s++) wd_store_group_ack(g, s);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 0);
  fx_reopen(fx);
  assert_int_equal(first_seq(fx), 0);
  append_many(fx, 4, 1);
  g = group(fx, "g");
  expect_range(g, 10, 4, 4);
  wd_store_group_t *fresh = group(fx, "fresh");
  expect_range(fresh, 10, 4, 4);
}

static void test_idle_group_holds_back_trimming_across_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *idle = group(fx, "idle"), *busy = group(fx, "busy");
  append_many(fx, 1, 4);
  expect_range(busy, 10, 1, 4);
  for (uint64_t s = 1; s <= 4; s++) wd_store_group_ack(busy, s);
  fx_reopen(fx);
  sync_writer(fx);
  assert_int_equal(first_seq(fx), 1);
  idle = group(fx, "idle");
  expect_range(idle, 10, 1, 4);
  busy = group(fx, "busy");
  expect_claim(busy, 10, NULL, 0);
}

static void test_progress_is_persisted_by_the_idle_writer(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_group_t *g = group(fx, "g");
  append_many(fx, 1, 3);
  expect_range(g, 10, 1, 3);
  for (uint64_t s = 1; s <= 3; s++) wd_store_group_ack(g, s);
  /* No more writes: the writer's idle tick persists the floor and trims. */
  for (int i = 0; i < 200 && first_seq(fx) != 0; i++) usleep(10 * 1000);
  assert_int_equal(first_seq(fx), 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_append_assigns_increasing_sequence_numbers_from_one),
      T(test_append_patches_big_endian_seq_at_offset),
      T(test_append_rejects_offset_outside_the_record),
      T(test_append_of_empty_record_is_stored),
      T(test_append_listener_hears_which_log_grew),
      T(test_group_open_validates_the_name),
      T(test_group_open_twice_returns_the_same_group),
      T(test_each_group_sees_every_record),
      T(test_consumers_of_one_group_share_the_records),
      T(test_claim_respects_max_and_returns_zero_when_caught_up),
      T(test_released_records_come_back_first),
      T(test_ack_is_final_and_stray_settlements_are_ignored),
      T(test_out_of_order_acks_trim_only_below_the_first_gap),
      T(test_records_acked_by_every_group_are_trimmed),
      T(test_new_group_starts_at_the_oldest_retained_record),
      T(test_log_is_kept_while_no_group_exists),
      T(test_claim_hands_records_in_order_and_they_may_be_settled_there),
      T(test_group_tracks_many_records_in_flight),
      T(test_log_open_returns_one_handle_per_name),
      T(test_log_open_validates_the_name),
      T(test_logs_number_and_deliver_independently),
      T(test_trimming_one_log_leaves_the_others),
      T(test_logs_and_their_groups_survive_reopen),
      T(test_logs_opened_while_the_writer_commits_survive_reopen),
      T(test_group_progress_survives_reopen),
      T(test_records_survive_reopen),
      T(test_sequence_numbers_continue_after_everything_was_trimmed),
      T(test_idle_group_holds_back_trimming_across_reopen),
      T(test_progress_is_persisted_by_the_idle_writer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for store/queue.c: per-device durable queues of commands and
 * notifications, their settlement outcomes (feedback, dead letters), expiry,
 * group fan-out and the command status index. A stub codec writes feedback
 * and dead-letter records as plain text so that the tests can read them. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_fixture.h"

#define LIMIT 50
#define HOUR_MS (3600 * 1000)

/* ------------------------------------------------------------ stub codec */

/* "feedback <device> <message-id> <status>" */
static void *stub_feedback(void *arg, const char *device_id, const wd_store_queued_t *cmd, const char *status,
                           int64_t time_ms, size_t *len, size_t *seq_offset) {
  (void)arg;
  (void)time_ms;
  char *s = malloc(512);
  if (!s) return NULL;
  *len = (size_t)snprintf(s, 512, "feedback %s %s %s", device_id, cmd->message_id, status);
  *seq_offset = SIZE_MAX;
  return s;
}

/* "dead <device> <message-id> <reason> <payload>" */
static void *stub_deadletter(void *arg, const char *device_id, const wd_store_queued_t *msg, const char *reason,
                             int64_t time_ms, size_t *len, size_t *seq_offset) {
  (void)arg;
  (void)time_ms;
  char *s = malloc(512 + msg->len);
  if (!s) return NULL;
  *len = (size_t)snprintf(s, 512 + msg->len, "dead %s %s %s %.*s", device_id, msg->message_id, reason,
                          (int)msg->len, (const char *)msg->data);
  *seq_offset = SIZE_MAX;
  return s;
}

static void open_store(fx_t *fx, uint32_t max_delivery_count) {
  fx_open(fx);
  const wd_store_codec_t codec = {.arg = NULL, .feedback = stub_feedback, .deadletter = stub_deadletter};
  wd_store_set_codec(fx->store, &codec, max_delivery_count);
}

/* ---------------------------------------------------------------- helpers */

typedef struct {
  fx_t *fx;
  int rc, runs;
  uint64_t count;
} enq_call_t;

static void on_enqueued(void *ctx, int rc, uint64_t count) {
  enq_call_t *c = ctx;
  pthread_mutex_lock(&c->fx->mu);
  c->rc = rc;
  c->count = count;
  c->runs++;
  c->fx->outstanding--;
  pthread_cond_broadcast(&c->fx->cv);
  pthread_mutex_unlock(&c->fx->mu);
}

static void create_device(fx_t *fx, const char *id, const char *groups, uint32_t queue_limit, bool enabled) {
  wd_device_t *d = fx_device(id);
  fx_set_string(&d->groups, groups);
  d->queue_limit = queue_limit;
  d->enabled = enabled;
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_free(d);
}

/* Enqueues `payload` (copied) to a device, or to a group; returns the callback's
 * rc (or the submit error) and the sequence number or member count in *count. */
static int enqueue(fx_t *fx, bool to_group, const char *target, wd_queue_kind_t kind, const char *message_id,
                   const char *payload, int64_t expiry_ms, const char *reply_to, uint64_t *count) {
  wd_store_enqueue_t msg = {.kind = kind,
                            .durable = true,
                            .priority = 4,
                            .ttl_ms = 0,
                            .expiry_ms = expiry_ms ? expiry_ms : wd_now_ms() + HOUR_MS,
                            .message_id = message_id,
                            .message_id_raw = message_id,
                            .message_id_raw_len = message_id ? strlen(message_id) : 0,
                            .reply_to = reply_to,
                            .data = strdup(payload),
                            .len = strlen(payload)};
  assert_non_null(msg.data);
  enq_call_t c = {.fx = fx};
  pthread_mutex_lock(&fx->mu);
  fx->outstanding++;
  pthread_mutex_unlock(&fx->mu);
  int rc = to_group ? wd_store_group_enqueue(fx->store, target, &msg, LIMIT, on_enqueued, &c)
                    : wd_store_queue_append(fx->store, target, &msg, LIMIT, on_enqueued, &c);
  if (rc != WD_OK) {
    free(msg.data); /* still ours */
    pthread_mutex_lock(&fx->mu);
    fx->outstanding--;
    pthread_mutex_unlock(&fx->mu);
    return rc;
  }
  fx_wait_all(fx);
  assert_int_equal(c.runs, 1);
  if (count) *count = c.count;
  return c.rc;
}

static uint64_t command(fx_t *fx, const char *device, const char *message_id, const char *payload) {
  uint64_t seq = 0;
  assert_int_equal(enqueue(fx, false, device, WD_QUEUE_COMMAND, message_id, payload, 0, NULL, &seq), WD_OK);
  return seq;
}

static int settle(fx_t *fx, const char *device, uint64_t seq, wd_settle_t how) {
  fx_call_t c;
  fx_call_init(fx, &c);
  pthread_mutex_lock(&fx->mu);
  fx->outstanding++;
  pthread_mutex_unlock(&fx->mu);
  int rc = wd_store_queue_settle(fx->store, device, seq, how, fx_on_done, &c);
  if (rc != WD_OK) {
    pthread_mutex_lock(&fx->mu);
    fx->outstanding--;
    pthread_mutex_unlock(&fx->mu);
    return rc;
  }
  fx_wait_all(fx);
  return c.rc;
}

static uint32_t depth(fx_t *fx, const char *device) {
  uint32_t d = 12345;
  assert_int_equal(wd_store_queue_depth(fx->store, device, &d), WD_OK);
  return d;
}

/* Reads the queue; returns the count and checks the payloads, in order. */
static int read_queue(fx_t *fx, const char *device, const uint64_t *skip, size_t n_skip, const char *const *expect,
                      int n_expect, wd_store_queued_t **out) {
  wd_store_queued_t *list = NULL;
  int n = wd_store_queue_read(fx->store, device, skip, n_skip, 100, wd_now_ms(), &list);
  if (n != n_expect) fail_msg("%s: read %d messages, expected %d", device, n, n_expect);
  for (int i = 0; i < n; i++) {
    size_t len = strlen(expect[i]);
    if (list[i].len != len || memcmp(list[i].data, expect[i], len) != 0)
      fail_msg("%s message %d is '%.*s', expected '%s'", device, i, (int)list[i].len, (char *)list[i].data,
               expect[i]);
  }
  if (out) {
    *out = list;
  } else {
    for (int i = 0; i < n; i++) wd_store_queued_free(&list[i]);
    free(list);
  }
  return n;
}

static void free_list(wd_store_queued_t *list, int n) {
  for (int i = 0; i < n; i++) wd_store_queued_free(&list[i]);
  free(list);
}

/* Claims everything new in a log for the group and checks it against `expect`. */
static void expect_log(fx_t *fx, const char *log_name, const char *group, const char *const *expect, int n_expect) {
  wd_store_log_t *log = NULL;
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_log_open(fx->store, log_name, &log), WD_OK);
  assert_int_equal(wd_store_group_open(log, group, &g), WD_OK);
  wd_store_record_t recs[16];
  int n = fx_claim(g, recs, 16);
  for (int i = 0; i < n; i++) {
    if (i < n_expect && (recs[i].len != strlen(expect[i]) || memcmp(recs[i].data, expect[i], recs[i].len) != 0))
      fail_msg("%s record %d is '%.*s', expected '%s'", log_name, i, (int)recs[i].len, (char *)recs[i].data,
               expect[i]);
    wd_store_group_ack(g, recs[i].seq);
    free(recs[i].data);
  }
  if (n != n_expect) fail_msg("%s holds %d new records, expected %d", log_name, n, n_expect);
}

/* --------------------------------------------------------------- enqueue */

static void test_command_is_queued_and_read_back(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  int64_t expiry = wd_now_ms() + HOUR_MS;
  uint64_t seq = 0;
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, "m-1", "reboot", expiry, NULL, &seq), WD_OK);
  assert_int_equal(seq, 1);
  assert_int_equal(depth(fx, "d1"), 1);
  wd_store_queued_t *list = NULL;
  static const char *const want[] = {"reboot"};
  assert_int_equal(read_queue(fx, "d1", NULL, 0, want, 1, &list), 1);
  assert_int_equal(list[0].seq, 1);
  assert_int_equal(list[0].kind, WD_QUEUE_COMMAND);
  assert_true(list[0].durable);
  assert_int_equal(list[0].priority, 4);
  assert_int_equal(list[0].delivery_count, 0);
  assert_int_equal(list[0].expiry_ms, expiry);
  assert_true(list[0].enqueued_ms > 0 && list[0].enqueued_ms <= wd_now_ms());
  assert_string_equal(list[0].message_id, "m-1");
  assert_int_equal(list[0].message_id_raw_len, 3);
  assert_memory_equal(list[0].message_id_raw, "m-1", 3);
  free_list(list, 1);
}

static void test_queue_is_fifo_and_read_honours_skip_and_max(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  for (int i = 1; i <= 4; i++) {
    char id[16], body[16];
    snprintf(id, sizeof id, "m-%d", i);
    snprintf(body, sizeof body, "body-%d", i);
    assert_int_equal(command(fx, "d1", id, body), (uint64_t)i);
  }
  static const char *const all[] = {"body-1", "body-2", "body-3", "body-4"};
  read_queue(fx, "d1", NULL, 0, all, 4, NULL);
  static const uint64_t skip[] = {1, 3};
  static const char *const rest[] = {"body-2", "body-4"};
  read_queue(fx, "d1", skip, 2, rest, 2, NULL);
  wd_store_queued_t *list = NULL;
  assert_int_equal(wd_store_queue_read(fx->store, "d1", NULL, 0, 2, wd_now_ms(), &list), 2);
  assert_int_equal(list[1].seq, 2);
  free_list(list, 2);
  assert_int_equal(wd_store_queue_read(fx->store, "d1", NULL, 0, 0, wd_now_ms(), &list), 0);
  assert_int_equal(wd_store_queue_read(fx->store, "nobody", NULL, 0, 5, wd_now_ms(), &list), 0);
  assert_null(list);
  /* The most a receiver's link credit can be: what is queued comes back, and
     nothing is allocated for what is not (found by fuzz_amqp). */
  assert_int_equal(wd_store_queue_read(fx->store, "d1", NULL, 0, UINT32_MAX, wd_now_ms(), &list), 4);
  assert_int_equal(list[3].seq, 4);
  free_list(list, 4);
  assert_int_equal(wd_store_queue_read(fx->store, "d1", NULL, 0, SIZE_MAX, wd_now_ms(), &list), 4);
  free_list(list, 4);
}

static void test_queues_of_devices_are_separate(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  create_device(fx, "d10", "", 0, true); /* a prefix of another id must not mix */
  command(fx, "d1", "a", "for-d1");
  command(fx, "d10", "b", "for-d10");
  static const char *const one[] = {"for-d1"}, *const ten[] = {"for-d10"};
  read_queue(fx, "d1", NULL, 0, one, 1, NULL);
  read_queue(fx, "d10", NULL, 0, ten, 1, NULL);
  assert_int_equal(depth(fx, "d1"), 1);
}

static void test_enqueue_to_unknown_or_invalid_device_is_not_found(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  assert_int_equal(enqueue(fx, false, "ghost", WD_QUEUE_COMMAND, "m", "x", 0, NULL, NULL), WD_ERR_NOT_FOUND);
  assert_int_equal(enqueue(fx, false, "bad id", WD_QUEUE_COMMAND, "m", "x", 0, NULL, NULL), WD_ERR_NOT_FOUND);
  assert_int_equal(depth(fx, "ghost"), 0);
}

static void test_enqueue_to_disabled_device_is_refused(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, false);
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, "m", "x", 0, NULL, NULL), WD_ERR_DISABLED);
  assert_int_equal(depth(fx, "d1"), 0);
}

static void test_enqueue_beyond_the_queue_limit_is_refused(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "small", "", 2, true);
  command(fx, "small", "a", "1");
  command(fx, "small", "b", "2");
  assert_int_equal(enqueue(fx, false, "small", WD_QUEUE_COMMAND, "c", "3", 0, NULL, NULL), WD_ERR_LIMIT);
  assert_int_equal(depth(fx, "small"), 2);
  /* Room again once one is settled. */
  assert_int_equal(settle(fx, "small", 1, WD_SETTLE_COMPLETED), WD_OK);
  command(fx, "small", "c", "3");
  /* queue_limit 0 means the caller's default. */
  create_device(fx, "dflt", "", 0, true);
  for (int i = 0; i < LIMIT; i++) command(fx, "dflt", "m", "x");
  assert_int_equal(enqueue(fx, false, "dflt", WD_QUEUE_COMMAND, "m", "x", 0, NULL, NULL), WD_ERR_LIMIT);
}

static void test_enqueue_refuses_oversized_ids(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  char big[1100];
  memset(big, 'i', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, big, "x", 0, NULL, NULL), WD_ERR_INVALID);
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, "m", "x", 0, big, NULL), WD_ERR_INVALID);
  assert_int_equal(depth(fx, "d1"), 0);
}

/* ---------------------------------------------------------------- settle */

static void test_completed_command_is_removed_with_feedback(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = command(fx, "d1", "m-1", "x");
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_DELIVERED), WD_OK);
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_COMPLETED), WD_OK);
  assert_int_equal(depth(fx, "d1"), 0);
  read_queue(fx, "d1", NULL, 0, NULL, 0, NULL);
  static const char *const fb[] = {"feedback d1 m-1 completed"};
  expect_log(fx, "feedback", "t", fb, 1);
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_COMPLETED), WD_ERR_NOT_FOUND);
}

static void test_rejected_command_is_removed_with_feedback(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = command(fx, "d1", "m-1", "x");
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_REJECTED), WD_OK);
  assert_int_equal(depth(fx, "d1"), 0);
  static const char *const fb[] = {"feedback d1 m-1 rejected"};
  expect_log(fx, "feedback", "t", fb, 1);
  expect_log(fx, "deadletter", "t", NULL, 0);
}

static void test_released_command_comes_back_with_the_same_count(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = command(fx, "d1", "m-1", "x");
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_DELIVERED), WD_OK);
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_RELEASED), WD_OK);
  wd_store_queued_t *list = NULL;
  static const char *const want[] = {"x"};
  read_queue(fx, "d1", NULL, 0, want, 1, &list);
  assert_int_equal(list[0].delivery_count, 0);
  free_list(list, 1);
  expect_log(fx, "feedback", "t", NULL, 0);
}

static void test_failed_delivery_raises_the_count_until_dead_lettered(void **state) {
  fx_t *fx = *state;
  open_store(fx, 3);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = command(fx, "d1", "m-1", "payload");
  for (uint32_t i = 1; i < 3; i++) {
    assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_FAILED), WD_OK);
    wd_store_queued_t *list = NULL;
    static const char *const want[] = {"payload"};
    read_queue(fx, "d1", NULL, 0, want, 1, &list);
    assert_int_equal(list[0].delivery_count, i);
    free_list(list, 1);
  }
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_FAILED), WD_OK); /* the third failure */
  assert_int_equal(depth(fx, "d1"), 0);
  static const char *const dl[] = {"dead d1 m-1 delivery-count-exceeded payload"};
  expect_log(fx, "deadletter", "t", dl, 1);
  static const char *const fb[] = {"feedback d1 m-1 delivery-count-exceeded"};
  expect_log(fx, "feedback", "t", fb, 1);
}

static void test_undeliverable_command_is_dead_lettered(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = command(fx, "d1", "m-1", "payload");
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_UNDELIVERABLE), WD_OK);
  assert_int_equal(depth(fx, "d1"), 0);
  static const char *const dl[] = {"dead d1 m-1 undeliverable payload"};
  expect_log(fx, "deadletter", "t", dl, 1);
  static const char *const fb[] = {"feedback d1 m-1 undeliverable"};
  expect_log(fx, "feedback", "t", fb, 1);
}

static void test_recover_counts_unsettled_deliveries_as_failed(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t a = command(fx, "d1", "a", "A"), b = command(fx, "d1", "b", "B");
  (void)b;
  assert_int_equal(settle(fx, "d1", a, WD_SETTLE_DELIVERED), WD_OK);
  fx_call_t c;
  fx_call_init(fx, &c);
  pthread_mutex_lock(&fx->mu);
  fx->outstanding++;
  pthread_mutex_unlock(&fx->mu);
  assert_int_equal(wd_store_queue_recover(fx->store, "d1", fx_on_done, &c), WD_OK);
  fx_wait_all(fx);
  assert_int_equal(c.rc, WD_OK);
  wd_store_queued_t *list = NULL;
  static const char *const want[] = {"A", "B"};
  read_queue(fx, "d1", NULL, 0, want, 2, &list);
  assert_int_equal(list[0].delivery_count, 1); /* delivered, never settled */
  assert_int_equal(list[1].delivery_count, 0); /* never delivered */
  free_list(list, 2);
}

static void test_settle_of_unknown_message_is_not_found(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  assert_int_equal(settle(fx, "d1", 42, WD_SETTLE_COMPLETED), WD_ERR_NOT_FOUND);
  assert_int_equal(settle(fx, "bad id", 1, WD_SETTLE_COMPLETED), WD_ERR_INVALID);
}

static void test_notifications_complete_without_feedback(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t seq = 0;
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_NOTIFICATION, "n-1", "note", 0, NULL, &seq), WD_OK);
  assert_int_equal(settle(fx, "d1", seq, WD_SETTLE_COMPLETED), WD_OK);
  assert_int_equal(depth(fx, "d1"), 0);
  expect_log(fx, "feedback", "t", NULL, 0);
}

/* ---------------------------------------------------------------- expiry */

static void test_expired_command_is_never_read_and_is_dead_lettered(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  int64_t expiry = wd_now_ms() + 150;
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, "m-1", "late", expiry, NULL, NULL), WD_OK);
  command(fx, "d1", "m-2", "fresh");
  wd_store_queued_t *list = NULL;
  assert_int_equal(wd_store_queue_read(fx->store, "d1", NULL, 0, 10, expiry, &list), 1);
  assert_string_equal(list[0].message_id, "m-2");
  free_list(list, 1);
  /* The writer sweeps it out soon after it expires (CONTRACT: within 1 s). */
  for (int i = 0; i < 300 && depth(fx, "d1") != 1; i++) usleep(10 * 1000);
  assert_true(wd_now_ms() < expiry + 3000);
  assert_int_equal(depth(fx, "d1"), 1);
  static const char *const dl[] = {"dead d1 m-1 expired late"};
  expect_log(fx, "deadletter", "t", dl, 1);
  static const char *const fb[] = {"feedback d1 m-1 expired"};
  expect_log(fx, "feedback", "t", fb, 1);
}

/* ----------------------------------------------------------------- groups */

static void test_group_notification_reaches_every_enabled_member_with_room(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "a", "floor-1", 0, true);
  create_device(fx, "b", "lobby floor-1", 0, true);
  create_device(fx, "c", "floor-2", 0, true);
  create_device(fx, "off", "floor-1", 0, false);
  create_device(fx, "full", "floor-1", 1, true);
  command(fx, "full", "m", "x");
  uint64_t reached = 0;
  assert_int_equal(enqueue(fx, true, "floor-1", WD_QUEUE_NOTIFICATION, "n-1", "fire drill", 0, NULL, &reached),
                   WD_OK);
  assert_int_equal(reached, 2);
  static const char *const want[] = {"fire drill"};
  read_queue(fx, "a", NULL, 0, want, 1, NULL);
  read_queue(fx, "b", NULL, 0, want, 1, NULL);
  assert_int_equal(depth(fx, "c"), 0);
  assert_int_equal(depth(fx, "off"), 0);
  assert_int_equal(depth(fx, "full"), 1);
  /* The shared payload outlives one member's settlement. */
  assert_int_equal(settle(fx, "a", 1, WD_SETTLE_COMPLETED), WD_OK);
  read_queue(fx, "b", NULL, 0, want, 1, NULL);
  assert_int_equal(settle(fx, "b", 1, WD_SETTLE_UNDELIVERABLE), WD_OK);
  static const char *const dl[] = {"dead b n-1 undeliverable fire drill"};
  expect_log(fx, "deadletter", "t", dl, 1);
}

static void test_group_membership_follows_the_registry(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "a", "g1", 0, true);
  uint64_t reached = 0;
  assert_int_equal(enqueue(fx, true, "nobody-here", WD_QUEUE_NOTIFICATION, "n", "x", 0, NULL, NULL),
                   WD_ERR_NOT_FOUND);
  wd_device_t *d = fx_device("a");
  fx_set_string(&d->groups, "g2");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, d, NULL), WD_OK);
  assert_int_equal(enqueue(fx, true, "g1", WD_QUEUE_NOTIFICATION, "n", "x", 0, NULL, NULL), WD_ERR_NOT_FOUND);
  assert_int_equal(enqueue(fx, true, "g2", WD_QUEUE_NOTIFICATION, "n", "x", 0, NULL, &reached), WD_OK);
  assert_int_equal(reached, 1);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, NULL), WD_OK);
  assert_int_equal(enqueue(fx, true, "g2", WD_QUEUE_NOTIFICATION, "n", "x", 0, NULL, NULL), WD_ERR_NOT_FOUND);
  wd_device_free(d);
}

/* ------------------------------------------------------- device lifecycle */

static void test_deleting_a_device_purges_its_queue_with_feedback(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  command(fx, "d1", "m-1", "x");
  command(fx, "d1", "m-2", "y");
  wd_device_t *d = fx_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, NULL), WD_OK);
  assert_int_equal(depth(fx, "d1"), 0);
  static const char *const fb[] = {"feedback d1 m-1 purged", "feedback d1 m-2 purged"};
  expect_log(fx, "feedback", "t", fb, 2);
  /* A new device of the same name starts empty, numbering from 1. */
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  read_queue(fx, "d1", NULL, 0, NULL, 0, NULL);
  assert_int_equal(command(fx, "d1", "m-3", "z"), 1);
  wd_device_free(d);
}

static void test_queue_survives_reopen(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  uint64_t a = command(fx, "d1", "m-1", "first");
  command(fx, "d1", "m-2", "second");
  assert_int_equal(settle(fx, "d1", a, WD_SETTLE_FAILED), WD_OK);
  fx_close(fx);
  open_store(fx, 10);
  wd_store_queued_t *list = NULL;
  static const char *const want[] = {"first", "second"};
  read_queue(fx, "d1", NULL, 0, want, 2, &list);
  assert_int_equal(list[0].delivery_count, 1);
  assert_string_equal(list[1].message_id, "m-2");
  free_list(list, 2);
  assert_int_equal(command(fx, "d1", "m-3", "third"), 3);
}

/* ------------------------------------------------------------- reply-to */

static void test_command_remembers_where_responses_go(void **state) {
  fx_t *fx = *state;
  open_store(fx, 10);
  create_device(fx, "d1", "", 0, true);
  assert_int_equal(enqueue(fx, false, "d1", WD_QUEUE_COMMAND, "m-1", "x", 0, "responses/app", NULL), WD_OK);
  command(fx, "d1", "m-2", "y");
  char out[WD_REPLY_TO_MAX + 1];
  assert_int_equal(wd_store_command_reply_to(fx->store, "d1", "m-1", out), WD_OK);
  assert_string_equal(out, "responses/app");
  assert_int_equal(wd_store_command_reply_to(fx->store, "d1", "m-2", out), WD_OK);
  assert_string_equal(out, "responses");
  assert_int_equal(wd_store_command_reply_to(fx->store, "d1", "m-3", out), WD_ERR_NOT_FOUND);
  assert_int_equal(wd_store_command_reply_to(fx->store, "d2", "m-1", out), WD_ERR_NOT_FOUND);
  /* Still known after completion, so a late response can be routed. */
  assert_int_equal(settle(fx, "d1", 1, WD_SETTLE_COMPLETED), WD_OK);
  assert_int_equal(wd_store_command_reply_to(fx->store, "d1", "m-1", out), WD_OK);
  assert_string_equal(out, "responses/app");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_command_is_queued_and_read_back),
      T(test_queue_is_fifo_and_read_honours_skip_and_max),
      T(test_queues_of_devices_are_separate),
      T(test_enqueue_to_unknown_or_invalid_device_is_not_found),
      T(test_enqueue_to_disabled_device_is_refused),
      T(test_enqueue_beyond_the_queue_limit_is_refused),
      T(test_enqueue_refuses_oversized_ids),
      T(test_completed_command_is_removed_with_feedback),
      T(test_rejected_command_is_removed_with_feedback),
      T(test_released_command_comes_back_with_the_same_count),
      T(test_failed_delivery_raises_the_count_until_dead_lettered),
      T(test_undeliverable_command_is_dead_lettered),
      T(test_recover_counts_unsettled_deliveries_as_failed),
      T(test_settle_of_unknown_message_is_not_found),
      T(test_notifications_complete_without_feedback),
      T(test_expired_command_is_never_read_and_is_dead_lettered),
      T(test_group_notification_reaches_every_enabled_member_with_room),
      T(test_group_membership_follows_the_registry),
      T(test_deleting_a_device_purges_its_queue_with_feedback),
      T(test_queue_survives_reopen),
      T(test_command_remembers_where_responses_go),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

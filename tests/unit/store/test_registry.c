/* Unit tests for store/registry.c: device records, their generation, the
 * thumbprint index and paging, through the writer thread. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "store_fixture.h"

#define THUMB_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define THUMB_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define THUMB_C "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void fill_key(uint8_t key[WD_KEY_BYTES], uint8_t seed) {
  for (int i = 0; i < WD_KEY_BYTES; i++) key[i] = (uint8_t)(seed + i * 7);
}

static wd_device_t *full_device(const char *id) {
  wd_device_t *d = fx_device(id);
  d->has_key = true;
  fill_key(d->key, 1);
  snprintf(d->thumbprint, sizeof d->thumbprint, "%s", THUMB_A);
  fx_set_string(&d->groups, "floor-1 sensors");
  fx_set_string(&d->peers, "d2 floor-2");
  d->queue_limit = 7;
  return d;
}

static void create(fx_t *fx, const char *id) {
  wd_device_t *d = fx_device(id);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_free(d);
}

static uint64_t generation_of(fx_t *fx, const char *id) {
  wd_device_t *d = NULL;
  assert_int_equal(wd_store_device_get(fx->store, id, &d), WD_OK);
  uint64_t g = d->generation;
  wd_device_free(d);
  return g;
}

static void expect_thumbprint(fx_t *fx, const char *thumb, const char *id) {
  char got[WD_ID_MAX + 1] = "";
  int rc = wd_store_device_by_thumbprint(fx->store, thumb, got);
  if (!id) {
    assert_int_equal(rc, WD_ERR_NOT_FOUND);
  } else {
    assert_int_equal(rc, WD_OK);
    assert_string_equal(got, id);
  }
}

/* ------------------------------------------------------------- lifecycle */

static void test_device_new_has_empty_lists_and_is_enabled(void **state) {
  (void)state;
  wd_device_t *d = wd_device_new();
  assert_non_null(d);
  assert_string_equal(d->groups, "");
  assert_string_equal(d->peers, "");
  assert_true(d->enabled);
  assert_false(d->has_key);
  assert_string_equal(d->thumbprint, "");
  wd_device_t *copy = wd_device_dup(d);
  assert_non_null(copy);
  assert_ptr_not_equal(copy->groups, d->groups);
  wd_device_free(copy);
  wd_device_free(d);
  wd_device_free(NULL);
}

static void test_create_commits_record_with_generation_one(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("sensor-1"), *after = NULL;
  d->generation = 99; /* the caller's value is not the store's */
  int64_t before = wd_now_ms();
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, &after), WD_OK);
  assert_string_equal(after->id, "sensor-1");
  assert_int_equal(after->generation, 1);
  assert_true(after->created_ms >= before && after->created_ms <= wd_now_ms());
  assert_int_equal(after->updated_ms, after->created_ms);

  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "sensor-1", &got), WD_OK);
  assert_string_equal(got->id, "sensor-1");
  assert_true(got->enabled);
  assert_true(got->has_key);
  assert_memory_equal(got->key, d->key, WD_KEY_BYTES);
  assert_string_equal(got->thumbprint, THUMB_A);
  assert_string_equal(got->groups, "floor-1 sensors");
  assert_string_equal(got->peers, "d2 floor-2");
  assert_int_equal(got->queue_limit, 7);
  assert_int_equal(got->generation, 1);
  assert_int_equal(got->created_ms, after->created_ms);
  wd_device_free(got);
  wd_device_free(after);
  wd_device_free(d);
}

static void test_create_may_start_disabled_and_without_key(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = fx_device("quiet"), *got = NULL;
  d->enabled = false;
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  assert_int_equal(wd_store_device_get(fx->store, "quiet", &got), WD_OK);
  assert_false(got->enabled);
  assert_false(got->has_key);
  assert_string_equal(got->thumbprint, "");
  wd_device_free(got);
  wd_device_free(d);
}

static void test_create_of_taken_id_reports_exists_and_changes_nothing(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_t *again = fx_device("d1");
  fx_set_string(&again->groups, "other");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, again, NULL), WD_ERR_EXISTS);
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "d1", &got), WD_OK);
  assert_string_equal(got->groups, "floor-1 sensors");
  assert_int_equal(got->generation, 1);
  wd_device_free(got);
  wd_device_free(again);
  wd_device_free(d);
}

static void test_every_change_raises_generation(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1"), *after = NULL;
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);

  fx_set_string(&d->groups, "g2");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, d, &after), WD_OK);
  assert_int_equal(after->generation, 2);
  wd_device_free(after);

  assert_int_equal(fx_device_write(fx, WD_DEVICE_DISABLE, d, &after), WD_OK);
  assert_int_equal(after->generation, 3);
  assert_false(after->enabled);
  wd_device_free(after);

  assert_int_equal(fx_device_write(fx, WD_DEVICE_DISABLE, d, &after), WD_OK); /* again: still a change */
  assert_int_equal(after->generation, 4);
  wd_device_free(after);

  assert_int_equal(fx_device_write(fx, WD_DEVICE_ENABLE, d, &after), WD_OK);
  assert_int_equal(after->generation, 5);
  assert_true(after->enabled);
  wd_device_free(after);

  fill_key(d->key, 100);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_ROTATE, d, &after), WD_OK);
  assert_int_equal(after->generation, 6);
  assert_memory_equal(after->key, d->key, WD_KEY_BYTES);
  assert_true(after->updated_ms >= after->created_ms);
  wd_device_free(after);

  assert_int_equal(generation_of(fx, "d1"), 6);
  wd_device_free(d);
}

static void test_update_replaces_lists_and_keeps_key_and_enabled(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DISABLE, d, NULL), WD_OK);

  wd_device_t *chg = fx_device("d1");
  chg->enabled = true;
  chg->has_key = true;
  fill_key(chg->key, 200);
  fx_set_string(&chg->groups, "new-group");
  fx_set_string(&chg->peers, "");
  chg->queue_limit = 0;
  snprintf(chg->thumbprint, sizeof chg->thumbprint, "%s", THUMB_A);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, chg, NULL), WD_OK);

  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "d1", &got), WD_OK);
  assert_false(got->enabled);
  assert_memory_equal(got->key, d->key, WD_KEY_BYTES);
  assert_string_equal(got->groups, "new-group");
  assert_string_equal(got->peers, "");
  assert_int_equal(got->queue_limit, 0);
  wd_device_free(got);
  wd_device_free(chg);
  wd_device_free(d);
}

static void test_rotate_gives_a_keyless_device_a_key(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create(fx, "d1");
  wd_device_t *chg = fx_device("d1"), *got = NULL;
  fill_key(chg->key, 9);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_ROTATE, chg, NULL), WD_OK);
  assert_int_equal(wd_store_device_get(fx->store, "d1", &got), WD_OK);
  assert_true(got->has_key);
  assert_memory_equal(got->key, chg->key, WD_KEY_BYTES);
  wd_device_free(got);
  wd_device_free(chg);
}

static void test_changes_to_a_missing_device_report_not_found(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = fx_device("ghost");
  wd_device_op_t ops[] = {WD_DEVICE_UPDATE, WD_DEVICE_ENABLE, WD_DEVICE_DISABLE, WD_DEVICE_ROTATE, WD_DEVICE_DELETE};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    assert_int_equal(fx_device_write(fx, ops[i], d, NULL), WD_ERR_NOT_FOUND);
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "ghost", &got), WD_ERR_NOT_FOUND);
  wd_device_free(d);
}

static void test_delete_removes_the_device(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create(fx, "d1");
  create(fx, "d2");
  wd_device_t *d = fx_device("d1"), *after = (wd_device_t *)1;
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, &after), WD_OK);
  assert_null(after); /* nothing is left to show */
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "d1", &got), WD_ERR_NOT_FOUND);
  assert_int_equal(wd_store_device_get(fx->store, "d2", &got), WD_OK);
  wd_device_free(got);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, NULL), WD_ERR_NOT_FOUND);
  /* The id is free again. */
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_free(d);
}

static void test_write_refuses_bad_input_without_calling_back(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_call_t c;
  wd_device_t *d = fx_device("bad id");
  assert_int_equal(fx_device_submit(fx, WD_DEVICE_CREATE, d, &c), WD_ERR_INVALID);
  snprintf(d->id, sizeof d->id, "%s", "");
  assert_int_equal(fx_device_submit(fx, WD_DEVICE_CREATE, d, &c), WD_ERR_INVALID);
  snprintf(d->id, sizeof d->id, "%s", "ok-id");
  snprintf(d->thumbprint, sizeof d->thumbprint, "%s", "ABCDEF");
  assert_int_equal(fx_device_submit(fx, WD_DEVICE_CREATE, d, &c), WD_ERR_INVALID);
  d->thumbprint[0] = '\0';
  char *big = malloc(70000);
  assert_non_null(big);
  memset(big, 'g', 69999);
  big[69999] = '\0';
  free(d->groups);
  d->groups = big;
  assert_int_equal(fx_device_submit(fx, WD_DEVICE_CREATE, d, &c), WD_ERR_INVALID);
  assert_int_equal(c.runs, 0);
  fx_wait_all(fx); /* nothing outstanding */
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "ok-id", &got), WD_ERR_NOT_FOUND);
  wd_device_free(d);
}

static void test_get_of_invalid_id_is_not_found(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "", &got), WD_ERR_NOT_FOUND);
  assert_int_equal(wd_store_device_get(fx->store, "a/b", &got), WD_ERR_NOT_FOUND);
}

static void test_concurrent_changes_are_all_applied(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create(fx, "d1");
  /* Submitted together, applied read-modify-write in one batch: none is lost. */
  enum { N = 50 };
  fx_call_t calls[N];
  wd_device_t *d = fx_device("d1");
  for (int i = 0; i < N; i++)
    assert_int_equal(fx_device_submit(fx, i % 2 ? WD_DEVICE_ENABLE : WD_DEVICE_DISABLE, d, &calls[i]), WD_OK);
  fx_wait_all(fx);
  for (int i = 0; i < N; i++) {
    assert_int_equal(calls[i].rc, WD_OK);
    assert_int_equal(calls[i].runs, 1);
    assert_false(calls[i].on_test_thread);
    assert_int_equal(calls[i].after->generation, 2 + (uint64_t)i);
    wd_device_free(calls[i].after);
  }
  assert_int_equal(generation_of(fx, "d1"), 1 + N);
  wd_device_free(d);
}

/* ------------------------------------------------------------ thumbprints */

static void test_thumbprint_finds_its_device(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_A, "d1");
  expect_thumbprint(fx, THUMB_B, NULL);
  wd_device_free(d);
}

static void test_thumbprint_of_another_device_is_refused_on_create(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *a = full_device("a"), *b = full_device("b");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, a, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, b, NULL), WD_ERR_EXISTS);
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "b", &got), WD_ERR_NOT_FOUND);
  expect_thumbprint(fx, THUMB_A, "a");
  wd_device_free(a);
  wd_device_free(b);
}

static void test_recreated_device_never_repeats_a_generation(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("again");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DISABLE, d, NULL), WD_OK);
  uint64_t before = generation_of(fx, "again");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  /* A connection admitted at `before` must not match the new device. */
  assert_true(generation_of(fx, "again") > before);
  wd_device_free(d);
}

static void test_thumbprint_of_another_device_is_refused_on_update(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *a = full_device("a"), *b = full_device("b");
  snprintf(b->thumbprint, sizeof b->thumbprint, "%s", THUMB_B);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, a, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, b, NULL), WD_OK);
  uint64_t created = generation_of(fx, "b");
  snprintf(b->thumbprint, sizeof b->thumbprint, "%s", THUMB_A);
  fx_set_string(&b->groups, "changed");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, b, NULL), WD_ERR_EXISTS);
  /* Nothing of the refused update stuck. */
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "b", &got), WD_OK);
  assert_string_equal(got->thumbprint, THUMB_B);
  assert_string_equal(got->groups, "floor-1 sensors");
  assert_int_equal(got->generation, created);
  wd_device_free(got);
  expect_thumbprint(fx, THUMB_A, "a");
  expect_thumbprint(fx, THUMB_B, "b");
  wd_device_free(a);
  wd_device_free(b);
}

static void test_update_moves_the_thumbprint_index(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  snprintf(d->thumbprint, sizeof d->thumbprint, "%s", THUMB_C);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, d, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_A, NULL);
  expect_thumbprint(fx, THUMB_C, "d1");
  /* The old thumbprint is free for another device now. */
  wd_device_t *other = full_device("d2");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, other, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_A, "d2");
  /* Same thumbprint again is no conflict with itself. */
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, d, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_C, "d1");
  /* Clearing it removes it from the index. */
  d->thumbprint[0] = '\0';
  assert_int_equal(fx_device_write(fx, WD_DEVICE_UPDATE, d, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_C, NULL);
  wd_device_free(other);
  wd_device_free(d);
}

static void test_delete_removes_the_thumbprint(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DELETE, d, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_A, NULL);
  wd_device_t *other = full_device("d2");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, other, NULL), WD_OK);
  expect_thumbprint(fx, THUMB_A, "d2");
  wd_device_free(other);
  wd_device_free(d);
}

static void test_thumbprint_lookup_of_malformed_thumbprint_is_not_found(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  expect_thumbprint(fx, "", NULL);
  char big[600];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  expect_thumbprint(fx, big, NULL);
}

/* ---------------------------------------------------------------- paging */

static void test_list_pages_in_id_order(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  const char *ids[] = {"d05", "d01", "d03", "d02", "d04", "a", "z"};
  enum { N = sizeof ids / sizeof ids[0] };
  fx_call_t calls[N];
  wd_device_t *devs[N];
  for (int i = 0; i < N; i++) {
    devs[i] = fx_device(ids[i]);
    assert_int_equal(fx_device_submit(fx, WD_DEVICE_CREATE, devs[i], &calls[i]), WD_OK);
  }
  fx_wait_all(fx);
  for (int i = 0; i < N; i++) {
    assert_int_equal(calls[i].rc, WD_OK);
    wd_device_free(calls[i].after);
    wd_device_free(devs[i]);
  }
  const char *order[] = {"a", "d01", "d02", "d03", "d04", "d05", "z"};

  wd_device_t **list = NULL;
  int n = wd_store_device_list(fx->store, NULL, 100, &list);
  assert_int_equal(n, 7);
  for (int i = 0; i < n; i++) {
    assert_string_equal(list[i]->id, order[i]);
    wd_device_free(list[i]);
  }
  free(list);

  /* Pages of 3, each starting after the last id of the one before. */
  char after[WD_ID_MAX + 1] = "";
  int seen = 0;
  for (int page = 0; page < 4; page++) {
    n = wd_store_device_list(fx->store, after, 3, &list);
    assert_true(n >= 0 && n <= 3);
    for (int i = 0; i < n; i++) {
      assert_string_equal(list[i]->id, order[seen + i]);
      wd_device_free(list[i]);
    }
    seen += n;
    if (n > 0) snprintf(after, sizeof after, "%s", order[seen - 1]);
    free(list);
    if (n < 3) break;
  }
  assert_int_equal(seen, 7);
}

static void test_list_after_an_absent_id_starts_at_the_next_one(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create(fx, "d01");
  create(fx, "d03");
  wd_device_t **list = NULL;
  int n = wd_store_device_list(fx->store, "d02", 10, &list);
  assert_int_equal(n, 1);
  assert_string_equal(list[0]->id, "d03");
  wd_device_free(list[0]);
  free(list);
  n = wd_store_device_list(fx->store, "d03", 10, &list);
  assert_int_equal(n, 0);
  free(list);
  n = wd_store_device_list(fx->store, "", 1, &list);
  assert_int_equal(n, 1);
  assert_string_equal(list[0]->id, "d01");
  wd_device_free(list[0]);
  free(list);
  n = wd_store_device_list(fx->store, "zzz", 10, &list);
  assert_int_equal(n, 0);
  free(list);
}

static void test_list_of_empty_registry_is_empty(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t **list = NULL;
  int n = wd_store_device_list(fx->store, NULL, 10, &list);
  assert_int_equal(n, 0);
  free(list);
}

/* ------------------------------------------------------------ durability */

static void test_registry_survives_reopen(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_device_t *d = full_device("d1");
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_DISABLE, d, NULL), WD_OK);
  fx_reopen(fx);
  wd_device_t *got = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "d1", &got), WD_OK);
  assert_false(got->enabled);
  assert_int_equal(got->generation, 2);
  assert_memory_equal(got->key, d->key, WD_KEY_BYTES);
  assert_string_equal(got->peers, "d2 floor-2");
  wd_device_free(got);
  expect_thumbprint(fx, THUMB_A, "d1");
  wd_device_free(d);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_new_has_empty_lists_and_is_enabled),
      T(test_create_commits_record_with_generation_one),
      T(test_create_may_start_disabled_and_without_key),
      T(test_create_of_taken_id_reports_exists_and_changes_nothing),
      T(test_every_change_raises_generation),
      T(test_update_replaces_lists_and_keeps_key_and_enabled),
      T(test_rotate_gives_a_keyless_device_a_key),
      T(test_changes_to_a_missing_device_report_not_found),
      T(test_delete_removes_the_device),
      T(test_write_refuses_bad_input_without_calling_back),
      T(test_get_of_invalid_id_is_not_found),
      T(test_concurrent_changes_are_all_applied),
      T(test_thumbprint_finds_its_device),
      T(test_thumbprint_of_another_device_is_refused_on_create),
      T(test_recreated_device_never_repeats_a_generation),
      T(test_thumbprint_of_another_device_is_refused_on_update),
      T(test_update_moves_the_thumbprint_index),
      T(test_delete_removes_the_thumbprint),
      T(test_thumbprint_lookup_of_malformed_thumbprint_is_not_found),
      T(test_list_pages_in_id_order),
      T(test_list_after_an_absent_id_starts_at_the_next_one),
      T(test_list_of_empty_registry_is_empty),
      T(test_registry_survives_reopen),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

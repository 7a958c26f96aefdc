/* The append journal: an append acknowledged from the journal survives a
 * crash before its commit, and a journal that is damaged or not the store's
 * own is never put into it. The crash is real: a forked child is killed in
 * the acknowledgement callback itself, which the writer runs before it could
 * commit. */

#include <fcntl.h>
#include <lmdb.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <zlib.h>

#include <cmocka.h>

#include "store_fixture.h"

#define RECORDS 40 /* acknowledged one at a time before the last, journaled, one */

static void record_text(char *buf, size_t cap, int i) { snprintf(buf, cap, "reading %d of the valve", i); }

/* The acknowledgement of the last append ends the process there and then. */
static void die_on_ack(void *ctx, int rc) {
  (void)ctx;
  _exit(rc == WD_OK ? 0 : 3);
}

/* In a child: appends RECORDS + 1 records and dies acknowledging the last. */
static void crash_after_acknowledgement(fx_t *fx) {
  pid_t pid = fx_fork_open(fx);
  if (pid == 0) {
    char text[64];
    for (int i = 1; i <= RECORDS; i++) {
      record_text(text, sizeof text, i);
      fx_append_text(fx, text);
    }
    record_text(text, sizeof text, RECORDS + 1);
    char *copy = strdup(text);
    if (!copy || wd_store_log_append(fx->log, copy, strlen(text), SIZE_MAX, die_on_ack, NULL) != WD_OK) _exit(4);
    sleep(10); /* die_on_ack ends it */
    _exit(5);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

/* A read transaction on the store's LMDB itself, without warden's store (and its replay). */
static MDB_txn *lmdb_read(fx_t *fx) {
  MDB_env *env;
  MDB_txn *txn;
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 32), 0);
  assert_int_equal(mdb_env_set_mapsize(env, FX_MAP_SIZE), 0);
  assert_int_equal(mdb_env_open(env, fx->path, MDB_RDONLY, 0600), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  return txn;
}

static void lmdb_done(MDB_txn *txn) {
  MDB_env *env = mdb_txn_env(txn);
  mdb_txn_abort(txn);
  mdb_env_close(env);
}

/* Records LMDB itself holds. */
static size_t records_in_lmdb(fx_t *fx) {
  MDB_txn *txn = lmdb_read(fx);
  MDB_dbi dbi;
  MDB_stat st;
  assert_int_equal(mdb_dbi_open(txn, "records", 0, &dbi), 0);
  assert_int_equal(mdb_stat(txn, dbi, &st), 0);
  lmdb_done(txn);
  return st.ms_entries;
}

static void expect_records(fx_t *fx, const char *group, int count) { fx_expect_texts(fx, group, count, record_text); }

static void test_an_acknowledged_append_survives_a_crash_before_its_commit(void **state) {
  fx_t *fx = *state;
  crash_after_acknowledgement(fx);
  /* LMDB alone lacks at least the last record: only the journal has it. */
  assert_true(records_in_lmdb(fx) < RECORDS + 1);
  fx_open(fx);
  expect_records(fx, "after-crash", RECORDS + 1);
  /* Numbering goes on after the replayed records, and survives a clean restart. */
  fx_append_text(fx, "reading 42 of the valve");
  fx_reopen(fx);
  expect_records(fx, "after-restart", RECORDS + 2);
  assert_int_equal(records_in_lmdb(fx), RECORDS + 2);
}

static void test_a_replayed_journal_is_not_replayed_again(void **state) {
  fx_t *fx = *state;
  crash_after_acknowledgement(fx);
  fx_open(fx);
  fx_close(fx);
  fx_open(fx);
  expect_records(fx, "twice", RECORDS + 1);
  /* A record put again would show up as an extra entry or an overwritten one. */
  fx_close(fx);
  assert_int_equal(records_in_lmdb(fx), RECORDS + 1);
}

static void test_a_damaged_record_ends_the_replay_without_harm(void **state) {
  fx_t *fx = *state;
  crash_after_acknowledgement(fx);
  size_t committed = records_in_lmdb(fx);
  /* Garbage over the first record of the generation the crash left: a torn write. */
  char path[400];
  snprintf(path, sizeof path, "%s/journal", fx->path);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  uint8_t junk[64];
  memset(junk, 0xa5, sizeof junk);
  assert_int_equal(pwrite(fd, junk, sizeof junk, 40), (ssize_t)sizeof junk);
  close(fd);
  fx_open(fx);
  expect_records(fx, "damaged", (int)committed);
}

static void test_a_journal_of_another_store_is_ignored(void **state) {
  fx_t *fx = *state;
  crash_after_acknowledgement(fx);
  /* The journal moves beside a store made anew: none of it belongs there. */
  char from[400], to[400];
  snprintf(from, sizeof from, "%s/journal", fx->path);
  snprintf(to, sizeof to, "%s/journal-kept", fx->dir);
  assert_int_equal(rename(from, to), 0);
  char data[400];
  snprintf(data, sizeof data, "%s/data.mdb", fx->path);
  assert_int_equal(unlink(data), 0);
  snprintf(data, sizeof data, "%s/lock.mdb", fx->path);
  unlink(data);
  assert_int_equal(rename(to, from), 0);
  fx_open(fx);
  expect_records(fx, "fresh", 0);
  fx_close(fx);
  assert_int_equal(records_in_lmdb(fx), 0);
}

static void test_bounds_count_an_acknowledged_append_before_readers_see_it(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_append_text(fx, "reading 1 of the valve"); /* the log is stored: appends to it can be journaled */
  for (uint64_t seq = 2; seq < 50; seq++) {
    fx_call_t c;
    assert_int_equal(fx_append_submit(fx, "x", 1, SIZE_MAX, &c), WD_OK);
    fx_wait_callbacks(fx);
    assert_int_equal(c.rc, WD_OK);
    /* A reader starting "from now" must not get what was acknowledged before. */
    uint64_t first, next;
    wd_store_log_bounds(fx->log, &first, &next);
    assert_int_equal(first, 1);
    assert_int_equal(next, seq + 1);
  }
  /* And what was acknowledged becomes readable. */
  fx_wait_all(fx);
  wd_store_record_t recs[1];
  assert_int_equal(wd_store_log_read(fx->log, 49, recs, 1), 1);
  assert_int_equal(recs[0].seq, 49);
  free(recs[0].data);
  wd_store_stats_t st;
  wd_store_stats(fx->store, &st);
  assert_true(st.journal_writes >= 48); /* each of those was acknowledged from the journal */
}

static void test_a_store_whose_journal_cannot_be_made_still_takes_appends(void **state) {
  fx_t *fx = *state;
  char path[400];
  assert_int_equal(mkdir(fx->path, 0700), 0);
  snprintf(path, sizeof path, "%s/journal", fx->path);
  assert_int_equal(mkdir(path, 0700), 0); /* where the file would go */
  fx_open(fx);
  for (int i = 1; i <= 3; i++) {
    char text[64];
    record_text(text, sizeof text, i);
    fx_append_text(fx, text);
  }
  wd_store_stats_t st;
  wd_store_stats(fx->store, &st);
  assert_int_equal(st.journal_writes, 0);
  fx_reopen(fx);
  expect_records(fx, "no-journal", 3);
}

/* A big-endian value of 8 bytes stored under `key` in the meta table. */
static uint64_t meta_u64(fx_t *fx, const char *key) {
  MDB_txn *txn = lmdb_read(fx);
  MDB_dbi dbi;
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
  MDB_val k = {strlen(key), (void *)key}, v;
  assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
  assert_int_equal(v.mv_size, 8);
  uint64_t out = 0;
  for (int i = 0; i < 8; i++) out = out << 8 | ((const uint8_t *)v.mv_data)[i];
  lmdb_done(txn);
  return out;
}

static void put_be(uint8_t *p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Writes, from the format alone, a whole record of the generation replay
 * reads next: one entry numbered seq in the log log_id (the store's only one
 * is 1). */
static void craft_record(fx_t *fx, uint32_t log_id, uint64_t seq, const char *text) {
  uint64_t store_id = meta_u64(fx, "journal_store_id"), gen = meta_u64(fx, "journal_applied") + 1;
  size_t len = strlen(text), payload = 16 + len;
  uint8_t rec[4096] = {0};
  assert_true(32 + payload <= sizeof rec);
  memcpy(rec, "WDJ1", 4);
  put_be(rec + 8, store_id, 8);
  put_be(rec + 16, gen, 8);
  put_be(rec + 24, payload, 4);
  put_be(rec + 28, 1, 4);
  put_be(rec + 32, log_id, 4);
  put_be(rec + 36, seq, 8);
  put_be(rec + 44, len, 4);
  memcpy(rec + 48, text, len);
  put_be(rec + 4, crc32(crc32(0, NULL, 0), rec + 8, (uInt)(24 + payload)), 4);
  char path[400];
  snprintf(path, sizeof path, "%s/journal", fx->path);
  int fd = open(path, O_WRONLY);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, rec, sizeof rec, 0), (ssize_t)sizeof rec);
  close(fd);
}

static void test_a_record_made_from_the_format_is_replayed_unless_its_number_cannot_be(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_append_text(fx, "reading 1 of the valve");
  fx_close(fx);
  /* The format as decision 6 describes it: such a record is taken. */
  craft_record(fx, 1, 2, "reading 2 of the valve");
  fx_open(fx);
  expect_records(fx, "crafted", 2);
  fx_close(fx);
  /* Numbers a log never has end the replay instead. */
  const uint64_t impossible[] = {0, UINT64_MAX};
  for (size_t i = 0; i < 2; i++) {
    craft_record(fx, 1, impossible[i], "reading 3 of the valve");
    fx_open(fx);
    expect_records(fx, i ? "impossible-max" : "impossible-0", 2);
    uint64_t first, next;
    wd_store_log_bounds(fx->log, &first, &next);
    assert_int_equal(next, 3);
    fx_close(fx);
    assert_int_equal(records_in_lmdb(fx), 2);
  }
}

/* A whole record that does not continue its log (a gap, a number already
 * taken, a log the store lacks) was not written by this store's writer: it
 * ends the replay, and the store opens with what it had. */
static void test_a_record_that_does_not_continue_its_log_is_not_replayed(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_append_text(fx, "reading 1 of the valve");
  fx_close(fx);
  const struct {
    uint32_t log_id;
    uint64_t seq;
  } forged[] = {{1, 3}, {1, 1}, {99, 2}};
  for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
    craft_record(fx, forged[i].log_id, forged[i].seq, "forged");
    fx_open(fx);
    char group[32];
    snprintf(group, sizeof group, "forged-%zu", i);
    expect_records(fx, group, 1);
    uint64_t first, next;
    wd_store_log_bounds(fx->log, &first, &next);
    assert_int_equal(next, 2);
    fx_close(fx);
    assert_int_equal(records_in_lmdb(fx), 1);
  }
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_an_acknowledged_append_survives_a_crash_before_its_commit),
      T(test_a_replayed_journal_is_not_replayed_again),
      T(test_a_damaged_record_ends_the_replay_without_harm),
      T(test_a_journal_of_another_store_is_ignored),
      T(test_bounds_count_an_acknowledged_append_before_readers_see_it),
      T(test_a_store_whose_journal_cannot_be_made_still_takes_appends),
      T(test_a_record_made_from_the_format_is_replayed_unless_its_number_cannot_be),
      T(test_a_record_that_does_not_continue_its_log_is_not_replayed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

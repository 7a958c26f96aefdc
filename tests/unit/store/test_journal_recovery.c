/* The append journal when LMDB fails under it: a transaction that holds
 * appends the journal already acknowledged is refused at its commit, and the
 * store puts those appends again at once (or, if that fails as well, stops so
 * that the next open does). LMDB's commit is wrapped at link time
 * (-Wl,--wrap=mdb_txn_commit) so that it can be made to fail as a full or
 * failing disk would make it. */

#include <errno.h>
#include <lmdb.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "store_fixture.h"

#define BEFORE 5 /* records committed before the failure */

static atomic_int commits_to_fail;
static atomic_int commits_failed;

int __real_mdb_txn_commit(MDB_txn *txn);

/* A failed commit frees its transaction, as LMDB's own does. */
int __wrap_mdb_txn_commit(MDB_txn *txn) {
  int left = atomic_load(&commits_to_fail);
  while (left > 0 && !atomic_compare_exchange_weak(&commits_to_fail, &left, left - 1)) {
  }
  if (left > 0) {
    atomic_fetch_add(&commits_failed, 1);
    mdb_txn_abort(txn);
    return EIO;
  }
  return __real_mdb_txn_commit(txn);
}

static void record_text(char *buf, size_t cap, int i) { snprintf(buf, cap, "reading %d of the meter", i); }

static void append_numbered(fx_t *fx, int i) {
  char text[64];
  record_text(text, sizeof text, i);
  fx_append_text(fx, text);
}

/* Appends record i, waits for its acknowledgement only, and checks it came
 * from the journal: the commit that follows is the one made to fail. */
static void append_journaled(fx_t *fx, int i) {
  wd_store_stats_t before, after;
  wd_store_stats(fx->store, &before);
  char text[64];
  record_text(text, sizeof text, i);
  fx_call_t c;
  assert_int_equal(fx_append_submit(fx, text, strlen(text), SIZE_MAX, &c), WD_OK);
  fx_wait_callbacks(fx);
  assert_int_equal(c.rc, WD_OK);
  wd_store_stats(fx->store, &after);
  assert_int_equal(after.journal_writes, before.journal_writes + 1);
}

static void expect_records(fx_t *fx, const char *group, int count) { fx_expect_texts(fx, group, count, record_text); }

/* Commits records 1..BEFORE, then makes the next `failures` commits fail. */
static void commit_then_fail(fx_t *fx, int failures) {
  for (int i = 1; i <= BEFORE; i++) append_numbered(fx, i);
  atomic_store(&commits_failed, 0);
  atomic_store(&commits_to_fail, failures);
}

static void test_an_acknowledged_append_is_put_again_when_its_commit_fails(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  commit_then_fail(fx, 1);
  append_journaled(fx, BEFORE + 1);
  wd_store_sync(fx->store); /* the commit due now fails; the recovery's own goes through */
  assert_int_equal(atomic_load(&commits_failed), 1);
  assert_int_equal(atomic_load(&commits_to_fail), 0);
  expect_records(fx, "recovered", BEFORE + 1);
  /* Numbering goes on after the record put again, not over it. */
  append_numbered(fx, BEFORE + 2);
  fx_reopen(fx);
  expect_records(fx, "reopened", BEFORE + 2);
}

static void test_acknowledged_appends_of_several_batches_are_all_put_again(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  commit_then_fail(fx, 1);
  /* Acknowledged one after another, inside the same commit delay, they share
   * one transaction and one journal generation, or commit on their own if
   * the writer found the gap long enough; either way the failure hits a
   * transaction that holds acknowledged appends. */
  for (int i = BEFORE + 1; i <= BEFORE + 3; i++) append_journaled(fx, i);
  wd_store_sync(fx->store);
  assert_int_equal(atomic_load(&commits_failed), 1);
  expect_records(fx, "recovered", BEFORE + 3);
  fx_reopen(fx);
  expect_records(fx, "reopened", BEFORE + 3);
}

/* If the recovery cannot commit either, the store stops the process rather
 * than number new appends over acknowledged ones; the next open applies them. */
static void test_a_store_that_cannot_put_them_again_stops_and_the_next_open_does(void **state) {
  fx_t *fx = *state;
  pid_t pid = fx_fork_open(fx);
  if (pid == 0) {
    commit_then_fail(fx, 2);
    append_journaled(fx, BEFORE + 1);
    wd_store_sync(fx->store); /* aborts */
    _exit(5);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGABRT);
  atomic_store(&commits_to_fail, 0);
  fx_open(fx);
  expect_records(fx, "after-abort", BEFORE + 1);
  append_numbered(fx, BEFORE + 2);
  expect_records(fx, "after-append", BEFORE + 2);
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_an_acknowledged_append_is_put_again_when_its_commit_fails),
      T(test_acknowledged_appends_of_several_batches_are_all_put_again),
      T(test_a_store_that_cannot_put_them_again_stops_and_the_next_open_does),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

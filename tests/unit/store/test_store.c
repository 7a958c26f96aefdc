/* Unit tests for store/store.c: opening and closing the environment, the
 * schema version, the corruption policy (refuse, never empty the file), a full
 * map, and the writer's commit-before-callback rule. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "store_fixture.h"

/* ---------------------------------------------------------------- helpers */

static void file_path(fx_t *fx, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s", fx->path, name);
}

static uint8_t *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  assert_true(n >= 0);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static bool file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Opens the store directory with raw LMDB (the store must be closed). */
static MDB_env *raw_open(fx_t *fx) {
  MDB_env *env = NULL;
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
  assert_int_equal(mdb_env_set_mapsize(env, FX_MAP_SIZE), 0);
  assert_int_equal(mdb_env_open(env, fx->path, MDB_NOTLS, 0600), 0);
  return env;
}

static void raw_put_meta(fx_t *fx, const char *key, const void *value, size_t len) {
  MDB_env *env = raw_open(fx);
  MDB_txn *txn;
  MDB_dbi dbi;
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
  MDB_val k = {strlen(key), (void *)key}, v = {len, (void *)value};
  assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

/* Reads a meta value and counts the devices, with raw LMDB. */
static void raw_inspect(fx_t *fx, const char *key, uint8_t *value, size_t *len, size_t *n_devices) {
  MDB_env *env = raw_open(fx);
  MDB_txn *txn;
  MDB_dbi meta, devices;
  assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
  assert_int_equal(mdb_dbi_open(txn, "devices", 0, &devices), 0);
  MDB_val k = {strlen(key), (void *)key}, v;
  assert_int_equal(mdb_get(txn, meta, &k, &v), 0);
  assert_true(v.mv_size <= *len);
  memcpy(value, v.mv_data, v.mv_size);
  *len = v.mv_size;
  MDB_stat st;
  assert_int_equal(mdb_stat(txn, devices, &st), 0);
  *n_devices = st.ms_entries;
  mdb_txn_abort(txn);
  mdb_env_close(env);
}

static void create_device(fx_t *fx, const char *id) {
  wd_device_t *d = fx_device(id);
  assert_int_equal(fx_device_write(fx, WD_DEVICE_CREATE, d, NULL), WD_OK);
  wd_device_free(d);
}

static void write_random_file(const char *path, size_t len, uint32_t seed) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint32_t x = seed;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    fputc((int)(x & 0xff), f);
  }
  fclose(f);
}

/* ---------------------------------------------------------- open & close */

static void test_open_creates_the_store_directory(void **state) {
  fx_t *fx = *state;
  assert_false(file_exists(fx->path));
  fx_open(fx);
  char p[512];
  file_path(fx, "data.mdb", p, sizeof p);
  assert_true(file_exists(p));
  struct stat st;
  assert_int_equal(stat(fx->path, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(st.st_mode & 077, 0); /* private to its user */
  fx_close(fx);
  wd_store_close(NULL);
}

static void test_open_of_unusable_directory_is_an_io_error(void **state) {
  fx_t *fx = *state;
  char p[512];
  wd_store_t *s = NULL;
  snprintf(p, sizeof p, "%s/missing-parent/store", fx->dir);
  assert_int_equal(wd_store_open(p, FX_MAP_SIZE, &s), WD_ERR_IO);
  assert_null(s);
  snprintf(p, sizeof p, "%s/a-file", fx->dir);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(wd_store_open(p, FX_MAP_SIZE, &s), WD_ERR_IO);
  snprintf(p, sizeof p, "%s/a-file/store", fx->dir);
  assert_int_equal(wd_store_open(p, FX_MAP_SIZE, &s), WD_ERR_IO);
  assert_null(s);
}

static void test_open_writes_the_schema_version(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_close(fx);
  uint8_t v[16];
  size_t len = sizeof v, n;
  raw_inspect(fx, "schema_version", v, &len, &n);
  assert_int_equal(len, 8);
  static const uint8_t one[8] = {0, 0, 0, 0, 0, 0, 0, WD_STORE_SCHEMA_VERSION};
  assert_memory_equal(v, one, 8);
}

static void test_open_refuses_another_schema_version_and_keeps_the_data(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create_device(fx, "keep-me");
  fx_close(fx);
  static const uint8_t two[8] = {0, 0, 0, 0, 0, 0, 0, 2};
  raw_put_meta(fx, "schema_version", two, sizeof two);

  wd_store_t *s = NULL;
  assert_int_equal(wd_store_open(fx->path, FX_MAP_SIZE, &s), WD_ERR_CORRUPT);
  assert_null(s);
  uint8_t v[16];
  size_t len = sizeof v, n = 0;
  raw_inspect(fx, "schema_version", v, &len, &n);
  assert_int_equal(len, 8);
  assert_memory_equal(v, two, 8); /* not rewritten */
  assert_int_equal(n, 1);         /* not emptied */
}

static void test_open_refuses_a_malformed_schema_version(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  fx_close(fx);
  raw_put_meta(fx, "schema_version", "1", 1);
  wd_store_t *s = NULL;
  assert_int_equal(wd_store_open(fx->path, FX_MAP_SIZE, &s), WD_ERR_CORRUPT);
  assert_null(s);
}

static void test_open_refuses_a_garbage_data_file_and_leaves_it_untouched(void **state) {
  fx_t *fx = *state;
  assert_int_equal(mkdir(fx->path, 0700), 0);
  char p[512];
  file_path(fx, "data.mdb", p, sizeof p);
  write_random_file(p, 64 * 1024, 0x12345678u);
  size_t before_len, after_len;
  uint8_t *before = read_all(p, &before_len);

  wd_store_t *s = NULL;
  int rc = wd_store_open(fx->path, FX_MAP_SIZE, &s);
  assert_true(rc == WD_ERR_CORRUPT || rc == WD_ERR_IO);
  assert_null(s);

  uint8_t *after = read_all(p, &after_len);
  assert_int_equal(after_len, before_len);
  assert_memory_equal(after, before, before_len);
  free(before);
  free(after);
}

static void test_open_refuses_a_truncated_data_file_without_crashing(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  static char blob[3000];
  memset(blob, 'b', sizeof blob);
  fx_call_t *calls = calloc(300, sizeof *calls);
  assert_non_null(calls);
  for (int i = 0; i < 300; i++) assert_int_equal(fx_append_submit(fx, blob, sizeof blob, SIZE_MAX, &calls[i]), WD_OK);
  fx_wait_all(fx);
  for (int i = 0; i < 300; i++) assert_int_equal(calls[i].rc, WD_OK);
  free(calls);
  create_device(fx, "d1");
  fx_close(fx);

  char p[512];
  file_path(fx, "data.mdb", p, sizeof p);
  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  assert_true(st.st_size > 64 * 1024);
  assert_int_equal(truncate(p, 16 * 1024), 0); /* the two meta pages and a little more */
  size_t before_len, after_len;
  uint8_t *before = read_all(p, &before_len);

  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* No cmocka in the child: report through the exit status, and let a
     * crash be a crash rather than cmocka's handler running the rest. */
    signal(SIGBUS, SIG_DFL);
    signal(SIGSEGV, SIG_DFL);
    wd_store_t *s = NULL;
    int rc = wd_store_open(fx->path, FX_MAP_SIZE, &s);
    if (rc == WD_OK) {
      wd_store_log_t *log = NULL;
      wd_store_group_t *g = NULL;
      wd_store_record_t rec;
      if (wd_store_log_open(s, "telemetry", &log) == WD_OK && wd_store_group_open(log, "g", &g) == WD_OK) {
        while (fx_claim(g, &rec, 1) == 1) free(rec.data);
      }
      wd_store_close(s);
    }
    _exit(rc == WD_ERR_CORRUPT ? 0 : rc == WD_OK ? 2 : 3);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status)) fail_msg("opening a truncated store killed the process with signal %d", WTERMSIG(status));
  assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) != 0)
    fail_msg("opening a truncated store: child exit %d (2: opened it, 3: other error, 1: sanitizer)",
             WEXITSTATUS(status));
  uint8_t *after = read_all(p, &after_len);
  assert_int_equal(after_len, before_len);
  assert_memory_equal(after, before, before_len);
  free(before);
  free(after);
}

static void test_a_store_open_in_another_process_is_refused(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  /* A second open has its own lock file description, as another process would. */
  wd_store_t *second = NULL;
  assert_int_equal(wd_store_open(fx->path, FX_MAP_SIZE, &second), WD_ERR_IN_USE);
  assert_null(second);
  fx_append_text(fx, "still served");
  fx_close(fx);
  assert_int_equal(wd_store_open(fx->path, FX_MAP_SIZE, &second), WD_OK);
  wd_store_close(second);
}

static void test_empty_directory_becomes_an_empty_store(void **state) {
  fx_t *fx = *state;
  assert_int_equal(mkdir(fx->path, 0700), 0);
  fx_open(fx);
  wd_store_group_t *g = NULL;
  wd_store_record_t rec;
  assert_int_equal(wd_store_group_open(fx->log, "g", &g), WD_OK);
  assert_int_equal(fx_claim(g, &rec, 1), 0);
  wd_device_t **list = NULL;
  assert_int_equal(wd_store_device_list(fx->store, NULL, 10, &list), 0);
  free(list);
}

/* ------------------------------------------------------------- the writer */

static void test_close_commits_what_was_submitted(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  enum { N = 200 };
  fx_call_t calls[N];
  for (int i = 0; i < N; i++) {
    char text[16];
    snprintf(text, sizeof text, "r%d", i);
    assert_int_equal(fx_append_submit(fx, text, strlen(text), SIZE_MAX, &calls[i]), WD_OK);
  }
  fx_close(fx); /* no wait: close drains the queue */
  for (int i = 0; i < N; i++) {
    assert_int_equal(calls[i].runs, 1);
    assert_int_equal(calls[i].rc, WD_OK);
  }
  fx_open(fx);
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, "g", &g), WD_OK);
  wd_store_record_t recs[N + 1];
  assert_int_equal(fx_claim(g, recs, N + 1), N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(recs[i].seq, (uint64_t)i + 1);
    free(recs[i].data);
  }
}

static void test_writes_are_batched_into_few_commits(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  wd_store_stats_t before, after;
  wd_store_stats(fx->store, &before);
  enum { N = 500 };
  fx_call_t *calls = calloc(N, sizeof *calls);
  assert_non_null(calls);
  for (int i = 0; i < N; i++) assert_int_equal(fx_append_submit(fx, "x", 1, SIZE_MAX, &calls[i]), WD_OK);
  fx_wait_all(fx);
  for (int i = 0; i < N; i++) assert_int_equal(calls[i].rc, WD_OK);
  free(calls);
  wd_store_stats(fx->store, &after);
  assert_true(after.commits > before.commits);
  assert_true(after.commits - before.commits < N / 2);
}

static void test_stats_report_size_facts(void **state) {
  fx_t *fx = *state;
  fx_open(fx);
  create_device(fx, "d1");
  wd_store_stats_t st;
  wd_store_stats(fx->store, &st);
  assert_int_equal(st.map_size, FX_MAP_SIZE);
  assert_true(st.used_bytes > 0 && st.used_bytes < st.map_size);
  assert_true(st.commits >= 1);
  assert_int_equal(st.commit_failures_full, 0);
}

/* --------------------------------------------------------------- full map */

#define BIG 8000

static void fill_record(uint8_t *buf, uint64_t seq) {
  for (size_t i = 8; i < BIG; i++) buf[i] = (uint8_t)(seq * 31 + i);
}

static void check_records(fx_t *fx, const char *group_name, uint64_t count) {
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, group_name, &g), WD_OK);
  static uint8_t expect[BIG];
  uint64_t seen = 0;
  wd_store_record_t rec;
  while (fx_claim(g, &rec, 1) == 1) {
    seen++;
    assert_int_equal(rec.seq, seen);
    assert_int_equal(rec.len, BIG);
    uint64_t stamped = 0;
    for (int i = 0; i < 8; i++) stamped = stamped << 8 | ((uint8_t *)rec.data)[i];
    assert_int_equal(stamped, rec.seq);
    fill_record(expect, rec.seq);
    assert_memory_equal((uint8_t *)rec.data + 8, expect + 8, BIG - 8);
    free(rec.data);
  }
  assert_int_equal(seen, count);
}

static void test_append_rejects_when_map_full(void **state) {
  fx_t *fx = *state;
  const uint64_t small = 1u << 20;
  fx_open_size(fx, small);
  static uint8_t buf[BIG];
  uint64_t ok = 0;
  int rc = WD_OK;
  for (int i = 0; i < 1000 && rc == WD_OK; i++) {
    fill_record(buf, ok + 1);
    rc = fx_append(fx, buf, BIG, 0);
    if (rc == WD_OK) ok++;
  }
  /* Appends are refused before the map is full (a reserve keeps deletes possible), or at the latest when it is. */
  assert_true(rc == WD_ERR_BUSY || rc == WD_ERR_FULL);
  assert_true(ok > 10);

  /* A store that is full still answers, and refuses again. */
  fill_record(buf, ok + 1);
  rc = fx_append(fx, buf, BIG, 0);
  assert_true(rc == WD_ERR_BUSY || rc == WD_ERR_FULL);
  wd_device_t *d = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "nobody", &d), WD_ERR_NOT_FOUND);

  /* Every record committed before the map filled is intact. */
  check_records(fx, "check", ok);

  /* Reopened at the same size: still intact. */
  fx_close(fx);
  fx_open_size(fx, small);
  check_records(fx, "check-2", ok);

  /* Given room, it takes writes again, numbering on. */
  fx_close(fx);
  fx_open_size(fx, 8u << 20);
  fill_record(buf, ok + 1);
  assert_int_equal(fx_append(fx, buf, BIG, 0), WD_OK);
  check_records(fx, "check-3", ok + 1);
}

static void test_full_map_fails_only_the_writes_that_do_not_fit(void **state) {
  fx_t *fx = *state;
  fx_open_size(fx, 1u << 20);
  /* Submitted together: the batch overflows, is retried write by write, and
   * exactly the writes that fit are stored, in order, without gaps. */
  enum { N = 300 };
  static uint8_t bufs[N][BIG];
  fx_call_t *calls = calloc(N, sizeof *calls);
  assert_non_null(calls);
  for (int i = 0; i < N; i++) {
    fill_record(bufs[i], (uint64_t)i + 1);
    assert_int_equal(fx_append_submit(fx, bufs[i], BIG, 0, &calls[i]), WD_OK);
  }
  fx_wait_all(fx);
  int ok = 0, full = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(calls[i].runs, 1);
    if (calls[i].rc == WD_OK) {
      ok++;
    } else {
      assert_true(calls[i].rc == WD_ERR_BUSY || calls[i].rc == WD_ERR_FULL);
      full++;
    }
  }
  assert_true(ok > 10);
  assert_true(full > 0);
  /* Exactly the accepted writes are stored: in submission order, numbered without gaps. */
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, "check", &g), WD_OK);
  uint64_t seq = 0;
  for (int i = 0; i < N; i++) {
    if (calls[i].rc != WD_OK) continue;
    wd_store_record_t rec;
    assert_int_equal(fx_claim(g, &rec, 1), 1);
    assert_int_equal(rec.seq, ++seq);
    assert_int_equal(rec.len, BIG);
    assert_memory_equal((uint8_t *)rec.data + 8, bufs[i] + 8, BIG - 8);
    free(rec.data);
  }
  wd_store_record_t extra;
  assert_int_equal(fx_claim(g, &extra, 1), 0);
  free(calls);
}

static void test_acknowledged_records_make_room_after_the_store_refused_appends(void **state) {
  fx_t *fx = *state;
  fx_open_size(fx, 1u << 20);
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, "g", &g), WD_OK);
  static uint8_t buf[BIG];
  uint64_t ok = 0;
  int rc = WD_OK;
  for (int i = 0; i < 1000 && rc == WD_OK; i++) {
    fill_record(buf, ok + 1);
    if ((rc = fx_append(fx, buf, BIG, 0)) == WD_OK) ok++;
  }
  assert_true(rc == WD_ERR_BUSY || rc == WD_ERR_FULL);
  /* The only group takes and acknowledges everything: the records go, and so
     must the refusals - deleting needs pages too, which the reserve keeps. */
  wd_store_record_t rec;
  while (fx_claim(g, &rec, 1) == 1) {
    wd_store_group_ack(g, rec.seq);
    free(rec.data);
  }
  for (int tries = 0; tries < 100 && rc != WD_OK; tries++) {
    usleep(50 * 1000);
    fill_record(buf, ok + 1);
    rc = fx_append(fx, buf, BIG, 0);
  }
  assert_int_equal(rc, WD_OK);
}

static void test_open_accepts_a_data_file_that_ends_at_a_freed_page(void **state) {
  fx_t *fx = *state;
  /* Plain LMDB: pages allocated and freed in one transaction ("loose" pages)
     are never written, so after a normal commit the file may end before its
     last page. Build such a file: append to a log, sometimes deleting what the
     same transaction appended, until it happens. */
  assert_int_equal(mkdir(fx->path, 0700), 0);
  MDB_env *env;
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_mapsize(env, FX_MAP_SIZE), 0);
  assert_int_equal(mdb_env_open(env, fx->path, MDB_NOTLS, 0600), 0);
  char p[512], key[32], val[300];
  file_path(fx, "data.mdb", p, sizeof p);
  memset(val, 'v', sizeof val);
  unsigned long next = 0;
  bool short_file = false;
  for (int round = 0; round < 2000 && !short_file; round++) {
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    int add = 1 + (round * 7919) % 60;
    for (int i = 0; i < add; i++) {
      snprintf(key, sizeof key, "%012lu", next++);
      MDB_val k = {strlen(key), key}, v = {sizeof val, val};
      assert_int_equal(mdb_put(txn, dbi, &k, &v, MDB_APPEND), 0);
    }
    for (int i = 0; i < add && round % 3 == 0; i++) {
      snprintf(key, sizeof key, "%012lu", next - 1 - (unsigned long)i);
      MDB_val k = {strlen(key), key};
      assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    }
    assert_int_equal(mdb_txn_commit(txn), 0);
    MDB_envinfo info;
    MDB_stat st;
    struct stat file;
    assert_int_equal(mdb_env_info(env, &info), 0);
    assert_int_equal(mdb_env_stat(env, &st), 0);
    assert_int_equal(stat(p, &file), 0);
    short_file = (uint64_t)file.st_size < (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
  }
  mdb_env_close(env);
  assert_true(short_file); /* the case itself, or this test proves nothing */
  /* A healthy store: it opens and works. */
  fx_open(fx);
  create_device(fx, "d1");
  fx_close(fx);
  fx_open(fx);
  wd_device_t *d = NULL;
  assert_int_equal(wd_store_device_get(fx->store, "d1", &d), WD_OK);
  wd_device_free(d);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_open_creates_the_store_directory),
      T(test_open_of_unusable_directory_is_an_io_error),
      T(test_open_writes_the_schema_version),
      T(test_open_refuses_another_schema_version_and_keeps_the_data),
      T(test_open_refuses_a_malformed_schema_version),
      T(test_open_refuses_a_garbage_data_file_and_leaves_it_untouched),
      T(test_open_refuses_a_truncated_data_file_without_crashing),
      T(test_open_accepts_a_data_file_that_ends_at_a_freed_page),
      T(test_empty_directory_becomes_an_empty_store),
      T(test_a_store_open_in_another_process_is_refused),
      T(test_close_commits_what_was_submitted),
      T(test_writes_are_batched_into_few_commits),
      T(test_stats_report_size_facts),
      T(test_append_rejects_when_map_full),
      T(test_full_map_fails_only_the_writes_that_do_not_fit),
      T(test_acknowledged_records_make_room_after_the_store_refused_appends),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

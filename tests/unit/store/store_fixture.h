/* Shared by the store unit tests: a store in a fresh temporary directory, and
 * bounded waits for the writer thread's callbacks. Include after cmocka.h. */

#ifndef WD_TEST_STORE_FIXTURE_H
#define WD_TEST_STORE_FIXTURE_H

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

#define FX_WAIT_MS 5000           /* no single wait in these tests should come near this */
#define FX_MAP_SIZE (64u << 20)   /* generous: the tests that fill the map choose their own */

typedef struct {
  char dir[256];  /* the temporary directory */
  char path[300]; /* the store directory inside it (created by wd_store_open) */
  wd_store_t *store;
  wd_store_log_t *log; /* "telemetry" of the open store */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int outstanding; /* callbacks not yet run */
  pthread_t test_thread;
} fx_t;

/* One submitted write: its callback's result. */
typedef struct {
  fx_t *fx;
  int rc;
  int runs;
  bool on_test_thread;
  wd_device_t *after; /* a copy of the committed record, owned */
} fx_call_t;

typedef struct {
  wd_store_record_t *out;
  size_t n;
} fx_claimed_t;

static inline void fx_copy_record(void *ctx, uint64_t seq, const void *data, size_t len) {
  fx_claimed_t *c = ctx;
  void *copy = malloc(len ? len : 1);
  if (!copy) abort();
  memcpy(copy, data, len);
  c->out[c->n++] = (wd_store_record_t){seq, copy, len};
}

/* wd_store_group_claim, repeated up to max, into an array of copies (free each record's data);
 * returns the count handed over, which is the count claimed unless some were
 * gone from the log. */
static inline int fx_claim(wd_store_group_t *g, wd_store_record_t *out, size_t max) {
  fx_claimed_t c = {out, 0};
  while (c.n < max) { /* one call claims at most WD_STORE_CLAIM_MAX */
    int rc = wd_store_group_claim(g, max - c.n, fx_copy_record, &c);
    if (rc < 0) return rc;
    if (rc == 0) break;
  }
  return (int)c.n;
}

static inline void fx_rm_rf(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (d) {
      struct dirent *e;
      while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[1024];
        int n = snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        if (n > 0 && (size_t)n < sizeof child) fx_rm_rf(child);
      }
      closedir(d);
    }
    rmdir(path);
  } else {
    unlink(path);
  }
}

static inline int fx_setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  if (!fx) return -1;
  const char *tmp = getenv("TMPDIR");
  snprintf(fx->dir, sizeof fx->dir, "%s/wd-store-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(fx->dir)) {
    free(fx);
    return -1;
  }
  snprintf(fx->path, sizeof fx->path, "%s/store", fx->dir);
  pthread_mutex_init(&fx->mu, NULL);
  pthread_cond_init(&fx->cv, NULL);
  fx->test_thread = pthread_self();
  *state = fx;
  return 0;
}

static inline int fx_teardown(void **state) {
  fx_t *fx = *state;
  wd_store_close(fx->store);
  fx_rm_rf(fx->dir);
  pthread_mutex_destroy(&fx->mu);
  pthread_cond_destroy(&fx->cv);
  free(fx);
  return 0;
}

static inline void fx_open_size(fx_t *fx, uint64_t max_size) {
  assert_null(fx->store);
  int rc = wd_store_open(fx->path, max_size, &fx->store);
  if (rc != WD_OK) fail_msg("wd_store_open(%s): %s", fx->path, wd_err_str(rc));
  assert_non_null(fx->store);
  assert_int_equal(wd_store_log_open(fx->store, "telemetry", &fx->log), WD_OK);
}

static inline void fx_open(fx_t *fx) { fx_open_size(fx, FX_MAP_SIZE); }

static inline void fx_close(fx_t *fx) {
  wd_store_close(fx->store);
  fx->store = NULL;
  fx->log = NULL;
}

static inline void fx_reopen(fx_t *fx) {
  fx_close(fx);
  fx_open(fx);
}

/* Waits until every submitted callback has run; fails the test after FX_WAIT_MS. */
static inline void fx_wait_callbacks(fx_t *fx) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += FX_WAIT_MS / 1000;
  pthread_mutex_lock(&fx->mu);
  int rc = 0;
  while (fx->outstanding > 0 && rc == 0) rc = pthread_cond_timedwait(&fx->cv, &fx->mu, &deadline);
  int left = fx->outstanding;
  pthread_mutex_unlock(&fx->mu);
  if (left > 0) fail_msg("%d store callbacks did not run within %d ms", left, FX_WAIT_MS);
}

/* The same, then waits until readers see every write: journaled appends are
 * acknowledged up to ~1 ms before their commit. */
static inline void fx_wait_all(fx_t *fx) {
  fx_wait_callbacks(fx);
  if (fx->store) wd_store_sync(fx->store);
}

static inline void fx_call_init(fx_t *fx, fx_call_t *c) {
  memset(c, 0, sizeof *c);
  c->fx = fx;
  c->rc = 1; /* not yet run */
}

static inline void fx_on_device(void *ctx, int rc, const wd_device_t *after) {
  fx_call_t *c = ctx;
  fx_t *fx = c->fx;
  pthread_mutex_lock(&fx->mu);
  c->rc = rc;
  c->runs++;
  c->on_test_thread = pthread_equal(pthread_self(), fx->test_thread);
  if (after) c->after = wd_device_dup(after);
  fx->outstanding--;
  pthread_cond_broadcast(&fx->cv);
  pthread_mutex_unlock(&fx->mu);
}

static inline void fx_on_done(void *ctx, int rc) {
  fx_call_t *c = ctx;
  fx_t *fx = c->fx;
  pthread_mutex_lock(&fx->mu);
  c->rc = rc;
  c->runs++;
  c->on_test_thread = pthread_equal(pthread_self(), fx->test_thread);
  fx->outstanding--;
  pthread_cond_broadcast(&fx->cv);
  pthread_mutex_unlock(&fx->mu);
}

/* Submits a registry change without waiting. Returns the submit rc. */
static inline int fx_device_submit(fx_t *fx, wd_device_op_t op, const wd_device_t *change, fx_call_t *c) {
  fx_call_init(fx, c);
  pthread_mutex_lock(&fx->mu);
  fx->outstanding++;
  pthread_mutex_unlock(&fx->mu);
  int rc = wd_store_device_write(fx->store, op, change, fx_on_device, c);
  if (rc != WD_OK) {
    pthread_mutex_lock(&fx->mu);
    fx->outstanding--;
    pthread_mutex_unlock(&fx->mu);
  }
  return rc;
}

/* Applies a registry change and waits for it. Returns the callback's rc (or the
 * submit error); *after_out (if given) gets the committed record, owned. */
static inline int fx_device_write(fx_t *fx, wd_device_op_t op, const wd_device_t *change, wd_device_t **after_out) {
  fx_call_t c;
  int rc = fx_device_submit(fx, op, change, &c);
  if (rc != WD_OK) return rc;
  fx_wait_all(fx);
  assert_int_equal(c.runs, 1);
  assert_false(c.on_test_thread);
  if (c.rc == WD_OK && op != WD_DEVICE_DELETE)
    assert_non_null(c.after);
  else
    assert_null(c.after); /* NULL after DELETE or on error */
  if (after_out)
    *after_out = c.after;
  else
    wd_device_free(c.after);
  return c.rc;
}

/* Submits an append of a copy of data to `log` without waiting. Returns the submit rc. */
static inline int fx_log_append_submit(fx_t *fx, wd_store_log_t *log, const void *data, size_t len,
                                       size_t seq_offset, fx_call_t *c) {
  fx_call_init(fx, c);
  void *copy = malloc(len ? len : 1);
  assert_non_null(copy);
  if (len) memcpy(copy, data, len);
  pthread_mutex_lock(&fx->mu);
  fx->outstanding++;
  pthread_mutex_unlock(&fx->mu);
  int rc = wd_store_log_append(log, copy, len, seq_offset, fx_on_done, c);
  if (rc != WD_OK) {
    free(copy); /* still ours on error */
    pthread_mutex_lock(&fx->mu);
    fx->outstanding--;
    pthread_mutex_unlock(&fx->mu);
  }
  return rc;
}

/* The same, to the telemetry log. */
static inline int fx_append_submit(fx_t *fx, const void *data, size_t len, size_t seq_offset, fx_call_t *c) {
  return fx_log_append_submit(fx, fx->log, data, len, seq_offset, c);
}

/* Appends to the telemetry log and waits. Returns the callback's rc (or the submit error). */
static inline int fx_append(fx_t *fx, const void *data, size_t len, size_t seq_offset) {
  fx_call_t c;
  int rc = fx_append_submit(fx, data, len, seq_offset, &c);
  if (rc != WD_OK) return rc;
  fx_wait_all(fx);
  assert_int_equal(c.runs, 1);
  return c.rc;
}

/* Appends the NUL-terminated text `s` (without its NUL) and waits for WD_OK. */
static inline void fx_append_text(fx_t *fx, const char *s) {
  int rc = fx_append(fx, s, strlen(s), SIZE_MAX);
  if (rc != WD_OK) fail_msg("append of '%s': %s", s, wd_err_str(rc));
}

/* Forks. The child (0 returned) has the store open, as the test thread; the
 * parent gets the child's pid and may not touch the store until it is gone. */
static inline pid_t fx_fork_open(fx_t *fx) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    fx->test_thread = pthread_self();
    fx_open(fx);
  }
  return pid;
}

/* Writes the text record i (from 1) of a test's log holds. */
typedef void (*fx_text_fn)(char *buf, size_t cap, int i);

/* Claims everything in the telemetry log for a new group and checks it is
 * records 1..count, in order, each holding text(i). */
static inline void fx_expect_texts(fx_t *fx, const char *group, int count, fx_text_fn text_of) {
  wd_store_group_t *g = NULL;
  assert_int_equal(wd_store_group_open(fx->log, group, &g), WD_OK);
  wd_store_record_t *recs = calloc((size_t)count + 2, sizeof *recs);
  assert_non_null(recs);
  int n = fx_claim(g, recs, (size_t)count + 2); /* room for more than expected, to see them */
  assert_int_equal(n, count);
  char text[64];
  for (int i = 0; i < n; i++) {
    text_of(text, sizeof text, i + 1);
    assert_int_equal(recs[i].seq, (uint64_t)i + 1);
    assert_int_equal(recs[i].len, strlen(text));
    assert_memory_equal(recs[i].data, text, recs[i].len);
    free(recs[i].data);
  }
  free(recs);
}

static inline wd_device_t *fx_device(const char *id) {
  wd_device_t *d = wd_device_new();
  assert_non_null(d);
  snprintf(d->id, sizeof d->id, "%s", id);
  return d;
}

static inline void fx_set_string(char **dst, const char *s) {
  free(*dst);
  *dst = strdup(s);
  assert_non_null(*dst);
}

#endif

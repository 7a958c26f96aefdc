/* libFuzzer target: the append journal's replay when a store opens
 * (store/journal.c).
 *
 * Each input becomes the journal of a fresh copy of a small store: log 1
 * ("telemetry", records 1-3) and log 2 ("events", records 1-2). The input is
 * a series of records, each
 *
 *   flags (1 byte), entry count (1 byte, & 31), then per entry:
 *   log (1 byte, & 3: 1 and 2 are the store's, 0 and 3 name logs it lacks),
 *   number (1 byte, & 7: how the entry is numbered, see entry_seq),
 *   length (1 byte), that many bytes of data
 *
 * and the harness writes it as the writer would (magic, store id, the
 * generation replay reads, lengths, CRC-32, padded to 4 KiB) unless a flag
 * spoils one of them; so the fuzzer spends its time on the entries, not on
 * finding a checksum. Knowing what it wrote, the harness knows which records
 * the writer could have written, and checks that the store opens with exactly
 * those put, in order, up to the first it could not have written; that the
 * numbering goes on after them; and that a second open puts nothing again. */

#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "fuzz_util.h"
#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "store/store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAP_SIZE (64u << 20)
#define JOURNAL_FILE_SIZE (8 << 20) /* store/journal.c's */
#define BLOCK 4096u
#define LOGS 2
#define MAX_ENTRIES 16 /* the most appends the writer journals in one record */
#define MAX_APPLIED 4096

/* Flags that spoil a record's frame. */
enum { BAD_MAGIC = 1, OTHER_STORE = 2, OTHER_GENERATION = 4, BAD_CRC = 8, LONGER = 16, MISCOUNTED = 32 };

static const char *const log_names[LOGS] = {"telemetry", "events"};
static const int initial_records[LOGS] = {3, 2};

static char root[256], template_dir[300], work_dir[300];
static uint64_t store_id, next_gen;

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int left, failures;
} waiter_t;

static void on_done(void *ctx, int rc) {
  waiter_t *w = ctx;
  pthread_mutex_lock(&w->lock);
  if (rc != WD_OK) w->failures++;
  w->left--;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
}

/* Appends text to log and waits until readers see it. */
static void append_text(wd_store_t *s, wd_store_log_t *log, const char *text) {
  waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0};
  char *copy = strdup(text);
  CHECK(copy && wd_store_log_append(log, copy, strlen(text), SIZE_MAX, on_done, &w) == WD_OK, "append refused");
  pthread_mutex_lock(&w.lock);
  while (w.left > 0) pthread_cond_wait(&w.cond, &w.lock);
  pthread_mutex_unlock(&w.lock);
  CHECK(w.failures == 0, "append failed");
  wd_store_sync(s);
}

static void initial_text(char *buf, size_t cap, int log, int i) {
  snprintf(buf, cap, "%s record %d", log_names[log], i);
}

static uint64_t meta_u64(MDB_txn *txn, MDB_dbi dbi, const char *key) {
  MDB_val k = {strlen(key), (void *)key}, v;
  CHECK(mdb_get(txn, dbi, &k, &v) == 0 && v.mv_size == 8, "no meta key %s", key);
  uint64_t out = 0;
  for (int i = 0; i < 8; i++) out = out << 8 | ((const uint8_t *)v.mv_data)[i];
  return out;
}

static void copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK(in >= 0 && out >= 0, "cannot copy %s", from);
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0) CHECK(write(out, buf, (size_t)n) == n, "short write to %s", to);
  close(in);
  close(out);
}

static void remove_root(void) {
  fz_rmdir(work_dir);
  fz_rmdir(template_dir);
  rmdir(root);
}

/* The template store, made once; its id and the generation replay reads. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *level = getenv("WARDEN_FUZZ_LOG"); /* e.g. "info" to see what replay takes and refuses */
  if (!level || !wd_log_parse_level(level, &wd_log_threshold)) wd_log_threshold = WD_LOG_ERROR;
  if (fz_tempdir("journal", root, sizeof root) < 0) abort();
  atexit(remove_root);
  snprintf(template_dir, sizeof template_dir, "%s/template", root);
  snprintf(work_dir, sizeof work_dir, "%s/work", root);
  wd_store_t *s = NULL;
  CHECK(wd_store_open(template_dir, MAP_SIZE, &s) == WD_OK, "cannot make the template store");
  char text[64];
  for (int l = 0; l < LOGS; l++) {
    wd_store_log_t *log;
    CHECK(wd_store_log_open(s, log_names[l], &log) == WD_OK, "cannot open log %s", log_names[l]);
    for (int i = 1; i <= initial_records[l]; i++) {
      initial_text(text, sizeof text, l, i);
      append_text(s, log, text);
    }
  }
  wd_store_close(s);
  /* The ids the input's log byte stands for are the logs' creation order. */
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi meta, records;
  CHECK(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 32) == 0 && mdb_env_set_mapsize(env, MAP_SIZE) == 0 &&
            mdb_env_open(env, template_dir, MDB_RDONLY, 0600) == 0 && mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) == 0,
        "cannot read the template with LMDB");
  CHECK(mdb_dbi_open(txn, "meta", 0, &meta) == 0 && mdb_dbi_open(txn, "records", 0, &records) == 0, "no tables");
  store_id = meta_u64(txn, meta, "journal_store_id");
  next_gen = meta_u64(txn, meta, "journal_applied") + 1;
  for (int l = 0; l < LOGS; l++) {
    uint8_t key[12] = {0, 0, 0, (uint8_t)(l + 1), 0, 0, 0, 0, 0, 0, 0, (uint8_t)initial_records[l]};
    MDB_val k = {sizeof key, key}, v;
    initial_text(text, sizeof text, l, initial_records[l]);
    CHECK(mdb_get(txn, records, &k, &v) == 0 && v.mv_size == strlen(text) && memcmp(v.mv_data, text, v.mv_size) == 0,
          "log %s does not have id %d", log_names[l], l + 1);
  }
  mdb_txn_abort(txn);
  mdb_env_close(env);
  return 0;
}

/* ---------------------------------------------------------------- the input */

typedef struct {
  const uint8_t *p;
  size_t left;
} input_t;

static bool take(input_t *in, const uint8_t **out, size_t n) {
  if (in->left < n) return false;
  *out = in->p;
  in->p += n;
  in->left -= n;
  return true;
}

static int take_byte(input_t *in) {
  const uint8_t *b;
  return take(in, &b, 1) ? *b : -1;
}

static void put_be(uint8_t *p, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* What replay should have done: the data put in each log, in order. */
typedef struct {
  uint64_t next[LOGS]; /* one past each log's last record */
  const uint8_t *data[LOGS][MAX_APPLIED];
  size_t len[LOGS][MAX_APPLIED];
  int applied[LOGS];
} model_t;

/* The number an entry carries; *valid says whether it continues its log. */
static uint64_t entry_seq(int how, uint64_t next, bool *valid) {
  *valid = false;
  switch (how & 7) {
    case 1: return next + 1;   /* a gap */
    case 2: return next - 1;   /* taken */
    case 3: return 0;          /* no log has it */
    case 4: return UINT64_MAX; /* nor this */
    case 5: return 1;          /* the first, long taken */
    default: *valid = true; return next;
  }
}

/* One record from the input: writes it to rec (padded to BLOCK) and returns
 * its padded length; 0 when the input is used up. If m is given (replay has
 * not ended before this record) and the writer could have written the
 * record, its entries go into m and *valid is true. */
static size_t build_record(input_t *in, uint8_t *rec, size_t cap, model_t *m, bool *valid) {
  int flags = take_byte(in), count = take_byte(in);
  if (flags < 0 || count < 0) return 0;
  count &= 31;
  *valid = m && (flags & 63) == 0 && count >= 1 && count <= MAX_ENTRIES;
  uint64_t next[LOGS] = {(uint64_t)initial_records[0] + 1, (uint64_t)initial_records[1] + 1};
  int applied[LOGS] = {0, 0};
  if (m) {
    memcpy(next, m->next, sizeof next);
    memcpy(applied, m->applied, sizeof applied);
  }
  size_t len = 32;
  for (int i = 0; i < count; i++) {
    int log = take_byte(in), how = take_byte(in), n = take_byte(in);
    const uint8_t *bytes;
    if (log < 0 || how < 0 || n < 0 || !take(in, &bytes, (size_t)n) || len + 16 + (size_t)n + 16 > cap) return 0;
    log &= 3;
    uint32_t log_id = log == 3 ? 99 : (uint32_t)log;
    bool known = log == 1 || log == 2, continues;
    uint64_t seq = entry_seq(how, known ? next[log - 1] : 1, &continues);
    if (!known || !continues) {
      *valid = false;
    } else {
      int l = log - 1;
      if (applied[l] >= MAX_APPLIED) return 0;
      if (m) {
        m->data[l][applied[l]] = bytes;
        m->len[l][applied[l]] = (size_t)n;
      }
      applied[l]++;
      next[l]++;
    }
    put_be(rec + len, log_id, 4);
    put_be(rec + len + 4, seq, 8);
    put_be(rec + len + 12, (uint64_t)n, 4);
    memcpy(rec + len + 16, bytes, (size_t)n);
    len += 16 + (size_t)n;
  }
  size_t declared = len - 32 + (flags & LONGER ? 16 : 0);
  size_t padded = (32 + declared + BLOCK - 1) / BLOCK * BLOCK;
  if (padded > cap) return 0;
  memset(rec + len, 0, padded - len);
  memcpy(rec, flags & BAD_MAGIC ? "WDJ0" : "WDJ1", 4);
  put_be(rec + 8, flags & OTHER_STORE ? store_id ^ 1 : store_id, 8);
  put_be(rec + 16, flags & OTHER_GENERATION ? next_gen + 1 : next_gen, 8);
  put_be(rec + 24, declared, 4);
  put_be(rec + 28, (uint64_t)count + (flags & MISCOUNTED ? 1 : 0), 4);
  uint32_t crc = (uint32_t)crc32(crc32(0, NULL, 0), rec + 8, (uInt)(24 + declared));
  put_be(rec + 4, flags & BAD_CRC ? crc ^ 1 : crc, 4);
  if (*valid) { /* else the slots written past m's counts are left unused */
    memcpy(m->next, next, sizeof next);
    memcpy(m->applied, applied, sizeof applied);
  }
  return padded;
}

/* ------------------------------------------------------------ the promises */

static void check_log(wd_store_log_t *log, int l, const model_t *m, const char *when) {
  uint64_t first, next;
  wd_store_log_bounds(log, &first, &next);
  CHECK(first == 1 && next == m->next[l], "%s: log %s runs %llu..%llu, the model says 1..%llu", when, log_names[l],
        (unsigned long long)first, (unsigned long long)next, (unsigned long long)m->next[l]);
  wd_store_record_t recs[64];
  char text[64];
  for (uint64_t from = 1; from < next;) {
    int n = wd_store_log_read(log, from, recs, 64);
    CHECK(n > 0, "%s: log %s has no record %llu", when, log_names[l], (unsigned long long)from);
    for (int i = 0; i < n; i++, from++) {
      CHECK(recs[i].seq == from, "%s: log %s skips from %llu to %llu", when, log_names[l], (unsigned long long)from,
            (unsigned long long)recs[i].seq);
      const void *want;
      size_t want_len;
      if (from <= (uint64_t)initial_records[l]) {
        initial_text(text, sizeof text, l, (int)from);
        want = text;
        want_len = strlen(text);
      } else {
        want = m->data[l][from - 1 - (uint64_t)initial_records[l]];
        want_len = m->len[l][from - 1 - (uint64_t)initial_records[l]];
      }
      CHECK(recs[i].len == want_len && memcmp(recs[i].data, want, want_len) == 0,
            "%s: record %llu of log %s is not what was put there", when, (unsigned long long)from, log_names[l]);
      free(recs[i].data);
    }
  }
}

static wd_store_t *open_and_check(const model_t *m, wd_store_log_t **logs, const char *when) {
  wd_store_t *s = NULL;
  int rc = wd_store_open(work_dir, MAP_SIZE, &s);
  CHECK(rc == WD_OK, "%s: the store did not open: %s", when, wd_err_str(rc));
  for (int l = 0; l < LOGS; l++) {
    CHECK(wd_store_log_open(s, log_names[l], &logs[l]) == WD_OK, "%s: no log %s", when, log_names[l]);
    check_log(logs[l], l, m, when);
  }
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t journal[1u << 20];
  model_t *m = calloc(1, sizeof *m);
  if (!m) abort();
  for (int l = 0; l < LOGS; l++) m->next[l] = (uint64_t)initial_records[l] + 1;
  input_t in = {data, size};
  size_t used = 0, padded;
  bool valid, replaying = true;
  while ((padded = build_record(&in, journal + used, sizeof journal - used, replaying ? m : NULL, &valid))) {
    used += padded;
    replaying = valid; /* replay ends at the first record the writer could not have written */
  }

  fz_rmdir(work_dir);
  CHECK(mkdir(work_dir, 0700) == 0, "cannot make %s", work_dir);
  char from[400], to[400];
  snprintf(from, sizeof from, "%s/data.mdb", template_dir);
  snprintf(to, sizeof to, "%s/data.mdb", work_dir);
  copy_file(from, to);
  snprintf(to, sizeof to, "%s/journal", work_dir);
  int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  /* At its full size (sparse), so that opening the store does not write it out (that took two thirds of each run). */
  CHECK(fd >= 0 && write(fd, journal, used) == (ssize_t)used && ftruncate(fd, JOURNAL_FILE_SIZE) == 0,
        "cannot write the journal");
  close(fd);

  wd_store_log_t *logs[LOGS];
  wd_store_t *s = open_and_check(m, logs, "after replay");
  /* Numbering goes on after what was put; a second open puts nothing again. */
  append_text(s, logs[0], "after the replay");
  m->data[0][m->applied[0]] = (const uint8_t *)"after the replay";
  m->len[0][m->applied[0]++] = strlen("after the replay");
  m->next[0]++;
  check_log(logs[0], 0, m, "after an append");
  wd_store_close(s);
  s = open_and_check(m, logs, "reopened");
  wd_store_close(s);
  free(m);
  return 0;
}

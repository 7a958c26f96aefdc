/* The LMDB environment and its single writer thread.
 *
 * Every write goes through the writer: it takes all queued ops (up to a cap),
 * applies them in one write transaction, commits once, and only then runs the
 * ops' completions. One synchronous commit costs ~0.2 ms on this class of disk,
 * so batching the appends of every connection into one commit is what lets
 * durability cost latency rather than throughput. A small batch made only of
 * appends is acknowledged from the journal instead (journal.c) and committed
 * with what follows it, at most COMMIT_DELAY_US later. */

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gateway/base/log.h"
#include "gateway/base/metrics.h"
#include "store/internal.h"

#define MAX_OPS_PER_COMMIT 4096
/* Journaled appends are committed (readers see them) once no append has come
 * for IDLE_COMMIT_US, and at the latest COMMIT_DELAY_US after the first. A
 * commit holds the writer ~0.35 ms; the round trip of a client that waits for
 * each acknowledgement is ~0.1 ms longer than the journal write, so it never
 * leaves the writer idle that long, and shares one commit per COMMIT_DELAY_US. */
#define IDLE_COMMIT_US 150
#define COMMIT_DELAY_US 1000
#define SPIN_US 100 /* how long an idle writer looks for the next op before it sleeps */
#define IDLE_TICK_MS 100 /* how often an idle writer persists consumer-group progress */
#define PRESSURE_ON_PERCENT 90
#define PRESSURE_OFF_PERCENT 80
#define APPEND_STOP_PERCENT 95 /* the rest stays free: deletes need pages too (copy-on-write) */

static const char schema_key[] = "schema_version";

void wd_store__u64_be(uint8_t out[8], uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}

uint64_t wd_store__be_u64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | in[i];
  return v;
}

void wd_store__u32_be(uint8_t out[4], uint32_t v) {
  out[0] = (uint8_t)(v >> 24);
  out[1] = (uint8_t)(v >> 16);
  out[2] = (uint8_t)(v >> 8);
  out[3] = (uint8_t)v;
}

uint32_t wd_store__be_u32(const uint8_t in[4]) {
  return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

int wd_store__map_rc(int rc) {
  switch (rc) {
    case MDB_SUCCESS: return WD_OK;
    case MDB_NOTFOUND: return WD_ERR_NOT_FOUND;
    case MDB_KEYEXIST: return WD_ERR_EXISTS;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
    case MDB_PAGE_FULL: return WD_ERR_FULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE: return WD_ERR_CORRUPT;
    case ENOMEM: return WD_ERR_NOMEM;
    default: return WD_ERR_IO;
  }
}

int wd_store__submit(wd_store_t *s, wd_store__op_t *op) {
  op->next = NULL;
  pthread_mutex_lock(&s->lock);
  if (s->stopping) {
    pthread_mutex_unlock(&s->lock);
    return WD_ERR_SHUTDOWN;
  }
  if (s->tail)
    s->tail->next = op;
  else
    s->head = op;
  s->tail = op;
  atomic_fetch_add(&s->submitted, 1);
  pthread_cond_signal(&s->wake);
  pthread_mutex_unlock(&s->lock);
  return WD_OK;
}

static void measure(wd_store_t *s);

/* An op's error that leaves its transaction unusable (others are its own). */
static bool spoils(int rc) {
  return rc == WD_ERR_FULL || rc == WD_ERR_IO || rc == WD_ERR_CORRUPT || rc == WD_ERR_NOMEM;
}

/* After a transaction was aborted or failed to commit: its numbers are given
 * back, and the appends the journal acknowledged in it are put again. */
static void discard(wd_store_t *s) {
  wd_store__logs_rollback(s);
  s->queued_delta = 0;
  if (!s->journal.pending) return;
  MDB_txn *txn;
  size_t replayed = 0;
  int rc = wd_store__map_rc(mdb_txn_begin(s->env, NULL, 0, &txn));
  if (rc == WD_OK) {
    rc = wd_store__journal_replay(s, txn, s->journal.gen, &replayed);
    if (rc == WD_OK)
      rc = wd_store__map_rc(mdb_txn_commit(txn));
    else
      mdb_txn_abort(txn);
  }
  if (rc < 0) {
    /* Going on would number new appends over acknowledged ones. */
    wd_log("store", WD_LOG_ERROR,
           "cannot commit the appends the journal acknowledged: %s; stopping so that a restart applies them",
           wd_err_str(rc));
    abort();
  }
  atomic_fetch_add(&s->commits, 1);
  wd_store__journal_sealed(&s->journal);
  wd_store__logs_committed(s, false);
}

/* Commits txn with consumer-group progress and the journal generation it
 * completes. On failure nothing of it is stored (see discard). */
static int commit(wd_store_t *s, MDB_txn *txn) {
  bool persisted = atomic_exchange(&s->logs_dirty, false);
  int rc = WD_OK;
  if (persisted) rc = wd_store__logs_persist(s, txn);
  if (rc == WD_OK && s->journal.pending) rc = wd_store__journal_seal(s, txn);
  if (rc < 0) {
    mdb_txn_abort(txn);
  } else {
    int64_t started = wd_mono_us();
    rc = wd_store__map_rc(mdb_txn_commit(txn));
    if (rc == WD_OK) wd_metrics_commit((uint64_t)(wd_mono_us() - started));
  }
  if (rc < 0) {
    if (persisted) atomic_store(&s->logs_dirty, true);
    discard(s);
    return rc;
  }
  atomic_fetch_add(&wd_metrics.queued, s->queued_delta);
  s->queued_delta = 0;
  atomic_fetch_add(&s->commits, 1);
  if (s->journal.pending) wd_store__journal_sealed(&s->journal);
  wd_store__logs_committed(s, persisted);
  measure(s);
  return WD_OK;
}

/* Commits the transaction journaled appends wait in, if one is open. */
static void flush(wd_store_t *s) {
  MDB_txn *txn = s->open_txn;
  if (!txn) return;
  s->open_txn = NULL;
  commit(s, txn);
}

static int begin(wd_store_t *s, MDB_txn **txn) {
  s->txn_bytes = 0;
  s->open_since_us = wd_mono_us();
  return wd_store__map_rc(mdb_txn_begin(s->env, NULL, 0, txn));
}

/* Applies ops in one transaction (the open one, if any). Returns WD_OK after
 * a commit, or the error that spoiled the transaction (then nothing of it is
 * stored). */
static int apply_batch(wd_store_t *s, wd_store__op_t *ops, size_t count, int *rcs) {
  MDB_txn *txn = s->open_txn;
  s->open_txn = NULL;
  int rc;
  if (!txn && (rc = begin(s, &txn)) < 0) return rc;
  wd_store__op_t *op = ops;
  for (size_t i = 0; i < count; i++, op = op->next) {
    rcs[i] = op->apply(s, txn, op);
    if (spoils(rcs[i])) {
      mdb_txn_abort(txn);
      discard(s);
      return rcs[i];
    }
  }
  return commit(s, txn);
}

static void complete_all(wd_store_t *s, wd_store__op_t *ops, size_t count, const int *rcs, int rc) {
  wd_store__op_t *op = ops;
  for (size_t i = 0; i < count; i++) {
    wd_store__op_t *next = op->next;
    op->complete(s, op, rcs ? rcs[i] : rc);
    op = next;
  }
}

/* Measures the pages holding data (the file itself never shrinks: LMDB
 * reuses freed pages) and turns pressure on or off. Writer thread. */
static void measure(wd_store_t *s) {
  MDB_txn *txn;
  if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != MDB_SUCCESS) return;
  const MDB_dbi dbis[] = {s->dbi_meta,   s->dbi_devices,    s->dbi_thumbprints, s->dbi_members, s->dbi_presence,
                          s->dbi_logs,   s->dbi_records,    s->dbi_groups,      s->dbi_queues,
                          s->dbi_queue_meta, s->dbi_blobs,  s->dbi_expiry,      s->dbi_commands};
  uint64_t pages = 2; /* the meta pages */
  MDB_stat st;
  if (mdb_stat(txn, 0, &st) == MDB_SUCCESS) pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  if (mdb_stat(txn, 1, &st) == MDB_SUCCESS) pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++)
    if (mdb_stat(txn, dbis[i], &st) == MDB_SUCCESS) pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  mdb_txn_abort(txn);
  atomic_store(&s->used_pages, pages);
  uint64_t used = pages * s->page_size;
  bool was = atomic_load(&s->pressure);
  bool now = was ? used * 100 > s->map_size * PRESSURE_OFF_PERCENT : used * 100 > s->map_size * PRESSURE_ON_PERCENT;
  if (now != was) {
    atomic_store(&s->pressure, now);
    wd_log("store", now ? WD_LOG_WARNING : WD_LOG_INFO,
           now ? "store %llu%% full: refusing new work until consumers drain it"
               : "store down to %llu%%: accepting new work again",
           (unsigned long long)(used * 100 / s->map_size));
  }
}

bool wd_store_under_pressure(wd_store_t *s) { return atomic_load(&s->pressure); }

bool wd_store__append_room(wd_store_t *s, size_t len) {
  uint64_t used = atomic_load(&s->used_pages) * s->page_size + s->txn_bytes + len;
  if (used * 100 > s->map_size * APPEND_STOP_PERCENT) return false;
  s->txn_bytes += len;
  return true;
}

/* Commits a batch; when the store is full, falls back to one op per commit so
 * that every op that still fits is stored and only the rest fail. */
static void run_direct(wd_store_t *s, wd_store__op_t *ops, size_t count, int *rcs) {
  int rc = apply_batch(s, ops, count, rcs);
  if (rc == WD_OK) {
    complete_all(s, ops, count, rcs, rc);
  } else if (count > 1 && rc == WD_ERR_FULL) {
    wd_log("store", WD_LOG_WARNING, "store full: retrying a batch of %zu writes one by one", count);
    atomic_fetch_add(&s->commit_failures_full, 1);
    wd_store__op_t *op = ops;
    for (size_t i = 0; i < count; i++) {
      wd_store__op_t *next = op->next;
      op->next = NULL;
      run_direct(s, op, 1, rcs);
      op = next;
    }
  } else {
    if (rc == WD_ERR_FULL) {
      atomic_fetch_add(&s->commit_failures_full, 1);
    } else {
      wd_log("store", WD_LOG_ERROR, "commit failed: %s", wd_err_str(rc));
    }
    complete_all(s, ops, count, NULL, rc);
  }
}

/* True if the batch is small and only appends to stored logs, which the
 * journal can acknowledge; *entries_len is what they take in a record. */
static bool journalable(wd_store_t *s, wd_store__op_t *ops, size_t count, size_t *entries_len) {
  if (count == 0 || count > JOURNAL_MAX_OPS || s->journal.fd < 0) return false;
  size_t len = 0;
  for (wd_store__op_t *op = ops; op; op = op->next) {
    if (!op->appends_to || !wd_store__log_persisted(op->appends_to)) return false;
    len += wd_store__journal_entry_len(op->append_len);
    if (len > JOURNAL_MAX_BYTES) return false;
  }
  *entries_len = len;
  return true;
}

/* Applies appends in the open transaction and acknowledges them as soon as
 * the journal holds them; the commit comes later (flush). */
static void run_journaled(wd_store_t *s, wd_store__op_t *ops, size_t count, size_t entries_len, int *rcs) {
  if (s->open_txn && !wd_store__journal_room(&s->journal, entries_len)) flush(s);
  int rc = s->open_txn ? WD_OK : begin(s, &s->open_txn);
  if (rc < 0) {
    s->open_txn = NULL;
    complete_all(s, ops, count, NULL, rc);
    return;
  }
  wd_store__journal_begin(&s->journal);
  s->journal_collecting = true;
  wd_store__op_t *op = ops;
  for (size_t i = 0; i < count && rc == WD_OK; i++, op = op->next) {
    rcs[i] = op->apply(s, s->open_txn, op);
    if (spoils(rcs[i])) rc = rcs[i];
  }
  s->journal_collecting = false;
  if (rc == WD_OK && s->journal.count > 0) rc = wd_store__journal_write(&s->journal);
  if (rc < 0) {
    /* Nothing of this batch was acknowledged: start over without the journal. */
    mdb_txn_abort(s->open_txn);
    s->open_txn = NULL;
    discard(s);
    run_direct(s, ops, count, rcs);
    return;
  }
  s->journaled_us = wd_mono_us();
  if (s->journal.count > 0) atomic_fetch_add(&s->journal_writes, 1);
  wd_store__logs_acknowledged(s);
  complete_all(s, ops, count, rcs, rc);
  if (wd_mono_us() - s->open_since_us >= COMMIT_DELAY_US) flush(s);
}

/* Microseconds until the open transaction is due for its commit (<= 0: now). */
static int64_t commit_due_in(wd_store_t *s) {
  int64_t now = wd_mono_us(), by_age = s->open_since_us + COMMIT_DELAY_US - now,
          by_idle = s->journaled_us + IDLE_COMMIT_US - now;
  return by_age < by_idle ? by_age : by_idle;
}

/* Returns true if the batch went through the journal. */
static bool run_batch(wd_store_t *s, wd_store__op_t *ops, size_t count) {
  int *rcs = calloc(count ? count : 1, sizeof *rcs);
  size_t entries_len;
  bool journaled = false;
  if (!rcs) {
    complete_all(s, ops, count, NULL, WD_ERR_NOMEM);
  } else if ((journaled = journalable(s, ops, count, &entries_len))) {
    run_journaled(s, ops, count, entries_len, rcs);
  } else {
    run_direct(s, ops, count, rcs);
  }
  free(rcs);
  return journaled;
}

static void *writer_main(void *arg) {
  wd_store_t *s = arg;
  uint64_t seen = 0;
  bool journaled = false;
  for (;;) {
    /* Right after a journaled batch, the next append of a client that waits
     * for each answer is due within ~0.1 ms; waking from the condition
     * variable would add as much again, so look for it first. Only then:
     * looking takes CPU from the threads that make the ops (a client doing
     * work between store calls ran at half speed when every batch did it). */
    for (int64_t until = journaled ? wd_mono_us() + SPIN_US : 0;
         atomic_load_explicit(&s->submitted, memory_order_relaxed) == seen && wd_mono_us() < until;)
      sched_yield();
    pthread_mutex_lock(&s->lock);
    if (!s->head && !s->stopping) {
      /* Wake for work, for the next expiry, to commit journaled appends, or to
       * persist consumer-group progress. */
      int64_t now = wd_now_ms(), wait_us = IDLE_TICK_MS * 1000;
      if (atomic_load(&s->sweeping) && s->next_expiry_ms - now < IDLE_TICK_MS) /* INT64_MAX: none */
        wait_us = (s->next_expiry_ms - now) * 1000;
      if (s->open_txn && commit_due_in(s) < wait_us) wait_us = commit_due_in(s);
      if (wait_us > 0) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += wait_us / 1000000;
        deadline.tv_nsec += (wait_us % 1000000) * 1000L;
        if (deadline.tv_nsec >= 1000000000L) {
          deadline.tv_sec++;
          deadline.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->wake, &s->lock, &deadline);
      }
    }
    wd_store__op_t *ops = s->head, *last = ops;
    size_t count = ops ? 1 : 0;
    while (last && last->next && count < MAX_OPS_PER_COMMIT) {
      last = last->next;
      count++;
    }
    if (ops) {
      s->head = last->next;
      if (!s->head) s->tail = NULL;
      last->next = NULL;
    }
    bool stop = s->stopping && !s->head;
    seen = atomic_load(&s->submitted);
    pthread_mutex_unlock(&s->lock);
    journaled = false;

    if (atomic_load(&s->sweeping) && wd_now_ms() >= s->next_expiry_ms) wd_store__sweep(s);
    if (count > 0)
      journaled = run_batch(s, ops, count);
    else if (s->open_txn && (stop || commit_due_in(s) <= 0))
      flush(s); /* group progress goes with it */
    else if (!s->open_txn && atomic_load(&s->logs_dirty))
      run_batch(s, NULL, 0);
    if (stop && count == 0) {
      flush(s);
      break;
    }
  }
  return NULL;
}

static int open_dbis(wd_store_t *s) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc) return wd_store__map_rc(rc);
  if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->dbi_meta)) ||
      (rc = mdb_dbi_open(txn, "devices", MDB_CREATE, &s->dbi_devices)) ||
      (rc = mdb_dbi_open(txn, "thumbprints", MDB_CREATE, &s->dbi_thumbprints)) ||
      (rc = mdb_dbi_open(txn, "members", MDB_CREATE, &s->dbi_members)) ||
      (rc = mdb_dbi_open(txn, "presence", MDB_CREATE, &s->dbi_presence)) ||
      (rc = mdb_dbi_open(txn, "logs", MDB_CREATE, &s->dbi_logs)) ||
      (rc = mdb_dbi_open(txn, "records", MDB_CREATE, &s->dbi_records)) ||
      (rc = mdb_dbi_open(txn, "groups", MDB_CREATE, &s->dbi_groups)) ||
      (rc = mdb_dbi_open(txn, "queues", MDB_CREATE, &s->dbi_queues)) ||
      (rc = mdb_dbi_open(txn, "queue_meta", MDB_CREATE, &s->dbi_queue_meta)) ||
      (rc = mdb_dbi_open(txn, "blobs", MDB_CREATE, &s->dbi_blobs)) ||
      (rc = mdb_dbi_open(txn, "expiry", MDB_CREATE, &s->dbi_expiry)) ||
      (rc = mdb_dbi_open(txn, "commands", MDB_CREATE, &s->dbi_commands))) {
    mdb_txn_abort(txn);
    return wd_store__map_rc(rc);
  }

  MDB_val k = {sizeof schema_key - 1, (void *)schema_key}, v;
  rc = mdb_get(txn, s->dbi_meta, &k, &v);
  if (rc == MDB_NOTFOUND) {
    uint8_t version[8];
    wd_store__u64_be(version, WD_STORE_SCHEMA_VERSION);
    v = (MDB_val){sizeof version, version};
    rc = mdb_put(txn, s->dbi_meta, &k, &v, 0);
  } else if (rc == MDB_SUCCESS) {
    uint64_t found = v.mv_size == 8 ? wd_store__be_u64(v.mv_data) : 0;
    if (found != WD_STORE_SCHEMA_VERSION) {
      wd_log("store", WD_LOG_ERROR, "store schema version %llu is not %u, which this warden reads",
             (unsigned long long)found, WD_STORE_SCHEMA_VERSION);
      mdb_txn_abort(txn);
      return WD_ERR_CORRUPT;
    }
  }
  if (rc == MDB_SUCCESS) rc = wd_store__logs_load(s, txn);
  if (rc == MDB_SUCCESS) rc = wd_store__queues_load(s, txn);
  if (rc == MDB_SUCCESS) rc = wd_store__journal_recover(s, txn);
  if (rc != MDB_SUCCESS) {
    mdb_txn_abort(txn);
    return rc < 0 ? rc : wd_store__map_rc(rc);
  }
  rc = wd_store__map_rc(mdb_txn_commit(txn));
  if (rc == WD_OK) wd_store__logs_committed(s, false); /* what the journal put is the readers' now */
  return rc;
}

/* Reads every page of every database once; a page that is not what LMDB
 * wrote shows up as an error rather than a fault. */
static int verify_all(MDB_env *env) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  MDB_cursor *names;
  MDB_val k, v;
  int err = WD_OK;
  /* The free list (0) and the main database (1), whose keys name the others. */
  for (MDB_dbi dbi = 0; dbi < 2 && err == WD_OK; dbi++) {
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, dbi, &cur))) { err = wd_store__map_rc(rc); break; }
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == MDB_SUCCESS) {}
    if (rc != MDB_NOTFOUND) err = WD_ERR_CORRUPT;
    mdb_cursor_close(cur);
  }
  if (err == WD_OK && (rc = mdb_cursor_open(txn, 1, &names)) == MDB_SUCCESS) {
    while (err == WD_OK && mdb_cursor_get(names, &k, &v, MDB_NEXT) == MDB_SUCCESS) {
      char name[64];
      if (k.mv_size >= sizeof name) continue;
      memcpy(name, k.mv_data, k.mv_size);
      name[k.mv_size] = '\0';
      MDB_dbi dbi;
      MDB_cursor *cur;
      rc = mdb_dbi_open(txn, name, 0, &dbi);
      if (rc == MDB_INCOMPATIBLE || rc == MDB_NOTFOUND) continue; /* a plain key, not a database */
      if (rc != MDB_SUCCESS || mdb_cursor_open(txn, dbi, &cur) != MDB_SUCCESS) {
        err = WD_ERR_CORRUPT;
        break;
      }
      volatile uint8_t sink = 0;
      while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == MDB_SUCCESS)
        if (v.mv_size) sink ^= ((const uint8_t *)v.mv_data)[v.mv_size - 1]; /* overflow pages too */
      (void)sink;
      if (rc != MDB_NOTFOUND) err = WD_ERR_CORRUPT;
      mdb_cursor_close(cur);
    }
    mdb_cursor_close(names);
  }
  mdb_txn_abort(txn);
  return err;
}

/* A data file can end before the last page its meta page names: LMDB does
 * not write a page freed in the transaction that allocated it. Reading past
 * the end would fault (SIGBUS), so such a file is extended with zero pages and
 * every page checked; if anything in use was really missing, the file gets
 * its old length back and the store is refused, untouched. */
static int check_short_file(MDB_env *env, const char *path) {
  MDB_envinfo info;
  MDB_stat st;
  struct stat file;
  char data_path[4096];
  snprintf(data_path, sizeof data_path, "%s/data.mdb", path);
  if (mdb_env_info(env, &info) != MDB_SUCCESS || mdb_env_stat(env, &st) != MDB_SUCCESS ||
      stat(data_path, &file) != 0)
    return WD_OK;
  uint64_t expected = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
  if (expected <= (uint64_t)file.st_size) return WD_OK;
  if (truncate(data_path, (off_t)expected) != 0) {
    wd_log("store", WD_LOG_ERROR, "cannot extend %s to its last page: %s", data_path, strerror(errno));
    return WD_ERR_IO;
  }
  int rc = verify_all(env);
  if (rc < 0) {
    if (truncate(data_path, file.st_size) != 0) { /* best effort: leave it as found */ }
    wd_log("store", WD_LOG_ERROR,
           "store at %s is truncated: %s holds %lld bytes but its last page ends at %llu, and pages in use are "
           "missing; the store was left untouched (restore it from a backup)",
           path, data_path, (long long)file.st_size, (unsigned long long)expected);
    return WD_ERR_CORRUPT;
  }
  wd_log("store", WD_LOG_INFO, "%s ended %llu bytes before its last page (pages freed unwritten); extended and checked",
         data_path, (unsigned long long)(expected - (uint64_t)file.st_size));
  return WD_OK;
}

/* Undoes a wd_store_open that got as far as allocating the store. */
static int abandon_open(wd_store_t *s, int rc) {
  wd_store__logs_free(s);
  wd_store__journal_close(&s->journal);
  mdb_env_close(s->env);
  close(s->lock_fd);
  free(s);
  return rc;
}

int wd_store_open(const char *path, uint64_t max_size, wd_store_t **out) {
  if (mkdir(path, 0700) != 0 && errno != EEXIST) {
    wd_log("store", WD_LOG_ERROR, "cannot create store directory %s: %s", path, strerror(errno));
    return WD_ERR_IO;
  }
  /* One process per store: the writer's numbering and the journal are its
   * own. The lock goes with the process, however it ends. */
  char lock_path[4096];
  snprintf(lock_path, sizeof lock_path, "%s/warden.lock", path);
  int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    wd_log("store", WD_LOG_ERROR, "cannot open %s: %s", lock_path, strerror(errno));
    return WD_ERR_IO;
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    close(lock_fd);
    if (err == EWOULDBLOCK) {
      wd_log("store", WD_LOG_ERROR, "the store at %s is open in another process (another warden on the same [store] path?)",
             path);
      return WD_ERR_IN_USE;
    }
    wd_log("store", WD_LOG_ERROR, "cannot lock %s: %s", lock_path, strerror(err));
    return WD_ERR_IO;
  }
  wd_store_t *s = calloc(1, sizeof *s);
  if (!s) {
    close(lock_fd);
    return WD_ERR_NOMEM;
  }
  s->lock_fd = lock_fd;
  s->journal.fd = -1; /* not open yet: abandon_open may close it */
  s->map_size = max_size;
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->wake, NULL);
  pthread_mutex_init(&s->logs_lock, NULL);
  pthread_mutex_init(&s->listeners_lock, NULL);
  s->max_delivery_count = 10;
  s->next_expiry_ms = INT64_MAX;

  int rc = mdb_env_create(&s->env);
  if (rc == MDB_SUCCESS) rc = mdb_env_set_mapsize(s->env, (size_t)max_size);
  if (rc == MDB_SUCCESS) rc = mdb_env_set_maxdbs(s->env, 32);
  /* Readers: every proactor and HTTP thread may hold one short read txn. */
  if (rc == MDB_SUCCESS) rc = mdb_env_set_maxreaders(s->env, 512);
  if (rc == MDB_SUCCESS) rc = mdb_env_open(s->env, path, MDB_NOTLS, 0600);
  if (rc != MDB_SUCCESS) {
    int err = wd_store__map_rc(rc);
    wd_log("store", WD_LOG_ERROR, "cannot open store at %s: %s (%s); the store was left untouched", path,
           mdb_strerror(rc), wd_err_str(err));
    return abandon_open(s, err);
  }
  int rc_short = check_short_file(s->env, path);
  if (rc_short < 0) {
    return abandon_open(s, rc_short);
  }
  rc = wd_store__journal_open(&s->journal, path);
  if (rc < 0) {
    return abandon_open(s, rc);
  }
  MDB_stat env_stat;
  s->page_size = mdb_env_stat(s->env, &env_stat) == MDB_SUCCESS ? env_stat.ms_psize : 4096;
  int stale = 0;
  mdb_reader_check(s->env, &stale); /* reader slots of a process that was killed */
  if (stale > 0) wd_log("store", WD_LOG_INFO, "cleared %d stale reader slots", stale);
  rc = open_dbis(s);
  if (rc < 0) {
    wd_log("store", WD_LOG_ERROR, "cannot read store at %s: %s; the store was left untouched", path,
           wd_err_str(rc));
    return abandon_open(s, rc);
  }
  measure(s);
  if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
    return abandon_open(s, WD_ERR_NOMEM);
  }
  *out = s;
  return WD_OK;
}

typedef struct {
  wd_store__op_t base;
  pthread_mutex_t lock;
  pthread_cond_t done_cond;
  bool done;
} barrier_op_t;

static int apply_barrier(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  (void)s;
  (void)txn;
  (void)base;
  return WD_OK;
}

static void complete_barrier(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  (void)rc;
  barrier_op_t *b = (barrier_op_t *)base;
  pthread_mutex_lock(&b->lock);
  b->done = true;
  pthread_cond_signal(&b->done_cond);
  pthread_mutex_unlock(&b->lock);
}

void wd_store_sync(wd_store_t *s) {
  barrier_op_t b = {.base = {.apply = apply_barrier, .complete = complete_barrier}};
  pthread_mutex_init(&b.lock, NULL);
  pthread_cond_init(&b.done_cond, NULL);
  /* Ops complete in order, so once the barrier has, every earlier one has too. */
  if (wd_store__submit(s, &b.base) == WD_OK) {
    pthread_mutex_lock(&b.lock);
    while (!b.done) pthread_cond_wait(&b.done_cond, &b.lock);
    pthread_mutex_unlock(&b.lock);
  }
  pthread_mutex_destroy(&b.lock);
  pthread_cond_destroy(&b.done_cond);
}

void wd_store_quiesce(wd_store_t *s) {
  if (!s) return;
  /* Stop expiry first: a sweep queued after the barrier would call the codec. */
  atomic_store(&s->sweeping, false);
  wd_store_sync(s);
  memset(&s->codec, 0, sizeof s->codec); /* the writer is idle or past every op that could use it */
}

void wd_store_close(wd_store_t *s) {
  if (!s) return;
  pthread_mutex_lock(&s->lock);
  s->stopping = true;
  pthread_cond_signal(&s->wake);
  pthread_mutex_unlock(&s->lock);
  pthread_join(s->writer, NULL);
  /* Only an expiry sweep the writer queued for itself can be left. */
  while (s->head) {
    wd_store__op_t *op = s->head;
    s->head = op->next;
    op->complete(s, op, WD_ERR_SHUTDOWN);
  }
  /* The writer drained its queue and persisted group progress before it stopped. */
  if (atomic_load(&s->logs_dirty)) run_batch(s, NULL, 0);
  wd_store__logs_free(s);
  wd_store__journal_close(&s->journal);
  mdb_env_close(s->env);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->wake);
  pthread_mutex_destroy(&s->logs_lock);
  pthread_mutex_destroy(&s->listeners_lock);
  close(s->lock_fd);
  free(s);
}

void wd_store_stats(wd_store_t *s, wd_store_stats_t *out) {
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(s->env, &info);
  mdb_env_stat(s->env, &st);
  out->map_size = s->map_size;
  out->file_bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
  out->used_bytes = atomic_load(&s->used_pages) * st.ms_psize;
  out->commits = atomic_load(&s->commits);
  out->commit_failures_full = atomic_load(&s->commit_failures_full);
  out->journal_writes = atomic_load(&s->journal_writes);
}

int wd_store_add_append_listener(wd_store_t *s, wd_store_append_fn fn, void *arg) {
  pthread_mutex_lock(&s->listeners_lock);
  int rc = WD_ERR_LIMIT;
  if (s->n_listeners < 4) {
    s->listeners[s->n_listeners].fn = fn;
    s->listeners[s->n_listeners].arg = arg;
    s->n_listeners++;
    rc = WD_OK;
  }
  pthread_mutex_unlock(&s->listeners_lock);
  return rc;
}

void wd_store_remove_append_listener(wd_store_t *s, wd_store_append_fn fn, void *arg) {
  pthread_mutex_lock(&s->listeners_lock);
  for (int i = 0; i < s->n_listeners; i++) {
    if (s->listeners[i].fn == fn && s->listeners[i].arg == arg) {
      s->listeners[i] = s->listeners[--s->n_listeners];
      break;
    }
  }
  pthread_mutex_unlock(&s->listeners_lock);
}

/* Durable logs and their consumer groups.
 *
 * Records of all logs share one DBI, keyed by big-endian log id and sequence
 * number, so key order is arrival order within a log and appends are cheap.
 * The writer assigns numbers; readers only claim below a log's
 * `committed_next_seq`, published after each commit, so no reader can pass a
 * number whose record is not yet durable.
 *
 * A group remembers, durably, only its floor: every record below it has been
 * acknowledged. In memory it also tracks [floor, next) record by record
 * (in flight, released, acknowledged) so that the consumers of one group can
 * acknowledge out of order. After a crash a group restarts at its persisted
 * floor: records acknowledged above it are delivered again (at-least-once). */

#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "store/internal.h"

#define TRIM_PER_COMMIT 4096
#define KEY_LEN 12 /* be32 log id, be64 seq */

enum { CLAIMED = 1, RELEASED = 2, ACKED = 3 };

struct wd_store_group {
  wd_store_group_t *next_group;
  wd_store_log_t *log;

  pthread_mutex_t lock;
  uint64_t floor;           /* every record below is acknowledged */
  uint64_t next;            /* the first record never claimed */
  uint64_t persisted_floor; /* what the store holds (0: not yet stored); the writer's */
  uint64_t written_floor;   /* written by the open transaction; the writer's */
  uint8_t *state;           /* ring over [floor, next): state of each record */
  size_t cap, head;
  size_t n_released;
  char name[];
};

struct wd_store_log {
  wd_store_log_t *next_log;
  wd_store_t *store;
  uint32_t id;
  bool persisted;         /* its entry in the logs DBI exists; the writer's */
  bool written;           /* the open transaction wrote its entry; the writer's */
  uint64_t next_seq;      /* the writer's */
  uint64_t persisted_seq; /* the next_seq last written to the logs DBI; the writer's */
  _Atomic uint64_t committed_next_seq;
  _Atomic uint64_t acked_next_seq; /* past the last record an appender was told of: committed or journaled */
  _Atomic uint64_t first_seq;
  wd_store_group_t *groups; /* under store->logs_lock */
  char name[];
};

static void record_key(uint8_t key[KEY_LEN], uint32_t log_id, uint64_t seq) {
  wd_store__u32_be(key, log_id);
  wd_store__u64_be(key + 4, seq);
}

static uint8_t *state_at(wd_store_group_t *g, uint64_t seq) {
  return &g->state[(g->head + (size_t)(seq - g->floor)) % g->cap];
}

/* Makes room for one more record at `next`; false when out of memory. */
static bool ring_reserve(wd_store_group_t *g) {
  size_t used = (size_t)(g->next - g->floor);
  if (used < g->cap) return true;
  size_t cap = g->cap ? g->cap * 2 : 1024;
  uint8_t *st = malloc(cap);
  if (!st) return false;
  for (size_t i = 0; i < used; i++) st[i] = g->state[(g->head + i) % g->cap];
  free(g->state);
  g->state = st;
  g->cap = cap;
  g->head = 0;
  return true;
}

/* Caller holds logs_lock. */
static wd_store_group_t *group_new(wd_store_log_t *log, const char *name, size_t len, uint64_t floor) {
  wd_store_group_t *g = calloc(1, sizeof *g + len + 1);
  if (!g) return NULL;
  memcpy(g->name, name, len);
  g->log = log;
  g->floor = g->next = floor;
  pthread_mutex_init(&g->lock, NULL);
  g->next_group = log->groups;
  log->groups = g;
  return g;
}

/* Caller holds logs_lock. */
static wd_store_log_t *log_new(wd_store_t *s, const char *name, size_t len, uint32_t id) {
  wd_store_log_t *log = calloc(1, sizeof *log + len + 1);
  if (!log) return NULL;
  memcpy(log->name, name, len);
  log->store = s;
  log->id = id;
  log->next_seq = 1;
  atomic_store(&log->committed_next_seq, 1);
  atomic_store(&log->acked_next_seq, 1);
  atomic_store(&log->first_seq, 1);
  log->next_log = s->logs;
  s->logs = log;
  if (id >= s->next_log_id) s->next_log_id = id + 1;
  return log;
}

static wd_store_log_t *find_log(wd_store_t *s, const char *name) {
  wd_store_log_t *log = s->logs;
  while (log && strcmp(log->name, name) != 0) log = log->next_log;
  return log;
}

/* Finds the first and last record numbers of a log. */
static int log_bounds(wd_store_t *s, MDB_txn *txn, wd_store_log_t *log) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_records, &cur);
  if (rc) return wd_store__map_rc(rc);
  uint8_t key[KEY_LEN];
  record_key(key, log->id, 0);
  MDB_val k = {KEY_LEN, key}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  if (rc == MDB_SUCCESS && k.mv_size == KEY_LEN && wd_store__be_u32(k.mv_data) == log->id) {
    uint64_t first = wd_store__be_u64((uint8_t *)k.mv_data + 4);
    record_key(key, log->id + 1, 0);
    k = (MDB_val){KEY_LEN, key};
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    rc = rc == MDB_SUCCESS ? mdb_cursor_get(cur, &k, &v, MDB_PREV) : mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc != MDB_SUCCESS || k.mv_size != KEY_LEN || wd_store__be_u32(k.mv_data) != log->id) {
      mdb_cursor_close(cur);
      return WD_ERR_CORRUPT;
    }
    uint64_t last = wd_store__be_u64((uint8_t *)k.mv_data + 4);
    if (last + 1 > log->next_seq) log->next_seq = last + 1;
    atomic_store(&log->first_seq, first);
  } else {
    atomic_store(&log->first_seq, log->next_seq);
  }
  mdb_cursor_close(cur);
  atomic_store(&log->committed_next_seq, log->next_seq);
  atomic_store(&log->acked_next_seq, log->next_seq);
  log->persisted_seq = log->next_seq;
  return WD_OK;
}

int wd_store__logs_load(wd_store_t *s, MDB_txn *txn) {
  s->next_log_id = 1;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_logs, &cur);
  if (rc) return wd_store__map_rc(rc);
  MDB_val k, v;
  int err = WD_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS && err == WD_OK;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (v.mv_size != 12 || k.mv_size == 0 || k.mv_size > WD_REPLY_TO_MAX) {
      err = WD_ERR_CORRUPT;
      break;
    }
    wd_store_log_t *log = log_new(s, k.mv_data, k.mv_size, wd_store__be_u32(v.mv_data));
    if (!log) {
      err = WD_ERR_NOMEM;
      break;
    }
    log->persisted = true;
    log->next_seq = wd_store__be_u64((uint8_t *)v.mv_data + 4);
    err = log_bounds(s, txn, log);
  }
  mdb_cursor_close(cur);
  if (err < 0) return err;
  if (rc != MDB_NOTFOUND) return wd_store__map_rc(rc);

  if ((rc = mdb_cursor_open(txn, s->dbi_groups, &cur))) return wd_store__map_rc(rc);
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS && err == WD_OK;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (v.mv_size != 8 || k.mv_size <= 4 || k.mv_size > 4 + WD_ID_MAX) {
      err = WD_ERR_CORRUPT;
      break;
    }
    uint32_t id = wd_store__be_u32(k.mv_data);
    wd_store_log_t *log = s->logs;
    while (log && log->id != id) log = log->next_log;
    uint64_t floor = wd_store__be_u64(v.mv_data);
    if (!log || floor > log->next_seq) {
      err = WD_ERR_CORRUPT;
      break;
    }
    if (floor < atomic_load(&log->first_seq)) floor = atomic_load(&log->first_seq);
    wd_store_group_t *g = group_new(log, (const char *)k.mv_data + 4, k.mv_size - 4, floor);
    if (!g)
      err = WD_ERR_NOMEM;
    else
      g->persisted_floor = wd_store__be_u64(v.mv_data);
  }
  mdb_cursor_close(cur);
  if (err < 0) return err;
  return rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
}

void wd_store__logs_free(wd_store_t *s) {
  wd_store_log_t *log = s->logs;
  while (log) {
    wd_store_log_t *next_log = log->next_log;
    wd_store_group_t *g = log->groups;
    while (g) {
      wd_store_group_t *next = g->next_group;
      pthread_mutex_destroy(&g->lock);
      free(g->state);
      free(g);
      g = next;
    }
    free(log);
    log = next_log;
  }
  s->logs = NULL;
  free(s->touched);
  s->touched = NULL;
}

wd_store_log_t *wd_store__log_get(wd_store_t *s, const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len > WD_REPLY_TO_MAX) return NULL;
  pthread_mutex_lock(&s->logs_lock);
  wd_store_log_t *log = find_log(s, name);
  if (!log && (log = log_new(s, name, len, s->next_log_id))) atomic_store(&s->logs_dirty, true);
  pthread_mutex_unlock(&s->logs_lock);
  return log;
}

int wd_store_log_open(wd_store_t *s, const char *name, wd_store_log_t **out) {
  wd_store_log_t *log = wd_store__log_get(s, name);
  if (!log) return strlen(name) == 0 || strlen(name) > WD_REPLY_TO_MAX ? WD_ERR_INVALID : WD_ERR_NOMEM;
  *out = log;
  return WD_OK;
}

const char *wd_store_log_name(const wd_store_log_t *log) { return log->name; }

bool wd_store__log_persisted(const wd_store_log_t *log) { return log->persisted; }

static int touch(wd_store_t *s, wd_store_log_t *log) {
  for (size_t i = 0; i < s->n_touched; i++)
    if (s->touched[i].log == log) return WD_OK;
  if (s->n_touched == s->cap_touched) {
    size_t cap = s->cap_touched ? s->cap_touched * 2 : 8;
    wd_store__touched_t *t = realloc(s->touched, cap * sizeof *t);
    if (!t) return WD_ERR_NOMEM;
    s->touched = t;
    s->cap_touched = cap;
  }
  s->touched[s->n_touched++] = (wd_store__touched_t){log, log->next_seq};
  return WD_OK;
}

/* Puts record `seq` of `log` in txn; the log's numbering goes on after it. */
static int put_record(wd_store_t *s, MDB_txn *txn, wd_store_log_t *log, uint64_t seq, const void *data, size_t len) {
  int rc = touch(s, log);
  if (rc < 0) return rc;
  uint8_t key[KEY_LEN];
  record_key(key, log->id, seq);
  MDB_val k = {KEY_LEN, key}, v = {len, (void *)data};
  if ((rc = mdb_put(txn, s->dbi_records, &k, &v, 0))) return wd_store__map_rc(rc);
  if (seq >= log->next_seq) log->next_seq = seq + 1;
  atomic_store(&s->logs_dirty, true); /* the log's next number is persisted with this commit */
  return WD_OK;
}

int wd_store__log_put(wd_store_t *s, MDB_txn *txn, wd_store_log_t *log, void *data, size_t len, size_t seq_offset) {
  uint64_t seq = log->next_seq;
  if (seq_offset != SIZE_MAX) wd_store__u64_be((uint8_t *)data + seq_offset, seq);
  int rc = put_record(s, txn, log, seq, data, len);
  if (rc == WD_OK && s->journal_collecting) rc = wd_store__journal_add(&s->journal, log->id, seq, data, len);
  return rc;
}

/* The stored log with that id, or NULL: only appends to stored logs are journaled. */
static wd_store_log_t *stored_log(wd_store_t *s, uint32_t log_id) {
  wd_store_log_t *log = s->logs;
  while (log && log->id != log_id) log = log->next_log;
  return log && log->persisted ? log : NULL;
}

uint64_t wd_store__log_replay_next(wd_store_t *s, uint32_t log_id) {
  wd_store_log_t *log = stored_log(s, log_id);
  return log ? log->next_seq : 0;
}

int wd_store__log_replay(wd_store_t *s, MDB_txn *txn, uint32_t log_id, uint64_t seq, const void *data, size_t len) {
  wd_store_log_t *log = stored_log(s, log_id);
  return log ? put_record(s, txn, log, seq, data, len) : WD_ERR_CORRUPT;
}

void wd_store__logs_rollback(wd_store_t *s) {
  for (size_t i = 0; i < s->n_touched; i++) s->touched[i].log->next_seq = s->touched[i].seq_before;
  s->n_touched = 0;
  pthread_mutex_lock(&s->logs_lock);
  for (wd_store_log_t *log = s->logs; log; log = log->next_log) {
    log->written = false;
    for (wd_store_group_t *g = log->groups; g; g = g->next_group) g->written_floor = 0;
  }
  pthread_mutex_unlock(&s->logs_lock);
}

static void publish(wd_store_t *s) {
  pthread_mutex_lock(&s->listeners_lock);
  for (size_t i = 0; i < s->n_touched; i++) {
    wd_store_log_t *log = s->touched[i].log;
    atomic_store(&log->committed_next_seq, log->next_seq);
    atomic_store(&log->acked_next_seq, log->next_seq);
    for (int l = 0; l < s->n_listeners; l++) s->listeners[l].fn(s->listeners[l].arg, log);
  }
  pthread_mutex_unlock(&s->listeners_lock);
  s->n_touched = 0;
}

/* Deletes records of `log` below `below`, a bounded number per commit. */
static int trim(wd_store_t *s, MDB_txn *txn, wd_store_log_t *log, uint64_t below) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_records, &cur);
  if (rc) return wd_store__map_rc(rc);
  uint8_t key[KEY_LEN];
  record_key(key, log->id, atomic_load(&log->first_seq));
  MDB_val k = {KEY_LEN, key}, v;
  size_t n = 0;
  uint64_t first = below;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != KEY_LEN || wd_store__be_u32(k.mv_data) != log->id) break;
    uint64_t seq = wd_store__be_u64((uint8_t *)k.mv_data + 4);
    if (seq >= below) break;
    if (n == TRIM_PER_COMMIT) {
      first = seq;
      atomic_store(&s->logs_dirty, true); /* come back for the rest */
      break;
    }
    if ((rc = mdb_cursor_del(cur, 0))) break;
    n++;
  }
  mdb_cursor_close(cur);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  atomic_store(&log->first_seq, first);
  return WD_OK;
}

int wd_store__logs_persist(wd_store_t *s, MDB_txn *txn) {
  int rc = WD_OK;
  uint8_t buf[12];
  pthread_mutex_lock(&s->logs_lock);
  for (wd_store_log_t *log = s->logs; log && rc == WD_OK; log = log->next_log) {
    if (!log->persisted || log->persisted_seq != log->next_seq) {
      log->written = true;
      wd_store__u32_be(buf, log->id);
      wd_store__u64_be(buf + 4, log->next_seq);
      MDB_val k = {strlen(log->name), log->name}, v = {12, buf};
      if ((rc = wd_store__map_rc(mdb_put(txn, s->dbi_logs, &k, &v, 0))) < 0) break;
    }
    uint64_t min_floor = UINT64_MAX;
    for (wd_store_group_t *g = log->groups; g && rc == WD_OK; g = g->next_group) {
      pthread_mutex_lock(&g->lock);
      uint64_t floor = g->floor;
      pthread_mutex_unlock(&g->lock);
      if (floor < min_floor) min_floor = floor;
      if (floor == g->persisted_floor) continue;
      g->written_floor = floor;
      uint8_t key[4 + WD_ID_MAX];
      size_t nlen = strlen(g->name);
      wd_store__u32_be(key, log->id);
      memcpy(key + 4, g->name, nlen);
      wd_store__u64_be(buf, floor);
      MDB_val k = {4 + nlen, key}, v = {8, buf};
      rc = wd_store__map_rc(mdb_put(txn, s->dbi_groups, &k, &v, 0));
    }
    if (rc == WD_OK && min_floor != UINT64_MAX && min_floor > atomic_load(&log->first_seq))
      rc = trim(s, txn, log, min_floor);
  }
  pthread_mutex_unlock(&s->logs_lock);
  return rc;
}

/* After a commit of logs_persist: what it wrote - and only that, since logs
 * and groups may have been opened meanwhile - is now the store's. */
static void mark_persisted(wd_store_t *s) {
  pthread_mutex_lock(&s->logs_lock);
  for (wd_store_log_t *log = s->logs; log; log = log->next_log) {
    if (log->written) {
      log->persisted = true;
      log->persisted_seq = log->next_seq;
      log->written = false;
    }
    for (wd_store_group_t *g = log->groups; g; g = g->next_group) {
      if (g->written_floor) g->persisted_floor = g->written_floor;
      g->written_floor = 0;
    }
  }
  pthread_mutex_unlock(&s->logs_lock);
}

typedef struct {
  wd_store__op_t base; /* its appends_to and append_len are the log and the length */
  void *data;
  size_t seq_offset;
  wd_store_done_fn done;
  void *ctx;
} append_op_t;

static int apply_append(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  append_op_t *op = (append_op_t *)base;
  /* Pages fill about half: count a record twice. */
  if (!wd_store__append_room(s, 2 * base->append_len + 128)) return WD_ERR_BUSY;
  return wd_store__log_put(s, txn, base->appends_to, op->data, base->append_len, op->seq_offset);
}

static void complete_append(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  append_op_t *op = (append_op_t *)base;
  op->done(op->ctx, rc);
  free(op->data);
  free(op);
}

int wd_store_log_append(wd_store_log_t *log, void *data, size_t len, size_t seq_offset, wd_store_done_fn done,
                        void *ctx) {
  if (seq_offset != SIZE_MAX && (len < 8 || seq_offset > len - 8)) return WD_ERR_INVALID;
  append_op_t *op = malloc(sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  *op = (append_op_t){.base = {.apply = apply_append, .complete = complete_append, .appends_to = log, .append_len = len},
                      .data = data,
                      .seq_offset = seq_offset,
                      .done = done,
                      .ctx = ctx};
  int rc = wd_store__submit(log->store, &op->base);
  if (rc < 0) free(op);
  return rc;
}

void wd_store__logs_committed(wd_store_t *s, bool persisted) {
  if (persisted) mark_persisted(s);
  publish(s);
}

int wd_store_group_open(wd_store_log_t *log, const char *name, wd_store_group_t **out) {
  size_t len = strlen(name);
  if (len == 0 || len > WD_ID_MAX) return WD_ERR_INVALID;
  wd_store_t *s = log->store;
  pthread_mutex_lock(&s->logs_lock);
  wd_store_group_t *g = log->groups;
  while (g && strcmp(g->name, name) != 0) g = g->next_group;
  if (!g && (g = group_new(log, name, len, atomic_load(&log->first_seq)))) atomic_store(&s->logs_dirty, true);
  pthread_mutex_unlock(&s->logs_lock);
  if (!g) return WD_ERR_NOMEM;
  *out = g;
  return WD_OK;
}

/* Copies record `seq` into *rec; false if it is not in the log. */
static bool read_record(wd_store_t *s, MDB_txn *txn, uint32_t log_id, uint64_t seq, wd_store_record_t *rec) {
  uint8_t key[KEY_LEN];
  record_key(key, log_id, seq);
  MDB_val k = {KEY_LEN, key}, v;
  if (mdb_get(txn, s->dbi_records, &k, &v) != MDB_SUCCESS) return false;
  rec->data = malloc(v.mv_size ? v.mv_size : 1);
  if (!rec->data) return false;
  memcpy(rec->data, v.mv_data, v.mv_size);
  rec->len = v.mv_size;
  rec->seq = seq;
  return true;
}

static void advance_floor(wd_store_group_t *g) {
  bool moved = false;
  while (g->floor < g->next && *state_at(g, g->floor) == ACKED) {
    g->floor++;
    g->head = (g->head + 1) % g->cap;
    moved = true;
  }
  if (moved) atomic_store(&g->log->store->logs_dirty, true);
}

static void settle(wd_store_group_t *g, uint64_t seq, uint8_t to);

/* Positions `cur` on the record `seq` of `log_id`: a step forward when the
 * cursor is on its predecessor (claims are mostly consecutive), else a seek. */
static bool record_at(MDB_cursor *cur, uint32_t log_id, uint64_t seq, bool after_previous, MDB_val *v) {
  uint8_t want[KEY_LEN];
  record_key(want, log_id, seq);
  MDB_val k;
  if (after_previous && mdb_cursor_get(cur, &k, v, MDB_NEXT) == MDB_SUCCESS && k.mv_size == KEY_LEN &&
      memcmp(k.mv_data, want, KEY_LEN) == 0)
    return true;
  k = (MDB_val){KEY_LEN, want};
  return mdb_cursor_get(cur, &k, v, MDB_SET_KEY) == MDB_SUCCESS;
}

int wd_store_group_claim(wd_store_group_t *g, size_t max, wd_store_record_fn fn, void *ctx) {
  wd_store_log_t *log = g->log;
  wd_store_t *s = log->store;
  uint64_t seqs[WD_STORE_CLAIM_MAX];
  if (max > WD_STORE_CLAIM_MAX) max = WD_STORE_CLAIM_MAX;
  uint64_t limit = atomic_load(&log->committed_next_seq);
  size_t n = 0;
  pthread_mutex_lock(&g->lock);
  for (uint64_t seq = g->floor; g->n_released > 0 && seq < g->next && n < max; seq++) {
    uint8_t *st = state_at(g, seq);
    if (*st != RELEASED) continue;
    g->n_released--;
    *st = CLAIMED;
    seqs[n++] = seq;
  }
  while (n < max && g->next < limit && ring_reserve(g)) {
    uint64_t seq = g->next++;
    *state_at(g, seq) = CLAIMED;
    seqs[n++] = seq;
  }
  pthread_mutex_unlock(&g->lock);
  if (n == 0) return 0;

  /* Claimed records stay below the group's floor, so no trim can take them
     while they are read here, outside the group's lock (fn may settle them). */
  MDB_txn *txn;
  MDB_cursor *cur = NULL;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc == MDB_SUCCESS && (rc = mdb_cursor_open(txn, s->dbi_records, &cur)) != MDB_SUCCESS) mdb_txn_abort(txn);
  if (rc != MDB_SUCCESS) {
    for (size_t i = 0; i < n; i++) settle(g, seqs[i], RELEASED);
    return wd_store__map_rc(rc);
  }
  for (size_t i = 0; i < n; i++) {
    MDB_val v;
    if (record_at(cur, log->id, seqs[i], i > 0 && seqs[i] == seqs[i - 1] + 1, &v))
      fn(ctx, seqs[i], v.mv_data, v.mv_size);
    else
      settle(g, seqs[i], ACKED); /* gone from the log: nothing left to deliver */
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  return (int)n;
}

static void settle(wd_store_group_t *g, uint64_t seq, uint8_t to) {
  pthread_mutex_lock(&g->lock);
  if (seq >= g->floor && seq < g->next) {
    uint8_t *st = state_at(g, seq);
    if (*st == CLAIMED) {
      *st = to;
      if (to == RELEASED)
        g->n_released++;
      else
        advance_floor(g);
    }
  }
  pthread_mutex_unlock(&g->lock);
}

void wd_store_group_ack(wd_store_group_t *g, uint64_t seq) { settle(g, seq, ACKED); }

void wd_store_group_release(wd_store_group_t *g, uint64_t seq) { settle(g, seq, RELEASED); }

int wd_store_log_read(wd_store_log_t *log, uint64_t from, wd_store_record_t *out, size_t max) {
  wd_store_t *s = log->store;
  uint64_t first = atomic_load(&log->first_seq), limit = atomic_load(&log->committed_next_seq);
  if (from < first) from = first;
  if (from >= limit || max == 0) return 0;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  size_t n = 0;
  for (uint64_t seq = from; seq < limit && n < max; seq++)
    if (read_record(s, txn, log->id, seq, &out[n])) n++;
  mdb_txn_abort(txn);
  return (int)n;
}

void wd_store_log_bounds(wd_store_log_t *log, uint64_t *first, uint64_t *next) {
  *first = atomic_load(&log->first_seq);
  *next = atomic_load(&log->acked_next_seq);
}

void wd_store__logs_acknowledged(wd_store_t *s) {
  for (size_t i = 0; i < s->n_touched; i++)
    atomic_store(&s->touched[i].log->acked_next_seq, s->touched[i].log->next_seq);
}

/* The telemetry log and its consumer groups.
 *
 * Records are keyed by a big-endian u64 sequence number, so key order is
 * arrival order and appends use MDB_APPEND. The writer assigns numbers; readers
 * only claim below `committed_next_seq`, which is published after each commit,
 * so no reader can pass a number whose record is not yet durable.
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

enum { CLAIMED = 1, RELEASED = 2, ACKED = 3 };

struct wd_store_group {
  wd_store_group_t *next_group;
  wd_store_t *store;
  int refs; /* under store->groups_lock */

  pthread_mutex_t lock;
  uint64_t floor;           /* every record below is acknowledged */
  uint64_t next;            /* the first record never claimed */
  uint64_t persisted_floor; /* what the store holds; written by the writer */
  uint8_t *state;           /* ring over [floor, next): state of each record */
  size_t cap, head;
  size_t n_released;
  char name[];
};

static const char next_seq_key[] = "telemetry_next_seq";

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

static wd_store_group_t *group_new(wd_store_t *s, const char *name, size_t len, uint64_t floor) {
  wd_store_group_t *g = calloc(1, sizeof *g + len + 1);
  if (!g) return NULL;
  memcpy(g->name, name, len);
  g->store = s;
  g->floor = g->next = g->persisted_floor = floor;
  pthread_mutex_init(&g->lock, NULL);
  g->next_group = s->groups;
  s->groups = g;
  return g;
}

int wd_store__telemetry_load(wd_store_t *s, MDB_txn *txn) {
  uint64_t next = 1;
  MDB_val k = {sizeof next_seq_key - 1, (void *)next_seq_key}, v;
  int rc = mdb_get(txn, s->dbi_meta, &k, &v);
  if (rc == MDB_SUCCESS && v.mv_size == 8) next = wd_store__be_u64(v.mv_data);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);

  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, s->dbi_telemetry, &cur))) return wd_store__map_rc(rc);
  uint64_t first = 0;
  rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  if (rc == MDB_SUCCESS) {
    if (k.mv_size != 8) goto corrupt;
    uint64_t last = wd_store__be_u64(k.mv_data);
    if (last + 1 > next) next = last + 1;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (rc != MDB_SUCCESS || k.mv_size != 8) goto corrupt;
    first = wd_store__be_u64(k.mv_data);
  } else if (rc != MDB_NOTFOUND) {
    mdb_cursor_close(cur);
    return wd_store__map_rc(rc);
  }
  mdb_cursor_close(cur);
  if (first == 0) first = next;
  s->next_seq = next;
  atomic_store(&s->committed_next_seq, next);
  atomic_store(&s->first_seq, first);

  if ((rc = mdb_cursor_open(txn, s->dbi_groups, &cur))) return wd_store__map_rc(rc);
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (v.mv_size != 8 || k.mv_size == 0 || k.mv_size > WD_ID_MAX) goto corrupt;
    uint64_t floor = wd_store__be_u64(v.mv_data);
    if (floor < first) floor = first;
    if (floor > next) goto corrupt;
    if (!group_new(s, k.mv_data, k.mv_size, floor)) {
      mdb_cursor_close(cur);
      return WD_ERR_NOMEM;
    }
  }
  mdb_cursor_close(cur);
  return rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
corrupt:
  mdb_cursor_close(cur);
  return WD_ERR_CORRUPT;
}

void wd_store__groups_free(wd_store_t *s) {
  wd_store_group_t *g = s->groups;
  while (g) {
    wd_store_group_t *next = g->next_group;
    pthread_mutex_destroy(&g->lock);
    free(g->state);
    free(g);
    g = next;
  }
  s->groups = NULL;
}

/* Deletes records every group has acknowledged, a bounded number per commit. */
static int trim(wd_store_t *s, MDB_txn *txn, uint64_t below) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_telemetry, &cur);
  if (rc) return wd_store__map_rc(rc);
  MDB_val k, v;
  size_t n = 0;
  uint64_t first = below;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    uint64_t seq = wd_store__be_u64(k.mv_data);
    if (seq >= below) {
      first = seq;
      break;
    }
    if (n == TRIM_PER_COMMIT) {
      first = seq;
      atomic_store(&s->groups_dirty, true); /* come back for the rest */
      break;
    }
    if ((rc = mdb_cursor_del(cur, 0))) break;
    n++;
  }
  mdb_cursor_close(cur);
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  if (n > 0) {
    if (rc == MDB_NOTFOUND) first = below;
    atomic_store(&s->first_seq, first);
  }
  return WD_OK;
}

int wd_store__groups_persist(wd_store_t *s, MDB_txn *txn) {
  uint8_t buf[8];
  wd_store__u64_be(buf, s->next_seq);
  MDB_val k = {sizeof next_seq_key - 1, (void *)next_seq_key}, v = {8, buf};
  int rc = mdb_put(txn, s->dbi_meta, &k, &v, 0);
  if (rc) return wd_store__map_rc(rc);

  uint64_t min_floor = UINT64_MAX;
  pthread_mutex_lock(&s->groups_lock);
  for (wd_store_group_t *g = s->groups; g && rc == MDB_SUCCESS; g = g->next_group) {
    pthread_mutex_lock(&g->lock);
    uint64_t floor = g->floor;
    pthread_mutex_unlock(&g->lock);
    if (floor < min_floor) min_floor = floor;
    if (floor == g->persisted_floor && g->persisted_floor != 0) continue;
    wd_store__u64_be(buf, floor);
    k = (MDB_val){strlen(g->name), g->name};
    v = (MDB_val){8, buf};
    rc = mdb_put(txn, s->dbi_groups, &k, &v, 0);
    /* A failed commit leaves persisted_floor behind; the next persist writes it again. */
    if (rc == MDB_SUCCESS) g->persisted_floor = floor;
  }
  pthread_mutex_unlock(&s->groups_lock);
  if (rc) return wd_store__map_rc(rc);
  if (min_floor != UINT64_MAX && min_floor > atomic_load(&s->first_seq)) return trim(s, txn, min_floor);
  return WD_OK;
}

typedef struct {
  wd_store__op_t base;
  void *data;
  size_t len, seq_offset;
  wd_store_done_fn done;
  void *ctx;
} append_op_t;

static int apply_append(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  append_op_t *op = (append_op_t *)base;
  uint64_t seq = s->next_seq;
  if (op->seq_offset != SIZE_MAX) wd_store__u64_be((uint8_t *)op->data + op->seq_offset, seq);
  uint8_t key[8];
  wd_store__u64_be(key, seq);
  MDB_val k = {8, key}, v = {op->len, op->data};
  int rc = mdb_put(txn, s->dbi_telemetry, &k, &v, MDB_APPEND);
  if (rc) return wd_store__map_rc(rc);
  s->next_seq = seq + 1;
  atomic_store(&s->groups_dirty, true); /* so next_seq is persisted with this commit */
  return WD_OK;
}

static void complete_append(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  append_op_t *op = (append_op_t *)base;
  op->done(op->ctx, rc);
  free(op->data);
  free(op);
}

int wd_store_telemetry_append(wd_store_t *s, void *data, size_t len, size_t seq_offset, wd_store_done_fn done,
                              void *ctx) {
  if (seq_offset != SIZE_MAX && (len < 8 || seq_offset > len - 8)) return WD_ERR_INVALID;
  append_op_t *op = malloc(sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  *op = (append_op_t){.base = {.apply = apply_append, .complete = complete_append, .appends_telemetry = true},
                      .data = data,
                      .len = len,
                      .seq_offset = seq_offset,
                      .done = done,
                      .ctx = ctx};
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) free(op);
  return rc;
}

int wd_store_group_open(wd_store_t *s, const char *name, wd_store_group_t **out) {
  size_t len = strlen(name);
  if (len == 0 || len > WD_ID_MAX) return WD_ERR_INVALID;
  pthread_mutex_lock(&s->groups_lock);
  wd_store_group_t *g = s->groups;
  while (g && strcmp(g->name, name) != 0) g = g->next_group;
  if (!g) {
    g = group_new(s, name, len, atomic_load(&s->first_seq));
    if (g) {
      g->persisted_floor = 0; /* not yet in the store: the next persist writes it */
      atomic_store(&s->groups_dirty, true);
    }
  }
  if (g) g->refs++;
  pthread_mutex_unlock(&s->groups_lock);
  if (!g) return WD_ERR_NOMEM;
  *out = g;
  return WD_OK;
}

void wd_store_group_unref(wd_store_group_t *g) {
  if (!g) return;
  /* Groups live as long as the store: their floors bound trimming even with no consumer attached. */
  pthread_mutex_lock(&g->store->groups_lock);
  g->refs--;
  pthread_mutex_unlock(&g->store->groups_lock);
}

/* Copies record `seq` into *rec; false if it is not in the log. */
static bool read_record(wd_store_t *s, MDB_txn *txn, uint64_t seq, wd_store_record_t *rec) {
  uint8_t key[8];
  wd_store__u64_be(key, seq);
  MDB_val k = {8, key}, v;
  if (mdb_get(txn, s->dbi_telemetry, &k, &v) != MDB_SUCCESS) return false;
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
  if (moved) atomic_store(&g->store->groups_dirty, true);
}

int wd_store_group_claim(wd_store_group_t *g, wd_store_record_t *out, size_t max) {
  wd_store_t *s = g->store;
  uint64_t limit = atomic_load(&s->committed_next_seq);
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  size_t n = 0;
  pthread_mutex_lock(&g->lock);
  for (uint64_t seq = g->floor; g->n_released > 0 && seq < g->next && n < max; seq++) {
    uint8_t *st = state_at(g, seq);
    if (*st != RELEASED) continue;
    g->n_released--;
    if (read_record(s, txn, seq, &out[n])) {
      *st = CLAIMED;
      n++;
    } else {
      *st = ACKED; /* gone from the log: nothing left to deliver */
    }
  }
  while (n < max && g->next < limit) {
    if (!ring_reserve(g)) break;
    uint64_t seq = g->next++;
    uint8_t *st = state_at(g, seq);
    if (read_record(s, txn, seq, &out[n])) {
      *st = CLAIMED;
      n++;
    } else {
      *st = ACKED;
    }
  }
  advance_floor(g);
  pthread_mutex_unlock(&g->lock);
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

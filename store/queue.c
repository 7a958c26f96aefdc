/* Device queues: commands, notifications and inquiry replies, in order, per
 * device, until the device takes them, they expire or they fail too often.
 *
 * Layout (all integers big-endian):
 *   queues      device ‖ 0 ‖ seq            → record (below)
 *   queue_meta  device                      → next seq (8) ‖ count (4)
 *   blobs       blob id                     → references (4) ‖ message
 *   expiry      time ‖ kind ‖ device ‖ 0 ‖ x → (empty); kind 1: x = seq of a
 *               queued message; kind 2: x = message-id of a command status
 *   commands    device ‖ 0 ‖ message-id     → status (below)
 *   members     group ‖ 0 ‖ device          → (empty)
 * A record: version, kind, flags (1 durable, 2 delivered-unsettled, 4 in a
 * blob), priority, delivery count (4), ttl (4), enqueued (8), expiry (8),
 * message-id (2 + n), raw message-id (2 + n), then the message without its
 * header, or the blob's id (8). A group notification stores its payload once,
 * as a blob referenced by every member's record. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "gateway/base/metrics.h"
#include "store/internal.h"

#define RECORD_VERSION 1
#define FLAG_DURABLE 1
#define FLAG_DELIVERED 2
#define FLAG_BLOB 4
#define EXPIRY_MESSAGE 1
#define EXPIRY_STATUS 2
#define STATUS_RETENTION_MS (24LL * 3600 * 1000)
#define SWEEP_PER_COMMIT 1000
#define MSGID_MAX 1024

enum { ST_QUEUED = 1, ST_DELIVERED, ST_COMPLETED, ST_REJECTED, ST_EXPIRED, ST_DEADLETTERED, ST_PURGED };

static const char blob_key[] = "next_blob_id";

static void put_be16(uint8_t *p, size_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static size_t be16(const uint8_t *p) { return (size_t)p[0] << 8 | p[1]; }

/* device ‖ 0 ‖ seq */
static size_t queue_key(uint8_t *key, const char *device, uint64_t seq) {
  size_t n = strlen(device);
  memcpy(key, device, n);
  key[n] = 0;
  wd_store__u64_be(key + n + 1, seq);
  return n + 9;
}

/* A record decoded in place: pointers into LMDB's memory, valid in its txn. */
typedef struct {
  wd_store_queued_t q; /* data, message_id and raw borrowed */
  uint8_t flags;
  uint64_t blob_id;
  char msgid[MSGID_MAX + 1];
} view_t;

static int decode(const MDB_val *v, uint64_t seq, view_t *out) {
  const uint8_t *p = v->mv_data, *end = p + v->mv_size;
  if (v->mv_size < 28 + 4 || p[0] != RECORD_VERSION) return WD_ERR_CORRUPT;
  memset(out, 0, sizeof *out);
  out->q.seq = seq;
  out->q.kind = p[1];
  out->flags = p[2];
  out->q.durable = p[2] & FLAG_DURABLE;
  out->q.priority = p[3];
  out->q.delivery_count = wd_store__be_u32(p + 4);
  out->q.ttl_ms = wd_store__be_u32(p + 8);
  out->q.enqueued_ms = (int64_t)wd_store__be_u64(p + 12);
  out->q.expiry_ms = (int64_t)wd_store__be_u64(p + 20);
  p += 28;
  size_t n = be16(p);
  p += 2;
  if ((size_t)(end - p) < n + 2 || n > MSGID_MAX) return WD_ERR_CORRUPT;
  memcpy(out->msgid, p, n);
  out->msgid[n] = '\0';
  out->q.message_id = out->msgid;
  p += n;
  n = be16(p);
  p += 2;
  if ((size_t)(end - p) < n) return WD_ERR_CORRUPT;
  out->q.message_id_raw = (void *)p;
  out->q.message_id_raw_len = n;
  p += n;
  if (out->flags & FLAG_BLOB) {
    if (end - p != 8) return WD_ERR_CORRUPT;
    out->blob_id = wd_store__be_u64(p);
  } else {
    out->q.data = (void *)p;
    out->q.len = (size_t)(end - p);
  }
  return WD_OK;
}

/* Points view->q.data at the blob's payload. */
static int load_blob(wd_store_t *s, MDB_txn *txn, view_t *view) {
  if (!(view->flags & FLAG_BLOB)) return WD_OK;
  uint8_t key[8];
  wd_store__u64_be(key, view->blob_id);
  MDB_val k = {8, key}, v;
  int rc = mdb_get(txn, s->dbi_blobs, &k, &v);
  if (rc) return rc == MDB_NOTFOUND ? WD_ERR_CORRUPT : wd_store__map_rc(rc);
  if (v.mv_size < 4) return WD_ERR_CORRUPT;
  view->q.data = (uint8_t *)v.mv_data + 4;
  view->q.len = v.mv_size - 4;
  return WD_OK;
}

static int put_record(wd_store_t *s, MDB_txn *txn, const char *device, const view_t *view) {
  const wd_store_queued_t *q = &view->q;
  size_t msgid_len = strlen(q->message_id);
  size_t size = 28 + 2 + msgid_len + 2 + q->message_id_raw_len + ((view->flags & FLAG_BLOB) ? 8 : q->len);
  uint8_t key[WD_ID_MAX + 9];
  MDB_val k = {queue_key(key, device, q->seq), key}, v = {size, NULL};
  int rc = mdb_put(txn, s->dbi_queues, &k, &v, MDB_RESERVE);
  if (rc) return wd_store__map_rc(rc);
  uint8_t *p = v.mv_data;
  p[0] = RECORD_VERSION;
  p[1] = (uint8_t)q->kind;
  p[2] = view->flags;
  p[3] = q->priority;
  wd_store__u32_be(p + 4, q->delivery_count);
  wd_store__u32_be(p + 8, q->ttl_ms);
  wd_store__u64_be(p + 12, (uint64_t)q->enqueued_ms);
  wd_store__u64_be(p + 20, (uint64_t)q->expiry_ms);
  p += 28;
  put_be16(p, msgid_len);
  memcpy(p + 2, q->message_id, msgid_len);
  p += 2 + msgid_len;
  put_be16(p, q->message_id_raw_len);
  memcpy(p + 2, q->message_id_raw, q->message_id_raw_len);
  p += 2 + q->message_id_raw_len;
  if (view->flags & FLAG_BLOB)
    wd_store__u64_be(p, view->blob_id);
  else
    memcpy(p, q->data, q->len);
  return WD_OK;
}

/* ------------------------------------------------------------------ meta */

static int meta_get(wd_store_t *s, MDB_txn *txn, const char *device, uint64_t *next_seq, uint32_t *count) {
  MDB_val k = {strlen(device), (void *)device}, v;
  int rc = mdb_get(txn, s->dbi_queue_meta, &k, &v);
  *next_seq = 1;
  *count = 0;
  if (rc == MDB_NOTFOUND) return WD_OK;
  if (rc) return wd_store__map_rc(rc);
  if (v.mv_size != 12) return WD_ERR_CORRUPT;
  *next_seq = wd_store__be_u64(v.mv_data);
  *count = wd_store__be_u32((uint8_t *)v.mv_data + 8);
  return WD_OK;
}

static int meta_put(wd_store_t *s, MDB_txn *txn, const char *device, uint64_t next_seq, uint32_t count) {
  uint8_t buf[12];
  wd_store__u64_be(buf, next_seq);
  wd_store__u32_be(buf + 8, count);
  MDB_val k = {strlen(device), (void *)device}, v = {12, buf};
  return wd_store__map_rc(mdb_put(txn, s->dbi_queue_meta, &k, &v, 0));
}

/* ---------------------------------------------------------------- expiry */

static size_t expiry_key(uint8_t *key, int64_t when, uint8_t kind, const char *device, const void *x, size_t xlen) {
  wd_store__u64_be(key, (uint64_t)when);
  key[8] = kind;
  size_t n = strlen(device);
  memcpy(key + 9, device, n);
  key[9 + n] = 0;
  memcpy(key + 10 + n, x, xlen);
  return 10 + n + xlen;
}

static int expiry_put(wd_store_t *s, MDB_txn *txn, int64_t when, uint8_t kind, const char *device, const void *x,
                      size_t xlen) {
  uint8_t key[10 + WD_ID_MAX + MSGID_MAX];
  MDB_val k = {expiry_key(key, when, kind, device, x, xlen), key}, v = {0, ""};
  int rc = wd_store__map_rc(mdb_put(txn, s->dbi_expiry, &k, &v, 0));
  if (rc == WD_OK && when < s->next_expiry_ms) s->next_expiry_ms = when;
  return rc;
}

static int expiry_del(wd_store_t *s, MDB_txn *txn, int64_t when, uint8_t kind, const char *device, const void *x,
                      size_t xlen) {
  uint8_t key[10 + WD_ID_MAX + MSGID_MAX];
  MDB_val k = {expiry_key(key, when, kind, device, x, xlen), key};
  int rc = mdb_del(txn, s->dbi_expiry, &k, NULL);
  return rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
}

/* ---------------------------------------------------------------- status */

static size_t status_key(uint8_t *key, const char *device, const char *msgid) {
  size_t n = strlen(device), m = strlen(msgid);
  memcpy(key, device, n);
  key[n] = 0;
  memcpy(key + n + 1, msgid, m);
  return n + 1 + m;
}

/* A command's status record: version, state, seq, queued, delivered, final,
 * expires, responded (8 each), reply-to (2 + n), response content type
 * (2 + n), response (4 + n). */
#define STATUS_FIXED 50
#define RESPONSE_MAX (64 * 1024)

typedef struct {
  uint8_t state;
  uint64_t seq;
  int64_t queued_ms, delivered_ms, final_ms, expires_ms, responded_ms;
  char reply_to[WD_REPLY_TO_MAX + 1];
  char content_type[256];
  const void *response; /* borrowed */
  size_t response_len;
} status_t;

static int status_decode(const MDB_val *v, status_t *st) {
  const uint8_t *p = v->mv_data, *end = p + v->mv_size;
  if (v->mv_size < STATUS_FIXED + 8 || p[0] != 1) return WD_ERR_CORRUPT;
  memset(st, 0, sizeof *st);
  st->state = p[1];
  st->seq = wd_store__be_u64(p + 2);
  st->queued_ms = (int64_t)wd_store__be_u64(p + 10);
  st->delivered_ms = (int64_t)wd_store__be_u64(p + 18);
  st->final_ms = (int64_t)wd_store__be_u64(p + 26);
  st->expires_ms = (int64_t)wd_store__be_u64(p + 34);
  st->responded_ms = (int64_t)wd_store__be_u64(p + 42);
  p += STATUS_FIXED;
  size_t n = be16(p);
  if (n > WD_REPLY_TO_MAX || (size_t)(end - p) < 2 + n + 2) return WD_ERR_CORRUPT;
  memcpy(st->reply_to, p + 2, n);
  p += 2 + n;
  n = be16(p);
  if (n >= sizeof st->content_type || (size_t)(end - p) < 2 + n + 4) return WD_ERR_CORRUPT;
  memcpy(st->content_type, p + 2, n);
  p += 2 + n;
  n = wd_store__be_u32(p);
  if ((size_t)(end - p) < 4 + n) return WD_ERR_CORRUPT;
  st->response = p + 4;
  st->response_len = n;
  return WD_OK;
}

static int status_put(wd_store_t *s, MDB_txn *txn, const MDB_val *k, const status_t *st) {
  size_t rlen = strlen(st->reply_to), clen = strlen(st->content_type);
  MDB_val v = {STATUS_FIXED + 2 + rlen + 2 + clen + 4 + st->response_len, NULL};
  /* The response may point into the old value: copy it out before reserving. */
  void *resp = NULL;
  if (st->response_len) {
    if (!(resp = malloc(st->response_len))) return WD_ERR_NOMEM;
    memcpy(resp, st->response, st->response_len);
  }
  int rc = mdb_put(txn, s->dbi_commands, (MDB_val *)k, &v, MDB_RESERVE);
  if (rc) {
    free(resp);
    return wd_store__map_rc(rc);
  }
  uint8_t *p = v.mv_data;
  p[0] = 1;
  p[1] = st->state;
  wd_store__u64_be(p + 2, st->seq);
  wd_store__u64_be(p + 10, (uint64_t)st->queued_ms);
  wd_store__u64_be(p + 18, (uint64_t)st->delivered_ms);
  wd_store__u64_be(p + 26, (uint64_t)st->final_ms);
  wd_store__u64_be(p + 34, (uint64_t)st->expires_ms);
  wd_store__u64_be(p + 42, (uint64_t)st->responded_ms);
  p += STATUS_FIXED;
  put_be16(p, rlen);
  memcpy(p + 2, st->reply_to, rlen);
  p += 2 + rlen;
  put_be16(p, clen);
  memcpy(p + 2, st->content_type, clen);
  p += 2 + clen;
  wd_store__u32_be(p, (uint32_t)st->response_len);
  if (st->response_len) memcpy(p + 4, resp, st->response_len);
  free(resp);
  return WD_OK;
}

/* Sets a command's state; a final state starts the status's retention. */
static int status_set(wd_store_t *s, MDB_txn *txn, const char *device, const wd_store_queued_t *q, uint8_t state,
                      const char *reply_to, int64_t now) {
  if (q->kind != WD_QUEUE_COMMAND || !q->message_id[0]) return WD_OK;
  uint8_t key[WD_ID_MAX + 1 + MSGID_MAX];
  MDB_val k = {status_key(key, device, q->message_id), key}, v;
  status_t st;
  int rc = state == ST_QUEUED ? MDB_NOTFOUND : mdb_get(txn, s->dbi_commands, &k, &v);
  if (rc == MDB_SUCCESS) {
    if ((rc = status_decode(&v, &st)) < 0) return rc;
  } else if (rc == MDB_NOTFOUND) {
    memset(&st, 0, sizeof st);
    st.seq = q->seq;
    st.queued_ms = q->enqueued_ms;
    st.expires_ms = q->expiry_ms;
    if (reply_to && strlen(reply_to) <= WD_REPLY_TO_MAX) snprintf(st.reply_to, sizeof st.reply_to, "%s", reply_to);
  } else {
    return wd_store__map_rc(rc);
  }
  st.state = state;
  if (state == ST_DELIVERED) st.delivered_ms = now;
  if (state >= ST_COMPLETED) {
    st.final_ms = now;
    rc = expiry_put(s, txn, now + STATUS_RETENTION_MS, EXPIRY_STATUS, device, q->message_id, strlen(q->message_id));
    if (rc < 0) return rc;
  }
  return status_put(s, txn, &k, &st);
}

/* --------------------------------------------------- outcome side effects */

static int append_built(wd_store_t *s, MDB_txn *txn, const char *log_name, void *data, size_t len, size_t seq_offset) {
  if (!data) return WD_ERR_NOMEM;
  wd_store_log_t *log = wd_store__log_get(s, log_name);
  int rc = log ? wd_store__log_put(s, txn, log, data, len, seq_offset) : WD_ERR_NOMEM;
  free(data);
  return rc;
}

static int feedback(wd_store_t *s, MDB_txn *txn, const char *device, const wd_store_queued_t *q, const char *status,
                    int64_t now) {
  if (q->kind != WD_QUEUE_COMMAND || !s->codec.feedback) return WD_OK;
  size_t len, off;
  void *data = s->codec.feedback(s->codec.arg, device, q, status, now, &len, &off);
  return append_built(s, txn, "feedback", data, len, off);
}

static int deadletter(wd_store_t *s, MDB_txn *txn, const char *device, const wd_store_queued_t *q, const char *reason,
                      int64_t now) {
  if (!s->codec.deadletter) return WD_OK;
  size_t len, off;
  void *data = s->codec.deadletter(s->codec.arg, device, q, reason, now, &len, &off);
  return append_built(s, txn, "deadletter", data, len, off);
}

static int blob_unref(wd_store_t *s, MDB_txn *txn, uint64_t blob_id) {
  uint8_t key[8];
  wd_store__u64_be(key, blob_id);
  MDB_val k = {8, key}, v;
  int rc = mdb_get(txn, s->dbi_blobs, &k, &v);
  if (rc == MDB_NOTFOUND) return WD_OK;
  if (rc) return wd_store__map_rc(rc);
  uint32_t refs = v.mv_size >= 4 ? wd_store__be_u32(v.mv_data) : 0;
  if (refs <= 1) return wd_store__map_rc(mdb_del(txn, s->dbi_blobs, &k, NULL));
  /* MDB_RESERVE would lose the payload; copy it back with the new count. */
  uint8_t *copy = malloc(v.mv_size);
  if (!copy) return WD_ERR_NOMEM;
  memcpy(copy, v.mv_data, v.mv_size);
  wd_store__u32_be(copy, refs - 1);
  MDB_val nv = {v.mv_size, copy};
  rc = wd_store__map_rc(mdb_put(txn, s->dbi_blobs, &k, &nv, 0));
  free(copy);
  return rc;
}

/* Takes a message out of its queue (and its expiry entry and blob reference). */
static int remove_record(wd_store_t *s, MDB_txn *txn, const char *device, const view_t *view) {
  uint8_t key[WD_ID_MAX + 9], seq_be[8];
  MDB_val k = {queue_key(key, device, view->q.seq), key};
  wd_store__u64_be(seq_be, view->q.seq);
  int rc = wd_store__map_rc(mdb_del(txn, s->dbi_queues, &k, NULL));
  if (rc == WD_OK) rc = expiry_del(s, txn, view->q.expiry_ms, EXPIRY_MESSAGE, device, seq_be, 8);
  if (rc == WD_OK && (view->flags & FLAG_BLOB)) rc = blob_unref(s, txn, view->blob_id);
  uint64_t next_seq;
  uint32_t count;
  if (rc == WD_OK) rc = meta_get(s, txn, device, &next_seq, &count);
  if (rc == WD_OK) rc = meta_put(s, txn, device, next_seq, count ? count - 1 : 0);
  if (rc == WD_OK) s->queued_delta--;
  return rc;
}

/* Dead-letters a message: the whole of it to "deadletter", feedback, status, gone. */
static int dead(wd_store_t *s, MDB_txn *txn, const char *device, view_t *view, const char *reason,
                const char *feedback_status, uint8_t state, int64_t now) {
  /* Counted as they are decided; a transaction that aborts is retried and counted again, rarely. */
  wd_metric_add(&wd_metrics.dead_letters, 1);
  if (state == ST_EXPIRED) wd_metric_add(&wd_metrics.expirations, 1);
  int rc = load_blob(s, txn, view);
  if (rc == WD_OK) rc = deadletter(s, txn, device, &view->q, reason, now);
  if (rc == WD_OK) rc = feedback(s, txn, device, &view->q, feedback_status, now);
  if (rc == WD_OK) rc = status_set(s, txn, device, &view->q, state, NULL, now);
  if (rc == WD_OK) rc = remove_record(s, txn, device, view);
  return rc;
}

/* --------------------------------------------------------------- enqueue */

typedef struct {
  wd_store__op_t base;
  char target[WD_ID_MAX + 1]; /* device id, or group id */
  bool to_group;
  wd_store_queued_t q; /* message_id, raw and data owned */
  char *reply_to;
  uint32_t default_limit;
  uint64_t result;
  wd_store_enqueue_done_fn done;
  void *ctx;
} enqueue_op_t;

/* Appends to one device's queue; *skipped (group fan-out) instead of an error when it is disabled or full. */
static int enqueue_one(wd_store_t *s, MDB_txn *txn, enqueue_op_t *op, const char *device, uint64_t blob_id,
                       uint64_t *seq_out) {
  wd_device_t *d = NULL;
  int rc = wd_store__device_get_in(s, txn, device, &d);
  if (rc < 0) return rc;
  uint32_t limit = d->queue_limit ? d->queue_limit : op->default_limit;
  bool enabled = d->enabled;
  wd_device_free(d);
  if (!enabled) return WD_ERR_DISABLED;
  uint64_t next_seq;
  uint32_t count;
  if ((rc = meta_get(s, txn, device, &next_seq, &count)) < 0) return rc;
  if (count >= limit) return WD_ERR_LIMIT;
  view_t view = {.q = op->q, .flags = (uint8_t)((op->q.durable ? FLAG_DURABLE : 0) | (blob_id ? FLAG_BLOB : 0)),
                 .blob_id = blob_id};
  view.q.seq = next_seq;
  uint8_t seq_be[8];
  wd_store__u64_be(seq_be, next_seq);
  if ((rc = put_record(s, txn, device, &view)) < 0 || (rc = meta_put(s, txn, device, next_seq + 1, count + 1)) < 0 ||
      (rc = expiry_put(s, txn, op->q.expiry_ms, EXPIRY_MESSAGE, device, seq_be, 8)) < 0 ||
      (rc = status_set(s, txn, device, &view.q, ST_QUEUED, op->reply_to, op->q.enqueued_ms)) < 0)
    return rc;
  *seq_out = next_seq;
  s->queued_delta++;
  return WD_OK;
}

static int new_blob(wd_store_t *s, MDB_txn *txn, const void *data, size_t len, uint64_t *id) {
  uint8_t key[8];
  *id = s->next_blob_id++;
  wd_store__u64_be(key, *id);
  MDB_val k = {8, key}, v = {len + 4, NULL};
  int rc = mdb_put(txn, s->dbi_blobs, &k, &v, MDB_RESERVE);
  if (rc) return wd_store__map_rc(rc);
  wd_store__u32_be(v.mv_data, 0);
  memcpy((uint8_t *)v.mv_data + 4, data, len);
  MDB_val mk = {sizeof blob_key - 1, (void *)blob_key}, mv = {8, key};
  wd_store__u64_be(key, s->next_blob_id);
  return wd_store__map_rc(mdb_put(txn, s->dbi_meta, &mk, &mv, 0));
}

static int blob_set_refs(wd_store_t *s, MDB_txn *txn, uint64_t id, uint32_t refs) {
  uint8_t key[8];
  wd_store__u64_be(key, id);
  MDB_val k = {8, key}, v;
  if (refs == 0) return wd_store__map_rc(mdb_del(txn, s->dbi_blobs, &k, NULL));
  int rc = mdb_get(txn, s->dbi_blobs, &k, &v);
  if (rc) return wd_store__map_rc(rc);
  /* Values in a write txn may live in pages shared with readers: copy, then put. */
  uint8_t *copy = malloc(v.mv_size);
  if (!copy) return WD_ERR_NOMEM;
  memcpy(copy, v.mv_data, v.mv_size);
  wd_store__u32_be(copy, refs);
  MDB_val nv = {v.mv_size, copy};
  rc = wd_store__map_rc(mdb_put(txn, s->dbi_blobs, &k, &nv, 0));
  free(copy);
  return rc;
}

static int apply_enqueue(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  enqueue_op_t *op = (enqueue_op_t *)base;
  /* What is in the store keeps its room: new messages wait for consumers to drain it. */
  if (atomic_load(&s->pressure)) return WD_ERR_BUSY;
  if (!op->to_group) return enqueue_one(s, txn, op, op->target, 0, &op->result);

  uint64_t blob_id;
  uint64_t next_blob_before = s->next_blob_id;
  int rc = new_blob(s, txn, op->q.data, op->q.len, &blob_id);
  if (rc < 0) return rc;
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, s->dbi_members, &cur))) return wd_store__map_rc(rc);
  size_t glen = strlen(op->target);
  uint8_t prefix[WD_ID_MAX + 1];
  memcpy(prefix, op->target, glen);
  prefix[glen] = 0;
  MDB_val k = {glen + 1, prefix}, v;
  uint32_t reached = 0, members = 0;
  int err = WD_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size <= glen + 1 || memcmp(k.mv_data, prefix, glen + 1) != 0) break;
    char device[WD_ID_MAX + 1];
    size_t dlen = k.mv_size - glen - 1;
    if (dlen > WD_ID_MAX) continue;
    memcpy(device, (uint8_t *)k.mv_data + glen + 1, dlen);
    device[dlen] = '\0';
    members++;
    uint64_t seq;
    err = enqueue_one(s, txn, op, device, blob_id, &seq);
    if (err == WD_OK) reached++;
    if (err == WD_ERR_DISABLED || err == WD_ERR_LIMIT || err == WD_ERR_NOT_FOUND) err = WD_OK; /* skipped */
    if (err < 0) break;
  }
  mdb_cursor_close(cur);
  if (err < 0) {
    s->next_blob_id = next_blob_before;
    return err;
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  if ((err = blob_set_refs(s, txn, blob_id, reached)) < 0) return err;
  op->result = reached;
  return members ? WD_OK : WD_ERR_NOT_FOUND;
}

static void free_queued_members(wd_store_queued_t *q) {
  free(q->message_id);
  free(q->message_id_raw);
  free(q->data);
}

static void complete_enqueue(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  enqueue_op_t *op = (enqueue_op_t *)base;
  op->done(op->ctx, rc, rc == WD_OK ? op->result : 0);
  free_queued_members(&op->q);
  free(op->reply_to);
  free(op);
}

static int submit_enqueue(wd_store_t *s, const char *target, bool to_group, wd_store_enqueue_t *msg,
                          uint32_t default_limit, wd_store_enqueue_done_fn done, void *ctx) {
  if (!wd_id_valid(target)) return WD_ERR_NOT_FOUND;
  const char *msgid = msg->message_id ? msg->message_id : "";
  if (strlen(msgid) > MSGID_MAX || msg->message_id_raw_len > MSGID_MAX) return WD_ERR_INVALID;
  if (msg->reply_to && strlen(msg->reply_to) > WD_REPLY_TO_MAX) return WD_ERR_INVALID;
  enqueue_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_enqueue;
  op->base.complete = complete_enqueue;
  snprintf(op->target, sizeof op->target, "%s", target);
  op->to_group = to_group;
  op->default_limit = default_limit;
  op->done = done;
  op->ctx = ctx;
  op->q = (wd_store_queued_t){.kind = msg->kind,
                              .durable = msg->durable,
                              .priority = msg->priority,
                              .ttl_ms = msg->ttl_ms,
                              .enqueued_ms = wd_now_ms(),
                              .expiry_ms = msg->expiry_ms,
                              .message_id = strdup(msgid),
                              .message_id_raw = malloc(msg->message_id_raw_len ? msg->message_id_raw_len : 1),
                              .message_id_raw_len = msg->message_id_raw_len};
  op->reply_to = msg->reply_to ? strdup(msg->reply_to) : NULL;
  if (!op->q.message_id || !op->q.message_id_raw || (msg->reply_to && !op->reply_to)) {
    free_queued_members(&op->q);
    free(op->reply_to);
    free(op);
    return WD_ERR_NOMEM;
  }
  if (msg->message_id_raw_len) memcpy(op->q.message_id_raw, msg->message_id_raw, msg->message_id_raw_len);
  op->q.data = msg->data;
  op->q.len = msg->len;
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) {
    op->q.data = NULL; /* still the caller's */
    free_queued_members(&op->q);
    free(op->reply_to);
    free(op);
  }
  return rc;
}

int wd_store_queue_append(wd_store_t *s, const char *device_id, wd_store_enqueue_t *msg, uint32_t default_limit,
                          wd_store_enqueue_done_fn done, void *ctx) {
  return submit_enqueue(s, device_id, false, msg, default_limit, done, ctx);
}

int wd_store_group_enqueue(wd_store_t *s, const char *group, wd_store_enqueue_t *msg, uint32_t default_limit,
                           wd_store_enqueue_done_fn done, void *ctx) {
  return submit_enqueue(s, group, true, msg, default_limit, done, ctx);
}

/* ---------------------------------------------------------------- settle */

/* A failed delivery: counted, and dead-lettered at the limit. */
static int failed(wd_store_t *s, MDB_txn *txn, const char *device, view_t *view, int64_t now) {
  view->q.delivery_count++;
  view->flags &= (uint8_t)~FLAG_DELIVERED;
  if (view->q.delivery_count >= s->max_delivery_count)
    return dead(s, txn, device, view, "delivery-count-exceeded", "delivery-count-exceeded", ST_DEADLETTERED, now);
  return put_record(s, txn, device, view);
}

static int settle_in(wd_store_t *s, MDB_txn *txn, const char *device, view_t *view, wd_settle_t how, int64_t now) {
  int rc;
  switch (how) {
    case WD_SETTLE_DELIVERED:
      if (view->flags & FLAG_DELIVERED) return WD_OK;
      view->flags |= FLAG_DELIVERED;
      if ((rc = put_record(s, txn, device, view)) < 0) return rc;
      return status_set(s, txn, device, &view->q, ST_DELIVERED, NULL, now);
    case WD_SETTLE_COMPLETED:
    case WD_SETTLE_REJECTED: {
      bool ok = how == WD_SETTLE_COMPLETED;
      if ((rc = feedback(s, txn, device, &view->q, ok ? "completed" : "rejected", now)) < 0) return rc;
      if ((rc = status_set(s, txn, device, &view->q, ok ? ST_COMPLETED : ST_REJECTED, NULL, now)) < 0) return rc;
      return remove_record(s, txn, device, view);
    }
    case WD_SETTLE_RELEASED:
      view->flags &= (uint8_t)~FLAG_DELIVERED;
      return put_record(s, txn, device, view);
    case WD_SETTLE_FAILED: return failed(s, txn, device, view, now);
    case WD_SETTLE_UNDELIVERABLE:
      return dead(s, txn, device, view, "undeliverable", "undeliverable", ST_DEADLETTERED, now);
  }
  return WD_ERR_INVALID;
}

static int get_view(wd_store_t *s, MDB_txn *txn, const char *device, uint64_t seq, view_t *view) {
  uint8_t key[WD_ID_MAX + 9];
  MDB_val k = {queue_key(key, device, seq), key}, v;
  int rc = mdb_get(txn, s->dbi_queues, &k, &v);
  if (rc) return wd_store__map_rc(rc);
  return decode(&v, seq, view);
}

typedef struct {
  wd_store__op_t base;
  char device[WD_ID_MAX + 1];
  uint64_t seq;
  wd_settle_t how;
  bool recover; /* every delivered-unsettled message of the device */
  wd_store_done_fn done;
  void *ctx;
} settle_op_t;

static int apply_recover(wd_store_t *s, MDB_txn *txn, settle_op_t *op) {
  /* In rounds: settling writes to the DBI the cursor walks, so collect first.
     Each round clears the flags it found, so the next finds only the rest. */
  uint64_t seqs[256];
  int64_t now = wd_now_ms();
  size_t n;
  do {
    n = 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->dbi_queues, &cur);
    if (rc) return wd_store__map_rc(rc);
    uint8_t key[WD_ID_MAX + 9];
    size_t plen = queue_key(key, op->device, 0) - 8;
    MDB_val k = {plen + 8, key}, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == MDB_SUCCESS && n < 256;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (k.mv_size != plen + 8 || memcmp(k.mv_data, key, plen) != 0) break;
      const uint8_t *p = v.mv_data;
      if (v.mv_size > 2 && (p[2] & FLAG_DELIVERED)) seqs[n++] = wd_store__be_u64((uint8_t *)k.mv_data + plen);
    }
    mdb_cursor_close(cur);
    for (size_t i = 0; i < n; i++) {
      view_t view;
      if ((rc = get_view(s, txn, op->device, seqs[i], &view)) < 0) return rc;
      if ((rc = failed(s, txn, op->device, &view, now)) < 0) return rc;
    }
  } while (n == 256);
  return WD_OK;
}

static int apply_settle(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  settle_op_t *op = (settle_op_t *)base;
  if (op->recover) return apply_recover(s, txn, op);
  view_t view;
  int rc = get_view(s, txn, op->device, op->seq, &view);
  if (rc < 0) return rc;
  return settle_in(s, txn, op->device, &view, op->how, wd_now_ms());
}

static void complete_settle(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  settle_op_t *op = (settle_op_t *)base;
  if (op->done) op->done(op->ctx, rc);
  free(op);
}

static int submit_settle(wd_store_t *s, const char *device, uint64_t seq, wd_settle_t how, bool recover,
                         wd_store_done_fn done, void *ctx) {
  if (!wd_id_valid(device)) return WD_ERR_INVALID;
  settle_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_settle;
  op->base.complete = complete_settle;
  snprintf(op->device, sizeof op->device, "%s", device);
  op->seq = seq;
  op->how = how;
  op->recover = recover;
  op->done = done;
  op->ctx = ctx;
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) free(op);
  return rc;
}

int wd_store_queue_settle(wd_store_t *s, const char *device_id, uint64_t seq, wd_settle_t how, wd_store_done_fn done,
                          void *ctx) {
  return submit_settle(s, device_id, seq, how, false, done, ctx);
}

int wd_store_queue_recover(wd_store_t *s, const char *device_id, wd_store_done_fn done, void *ctx) {
  return submit_settle(s, device_id, 0, WD_SETTLE_FAILED, true, done, ctx);
}

/* ----------------------------------------------------------------- sweep */

/* Expires what is due, a bounded number per commit. Runs as the first op of a batch. */
static int apply_sweep(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  (void)base;
  int64_t now = wd_now_ms();
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_expiry, &cur);
  if (rc) return wd_store__map_rc(rc);
  typedef struct {
    uint8_t kind;
    char device[WD_ID_MAX + 1];
    uint8_t x[MSGID_MAX + 1];
    size_t xlen;
    int64_t when;
  } due_t;
  due_t *due = malloc(SWEEP_PER_COMMIT * sizeof *due);
  if (!due) {
    mdb_cursor_close(cur);
    return WD_ERR_NOMEM;
  }
  size_t n = 0;
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS && n < SWEEP_PER_COMMIT;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    const uint8_t *p = k.mv_data;
    if (k.mv_size < 11) continue;
    int64_t when = (int64_t)wd_store__be_u64(p);
    if (when > now) break;
    const uint8_t *zero = memchr(p + 9, 0, k.mv_size - 9);
    size_t dlen = zero ? (size_t)(zero - p - 9) : 0;
    size_t xlen = zero ? k.mv_size - 10 - dlen : 0;
    if (!zero || dlen == 0 || dlen > WD_ID_MAX || xlen > MSGID_MAX) continue;
    due_t *d = &due[n++];
    d->kind = p[8];
    d->when = when;
    memcpy(d->device, p + 9, dlen);
    d->device[dlen] = '\0';
    memcpy(d->x, zero + 1, xlen);
    d->x[xlen] = 0;
    d->xlen = xlen;
  }
  mdb_cursor_close(cur);
  int err = (rc == MDB_SUCCESS || rc == MDB_NOTFOUND) ? WD_OK : wd_store__map_rc(rc);
  for (size_t i = 0; i < n && err == WD_OK; i++) {
    due_t *d = &due[i];
    if (d->kind == EXPIRY_MESSAGE && d->xlen == 8) {
      view_t view;
      err = get_view(s, txn, d->device, wd_store__be_u64(d->x), &view);
      if (err == WD_OK) err = dead(s, txn, d->device, &view, "expired", "expired", ST_EXPIRED, now);
      if (err == WD_ERR_NOT_FOUND) err = WD_OK;
    } else if (d->kind == EXPIRY_STATUS) {
      uint8_t key[WD_ID_MAX + 1 + MSGID_MAX];
      MDB_val sk = {status_key(key, d->device, (const char *)d->x), key};
      rc = mdb_del(txn, s->dbi_commands, &sk, NULL);
      err = rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
    }
    if (err == WD_OK) err = expiry_del(s, txn, d->when, d->kind, d->device, d->x, d->xlen);
  }
  free(due);
  if (err < 0) return err;
  /* The next wake-up: the earliest entry left. */
  if ((rc = mdb_cursor_open(txn, s->dbi_expiry, &cur))) return wd_store__map_rc(rc);
  rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  s->next_expiry_ms = rc == MDB_SUCCESS && k.mv_size >= 8 ? (int64_t)wd_store__be_u64(k.mv_data) : INT64_MAX;
  mdb_cursor_close(cur);
  return WD_OK;
}

static void complete_sweep(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  if (rc < 0 && rc != WD_ERR_SHUTDOWN) wd_log("store", WD_LOG_WARNING, "expiry sweep failed: %s", wd_err_str(rc));
  free(base);
}

void wd_store__sweep(wd_store_t *s) {
  wd_store__op_t *op = calloc(1, sizeof *op);
  if (!op) return;
  op->apply = apply_sweep;
  op->complete = complete_sweep;
  /* Ahead of the queue: it runs in the writer's next batch. */
  pthread_mutex_lock(&s->lock);
  op->next = s->head;
  s->head = op;
  if (!s->tail) s->tail = op;
  pthread_mutex_unlock(&s->lock);
  s->next_expiry_ms = INT64_MAX; /* set again by the sweep */
}

/* ------------------------------------------------------------ load, drop */

/* The gauge of queued messages starts from what the store holds. */
static int count_queued(wd_store_t *s, MDB_txn *txn) {
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, s->dbi_queue_meta, &cur);
  if (rc) return wd_store__map_rc(rc);
  MDB_val k, v;
  int64_t total = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    if (v.mv_size == 12) total += wd_store__be_u32((uint8_t *)v.mv_data + 8);
  mdb_cursor_close(cur);
  atomic_store(&wd_metrics.queued, total);
  return WD_OK;
}

int wd_store__queues_load(wd_store_t *s, MDB_txn *txn) {
  int qrc = count_queued(s, txn);
  if (qrc < 0) return qrc;
  MDB_val k = {sizeof blob_key - 1, (void *)blob_key}, v;
  int rc = mdb_get(txn, s->dbi_meta, &k, &v);
  s->next_blob_id = rc == MDB_SUCCESS && v.mv_size == 8 ? wd_store__be_u64(v.mv_data) : 1;
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, s->dbi_expiry, &cur))) return wd_store__map_rc(rc);
  rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  s->next_expiry_ms = rc == MDB_SUCCESS && k.mv_size >= 8 ? (int64_t)wd_store__be_u64(k.mv_data) : INT64_MAX;
  mdb_cursor_close(cur);
  return rc == MDB_SUCCESS || rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
}

/* Empties a device's queue: feedback "purged" for each command. */
static int purge(wd_store_t *s, MDB_txn *txn, const char *id, uint64_t *count) {
  int64_t now = wd_now_ms();
  *count = 0;
  for (;;) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->dbi_queues, &cur);
    if (rc) return wd_store__map_rc(rc);
    uint8_t key[WD_ID_MAX + 9];
    size_t plen = queue_key(key, id, 0) - 8;
    MDB_val k = {plen + 8, key}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    bool found = rc == MDB_SUCCESS && k.mv_size == plen + 8 && memcmp(k.mv_data, key, plen) == 0;
    uint64_t seq = found ? wd_store__be_u64((uint8_t *)k.mv_data + plen) : 0;
    mdb_cursor_close(cur);
    if (!found) return WD_OK;
    view_t view;
    if ((rc = get_view(s, txn, id, seq, &view)) < 0 || (rc = load_blob(s, txn, &view)) < 0) return rc;
    if ((rc = feedback(s, txn, id, &view.q, "purged", now)) < 0 ||
        (rc = status_set(s, txn, id, &view.q, ST_PURGED, NULL, now)) < 0 ||
        (rc = remove_record(s, txn, id, &view)) < 0)
      return rc;
    ++*count;
  }
}

int wd_store__queue_drop_device(wd_store_t *s, MDB_txn *txn, const char *id) {
  uint64_t count;
  int rc = purge(s, txn, id, &count);
  if (rc < 0) return rc;
  MDB_val k = {strlen(id), (void *)id};
  rc = mdb_del(txn, s->dbi_queue_meta, &k, NULL);
  return rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
}

typedef struct {
  wd_store__op_t base;
  char device[WD_ID_MAX + 1];
  uint64_t count;
  wd_store_enqueue_done_fn done;
  void *ctx;
} purge_op_t;

static int apply_purge(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  purge_op_t *op = (purge_op_t *)base;
  wd_device_t *d = NULL;
  int rc = wd_store__device_get_in(s, txn, op->device, &d);
  wd_device_free(d);
  return rc < 0 ? rc : purge(s, txn, op->device, &op->count);
}

static void complete_purge(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  purge_op_t *op = (purge_op_t *)base;
  op->done(op->ctx, rc, rc == WD_OK ? op->count : 0);
  free(op);
}

int wd_store_queue_purge(wd_store_t *s, const char *device_id, wd_store_enqueue_done_fn done, void *ctx) {
  if (!wd_id_valid(device_id)) return WD_ERR_NOT_FOUND;
  purge_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_purge;
  op->base.complete = complete_purge;
  snprintf(op->device, sizeof op->device, "%s", device_id);
  op->done = done;
  op->ctx = ctx;
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) free(op);
  return rc;
}

int wd_store__members_update(wd_store_t *s, MDB_txn *txn, const char *id, const char *old_groups,
                             const char *new_groups) {
  /* Remove memberships that went away, add the new ones; both lists are space-separated ids. */
  const char *lists[2] = {old_groups, new_groups};
  for (int pass = 0; pass < 2; pass++) {
    for (const char *g = lists[pass]; *g;) {
      size_t len = strcspn(g, " ");
      if (len > 0 && len <= WD_ID_MAX) {
        uint8_t key[2 * WD_ID_MAX + 2];
        memcpy(key, g, len);
        key[len] = 0;
        size_t idlen = strlen(id);
        memcpy(key + len + 1, id, idlen);
        MDB_val k = {len + 1 + idlen, key}, v = {0, ""};
        int rc = pass == 0 ? mdb_del(txn, s->dbi_members, &k, NULL) : mdb_put(txn, s->dbi_members, &k, &v, 0);
        if (rc && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
      }
      g += len;
      while (*g == ' ') g++;
    }
  }
  return WD_OK;
}

/* ------------------------------------------------------------------ reads */

void wd_store_queued_free(wd_store_queued_t *q) {
  if (!q) return;
  free_queued_members(q);
  memset(q, 0, sizeof *q);
}

void wd_store_set_codec(wd_store_t *s, const wd_store_codec_t *codec, uint32_t max_delivery_count) {
  s->codec = *codec;
  s->max_delivery_count = max_delivery_count ? max_delivery_count : 10;
  atomic_store(&s->sweeping, true);
  pthread_mutex_lock(&s->lock);
  pthread_cond_signal(&s->wake); /* what expired while warden was down is due now */
  pthread_mutex_unlock(&s->lock);
}

static bool skipped(uint64_t seq, const uint64_t *skip, size_t n_skip) {
  for (size_t i = 0; i < n_skip; i++)
    if (skip[i] == seq) return true;
  return false;
}

int wd_store_queue_read(wd_store_t *s, const char *device_id, const uint64_t *skip, size_t n_skip, size_t max,
                        int64_t now_ms, wd_store_queued_t **out) {
  *out = NULL;
  if (!wd_id_valid(device_id) || max == 0) return 0;
  /* `max` is a peer's link credit, up to 2^32 - 1: the list grows with what
     the queue holds, never to what the credit would allow. */
  wd_store_queued_t *list = NULL;
  size_t cap = 0;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  MDB_cursor *cur;
  if ((rc = mdb_cursor_open(txn, s->dbi_queues, &cur))) {
    mdb_txn_abort(txn);
    return wd_store__map_rc(rc);
  }
  uint8_t key[WD_ID_MAX + 9];
  size_t plen = queue_key(key, device_id, 0) - 8;
  MDB_val k = {plen + 8, key}, v;
  size_t n = 0;
  int err = WD_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == MDB_SUCCESS && n < max;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != plen + 8 || memcmp(k.mv_data, key, plen) != 0) break;
    uint64_t seq = wd_store__be_u64((uint8_t *)k.mv_data + plen);
    if (skipped(seq, skip, n_skip)) continue;
    view_t view;
    if ((err = decode(&v, seq, &view)) < 0 || (err = load_blob(s, txn, &view)) < 0) break;
    if (view.q.expiry_ms <= now_ms) continue; /* an expired message is never delivered */
    if (n == cap) {
      size_t grown = cap ? cap * 2 : 16;
      wd_store_queued_t *bigger = realloc(list, grown * sizeof *list);
      if (!bigger) {
        err = WD_ERR_NOMEM;
        break;
      }
      list = bigger;
      cap = grown;
    }
    wd_store_queued_t *q = &list[n];
    *q = view.q;
    q->message_id = strdup(view.msgid);
    q->message_id_raw = malloc(view.q.message_id_raw_len ? view.q.message_id_raw_len : 1);
    q->data = malloc(view.q.len ? view.q.len : 1);
    n++;
    if (!q->message_id || !q->message_id_raw || !q->data) {
      err = WD_ERR_NOMEM;
      break;
    }
    memcpy(q->message_id_raw, view.q.message_id_raw, view.q.message_id_raw_len);
    memcpy(q->data, view.q.data, view.q.len);
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (err < 0) {
    for (size_t i = 0; i < n; i++) wd_store_queued_free(&list[i]);
    free(list);
    return err;
  }
  *out = list; /* NULL when nothing was read */
  return (int)n;
}

int wd_store_queue_depth(wd_store_t *s, const char *device_id, uint32_t *depth) {
  if (!wd_id_valid(device_id)) return WD_ERR_NOT_FOUND;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  uint64_t next_seq;
  rc = meta_get(s, txn, device_id, &next_seq, depth);
  mdb_txn_abort(txn);
  return rc;
}

int wd_store_command_reply_to(wd_store_t *s, const char *device_id, const char *message_id,
                              char out[WD_REPLY_TO_MAX + 1]) {
  wd_store_status_t st;
  int rc = wd_store_command_status(s, device_id, message_id, &st);
  if (rc < 0) return rc;
  snprintf(out, WD_REPLY_TO_MAX + 1, "%s", st.reply_to[0] ? st.reply_to : "responses");
  wd_store_status_fini(&st);
  return WD_OK;
}

static const char *const state_names[] = {"", "queued", "delivered", "completed", "rejected", "expired",
                                          "dead-lettered", "purged"};

int wd_store_command_status(wd_store_t *s, const char *device_id, const char *message_id, wd_store_status_t *out) {
  memset(out, 0, sizeof *out);
  if (strlen(message_id) > MSGID_MAX || !message_id[0] || !wd_id_valid(device_id)) return WD_ERR_NOT_FOUND;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  uint8_t key[WD_ID_MAX + 1 + MSGID_MAX];
  MDB_val k = {status_key(key, device_id, message_id), key}, v;
  status_t st;
  rc = wd_store__map_rc(mdb_get(txn, s->dbi_commands, &k, &v));
  if (rc == WD_OK) rc = status_decode(&v, &st);
  if (rc == WD_OK) {
    snprintf(out->state, sizeof out->state, "%s", st.state < 8 ? state_names[st.state] : "");
    out->queued_ms = st.queued_ms;
    out->delivered_ms = st.delivered_ms;
    out->final_ms = st.final_ms;
    out->expires_ms = st.expires_ms;
    out->responded_ms = st.responded_ms;
    snprintf(out->reply_to, sizeof out->reply_to, "%s", st.reply_to);
    snprintf(out->response_type, sizeof out->response_type, "%s", st.content_type);
    if (st.responded_ms) {
      out->response = malloc(st.response_len ? st.response_len : 1);
      if (!out->response) {
        rc = WD_ERR_NOMEM;
      } else {
        memcpy(out->response, st.response, st.response_len);
        out->response_len = st.response_len;
      }
    }
  }
  mdb_txn_abort(txn);
  return rc;
}

void wd_store_status_fini(wd_store_status_t *st) {
  free(st->response);
  st->response = NULL;
}

typedef struct {
  wd_store__op_t base;
  char device[WD_ID_MAX + 1];
  char *message_id;
  char content_type[256];
  void *body;
  size_t len;
  wd_store_done_fn done;
  void *ctx;
} respond_op_t;

static int apply_respond(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  respond_op_t *op = (respond_op_t *)base;
  uint8_t key[WD_ID_MAX + 1 + MSGID_MAX];
  MDB_val k = {status_key(key, op->device, op->message_id), key}, v;
  int rc = mdb_get(txn, s->dbi_commands, &k, &v);
  if (rc) return wd_store__map_rc(rc);
  status_t st;
  if ((rc = status_decode(&v, &st)) < 0) return rc;
  st.responded_ms = wd_now_ms();
  snprintf(st.content_type, sizeof st.content_type, "%s", op->content_type);
  st.response = op->body;
  st.response_len = op->len;
  return status_put(s, txn, &k, &st);
}

static void complete_respond(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  respond_op_t *op = (respond_op_t *)base;
  if (op->done) op->done(op->ctx, rc);
  free(op->message_id);
  free(op->body);
  free(op);
}

int wd_store_command_respond(wd_store_t *s, const char *device_id, const char *message_id, const char *content_type,
                             const void *body, size_t len, wd_store_done_fn done, void *ctx) {
  if (!wd_id_valid(device_id) || !message_id[0] || strlen(message_id) > MSGID_MAX) return WD_ERR_INVALID;
  if (len > RESPONSE_MAX) len = RESPONSE_MAX; /* the status keeps the start of a large response */
  respond_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_respond;
  op->base.complete = complete_respond;
  snprintf(op->device, sizeof op->device, "%s", device_id);
  snprintf(op->content_type, sizeof op->content_type, "%s", content_type ? content_type : "");
  op->message_id = strdup(message_id);
  op->body = malloc(len ? len : 1);
  op->len = len;
  op->done = done;
  op->ctx = ctx;
  if (!op->message_id || !op->body) {
    op->done = NULL; /* an error return never runs the callback */
    complete_respond(s, &op->base, WD_ERR_NOMEM);
    return WD_ERR_NOMEM;
  }
  if (len) memcpy(op->body, body, len);
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) {
    op->done = NULL;
    complete_respond(s, &op->base, rc);
  }
  return rc;
}

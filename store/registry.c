/* The device registry: one record per device, keyed by id, and an index from
 * certificate thumbprint to device id for SASL EXTERNAL.
 *
 * Record layout (version 1), integers big-endian:
 *   u8 version | u8 flags (1 enabled, 2 has_key) | u32 queue_limit | u64 generation
 *   | u64 created_ms | u64 updated_ms | 32 key bytes | u8 len + thumbprint
 *   | u16 len + groups | u16 len + peers */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "store/internal.h"

#define RECORD_VERSION 1
#define FLAG_ENABLED 1
#define FLAG_HAS_KEY 2

wd_device_t *wd_device_new(void) {
  wd_device_t *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->groups = strdup("");
  d->peers = strdup("");
  if (!d->groups || !d->peers) {
    wd_device_free(d);
    return NULL;
  }
  d->enabled = true;
  return d;
}

void wd_device_free(wd_device_t *d) {
  if (!d) return;
  free(d->groups);
  free(d->peers);
  explicit_bzero(d->key, sizeof d->key);
  free(d);
}

wd_device_t *wd_device_dup(const wd_device_t *src) {
  wd_device_t *d = malloc(sizeof *d);
  if (!d) return NULL;
  *d = *src;
  d->groups = strdup(src->groups ? src->groups : "");
  d->peers = strdup(src->peers ? src->peers : "");
  if (!d->groups || !d->peers) {
    wd_device_free(d);
    return NULL;
  }
  return d;
}

static size_t record_size(const wd_device_t *d) {
  return 1 + 1 + 4 + 8 + 8 + 8 + WD_KEY_BYTES + 1 + strlen(d->thumbprint) + 2 + strlen(d->groups) + 2 +
         strlen(d->peers);
}

static void put_u16(uint8_t **p, uint16_t v) {
  (*p)[0] = (uint8_t)(v >> 8);
  (*p)[1] = (uint8_t)v;
  *p += 2;
}

static void put_bytes(uint8_t **p, const void *b, size_t n) {
  memcpy(*p, b, n);
  *p += n;
}

static void encode(const wd_device_t *d, uint8_t *p) {
  *p++ = RECORD_VERSION;
  *p++ = (uint8_t)((d->enabled ? FLAG_ENABLED : 0) | (d->has_key ? FLAG_HAS_KEY : 0));
  uint8_t u64[8];
  wd_store__u64_be(u64, d->queue_limit);
  put_bytes(&p, u64 + 4, 4);
  wd_store__u64_be(u64, d->generation);
  put_bytes(&p, u64, 8);
  wd_store__u64_be(u64, (uint64_t)d->created_ms);
  put_bytes(&p, u64, 8);
  wd_store__u64_be(u64, (uint64_t)d->updated_ms);
  put_bytes(&p, u64, 8);
  put_bytes(&p, d->key, WD_KEY_BYTES);
  size_t n = strlen(d->thumbprint);
  *p++ = (uint8_t)n;
  put_bytes(&p, d->thumbprint, n);
  n = strlen(d->groups);
  put_u16(&p, (uint16_t)n);
  put_bytes(&p, d->groups, n);
  n = strlen(d->peers);
  put_u16(&p, (uint16_t)n);
  put_bytes(&p, d->peers, n);
}

/* Reads a length-prefixed string; returns NULL if it overruns the record. */
static char *take_string(const uint8_t **p, const uint8_t *end, size_t len_bytes) {
  if ((size_t)(end - *p) < len_bytes) return NULL;
  size_t n = len_bytes == 1 ? (*p)[0] : ((size_t)(*p)[0] << 8 | (*p)[1]);
  *p += len_bytes;
  if ((size_t)(end - *p) < n) return NULL;
  char *s = strndup((const char *)*p, n);
  *p += n;
  return s;
}

static int decode(const char *id, const MDB_val *v, wd_device_t **out) {
  const uint8_t *p = v->mv_data, *end = p + v->mv_size;
  const size_t fixed = 1 + 1 + 4 + 8 + 8 + 8 + WD_KEY_BYTES;
  if (v->mv_size < fixed || p[0] != RECORD_VERSION) return WD_ERR_CORRUPT;
  wd_device_t *d = calloc(1, sizeof *d);
  if (!d) return WD_ERR_NOMEM;
  snprintf(d->id, sizeof d->id, "%s", id);
  d->enabled = p[1] & FLAG_ENABLED;
  d->has_key = p[1] & FLAG_HAS_KEY;
  d->queue_limit = (uint32_t)p[2] << 24 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 8 | p[5];
  d->generation = wd_store__be_u64(p + 6);
  d->created_ms = (int64_t)wd_store__be_u64(p + 14);
  d->updated_ms = (int64_t)wd_store__be_u64(p + 22);
  memcpy(d->key, p + 30, WD_KEY_BYTES);
  p += fixed;
  char *thumb = take_string(&p, end, 1);
  d->groups = take_string(&p, end, 2);
  d->peers = take_string(&p, end, 2);
  if (!thumb || !d->groups || !d->peers || strlen(thumb) > WD_THUMBPRINT_HEX) {
    free(thumb);
    wd_device_free(d);
    return WD_ERR_CORRUPT;
  }
  memcpy(d->thumbprint, thumb, strlen(thumb) + 1);
  free(thumb);
  *out = d;
  return WD_OK;
}

int wd_store__device_get_in(wd_store_t *s, MDB_txn *txn, const char *id, wd_device_t **out) {
  MDB_val k = {strlen(id), (void *)id}, v;
  int rc = mdb_get(txn, s->dbi_devices, &k, &v);
  if (rc != MDB_SUCCESS) return wd_store__map_rc(rc);
  return decode(id, &v, out);
}

int wd_store_device_get(wd_store_t *s, const char *id, wd_device_t **out) {
  if (!wd_id_valid(id)) return WD_ERR_NOT_FOUND;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  rc = wd_store__device_get_in(s, txn, id, out);
  mdb_txn_abort(txn);
  return rc;
}

int wd_store_device_by_thumbprint(wd_store_t *s, const char *thumbprint, char id_out[WD_ID_MAX + 1]) {
  if (!wd_thumbprint_valid(thumbprint)) return WD_ERR_NOT_FOUND;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  MDB_val k = {strlen(thumbprint), (void *)thumbprint}, v;
  rc = wd_store__map_rc(mdb_get(txn, s->dbi_thumbprints, &k, &v));
  if (rc == WD_OK) {
    if (v.mv_size > WD_ID_MAX) {
      rc = WD_ERR_CORRUPT;
    } else {
      memcpy(id_out, v.mv_data, v.mv_size);
      id_out[v.mv_size] = '\0';
    }
  }
  mdb_txn_abort(txn);
  return rc;
}

int wd_store_device_list(wd_store_t *s, const char *after, size_t limit, wd_device_t ***out) {
  wd_device_t **list = calloc(limit ? limit : 1, sizeof *list);
  if (!list) return WD_ERR_NOMEM;
  MDB_txn *txn;
  MDB_cursor *cur;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) {
    free(list);
    return wd_store__map_rc(rc);
  }
  rc = mdb_cursor_open(txn, s->dbi_devices, &cur);
  if (rc) {
    mdb_txn_abort(txn);
    free(list);
    return wd_store__map_rc(rc);
  }
  MDB_val k, v;
  size_t after_len = after ? strlen(after) : 0;
  if (after_len) {
    k = (MDB_val){after_len, (void *)after};
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == MDB_SUCCESS && k.mv_size == after_len && memcmp(k.mv_data, after, after_len) == 0)
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  } else {
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  }
  size_t n = 0;
  int err = WD_OK;
  while (rc == MDB_SUCCESS && n < limit) {
    char id[WD_ID_MAX + 1];
    if (k.mv_size > WD_ID_MAX) {
      err = WD_ERR_CORRUPT;
      break;
    }
    memcpy(id, k.mv_data, k.mv_size);
    id[k.mv_size] = '\0';
    err = decode(id, &v, &list[n]);
    if (err < 0) break;
    n++;
    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (err < 0) {
    for (size_t i = 0; i < n; i++) wd_device_free(list[i]);
    free(list);
    return err;
  }
  *out = list;
  return (int)n;
}

typedef struct {
  wd_store__op_t base;
  wd_device_op_t op;
  wd_device_t *change; /* owned copy */
  wd_device_t *after;  /* the committed record, owned */
  wd_store_device_done_fn done;
  void *ctx;
} device_op_t;

static int put_record(wd_store_t *s, MDB_txn *txn, const wd_device_t *d) {
  MDB_val k = {strlen(d->id), (void *)d->id}, v = {record_size(d), NULL};
  int rc = mdb_put(txn, s->dbi_devices, &k, &v, MDB_RESERVE);
  if (rc) return wd_store__map_rc(rc);
  encode(d, v.mv_data);
  return WD_OK;
}

/* Points `thumbprint` at `id`, refusing a thumbprint another device owns. */
static int claim_thumbprint(wd_store_t *s, MDB_txn *txn, const char *thumbprint, const char *id) {
  MDB_val k = {strlen(thumbprint), (void *)thumbprint}, v;
  int rc = mdb_get(txn, s->dbi_thumbprints, &k, &v);
  if (rc == MDB_SUCCESS) {
    bool mine = v.mv_size == strlen(id) && memcmp(v.mv_data, id, v.mv_size) == 0;
    return mine ? WD_OK : WD_ERR_EXISTS;
  }
  if (rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  v = (MDB_val){strlen(id), (void *)id};
  return wd_store__map_rc(mdb_put(txn, s->dbi_thumbprints, &k, &v, 0));
}

static int drop_thumbprint(wd_store_t *s, MDB_txn *txn, const char *thumbprint) {
  if (!thumbprint[0]) return WD_OK;
  MDB_val k = {strlen(thumbprint), (void *)thumbprint};
  int rc = mdb_del(txn, s->dbi_thumbprints, &k, NULL);
  return rc == MDB_NOTFOUND ? WD_OK : wd_store__map_rc(rc);
}

static int replace_string(char **dst, const char *src) {
  char *copy = strdup(src);
  if (!copy) return WD_ERR_NOMEM;
  free(*dst);
  *dst = copy;
  return WD_OK;
}

static const char generation_key[] = "device_generation";

/* The next registry generation, store-wide, so that a device deleted and
 * created again never repeats a generation a connection was admitted with. */
static int next_generation(wd_store_t *s, MDB_txn *txn, uint64_t *out) {
  MDB_val k = {sizeof generation_key - 1, (void *)generation_key}, v;
  int rc = mdb_get(txn, s->dbi_meta, &k, &v);
  uint64_t g = rc == MDB_SUCCESS && v.mv_size == 8 ? wd_store__be_u64(v.mv_data) : 0;
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return wd_store__map_rc(rc);
  uint8_t buf[8];
  wd_store__u64_be(buf, ++g);
  v = (MDB_val){8, buf};
  *out = g;
  return wd_store__map_rc(mdb_put(txn, s->dbi_meta, &k, &v, 0));
}

static int apply_device(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  device_op_t *op = (device_op_t *)base;
  const wd_device_t *chg = op->change;
  wd_device_t *d = NULL;
  int rc = wd_store__device_get_in(s, txn, chg->id, &d);
  int64_t now = wd_now_ms();

  if (op->op == WD_DEVICE_CREATE) {
    if (rc == WD_OK) {
      wd_device_free(d);
      return WD_ERR_EXISTS;
    }
    if (rc != WD_ERR_NOT_FOUND) return rc;
    if (!(d = wd_device_dup(chg))) return WD_ERR_NOMEM;
    if ((rc = next_generation(s, txn, &d->generation)) < 0) goto done;
    d->created_ms = d->updated_ms = now;
    if (d->thumbprint[0] && (rc = claim_thumbprint(s, txn, d->thumbprint, d->id)) < 0) goto done;
    if ((rc = wd_store__members_update(s, txn, d->id, "", d->groups)) < 0) goto done;
    rc = put_record(s, txn, d);
    goto done;
  }
  if (rc < 0) return rc;

  switch (op->op) {
    case WD_DEVICE_UPDATE:
      if (strcmp(d->thumbprint, chg->thumbprint) != 0) {
        if (chg->thumbprint[0] && (rc = claim_thumbprint(s, txn, chg->thumbprint, d->id)) < 0) goto done;
        if ((rc = drop_thumbprint(s, txn, d->thumbprint)) < 0) goto done;
        memcpy(d->thumbprint, chg->thumbprint, sizeof d->thumbprint);
      }
      if ((rc = wd_store__members_update(s, txn, d->id, d->groups, chg->groups)) < 0) goto done;
      if ((rc = replace_string(&d->groups, chg->groups)) < 0 || (rc = replace_string(&d->peers, chg->peers)) < 0)
        goto done;
      d->queue_limit = chg->queue_limit;
      if (!chg->has_key) {
        d->has_key = false;
        explicit_bzero(d->key, sizeof d->key);
      }
      break;
    case WD_DEVICE_ENABLE: d->enabled = true; break;
    case WD_DEVICE_DISABLE: d->enabled = false; break;
    case WD_DEVICE_ROTATE:
      memcpy(d->key, chg->key, WD_KEY_BYTES);
      d->has_key = true;
      break;
    case WD_DEVICE_DELETE: {
      MDB_val k = {strlen(d->id), d->id};
      MDB_val pk = {strlen(d->id), d->id};
      int prc = mdb_del(txn, s->dbi_presence, &pk, NULL);
      if (prc && prc != MDB_NOTFOUND) {
        rc = wd_store__map_rc(prc);
        goto done;
      }
      if ((rc = drop_thumbprint(s, txn, d->thumbprint)) < 0 ||
          (rc = wd_store__members_update(s, txn, d->id, d->groups, "")) < 0 ||
          (rc = wd_store__queue_drop_device(s, txn, d->id)) < 0)
        goto done;
      rc = wd_store__map_rc(mdb_del(txn, s->dbi_devices, &k, NULL));
      wd_device_free(d);
      return rc;
    }
    case WD_DEVICE_CREATE: break; /* handled above */
  }
  if ((rc = next_generation(s, txn, &d->generation)) < 0) goto done;
  d->updated_ms = now;
  rc = put_record(s, txn, d);
done:
  if (rc == WD_OK)
    op->after = d;
  else
    wd_device_free(d);
  return rc;
}

static void complete_device(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  device_op_t *op = (device_op_t *)base;
  op->done(op->ctx, rc, rc == WD_OK ? op->after : NULL);
  wd_device_free(op->after);
  wd_device_free(op->change);
  free(op);
}

int wd_store_device_write(wd_store_t *s, wd_device_op_t kind, const wd_device_t *change,
                          wd_store_device_done_fn done, void *ctx) {
  if (!wd_id_valid(change->id)) return WD_ERR_INVALID;
  if (change->thumbprint[0] && !wd_thumbprint_valid(change->thumbprint)) return WD_ERR_INVALID;
  if (strlen(change->groups) > UINT16_MAX || strlen(change->peers) > UINT16_MAX) return WD_ERR_INVALID;
  device_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_device;
  op->base.complete = complete_device;
  op->op = kind;
  op->done = done;
  op->ctx = ctx;
  if (!(op->change = wd_device_dup(change))) {
    free(op);
    return WD_ERR_NOMEM;
  }
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) {
    wd_device_free(op->change);
    free(op);
  }
  return rc;
}

typedef struct {
  wd_store__op_t base;
  char device[WD_ID_MAX + 1];
  int64_t when_ms;
} presence_op_t;

static int apply_presence(wd_store_t *s, MDB_txn *txn, wd_store__op_t *base) {
  presence_op_t *op = (presence_op_t *)base;
  MDB_val k = {strlen(op->device), op->device}, v;
  /* Only for devices that still exist: a presence must not outlive its device. */
  if (mdb_get(txn, s->dbi_devices, &k, &v) != MDB_SUCCESS) return WD_OK;
  uint8_t buf[8];
  wd_store__u64_be(buf, (uint64_t)op->when_ms);
  v = (MDB_val){8, buf};
  return wd_store__map_rc(mdb_put(txn, s->dbi_presence, &k, &v, 0));
}

static void complete_presence(wd_store_t *s, wd_store__op_t *base, int rc) {
  (void)s;
  (void)rc;
  free(base);
}

int wd_store_presence_set(wd_store_t *s, const char *device_id, int64_t when_ms) {
  if (!wd_id_valid(device_id)) return WD_ERR_INVALID;
  presence_op_t *op = calloc(1, sizeof *op);
  if (!op) return WD_ERR_NOMEM;
  op->base.apply = apply_presence;
  op->base.complete = complete_presence;
  memcpy(op->device, device_id, strlen(device_id) + 1);
  op->when_ms = when_ms;
  int rc = wd_store__submit(s, &op->base);
  if (rc < 0) free(op);
  return rc;
}

int wd_store_presence_get(wd_store_t *s, const char *device_id, int64_t *when_ms) {
  if (!wd_id_valid(device_id)) return WD_ERR_NOT_FOUND;
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
  if (rc) return wd_store__map_rc(rc);
  MDB_val k = {strlen(device_id), (void *)device_id}, v;
  rc = wd_store__map_rc(mdb_get(txn, s->dbi_presence, &k, &v));
  if (rc == WD_OK) {
    if (v.mv_size == 8)
      *when_ms = (int64_t)wd_store__be_u64(v.mv_data);
    else
      rc = WD_ERR_CORRUPT;
  }
  mdb_txn_abort(txn);
  return rc;
}

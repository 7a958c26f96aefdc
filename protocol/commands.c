/* Commands and notifications: enqueued by services (or permitted peer
 * devices), held in each device's durable queue, delivered when the device
 * receives on `commands`, and reported on `feedback` as they complete, fail or
 * expire.
 *
 * A queued message is stored without its header; the header is rebuilt on
 * each delivery with the current delivery-count. Every outcome is written
 * before the device's delivery is settled, so a crash at any point delivers a
 * command again rather than losing it. */

#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/disposition.h>
#include <proton/message.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/internal.h"
#include "protocol/message.h"

#define RAW_ID_MAX 1024

/* ------------------------------------------------------------ message ids */

int wd_amqp__msgid_key(pn_msgid_t id, char *out, size_t cap) {
  switch (id.type) {
    case PN_STRING:
    case PN_SYMBOL: {
      pn_bytes_t b = id.u.as_bytes;
      if (b.size == 0 || b.size >= cap || memchr(b.start, 0, b.size)) return WD_ERR_INVALID;
      memcpy(out, b.start, b.size);
      out[b.size] = '\0';
      return WD_OK;
    }
    case PN_ULONG: snprintf(out, cap, "%llu", (unsigned long long)id.u.as_ulong); return WD_OK;
    case PN_UUID: {
      const uint8_t *u = (const uint8_t *)id.u.as_uuid.bytes;
      if (cap < 37) return WD_ERR_INVALID;
      snprintf(out, cap, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
               u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
      return WD_OK;
    }
    case PN_BINARY: {
      pn_bytes_t b = id.u.as_bytes;
      if (b.size == 0 || b.size * 2 >= cap) return WD_ERR_INVALID;
      for (size_t i = 0; i < b.size; i++) snprintf(out + 2 * i, 3, "%02x", (uint8_t)b.start[i]);
      return WD_OK;
    }
    default: return WD_ERR_INVALID;
  }
}

/* The id as encoded AMQP, so feedback can carry it back with its type. */
static int msgid_raw(pn_msgid_t id, uint8_t *out, size_t cap, size_t *len) {
  pn_data_t *d = pn_data(1);
  if (!d) return WD_ERR_NOMEM;
  int rc = pn_data_put_atom(d, id);
  ssize_t n = rc == 0 ? pn_data_encode(d, (char *)out, cap) : -1;
  pn_data_free(d);
  if (n < 0) return WD_ERR_INVALID;
  *len = (size_t)n;
  return WD_OK;
}

static void new_uuid(char out[37]) {
  uint8_t u[16];
  wd_random_bytes(u, sizeof u);
  u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);
  u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
           u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* --------------------------------------------------------------- enqueue */

typedef struct {
  wd_amqp_t *amqp;
  uint64_t conn_id;
  wd_link_ctx_t *lc;
  wd_inbound_t delivery;
  char target[WD_ID_MAX + 1];
  bool group;
  wd_metric_address_t metric;
  int rc;
} enqueue_job_t;

static const char *enqueue_condition(int rc, const char **description) {
  switch (rc) {
    case WD_ERR_NOT_FOUND: *description = "no such device or group"; return "amqp:not-found";
    case WD_ERR_DISABLED: *description = "the device is disabled"; return "amqp:precondition-failed";
    case WD_ERR_LIMIT: *description = "the device's queue is full"; return "amqp:resource-limit-exceeded";
    case WD_ERR_FULL: *description = "the store is full"; return "amqp:resource-limit-exceeded";
    case WD_ERR_BUSY: *description = "the store is nearly full; try again later"; return "amqp:resource-limit-exceeded";
    case WD_ERR_INVALID: *description = "invalid message"; return "amqp:invalid-field";
    case WD_ERR_SHUTDOWN: *description = "warden is shutting down"; return "amqp:connection:forced";
    default: *description = wd_err_str(rc); return "amqp:internal-error";
  }
}

static void enqueue_settled(wd_conn_t *c, void *arg, bool discard) {
  enqueue_job_t *j = arg;
  if (!discard) {
    wd_link_ctx_t *lc = j->lc;
    if (j->rc == WD_OK) wd_metric_add(&wd_metrics.messages_in[j->metric], 1);
    const char *description = NULL;
    const char *condition = j->rc == WD_OK ? NULL : enqueue_condition(j->rc, &description);
    wd_amqp__inbound_done_PT(c, &j->delivery, condition, description);
    if (!wd_amqp__link_unpin_PT(lc)) wd_amqp__top_up_PT(lc);
  }
  atomic_fetch_sub(&j->amqp->inflight_commits, 1);
  free(j);
}

static void on_enqueued(void *ctx, int rc, uint64_t count) {
  enqueue_job_t *j = ctx;
  j->rc = rc;
  if (rc == WD_OK) {
    if (j->group)
      wd_amqp__notify_all_devices(j->amqp);
    else
      wd_amqp__notify_device(j->amqp, j->target);
  }
  (void)count;
  wd_amqp__post(j->amqp, j->conn_id, enqueue_settled, j);
}

/* Where a message goes: the link's address, or (anonymous relay) its `to`. */
static int resolve_target(wd_conn_t *c, wd_link_ctx_t *lc, pn_message_t *m, wd_address_t *out, const char **why) {
  if (lc->addr.kind != WD_ADDR_ANONYMOUS) {
    *out = lc->addr;
    return WD_OK;
  }
  const char *to = pn_message_get_address(m);
  if (!to || !to[0]) {
    *why = "a message on the anonymous relay needs a `to` address";
    return WD_ERR_INVALID;
  }
  wd_principal_t who = {.is_device = c->who.is_device, .id = c->who.id, .scopes = c->who.scopes};
  int rc = wd_address_authorize(&who, WD_LINK_INBOUND, to, out, why);
  if (rc == WD_OK && !(out->kind == WD_ADDR_DEVICE_COMMANDS || out->kind == WD_ADDR_DEVICE_NOTIFICATIONS ||
                       out->kind == WD_ADDR_GROUP_NOTIFICATIONS)) {
    *why = "the anonymous relay takes commands and notifications only";
    return WD_ERR_DENIED;
  }
  return rc;
}

/* The reply-to a command's responses go to: "responses" or "responses/<name>". */
static void response_address(const char *reply_to, char out[WD_REPLY_TO_MAX + 1]) {
  if (reply_to && (strcmp(reply_to, "responses") == 0 ||
                   (strncmp(reply_to, "responses/", 10) == 0 && wd_id_valid(reply_to + 10))))
    snprintf(out, WD_REPLY_TO_MAX + 1, "%s", reply_to);
  else
    snprintf(out, WD_REPLY_TO_MAX + 1, "responses");
}

void wd_amqp__enqueue_PT(wd_link_ctx_t *lc, const wd_inbound_t *d, const uint8_t *raw, size_t n) {
  wd_conn_t *c = lc->conn;
  wd_amqp_t *a = c->amqp;
  const char *condition = NULL, *why = NULL;
  pn_message_t *m = pn_message();
  wd_address_t target;
  uint8_t *stored = NULL;
  size_t stored_len = 0;
  enqueue_job_t *j = NULL;
  int rc;

  if (!m || pn_message_decode(m, (const char *)raw, n) != 0) {
    condition = "amqp:decode-error";
    why = "not a well-formed AMQP message";
    goto refuse;
  }
  rc = resolve_target(c, lc, m, &target, &why);
  if (rc < 0) {
    condition = rc == WD_ERR_NOT_FOUND ? "amqp:not-found"
                : rc == WD_ERR_INVALID ? "amqp:invalid-field"
                                       : "amqp:unauthorized-access";
    goto refuse;
  }

  /* Time to live: header ttl or absolute-expiry-time (the earlier), else the default; capped. */
  int64_t now = wd_now_ms();
  int64_t abs_expiry = pn_message_get_expiry_time(m);
  pn_millis_t ttl = pn_message_get_ttl(m);
  int64_t expiry = now + a->cfg.default_ttl_ms;
  if (abs_expiry > 0 && abs_expiry <= now) {
    condition = "amqp:invalid-field";
    why = "absolute-expiry-time is in the past";
    goto refuse;
  }
  if (ttl > 0 || abs_expiry > 0) {
    expiry = INT64_MAX;
    if (ttl > 0) expiry = now + ttl;
    if (abs_expiry > 0 && abs_expiry < expiry) expiry = abs_expiry;
  }
  if (expiry > now + (int64_t)a->cfg.max_ttl_ms) expiry = now + a->cfg.max_ttl_ms;

  /* The message-id keys the command's status and its feedback; one is assigned where absent. */
  char key[WD_MSGID_KEY_MAX + 1], assigned[37] = "";
  uint8_t id_raw[RAW_ID_MAX];
  size_t id_raw_len = 0;
  pn_msgid_t id = pn_message_get_id(m);
  if (id.type == PN_NULL) {
    new_uuid(assigned);
    id.type = PN_STRING;
    id.u.as_bytes = pn_bytes(strlen(assigned), assigned);
  }
  if (wd_amqp__msgid_key(id, key, sizeof key) < 0 || msgid_raw(id, id_raw, sizeof id_raw, &id_raw_len) < 0) {
    condition = "amqp:invalid-field";
    why = "message-id must be a string, ulong, uuid or binary of at most 1 KiB";
    goto refuse;
  }

  bool from_peer = c->who.is_device;
  const wd_msg_ann_t from[] = {{"x-opt-from-device", WD_ANN_STRING, c->who.id, 0}};
  const wd_msg_rewrite_t how = {.drop_header = true,
                                .strip_reserved = true,
                                .message_id = assigned[0] ? assigned : NULL,
                                .add = from,
                                .n_add = from_peer ? 1 : 0};
  size_t unused;
  if (wd_msg_rewrite(raw, n, &how, &stored, &stored_len, &unused) < 0) {
    condition = "amqp:decode-error";
    why = "not a well-formed AMQP message";
    goto refuse;
  }

  char reply_to[WD_REPLY_TO_MAX + 1];
  response_address(pn_message_get_reply_to(m), reply_to);
  bool command = target.kind == WD_ADDR_DEVICE_COMMANDS;
  wd_store_enqueue_t msg = {.kind = command ? WD_QUEUE_COMMAND : WD_QUEUE_NOTIFICATION,
                            .durable = pn_message_is_durable(m),
                            .priority = pn_message_get_priority(m),
                            .ttl_ms = ttl,
                            .expiry_ms = expiry,
                            .message_id = key,
                            .message_id_raw = id_raw,
                            .message_id_raw_len = id_raw_len,
                            .reply_to = command ? reply_to : NULL,
                            .data = stored,
                            .len = stored_len};
  j = malloc(sizeof *j);
  if (!j) {
    rc = WD_ERR_NOMEM;
  } else {
    *j = (enqueue_job_t){.amqp = a, .conn_id = c->id, .lc = lc, .delivery = *d,
                         .group = target.kind == WD_ADDR_GROUP_NOTIFICATIONS,
                         .metric = wd_amqp__metric_address(target.kind)};
    if (d->presettled) j->delivery.pn = NULL;
    snprintf(j->target, sizeof j->target, "%s", target.param);
    atomic_fetch_add(&a->inflight_commits, 1);
    rc = j->group ? wd_store_group_enqueue(a->store, target.param, &msg, a->cfg.queue_limit, on_enqueued, j)
                  : wd_store_queue_append(a->store, target.param, &msg, a->cfg.queue_limit, on_enqueued, j);
    if (rc < 0) atomic_fetch_sub(&a->inflight_commits, 1);
  }
  if (rc < 0) {
    condition = enqueue_condition(rc, &why);
    free(j);
    goto refuse;
  }
  if (d->presettled) wd_amqp__inbound_done_PT(c, d, NULL, NULL);
  lc->pending_commits++;
  wd_log("amqp", WD_LOG_DEBUG, "[C%llu] '%s' enqueued %s '%s' for %s%s", (unsigned long long)c->id, c->who.id,
         command ? "command" : "notification", key, msg.kind == WD_QUEUE_COMMAND ? "" : "", target.param);
  pn_message_free(m);
  return;

refuse:
  wd_log("amqp", WD_LOG_INFO, "[C%llu] refused a message from '%s': %s (%s)", (unsigned long long)c->id, c->who.id,
         condition, why);
  wd_amqp__inbound_done_PT(c, d, condition, why);
  free(stored);
  pn_message_free(m);
  wd_amqp__top_up_PT(lc);
}

/* ---------------------------------------------------------------- egress */

typedef struct {
  wd_amqp_t *amqp;
  uint64_t conn_id;
  wd_link_ctx_t *lc;
  wd_engine_delivery_t delivery;
  uint64_t seq;
  int rc;
} egress_job_t;

static void seq_remove(uint64_t *seqs, size_t *n, uint64_t seq) {
  for (size_t i = 0; i < *n; i++) {
    if (seqs[i] == seq) {
      seqs[i] = seqs[--*n];
      return;
    }
  }
}

static bool seq_add(uint64_t **seqs, size_t *n, size_t *cap, uint64_t seq) {
  if (*n == *cap) {
    size_t grown = *cap ? *cap * 2 : 16;
    uint64_t *p = realloc(*seqs, grown * sizeof *p);
    if (!p) return false;
    *seqs = p;
    *cap = grown;
  }
  (*seqs)[(*n)++] = seq;
  return true;
}

static void inflight_remove(wd_link_ctx_t *lc, uint64_t seq) { seq_remove(lc->inflight, &lc->n_inflight, seq); }

/* A store write for the link is done: pumps on unless the link is gone (its context freed with the last). */
static void egress_unpin(wd_conn_t *c, wd_link_ctx_t *lc) {
  if (!wd_amqp__link_unpin_PT(lc) && !lc->closed) wd_amqp__egress_pump_PT(c, lc);
}

static void egress_recovered(wd_conn_t *c, void *arg, bool discard) {
  egress_job_t *j = arg;
  if (!discard) {
    j->lc->egress_ready = true;
    egress_unpin(c, j->lc);
  }
  free(j);
}

static void on_store_done(void *ctx, int rc) {
  egress_job_t *j = ctx;
  j->rc = rc;
  wd_amqp__post(j->amqp, j->conn_id, egress_recovered, j);
}

static void egress_settled(wd_conn_t *c, void *arg, bool discard) {
  egress_job_t *j = arg;
  if (!discard) {
    wd_engine_settle(c->engine, j->delivery, WD_ENGINE_NONE, NULL, NULL);
    inflight_remove(j->lc, j->seq);
    egress_unpin(c, j->lc);
  }
  free(j);
}

static void on_settle_done(void *ctx, int rc) {
  egress_job_t *j = ctx;
  j->rc = rc;
  wd_amqp__post(j->amqp, j->conn_id, egress_settled, j);
}

static egress_job_t *egress_job(wd_conn_t *c, wd_link_ctx_t *lc, uint64_t seq) {
  egress_job_t *j = malloc(sizeof *j);
  if (j) *j = (egress_job_t){.amqp = c->amqp, .conn_id = c->id, .lc = lc, .seq = seq};
  return j;
}

void wd_amqp__egress_open_PT(wd_link_ctx_t *lc) {
  wd_conn_t *c = lc->conn;
  wd_engine_link_open(lc->lean, 0);
  pthread_mutex_lock(&c->amqp->conns_lock);
  c->has_egress = true;
  pthread_mutex_unlock(&c->amqp->conns_lock);
  /* Deliveries a lost connection left unsettled count as failed before anything is sent again. */
  egress_job_t *j = egress_job(c, lc, 0);
  if (j && wd_store_queue_recover(c->amqp->store, c->who.id, on_store_done, j) == WD_OK) {
    lc->pending_commits++;
  } else {
    free(j);
    lc->egress_ready = true;
  }
}

/* A message marked delivered in the store, to be sent once the mark is durable. */
typedef struct {
  egress_job_t job;
  wd_store_queued_t msg; /* owned */
} delivery_job_t;

static void egress_send(wd_conn_t *c, void *arg, bool discard) {
  delivery_job_t *sj = arg;
  if (!discard) {
    wd_link_ctx_t *lc = sj->job.lc;
    wd_store_queued_t *q = &sj->msg;
    bool sent = false;
    if (sj->job.rc == WD_OK && !lc->closed && !c->closing) {
      uint8_t header[WD_MSG_HEADER_MAX], tag[8];
      size_t hlen = wd_msg_header_encode(header, q->durable, q->priority, q->ttl_ms, q->delivery_count);
      wd_amqp__seq_tag(q->seq, tag);
      sent = wd_engine_send(lc->lean, tag, sizeof tag, header, hlen, q->data, q->len, false, NULL) == 0 &&
             seq_add(&lc->awaiting, &lc->n_awaiting, &lc->cap_awaiting, q->seq);
      if (sent)
        wd_metric_add(&wd_metrics.messages_out[q->kind == WD_QUEUE_NOTIFICATION ? WD_MA_NOTIFICATIONS : WD_MA_COMMANDS], 1);
    }
    /* Not sent (gone, or the mark failed): free its place; a durable mark counts as an attempt at recovery. */
    if (!sent) inflight_remove(lc, q->seq);
    /* Not sent though the link is up: the device's window shrank since the pump; wait for its next flow. */
    if (!sent && sj->job.rc == WD_OK && !lc->closed && !c->closing) lc->window_blocked = true;
    lc->marking--;
    egress_unpin(c, lc);
  }
  wd_store_queued_free(&sj->msg);
  free(sj);
}

static void on_marked(void *ctx, int rc) {
  delivery_job_t *sj = ctx;
  sj->job.rc = rc;
  wd_amqp__post(sj->job.amqp, sj->job.conn_id, egress_send, sj);
}

/* Reads what the credit allows and marks it delivered; each is sent when its
 * mark has committed, so a crash before the device sees it leaves a durable
 * attempt (redelivered with delivery-count raised), never a silent one. */
void wd_amqp__egress_pump_PT(wd_conn_t *c, wd_link_ctx_t *lc) {
  if (!lc->egress_ready || lc->closed || !lc->lean || c->closing || lc->window_blocked) return;
  /* Credit not yet matched by a send in flight. */
  int64_t credit = (int64_t)wd_engine_link_credit(lc->lean) - lc->marking;
  if (credit <= 0) {
    if (lc->marking == 0) wd_engine_link_drained(lc->lean);
    return;
  }
  wd_store_queued_t *msgs = NULL;
  int n = wd_store_queue_read(c->amqp->store, c->who.id, lc->inflight, lc->n_inflight, (size_t)credit, wd_now_ms(),
                              &msgs);
  int i = 0;
  for (; i < n; i++) {
    /* Marked only if the device's session window takes it now: a device whose
       window is too small for a message must not have it marked (its
       delivery-count raised) over and over without ever seeing it. */
    if (!wd_engine_link_fits(lc->lean, WD_MSG_HEADER_MAX + msgs[i].len)) {
      lc->window_blocked = true;
      break;
    }
    delivery_job_t *sj = calloc(1, sizeof *sj);
    if (!sj || !seq_add(&lc->inflight, &lc->n_inflight, &lc->cap_inflight, msgs[i].seq)) {
      free(sj);
      break;
    }
    sj->job = (egress_job_t){.amqp = c->amqp, .conn_id = c->id, .lc = lc, .seq = msgs[i].seq};
    sj->msg = msgs[i];
    memset(&msgs[i], 0, sizeof msgs[i]); /* now the job's */
    if (wd_store_queue_settle(c->amqp->store, c->who.id, sj->msg.seq, WD_SETTLE_DELIVERED, on_marked, sj) < 0) {
      inflight_remove(lc, sj->msg.seq);
      wd_store_queued_free(&sj->msg);
      free(sj);
      break;
    }
    lc->pending_commits++;
    lc->marking++;
  }
  for (int k = 0; k < n; k++) wd_store_queued_free(&msgs[k]);
  free(msgs);
  /* Nothing (more) to send to a device that asked for a drain: its credit is used up. */
  if (n <= 0 && lc->marking == 0) wd_engine_link_drained(lc->lean);
}

static uint64_t tag_seq(const wd_engine_outcome_t *o) {
  uint64_t seq = 0;
  if (o->tag_len != 8) return 0;
  for (size_t i = 0; i < 8; i++) seq = seq << 8 | o->tag[i];
  return seq;
}

void wd_amqp__egress_outcome_PT(wd_link_ctx_t *lc, wd_engine_delivery_t d, const wd_engine_outcome_t *o) {
  wd_conn_t *c = lc->conn;
  wd_settle_t how;
  switch (o->state) {
    case WD_ENGINE_ACCEPTED: how = WD_SETTLE_COMPLETED; break;
    case WD_ENGINE_REJECTED: how = WD_SETTLE_REJECTED; break;
    case WD_ENGINE_RELEASED: how = WD_SETTLE_RELEASED; break;
    case WD_ENGINE_MODIFIED:
      how = o->undeliverable_here ? WD_SETTLE_UNDELIVERABLE : o->delivery_failed ? WD_SETTLE_FAILED : WD_SETTLE_RELEASED;
      break;
    default:
      if (!o->settled) return; /* no outcome yet */
      how = WD_SETTLE_COMPLETED; /* settled without an outcome: the device took it */
  }
  uint64_t seq = tag_seq(o);
  size_t before = lc->n_awaiting;
  seq_remove(lc->awaiting, &lc->n_awaiting, seq);
  if (lc->n_awaiting == before) return; /* its outcome is being recorded already */
  egress_job_t *j = egress_job(c, lc, seq);
  if (j) j->delivery = d;
  if (j && wd_store_queue_settle(c->amqp->store, c->who.id, seq, how, on_settle_done, j) == WD_OK) {
    lc->pending_commits++;
    return;
  }
  free(j);
  wd_engine_settle(c->engine, d, WD_ENGINE_NONE, NULL, NULL);
  inflight_remove(lc, seq);
}

void wd_amqp__egress_lost_PT(wd_link_ctx_t *lc) {
  wd_conn_t *c = lc->conn;
  for (size_t i = 0; i < lc->n_awaiting; i++) {
    wd_store_queue_settle(c->amqp->store, c->who.id, lc->awaiting[i], WD_SETTLE_FAILED, NULL, NULL);
    inflight_remove(lc, lc->awaiting[i]);
  }
  lc->n_awaiting = 0;
}

/* ----------------------------------------------------------------- notify */

void wd_amqp__notify_device(wd_amqp_t *a, const char *device_id) {
  wd_amqp__post_device(a, device_id);
}

void wd_amqp__notify_all_devices(wd_amqp_t *a) { wd_amqp__post_devices(a); }

/* ------------------------------------------------------------------ codec */

static size_t json_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      out[n++] = '\\';
      out[n++] = (char)ch;
    } else if (ch < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
    } else {
      out[n++] = (char)ch;
    }
  }
  out[n] = '\0';
  return n;
}

static void *encode_message(pn_message_t *m, size_t *len) {
  size_t cap = 1024;
  for (int tries = 0; tries < 8; tries++, cap *= 4) {
    char *buf = malloc(cap);
    if (!buf) return NULL;
    size_t n = cap;
    int rc = pn_message_encode(m, buf, &n);
    if (rc == 0) {
      *len = n;
      return buf;
    }
    free(buf);
    if (rc != PN_OVERFLOW) return NULL;
  }
  return NULL;
}

static void waiter_outcome(wd_amqp_t *a, const char *device_id, const char *message_id, const char *status);

static void *codec_feedback(void *arg, const char *device_id, const wd_store_queued_t *cmd, const char *status,
                            int64_t time_ms, size_t *len, size_t *seq_offset) {
  waiter_outcome(arg, device_id, cmd->message_id, status);
  pn_message_t *m = pn_message();
  pn_data_t *idd = pn_data(1);
  if (!m || !idd) {
    pn_message_free(m);
    pn_data_free(idd);
    return NULL;
  }
  if (pn_data_decode(idd, cmd->message_id_raw, cmd->message_id_raw_len) > 0 && (pn_data_rewind(idd), pn_data_next(idd)))
    pn_message_set_correlation_id(m, pn_data_get_atom(idd));
  pn_data_free(idd);
  pn_message_set_durable(m, true);
  pn_message_set_content_type(m, "application/json");
  pn_data_t *props = pn_message_properties(m);
  pn_data_put_map(props);
  pn_data_enter(props);
  pn_data_put_string(props, pn_bytes(9, "device-id"));
  pn_data_put_string(props, pn_bytes(strlen(device_id), device_id));
  pn_data_put_string(props, pn_bytes(6, "status"));
  pn_data_put_string(props, pn_bytes(strlen(status), status));
  pn_data_put_string(props, pn_bytes(4, "time"));
  pn_data_put_timestamp(props, time_ms);
  pn_data_exit(props);
  char when[25], id[2 * WD_MSGID_KEY_MAX + 8], body[2 * WD_MSGID_KEY_MAX + 256];
  wd_iso8601(time_ms, when);
  json_escape(id, sizeof id, cmd->message_id);
  int blen = snprintf(body, sizeof body, "{\"deviceId\":\"%s\",\"messageId\":\"%s\",\"status\":\"%s\",\"time\":\"%s\"}",
                      device_id, id, status, when);
  pn_data_put_binary(pn_message_body(m), pn_bytes((size_t)blen, body));
  size_t raw_len;
  void *raw = encode_message(m, &raw_len);
  pn_message_free(m);
  if (!raw) return NULL;
  uint8_t *out = NULL;
  int rc = wd_msg_annotate(raw, raw_len, device_id, time_ms, &out, len, seq_offset);
  free(raw);
  return rc == WD_OK ? out : NULL;
}

static void *codec_deadletter(void *arg, const char *device_id, const wd_store_queued_t *msg, const char *reason,
                              int64_t time_ms, size_t *len, size_t *seq_offset) {
  (void)arg;
  uint8_t header[WD_MSG_HEADER_MAX];
  size_t hlen = wd_msg_header_encode(header, msg->durable, msg->priority, msg->ttl_ms, msg->delivery_count);
  uint8_t *whole = malloc(hlen + msg->len);
  if (!whole) return NULL;
  memcpy(whole, header, hlen);
  memcpy(whole + hlen, msg->data, msg->len);
  const wd_msg_ann_t add[] = {
      {"x-opt-deadletter-reason", WD_ANN_STRING, reason, 0},
      {"x-opt-deadletter-time", WD_ANN_TIMESTAMP, NULL, time_ms},
      {"x-opt-device-id", WD_ANN_STRING, device_id, 0},
      {"x-opt-sequence-number", WD_ANN_SEQUENCE, NULL, 0},
  };
  const wd_msg_rewrite_t how = {.add = add, .n_add = 4};
  uint8_t *out = NULL;
  int rc = wd_msg_rewrite(whole, hlen + msg->len, &how, &out, len, seq_offset);
  free(whole);
  return rc == WD_OK ? out : NULL;
}

void wd_amqp__codec_install(wd_amqp_t *a, uint32_t max_delivery_count) {
  const wd_store_codec_t codec = {.arg = a, .feedback = codec_feedback, .deadletter = codec_deadletter};
  wd_store_set_codec(a->store, &codec, max_delivery_count);
}

/* ------------------------------------------------------------------- REST */

/* A REST request waiting for a device's response to a command. */
typedef struct wd_waiter {
  struct wd_waiter *next;
  char device[WD_ID_MAX + 1];
  char message_id[37];
  int64_t deadline_mono_ms;
  int64_t expires_ms;
  wd_send_fn done;
  void *arg;
} wd_waiter_t;

static wd_waiter_t *waiter_take(wd_amqp_t *a, const char *device_id, const char *message_id) {
  pthread_mutex_lock(&a->waiters_lock);
  wd_waiter_t **pp = &a->waiters;
  while (*pp && !(strcmp((*pp)->device, device_id) == 0 && strcmp((*pp)->message_id, message_id) == 0))
    pp = &(*pp)->next;
  wd_waiter_t *w = *pp;
  if (w) *pp = w->next;
  pthread_mutex_unlock(&a->waiters_lock);
  return w;
}

static void waiter_finish(wd_waiter_t *w, const char *outcome, const void *body, size_t len, const char *type) {
  wd_send_result_t res = {.rc = WD_OK, .expires_ms = w->expires_ms, .outcome = outcome, .response = body,
                               .response_len = len, .response_type = type};
  snprintf(res.message_id, sizeof res.message_id, "%s", w->message_id);
  w->done(w->arg, &res);
  free(w);
}

void wd_amqp__waiter_respond(wd_amqp_t *a, const char *device_id, const char *message_id, const void *body,
                             size_t len, const char *content_type) {
  wd_waiter_t *w = waiter_take(a, device_id, message_id);
  if (w) waiter_finish(w, "responded", body, len, content_type);
}

/* Called with each command outcome: a failed one ends a wait. */
static void waiter_outcome(wd_amqp_t *a, const char *device_id, const char *message_id, const char *status) {
  if (strcmp(status, "completed") == 0) return; /* the device took it; its response is still to come */
  wd_waiter_t *w = waiter_take(a, device_id, message_id);
  if (w) waiter_finish(w, status, NULL, 0, NULL);
}

void wd_amqp__waiters_expire(wd_amqp_t *a, int64_t now_mono_ms) {
  wd_waiter_t *due = NULL;
  pthread_mutex_lock(&a->waiters_lock);
  for (wd_waiter_t **pp = &a->waiters; *pp;) {
    wd_waiter_t *w = *pp;
    if (w->deadline_mono_ms <= now_mono_ms) {
      *pp = w->next;
      w->next = due;
      due = w;
    } else {
      pp = &w->next;
    }
  }
  pthread_mutex_unlock(&a->waiters_lock);
  while (due) {
    wd_waiter_t *next = due->next;
    waiter_finish(due, "timeout", NULL, 0, NULL);
    due = next;
  }
}

void wd_amqp__waiters_fini(wd_amqp_t *a) { wd_amqp__waiters_expire(a, INT64_MAX); }

void wd_amqp_end_waits(wd_amqp_t *a) {
  pthread_mutex_lock(&a->waiters_lock);
  a->waits_ended = true;
  wd_waiter_t *all = a->waiters;
  a->waiters = NULL;
  pthread_mutex_unlock(&a->waiters_lock);
  while (all) {
    wd_waiter_t *next = all->next;
    waiter_finish(all, "shutdown", NULL, 0, NULL);
    all = next;
  }
}

typedef struct {
  wd_amqp_t *amqp;
  char target[WD_ID_MAX + 1];
  bool group, waiting, notification;
  char message_id[37];
  int64_t expires_ms;
  wd_send_fn done;
  void *arg;
} send_job_t;

static void on_sent(void *ctx, int rc, uint64_t count) {
  send_job_t *j = ctx;
  wd_send_result_t res = {.rc = rc, .expires_ms = j->expires_ms, .devices = j->group ? count : 0,
                               .outcome = "queued"};
  snprintf(res.message_id, sizeof res.message_id, "%s", j->message_id);
  if (rc == WD_OK) {
    wd_metric_add(&wd_metrics.messages_in[j->group || j->notification ? WD_MA_NOTIFICATIONS : WD_MA_COMMANDS], 1);
    if (j->group)
      wd_amqp__notify_all_devices(j->amqp);
    else
      wd_amqp__notify_device(j->amqp, j->target);
  }
  if (!j->waiting) {
    j->done(j->arg, &res);
  } else if (rc < 0) {
    /* Not queued: the waiter registered before submitting is ours to end. */
    wd_waiter_t *w = waiter_take(j->amqp, j->target, j->message_id);
    if (w) free(w);
    j->done(j->arg, &res);
  }
  free(j);
}

int wd_amqp_send(wd_amqp_t *a, const wd_send_t *req, wd_send_fn done, void *arg) {
  if (!wd_id_valid(req->target) || (req->group && !req->notification) || (req->wait_s && req->notification))
    return WD_ERR_INVALID;
  char id[37];
  new_uuid(id);
  int64_t now = wd_now_ms();
  uint64_t ttl_ms = req->wait_s ? (uint64_t)req->wait_s * 1000 : req->ttl_s ? (uint64_t)req->ttl_s * 1000 : a->cfg.default_ttl_ms;
  if (ttl_ms > a->cfg.max_ttl_ms) ttl_ms = a->cfg.max_ttl_ms;

  pn_message_t *m = pn_message();
  if (!m) return WD_ERR_NOMEM;
  pn_message_set_id(m, (pn_msgid_t){.type = PN_STRING, .u.as_bytes = pn_bytes(strlen(id), id)});
  if (req->content_type && req->content_type[0]) pn_message_set_content_type(m, req->content_type);
  pn_message_set_durable(m, true);
  pn_message_set_creation_time(m, now);
  pn_message_set_inferred(m, true); /* the payload as a data section, as AMQP clients send bytes */
  pn_data_put_binary(pn_message_body(m), pn_bytes(req->len, req->body));
  size_t raw_len, stored_len, unused;
  void *raw = encode_message(m, &raw_len);
  pn_message_free(m);
  uint8_t *stored = NULL;
  const wd_msg_rewrite_t how = {.drop_header = true};
  int rc = raw ? wd_msg_rewrite(raw, raw_len, &how, &stored, &stored_len, &unused) : WD_ERR_NOMEM;
  free(raw);
  if (rc < 0) return rc;
  if (stored_len > a->cfg.max_message_size) {
    free(stored);
    return WD_ERR_TOO_BIG;
  }

  uint8_t id_raw[64];
  size_t id_raw_len = 0;
  msgid_raw((pn_msgid_t){.type = PN_STRING, .u.as_bytes = pn_bytes(strlen(id), id)}, id_raw, sizeof id_raw,
            &id_raw_len);
  send_job_t *j = calloc(1, sizeof *j);
  if (!j) {
    free(stored);
    return WD_ERR_NOMEM;
  }
  *j = (send_job_t){.amqp = a, .group = req->group, .waiting = req->wait_s > 0, .notification = req->notification,
                    .expires_ms = now + (int64_t)ttl_ms,
                    .done = done, .arg = arg};
  snprintf(j->target, sizeof j->target, "%s", req->target);
  memcpy(j->message_id, id, sizeof id);
  if (j->waiting) {
    wd_waiter_t *w = calloc(1, sizeof *w);
    if (!w) {
      free(j);
      free(stored);
      return WD_ERR_NOMEM;
    }
    snprintf(w->device, sizeof w->device, "%s", req->target);
    memcpy(w->message_id, id, sizeof id);
    w->deadline_mono_ms = wd_mono_ms() + (int64_t)ttl_ms;
    w->expires_ms = j->expires_ms;
    w->done = done;
    w->arg = arg;
    pthread_mutex_lock(&a->waiters_lock);
    bool ended = a->waits_ended;
    if (!ended) {
      w->next = a->waiters;
      a->waiters = w;
    }
    pthread_mutex_unlock(&a->waiters_lock);
    if (ended) {
      free(w);
      free(j);
      free(stored);
      return WD_ERR_SHUTDOWN;
    }
  }
  wd_store_enqueue_t msg = {.kind = req->notification ? WD_QUEUE_NOTIFICATION : WD_QUEUE_COMMAND,
                            .durable = true,
                            .priority = 4,
                            .ttl_ms = (uint32_t)(ttl_ms > UINT32_MAX ? UINT32_MAX : ttl_ms),
                            .expiry_ms = j->expires_ms,
                            .message_id = id,
                            .message_id_raw = id_raw,
                            .message_id_raw_len = id_raw_len,
                            .reply_to = req->notification ? NULL : "responses",
                            .data = stored,
                            .len = stored_len};
  rc = req->group ? wd_store_group_enqueue(a->store, req->target, &msg, a->cfg.queue_limit, on_sent, j)
                  : wd_store_queue_append(a->store, req->target, &msg, a->cfg.queue_limit, on_sent, j);
  if (rc < 0) {
    if (j->waiting) free(waiter_take(a, req->target, id));
    free(j);
    free(stored);
  }
  return rc;
}

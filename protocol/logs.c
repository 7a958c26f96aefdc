/* Device messages into durable logs, and services reading logs.
 *
 * In: a device's telemetry, inquiry or response is rewritten (warden's
 * annotations), handed to the store, and settled `accepted` only when the
 * writer reports its commit; the report comes back to the connection as a
 * posted job. A link keeps at most WD_CREDIT_WINDOW messages outstanding
 * (credit granted plus commits pending), so a fast device is paced by the
 * store, never buffered without bound. Responses go to the log named by the
 * reply-to of the command they answer (correlation-id = its message-id).
 *
 * Out: a consumer's credit pulls records claimed from its group; the store's
 * append listener posts a pump job to every consumer connection when records
 * are committed. Delivery tags are the records' sequence numbers. */

#include <proton/condition.h>
#include <proton/disposition.h>
#include <proton/message.h>
#include <proton/session.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/internal.h"
#include "protocol/message.h"

#define CLAIM_BATCH 64

typedef struct {
  wd_amqp_t *amqp;
  uint64_t conn_id;
  wd_link_ctx_t *lc;
  wd_inbound_t delivery;
  int rc;
} commit_job_t;

static int link_credit(const wd_link_ctx_t *lc) {
  return lc->lean ? wd_engine_link_credit(lc->lean) : pn_link_credit(lc->pn);
}

/* How much of `want` a device's rate allows now; spends it. A device with
 * none left and nothing in flight is parked until the tick. */
static int rate_allows(wd_conn_t *c, wd_link_ctx_t *lc, int want) {
  uint32_t rate = c->amqp->cfg.device_rate;
  if (!rate || !c->who.is_device) return want;
  int64_t now = wd_mono_ms();
  if (c->rate_refill_ms == 0) {
    c->rate_tokens = rate; /* a second's worth to start */
  } else {
    c->rate_tokens += (double)(now - c->rate_refill_ms) * rate / 1000.0;
    if (c->rate_tokens > rate) c->rate_tokens = rate;
  }
  c->rate_refill_ms = now;
  int n = c->rate_tokens < want ? (int)c->rate_tokens : want;
  c->rate_tokens -= n;
  if (n < want && link_credit(lc) + n == 0) wd_amqp__conn_throttle(c);
  return n;
}

void wd_amqp__link_end_PT(wd_link_ctx_t *lc, const char *condition, const char *description) {
  if (lc->closed) return;
  lc->closed = true;
  if (lc->lean) {
    wd_engine_link_close(lc->lean, condition, description);
    return;
  }
  pn_condition_t *cond = pn_link_condition(lc->pn);
  pn_condition_set_name(cond, condition);
  pn_condition_set_description(cond, description);
  pn_link_close(lc->pn);
}

void wd_amqp__top_up_PT(wd_link_ctx_t *lc) {
  wd_amqp_t *a = lc->conn->amqp;
  if (lc->closed || atomic_load(&a->stopping)) return;
  /* A nearly full store grants devices no new credit: nothing is dropped, they wait. */
  if (lc->log && wd_store_under_pressure(a->store)) return;
  int credit = link_credit(lc);
  if (credit < 0) {
    /* warden never takes credit back, so only a peer that sent past its
       credit, or moved its delivery-count past it in a flow, gets here. */
    wd_amqp__link_end_PT(lc, "amqp:link:transfer-limit-exceeded", "the sender went past the credit it was given");
    return;
  }
  int outstanding = credit + lc->pending_commits;
  if (outstanding >= WD_CREDIT_WINDOW / 2) return;
  /* A device over its rate gets no credit: it waits, nothing is dropped. */
  int n = rate_allows(lc->conn, lc, WD_CREDIT_WINDOW - outstanding);
  if (n <= 0) return;
  if (lc->lean)
    wd_engine_link_flow(lc->lean, n);
  else
    pn_link_flow(lc->pn, n);
}

void wd_amqp__inbound_done_PT(wd_conn_t *c, const wd_inbound_t *d, const char *condition, const char *description) {
  if (d->pn) {
    if (condition && !d->presettled) {
      pn_condition_t *cond = pn_disposition_condition(pn_delivery_local(d->pn));
      pn_condition_set_name(cond, condition);
      pn_condition_set_description(cond, description);
      pn_delivery_update(d->pn, PN_REJECTED);
    } else if (!d->presettled) {
      pn_delivery_update(d->pn, PN_ACCEPTED);
    }
    pn_delivery_settle(d->pn);
  } else if (!d->presettled && c->engine) {
    wd_engine_settle(c->engine, d->lean, condition ? WD_ENGINE_REJECTED : WD_ENGINE_ACCEPTED, condition,
                     description);
  }
}

/* A transfer still arriving that has grown this far past the limit ends its
 * link: rejecting it would mean buffering all of it first. */
#define OVERSIZE_SLACK (64 * 1024)

uint8_t *wd_amqp__recv_PT(wd_link_ctx_t *lc, pn_delivery_t *d, size_t *len) {
  wd_conn_t *c = lc->conn;
  wd_amqp_t *a = c->amqp;
  pn_link_t *link = lc->pn;
  size_t pending = pn_delivery_pending(d);
  bool partial = pn_delivery_partial(d);
  wd_inbound_t in = {.pn = d, .presettled = pn_delivery_settled(d)};
  if (pending > a->cfg.max_message_size && (partial || !pn_delivery_readable(d))) {
    if (pending <= (size_t)a->cfg.max_message_size + OVERSIZE_SLACK) return NULL; /* wait for the rest */
    wd_log("amqp", WD_LOG_WARNING, "[C%llu] '%s' is sending a message far over %u bytes; detaching the link",
           (unsigned long long)c->id, c->who.id, a->cfg.max_message_size);
    wd_amqp__link_end_PT(lc, "amqp:link:message-size-exceeded", "message larger than max_message_size");
    return NULL;
  }
  if (!pn_delivery_readable(d) || partial) return NULL;
  if (pending > a->cfg.max_message_size) {
    pn_link_advance(link);
    wd_amqp__oversize_PT(lc, pending);
    wd_amqp__inbound_done_PT(c, &in, "amqp:link:message-size-exceeded", "message larger than max_message_size");
    wd_amqp__top_up_PT(lc);
    return NULL;
  }
  uint8_t *raw = malloc(pending ? pending : 1);
  ssize_t n = raw && pending ? pn_link_recv(link, (char *)raw, pending) : 0;
  pn_link_advance(link);
  atomic_store(&c->last_seen_ms, wd_now_ms());
  if (lc->closed || !raw || n <= 0) {
    free(raw);
    if (lc->closed) in.presettled = true; /* let go without an outcome */
    wd_amqp__inbound_done_PT(c, &in, !raw ? "amqp:resource-limit-exceeded" : "amqp:decode-error",
                             !raw ? "out of memory" : "an empty transfer is not a message");
    wd_amqp__top_up_PT(lc);
    return NULL;
  }
  *len = (size_t)n;
  return raw;
}

void wd_amqp__oversize_PT(wd_link_ctx_t *lc, size_t len) {
  wd_conn_t *c = lc->conn;
  wd_log("amqp", WD_LOG_INFO, "[C%llu] rejected a message of %zu bytes from '%s' (limit %u)",
         (unsigned long long)c->id, len, c->who.id, c->amqp->cfg.max_message_size);
}

bool wd_amqp__link_unpin_PT(wd_link_ctx_t *lc) {
  lc->pending_commits--;
  if (!lc->closed || lc->pending_commits > 0 || lc->lean) return false;
  wd_amqp__link_ctx_release_PT(lc);
  return true;
}

static void settle_committed(wd_conn_t *c, void *arg, bool discard) {
  commit_job_t *j = arg;
  if (!discard) {
    wd_link_ctx_t *lc = j->lc;
    if (j->rc == WD_OK) wd_metric_add(&wd_metrics.messages_in[wd_amqp__metric_address(lc->addr.kind)], 1);
    if (j->rc == WD_OK)
      wd_amqp__inbound_done_PT(c, &j->delivery, NULL, NULL);
    else if (j->rc == WD_ERR_FULL || j->rc == WD_ERR_BUSY)
      wd_amqp__inbound_done_PT(c, &j->delivery, "amqp:resource-limit-exceeded", "the store is full; try again later");
    else
      wd_amqp__inbound_done_PT(c, &j->delivery, "amqp:internal-error", wd_err_str(j->rc));
    if (!wd_amqp__link_unpin_PT(lc)) wd_amqp__top_up_PT(lc);
  }
  atomic_fetch_sub(&j->amqp->inflight_commits, 1);
  free(j);
}

static void on_committed(void *ctx, int rc) {
  commit_job_t *j = ctx;
  j->rc = rc;
  wd_amqp__post(j->amqp, j->conn_id, settle_committed, j);
}

/* The payload of a response as bytes: a data section or a string value as
 * they are; another value in AMQP's text notation. Returned owned or NULL. */
static char *response_body(pn_message_t *m, size_t *len) {
  pn_data_t *body = pn_message_body(m);
  pn_data_rewind(body);
  if (pn_data_next(body)) {
    if (pn_data_type(body) == PN_BINARY || pn_data_type(body) == PN_STRING) {
      pn_bytes_t b = pn_data_type(body) == PN_BINARY ? pn_data_get_binary(body) : pn_data_get_string(body);
      char *copy = malloc(b.size ? b.size : 1);
      if (copy && b.size) memcpy(copy, b.start, b.size);
      *len = b.size;
      return copy;
    }
    size_t cap = 4096;
    char *text = malloc(cap);
    pn_data_rewind(body);
    if (text && pn_data_format(body, text, &cap) == 0) {
      *len = cap;
      return text;
    }
    free(text);
  }
  *len = 0;
  return calloc(1, 1);
}

/* A device's response: recorded in its command's status, handed to a REST
 * request waiting for it, and stored in the log its command's reply-to names. */
static wd_store_log_t *response_log(wd_conn_t *c, const uint8_t *raw, size_t len) {
  char reply_to[WD_REPLY_TO_MAX + 1] = "responses";
  pn_message_t *m = pn_message();
  if (m && pn_message_decode(m, (const char *)raw, len) == 0) {
    char key[WD_MSGID_KEY_MAX + 1];
    if (wd_amqp__msgid_key(pn_message_get_correlation_id(m), key, sizeof key) == WD_OK &&
        wd_store_command_reply_to(c->amqp->store, c->who.id, key, reply_to) == WD_OK) {
      size_t blen;
      char *body = response_body(m, &blen);
      const char *type = pn_message_get_content_type(m);
      if (body) {
        wd_store_command_respond(c->amqp->store, c->who.id, key, type, body, blen, NULL, NULL);
        wd_amqp__waiter_respond(c->amqp, c->who.id, key, body, blen, type);
      }
      free(body);
    }
  }
  pn_message_free(m);
  wd_store_log_t *log = NULL;
  wd_store_log_open(c->amqp->store, reply_to, &log);
  return log;
}

void wd_amqp__log_open_PT(wd_link_ctx_t *lc) {
  const char *name = lc->addr.kind == WD_ADDR_TELEMETRY ? "telemetry"
                     : lc->addr.kind == WD_ADDR_INQUIRIES ? "inquiries"
                                                          : NULL;
  if (name) wd_store_log_open(lc->conn->amqp->store, name, &lc->log);
}

void wd_amqp__log_message_PT(wd_link_ctx_t *lc, const wd_inbound_t *d, const uint8_t *msg, size_t n) {
  wd_conn_t *c = lc->conn;
  wd_amqp_t *a = c->amqp;
  wd_store_log_t *log = lc->log ? lc->log : response_log(c, msg, n);
  uint8_t *rec = NULL;
  size_t rec_len, seq_offset;
  int rc = log ? wd_msg_annotate(msg, n, c->who.id, wd_now_ms(), &rec, &rec_len, &seq_offset) : WD_ERR_NOMEM;
  if (rc < 0) {
    wd_amqp__inbound_done_PT(c, d, "amqp:decode-error", "not a well-formed AMQP message");
    wd_amqp__top_up_PT(lc);
    return;
  }
  commit_job_t *j = malloc(sizeof *j);
  if (j) {
    *j = (commit_job_t){.amqp = a, .conn_id = c->id, .lc = lc, .delivery = *d};
    if (d->presettled) j->delivery.pn = NULL;
    atomic_fetch_add(&a->inflight_commits, 1);
    rc = wd_store_log_append(log, rec, rec_len, seq_offset, on_committed, j);
    if (rc < 0) atomic_fetch_sub(&a->inflight_commits, 1);
  } else {
    rc = WD_ERR_NOMEM;
  }
  if (rc < 0) {
    free(j);
    free(rec);
    wd_amqp__inbound_done_PT(c, d, rc == WD_ERR_SHUTDOWN ? "amqp:connection:forced" : "amqp:resource-limit-exceeded",
                             wd_err_str(rc));
    wd_amqp__top_up_PT(lc);
    return;
  }
  /* At-most-once for a pre-settled message: it is forgotten whether or not it commits. */
  if (d->presettled) wd_amqp__inbound_done_PT(c, d, NULL, NULL);
  lc->pending_commits++;
  wd_amqp__top_up_PT(lc);
}

int wd_amqp__log_outbound_open_PT(wd_conn_t *c, pn_link_t *link, wd_link_ctx_t *lc) {
  char log_name[WD_REPLY_TO_MAX + 1];
  const char *group = WD_DEFAULT_GROUP;
  switch (lc->addr.kind) {
    case WD_ADDR_TELEMETRY:
      snprintf(log_name, sizeof log_name, "telemetry");
      group = lc->addr.param;
      break;
    case WD_ADDR_INQUIRIES: snprintf(log_name, sizeof log_name, "inquiries"); break;
    case WD_ADDR_FEEDBACK: snprintf(log_name, sizeof log_name, "feedback"); break;
    case WD_ADDR_DEADLETTER: snprintf(log_name, sizeof log_name, "deadletter"); break;
    case WD_ADDR_RESPONSES:
      snprintf(log_name, sizeof log_name, lc->addr.param[0] ? "responses/%s" : "responses", lc->addr.param);
      break;
    default: return WD_ERR_INVALID;
  }
  int rc = wd_store_log_open(c->amqp->store, log_name, &lc->log);
  if (rc == WD_OK) rc = wd_store_group_open(lc->log, group, &lc->group);
  if (rc < 0) return rc;
  bool presettled = pn_link_remote_snd_settle_mode(link) == PN_SND_SETTLED;
  pn_link_set_snd_settle_mode(link, presettled ? PN_SND_SETTLED : PN_SND_UNSETTLED);
  pn_link_open(link);
  wd_amqp__conn_add_consumer(c);
  wd_log("amqp", WD_LOG_DEBUG, "[C%llu] '%s' reads %s as group '%s'", (unsigned long long)c->id, c->who.id,
         log_name, group);
  return WD_OK;
}

typedef struct {
  pn_link_t *link;
  wd_store_group_t *group;
  bool presettled;
  uint64_t sent;
} pump_t;

/* Sends one claimed record straight from the store into Proton's buffer. */
static void send_record(void *arg, uint64_t seq, const void *data, size_t len) {
  pump_t *p = arg;
  uint8_t tag[8];
  wd_amqp__seq_tag(seq, tag);
  pn_delivery_t *d = pn_delivery(p->link, pn_dtag((const char *)tag, sizeof tag));
  pn_link_send(p->link, data, len);
  pn_link_advance(p->link);
  p->sent++;
  if (p->presettled) {
    pn_delivery_settle(d);
    wd_store_group_ack(p->group, seq);
  }
}

void wd_amqp__log_pump_PT(wd_conn_t *c, pn_link_t *link) {
  wd_link_ctx_t *lc = pn_link_get_context(link);
  if (!lc || lc->closed || !lc->group || c->closing) return;
  pump_t p = {link, lc->group, pn_link_snd_settle_mode(link) == PN_SND_SETTLED, 0};
  while (pn_link_credit(link) > 0) {
    int want = pn_link_credit(link) < CLAIM_BATCH ? pn_link_credit(link) : CLAIM_BATCH;
    if (wd_store_group_claim(lc->group, (size_t)want, send_record, &p) <= 0) break;
  }
  wd_metric_add(&wd_metrics.messages_out[wd_amqp__metric_address(lc->addr.kind)], p.sent);
  if (pn_link_get_drain(link) && pn_link_credit(link) > 0) pn_link_drained(link);
}

void wd_amqp__seq_tag(uint64_t seq, uint8_t tag[8]) {
  for (int b = 0; b < 8; b++) tag[b] = (uint8_t)(seq >> (56 - 8 * b));
}

uint64_t wd_amqp__tag_seq(pn_delivery_t *d) {
  pn_delivery_tag_t tag = pn_delivery_tag(d);
  uint64_t seq = 0;
  if (tag.size != 8) return 0;
  for (size_t i = 0; i < 8; i++) seq = seq << 8 | (uint8_t)tag.start[i];
  return seq;
}

void wd_amqp__log_outbound_update_PT(pn_link_t *link, pn_delivery_t *d) {
  wd_link_ctx_t *lc = pn_link_get_context(link);
  if (!lc || !lc->group) return;
  uint64_t state = pn_delivery_remote_state(d);
  bool settled = pn_delivery_settled(d);
  if (!settled && !(state == PN_ACCEPTED || state == PN_REJECTED || state == PN_RELEASED || state == PN_MODIFIED))
    return;
  uint64_t seq = wd_amqp__tag_seq(d);
  if (state == PN_RELEASED || state == PN_MODIFIED)
    wd_store_group_release(lc->group, seq);
  else
    wd_store_group_ack(lc->group, seq); /* accepted, rejected (dropped), or settled without a state */
  pn_delivery_settle(d);
}

void wd_amqp__log_release_unsettled_PT(pn_link_t *link) {
  wd_link_ctx_t *lc = pn_link_get_context(link);
  if (!lc || !lc->group) return;
  pn_delivery_t *d = pn_unsettled_head(link);
  while (d) {
    pn_delivery_t *next = pn_unsettled_next(d);
    wd_store_group_release(lc->group, wd_amqp__tag_seq(d));
    pn_delivery_settle(d);
    d = next;
  }
}

void wd_amqp__log_appended(void *arg, wd_store_log_t *log) {
  (void)log;
  wd_amqp__post_consumers(arg);
}

int wd_amqp_telemetry_decode(const void *record, size_t len, wd_telemetry_t *out) {
  memset(out, 0, sizeof *out);
  pn_message_t *m = pn_message();
  if (!m) return WD_ERR_NOMEM;
  if (pn_message_decode(m, record, len) != 0) {
    pn_message_free(m);
    return WD_ERR_INVALID;
  }
  pn_data_t *ann = pn_message_annotations(m);
  pn_data_rewind(ann);
  if (pn_data_next(ann) && pn_data_type(ann) == PN_MAP) {
    size_t n = pn_data_get_map(ann);
    pn_data_enter(ann);
    for (size_t i = 0; i + 1 < n; i += 2) {
      if (!pn_data_next(ann)) break;
      pn_bytes_t key = pn_data_type(ann) == PN_SYMBOL ? pn_data_get_symbol(ann) : pn_bytes(0, NULL);
      if (!pn_data_next(ann)) break;
      if (key.size == 15 && memcmp(key.start, "x-opt-device-id", 15) == 0 && pn_data_type(ann) == PN_STRING) {
        pn_bytes_t v = pn_data_get_string(ann);
        if (v.size < sizeof out->device_id) {
          memcpy(out->device_id, v.start, v.size);
          out->device_id[v.size] = '\0';
        }
      } else if (key.size == 19 && memcmp(key.start, "x-opt-enqueued-time", 19) == 0 &&
                 pn_data_type(ann) == PN_TIMESTAMP) {
        out->enqueued_ms = pn_data_get_timestamp(ann);
      } else if (key.size == 21 && memcmp(key.start, "x-opt-sequence-number", 21) == 0 &&
                 pn_data_type(ann) == PN_ULONG) {
        out->seq = pn_data_get_ulong(ann);
      }
    }
    pn_data_exit(ann);
  }
  const char *type = pn_message_get_content_type(m);
  snprintf(out->content_type, sizeof out->content_type, "%s", type ? type : "");
  out->owned = response_body(m, &out->len);
  out->body = out->owned;
  pn_message_free(m);
  return out->owned ? WD_OK : WD_ERR_NOMEM;
}

/* A device's connection after its login: warden's own AMQP engine
 * (protocol/engine.c, decision 8) instead of Proton's, so that an idle device
 * holds a few hundred bytes of AMQP state rather than ~23 KiB.
 *
 * The engine's callbacks land here and go on to the same store paths a
 * service's Proton links use: telemetry, inquiries and responses into logs
 * (logs.c), commands to permitted peers and the device's own queue
 * (commands.c). Everything runs in the connection's raw connection events. */

#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/internal.h"

static void on_open(void *ctx, uint32_t peer_idle_ms) {
  wd_conn_t *c = ctx;
  uint32_t local_idle;
  if (c->closing || !wd_amqp__conn_open_PT(c, peer_idle_ms, &local_idle)) return;
  wd_engine_open(c->engine, local_idle, wd_mono_ms());
}

static void on_attach(void *ctx, wd_engine_link_t *l) {
  wd_conn_t *c = ctx;
  if (c->closing) {
    wd_engine_link_refuse(l, "amqp:connection:forced", "the connection is closing");
    return;
  }
  bool inbound = wd_engine_link_inbound(l);
  const char *condition, *why;
  wd_link_ctx_t *lc = wd_amqp__link_decide_PT(c, inbound, wd_engine_link_address(l), &condition, &why);
  if (!lc) {
    wd_engine_link_refuse(l, condition, why);
    return;
  }
  if (!inbound && lc->addr.kind != WD_ADDR_EGRESS) { /* the address rules give devices no other */
    wd_amqp__link_uncount_PT(lc);
    wd_amqp__link_ctx_free(lc);
    wd_engine_link_refuse(l, "amqp:not-found", "devices receive on `commands` only");
    return;
  }
  lc->lean = l;
  wd_engine_link_set_context(l, lc);
  lc->next = c->links;
  c->links = lc;
  if (!inbound) {
    wd_amqp__egress_open_PT(lc);
    return;
  }
  wd_amqp__log_open_PT(lc);
  wd_engine_link_open(l, c->amqp->cfg.max_message_size);
  wd_amqp__top_up_PT(lc);
}

static void on_flow(void *ctx, wd_engine_link_t *l) {
  wd_link_ctx_t *lc = wd_engine_link_get_context(l);
  if (!lc || lc->addr.kind != WD_ADDR_EGRESS) return;
  lc->window_blocked = false; /* its window may take the next message now */
  wd_amqp__egress_pump_PT(ctx, lc);
}

static void on_message(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, bool settled, const uint8_t *msg,
                       size_t len) {
  wd_conn_t *c = ctx;
  wd_link_ctx_t *lc = wd_engine_link_get_context(l);
  if (!lc) return; /* the engine delivers only on links warden opened */
  wd_inbound_t in = {.lean = d, .presettled = settled};
  atomic_store(&c->last_seen_ms, wd_now_ms());
  if (!msg) { /* refused by the engine for its size, or aborted by the device */
    if (len > 0) wd_amqp__oversize_PT(lc, len);
  } else if (lc->closed) {
    in.presettled = true;
  } else if (len == 0) {
    wd_amqp__inbound_done_PT(c, &in, "amqp:decode-error", "an empty transfer is not a message");
  } else if (lc->log || lc->addr.kind == WD_ADDR_RESPONSES) {
    wd_amqp__log_message_PT(lc, &in, msg, len);
    return; /* tops up itself */
  } else {
    wd_amqp__enqueue_PT(lc, &in, msg, len);
    return;
  }
  wd_amqp__top_up_PT(lc);
}

static void on_outcome(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, const wd_engine_outcome_t *o) {
  (void)ctx;
  wd_link_ctx_t *lc = wd_engine_link_get_context(l);
  if (lc) wd_amqp__egress_outcome_PT(lc, d, o); /* warden sends on a device's queue only */
}

static void on_detach(void *ctx, wd_engine_link_t *l) {
  (void)ctx;
  wd_link_ctx_t *lc = wd_engine_link_get_context(l);
  if (!lc) return;
  wd_engine_link_set_context(l, NULL);
  lc->lean = NULL; /* stays in c->links while store writes hold it */
  lc->closed = true;
  wd_amqp__link_uncount_PT(lc);
  if (lc->addr.kind == WD_ADDR_EGRESS) wd_amqp__egress_lost_PT(lc);
  if (lc->pending_commits == 0) wd_amqp__link_ctx_free(lc);
}

static void on_close(void *ctx, bool by_peer, const char *condition, const char *description) {
  wd_conn_t *c = ctx;
  if (by_peer) {
    if (condition)
      wd_log("amqp", WD_LOG_INFO, "[C%llu] '%s' closed its connection: %s (%s)", (unsigned long long)c->id, c->who.id,
             condition, description ? description : "");
  } else if (!c->closing) { /* the engine's own close: the peer broke the protocol, or went silent */
    wd_log("amqp", WD_LOG_INFO, "[C%llu] closing connection of '%s': %s (%s)", (unsigned long long)c->id, c->who.id,
           condition ? condition : "", description ? description : "");
    if (condition && strcmp(condition, "amqp:resource-limit-exceeded") != 0)
      wd_metric_add(&wd_metrics.frames_refused, 1);
  }
  c->closing = true;
}

static int write_out(void *ctx, const uint8_t *p, size_t n) { return wd_amqp__stream_write_PT(ctx, p, n); }

static const wd_engine_handler_t handler = {
    .write = write_out,
    .on_open = on_open,
    .on_attach = on_attach,
    .on_flow = on_flow,
    .on_message = on_message,
    .on_outcome = on_outcome,
    .on_detach = on_detach,
    .on_close = on_close,
};

wd_engine_t *wd_amqp__device_engine_new(wd_conn_t *c) {
  const wd_amqp_config_t *cfg = &c->amqp->cfg;
  /* Refused links hold engine state until the peer detaches them too: room
     for some beyond max_links, then the engine closes the connection. */
  wd_engine_config_t ec = {.container_id = "warden",
                           .max_frame_size = cfg->max_frame_size,
                           .channel_max = (uint16_t)(cfg->max_sessions ? cfg->max_sessions - 1 : 15),
                           .max_links = (cfg->max_links ? cfg->max_links : 64) * 2 + 8};
  c->engine = wd_engine_new(&ec, &handler, c);
  return c->engine;
}

void wd_amqp__device_gone_PT(wd_conn_t *c) {
  wd_amqp__conn_opened_gone_PT(c);
  wd_amqp__conn_gone(c);
  wd_engine_free(c->engine); /* detaches every link */
  c->engine = NULL;
  /* What store jobs still held: those jobs ran discarded when the connection went. */
  while (c->links) wd_amqp__link_ctx_free(c->links);
  wd_log("amqp", WD_LOG_DEBUG, "[C%llu] '%s' disconnected", (unsigned long long)c->id, c->who.id);
  wd_amqp__conn_free(c);
}

/* The proactor, its listeners, and the dispatch of Proton events.
 *
 * N threads run wd_amqp_run. Proton serializes the events of one connection,
 * but its batches may run on any thread, so per-connection state lives in
 * wd_conn_t (the connection's context) and is touched only inside its batches;
 * everything shared across connections is locked or atomic. */

#include <proton/condition.h>
#include <proton/event.h>
#include <proton/netaddr.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway/base/log.h"
#include "protocol/driver.h"
#include "protocol/internal.h"

#define TICK_MS 1000     /* housekeeping: deadlines, expiries, throttled credit, trims */
#define TICK_MIN_MS 100  /* engines' ticks are never asked for sooner than this: heartbeats within 0.1 s */
#define MIN_PEER_IDLE_MS 200 /* a peer's shortest idle time-out that warden keeps (CONTRACT.md) */
/* A heartbeat is due at half the peer's idle time-out, so the once-a-second
   housekeeping is on time for it unless that time-out is under this (at least
   2 s to spare); only shorter ones bring the proactor's timeout forward, each
   time at the cost of a walk of every connection. */
#define ON_TIME_IDLE_MS 6000
#define CLOSE_GRACE_MS 2000 /* a peer that does not answer our close is cut off after this */

static char *dup_or_null(const char *s) { return s && s[0] ? strdup(s) : NULL; }

static void free_config(wd_amqp_config_t *cfg) {
  free((char *)cfg->hostname);
  free((char *)cfg->listen);
  free((char *)cfg->tls_listen);
  free((char *)cfg->tls_cert);
  free((char *)cfg->tls_key);
  free((char *)cfg->tls_ca);
  free((char *)cfg->tls_ciphers);
  for (size_t i = 0; i < cfg->n_services; i++) {
    free((char *)cfg->services[i].name);
    free((char *)cfg->services[i].secret);
    free((char *)cfg->services[i].thumbprint);
  }
  free((void *)cfg->services);
}

static int copy_config(wd_amqp_config_t *dst, const wd_amqp_config_t *src) {
  *dst = *src;
  dst->hostname = strdup(src->hostname ? src->hostname : "localhost");
  dst->listen = dup_or_null(src->listen);
  dst->tls_listen = dup_or_null(src->tls_listen);
  dst->tls_cert = dup_or_null(src->tls_cert);
  dst->tls_key = dup_or_null(src->tls_key);
  dst->tls_ca = dup_or_null(src->tls_ca);
  dst->tls_ciphers = dup_or_null(src->tls_ciphers);
  wd_amqp_service_t *svc = calloc(src->n_services ? src->n_services : 1, sizeof *svc);
  dst->services = svc;
  if (!svc || !dst->hostname) return WD_ERR_NOMEM;
  for (size_t i = 0; i < src->n_services; i++) {
    svc[i].name = strdup(src->services[i].name);
    svc[i].secret = dup_or_null(src->services[i].secret);
    svc[i].thumbprint = dup_or_null(src->services[i].thumbprint);
    svc[i].scopes = src->services[i].scopes;
    if (!svc[i].name) return WD_ERR_NOMEM;
  }
  return WD_OK;
}

static void listen_on(wd_amqp_t *a, int i, const char *addr, bool tls) {
  pn_listener_t *l = pn_listener();
  pn_listener_set_context(l, &a->listener_tls[i]);
  a->listener_tls[i] = tls;
  a->listeners[i] = l;
  a->listeners_pending++;
  pn_proactor_listen(a->proactor, l, addr, 256);
}

int wd_amqp_new(const wd_amqp_config_t *cfg, wd_store_t *store, wd_amqp_t **out) {
  wd_amqp_t *a = calloc(1, sizeof *a);
  if (!a) return WD_ERR_NOMEM;
  a->store = store;
  pthread_mutex_init(&a->listen_lock, NULL);
  pthread_cond_init(&a->listen_cond, NULL);
  pthread_mutex_init(&a->waiters_lock, NULL);
  pthread_mutex_init(&a->timer_lock, NULL);
  int rc = copy_config(&a->cfg, cfg);
  if (rc == WD_OK) rc = wd_amqp__conns_init(a);
  if (rc == WD_OK && a->cfg.tls_listen) rc = wd_amqp__tls_init(a);
  if (rc == WD_OK && !(a->proactor = pn_proactor())) rc = WD_ERR_NOMEM;
  if (rc < 0) {
    wd_amqp_free(a);
    return rc;
  }
  if (rc == WD_OK) rc = wd_store_add_append_listener(store, wd_amqp__log_appended, a);
  wd_amqp__codec_install(a, a->cfg.max_delivery_count);
  pthread_mutex_lock(&a->listen_lock);
  if (a->cfg.listen) listen_on(a, 0, a->cfg.listen, false);
  if (a->cfg.tls_listen) listen_on(a, 1, a->cfg.tls_listen, true);
  pthread_mutex_unlock(&a->listen_lock);
  a->housekeeping_due_ms = wd_mono_ms() + TICK_MS;
  atomic_store(&a->timer_due_ms, a->housekeeping_due_ms);
  pn_proactor_set_timeout(a->proactor, TICK_MS);
  *out = a;
  return WD_OK;
}

int wd_amqp_wait_listening(wd_amqp_t *a) {
  pthread_mutex_lock(&a->listen_lock);
  while (a->listeners_pending > 0) pthread_cond_wait(&a->listen_cond, &a->listen_lock);
  int rc = a->listen_error;
  pthread_mutex_unlock(&a->listen_lock);
  return rc;
}

static void abort_connection(wd_conn_t *c, void *arg, bool discard);

static void close_for_shutdown(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (!discard) wd_amqp__conn_close_PT(c, "amqp:connection:forced", "warden is shutting down");
}

void wd_amqp_shutdown(wd_amqp_t *a, int drain_ms) {
  atomic_store(&a->stopping, true);
  pthread_mutex_lock(&a->listen_lock);
  for (int i = 0; i < 2; i++)
    if (a->listeners[i]) pn_listener_close(a->listeners[i]);
  pthread_mutex_unlock(&a->listen_lock);
  /* Telemetry already received is committed and settled before connections close. */
  for (int waited = 0; atomic_load(&a->inflight_commits) > 0 && waited < drain_ms; waited += 5)
    nanosleep(&(struct timespec){0, 5000000L}, NULL);
  if (atomic_load(&a->inflight_commits) > 0)
    wd_log("amqp", WD_LOG_WARNING, "%d telemetry messages were still being committed at shutdown; their senders "
           "will send them again", atomic_load(&a->inflight_commits));
  /* Close every connection properly, so that peers learn why; then cut off
     whoever has not answered within a second. */
  wd_amqp__post_all(a, close_for_shutdown);
  for (int waited = 0; wd_amqp__conn_count(a) > 0 && waited < 1000; waited += 5)
    nanosleep(&(struct timespec){0, 5000000L}, NULL);
  wd_amqp__post_all(a, abort_connection);
  /* Warden ends its raw connections itself: Proton 0.37's pn_proactor_disconnect
     asserts on them. One that has not gone within a second is freed with the proactor. */
  for (int waited = 0; atomic_load(&a->streams) > 0 && waited < 1000; waited += 5)
    nanosleep(&(struct timespec){0, 5000000L}, NULL);
  pn_proactor_cancel_timeout(a->proactor);
  pn_proactor_interrupt(a->proactor);
}

void wd_amqp_free(wd_amqp_t *a) {
  if (!a) return;
  if (a->store) wd_store_remove_append_listener(a->store, wd_amqp__log_appended, a);
  if (a->proactor) pn_proactor_free(a->proactor);
  wd_amqp__tls_fini(a);
  if (a->by_id) wd_amqp__conns_fini(a);
  wd_amqp__waiters_fini(a);
  pthread_mutex_destroy(&a->waiters_lock);
  pthread_mutex_destroy(&a->timer_lock);
  free_config(&a->cfg);
  pthread_mutex_destroy(&a->listen_lock);
  pthread_cond_destroy(&a->listen_cond);
  free(a);
}

int wd_amqp_authenticate_service(wd_amqp_t *a, const char *secret, unsigned *scopes) {
  int rc = WD_ERR_DENIED;
  for (size_t i = 0; i < a->cfg.n_services; i++) {
    const wd_amqp_service_t *s = &a->cfg.services[i];
    if (s->secret && wd_secure_equal(s->secret, strlen(s->secret), secret, strlen(secret))) {
      *scopes = s->scopes;
      rc = WD_OK;
    }
  }
  return rc;
}

bool wd_amqp_is_service(wd_amqp_t *a, const char *name) {
  for (size_t i = 0; i < a->cfg.n_services; i++)
    if (strcmp(a->cfg.services[i].name, name) == 0) return true;
  return false;
}

void wd_amqp__conn_close_PT(wd_conn_t *c, const char *condition, const char *description) {
  if (c->closing) return;
  c->closing = true;
  wd_log("amqp", WD_LOG_INFO, "[C%llu] closing connection of '%s': %s (%s)", (unsigned long long)c->id,
         c->who.id, condition, description);
  if (c->engine) {
    wd_engine_close(c->engine, condition, description);
    wd_amqp__conn_closing(c, wd_mono_ms() + CLOSE_GRACE_MS);
    return;
  }
  if (!c->pn) { /* not logged in: no engine to say why */
    wd_amqp__conn_abort_PT(c);
    return;
  }
  pn_condition_t *cond = pn_connection_condition(c->pn);
  pn_condition_set_name(cond, condition);
  pn_condition_set_description(cond, description);
  if (pn_connection_state(c->pn) & PN_LOCAL_UNINIT) pn_connection_open(c->pn);
  pn_connection_close(c->pn);
  wd_amqp__conn_closing(c, wd_mono_ms() + CLOSE_GRACE_MS);
}

void wd_amqp__link_refuse_PT(pn_link_t *link, const char *condition, const char *description) {
  /* The refused end of the attach is null, then the detach carries the reason. */
  if (pn_link_is_receiver(link))
    pn_terminus_set_type(pn_link_target(link), PN_UNSPECIFIED);
  else
    pn_terminus_set_type(pn_link_source(link), PN_UNSPECIFIED);
  pn_link_open(link);
  pn_condition_t *cond = pn_link_condition(link);
  pn_condition_set_name(cond, condition);
  pn_condition_set_description(cond, description);
  pn_link_close(link);
}

void wd_amqp__link_ctx_free(wd_link_ctx_t *lc) {
  if (!lc) return;
  if (lc->pn) pn_link_set_context(lc->pn, NULL);
  if (!lc->pn) { /* a device's: out of its connection's list */
    wd_link_ctx_t **p = &lc->conn->links;
    while (*p && *p != lc) p = &(*p)->next;
    if (*p) *p = lc->next;
  }
  free(lc->inflight);
  free(lc->awaiting);
  free(lc);
}

void wd_amqp__link_ctx_release_PT(wd_link_ctx_t *lc) {
  pn_link_t *link = lc->pn;
  wd_amqp__link_ctx_free(lc);
  if (link) pn_link_free(link);
}

static bool has_token(const char *list, const char *token) {
  size_t n = strlen(token);
  for (const char *p = list; *p;) {
    size_t len = strcspn(p, " ");
    if (len == n && memcmp(p, token, n) == 0) return true;
    p += len;
    while (*p == ' ') p++;
  }
  return false;
}

/* A device may reach another only where its registry entry lists that device or one of its groups. */
static bool peer_allowed(wd_amqp_t *a, const char *from, const char *to) {
  wd_device_t *src = NULL, *dst = NULL;
  bool ok = false;
  if (wd_store_device_get(a->store, from, &src) == WD_OK && wd_store_device_get(a->store, to, &dst) == WD_OK) {
    ok = has_token(src->peers, to);
    for (const char *g = dst->groups; !ok && *g;) {
      size_t len = strcspn(g, " ");
      char group[WD_ID_MAX + 1];
      if (len > 0 && len <= WD_ID_MAX) {
        memcpy(group, g, len);
        group[len] = '\0';
        ok = has_token(src->peers, group);
      }
      g += len;
      while (*g == ' ') g++;
    }
  }
  wd_device_free(src);
  wd_device_free(dst);
  return ok;
}

wd_link_ctx_t *wd_amqp__link_decide_PT(wd_conn_t *c, bool inbound, const char *address, const char **condition,
                                       const char **why) {
  wd_principal_t who = {.is_device = c->who.is_device, .id = c->who.id, .scopes = c->who.scopes};
  wd_address_t addr;
  int rc = wd_address_authorize(&who, inbound ? WD_LINK_INBOUND : WD_LINK_OUTBOUND, address, &addr, why);
  if (rc == WD_OK && addr.needs_peer_check && !peer_allowed(c->amqp, c->who.id, addr.param)) {
    rc = WD_ERR_DENIED;
    *why = "the registry does not let this device reach that device";
  }
  if (rc < 0) {
    wd_log("amqp", WD_LOG_INFO, "[C%llu] refused %s link '%s' for '%s': %s", (unsigned long long)c->id,
           inbound ? "sending" : "receiving", address ? address : "(null)", c->who.id, *why);
    *condition = rc == WD_ERR_NOT_FOUND ? "amqp:not-found" : "amqp:unauthorized-access";
    return NULL;
  }
  if (c->n_links >= (int)c->amqp->cfg.max_links) {
    wd_log("amqp", WD_LOG_INFO, "[C%llu] '%s' already has %d links; refused another", (unsigned long long)c->id,
           c->who.id, c->n_links);
    *condition = "amqp:resource-limit-exceeded";
    *why = "too many links on this connection";
    return NULL;
  }
  wd_link_ctx_t *lc = calloc(1, sizeof *lc);
  if (!lc) {
    *condition = "amqp:resource-limit-exceeded";
    *why = "out of memory";
    return NULL;
  }
  c->n_links++;
  lc->counted = true;
  lc->addr = addr;
  lc->conn = c;
  return lc;
}

void wd_amqp__link_uncount_PT(wd_link_ctx_t *lc) {
  /* Uncounted once, whoever detached first (a link warden closed itself included). */
  if (lc && lc->counted) {
    lc->conn->n_links--;
    lc->counted = false;
  }
}

/* A service's link (Proton's engine). */
static void on_link_remote_open(wd_conn_t *c, pn_link_t *link) {
  if (c->closing) return;
  bool inbound = pn_link_is_receiver(link);
  pn_terminus_copy(pn_link_source(link), pn_link_remote_source(link));
  pn_terminus_copy(pn_link_target(link), pn_link_remote_target(link));
  const char *address = pn_terminus_get_address(inbound ? pn_link_remote_target(link) : pn_link_remote_source(link));
  const char *condition, *why;
  wd_link_ctx_t *lc = wd_amqp__link_decide_PT(c, inbound, address, &condition, &why);
  if (!lc) {
    wd_amqp__link_refuse_PT(link, condition, why);
    return;
  }
  lc->pn = link;
  pn_link_set_context(link, lc);
  if (inbound) { /* enqueueing */
    pn_link_set_max_message_size(link, c->amqp->cfg.max_message_size);
    pn_link_set_rcv_settle_mode(link, PN_RCV_FIRST);
    pn_link_open(link);
    wd_amqp__top_up_PT(lc);
    return;
  }
  int rc = lc->addr.kind == WD_ADDR_EGRESS ? WD_ERR_INVALID : wd_amqp__log_outbound_open_PT(c, link, lc);
  if (rc < 0) {
    wd_amqp__link_uncount_PT(lc);
    wd_amqp__link_ctx_free(lc);
    wd_amqp__link_refuse_PT(link, "amqp:internal-error", wd_err_str(rc));
  }
}

/* Outbound deliveries a service left unsettled go back to their group. */
static void abandon_unsettled(pn_link_t *link) {
  if (pn_link_is_sender(link)) wd_amqp__log_release_unsettled_PT(link);
}

wd_metric_address_t wd_amqp__metric_address(wd_addr_kind_t kind) {
  switch (kind) {
    case WD_ADDR_TELEMETRY: return WD_MA_TELEMETRY;
    case WD_ADDR_INQUIRIES: return WD_MA_INQUIRIES;
    case WD_ADDR_RESPONSES: return WD_MA_RESPONSES;
    case WD_ADDR_FEEDBACK: return WD_MA_FEEDBACK;
    case WD_ADDR_DEADLETTER: return WD_MA_DEADLETTER;
    case WD_ADDR_DEVICE_NOTIFICATIONS:
    case WD_ADDR_GROUP_NOTIFICATIONS: return WD_MA_NOTIFICATIONS;
    default: return WD_MA_COMMANDS;
  }
}

void wd_amqp__pump_job(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (discard) return;
  atomic_store(&c->pump_pending, false);
  for (wd_link_ctx_t *lc = c->links; lc; lc = lc->next)
    if (lc->lean && lc->addr.kind == WD_ADDR_EGRESS) wd_amqp__egress_pump_PT(c, lc);
  if (!c->pn) return;
  for (pn_link_t *l = pn_link_head(c->pn, PN_LOCAL_ACTIVE); l; l = pn_link_next(l, PN_LOCAL_ACTIVE))
    if (pn_link_is_sender(l) && pn_link_get_context(l)) wd_amqp__log_pump_PT(c, l);
}

static void on_link_remote_close(wd_conn_t *c, pn_link_t *link) {
  wd_link_ctx_t *lc = pn_link_get_context(link);
  if (c) abandon_unsettled(link);
  if (c) wd_amqp__link_uncount_PT(lc);
  if (!(pn_link_state(link) & PN_LOCAL_CLOSED)) pn_link_close(link);
  if (!lc) {
    pn_link_free(link);
    return;
  }
  lc->closed = true;
  if (lc->pending_commits == 0) wd_amqp__link_ctx_release_PT(lc);
}

/* Ending a session ends its links, though the peer detached none of them. */
static void on_session_remote_close(wd_conn_t *c, pn_session_t *ssn) {
  pn_link_t *next;
  for (pn_link_t *l = c ? pn_link_head(c->pn, 0) : NULL; l; l = next) {
    next = pn_link_next(l, 0);
    if (pn_link_session(l) == ssn && !(pn_link_state(l) & PN_REMOTE_CLOSED)) on_link_remote_close(c, l);
  }
  if (!(pn_session_state(ssn) & PN_LOCAL_CLOSED)) pn_session_close(ssn);
}

/* Applies the registry to a freshly authenticated device: registered first (so
 * a revocation from now on finds it), then checked (so one committed before
 * now is seen). */
static bool admit_device(wd_conn_t *c) {
  wd_amqp__conn_index_device(c);
  wd_device_t *d = NULL;
  bool ok = wd_store_device_get(c->amqp->store, c->who.id, &d) == WD_OK && d->enabled &&
            d->generation == c->who.device_generation;
  wd_device_free(d);
  return ok;
}

bool wd_amqp__conn_open_PT(wd_conn_t *c, uint32_t remote_idle, uint32_t *local_idle) {
  wd_amqp_t *a = c->amqp;
  if (wd_amqp__conn_count(a) > a->cfg.max_connections) {
    wd_amqp__conn_close_PT(c, "amqp:resource-limit-exceeded", "too many connections");
    return false;
  }
  /* Heartbeats are due at half the peer's idle time-out, and an engine is
     ticked after each write: a time-out of a few ms would have warden write
     empty frames as fast as the socket takes them. */
  if (remote_idle > 0 && remote_idle < MIN_PEER_IDLE_MS) {
    char why[96];
    snprintf(why, sizeof why, "idle-time-out of %u ms; warden keeps %u ms or more", (unsigned)remote_idle,
             (unsigned)MIN_PEER_IDLE_MS);
    wd_amqp__conn_close_PT(c, "amqp:invalid-field", why);
    return false;
  }
  if (c->who.is_device && !admit_device(c)) {
    wd_amqp__conn_close_PT(c, "amqp:unauthorized-access", "credentials revoked");
    return false;
  }
  /* A sleeping device may ask for a longer idle time-out than ours; grant it up to the maximum. */
  atomic_store(&c->tick_on_time, remote_idle > 0 && remote_idle < ON_TIME_IDLE_MS);
  *local_idle = a->cfg.idle_timeout_ms;
  if (remote_idle > *local_idle) *local_idle = remote_idle < a->cfg.max_idle_timeout_ms ? remote_idle : a->cfg.max_idle_timeout_ms;
  wd_amqp__conn_admitted(c);
  if (c->who.is_device) wd_store_presence_set(a->store, c->who.id, wd_now_ms());
  c->gauge = c->who.is_device ? &wd_metrics.connections_device : &wd_metrics.connections_service;
  atomic_fetch_add(c->gauge, 1);
  wd_log("amqp", WD_LOG_INFO, "[C%llu] %s '%s' connected from %s (%s, %s)", (unsigned long long)c->id,
         c->who.is_device ? "device" : "service", c->who.id, c->remote, c->tls ? "TLS" : "plain", c->who.mech);
  return true;
}

void wd_amqp__conn_opened_gone_PT(wd_conn_t *c) {
  if (c->gauge) atomic_fetch_sub(c->gauge, 1);
  if (c->gauge && c->who.is_device) wd_store_presence_set(c->amqp->store, c->who.id, atomic_load(&c->last_seen_ms));
}

/* A service's open (Proton's engine). */
static void on_connection_remote_open(wd_conn_t *c) {
  pn_transport_t *t = pn_connection_transport(c->pn);
  uint32_t local_idle;
  if (!wd_amqp__conn_open_PT(c, pn_transport_get_remote_idle_timeout(t), &local_idle)) return;
  pn_transport_set_idle_timeout(t, local_idle);
  /* Proton moves its idle deadline only when bytes arrive: until the next
     frame, warden itself holds the peer to the time-out chosen here. */
  c->idle_frames = pn_transport_get_frames_input(t);
  wd_amqp__conn_watch_idle(c, wd_mono_ms() + local_idle);
  pn_connection_set_container(c->pn, "warden");
  pn_connection_open(c->pn);
}

static void on_transport_closed(wd_conn_t *c) {
  wd_amqp__conn_opened_gone_PT(c);
  for (pn_link_t *l = pn_link_head(c->pn, 0); l; l = pn_link_next(l, 0)) {
    abandon_unsettled(l);
    wd_amqp__link_ctx_free(pn_link_get_context(l));
  }
  wd_amqp__conn_gone(c);
  if (c->who.authenticated)
    wd_log("amqp", WD_LOG_DEBUG, "[C%llu] '%s' disconnected", (unsigned long long)c->id, c->who.id);
  pn_connection_set_context(c->pn, NULL);
  wd_amqp__conn_free(c);
}

static void expire_token(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (!discard) wd_amqp__conn_close_PT(c, "amqp:unauthorized-access", "SAS token expired");
}

/* The peer never answered our close, or never logged in: stop reading and writing. */
static void abort_connection(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (!discard) wd_amqp__conn_abort_PT(c);
}

/* Counts the connection against its source address; an address over its
 * limit is cut off before SASL starts. */
wd_conn_t *wd_amqp__conn_accepted(wd_amqp_t *a, pn_raw_connection_t *raw, bool tls, char *ip) {
  wd_conn_t *c = wd_amqp__conn_new(a, raw);
  if (!c) return NULL;
  c->tls = tls;
  const pn_netaddr_t *na = pn_raw_connection_remote_addr(raw);
  char port[16];
  snprintf(ip, 64, "?");
  if (!na || pn_netaddr_str(na, c->remote, sizeof c->remote) < 0) snprintf(c->remote, sizeof c->remote, "?");
  if (na) pn_netaddr_host_port(na, ip, 64, port, sizeof port);
  int rc = wd_amqp__conn_bind(c, ip);
  /* A blocked address still gets a SASL refusal (credentials unread): a clear answer, and no oracle. */
  if (rc == WD_OK || rc == WD_ERR_DENIED) return c;
  wd_log("amqp", WD_LOG_DEBUG, "[C%llu] refused a connection from %s: too many connections from this address",
         (unsigned long long)c->id, ip);
  c->closing = true;
  return c;
}

/* The store has room again: give every inbound link its credit back. */
static void top_up_job(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (discard) return;
  for (wd_link_ctx_t *lc = c->links; lc; lc = lc->next)
    if (lc->lean && wd_engine_link_inbound(lc->lean)) wd_amqp__top_up_PT(lc);
  if (!c->pn) return;
  for (pn_link_t *l = pn_link_head(c->pn, PN_LOCAL_ACTIVE); l; l = pn_link_next(l, PN_LOCAL_ACTIVE)) {
    wd_link_ctx_t *lc = pn_link_get_context(l);
    if (lc && pn_link_is_receiver(l)) wd_amqp__top_up_PT(lc);
  }
}

void wd_amqp__engine_start(wd_conn_t *c, pn_connection_t *pc, pn_transport_t *t) {
  c->pn = pc;
  pn_connection_set_context(pc, c);
  pn_transport_set_server(t);
  /* No idle time-out until the peer's open says what it needs (the SASL
     deadline bounds the time until then; see on_connection_remote_open). */
  if (c->amqp->cfg.max_frame_size) pn_transport_set_max_frame(t, c->amqp->cfg.max_frame_size);
  if (c->amqp->cfg.max_sessions) pn_transport_set_channel_max(t, (uint16_t)(c->amqp->cfg.max_sessions - 1));
}

/* The first idle deadline after the open: dropped if nothing came since. */
static void idle_check(wd_conn_t *c, void *arg, bool discard) {
  (void)arg;
  if (discard || !c->pn) return;
  pn_transport_t *t = pn_connection_transport(c->pn);
  if (pn_transport_get_frames_input(t) != c->idle_frames) return;
  wd_amqp__conn_close_PT(c, "amqp:resource-limit-exceeded", "local-idle-timeout expired");
  /* A silent peer is presumed gone: no waiting for its answer to the close. */
  wd_amqp__conn_abort_PT(c);
}

static void on_listener_event(wd_amqp_t *a, pn_event_t *e, pn_listener_t *l) {
  bool *tls_flag = pn_listener_get_context(l);
  bool tls = *tls_flag;
  if (pn_event_type(e) == PN_LISTENER_OPEN) {
    char host[64], port[16];
    pn_netaddr_host_port(pn_listener_addr(l), host, sizeof host, port, sizeof port);
    wd_log("amqp", WD_LOG_INFO, "listening %s %s:%s", tls ? "amqps" : "amqp", host, port);
    pthread_mutex_lock(&a->listen_lock);
    a->listeners_pending--;
    *tls_flag = tls; /* unchanged; the listener opened */
    pthread_cond_broadcast(&a->listen_cond);
    pthread_mutex_unlock(&a->listen_lock);
  } else if (pn_event_type(e) == PN_LISTENER_ACCEPT) {
    wd_amqp__stream_accept(a, l, tls);
  } else if (pn_event_type(e) == PN_LISTENER_CLOSE) {
    pn_condition_t *cond = pn_listener_condition(l);
    pthread_mutex_lock(&a->listen_lock);
    for (int i = 0; i < 2; i++)
      if (a->listeners[i] == l) a->listeners[i] = NULL;
    if (pn_condition_is_set(cond) && !atomic_load(&a->stopping)) {
      wd_log("amqp", WD_LOG_ERROR, "cannot listen for %s: %s", tls ? "amqps" : "amqp",
             pn_condition_get_description(cond));
      a->listen_error = WD_ERR_IO;
      a->listeners_pending--;
      pthread_cond_broadcast(&a->listen_cond);
    }
    pthread_mutex_unlock(&a->listen_lock);
  }
}

void wd_amqp__tick_needed(wd_amqp_t *a, int64_t due) {
  int64_t now = wd_mono_ms();
  if (due < now + TICK_MIN_MS) due = now + TICK_MIN_MS;
  if (due >= atomic_load(&a->timer_due_ms)) return; /* the usual case, without the lock */
  pthread_mutex_lock(&a->timer_lock);
  if (due < atomic_load(&a->timer_due_ms) && !atomic_load(&a->stopping)) {
    atomic_store(&a->timer_due_ms, due);
    pn_proactor_set_timeout(a->proactor, (pn_millis_t)(due - now));
  }
  pthread_mutex_unlock(&a->timer_lock);
}

/* The proactor's timeout: housekeeping when its second has come, and every
 * engine whose tick is due; then the timeout again, for whichever comes first. */
static void on_timeout(wd_amqp_t *a) {
  int64_t now = wd_mono_ms();
  if (now >= a->housekeeping_due_ms) {
    bool pressure = wd_store_under_pressure(a->store);
    if (a->pressure && !pressure) wd_amqp__post_all(a, top_up_job); /* flow resumes by itself */
    a->pressure = pressure;
    wd_amqp__post_expired(a, wd_now_ms() / 1000, expire_token);
    wd_amqp__post_overdue(a, now, abort_connection);
    wd_amqp__waiters_expire(a, now);
    wd_amqp__post_unadmitted(a, now, abort_connection);
    wd_amqp__post_throttled(a, top_up_job);
    wd_amqp__post_idle_due(a, now, idle_check);
    a->housekeeping_due_ms = now + TICK_MS;
  }
  /* Under the timer lock, so that an engine asking for an earlier tick while
     the connections are walked is not overwritten by what the walk found. */
  pthread_mutex_lock(&a->timer_lock);
  int64_t next = wd_amqp__wake_ticks_due(a, now);
  int64_t due = next < a->housekeeping_due_ms ? next : a->housekeeping_due_ms;
  if (due < now + TICK_MIN_MS) due = now + TICK_MIN_MS;
  atomic_store(&a->timer_due_ms, due);
  pn_proactor_set_timeout(a->proactor, (pn_millis_t)(due - now));
  pthread_mutex_unlock(&a->timer_lock);
}

bool wd_amqp__handle(wd_amqp_t *a, pn_event_t *e) {
  pn_raw_connection_t *raw = pn_event_raw_connection(e);
  if (raw) {
    wd_amqp__stream_event(pn_event_type(e), raw);
    return true;
  }
  pn_connection_t *pc = pn_event_connection(e);
  wd_conn_t *c = pc ? pn_connection_get_context(pc) : NULL;
  pn_listener_t *l = pn_event_listener(e);
  if (l) {
    on_listener_event(a, e, l);
    return true;
  }
  switch (pn_event_type(e)) {
    case PN_CONNECTION_REMOTE_OPEN:
      if (c) on_connection_remote_open(c);
      break;
    case PN_CONNECTION_REMOTE_CLOSE:
      if (!(pn_connection_state(pc) & PN_LOCAL_CLOSED)) pn_connection_close(pc);
      break;
    case PN_SESSION_REMOTE_OPEN:
      if (c && !c->closing) pn_session_open(pn_event_session(e));
      break;
    case PN_SESSION_REMOTE_CLOSE:
      on_session_remote_close(c, pn_event_session(e));
      break;
    case PN_TRANSPORT_TAIL_CLOSED:
    case PN_TRANSPORT_ERROR:
      /* The peer stopped sending (end of stream, or a frame Proton could not
         decode): close our side too, so the socket goes now and not at the idle
         timeout; Proton still writes the close frame with its condition first. */
      if (c && !(pn_connection_state(pc) & PN_LOCAL_CLOSED)) {
        pn_condition_t *tc = pn_transport_condition(pn_event_transport(e));
        if (pn_condition_is_set(tc)) pn_condition_copy(pn_connection_condition(pc), tc);
        pn_connection_close(pc);
      }
      break;
    case PN_LINK_REMOTE_OPEN:
      if (c) on_link_remote_open(c, pn_event_link(e));
      break;
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH:
      on_link_remote_close(c, pn_event_link(e));
      break;
    case PN_LINK_FLOW: {
      pn_link_t *link = pn_event_link(e);
      wd_link_ctx_t *lc = pn_link_get_context(link);
      if (c && lc && pn_link_is_sender(link)) wd_amqp__log_pump_PT(c, link);
      break;
    }
    case PN_DELIVERY: {
      pn_delivery_t *d = pn_event_delivery(e);
      pn_link_t *link = pn_delivery_link(d);
      wd_link_ctx_t *lc = pn_link_get_context(link);
      if (!c || !lc) {
        if (pn_link_is_receiver(link) && pn_delivery_readable(d) && !pn_delivery_partial(d)) {
          pn_link_advance(link);
          pn_delivery_settle(d);
        }
        break;
      }
      if (pn_link_is_receiver(link)) {
        size_t n;
        uint8_t *msg = wd_amqp__recv_PT(lc, d, &n);
        if (!msg) break;
        wd_inbound_t in = {.pn = d, .presettled = pn_delivery_settled(d)};
        wd_amqp__enqueue_PT(lc, &in, msg, n);
        free(msg);
      } else if (pn_delivery_updated(d)) {
        wd_amqp__log_outbound_update_PT(link, d);
      }
      break;
    }
    case PN_CONNECTION_WAKE:
      if (c) wd_amqp__conn_run_jobs(c);
      break;
    case PN_TRANSPORT_CLOSED:
      if (c) on_transport_closed(c);
      break;
    case PN_PROACTOR_TIMEOUT:
      if (!atomic_load(&a->stopping)) on_timeout(a);
      break;
    case PN_PROACTOR_INACTIVE:
      if (atomic_load(&a->stopping)) pn_proactor_interrupt(a->proactor);
      break;
    case PN_PROACTOR_INTERRUPT: return false;
    default: break;
  }
  return true;
}

void wd_amqp_run(wd_amqp_t *a) {
  for (;;) {
    pn_event_batch_t *batch = pn_proactor_wait(a->proactor);
    pn_event_t *e;
    bool stop = false;
    while (!stop && (e = pn_event_batch_next(batch))) stop = !wd_amqp__handle(a, e);
    pn_proactor_done(a->proactor, batch);
    if (stop) {
      /* Interrupts coalesce, so pass it on for the next thread - but only after
         done: raised inside the batch, Proton hands it back to the same batch. */
      pn_proactor_interrupt(a->proactor);
      return;
    }
  }
}

int wd_amqp_driver_tls_init(wd_amqp_t *a, const char *cert_file, const char *key_file) {
  free((char *)a->cfg.tls_cert);
  free((char *)a->cfg.tls_key);
  a->cfg.tls_cert = strdup(cert_file);
  a->cfg.tls_key = strdup(key_file);
  if (!a->cfg.tls_cert || !a->cfg.tls_key) return WD_ERR_NOMEM;
  wd_amqp__tls_fini(a);
  return wd_amqp__tls_init(a);
}

void wd_amqp_driver_accept(wd_amqp_t *a, bool tls) { wd_amqp__stream_accept(a, NULL, tls); }

void wd_amqp_driver_event(pn_raw_connection_t *raw, pn_event_type_t type) { wd_amqp__stream_event(type, raw); }

size_t wd_amqp_driver_connections(wd_amqp_t *a) { return wd_amqp__conn_count(a); }

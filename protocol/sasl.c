/* Server-side SASL without Cyrus: PLAIN and EXTERNAL through Proton's plugin
 * interface (proton/sasl_plugin.h).
 *
 * Proton calls every slot of the implementation without NULL checks, and a
 * peer can reach process_response in any state, so all 14 are filled. Proton
 * does not refuse PLAIN over cleartext on a server; list_mechanisms and
 * process_init do. pnx_sasl_set_succeeded keeps the user pointer it is given,
 * so the string lives in the context until `free`.
 *
 * The plugin also claims a SASL security layer, whose encode and decode leave
 * the bytes as they are: Proton then passes everything the peer sends after
 * SASL through `decode`, which is where the frame guard reads it before
 * Proton's engine does (protocol/frame_guard.h). */

#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/frame_guard.h"
#include "protocol/internal.h"
#include "protocol/sas.h"

typedef struct {
  wd_amqp_t *amqp;
  bool tls;
  bool tried; /* a sasl-init was processed: one is all a connection gets */
  wd_identity_t who;
  wd_frame_guard_t guard;
  char ip[64];     /* the peer's address without port, "?" until bound */
  char remote[64]; /* with port, for logs */
  char thumbprint[WD_THUMBPRINT_HEX + 1]; /* of a verified client certificate; "" when none */
} sasl_ctx_t;

static const char sas_prefix[] = "SharedAccessSignature ";

static void s_free(pn_transport_t *t) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (!ctx) return;
  wd_frame_guard_fini(&ctx->guard);
  free(ctx);
}

static bool plain_allowed(const sasl_ctx_t *ctx) { return ctx->tls || ctx->amqp->cfg.dev_mode; }

static const char *s_list_mechanisms(pn_transport_t *t) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (!ctx) return "";
  bool external = ctx->thumbprint[0] != '\0';
  bool plain = plain_allowed(ctx);
  if (external && plain) return "EXTERNAL PLAIN";
  if (external) return "EXTERNAL";
  if (plain) return "PLAIN";
  return "";
}

static bool s_init_server(pn_transport_t *t) {
  pnx_sasl_set_desired_state(t, SASL_POSTED_MECHANISMS);
  return true;
}

static bool s_init_client(pn_transport_t *t) {
  (void)t;
  return false;
}

static void s_noop(pn_transport_t *t) { (void)t; }

static void s_process_response(pn_transport_t *t, const pn_bytes_t *recv) {
  (void)recv;
  /* PLAIN and EXTERNAL have no second step: a response is a protocol error. */
  pnx_sasl_set_failed(t);
  pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
}

static bool s_process_mechanisms(pn_transport_t *t, const char *mechs) {
  (void)t;
  (void)mechs;
  return false;
}

static void s_process_challenge(pn_transport_t *t, const pn_bytes_t *recv) {
  (void)t;
  (void)recv;
}

static bool s_can_encrypt(pn_transport_t *t) { return pnx_sasl_get_context(t) != NULL; }

/* Only the size of the pieces encode and decode get; nothing is added to them. */
static ssize_t s_max_encrypt_size(pn_transport_t *t) {
  (void)t;
  return 64 * 1024;
}

static ssize_t s_encode(pn_transport_t *t, pn_bytes_t in, pn_bytes_t *out) {
  (void)t;
  *out = in;
  return (ssize_t)in.size;
}

static ssize_t s_decode(pn_transport_t *t, pn_bytes_t in, pn_bytes_t *out) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  const char *condition;
  const char *why = wd_frame_guard_feed(&ctx->guard, (const uint8_t *)in.start, in.size, &condition);
  if (why) {
    wd_log("amqp", WD_LOG_WARNING, "closing the connection of '%s' from %s: %s", ctx->who.id, ctx->remote, why);
    wd_metric_add(&wd_metrics.frames_refused, 1);
    pn_condition_t *c = pn_transport_condition(t);
    pn_condition_set_name(c, condition);
    pn_condition_set_description(c, why);
    /* Before the AMQP header Proton has no way to say why: the socket just closes. */
    if (!ctx->guard.amqp_started) pn_transport_close_head(t);
    return PN_EOS;
  }
  *out = in;
  return (ssize_t)in.size;
}

/* Checks a service's secret. All services are compared, so timing does not say which names exist. */
static bool verify_service(wd_amqp_t *a, const char *name, const char *secret, wd_identity_t *who) {
  bool ok = false;
  for (size_t i = 0; i < a->cfg.n_services; i++) {
    const wd_amqp_service_t *s = &a->cfg.services[i];
    if (strcmp(s->name, name) != 0 || !s->secret || !s->secret[0]) continue;
    if (wd_secure_equal(s->secret, strlen(s->secret), secret, strlen(secret))) {
      ok = true;
      who->scopes = s->scopes;
    }
  }
  if (ok) {
    who->is_device = false;
    snprintf(who->id, sizeof who->id, "%s", name);
  }
  return ok;
}

static bool verify_device(wd_amqp_t *a, const char *id, const char *password, wd_identity_t *who,
                          const char **why) {
  wd_device_t *d = NULL;
  int rc = wd_store_device_get(a->store, id, &d);
  if (rc < 0) {
    *why = rc == WD_ERR_NOT_FOUND ? "unknown device" : "registry unavailable";
    return false;
  }
  bool ok = false;
  int64_t expiry = 0;
  if (!d->enabled) {
    *why = "device disabled";
  } else if (!d->has_key) {
    *why = "device has no symmetric key";
  } else if (strncmp(password, sas_prefix, sizeof sas_prefix - 1) == 0) {
    rc = wd_sas_verify(password, a->cfg.hostname, id, d->key, wd_now_ms() / 1000, &expiry);
    ok = rc == WD_OK;
    *why = rc == WD_ERR_INVALID ? "malformed SAS token" : "SAS token wrong or expired";
  } else if (a->cfg.allow_key_password) {
    uint8_t key[64];
    int n = wd_base64_decode(password, strlen(password), key, sizeof key);
    ok = n == WD_KEY_BYTES && wd_secure_equal(key, (size_t)n, d->key, WD_KEY_BYTES);
    explicit_bzero(key, sizeof key);
    *why = "wrong key";
  } else {
    *why = "password is not a SAS token (key passwords are not allowed)";
  }
  if (ok) {
    who->is_device = true;
    snprintf(who->id, sizeof who->id, "%s", id);
    who->device_generation = d->generation;
    who->token_expiry_s = expiry;
  }
  wd_device_free(d);
  return ok;
}

static bool verify_thumbprint(wd_amqp_t *a, const char *thumbprint, wd_identity_t *who, const char **why) {
  for (size_t i = 0; i < a->cfg.n_services; i++) {
    const wd_amqp_service_t *s = &a->cfg.services[i];
    if (s->thumbprint && strcmp(s->thumbprint, thumbprint) == 0) {
      who->is_device = false;
      who->scopes = s->scopes;
      snprintf(who->id, sizeof who->id, "%s", s->name);
      return true;
    }
  }
  char id[WD_ID_MAX + 1];
  wd_device_t *d = NULL;
  if (wd_store_device_by_thumbprint(a->store, thumbprint, id) < 0 || wd_store_device_get(a->store, id, &d) < 0) {
    *why = "certificate not registered";
    return false;
  }
  bool ok = d->enabled && strcmp(d->thumbprint, thumbprint) == 0;
  if (ok) {
    who->is_device = true;
    snprintf(who->id, sizeof who->id, "%s", id);
    who->device_generation = d->generation;
  } else {
    *why = "device disabled";
  }
  wd_device_free(d);
  return ok;
}

static void s_process_init(pn_transport_t *t, const char *mech, const pn_bytes_t *recv) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (!ctx) {
    pnx_sasl_set_failed(t);
    pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
    return;
  }
  wd_amqp_t *a = ctx->amqp;
  /* Proton 0.37 hands over every sasl-init, even after the outcome (and leaks
     a little each time): a second one ends the connection. */
  if (ctx->tried) {
    pnx_sasl_error(t, "more than one sasl-init", "amqp:connection:framing-error");
    return;
  }
  ctx->tried = true;
  wd_identity_t who = {0};
  const char *why = "mechanism not offered";
  char user[WD_ID_MAX + 1] = "";
  bool ok = false;
  const char *ip = ctx->ip;
  if (wd_amqp__addr_blocked(a, ip)) {
    /* Refused without looking at the credentials: guessing gains nothing. */
    why = "address blocked after repeated failed logins";
  } else if (strcmp(mech, "PLAIN") == 0 && plain_allowed(ctx)) {
    /* [authzid] NUL authcid NUL password */
    const char *p = recv->start, *end = recv->size ? p + recv->size : p; /* no response: start may be NULL */
    const char *z1 = recv->size ? memchr(p, 0, recv->size) : NULL;
    const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
    why = "malformed PLAIN response";
    size_t ulen = z2 ? (size_t)(z2 - z1 - 1) : 0;
    if (z2 && ulen > 0 && ulen <= WD_ID_MAX && !memchr(z2 + 1, 0, (size_t)(end - z2 - 1))) {
      memcpy(user, z1 + 1, ulen);
      user[ulen] = '\0';
      char *password = strndup(z2 + 1, (size_t)(end - z2 - 1));
      if (password) {
        why = "wrong secret";
        mech = "PLAIN";
        if (wd_amqp_is_service(a, user))
          ok = verify_service(a, user, password, &who);
        else if (wd_id_valid(user))
          ok = verify_device(a, user, password, &who, &why);
        else
          why = "invalid user name";
        explicit_bzero(password, strlen(password));
        free(password);
      }
    }
  } else if (strcmp(mech, "EXTERNAL") == 0 && ctx->thumbprint[0]) {
    snprintf(user, sizeof user, "%s", ctx->thumbprint);
    ok = verify_thumbprint(a, ctx->thumbprint, &who, &why);
  }

  const char *addr = ctx->remote;
  if (ok) {
    who.authenticated = true;
    who.mech = strcmp(mech, "PLAIN") == 0 ? "PLAIN" : "EXTERNAL";
    ctx->who = who;
    wd_log("amqp", WD_LOG_DEBUG, "authenticated %s '%s' from %s with %s", who.is_device ? "device" : "service",
           who.id, addr, who.mech);
    pnx_sasl_set_succeeded(t, ctx->who.id, ctx->who.id);
  } else {
    wd_log("amqp", WD_LOG_WARNING, "authentication failed for '%s' from %s: %s", user, addr, why);
    wd_metric_add(&wd_metrics.auth_failures, 1);
    wd_amqp__auth_failed(a, ip);
    pnx_sasl_set_failed(t);
  }
  pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
  /* Bytes that came with the sasl-init (a client may pipeline its AMQP header
     and frames) would go straight to Proton's AMQP layer, past `decode`, until
     the outcome is written; writing it now puts the security layer - and so
     the frame guard - in front of them. */
  if (ok) pn_transport_pending(t);
}

static void s_process_outcome(pn_transport_t *t, const pn_bytes_t *recv) {
  (void)t;
  (void)recv;
}

static const pnx_sasl_implementation warden_sasl = {
    .free = s_free,
    .list_mechanisms = s_list_mechanisms,
    .init_server = s_init_server,
    .init_client = s_init_client,
    .prepare_write = s_noop,
    .process_init = s_process_init,
    .process_response = s_process_response,
    .process_mechanisms = s_process_mechanisms,
    .process_challenge = s_process_challenge,
    .process_outcome = s_process_outcome,
    .can_encrypt = s_can_encrypt,
    .max_encrypt_size = s_max_encrypt_size,
    .encode = s_encode,
    .decode = s_decode,
};

void wd_amqp__sasl_install(wd_amqp_t *a, pn_transport_t *t, bool tls) {
  sasl_ctx_t *ctx = calloc(1, sizeof *ctx);
  pn_sasl_t *sasl = pn_sasl(t); /* after pn_transport_set_server: the role is fixed at creation */
  pn_sasl_allowed_mechs(sasl, "PLAIN EXTERNAL");
  if (ctx) {
    ctx->amqp = a;
    ctx->tls = tls;
    snprintf(ctx->ip, sizeof ctx->ip, "?");
    snprintf(ctx->remote, sizeof ctx->remote, "?");
    wd_frame_guard_init(&ctx->guard);
  }
  /* With no context every login fails in process_init's absence: refuse all. */
  pnx_sasl_set_implementation(t, &warden_sasl, ctx);
  pn_transport_require_auth(t, true);
}

void wd_amqp__sasl_set_peer(pn_transport_t *t, const char *ip, const char *remote) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (!ctx) return;
  snprintf(ctx->ip, sizeof ctx->ip, "%s", ip);
  snprintf(ctx->remote, sizeof ctx->remote, "%s", remote);
}

void wd_amqp__sasl_set_client_cert(pn_transport_t *t, const char *thumbprint) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (ctx) snprintf(ctx->thumbprint, sizeof ctx->thumbprint, "%s", thumbprint);
}

bool wd_amqp__sasl_identity(pn_transport_t *t, wd_identity_t *out) {
  sasl_ctx_t *ctx = pnx_sasl_get_context(t);
  if (!ctx || !ctx->who.authenticated || !pn_transport_is_authenticated(t)) return false;
  *out = ctx->who;
  return true;
}

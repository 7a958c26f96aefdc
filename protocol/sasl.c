/* warden's side of the SASL exchange (AMQP 1.0, part 5.3), on the bytes a
 * peer sends before anything reaches Proton's engine: the protocol header,
 * sasl-mechanisms, one sasl-init, and the outcome. A connection gets an
 * engine only once the peer has logged in (protocol/stream.c), so an
 * unauthenticated peer holds this state and its socket, not an engine.
 *
 * PLAIN and EXTERNAL have no second step: a sasl-response fails the login,
 * and so does a second sasl-init. Frames are parsed with Proton's codec. */

#include <proton/codec.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/internal.h"
#include "protocol/message.h"
#include "protocol/sas.h"

/* AMQP's smallest max-frame-size, which SASL frames must fit (part 5.3.1);
   twice that, for clients with long host names or tokens. */
#define SASL_FRAME_MAX 1024

enum { SASL_MECHANISMS = 0x40, SASL_INIT = 0x41, SASL_CHALLENGE = 0x42, SASL_RESPONSE = 0x43, SASL_OUTCOME = 0x44 };
enum { OUTCOME_OK = 0, OUTCOME_AUTH = 1 };

static const uint8_t sasl_header[8] = {'A', 'M', 'Q', 'P', 3, 1, 0, 0};
static const char sas_prefix[] = "SharedAccessSignature ";

struct wd_sasl {
  wd_amqp_t *amqp;
  bool tls;
  bool header_done;
  char ip[64];     /* the peer's address without port */
  char remote[64]; /* with port, for logs */
  char thumbprint[WD_THUMBPRINT_HEX + 1]; /* of a verified client certificate; "" when none */
};

wd_sasl_t *wd_amqp__sasl_new(wd_amqp_t *a, bool tls, const char *ip, const char *remote) {
  wd_sasl_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->amqp = a;
  s->tls = tls;
  snprintf(s->ip, sizeof s->ip, "%s", ip);
  snprintf(s->remote, sizeof s->remote, "%s", remote);
  return s;
}

void wd_amqp__sasl_free(wd_sasl_t *s) { free(s); }

void wd_amqp__sasl_set_client_cert(wd_sasl_t *s, const char *thumbprint) {
  snprintf(s->thumbprint, sizeof s->thumbprint, "%s", thumbprint);
}

static bool plain_allowed(const wd_sasl_t *s) { return s->tls || s->amqp->cfg.dev_mode; }

/* Checks a service's secret. All services are compared, so timing does not say which names exist. */
static bool verify_service(wd_amqp_t *a, const char *name, const char *secret, wd_identity_t *who) {
  bool ok = false;
  for (size_t i = 0; i < a->cfg.n_services; i++) {
    const wd_amqp_service_t *svc = &a->cfg.services[i];
    if (strcmp(svc->name, name) != 0 || !svc->secret || !svc->secret[0]) continue;
    if (wd_secure_equal(svc->secret, strlen(svc->secret), secret, strlen(secret))) {
      ok = true;
      who->scopes = svc->scopes;
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
    const wd_amqp_service_t *svc = &a->cfg.services[i];
    if (svc->thumbprint && strcmp(svc->thumbprint, thumbprint) == 0) {
      who->is_device = false;
      who->scopes = svc->scopes;
      snprintf(who->id, sizeof who->id, "%s", svc->name);
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

/* PLAIN's response: [authzid] NUL authcid NUL password. */
static bool login_plain(wd_sasl_t *s, pn_bytes_t resp, char *user, wd_identity_t *who, const char **why) {
  wd_amqp_t *a = s->amqp;
  const char *p = resp.start, *end = resp.size ? p + resp.size : p; /* no response: start may be NULL */
  const char *z1 = resp.size ? memchr(p, 0, resp.size) : NULL;
  const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
  *why = "malformed PLAIN response";
  size_t ulen = z2 ? (size_t)(z2 - z1 - 1) : 0;
  if (!z2 || ulen == 0 || ulen > WD_ID_MAX || memchr(z2 + 1, 0, (size_t)(end - z2 - 1))) return false;
  memcpy(user, z1 + 1, ulen);
  user[ulen] = '\0';
  char *password = strndup(z2 + 1, (size_t)(end - z2 - 1));
  if (!password) return false;
  bool ok = false;
  *why = "wrong secret";
  if (wd_amqp_is_service(a, user))
    ok = verify_service(a, user, password, who);
  else if (wd_id_valid(user))
    ok = verify_device(a, user, password, who, why);
  else
    *why = "invalid user name";
  explicit_bzero(password, strlen(password));
  free(password);
  return ok;
}

static bool login(wd_sasl_t *s, pn_bytes_t mech, pn_bytes_t resp, wd_identity_t *who) {
  wd_amqp_t *a = s->amqp;
  const char *why = "mechanism not offered";
  char user[WD_ID_MAX + 1] = "";
  bool ok = false;
  bool plain = mech.size == 5 && memcmp(mech.start, "PLAIN", 5) == 0;
  bool external = mech.size == 8 && memcmp(mech.start, "EXTERNAL", 8) == 0;
  if (wd_amqp__addr_blocked(a, s->ip)) {
    /* Refused without looking at the credentials: guessing gains nothing. */
    why = "address blocked after repeated failed logins";
  } else if (plain && plain_allowed(s)) {
    ok = login_plain(s, resp, user, who, &why);
  } else if (external && s->thumbprint[0]) {
    snprintf(user, sizeof user, "%s", s->thumbprint);
    ok = verify_thumbprint(a, s->thumbprint, who, &why);
  }
  if (ok) {
    who->authenticated = true;
    who->mech = plain ? "PLAIN" : "EXTERNAL";
    wd_log("amqp", WD_LOG_DEBUG, "authenticated %s '%s' from %s with %s", who->is_device ? "device" : "service",
           who->id, s->remote, who->mech);
  } else {
    wd_log("amqp", WD_LOG_WARNING, "authentication failed for '%s' from %s: %s", user, s->remote, why);
    wd_metric_add(&wd_metrics.auth_failures, 1);
    wd_amqp__auth_failed(a, s->ip);
  }
  return ok;
}

/* Writes one SASL frame whose body is data's single value. */
static int send_frame(pn_data_t *data, wd_sasl_send_fn send, void *arg) {
  uint8_t frame[256];
  ssize_t n = pn_data_encode(data, (char *)frame + 8, sizeof frame - 8);
  if (n < 0) return WD_ERR_NOMEM;
  uint32_t size = (uint32_t)n + 8;
  frame[0] = (uint8_t)(size >> 24);
  frame[1] = (uint8_t)(size >> 16);
  frame[2] = (uint8_t)(size >> 8);
  frame[3] = (uint8_t)size;
  frame[4] = 2; /* doff: the header's 8 bytes */
  frame[5] = 1; /* SASL */
  frame[6] = frame[7] = 0;
  return send(arg, frame, size);
}

/* A SASL performative: the caller puts its fields, then send_performative. */
static pn_data_t *performative(uint64_t code) {
  pn_data_t *d = pn_data(8);
  if (!d) return NULL;
  pn_data_put_described(d);
  pn_data_enter(d);
  pn_data_put_ulong(d, code);
  pn_data_put_list(d);
  pn_data_enter(d);
  return d;
}

static int send_performative(pn_data_t *d, wd_sasl_send_fn send, void *arg) {
  if (!d) return WD_ERR_NOMEM;
  pn_data_exit(d);
  pn_data_exit(d);
  int rc = send_frame(d, send, arg);
  pn_data_free(d);
  return rc;
}

static int send_mechanisms(wd_sasl_t *s, wd_sasl_send_fn send, void *arg) {
  pn_data_t *d = performative(SASL_MECHANISMS);
  if (d) {
    pn_data_put_array(d, false, PN_SYMBOL);
    pn_data_enter(d);
    if (s->thumbprint[0]) pn_data_put_symbol(d, pn_bytes(8, "EXTERNAL"));
    if (plain_allowed(s)) pn_data_put_symbol(d, pn_bytes(5, "PLAIN"));
    pn_data_exit(d);
  }
  return send_performative(d, send, arg);
}

static int send_outcome(uint8_t code, wd_sasl_send_fn send, void *arg) {
  pn_data_t *d = performative(SASL_OUTCOME);
  if (d) pn_data_put_ubyte(d, code);
  return send_performative(d, send, arg);
}

/* The performative in a SASL frame body: its code, and for sasl-init the
 * mechanism and response (pointing into d, valid until its next use). -1
 * when it is none. */
static int parse_performative(pn_data_t *d, const uint8_t *body, size_t len, pn_bytes_t *mech, pn_bytes_t *resp) {
  if (pn_data_decode(d, (const char *)body, len) != (ssize_t)len) return -1;
  pn_data_rewind(d);
  if (!pn_data_next(d) || pn_data_type(d) != PN_DESCRIBED || !pn_data_enter(d) || !pn_data_next(d)) return -1;
  int code = -1;
  if (pn_data_type(d) == PN_ULONG) {
    uint64_t v = pn_data_get_ulong(d);
    code = v >= SASL_MECHANISMS && v <= SASL_OUTCOME ? (int)v : -1;
  } else if (pn_data_type(d) == PN_SYMBOL) {
    static const char *const names[] = {"amqp:sasl-mechanisms:list", "amqp:sasl-init:list",
                                        "amqp:sasl-challenge:list", "amqp:sasl-response:list",
                                        "amqp:sasl-outcome:list"};
    pn_bytes_t sym = pn_data_get_symbol(d);
    for (int i = 0; i < 5; i++)
      if (sym.size == strlen(names[i]) && memcmp(sym.start, names[i], sym.size) == 0) code = SASL_MECHANISMS + i;
  }
  if (code != SASL_INIT) return code;
  if (!pn_data_next(d) || pn_data_type(d) != PN_LIST || !pn_data_enter(d)) return -1;
  if (!pn_data_next(d) || pn_data_type(d) != PN_SYMBOL) return -1; /* the mechanism is mandatory */
  *mech = pn_data_get_symbol(d);
  *resp = (pn_bytes_t){0, NULL};
  if (pn_data_next(d)) {
    if (pn_data_type(d) == PN_BINARY)
      *resp = pn_data_get_binary(d);
    else if (pn_data_type(d) != PN_NULL)
      return -1;
  }
  return code;
}

wd_sasl_status_t wd_amqp__sasl_read(wd_sasl_t *s, const uint8_t *p, size_t n, size_t *used, wd_sasl_send_fn send,
                                    void *arg, wd_identity_t *who) {
  size_t at = 0;
  *used = 0;
  if (!s->header_done) {
    if (n < 8) return WD_SASL_MORE;
    /* Whatever the peer asked for, the answer is the one header warden speaks before a login. */
    if (send(arg, sasl_header, sizeof sasl_header) < 0) return WD_SASL_FAILED;
    if (memcmp(p, sasl_header, 8) != 0) {
      wd_log("amqp", WD_LOG_INFO, "refused a connection from %s: it did not start with the SASL header%s", s->remote,
             memcmp(p, "AMQP", 4) == 0 ? " (a login is required)" : "");
      return WD_SASL_FAILED;
    }
    s->header_done = true;
    at = 8;
    if (send_mechanisms(s, send, arg) < 0) return WD_SASL_FAILED;
  }
  for (;;) {
    *used = at;
    if (n - at < 8) return WD_SASL_MORE;
    const uint8_t *f = p + at;
    uint32_t size = wd_msg_be32(f);
    if (size < 8 || size > SASL_FRAME_MAX || f[4] < 2 || (uint32_t)f[4] * 4 > size || f[5] != 1) {
      wd_log("amqp", WD_LOG_INFO, "refused a connection from %s: malformed SASL frame", s->remote);
      return WD_SASL_FAILED;
    }
    if (n - at < size) return WD_SASL_MORE;
    at += size;
    size_t body_len = size - (size_t)f[4] * 4;
    if (body_len == 0) continue; /* an empty frame keeps the connection alive */
    pn_data_t *d = pn_data(8);
    if (!d) return WD_SASL_FAILED;
    pn_bytes_t mech = {0, NULL}, resp = {0, NULL};
    int code = parse_performative(d, f + (size_t)f[4] * 4, body_len, &mech, &resp);
    bool ok = false;
    if (code == SASL_INIT) {
      wd_identity_t id = {0};
      ok = login(s, mech, resp, &id);
      if (ok) *who = id;
      explicit_bzero(&id, sizeof id);
    } else {
      wd_log("amqp", WD_LOG_INFO, "refused a connection from %s: %s", s->remote,
             code == SASL_RESPONSE ? "a SASL response where no challenge was sent" : "not a sasl-init");
    }
    pn_data_free(d);
    *used = at;
    if (send_outcome(ok ? OUTCOME_OK : OUTCOME_AUTH, send, arg) < 0) return WD_SASL_FAILED;
    return ok ? WD_SASL_DONE : WD_SASL_FAILED;
  }
}

#ifndef WD_HTTP_AUTH_H
#define WD_HTTP_AUTH_H

/* Who is calling the REST API, as its bearer token proves: a service secret
 * (checked by gateway/ through wd_http_ops_t) or a JWT from the configured
 * issuer (checked here, in http/jwt.c). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  unsigned scopes;   /* WD_SCOPE_* */
  bool restricted;   /* true: only the devices and groups listed below */
  char **devices;    /* owned */
  size_t n_devices;
  char **groups;     /* owned */
  size_t n_groups;
} wd_http_principal_t;

/* Frees the lists; the struct itself is the caller's. Accepts a zeroed struct. */
void wd_http_principal_fini(wd_http_principal_t *p);

typedef struct {
  const char *issuer;         /* required `iss` */
  const char *audience;       /* required in `aud` (string or array) */
  const char *public_key_pem; /* RS256 or ES256 public key, PEM text */
  size_t public_key_len;
} wd_jwt_config_t;

/* Verifies a compact JWS: signature (RS256 or ES256 only; "none" and HMAC are
 * refused), `iss`, `aud`, `exp` (required) and `nbf` (if present) against
 * now_s, with 30 s of leeway for clock skew. Claims: `scope` (space-separated
 * string, OAuth 2 style) or `scopes` (array of strings) give the scopes; the
 * optional `devices` and `groups` arrays of ids restrict which devices the
 * caller may reach (either present: restricted). Returns 0 and fills *out
 * (owned lists: wd_http_principal_fini), or WD_ERR_DENIED, WD_ERR_NOMEM. */
int wd_http__jwt_verify(const wd_jwt_config_t *cfg, const char *token, int64_t now_s, wd_http_principal_t *out);

#endif

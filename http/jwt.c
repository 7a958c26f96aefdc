/* Bearer JWTs from the configured issuer (CONTRACT.md, REST projection).
 *
 * libjwt 1.10 checks the signature; everything around it is done here,
 * because libjwt on its own is too lenient for tokens that come from the
 * network (each of these was observed with Debian's 1.10.2):
 *  - it verifies HS256 with whatever key bytes it is given, so an issuer's
 *    public key PEM would become an HMAC secret (the key-confusion attack);
 *  - it matches `alg` case-insensitively ("rs256") and ignores `crit`;
 *  - its base64 decoder skips characters outside the alphabet, so junk
 *    inserted into a signature still verifies;
 *  - it accepts a JSON array as the claims and lets a duplicate claim win.
 * So the token's shape is checked strictly first (at most 8 KiB, exactly three
 * canonical base64url segments), the header and claims are decoded here with
 * duplicate keys refused, and `alg` is pinned to RS256 or ES256 before libjwt
 * runs and compared with libjwt's reading after it. libjwt itself refuses a key
 * whose type does not match the alg (RSA for RS256, EC for ES256) and an ES256
 * signature that is not raw R||S of the curve's size.
 *
 * Every refusal is the same WD_ERR_DENIED; the reason goes to the debug log
 * only (no token text), so a caller learns nothing about which check failed.
 * No state and the clock is a parameter: callable from any thread. */

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <jwt.h>

#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "http/auth.h"

#define TOKEN_MAX 8192 /* bytes; a longer bearer token is refused unread */
#define LEEWAY_S 30    /* clock skew allowed on exp and nbf */

void wd_http_principal_fini(wd_http_principal_t *p) {
  if (!p) return;
  for (size_t i = 0; i < p->n_devices; i++) free(p->devices[i]);
  for (size_t i = 0; i < p->n_groups; i++) free(p->groups[i]);
  free(p->devices);
  free(p->groups);
  memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------ base64url */

static int b64url_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* True if s[0..n) is non-empty, unpadded base64url in its one canonical
 * spelling: the bits a final partial group leaves over must be zero. */
static bool segment_valid(const char *s, size_t n) {
  if (n == 0 || n % 4 == 1) return false;
  int last = 0;
  for (size_t i = 0; i < n; i++) {
    last = b64url_value((unsigned char)s[i]);
    if (last < 0) return false;
  }
  if (n % 4 == 2) return (last & 0x0f) == 0;
  if (n % 4 == 3) return (last & 0x03) == 0;
  return true;
}

/* Decodes a segment that passed segment_valid. Returns returned-owned bytes
 * (NUL-terminated for the JSON parser's sake) or NULL when out of memory. */
static char *segment_decode(const char *s, size_t n, size_t *len_out) {
  char *out = malloc(n / 4 * 3 + 3);
  if (!out) return NULL;
  size_t len = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    acc = acc << 6 | (uint32_t)b64url_value((unsigned char)s[i]);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[len++] = (char)(acc >> bits & 0xff);
    }
  }
  out[len] = '\0';
  *len_out = len;
  return out;
}

/* Decodes a segment into a JSON object, refusing duplicate keys. Sets *nomem
 * when the failure was memory rather than the token. */
static json_t *segment_json(const char *s, size_t n, bool *nomem) {
  size_t len;
  char *raw = segment_decode(s, n, &len);
  if (!raw) {
    *nomem = true;
    return NULL;
  }
  json_t *js = json_loadb(raw, len, JSON_REJECT_DUPLICATES, NULL);
  free(raw);
  if (js && !json_is_object(js)) {
    json_decref(js);
    return NULL;
  }
  return js;
}

/* --------------------------------------------------------------- claims */

/* A NumericDate as whole seconds. Fractions round towards refusal: down for
 * `exp`, up for `nbf`. Returns false if the claim is not a number. */
static bool numeric_date(const json_t *v, bool round_up, int64_t *out) {
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return true;
  }
  if (!json_is_real(v)) return false;
  /* Clamped before the cast, which would otherwise be undefined; ceil and
   * floor by hand because wd_http does not link libm. */
  double d = json_real_value(v);
  if (!(d > -9.2e18)) {
    *out = INT64_MIN;
  } else if (!(d < 9.2e18)) {
    *out = INT64_MAX;
  } else {
    int64_t t = (int64_t)d; /* truncates towards zero */
    if (round_up && (double)t < d) t++;
    if (!round_up && (double)t > d) t--;
    *out = t;
  }
  return true;
}

/* True if `aud` (a string or an array of strings) names want. */
static bool audience_ok(const json_t *aud, const char *want) {
  if (json_is_string(aud)) return strcmp(json_string_value(aud), want) == 0;
  if (!json_is_array(aud)) return false;
  bool found = false;
  size_t i;
  json_t *v;
  json_array_foreach(aud, i, v) {
    if (!json_is_string(v)) return false;
    if (strcmp(json_string_value(v), want) == 0) found = true;
  }
  return found;
}

/* The WD_SCOPE_* bit of one scope name s[0..n), or 0 for a name warden does
 * not know (tokens from a general issuer carry other scopes too). */
static unsigned scope_bit(const char *s, size_t n) {
  char name[32];
  if (n == 0 || n >= sizeof name || memchr(s, '\0', n)) return 0;
  memcpy(name, s, n);
  name[n] = '\0';
  if (strcspn(name, " \t") != n) return 0; /* one name, not a list */
  unsigned bit = 0;
  return wd_scopes_parse(name, &bit, NULL) ? bit : 0;
}

/* Scopes from `scope` (space-separated, OAuth 2) and `scopes` (array of
 * names); a token may carry both and gets the union. False if either claim
 * has the wrong type. */
static bool collect_scopes(const json_t *claims, unsigned *mask) {
  unsigned m = 0;
  const json_t *str = json_object_get(claims, "scope");
  if (str) {
    if (!json_is_string(str)) return false;
    const char *s = json_string_value(str);
    while (*s) {
      size_t gap = strspn(s, " \t");
      s += gap;
      size_t n = strcspn(s, " \t");
      m |= scope_bit(s, n);
      s += n;
    }
  }
  const json_t *arr = json_object_get(claims, "scopes");
  if (arr) {
    if (!json_is_array(arr)) return false;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
      if (!json_is_string(v)) return false;
      m |= scope_bit(json_string_value(v), json_string_length(v));
    }
  }
  *mask = m;
  return true;
}

/* Copies an array of ids into *list (returned owned, freed by
 * wd_http_principal_fini even when this fails half-way). Returns 0,
 * WD_ERR_DENIED for a non-array, a non-string or an invalid id, or
 * WD_ERR_NOMEM. */
static int take_ids(const json_t *arr, char ***list, size_t *count) {
  if (!json_is_array(arr)) return WD_ERR_DENIED;
  size_t n = json_array_size(arr);
  *list = calloc(n ? n : 1, sizeof **list);
  if (!*list) return WD_ERR_NOMEM;
  size_t i;
  json_t *v;
  json_array_foreach(arr, i, v) {
    if (!json_is_string(v)) return WD_ERR_DENIED;
    const char *id = json_string_value(v);
    if (strlen(id) != json_string_length(v) || !wd_id_valid(id)) return WD_ERR_DENIED;
    (*list)[i] = strdup(id);
    if (!(*list)[i]) return WD_ERR_NOMEM;
    *count = i + 1;
  }
  return WD_OK;
}

/* Checks the registered claims and fills *out. On error *out may hold partial
 * lists; the caller finis it. */
static int check_claims(const wd_jwt_config_t *cfg, const json_t *claims, int64_t now_s, wd_http_principal_t *out,
                        const char **why) {
  const json_t *iss = json_object_get(claims, "iss");
  if (!json_is_string(iss) || strcmp(json_string_value(iss), cfg->issuer) != 0) {
    *why = "wrong or missing iss";
    return WD_ERR_DENIED;
  }
  const json_t *aud = json_object_get(claims, "aud");
  if (!aud || !audience_ok(aud, cfg->audience)) {
    *why = "wrong or missing aud";
    return WD_ERR_DENIED;
  }
  /* exp + leeway and nbf - leeway saturate instead of overflowing. */
  int64_t exp;
  const json_t *v = json_object_get(claims, "exp");
  if (!v || !numeric_date(v, false, &exp)) {
    *why = "missing or malformed exp";
    return WD_ERR_DENIED;
  }
  if (exp <= INT64_MAX - LEEWAY_S && now_s >= exp + LEEWAY_S) {
    *why = "expired";
    return WD_ERR_DENIED;
  }
  v = json_object_get(claims, "nbf");
  if (v) {
    int64_t nbf;
    if (!numeric_date(v, true, &nbf)) {
      *why = "malformed nbf";
      return WD_ERR_DENIED;
    }
    if (nbf >= INT64_MIN + LEEWAY_S && now_s < nbf - LEEWAY_S) {
      *why = "not yet valid";
      return WD_ERR_DENIED;
    }
  }
  if (!collect_scopes(claims, &out->scopes)) {
    *why = "malformed scope or scopes";
    return WD_ERR_DENIED;
  }
  const json_t *devices = json_object_get(claims, "devices");
  const json_t *groups = json_object_get(claims, "groups");
  out->restricted = devices || groups;
  int rc = WD_OK;
  if (devices) rc = take_ids(devices, &out->devices, &out->n_devices);
  if (rc == WD_OK && groups) rc = take_ids(groups, &out->groups, &out->n_groups);
  if (rc == WD_ERR_DENIED) *why = "malformed devices or groups";
  return rc;
}

/* ---------------------------------------------------------------- verify */

/* The header's alg, if it is one warden accepts. Exact names (RFC 7515 makes
 * them case-sensitive); "none" and HMAC never. */
static jwt_alg_t header_alg(const json_t *hdr) {
  const char *alg = json_string_value(json_object_get(hdr, "alg"));
  if (!alg) return JWT_ALG_INVAL;
  if (strcmp(alg, "RS256") == 0) return JWT_ALG_RS256;
  if (strcmp(alg, "ES256") == 0) return JWT_ALG_ES256;
  return JWT_ALG_INVAL;
}

static int verify(const wd_jwt_config_t *cfg, const char *token, int64_t now_s, wd_http_principal_t *out,
                  const char **why) {
  if (!cfg || !cfg->issuer || !cfg->audience || !cfg->public_key_pem || cfg->public_key_len == 0 ||
      cfg->public_key_len > INT_MAX) {
    *why = "no issuer configured";
    return WD_ERR_DENIED;
  }
  if (!token) {
    *why = "no token";
    return WD_ERR_DENIED;
  }
  size_t len = strnlen(token, TOKEN_MAX + 1);
  if (len > TOKEN_MAX) {
    *why = "token too long";
    return WD_ERR_DENIED;
  }
  const char *dot1 = memchr(token, '.', len);
  const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
  if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))) {
    *why = "not three segments";
    return WD_ERR_DENIED;
  }
  size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1), slen = len - (size_t)(dot2 + 1 - token);
  if (!segment_valid(token, hlen) || !segment_valid(dot1 + 1, plen) || !segment_valid(dot2 + 1, slen)) {
    *why = "segment not canonical base64url";
    return WD_ERR_DENIED;
  }

  bool nomem = false;
  json_t *hdr = segment_json(token, hlen, &nomem);
  if (!hdr) {
    *why = nomem ? "out of memory" : "header not a valid JSON object";
    return nomem ? WD_ERR_NOMEM : WD_ERR_DENIED;
  }
  jwt_alg_t alg = header_alg(hdr);
  bool crit = json_object_get(hdr, "crit") != NULL;
  json_decref(hdr);
  if (alg == JWT_ALG_INVAL) {
    *why = "alg not RS256 or ES256";
    return WD_ERR_DENIED;
  }
  if (crit) {
    *why = "crit header not understood";
    return WD_ERR_DENIED;
  }

  json_t *claims = segment_json(dot1 + 1, plen, &nomem);
  if (!claims) {
    *why = nomem ? "out of memory" : "claims not a valid JSON object";
    return nomem ? WD_ERR_NOMEM : WD_ERR_DENIED;
  }

  jwt_t *jwt = NULL;
  int jrc = jwt_decode(&jwt, token, (const unsigned char *)cfg->public_key_pem, (int)cfg->public_key_len);
  int rc = WD_OK;
  if (jrc != 0) {
    *why = jrc == ENOMEM ? "out of memory" : "bad signature or key type";
    rc = jrc == ENOMEM ? WD_ERR_NOMEM : WD_ERR_DENIED;
  } else if (jwt_get_alg(jwt) != alg) {
    *why = "alg read differently by libjwt";
    rc = WD_ERR_DENIED;
  } else {
    rc = check_claims(cfg, claims, now_s, out, why);
    if (rc == WD_ERR_NOMEM) *why = "out of memory";
  }
  jwt_free(jwt);
  json_decref(claims);
  return rc;
}

int wd_http__jwt_verify(const wd_jwt_config_t *cfg, const char *token, int64_t now_s, wd_http_principal_t *out) {
  if (!out) return WD_ERR_DENIED;
  memset(out, 0, sizeof *out);
  const char *why = "refused";
  int rc = verify(cfg, token, now_s, out, &why);
  if (rc != WD_OK) {
    wd_http_principal_fini(out);
    wd_log("http", rc == WD_ERR_NOMEM ? WD_LOG_WARNING : WD_LOG_DEBUG, "bearer JWT refused: %s", why);
  }
  return rc;
}

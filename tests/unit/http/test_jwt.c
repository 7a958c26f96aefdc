/* Bearer JWT verification (http/jwt.c): what a token from the configured
 * issuer grants, and every way a token from the network must be refused.
 * Keys are generated once per run with OpenSSL; well-formed tokens are signed
 * with libjwt, hand-crafted ones (odd headers, raw signatures) with EVP. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "http/auth.h"

#define NOW 1700000000LL
#define ISS "https://issuer.example"
#define AUD "warden"

typedef struct {
  EVP_PKEY *pkey;
  char *priv_pem; /* PKCS#8 */
  size_t priv_len;
  char *pub_pem; /* SubjectPublicKeyInfo */
  size_t pub_len;
} test_key_t;

static test_key_t rsa, rsa_other, ec, ec_other;

/* ------------------------------------------------------------- helpers */

static char *bio_text(BIO *b, size_t *len) {
  char *data;
  long n = BIO_get_mem_data(b, &data);
  char *out = malloc((size_t)n + 1);
  memcpy(out, data, (size_t)n);
  out[n] = '\0';
  *len = (size_t)n;
  return out;
}

static int key_make(test_key_t *k, bool is_ec) {
  k->pkey = is_ec ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
  if (!k->pkey) return -1;
  BIO *priv = BIO_new(BIO_s_mem()), *pub = BIO_new(BIO_s_mem());
  if (!PEM_write_bio_PrivateKey(priv, k->pkey, NULL, NULL, 0, NULL, NULL) || !PEM_write_bio_PUBKEY(pub, k->pkey))
    return -1;
  k->priv_pem = bio_text(priv, &k->priv_len);
  k->pub_pem = bio_text(pub, &k->pub_len);
  BIO_free(priv);
  BIO_free(pub);
  return 0;
}

static void key_drop(test_key_t *k) {
  EVP_PKEY_free(k->pkey);
  free(k->priv_pem);
  free(k->pub_pem);
}

static int setup_keys(void **state) {
  (void)state;
  return key_make(&rsa, false) || key_make(&rsa_other, false) || key_make(&ec, true) || key_make(&ec_other, true);
}

static int teardown_keys(void **state) {
  (void)state;
  key_drop(&rsa);
  key_drop(&rsa_other);
  key_drop(&ec);
  key_drop(&ec_other);
  return 0;
}

static wd_jwt_config_t config_for(const test_key_t *k) {
  return (wd_jwt_config_t){.issuer = ISS, .audience = AUD, .public_key_pem = k->pub_pem, .public_key_len = k->pub_len};
}

/* Signs claims (a JSON object) with libjwt. Returns returned-owned. */
static char *sign(jwt_alg_t alg, const unsigned char *key, size_t key_len, const char *claims) {
  jwt_t *j = NULL;
  assert_int_equal(jwt_new(&j), 0);
  if (claims) assert_int_equal(jwt_add_grants_json(j, claims), 0);
  assert_int_equal(jwt_set_alg(j, alg, key, (int)key_len), 0);
  char *tok = jwt_encode_str(j);
  assert_non_null(tok);
  jwt_free(j);
  return tok;
}

static char *sign_with(jwt_alg_t alg, const test_key_t *k, const char *claims) {
  return sign(alg, (const unsigned char *)k->priv_pem, k->priv_len, claims);
}

static void b64url(const unsigned char *in, size_t n, char *out) {
  unsigned char *tmp = malloc(4 * ((n + 2) / 3) + 1);
  int len = EVP_EncodeBlock(tmp, in, (int)n);
  int o = 0;
  for (int i = 0; i < len && tmp[i] != '='; i++) out[o++] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : (char)tmp[i];
  out[o] = '\0';
  free(tmp);
}

/* Builds header.claims.signature by hand, signing with k as a JWS would
 * (ECDSA as raw R||S unless der is set). Returns returned-owned. */
static char *sign_raw(const char *header, const char *claims, const test_key_t *k, bool der) {
  size_t cap = 4 * (strlen(header) + strlen(claims)) + 1024;
  char *tok = malloc(cap);
  b64url((const unsigned char *)header, strlen(header), tok);
  strcat(tok, ".");
  b64url((const unsigned char *)claims, strlen(claims), tok + strlen(tok));
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char sig[512];
  size_t slen = sizeof sig;
  assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k->pkey), 1);
  assert_int_equal(EVP_DigestSign(ctx, sig, &slen, (const unsigned char *)tok, strlen(tok)), 1);
  EVP_MD_CTX_free(ctx);
  if (EVP_PKEY_get_base_id(k->pkey) == EVP_PKEY_EC && !der) {
    const unsigned char *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)slen);
    assert_non_null(es);
    assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32), 32);
    assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32), 32);
    slen = 64;
    ECDSA_SIG_free(es);
  }
  strcat(tok, ".");
  b64url(sig, slen, tok + strlen(tok));
  return tok;
}

/* Claims that pass, with extra members spliced in (extra: "" or ",\"k\":v"). */
static char *claims_with(const char *extra) {
  static char buf[16384];
  snprintf(buf, sizeof buf, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld%s}", NOW + 600, extra);
  return buf;
}

static int verify(const test_key_t *k, const char *tok, wd_http_principal_t *p) {
  wd_jwt_config_t cfg = config_for(k);
  return wd_http__jwt_verify(&cfg, tok, NOW, p);
}

/* Asserts that tok is refused by the config for k, and that the principal is
 * left zeroed (so fini on it is harmless). */
static void assert_refused(const test_key_t *k, const char *tok) {
  wd_http_principal_t p;
  memset(&p, 0xA5, sizeof p);
  assert_int_equal(verify(k, tok, &p), WD_ERR_DENIED);
  assert_int_equal(p.scopes, 0);
  assert_false(p.restricted);
  assert_null(p.devices);
  assert_null(p.groups);
  assert_int_equal(p.n_devices + p.n_groups, 0);
}

static void assert_accepted(const test_key_t *k, const char *tok) {
  wd_http_principal_t p;
  assert_int_equal(verify(k, tok, &p), 0);
  wd_http_principal_fini(&p);
}

/* --------------------------------------------------------------- accepts */

static void test_accepts_rs256_with_scope_string(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(",\"scope\":\"commands:send registry:read\""));
  wd_http_principal_t p;
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_int_equal(p.scopes, WD_SCOPE_COMMANDS_SEND | WD_SCOPE_REGISTRY_READ);
  assert_false(p.restricted);
  assert_int_equal(p.n_devices, 0);
  assert_int_equal(p.n_groups, 0);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_accepts_es256_with_scopes_array(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(",\"scopes\":[\"telemetry:read\",\"registry:write\"]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&ec, tok, &p), 0);
  assert_int_equal(p.scopes, WD_SCOPE_TELEMETRY_READ | WD_SCOPE_REGISTRY_WRITE);
  assert_false(p.restricted);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_accepts_hand_signed_es256_with_raw_signature(void **state) {
  (void)state;
  char *tok = sign_raw("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", claims_with(""), &ec, false);
  assert_accepted(&ec, tok);
  free(tok);
}

static void test_unknown_scope_names_are_ignored(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa,
                        claims_with(",\"scope\":\"openid  profile\\tcommands:send email telemetry:read:extra\""));
  wd_http_principal_t p;
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_int_equal(p.scopes, WD_SCOPE_COMMANDS_SEND);
  wd_http_principal_fini(&p);
  free(tok);

  /* An array element is one name: a space-separated list inside one is unknown. */
  tok = sign_with(JWT_ALG_RS256, &rsa,
                  claims_with(",\"scopes\":[\"openid\",\"feedback:read\",\"commands:send registry:write\",\"\"]"));
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_int_equal(p.scopes, WD_SCOPE_FEEDBACK_READ);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_scope_and_scopes_together_give_the_union(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa,
                        claims_with(",\"scope\":\"inquiries:read\",\"scopes\":[\"notifications:send\"]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_int_equal(p.scopes, WD_SCOPE_INQUIRIES_READ | WD_SCOPE_NOTIFICATIONS_SEND);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_token_without_scopes_grants_none(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(""));
  wd_http_principal_t p;
  assert_int_equal(verify(&ec, tok, &p), 0);
  assert_int_equal(p.scopes, 0);
  assert_false(p.restricted);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_devices_and_groups_restrict_the_caller(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa,
                        claims_with(",\"scope\":\"commands:send\",\"devices\":[\"pump-1\",\"site.A:valve_2\"],"
                                    "\"groups\":[\"north\"]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_true(p.restricted);
  assert_int_equal(p.n_devices, 2);
  assert_string_equal(p.devices[0], "pump-1");
  assert_string_equal(p.devices[1], "site.A:valve_2");
  assert_int_equal(p.n_groups, 1);
  assert_string_equal(p.groups[0], "north");
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_groups_alone_restrict_the_caller(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(",\"groups\":[\"g1\"]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&ec, tok, &p), 0);
  assert_true(p.restricted);
  assert_int_equal(p.n_devices, 0);
  assert_int_equal(p.n_groups, 1);
  assert_string_equal(p.groups[0], "g1");
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_empty_devices_list_restricts_to_nothing(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(",\"devices\":[]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&rsa, tok, &p), 0);
  assert_true(p.restricted);
  assert_int_equal(p.n_devices, 0);
  assert_int_equal(p.n_groups, 0);
  wd_http_principal_fini(&p);
  free(tok);
}

static void test_audience_array_containing_ours_is_accepted(void **state) {
  (void)state;
  char claims[512];
  snprintf(claims, sizeof claims, "{\"iss\":\"" ISS "\",\"aud\":[\"other\",\"" AUD "\"],\"exp\":%lld}", NOW + 60);
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims);
  assert_accepted(&rsa, tok);
  free(tok);
}

static void test_fractional_dates_are_accepted(void **state) {
  (void)state;
  char claims[512];
  snprintf(claims, sizeof claims, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld.5,\"nbf\":%lld.25}",
           NOW + 60, NOW - 60);
  char *tok = sign_raw("{\"alg\":\"RS256\"}", claims, &rsa, false);
  assert_accepted(&rsa, tok);
  free(tok);
}

/* ------------------------------------------------------------ time claims */

static char *token_with_times(const char *times) {
  char claims[512];
  snprintf(claims, sizeof claims, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\"%s}", times);
  return sign_with(JWT_ALG_RS256, &rsa, claims);
}

static void check_token(const char *times, bool accepted) {
  char *tok = token_with_times(times);
  if (accepted) {
    assert_accepted(&rsa, tok);
  } else {
    assert_refused(&rsa, tok);
  }
  free(tok);
}

static void check_exp(long long exp, bool accepted) {
  char times[128];
  snprintf(times, sizeof times, ",\"exp\":%lld", exp);
  check_token(times, accepted);
}

static void check_nbf(long long nbf, bool accepted) {
  char times[128];
  snprintf(times, sizeof times, ",\"exp\":1800000000,\"nbf\":%lld", nbf);
  check_token(times, accepted);
}

static void test_expired_beyond_leeway_is_refused(void **state) {
  (void)state;
  check_exp(NOW - 31, false);
  check_exp(NOW - 30, false);
  check_exp(NOW - 86400, false);
  check_exp(-9223372036854775807LL, false);
}

static void test_expired_within_leeway_is_accepted(void **state) {
  (void)state;
  check_exp(NOW - 29, true);
  check_exp(NOW, true);
  check_exp(9223372036854775807LL, true);
}

static void test_missing_or_malformed_exp_is_refused(void **state) {
  (void)state;
  char *tok = token_with_times("");
  assert_refused(&rsa, tok);
  free(tok);
  tok = token_with_times(",\"exp\":\"1700000600\"");
  assert_refused(&rsa, tok);
  free(tok);
  tok = token_with_times(",\"exp\":true");
  assert_refused(&rsa, tok);
  free(tok);
  tok = token_with_times(",\"exp\":null");
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_nbf_in_future_is_refused(void **state) {
  (void)state;
  check_nbf(NOW + 31, false);
  check_nbf(NOW + 3600, false);
  check_nbf(9223372036854775807LL, false);
  char *tok = token_with_times(",\"exp\":1800000000,\"nbf\":\"soon\"");
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_nbf_within_leeway_is_accepted(void **state) {
  (void)state;
  check_nbf(NOW + 30, true);
  check_nbf(NOW - 1000, true);
  check_nbf(-9223372036854775807LL - 1, true);
}

/* ------------------------------------------------------------- iss / aud */

static void check_claims_refused(const char *claims) {
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_wrong_or_missing_issuer_is_refused(void **state) {
  (void)state;
  check_claims_refused("{\"iss\":\"https://evil.example\",\"aud\":\"" AUD "\",\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"https://issuer.example/\",\"aud\":\"" AUD "\",\"exp\":1800000000}");
  check_claims_refused("{\"aud\":\"" AUD "\",\"exp\":1800000000}");
  check_claims_refused("{\"iss\":[\"" ISS "\"],\"aud\":\"" AUD "\",\"exp\":1800000000}");
}

static void test_wrong_or_missing_audience_is_refused(void **state) {
  (void)state;
  check_claims_refused("{\"iss\":\"" ISS "\",\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":\"other\",\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":\"wardenx\",\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":[\"other\",\"api\"],\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":[],\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":[\"" AUD "\",42],\"exp\":1800000000}");
  check_claims_refused("{\"iss\":\"" ISS "\",\"aud\":{\"" AUD "\":1},\"exp\":1800000000}");
}

/* ------------------------------------------------------ signature and alg */

static void test_signature_by_another_key_is_refused(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa_other, claims_with(",\"scope\":\"registry:write\""));
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_with(JWT_ALG_ES256, &ec_other, claims_with(",\"scope\":\"registry:write\""));
  assert_refused(&ec, tok);
  free(tok);
}

/* The genuine token's header and signature around the forged token's claims.
 * Returns returned-owned. */
static char *splice_claims(const char *genuine, const char *forged) {
  const char *dot1 = strchr(genuine, '.'), *dot2 = strchr(dot1 + 1, '.');
  const char *fdot1 = strchr(forged, '.'), *fdot2 = strchr(fdot1 + 1, '.');
  size_t cap = strlen(genuine) + strlen(forged) + 1;
  char *out = malloc(cap);
  snprintf(out, cap, "%.*s%.*s%s", (int)(dot1 - genuine), genuine, (int)(fdot2 - fdot1), fdot1, dot2);
  return out;
}

static void test_tampered_payload_is_refused(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(",\"scope\":\"telemetry:read\""));
  char *forged = sign_with(JWT_ALG_RS256, &rsa_other, claims_with(",\"scope\":\"registry:write\""));
  char *spliced = splice_claims(tok, forged);
  assert_accepted(&rsa, tok);
  assert_refused(&rsa, spliced);
  free(spliced);
  free(forged);
  free(tok);

  tok = sign_with(JWT_ALG_ES256, &ec, claims_with(",\"devices\":[\"pump-1\"]"));
  forged = sign_with(JWT_ALG_ES256, &ec_other, claims_with(""));
  spliced = splice_claims(tok, forged);
  assert_accepted(&ec, tok);
  assert_refused(&ec, spliced);
  free(spliced);
  free(forged);
  free(tok);
}

static void test_any_single_character_change_is_refused(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(",\"scope\":\"commands:send\""));
  size_t n = strlen(tok);
  char *copy = malloc(n + 1);
  static const char subst[] = {'A', 'z', '-', '_', '.', '=', '+', '/', '!', '\x80'};
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < sizeof subst; j++) {
      if (tok[i] == subst[j]) continue;
      memcpy(copy, tok, n + 1);
      copy[i] = subst[j];
      assert_refused(&rsa, copy);
    }
    /* Every proper prefix too. */
    memcpy(copy, tok, i);
    copy[i] = '\0';
    assert_refused(&rsa, copy);
  }
  free(copy);
  free(tok);
}

static void test_junk_inside_signature_is_refused(void **state) {
  (void)state;
  /* libjwt's base64 decoder skips such characters, so it would accept these. */
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(""));
  size_t n = strlen(tok);
  char *junk = malloc(n + 2);
  memcpy(junk, tok, n - 4);
  junk[n - 4] = '!';
  memcpy(junk + n - 3, tok + n - 4, 5);
  assert_refused(&rsa, junk);
  /* Padding, which JWS forbids. */
  memcpy(junk, tok, n + 1);
  strcat(junk, "=");
  assert_refused(&rsa, junk);
  free(junk);
  free(tok);
}

static void test_alg_none_is_refused(void **state) {
  (void)state;
  char *tok = sign(JWT_ALG_NONE, NULL, 0, claims_with(",\"scope\":\"registry:write\""));
  assert_refused(&rsa, tok);
  assert_refused(&ec, tok);
  /* With a signature segment appended, and with a lowercase name. */
  size_t n = strlen(tok);
  char *withsig = malloc(n + 8);
  snprintf(withsig, n + 8, "%sAAAA", tok);
  assert_refused(&rsa, withsig);
  free(withsig);
  free(tok);
  tok = sign_raw("{\"alg\":\"None\"}", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_hs256_signed_with_public_key_pem_is_refused(void **state) {
  (void)state;
  /* The key-confusion attack: libjwt 1.10 itself would verify this. */
  const char *claims = claims_with(",\"scope\":\"registry:write\"");
  char *tok = sign(JWT_ALG_HS256, (const unsigned char *)rsa.pub_pem, rsa.pub_len, claims);
  jwt_t *j = NULL;
  assert_int_equal(jwt_decode(&j, tok, (const unsigned char *)rsa.pub_pem, (int)rsa.pub_len), 0);
  jwt_free(j);
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign(JWT_ALG_HS256, (const unsigned char *)ec.pub_pem, ec.pub_len, claims);
  assert_refused(&ec, tok);
  free(tok);
  tok = sign(JWT_ALG_HS512, (const unsigned char *)rsa.pub_pem, rsa.pub_len, claims);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_alg_not_matching_key_type_is_refused(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(""));
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(""));
  assert_refused(&ec, tok);
  free(tok);
  /* An EC-signed token that claims RS256, and the reverse. */
  tok = sign_raw("{\"alg\":\"RS256\"}", claims_with(""), &ec, false);
  assert_refused(&ec, tok);
  free(tok);
  tok = sign_raw("{\"alg\":\"ES256\"}", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_other_rsa_and_ec_algs_are_refused(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS512, &rsa, claims_with(""));
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_with(JWT_ALG_ES384, &ec, claims_with(""));
  assert_refused(&ec, tok);
  free(tok);
}

static void test_alg_names_are_case_sensitive(void **state) {
  (void)state;
  char *tok = sign_raw("{\"alg\":\"rs256\"}", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_raw("{\"alg\":\"Es256\"}", claims_with(""), &ec, false);
  assert_refused(&ec, tok);
  free(tok);
}

static void test_crit_header_is_refused(void **state) {
  (void)state;
  char *tok = sign_raw("{\"alg\":\"RS256\",\"crit\":[\"exp\"]}", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_der_encoded_ecdsa_signature_is_refused(void **state) {
  (void)state;
  char *tok = sign_raw("{\"alg\":\"ES256\"}", claims_with(""), &ec, true);
  assert_refused(&ec, tok);
  free(tok);
}

/* ----------------------------------------------------------- malformed */

static void test_garbage_tokens_are_refused(void **state) {
  (void)state;
  static const char *const bad[] = {
      "", ".", "..", "...", "a.b", "a.b.c", "a.b.c.d", "abc", "Bearer x", " ", "\t..\n",
      "eyJhbGciOiJSUzI1NiJ9..", "eyJhbGciOiJSUzI1NiJ9.e30.", ".e30.AAAA", "e30.e30.AAAA", "W10.e30.AAAA",
      "eyJhbGciOiJSUzI1NiJ9.W10.AAAA", "eyJhbGciOiJSUzI1NiJ9.bnVsbA.AAAA", "\xff\xfe.\x01.\x7f",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_refused(&rsa, bad[i]);
    assert_refused(&ec, bad[i]);
  }
  assert_refused(&rsa, NULL);
}

static void test_claims_that_are_not_an_object_are_refused(void **state) {
  (void)state;
  char *tok = sign_raw("{\"alg\":\"RS256\"}", "[1,2]", &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_raw("[\"RS256\"]", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_raw("{\"alg\":\"RS256\"}", "{\"iss\":", &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_duplicate_claims_are_refused(void **state) {
  (void)state;
  char claims[512];
  snprintf(claims, sizeof claims, "{\"iss\":\"https://other\",\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld}",
           NOW + 60);
  char *tok = sign_raw("{\"alg\":\"RS256\"}", claims, &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
  tok = sign_raw("{\"alg\":\"none\",\"alg\":\"RS256\"}", claims_with(""), &rsa, false);
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_token_over_8_kib_is_refused(void **state) {
  (void)state;
  /* Grow a padding claim until the token passes 8192 bytes: the last one at
   * or under the cap is accepted, the first one over it refused. */
  char *pad = malloc(8192);
  char *extra = malloc(8300);
  char *prev = NULL;
  for (size_t n = 5600;; n++) {
    memset(pad, 'x', n);
    pad[n] = '\0';
    snprintf(extra, 8300, ",\"pad\":\"%s\"", pad);
    char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(extra));
    if (strlen(tok) > 8192) {
      assert_non_null(prev);
      assert_true(strlen(prev) >= 8190);
      assert_accepted(&rsa, prev);
      assert_refused(&rsa, tok);
      free(tok);
      break;
    }
    free(prev);
    prev = tok;
  }
  free(prev);

  char *huge = malloc(1 << 20);
  memset(huge, 'A', (1 << 20) - 1);
  huge[(1 << 20) - 1] = '\0';
  huge[100] = '.';
  huge[200] = '.';
  assert_refused(&rsa, huge);
  free(huge);
  free(extra);
  free(pad);
}

static void test_invalid_device_or_group_id_is_refused(void **state) {
  (void)state;
  static const char *const bad[] = {
      ",\"devices\":[\"ok\",\"has space\"]", ",\"devices\":[\"\"]", ",\"devices\":[\"a/b\"]",
      ",\"devices\":[\"caf\\u00e9\"]",       ",\"devices\":[42]",   ",\"devices\":\"pump-1\"",
      ",\"devices\":{\"pump-1\":true}",      ",\"groups\":[\"ok\",null]", ",\"groups\":[\"../x\"]",
      ",\"devices\":null",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(bad[i]));
    assert_refused(&rsa, tok);
    free(tok);
  }
  /* 129 characters: one over WD_ID_MAX. */
  char extra[256];
  char id[130];
  memset(id, 'd', 129);
  id[129] = '\0';
  snprintf(extra, sizeof extra, ",\"devices\":[\"%s\"]", id);
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(extra));
  assert_refused(&rsa, tok);
  free(tok);
}

static void test_malformed_scope_claims_are_refused(void **state) {
  (void)state;
  static const char *const bad[] = {
      ",\"scope\":42", ",\"scope\":[\"commands:send\"]", ",\"scopes\":\"commands:send\"", ",\"scopes\":[\"commands:send\",7]",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(bad[i]));
    assert_refused(&rsa, tok);
    free(tok);
  }
}

static void test_incomplete_config_refuses_everything(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_RS256, &rsa, claims_with(""));
  wd_http_principal_t p;
  wd_jwt_config_t cfg = config_for(&rsa);
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), 0);
  wd_http_principal_fini(&p);
  assert_int_equal(wd_http__jwt_verify(NULL, tok, NOW, &p), WD_ERR_DENIED);
  cfg.issuer = NULL;
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), WD_ERR_DENIED);
  cfg = config_for(&rsa);
  cfg.audience = NULL;
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), WD_ERR_DENIED);
  cfg = config_for(&rsa);
  cfg.public_key_len = 0;
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), WD_ERR_DENIED);
  cfg = config_for(&rsa);
  cfg.public_key_pem = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n";
  cfg.public_key_len = strlen(cfg.public_key_pem);
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), WD_ERR_DENIED);
  /* The private key PEM is not a public key. */
  cfg = config_for(&rsa);
  cfg.public_key_pem = rsa.priv_pem;
  cfg.public_key_len = rsa.priv_len;
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, &p), WD_ERR_DENIED);
  assert_int_equal(wd_http__jwt_verify(&cfg, tok, NOW, NULL), WD_ERR_DENIED);
  free(tok);
}

/* Fails every jansson allocation after the first `json_budget`; jansson is
 * what both http/jwt.c and libjwt parse JSON with. */
static long json_budget = -1;

static void *json_malloc_limited(size_t n) {
  if (json_budget == 0) return NULL;
  if (json_budget > 0) json_budget--;
  return malloc(n);
}

static void test_allocation_failure_refuses_without_leaking(void **state) {
  (void)state;
  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(",\"scope\":\"commands:send\",\"devices\":[\"a\",\"b\"]"));
  int rc = -1;
  for (long budget = 0; budget < 10000 && rc != 0; budget++) {
    wd_http_principal_t p;
    json_budget = budget;
    json_set_alloc_funcs(json_malloc_limited, free);
    rc = verify(&ec, tok, &p);
    json_set_alloc_funcs(malloc, free);
    if (rc == 0) {
      assert_int_equal(p.scopes, WD_SCOPE_COMMANDS_SEND);
      assert_int_equal(p.n_devices, 2);
      wd_http_principal_fini(&p);
    } else {
      assert_true(rc == WD_ERR_DENIED || rc == WD_ERR_NOMEM);
      assert_null(p.devices);
    }
  }
  assert_int_equal(rc, 0);
  free(tok);
}

/* ------------------------------------------------------------ lifetime */

static void test_principal_fini_frees_lists_and_accepts_zeroed(void **state) {
  (void)state;
  wd_http_principal_t zero = {0};
  wd_http_principal_fini(&zero);
  wd_http_principal_fini(NULL);

  char *tok = sign_with(JWT_ALG_ES256, &ec, claims_with(",\"devices\":[\"a\",\"b\",\"c\"],\"groups\":[\"g\"]"));
  wd_http_principal_t p;
  assert_int_equal(verify(&ec, tok, &p), 0);
  assert_int_equal(p.n_devices, 3);
  wd_http_principal_fini(&p); /* ASan reports a leak if anything is left */
  assert_null(p.devices);
  assert_null(p.groups);
  assert_int_equal(p.n_devices, 0);
  assert_int_equal(p.n_groups, 0);
  wd_http_principal_fini(&p); /* twice is harmless */
  free(tok);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accepts_rs256_with_scope_string),
      cmocka_unit_test(test_accepts_es256_with_scopes_array),
      cmocka_unit_test(test_accepts_hand_signed_es256_with_raw_signature),
      cmocka_unit_test(test_unknown_scope_names_are_ignored),
      cmocka_unit_test(test_scope_and_scopes_together_give_the_union),
      cmocka_unit_test(test_token_without_scopes_grants_none),
      cmocka_unit_test(test_devices_and_groups_restrict_the_caller),
      cmocka_unit_test(test_groups_alone_restrict_the_caller),
      cmocka_unit_test(test_empty_devices_list_restricts_to_nothing),
      cmocka_unit_test(test_audience_array_containing_ours_is_accepted),
      cmocka_unit_test(test_fractional_dates_are_accepted),
      cmocka_unit_test(test_expired_beyond_leeway_is_refused),
      cmocka_unit_test(test_expired_within_leeway_is_accepted),
      cmocka_unit_test(test_missing_or_malformed_exp_is_refused),
      cmocka_unit_test(test_nbf_in_future_is_refused),
      cmocka_unit_test(test_nbf_within_leeway_is_accepted),
      cmocka_unit_test(test_wrong_or_missing_issuer_is_refused),
      cmocka_unit_test(test_wrong_or_missing_audience_is_refused),
      cmocka_unit_test(test_signature_by_another_key_is_refused),
      cmocka_unit_test(test_tampered_payload_is_refused),
      cmocka_unit_test(test_any_single_character_change_is_refused),
      cmocka_unit_test(test_junk_inside_signature_is_refused),
      cmocka_unit_test(test_alg_none_is_refused),
      cmocka_unit_test(test_hs256_signed_with_public_key_pem_is_refused),
      cmocka_unit_test(test_alg_not_matching_key_type_is_refused),
      cmocka_unit_test(test_other_rsa_and_ec_algs_are_refused),
      cmocka_unit_test(test_alg_names_are_case_sensitive),
      cmocka_unit_test(test_crit_header_is_refused),
      cmocka_unit_test(test_der_encoded_ecdsa_signature_is_refused),
      cmocka_unit_test(test_garbage_tokens_are_refused),
      cmocka_unit_test(test_claims_that_are_not_an_object_are_refused),
      cmocka_unit_test(test_duplicate_claims_are_refused),
      cmocka_unit_test(test_token_over_8_kib_is_refused),
      cmocka_unit_test(test_invalid_device_or_group_id_is_refused),
      cmocka_unit_test(test_malformed_scope_claims_are_refused),
      cmocka_unit_test(test_incomplete_config_refuses_everything),
      cmocka_unit_test(test_allocation_failure_refuses_without_leaking),
      cmocka_unit_test(test_principal_fini_frees_lists_and_accepts_zeroed),
  };
  return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}

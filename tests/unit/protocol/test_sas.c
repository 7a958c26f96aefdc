/* Unit tests for protocol/sas.c: Azure IoT Hub shared access signatures.
 *
 * Tokens are checked against wd_sas_build and against tokens computed here
 * independently (OpenSSL's HMAC() and EVP_EncodeBlock, our own URL encoder),
 * plus one golden token produced by Azure's documented Python sample.
 *
 * This executable links with -Wl,--wrap=malloc so that a test can make the
 * allocations of the code under test fail (see fail_mallocs). */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/util.h"
#include "protocol/sas.h"

/* --------------------------------------------------------- malloc failure */

void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);

static bool fail_mallocs;

void *__wrap_malloc(size_t n) {
  if (fail_mallocs) return NULL;
  return __real_malloc(n);
}

/* ---------------------------------------------------------------- helpers */

#define HOST "warden.example.com"
#define NOW 1700000000

static const uint8_t key_a[WD_KEY_BYTES] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                                            0xcc, 0xdd, 0xee, 0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                            0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10};

static void other_key(uint8_t out[WD_KEY_BYTES]) {
  memcpy(out, key_a, WD_KEY_BYTES);
  out[WD_KEY_BYTES - 1] ^= 1;
}

/* Percent-encodes everything but [A-Za-z0-9-._~], with upper or lower case hex. */
static void ref_encode(const char *s, bool lower, char *out, size_t cap) {
  size_t n = 0;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    assert_true(n + 4 < cap);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out[n++] = (char)c;
    } else {
      n += (size_t)snprintf(out + n, cap - n, lower ? "%%%02x" : "%%%02X", c);
    }
  }
  out[n] = '\0';
}

/* A token computed the way Azure's SDK samples do: sr = enc(host/devices/id),
 * sig = enc(base64(HMAC-SHA256(key, sr "\n" se))). `lower_sr` / `lower_sig`
 * choose lower-case hex escapes (as .NET's HttpUtility.UrlEncode writes them). */
static void ref_token(const char *host, const char *id, const uint8_t key[WD_KEY_BYTES], long long se,
                      bool lower_sr, bool lower_sig, char *out, size_t cap) {
  char resource[512], sr[1024], to_sign[1100], b64[64], sig[200];
  snprintf(resource, sizeof resource, "%s/devices/%s", host, id);
  ref_encode(resource, lower_sr, sr, sizeof sr);
  int n = snprintf(to_sign, sizeof to_sign, "%s\n%lld", sr, se);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  assert_non_null(HMAC(EVP_sha256(), key, WD_KEY_BYTES, (const unsigned char *)to_sign, (size_t)n, mac, &mac_len));
  assert_int_equal(mac_len, 32);
  assert_int_equal(EVP_EncodeBlock((unsigned char *)b64, mac, 32), 44);
  ref_encode(b64, lower_sig, sig, sizeof sig);
  int m = snprintf(out, cap, "SharedAccessSignature sr=%s&sig=%s&se=%lld", sr, sig, se);
  assert_true(m > 0 && (size_t)m < cap);
}

static int verify(const char *token, const char *host, const char *id, const uint8_t key[WD_KEY_BYTES],
                  int64_t now) {
  int64_t expiry = -1;
  return wd_sas_verify(token, host, id, key, now, &expiry);
}

/* ------------------------------------------------------------- round trip */

static void test_built_token_verifies_and_reports_expiry(void **state) {
  (void)state;
  char *t = wd_sas_build(HOST, "sensor-1", key_a, NOW + 3600);
  assert_non_null(t);
  assert_true(strncmp(t, "SharedAccessSignature sr=", 25) == 0);
  int64_t expiry = 0;
  assert_int_equal(wd_sas_verify(t, HOST, "sensor-1", key_a, NOW, &expiry), WD_OK);
  assert_int_equal(expiry, NOW + 3600);
  assert_int_equal(wd_sas_verify(t, HOST, "sensor-1", key_a, NOW, NULL), WD_OK);
  free(t);
}

static void test_built_token_verifies_for_ids_with_every_allowed_punctuation(void **state) {
  (void)state;
  const char *ids[] = {"a", "dev:1", "Hall_2.temp-sensor", "0123456789"};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    char *t = wd_sas_build(HOST, ids[i], key_a, NOW + 10);
    assert_non_null(t);
    assert_int_equal(verify(t, HOST, ids[i], key_a, NOW), WD_OK);
    free(t);
  }
}

static void test_built_token_is_what_the_reference_computes(void **state) {
  (void)state;
  char ref[1024];
  ref_token(HOST, "dev:1", key_a, NOW + 60, false, false, ref, sizeof ref);
  char *t = wd_sas_build(HOST, "dev:1", key_a, NOW + 60);
  assert_non_null(t);
  assert_string_equal(t, ref);
  free(t);
}

/* ------------------------------------------------------------- refusals */

static void test_token_signed_with_another_key_is_denied(void **state) {
  (void)state;
  uint8_t k2[WD_KEY_BYTES];
  other_key(k2);
  char *t = wd_sas_build(HOST, "d1", k2, NOW + 60);
  assert_non_null(t);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_ERR_DENIED);
  free(t);
}

static void test_token_for_another_device_is_denied(void **state) {
  (void)state;
  char *t = wd_sas_build(HOST, "d1", key_a, NOW + 60);
  assert_non_null(t);
  assert_int_equal(verify(t, HOST, "d2", key_a, NOW), WD_ERR_DENIED);
  assert_int_equal(verify(t, HOST, "d10", key_a, NOW), WD_ERR_DENIED);
  assert_int_equal(verify(t, HOST, "D1", key_a, NOW), WD_ERR_DENIED);
  assert_int_equal(verify(t, HOST, "d", key_a, NOW), WD_ERR_DENIED);
  free(t);
  t = wd_sas_build(HOST, "d10", key_a, NOW + 60);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_ERR_DENIED);
  free(t);
}

static void test_token_for_another_hostname_is_denied(void **state) {
  (void)state;
  const char *hosts[] = {"other.example.com", "warden.example.com.evil", "evil-warden.example.com", "warden",
                         "warden.example.co"};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
    char *t = wd_sas_build(hosts[i], "d1", key_a, NOW + 60);
    assert_non_null(t);
    int rc = verify(t, HOST, "d1", key_a, NOW);
    if (rc != WD_ERR_DENIED) fail_msg("token for %s verified against %s: %d", hosts[i], HOST, rc);
    free(t);
  }
}

static void test_hostname_compares_without_case(void **state) {
  (void)state;
  char *t = wd_sas_build("Warden.EXAMPLE.com", "d1", key_a, NOW + 60);
  assert_non_null(t);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_OK);
  free(t);
  t = wd_sas_build(HOST, "d1", key_a, NOW + 60);
  assert_int_equal(verify(t, "WARDEN.example.COM", "d1", key_a, NOW), WD_OK);
  free(t);
}

static void test_expired_token_is_denied(void **state) {
  (void)state;
  char *t = wd_sas_build(HOST, "d1", key_a, NOW);
  assert_non_null(t);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_ERR_DENIED);     /* expires at this second */
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW + 100), WD_ERR_DENIED);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW - 1), WD_OK);          /* one second left */
  free(t);
}

static void test_token_with_extended_expiry_is_denied(void **state) {
  (void)state;
  char *t = wd_sas_build(HOST, "d1", key_a, NOW + 60);
  assert_non_null(t);
  char *se = strstr(t, "&se=");
  assert_non_null(se);
  char forged[1024];
  snprintf(forged, sizeof forged, "%.*s&se=%d", (int)(se - t), t, NOW + 999999);
  assert_int_equal(verify(forged, HOST, "d1", key_a, NOW), WD_ERR_DENIED);
  free(t);
}

/* ---------------------------------------------------------- malformed */

static void expect_invalid(const char *token) {
  int rc = verify(token, HOST, "d1", key_a, NOW);
  if (rc != WD_ERR_INVALID) fail_msg("expected WD_ERR_INVALID for \"%s\", got %d", token, rc);
}

#define SR "sr=warden.example.com%2Fdevices%2Fd1"
#define SIG "sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D"

static void test_token_without_prefix_is_invalid(void **state) {
  (void)state;
  expect_invalid("");
  expect_invalid(SR "&" SIG "&se=1800000000");
  expect_invalid("SharedAccessSignature" SR "&" SIG "&se=1800000000");
  expect_invalid("sharedaccesssignature " SR "&" SIG "&se=1800000000");
  expect_invalid("Bearer " SR "&" SIG "&se=1800000000");
}

static void test_token_missing_a_field_is_invalid(void **state) {
  (void)state;
  expect_invalid("SharedAccessSignature " SIG "&se=1800000000");
  expect_invalid("SharedAccessSignature " SR "&se=1800000000");
  expect_invalid("SharedAccessSignature " SR "&" SIG);
  expect_invalid("SharedAccessSignature ");
  expect_invalid("SharedAccessSignature sr&sig&se");
}

static void test_token_repeating_a_field_is_invalid(void **state) {
  (void)state;
  char t[1024];
  ref_token(HOST, "d1", key_a, NOW + 60, false, false, t, sizeof t);
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_OK);
  char dup[1200];
  snprintf(dup, sizeof dup, "%s&se=%d", t, NOW + 60);
  expect_invalid(dup);
  snprintf(dup, sizeof dup, "%s&%s", t, SR);
  expect_invalid(dup);
  snprintf(dup, sizeof dup, "%s&%s", t, SIG);
  expect_invalid(dup);
}

static void test_token_with_bad_base64_signature_is_invalid(void **state) {
  (void)state;
  expect_invalid("SharedAccessSignature " SR "&sig=not*base64!&se=1800000000");
  expect_invalid("SharedAccessSignature " SR "&sig=AAAA%3D%3D%3D%3D&se=1800000000");
  expect_invalid("SharedAccessSignature " SR "&sig=AAA&se=1800000000");
}

static void test_token_with_signature_of_wrong_length_is_denied(void **state) {
  (void)state;
  /* Valid base64, but 16 bytes instead of 32. */
  assert_int_equal(verify("SharedAccessSignature " SR "&sig=AAAAAAAAAAAAAAAAAAAAAA%3D%3D&se=1800000000", HOST, "d1",
                          key_a, NOW),
                   WD_ERR_DENIED);
  assert_int_equal(verify("SharedAccessSignature " SR "&sig=&se=1800000000", HOST, "d1", key_a, NOW), WD_ERR_DENIED);
}

static void test_token_with_bad_expiry_is_invalid(void **state) {
  (void)state;
  const char *bad[] = {"", "abc", "12x", "-5", "0", "1.5", "0x10", "123456789012345678901234567890123"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char t[512];
    snprintf(t, sizeof t, "SharedAccessSignature %s&%s&se=%s", SR, SIG, bad[i]);
    expect_invalid(t);
  }
}

static void test_token_with_bad_escape_is_invalid(void **state) {
  (void)state;
  expect_invalid("SharedAccessSignature sr=warden.example.com%zzdevices%2Fd1&" SIG "&se=1800000000");
  expect_invalid("SharedAccessSignature sr=warden.example.com%2Fdevices%2Fd1%00&" SIG "&se=1800000000");
  expect_invalid("SharedAccessSignature " SR "&sig=AAAA%2&se=1800000000");
}

static void test_token_with_oversized_field_is_invalid(void **state) {
  (void)state;
  char t[4096];
  int n = snprintf(t, sizeof t, "SharedAccessSignature sr=");
  memset(t + n, 'a', 2000);
  snprintf(t + n + 2000, sizeof t - (size_t)n - 2000, "&%s&se=1800000000", SIG);
  expect_invalid(t);
}

/* --------------------------------------------------- independent tokens */

static void test_reference_token_verifies(void **state) {
  (void)state;
  char t[1024];
  ref_token(HOST, "dev:1", key_a, NOW + 60, false, false, t, sizeof t);
  assert_int_equal(verify(t, HOST, "dev:1", key_a, NOW), WD_OK);
  uint8_t k2[WD_KEY_BYTES];
  other_key(k2);
  assert_int_equal(verify(t, HOST, "dev:1", k2, NOW), WD_ERR_DENIED);
}

static void test_reference_token_with_lowercase_escaped_signature_verifies(void **state) {
  (void)state;
  char t[1024];
  ref_token(HOST, "d1", key_a, NOW + 60, false, true, t, sizeof t);
  /* base64 of a SHA-256 MAC always ends in '=', so the signature carries an escape. */
  assert_non_null(strstr(t, "%3d&se="));
  assert_int_equal(verify(t, HOST, "d1", key_a, NOW), WD_OK);
}

static void test_reference_token_with_lowercase_escapes_everywhere_verifies(void **state) {
  (void)state;
  /* .NET's HttpUtility.UrlEncode writes %2f; the signature covers sr as written. */
  char t[1024];
  ref_token(HOST, "dev:1", key_a, NOW + 60, true, true, t, sizeof t);
  assert_non_null(strstr(t, "%2fdevices%2fdev%3a1"));
  assert_int_equal(verify(t, HOST, "dev:1", key_a, NOW), WD_OK);
}

static void test_reference_token_fields_in_any_order_verify(void **state) {
  (void)state;
  char t[1024];
  ref_token(HOST, "d1", key_a, NOW + 60, false, false, t, sizeof t);
  const char *list = t + strlen("SharedAccessSignature ");
  char sr[512], sig[256], se[64];
  assert_int_equal(sscanf(list, "%511[^&]&%255[^&]&%63s", sr, sig, se), 3);
  char r[1200];
  snprintf(r, sizeof r, "SharedAccessSignature %s&%s&%s", se, sr, sig);
  assert_int_equal(verify(r, HOST, "d1", key_a, NOW), WD_OK);
  snprintf(r, sizeof r, "SharedAccessSignature %s&%s&%s", sig, se, sr);
  assert_int_equal(verify(r, HOST, "d1", key_a, NOW), WD_OK);
}

static void test_token_from_azure_python_sample_verifies(void **state) {
  (void)state;
  /* Produced by the generate_sas_token() sample in Azure IoT Hub's documentation
   * (quote_plus, b64encode, hmac/sha256, urlencode) with key = bytes 0..31. */
  const char *token = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev%3A1"
                      "&sig=UUbGvXaYcpJ89avid2jXbJ34E5y8M%2FssmyHLTb7Azl4%3D&se=1700000000";
  uint8_t key[WD_KEY_BYTES];
  for (int i = 0; i < WD_KEY_BYTES; i++) key[i] = (uint8_t)i;
  int64_t expiry = 0;
  assert_int_equal(wd_sas_verify(token, "myhub.azure-devices.net", "dev:1", key, 1699999999, &expiry), WD_OK);
  assert_int_equal(expiry, 1700000000);
  assert_int_equal(wd_sas_verify(token, "myhub.azure-devices.net", "dev:1", key, 1700000000, &expiry),
                   WD_ERR_DENIED);
}

/* ------------------------------------------------------- out of memory */

static void test_build_returns_null_when_out_of_memory(void **state) {
  (void)state;
  fail_mallocs = true;
  char *t = wd_sas_build(HOST, "d1", key_a, NOW + 60);
  fail_mallocs = false;
  assert_null(t);
}

static void test_verify_fails_closed_when_out_of_memory(void **state) {
  (void)state;
  const char *forged = "SharedAccessSignature sr=warden.example.com%2Fdevices%2Fd1"
                       "&sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D&se=1800000000";
  fail_mallocs = true;
  int rc = verify(forged, HOST, "d1", key_a, NOW);
  fail_mallocs = false;
  assert_int_not_equal(rc, WD_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_built_token_verifies_and_reports_expiry),
      cmocka_unit_test(test_built_token_verifies_for_ids_with_every_allowed_punctuation),
      cmocka_unit_test(test_built_token_is_what_the_reference_computes),
      cmocka_unit_test(test_token_signed_with_another_key_is_denied),
      cmocka_unit_test(test_token_for_another_device_is_denied),
      cmocka_unit_test(test_token_for_another_hostname_is_denied),
      cmocka_unit_test(test_hostname_compares_without_case),
      cmocka_unit_test(test_expired_token_is_denied),
      cmocka_unit_test(test_token_with_extended_expiry_is_denied),
      cmocka_unit_test(test_token_without_prefix_is_invalid),
      cmocka_unit_test(test_token_missing_a_field_is_invalid),
      cmocka_unit_test(test_token_repeating_a_field_is_invalid),
      cmocka_unit_test(test_token_with_bad_base64_signature_is_invalid),
      cmocka_unit_test(test_token_with_signature_of_wrong_length_is_denied),
      cmocka_unit_test(test_token_with_bad_expiry_is_invalid),
      cmocka_unit_test(test_token_with_bad_escape_is_invalid),
      cmocka_unit_test(test_token_with_oversized_field_is_invalid),
      cmocka_unit_test(test_reference_token_verifies),
      cmocka_unit_test(test_reference_token_with_lowercase_escaped_signature_verifies),
      cmocka_unit_test(test_reference_token_with_lowercase_escapes_everywhere_verifies),
      cmocka_unit_test(test_reference_token_fields_in_any_order_verify),
      cmocka_unit_test(test_token_from_azure_python_sample_verifies),
      cmocka_unit_test(test_build_returns_null_when_out_of_memory),
      cmocka_unit_test(test_verify_fails_closed_when_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

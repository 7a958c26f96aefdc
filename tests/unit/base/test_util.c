/* Unit tests for gateway/base/util.c: ids, thumbprints, base64, URL coding,
 * constant-time comparison, ISO 8601 times and error names. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/util.h"

/* ------------------------------------------------------------------ ids */

static void fill_id(char *buf, size_t n, char c) {
  memset(buf, c, n);
  buf[n] = '\0';
}

static void test_id_accepts_128_characters(void **state) {
  (void)state;
  char id[WD_ID_MAX + 2];
  fill_id(id, 128, 'a');
  assert_true(wd_id_valid(id));
}

static void test_id_rejects_129_characters(void **state) {
  (void)state;
  char id[WD_ID_MAX + 2];
  fill_id(id, 129, 'a');
  assert_false(wd_id_valid(id));
}

static void test_id_rejects_empty(void **state) {
  (void)state;
  assert_false(wd_id_valid(""));
}

static void test_id_accepts_each_allowed_character(void **state) {
  (void)state;
  const char *allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
  for (const char *c = allowed; *c; c++) {
    char one[2] = {*c, '\0'};
    char mid[4] = {'a', *c, 'b', '\0'};
    if (!wd_id_valid(one) || !wd_id_valid(mid)) fail_msg("'%c' should be allowed in an id", *c);
  }
  assert_true(wd_id_valid("sensor-01.hall_2:temp"));
}

static void test_id_rejects_every_other_byte(void **state) {
  (void)state;
  const char *allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
  for (int b = 1; b < 256; b++) {
    if (strchr(allowed, b)) continue;
    char mid[4] = {'a', (char)b, 'b', '\0'};
    if (wd_id_valid(mid)) fail_msg("byte 0x%02x should not be allowed in an id", b);
  }
}

static void test_id_rejects_slash_space_and_dollar(void **state) {
  (void)state;
  assert_false(wd_id_valid("a/b"));
  assert_false(wd_id_valid("/"));
  assert_false(wd_id_valid("a b"));
  assert_false(wd_id_valid(" "));
  assert_false(wd_id_valid("$default"));
  assert_false(wd_id_valid("caf\xc3\xa9"));
}

static void test_id_rejects_invalid_character_after_128_valid_ones(void **state) {
  (void)state;
  char id[WD_ID_MAX + 3];
  fill_id(id, 128, 'b');
  id[128] = '/';
  id[129] = '\0';
  assert_false(wd_id_valid(id));
}

/* ------------------------------------------------------------ thumbprints */

static void test_thumbprint_accepts_64_lowercase_hex(void **state) {
  (void)state;
  char t[WD_THUMBPRINT_HEX + 1];
  for (int i = 0; i < WD_THUMBPRINT_HEX; i++) t[i] = "0123456789abcdef"[i % 16];
  t[WD_THUMBPRINT_HEX] = '\0';
  assert_true(wd_thumbprint_valid(t));
}

static void test_thumbprint_rejects_wrong_length_case_and_digits(void **state) {
  (void)state;
  char t[WD_THUMBPRINT_HEX + 2];
  fill_id(t, 63, 'a');
  assert_false(wd_thumbprint_valid(t));
  fill_id(t, 65, 'a');
  assert_false(wd_thumbprint_valid(t));
  fill_id(t, 64, 'A');
  assert_false(wd_thumbprint_valid(t));
  fill_id(t, 64, 'a');
  t[10] = 'g';
  assert_false(wd_thumbprint_valid(t));
  t[10] = ':';
  assert_false(wd_thumbprint_valid(t));
  assert_false(wd_thumbprint_valid(""));
}

/* ----------------------------------------------------------------- base64 */

static void check_b64(const char *plain, const char *encoded) {
  size_t n = strlen(plain);
  char out[64];
  assert_int_equal(wd_base64_encoded_len(n), strlen(encoded) + 1);
  wd_base64_encode(plain, n, out);
  assert_string_equal(out, encoded);
  uint8_t back[64];
  int len = wd_base64_decode(encoded, strlen(encoded), back, sizeof back);
  assert_int_equal(len, (int)n);
  assert_memory_equal(back, plain, n);
}

static void test_base64_matches_rfc4648_vectors(void **state) {
  (void)state;
  check_b64("", "");
  check_b64("f", "Zg==");
  check_b64("fo", "Zm8=");
  check_b64("foo", "Zm9v");
  check_b64("foob", "Zm9vYg==");
  check_b64("fooba", "Zm9vYmE=");
  check_b64("foobar", "Zm9vYmFy");
}

static void test_base64_round_trips_every_length_and_byte(void **state) {
  (void)state;
  uint8_t in[300], back[300];
  char enc[404];
  for (size_t i = 0; i < sizeof in; i++) in[i] = (uint8_t)(i * 37 + 11);
  for (size_t n = 0; n <= sizeof in; n++) {
    assert_true(wd_base64_encoded_len(n) <= sizeof enc);
    wd_base64_encode(in, n, enc);
    assert_int_equal(strlen(enc) + 1, wd_base64_encoded_len(n));
    int len = wd_base64_decode(enc, strlen(enc), back, sizeof back);
    assert_int_equal(len, (int)n);
    assert_memory_equal(back, in, n);
  }
}

static void test_base64_uses_plus_and_slash(void **state) {
  (void)state;
  const uint8_t in[] = {0xfb, 0xff, 0xbf};
  char out[8];
  wd_base64_encode(in, sizeof in, out);
  assert_string_equal(out, "+/+/");
}

static void test_base64_rejects_invalid_input(void **state) {
  (void)state;
  uint8_t out[64];
  const char *bad[] = {
      "Zg",       /* padding missing */
      "Zg=",      /* length not a multiple of 4 */
      "Zm9vY",    /* length not a multiple of 4 */
      "Zm9v!mFy", /* not in the alphabet */
      "Zm9v-_Fy", /* the URL-safe alphabet is not base64 */
      "Z===",     /* padding too early */
      "====",     /* nothing but padding */
      "Zg==Zm8=", /* data after padding */
      "Zm=v",     /* data after padding within a group */
      "Zm9v Fy=", /* space */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = wd_base64_decode(bad[i], strlen(bad[i]), out, sizeof out);
    if (rc != WD_ERR_INVALID) fail_msg("\"%s\" decoded to %d, expected WD_ERR_INVALID", bad[i], rc);
  }
}

static void test_base64_rejects_embedded_nul(void **state) {
  (void)state;
  uint8_t out[8];
  const char in[8] = {'Z', 'm', '9', '\0', 'Z', 'm', '9', 'v'};
  assert_int_equal(wd_base64_decode(in, sizeof in, out, sizeof out), WD_ERR_INVALID);
}

static void test_base64_decode_respects_output_capacity(void **state) {
  (void)state;
  uint8_t out[6];
  assert_int_equal(wd_base64_decode("Zm9vYmFy", 8, out, 6), 6);
  assert_int_equal(wd_base64_decode("Zm9vYmFy", 8, out, 5), WD_ERR_INVALID);
  assert_int_equal(wd_base64_decode("Zm9vYg==", 8, out, 4), 4);
  assert_int_equal(wd_base64_decode("Zm9vYg==", 8, out, 3), WD_ERR_INVALID);
}

/* --------------------------------------------------------------- URL coding */

static void check_decode(const char *in, const char *expect) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", in);
  int n = wd_url_decode(buf);
  assert_int_equal(n, (int)strlen(expect));
  assert_string_equal(buf, expect);
}

static void test_url_decode_decodes_upper_and_lower_case_escapes(void **state) {
  (void)state;
  check_decode("a%2Fb", "a/b");
  check_decode("a%2fb", "a/b");
  check_decode("%41%62%3d%3D", "Ab==");
  check_decode("plain", "plain");
  check_decode("", "");
  check_decode("%C3%A9", "\xc3\xa9");
}

static void test_url_decode_leaves_plus_alone(void **state) {
  (void)state;
  check_decode("a+b%2B", "a+b+");
}

static void test_url_decode_rejects_bad_escapes(void **state) {
  (void)state;
  const char *bad[] = {"%", "a%", "%2", "a%2", "%zz", "%2g", "%g2", "%00", "x%00y", "%%41"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char buf[32];
    snprintf(buf, sizeof buf, "%s", bad[i]);
    int rc = wd_url_decode(buf);
    if (rc != WD_ERR_INVALID) fail_msg("\"%s\" decoded to %d, expected WD_ERR_INVALID", bad[i], rc);
  }
}

static void test_url_encode_keeps_unreserved_and_escapes_the_rest(void **state) {
  (void)state;
  char *s = wd_url_encode("AZaz09-._~");
  assert_string_equal(s, "AZaz09-._~");
  free(s);
  s = wd_url_encode("host.example/devices/d:1 +=&%");
  assert_string_equal(s, "host.example%2Fdevices%2Fd%3A1%20%2B%3D%26%25");
  free(s);
  s = wd_url_encode("\xc3\xa9\x7f\x01");
  assert_string_equal(s, "%C3%A9%7F%01");
  free(s);
  s = wd_url_encode("");
  assert_string_equal(s, "");
  free(s);
}

static void test_url_encode_then_decode_round_trips_every_byte(void **state) {
  (void)state;
  char in[256];
  for (int i = 1; i < 256; i++) in[i - 1] = (char)i;
  in[255] = '\0';
  char *enc = wd_url_encode(in);
  assert_non_null(enc);
  assert_int_equal(wd_url_decode(enc), 255);
  assert_memory_equal(enc, in, 256);
  free(enc);
}

/* ------------------------------------------------------------ secure_equal */

static void test_secure_equal_compares_bytes_and_lengths(void **state) {
  (void)state;
  assert_true(wd_secure_equal("abc", 3, "abc", 3));
  assert_false(wd_secure_equal("abc", 3, "abd", 3));
  assert_false(wd_secure_equal("xbc", 3, "abc", 3));
  assert_false(wd_secure_equal("abc", 3, "abcd", 4));
  assert_false(wd_secure_equal("abcd", 4, "abc", 3));
  assert_false(wd_secure_equal("", 0, "a", 1));
  assert_true(wd_secure_equal("", 0, "", 0));
  const uint8_t a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0x80};
  assert_false(wd_secure_equal(a, 4, b, 4));
  assert_true(wd_secure_equal(a, 4, a, 4));
}

/* --------------------------------------------------------------- iso8601 */

static void check_iso(int64_t ms, const char *expect) {
  char out[25];
  memset(out, 'x', sizeof out);
  wd_iso8601(ms, out);
  assert_string_equal(out, expect);
  assert_int_equal(strlen(out), 24);
}

static void test_iso8601_formats_utc_with_milliseconds(void **state) {
  (void)state;
  check_iso(0, "1970-01-01T00:00:00.000Z");
  check_iso(1, "1970-01-01T00:00:00.001Z");
  check_iso(999, "1970-01-01T00:00:00.999Z");
  check_iso(1700000000123, "2023-11-14T22:13:20.123Z");
  check_iso(951782400000, "2000-02-29T00:00:00.000Z");
  check_iso(253402300799999, "9999-12-31T23:59:59.999Z");
}

/* ------------------------------------------------------------ the rest */

static void test_random_bytes_fills_the_buffer(void **state) {
  (void)state;
  uint8_t a[32], b[32];
  memset(a, 0, sizeof a);
  memset(b, 0, sizeof b);
  assert_int_equal(wd_random_bytes(a, sizeof a), WD_OK);
  assert_int_equal(wd_random_bytes(b, sizeof b), WD_OK);
  assert_memory_not_equal(a, b, sizeof a);
  assert_int_equal(wd_random_bytes(a, 0), WD_OK);
}

static void test_clocks_are_plausible(void **state) {
  (void)state;
  int64_t now = wd_now_ms();
  assert_true(now > INT64_C(1600000000000)); /* after 2020 */
  int64_t m1 = wd_mono_ms(), m2 = wd_mono_ms();
  assert_true(m2 >= m1);
}

static void test_err_str_names_every_code(void **state) {
  (void)state;
  for (int rc = WD_ERR_LIMIT; rc <= WD_OK; rc++) {
    const char *s = wd_err_str(rc);
    assert_non_null(s);
    assert_string_not_equal(s, "unknown error");
  }
  assert_string_equal(wd_err_str(WD_ERR_FULL), "store full");
  assert_string_equal(wd_err_str(-1000), "unknown error");
  assert_string_equal(wd_err_str(5), "ok");
}

static void test_read_file_reads_whole_file_and_reports_missing(void **state) {
  (void)state;
  char dir[] = "/tmp/wd-util-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[64];
  snprintf(path, sizeof path, "%s/f", dir);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  for (int i = 0; i < 20000; i++) fputc('a' + i % 26, f);
  fclose(f);
  size_t len = 0;
  char *buf = wd_read_file(path, &len);
  assert_non_null(buf);
  assert_int_equal(len, 20000);
  assert_int_equal(buf[20000], '\0');
  assert_int_equal(buf[19999], 'a' + 19999 % 26);
  free(buf);
  unlink(path);

  errno = 0;
  assert_null(wd_read_file(path, &len));
  assert_int_equal(errno, ENOENT);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_id_accepts_128_characters),
      cmocka_unit_test(test_id_rejects_129_characters),
      cmocka_unit_test(test_id_rejects_empty),
      cmocka_unit_test(test_id_accepts_each_allowed_character),
      cmocka_unit_test(test_id_rejects_every_other_byte),
      cmocka_unit_test(test_id_rejects_slash_space_and_dollar),
      cmocka_unit_test(test_id_rejects_invalid_character_after_128_valid_ones),
      cmocka_unit_test(test_thumbprint_accepts_64_lowercase_hex),
      cmocka_unit_test(test_thumbprint_rejects_wrong_length_case_and_digits),
      cmocka_unit_test(test_base64_matches_rfc4648_vectors),
      cmocka_unit_test(test_base64_round_trips_every_length_and_byte),
      cmocka_unit_test(test_base64_uses_plus_and_slash),
      cmocka_unit_test(test_base64_rejects_invalid_input),
      cmocka_unit_test(test_base64_rejects_embedded_nul),
      cmocka_unit_test(test_base64_decode_respects_output_capacity),
      cmocka_unit_test(test_url_decode_decodes_upper_and_lower_case_escapes),
      cmocka_unit_test(test_url_decode_leaves_plus_alone),
      cmocka_unit_test(test_url_decode_rejects_bad_escapes),
      cmocka_unit_test(test_url_encode_keeps_unreserved_and_escapes_the_rest),
      cmocka_unit_test(test_url_encode_then_decode_round_trips_every_byte),
      cmocka_unit_test(test_secure_equal_compares_bytes_and_lengths),
      cmocka_unit_test(test_iso8601_formats_utc_with_milliseconds),
      cmocka_unit_test(test_random_bytes_fills_the_buffer),
      cmocka_unit_test(test_clocks_are_plausible),
      cmocka_unit_test(test_err_str_names_every_code),
      cmocka_unit_test(test_read_file_reads_whole_file_and_reports_missing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The pure half of http/: routing, PUT body validation, list queries, record
 * and error rendering, header and listen-address parsing. No network. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "http/internal.h"

/* ------------------------------------------------------------------ routes */

static void route(const char *method, const char *path, wd_http_route_t *r) { wd_http__route(method, path, r); }

static void test_route_healthz_needs_no_auth(void **state) {
  (void)state;
  wd_http_route_t r;
  route("GET", "/healthz", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_HEALTHZ);
  assert_false(r.needs_auth);
  assert_int_equal(r.scope, 0);
  route("POST", "/healthz", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_METHOD_NOT_ALLOWED);
  assert_string_equal(r.allow, "GET, HEAD");
}

static void test_route_device_calls_map_to_kind_and_scope(void **state) {
  (void)state;
  static const struct {
    const char *method, *path;
    wd_http_route_kind_t kind;
    unsigned scope;
  } cases[] = {
      {"GET", "/v1/devices", WD_HTTP_ROUTE_DEVICE_LIST, WD_SCOPE_REGISTRY_READ},
      {"GET", "/v1/devices/d1", WD_HTTP_ROUTE_DEVICE_GET, WD_SCOPE_REGISTRY_READ},
      {"HEAD", "/v1/devices/d1", WD_HTTP_ROUTE_DEVICE_GET, WD_SCOPE_REGISTRY_READ},
      {"PUT", "/v1/devices/d1", WD_HTTP_ROUTE_DEVICE_PUT, WD_SCOPE_REGISTRY_WRITE},
      {"DELETE", "/v1/devices/d1", WD_HTTP_ROUTE_DEVICE_DELETE, WD_SCOPE_REGISTRY_WRITE},
      {"POST", "/v1/devices/d1/disable", WD_HTTP_ROUTE_DEVICE_DISABLE, WD_SCOPE_REGISTRY_WRITE},
      {"POST", "/v1/devices/d1/enable", WD_HTTP_ROUTE_DEVICE_ENABLE, WD_SCOPE_REGISTRY_WRITE},
      {"POST", "/v1/devices/d1/keys/rotate", WD_HTTP_ROUTE_DEVICE_ROTATE, WD_SCOPE_REGISTRY_WRITE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    wd_http_route_t r;
    route(cases[i].method, cases[i].path, &r);
    assert_int_equal(r.kind, cases[i].kind);
    assert_int_equal(r.scope, cases[i].scope);
    assert_true(r.needs_auth);
    if (cases[i].kind != WD_HTTP_ROUTE_DEVICE_LIST) assert_string_equal(r.id, "d1");
  }
}

static void test_route_wrong_method_is_405_with_allow(void **state) {
  (void)state;
  wd_http_route_t r;
  route("PATCH", "/v1/devices/d1", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_METHOD_NOT_ALLOWED);
  assert_string_equal(r.allow, "GET, HEAD, PUT, DELETE");
  route("GET", "/v1/devices/d1/disable", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_METHOD_NOT_ALLOWED);
  assert_string_equal(r.allow, "POST");
  route("POST", "/v1/devices", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_METHOD_NOT_ALLOWED);
  assert_true(r.needs_auth);
}

static void test_route_unknown_paths_are_404_and_v1_needs_auth(void **state) {
  (void)state;
  static const char *v1[] = {"/v1", "/v1/", "/v1/nothing", "/v1/devices/", "/v1/devices//x",
                             "/v1/devices/d1/keys", "/v1/devices/d1/keys/rotate/now", "/v1/devices/d1/x/y/z/w/v"};
  for (size_t i = 0; i < sizeof v1 / sizeof v1[0]; i++) {
    wd_http_route_t r;
    route("GET", v1[i], &r);
    assert_int_equal(r.kind, WD_HTTP_ROUTE_NOT_FOUND);
    assert_true(r.needs_auth);
  }
  /* Everything but /healthz needs a token, found or not. */
  static const char *other[] = {"", "/", "healthz", "/healthz/", "/v1x/devices", "/V1/devices", "//v1/devices"};
  for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
    wd_http_route_t r;
    route("GET", other[i], &r);
    assert_int_equal(r.kind, WD_HTTP_ROUTE_NOT_FOUND);
    assert_true(r.needs_auth);
  }
  wd_http_route_t h;
  route("GET", "/healthz", &h);
  assert_int_equal(h.kind, WD_HTTP_ROUTE_HEALTHZ);
  assert_false(h.needs_auth);
}

static void test_route_percent_encoded_v1_still_needs_auth(void **state) {
  (void)state;
  /* Found by fuzzing: auth was once decided on the raw path, routing on the decoded one. */
  static const char *paths[] = {"/%76%31/devices", "/v%31/devices", "/%76%31/devices/x", "/%68ealthz/../v1"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    wd_http_route_t r;
    route("GET", paths[i], &r);
    assert_true(r.needs_auth);
  }
  wd_http_route_t r;
  route("GET", "/%76%31/devices", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_DEVICE_LIST);
  assert_true(r.needs_auth);
  assert_int_equal(r.scope, WD_SCOPE_REGISTRY_READ);
}

static void test_route_decodes_each_segment_on_its_own(void **state) {
  (void)state;
  wd_http_route_t r;
  route("GET", "/v1/devices/a%3Ab", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_DEVICE_GET);
  assert_string_equal(r.id, "a:b");
  /* An encoded slash stays inside the id, which it makes invalid. */
  route("GET", "/v1/devices/a%2Fdisable", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_BAD_ID);
  route("POST", "/v1/devices/x%2Fy/disable", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_BAD_ID);
  /* Bad escapes, an encoded NUL, characters outside the id set. */
  static const char *bad[] = {"/v1/devices/a%00b", "/v1/devices/a%zz", "/v1/devices/a%4", "/v1/devices/a%",
                              "/v1/devices/bad%20id", "/v1/devices/%C3%A9", "/v1/devices/a\xff"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    route("PUT", bad[i], &r);
    assert_int_equal(r.kind, WD_HTTP_ROUTE_BAD_ID);
    assert_string_equal(r.id, "");
  }
  /* Literal segments are matched after decoding too. */
  route("POST", "/v1/devices/d1/%64isable", &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_DEVICE_DISABLE);
}

static void test_route_id_length_limit(void **state) {
  (void)state;
  char path[300] = "/v1/devices/";
  size_t base = strlen(path);
  memset(path + base, 'x', WD_ID_MAX);
  path[base + WD_ID_MAX] = '\0';
  wd_http_route_t r;
  route("GET", path, &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_DEVICE_GET);
  assert_int_equal(strlen(r.id), WD_ID_MAX);
  path[base + WD_ID_MAX] = 'x';
  path[base + WD_ID_MAX + 1] = '\0';
  route("GET", path, &r);
  assert_int_equal(r.kind, WD_HTTP_ROUTE_BAD_ID);
}

/* ------------------------------------------------------------ request body */

static int parse(const char *body, wd_http_device_body_t *b, char *msg) {
  return wd_http__device_body_parse(body, strlen(body), "d1", b, msg, 256);
}

static void test_body_empty_means_defaults(void **state) {
  (void)state;
  static const char *empties[] = {"", "  \n", "{}", "{\"groups\":null,\"auth\":null}"};
  for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
    wd_http_device_body_t b;
    char msg[256];
    assert_int_equal(parse(empties[i], &b, msg), WD_OK);
    assert_string_equal(b.groups, "");
    assert_string_equal(b.peers, "");
    assert_int_equal(b.queue_limit, 0);
    assert_true(b.key);
    assert_false(b.has_auth);
    assert_string_equal(b.thumbprint, "");
    wd_http__device_body_fini(&b);
  }
}

static void test_body_full_parses_and_normalises(void **state) {
  (void)state;
  wd_http_device_body_t b;
  char msg[256];
  const char *body =
      "{\"id\":\"d1\",\"groups\":[\"g1\",\"g2\",\"g1\"],\"peers\":[\"d2\",\"g3\"],\"queueLimit\":100000,"
      "\"auth\":{\"key\":false,\"thumbprint\":"
      "\"AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\"},"
      "\"enabled\":false,\"connected\":true}";
  assert_int_equal(parse(body, &b, msg), WD_OK);
  assert_string_equal(b.groups, "g1 g2");
  assert_string_equal(b.peers, "d2 g3");
  assert_int_equal(b.queue_limit, 100000);
  assert_true(b.has_auth);
  assert_false(b.key);
  assert_string_equal(b.thumbprint, "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
  wd_http__device_body_fini(&b);
}

static void test_body_rejects_invalid_input_naming_the_problem(void **state) {
  (void)state;
  static const struct {
    const char *body, *word;
  } cases[] = {
      {"{", "invalid JSON at line 1"},
      {"{\"a\":1,\"a\":2}", "invalid JSON"},
      {"{\"groups\":[\"\xff\"]}", "invalid JSON"},
      {"{\"queueLimit\":99999999999999999999999}", "invalid JSON"},
      {"[1]", "JSON object"},
      {"\"x\"", "JSON object"},
      {"{\"id\":\"other\"}", "\"id\""},
      {"{\"id\":5}", "\"id\""},
      {"{\"groups\":\"g1\"}", "\"groups\""},
      {"{\"groups\":[\"bad id\"]}", "\"groups\"[0]"},
      {"{\"groups\":[\"ok\",7]}", "\"groups\"[1]"},
      {"{\"peers\":[\"\"]}", "\"peers\"[0]"},
      {"{\"queueLimit\":0}", "queueLimit"},
      {"{\"queueLimit\":-5}", "queueLimit"},
      {"{\"queueLimit\":100001}", "queueLimit"},
      {"{\"queueLimit\":1.5}", "queueLimit"},
      {"{\"queueLimit\":\"50\"}", "queueLimit"},
      {"{\"auth\":true}", "\"auth\""},
      {"{\"auth\":{\"key\":\"yes\"}}", "auth.key"},
      {"{\"auth\":{\"thumbprint\":\"abc\"}}", "auth.thumbprint"},
      {"{\"auth\":{\"thumbprint\":7}}", "auth.thumbprint"},
      {"{\"auth\":{\"key\":false}}", "key or register a thumbprint"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    wd_http_device_body_t b;
    char msg[256];
    int rc = parse(cases[i].body, &b, msg);
    if (rc != WD_ERR_INVALID || !strstr(msg, cases[i].word))
      fail_msg("body %s: rc %d, message \"%s\", wanted \"%s\"", cases[i].body, rc, msg, cases[i].word);
    assert_null(b.groups); /* nothing left to free on error */
  }
}

static void test_body_with_embedded_nul_is_rejected(void **state) {
  (void)state;
  static const char body[] = "{\"groups\":[\"a\0b\"]}";
  wd_http_device_body_t b;
  char msg[256];
  assert_int_equal(wd_http__device_body_parse(body, sizeof body - 1, "d1", &b, msg, sizeof msg), WD_ERR_INVALID);
}

static void test_thumbprint_normalize(void **state) {
  (void)state;
  char out[WD_THUMBPRINT_HEX + 1];
  char in[200];
  memset(in, 'A', 64);
  in[64] = '\0';
  assert_int_equal(wd_http__thumbprint_normalize(in, out), WD_OK);
  for (int i = 0; i < 64; i++) assert_int_equal(out[i], 'a');
  in[64] = 'A';
  in[65] = '\0';
  assert_int_equal(wd_http__thumbprint_normalize(in, out), WD_ERR_INVALID);
  in[63] = '\0';
  assert_int_equal(wd_http__thumbprint_normalize(in, out), WD_ERR_INVALID);
  memset(in, 'a', 64);
  in[10] = 'g';
  in[64] = '\0';
  assert_int_equal(wd_http__thumbprint_normalize(in, out), WD_ERR_INVALID);
  assert_int_equal(wd_http__thumbprint_normalize("", out), WD_ERR_INVALID);
}

/* ------------------------------------------------------------- list query */

static void test_list_query_defaults_caps_and_rejects(void **state) {
  (void)state;
  char cursor[WD_ID_MAX + 1], msg[256];
  size_t limit;
  assert_int_equal(wd_http__list_query_parse(NULL, NULL, cursor, &limit, msg, sizeof msg), WD_OK);
  assert_string_equal(cursor, "");
  assert_int_equal(limit, 100);
  assert_int_equal(wd_http__list_query_parse("", "", cursor, &limit, msg, sizeof msg), WD_OK);
  assert_int_equal(limit, 100);
  assert_int_equal(wd_http__list_query_parse("a%3Ab", "7", cursor, &limit, msg, sizeof msg), WD_OK);
  assert_string_equal(cursor, "a:b");
  assert_int_equal(limit, 7);
  assert_int_equal(wd_http__list_query_parse(NULL, "5000", cursor, &limit, msg, sizeof msg), WD_OK);
  assert_int_equal(limit, 1000);
  assert_int_equal(wd_http__list_query_parse(NULL, "99999999999999999999999", cursor, &limit, msg, sizeof msg),
                   WD_OK);
  assert_int_equal(limit, 1000);
  static const char *bad_limits[] = {"0", "-1", "abc", "1.5", "+3", " 3"};
  for (size_t i = 0; i < sizeof bad_limits / sizeof bad_limits[0]; i++) {
    assert_int_equal(wd_http__list_query_parse(NULL, bad_limits[i], cursor, &limit, msg, sizeof msg),
                     WD_ERR_INVALID);
    assert_non_null(strstr(msg, "limit"));
  }
  char longc[600];
  memset(longc, 'a', sizeof longc - 1);
  longc[sizeof longc - 1] = '\0';
  static const char *bad_cursors[] = {"bad%20id", "a%00", "%zz", "\xff"};
  for (size_t i = 0; i < sizeof bad_cursors / sizeof bad_cursors[0]; i++)
    assert_int_equal(wd_http__list_query_parse(bad_cursors[i], NULL, cursor, &limit, msg, sizeof msg),
                     WD_ERR_INVALID);
  assert_int_equal(wd_http__list_query_parse(longc, NULL, cursor, &limit, msg, sizeof msg), WD_ERR_INVALID);
}

/* ---------------------------------------------------------------- render */

static wd_device_t sample(void) {
  wd_device_t d;
  memset(&d, 0, sizeof d);
  strcpy(d.id, "d1");
  d.enabled = true;
  d.groups = (char *)"g1 g2";
  d.peers = (char *)"";
  d.queue_limit = 0;
  d.created_ms = 1700000000123;
  d.updated_ms = 1700000001000;
  return d;
}

static char *render_text(const wd_device_t *d, const wd_http_live_t *live, const char *key) {
  json_t *j = wd_http__device_render(d, live, 50, key);
  assert_non_null(j);
  char *s = wd_http__json_text(j);
  json_decref(j);
  assert_non_null(s);
  return s;
}

static void test_render_record_as_the_contract_writes_it(void **state) {
  (void)state;
  wd_device_t d = sample();
  char *s = render_text(&d, NULL, NULL);
  assert_string_equal(s,
                      "{\"id\":\"d1\",\"enabled\":true,\"groups\":[\"g1\",\"g2\"],\"peers\":[],\"queueLimit\":50,"
                      "\"connected\":false,\"lastSeen\":null,\"queueDepth\":0,"
                      "\"createdAt\":\"2023-11-14T22:13:20.123Z\",\"updatedAt\":\"2023-11-14T22:13:21.000Z\"}");
  free(s);
}

static void test_render_live_thumbprint_limit_and_key(void **state) {
  (void)state;
  wd_device_t d = sample();
  d.enabled = false;
  d.queue_limit = 7;
  d.peers = (char *)" d2  g3 ";
  strcpy(d.thumbprint, "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789");
  wd_http_live_t live = {.connected = true, .last_seen_ms = 1700000000123, .queue_depth = 3};
  json_t *j = wd_http__device_render(&d, &live, 50, "S0VZ");
  assert_non_null(j);
  assert_true(json_is_false(json_object_get(j, "enabled")));
  assert_int_equal(json_integer_value(json_object_get(j, "queueLimit")), 7);
  assert_true(json_is_true(json_object_get(j, "connected")));
  assert_string_equal(json_string_value(json_object_get(j, "lastSeen")), "2023-11-14T22:13:20.123Z");
  assert_int_equal(json_integer_value(json_object_get(j, "queueDepth")), 3);
  assert_string_equal(json_string_value(json_object_get(j, "thumbprint")), d.thumbprint);
  assert_string_equal(json_string_value(json_object_get(j, "key")), "S0VZ");
  json_t *peers = json_object_get(j, "peers");
  assert_int_equal(json_array_size(peers), 2);
  assert_string_equal(json_string_value(json_array_get(peers, 0)), "d2");
  assert_string_equal(json_string_value(json_array_get(peers, 1)), "g3");
  json_decref(j);
  /* Without a key or a thumbprint, neither member appears. */
  d.thumbprint[0] = '\0';
  j = wd_http__device_render(&d, &live, 50, NULL);
  assert_null(json_object_get(j, "key"));
  assert_null(json_object_get(j, "thumbprint"));
  json_decref(j);
}

static void test_error_body_shape(void **state) {
  (void)state;
  char *s = wd_http__error_body("not_found", "device \"x\" not found");
  assert_string_equal(s, "{\"error\":\"not_found\",\"message\":\"device \\\"x\\\" not found\"}");
  free(s);
  /* A message that is not UTF-8 still yields a JSON error body. */
  s = wd_http__error_body("bad_request", "bad \xff byte");
  assert_non_null(s);
  json_t *j = json_loads(s, 0, NULL);
  assert_non_null(j);
  assert_true(json_is_string(json_object_get(j, "error")));
  assert_true(json_is_string(json_object_get(j, "message")));
  json_decref(j);
  free(s);
}

static void test_store_errors_map_to_status(void **state) {
  (void)state;
  const char *code;
  assert_int_equal(wd_http__err_status(WD_ERR_NOT_FOUND, &code), 404);
  assert_string_equal(code, "not_found");
  assert_int_equal(wd_http__err_status(WD_ERR_EXISTS, &code), 409);
  assert_string_equal(code, "conflict");
  assert_int_equal(wd_http__err_status(WD_ERR_FULL, &code), 503);
  assert_string_equal(code, "store_full");
  assert_int_equal(wd_http__err_status(WD_ERR_SHUTDOWN, &code), 503);
  assert_int_equal(wd_http__err_status(WD_ERR_INVALID, &code), 400);
  assert_string_equal(code, "bad_request");
  assert_int_equal(wd_http__err_status(WD_ERR_IO, &code), 500);
  assert_int_equal(wd_http__err_status(WD_ERR_NOMEM, &code), 500);
}

/* ------------------------------------------------------- headers, listen */

static void test_bearer_token(void **state) {
  (void)state;
  assert_string_equal(wd_http__bearer_token("Bearer s3cret"), "s3cret");
  assert_string_equal(wd_http__bearer_token("bearer \t s3cret"), "s3cret");
  assert_string_equal(wd_http__bearer_token("  BEARER x"), "x");
  assert_null(wd_http__bearer_token(NULL));
  assert_null(wd_http__bearer_token(""));
  assert_null(wd_http__bearer_token("Bearer"));
  assert_null(wd_http__bearer_token("Bearer   "));
  assert_null(wd_http__bearer_token("Bearers x"));
  assert_null(wd_http__bearer_token("Basic YWRtaW4="));
}

static void test_listen_parse(void **state) {
  (void)state;
  char host[64];
  uint16_t port = 1;
  assert_int_equal(wd_http__listen_parse("127.0.0.1:8080", host, sizeof host, &port), WD_OK);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 8080);
  assert_int_equal(wd_http__listen_parse("localhost:0", host, sizeof host, &port), WD_OK);
  assert_string_equal(host, "localhost");
  assert_int_equal(port, 0);
  assert_int_equal(wd_http__listen_parse("[::1]:65535", host, sizeof host, &port), WD_OK);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 65535);
  assert_int_equal(wd_http__listen_parse(":80", host, sizeof host, &port), WD_OK);
  assert_string_equal(host, "");
  static const char *bad[] = {"", "localhost", "host:", "host:65536", "host:-1", "host:8x", "::1:80", "[::1]80",
                              "[]:80", "[::1:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(wd_http__listen_parse(bad[i], host, sizeof host, &port), WD_ERR_INVALID);
  assert_int_equal(wd_http__listen_parse(NULL, host, sizeof host, &port), WD_ERR_INVALID);
  char small[4];
  assert_int_equal(wd_http__listen_parse("example.org:80", small, sizeof small, &port), WD_ERR_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_route_healthz_needs_no_auth),
      cmocka_unit_test(test_route_device_calls_map_to_kind_and_scope),
      cmocka_unit_test(test_route_wrong_method_is_405_with_allow),
      cmocka_unit_test(test_route_unknown_paths_are_404_and_v1_needs_auth),
      cmocka_unit_test(test_route_decodes_each_segment_on_its_own),
      cmocka_unit_test(test_route_percent_encoded_v1_still_needs_auth),
      cmocka_unit_test(test_route_id_length_limit),
      cmocka_unit_test(test_body_empty_means_defaults),
      cmocka_unit_test(test_body_full_parses_and_normalises),
      cmocka_unit_test(test_body_rejects_invalid_input_naming_the_problem),
      cmocka_unit_test(test_body_with_embedded_nul_is_rejected),
      cmocka_unit_test(test_thumbprint_normalize),
      cmocka_unit_test(test_list_query_defaults_caps_and_rejects),
      cmocka_unit_test(test_render_record_as_the_contract_writes_it),
      cmocka_unit_test(test_render_live_thumbprint_limit_and_key),
      cmocka_unit_test(test_error_body_shape),
      cmocka_unit_test(test_store_errors_map_to_status),
      cmocka_unit_test(test_bearer_token),
      cmocka_unit_test(test_listen_parse),
  };
  return cmocka_run_group_tests_name("http_routes", tests, NULL, NULL);
}

/* Unit tests for gateway/config.c: embedded defaults, a full file, units, and
 * that every kind of mistake is reported as "[section] key: problem". */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "gateway/config.h"

#define THUMB "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

typedef struct {
  char dir[64];
  char path[128];
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/wd-config-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  snprintf(f->path, sizeof f->path, "%s/warden.ini", f->dir);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  unlink(f->path);
  rmdir(f->dir);
  free(f);
  return 0;
}

static const char *write_file(void **state, const char *text) {
  fixture_t *f = *state;
  FILE *fp = fopen(f->path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
  return f->path;
}

/* A file that loads on its own: TLS is off, so no certificate is needed. */
#define BASE "[amqp]\ntls_listen =\n"

static wd_config_t *load_ok(void **state, const char *text) {
  char err[512] = "";
  wd_config_t *cfg = NULL;
  int rc = wd_config_load(write_file(state, text), &cfg, err, sizeof err);
  if (rc != WD_OK) fail_msg("config failed to load: %d %s\n--- file:\n%s", rc, err, text);
  assert_non_null(cfg);
  return cfg;
}

/* Loads text, expects WD_ERR_INVALID and an error naming `where` (e.g. "[amqp] listen"). */
static void expect_error(void **state, const char *text, const char *where) {
  char err[512] = "";
  wd_config_t *cfg = NULL;
  int rc = wd_config_load(write_file(state, text), &cfg, err, sizeof err);
  if (rc != WD_ERR_INVALID) fail_msg("expected WD_ERR_INVALID, got %d (%s) for:\n%s", rc, err, text);
  assert_null(cfg);
  if (strncmp(err, where, strlen(where)) != 0 || err[strlen(where)] != ':')
    fail_msg("error \"%s\" does not start with \"%s:\"", err, where);
}

/* --------------------------------------------------------------- defaults */

static void test_defaults_without_a_file_are_for_development(void **state) {
  (void)state;
  char err[256] = "";
  wd_config_t *cfg = NULL;
  assert_int_equal(wd_config_load(NULL, &cfg, err, sizeof err), WD_OK);
  assert_true(cfg->dev_mode);
  assert_false(cfg->allow_key_password);
  assert_string_equal(cfg->hostname, "localhost");
  assert_string_equal(cfg->store_path, "./warden-data");
  assert_string_equal(cfg->amqp_listen, "127.0.0.1:5672");
  assert_string_equal(cfg->amqp_tls_listen, "127.0.0.1:5671");
  assert_string_equal(cfg->http_listen, "127.0.0.1:8080");
  assert_string_equal(cfg->log_level, "info");
  assert_int_equal(cfg->idle_timeout_s, 120);
  assert_int_equal(cfg->max_idle_timeout_s, 1800);
  assert_int_equal(cfg->max_message_size, 256 * 1024);
  assert_int_equal(cfg->default_ttl_s, 3600);
  assert_int_equal(cfg->max_ttl_s, 7 * 86400);
  assert_int_equal(cfg->queue_limit, 50);
  assert_int_equal(cfg->max_delivery_count, 10);
  assert_true(cfg->threads >= 1);
  assert_true(cfg->store_max_size >= (UINT64_C(1) << 20));
  assert_int_equal(cfg->n_services, 0);
  assert_null(cfg->amqp_tls_cert);
  assert_null(cfg->upstream_url);
  wd_config_free(cfg);
}

static void test_file_leaves_unset_keys_at_defaults_and_dev_mode_off(void **state) {
  wd_config_t *cfg = load_ok(state, BASE);
  assert_false(cfg->dev_mode);
  assert_string_equal(cfg->hostname, "localhost");
  assert_string_equal(cfg->amqp_listen, "127.0.0.1:5672");
  assert_string_equal(cfg->amqp_tls_listen, "");
  assert_int_equal(cfg->queue_limit, 50);
  wd_config_free(cfg);
}

static void test_full_file_sets_every_key(void **state) {
  wd_config_t *cfg = load_ok(state,
                             "; a complete configuration\n"
                             "[gateway]\n"
                             "hostname = hub.example.com\n"
                             "threads = 4\n"
                             "log_level = debug\n"
                             "[store]\n"
                             "path = /var/lib/warden\n"
                             "max_size = 2G\n"
                             "[amqp]\n"
                             "listen = 0.0.0.0:5672\n"
                             "tls_listen = [::]:5671\n"
                             "tls_cert = /etc/warden/cert.pem\n"
                             "tls_key = /etc/warden/key.pem\n"
                             "tls_ca = /etc/warden/ca.pem\n"
                             "idle_timeout = 2m\n"
                             "max_idle_timeout = 1h\n"
                             "max_message_size = 1M\n"
                             "max_connections = 5000\n"
                             "[http]\n"
                             "listen = 0.0.0.0:8443\n"
                             "tls_cert = /etc/warden/http-cert.pem\n"
                             "tls_key = /etc/warden/http-key.pem\n"
                             "[auth]\n"
                             "dev_mode = false\n"
                             "allow_key_password = yes\n"
                             "jwt_issuer = https://issuer.example.com\n"
                             "jwt_public_key = /etc/warden/jwt.pem\n"
                             "[commands]\n"
                             "default_ttl = 30m\n"
                             "max_ttl = 2d\n"
                             "queue_limit = 200\n"
                             "max_delivery_count = 5\n"
                             "[service backend]\n"
                             "secret = 0123456789abcdef-backend\n"
                             "scopes = telemetry:read commands:send\n"
                             "[service ops]\n"
                             "thumbprint = " THUMB "\n"
                             "scopes = registry:read registry:write\n"
                             "[upstream]\n"
                             "url = amqps://parent.example.com:5671\n"
                             "device_id = edge-1\n"
                             "key = c2VjcmV0\n"
                             "ca = /etc/warden/parent-ca.pem\n");
  assert_string_equal(cfg->hostname, "hub.example.com");
  assert_int_equal(cfg->threads, 4);
  assert_string_equal(cfg->log_level, "debug");
  assert_string_equal(cfg->store_path, "/var/lib/warden");
  assert_int_equal(cfg->store_max_size, UINT64_C(2) << 30);
  assert_string_equal(cfg->amqp_listen, "0.0.0.0:5672");
  assert_string_equal(cfg->amqp_tls_listen, "[::]:5671");
  assert_string_equal(cfg->amqp_tls_cert, "/etc/warden/cert.pem");
  assert_string_equal(cfg->amqp_tls_key, "/etc/warden/key.pem");
  assert_string_equal(cfg->amqp_tls_ca, "/etc/warden/ca.pem");
  assert_int_equal(cfg->idle_timeout_s, 120);
  assert_int_equal(cfg->max_idle_timeout_s, 3600);
  assert_int_equal(cfg->max_message_size, 1024 * 1024);
  assert_int_equal(cfg->max_connections, 5000);
  assert_string_equal(cfg->http_listen, "0.0.0.0:8443");
  assert_string_equal(cfg->http_tls_cert, "/etc/warden/http-cert.pem");
  assert_string_equal(cfg->http_tls_key, "/etc/warden/http-key.pem");
  assert_false(cfg->dev_mode);
  assert_true(cfg->allow_key_password);
  assert_string_equal(cfg->jwt_issuer, "https://issuer.example.com");
  assert_string_equal(cfg->jwt_public_key, "/etc/warden/jwt.pem");
  assert_int_equal(cfg->default_ttl_s, 1800);
  assert_int_equal(cfg->max_ttl_s, 2 * 86400);
  assert_int_equal(cfg->queue_limit, 200);
  assert_int_equal(cfg->max_delivery_count, 5);
  assert_int_equal(cfg->n_services, 2);
  const wd_service_config_t *backend = NULL, *ops = NULL;
  for (size_t i = 0; i < cfg->n_services; i++) {
    if (strcmp(cfg->services[i].name, "backend") == 0) backend = &cfg->services[i];
    if (strcmp(cfg->services[i].name, "ops") == 0) ops = &cfg->services[i];
  }
  assert_non_null(backend);
  assert_non_null(ops);
  assert_string_equal(backend->secret, "0123456789abcdef-backend");
  assert_null(backend->thumbprint);
  assert_int_equal(backend->scopes, WD_SCOPE_TELEMETRY_READ | WD_SCOPE_COMMANDS_SEND);
  assert_null(ops->secret);
  assert_string_equal(ops->thumbprint, THUMB);
  assert_int_equal(ops->scopes, WD_SCOPE_REGISTRY_READ | WD_SCOPE_REGISTRY_WRITE);
  assert_string_equal(cfg->upstream_url, "amqps://parent.example.com:5671");
  assert_string_equal(cfg->upstream_device_id, "edge-1");
  assert_string_equal(cfg->upstream_key, "c2VjcmV0");
  assert_string_equal(cfg->upstream_ca, "/etc/warden/parent-ca.pem");
  wd_config_free(cfg);
}

static void test_dev_mode_allows_tls_listen_without_certificate(void **state) {
  wd_config_t *cfg = load_ok(state, "[auth]\ndev_mode = true\n");
  assert_true(cfg->dev_mode);
  assert_string_equal(cfg->amqp_tls_listen, "127.0.0.1:5671");
  assert_null(cfg->amqp_tls_cert);
  wd_config_free(cfg);
}

/* ------------------------------------------------------------------ units */

static void test_sizes_take_k_m_g_units(void **state) {
  static const struct {
    const char *text;
    uint64_t value;
  } cases[] = {{"1048576", 1048576},
               {"1024K", 1048576},
               {"64M", UINT64_C(64) << 20},
               {"64m", UINT64_C(64) << 20},
               {"3G", UINT64_C(3) << 30},
               {"16MB", UINT64_C(16) << 20},
               {"2gb", UINT64_C(2) << 30},
               {"16384G", UINT64_C(1) << 44}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[128];
    snprintf(text, sizeof text, BASE "[store]\nmax_size = %s\n", cases[i].text);
    wd_config_t *cfg = load_ok(state, text);
    if (cfg->store_max_size != cases[i].value)
      fail_msg("max_size = %s gave %llu", cases[i].text, (unsigned long long)cfg->store_max_size);
    wd_config_free(cfg);
  }
  wd_config_t *cfg = load_ok(state, BASE "[amqp]\nmax_message_size = 64K\n");
  assert_int_equal(cfg->max_message_size, 65536);
  wd_config_free(cfg);
}

static void test_durations_take_s_m_h_d_units(void **state) {
  static const struct {
    const char *text;
    uint32_t value;
  } cases[] = {{"90", 90}, {"90s", 90}, {"5m", 300}, {"2h", 7200}, {"1d", 86400}, {"3D", 259200}, {"1H", 3600}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[160];
    snprintf(text, sizeof text, BASE "[commands]\nmax_ttl = 365d\ndefault_ttl = %s\n", cases[i].text);
    wd_config_t *cfg = load_ok(state, text);
    if (cfg->default_ttl_s != cases[i].value)
      fail_msg("default_ttl = %s gave %u", cases[i].text, cfg->default_ttl_s);
    wd_config_free(cfg);
  }
}

static void test_bools_take_the_usual_spellings(void **state) {
  const char *yes[] = {"true", "TRUE", "yes", "on", "1"}, *no[] = {"false", "No", "off", "0"};
  for (size_t i = 0; i < 5; i++) {
    char text[128];
    snprintf(text, sizeof text, BASE "[auth]\nallow_key_password = %s\n", yes[i]);
    wd_config_t *cfg = load_ok(state, text);
    assert_true(cfg->allow_key_password);
    wd_config_free(cfg);
  }
  for (size_t i = 0; i < 4; i++) {
    char text[128];
    snprintf(text, sizeof text, BASE "[auth]\nallow_key_password = %s\n", no[i]);
    wd_config_t *cfg = load_ok(state, text);
    assert_false(cfg->allow_key_password);
    wd_config_free(cfg);
  }
}

/* ----------------------------------------------------------------- errors */

static void test_unknown_key_is_named(void **state) {
  expect_error(state, BASE "[amqp]\nlisten_port = 5672\n", "[amqp] listen_port");
  expect_error(state, BASE "[gateway]\nHostname = x\n", "[gateway] Hostname");
  expect_error(state, BASE "[service backend]\nsecret = 0123456789abcdef-x\npassword = x\n",
               "[service backend] password");
}

static void test_unknown_section_is_named(void **state) {
  expect_error(state, BASE "[storage]\npath = /tmp/x\n", "[storage] path");
  expect_error(state, BASE "[service]\nsecret = 0123456789abcdef-x\n", "[service] secret");
}

static void test_bad_number_is_named(void **state) {
  expect_error(state, BASE "[amqp]\nmax_connections = many\n", "[amqp] max_connections");
  expect_error(state, BASE "[amqp]\nmax_connections = -1\n", "[amqp] max_connections");
  expect_error(state, BASE "[amqp]\nmax_connections = 10x\n", "[amqp] max_connections");
  expect_error(state, BASE "[amqp]\nmax_connections = 0x10\n", "[amqp] max_connections");
  expect_error(state, BASE "[commands]\nqueue_limit = 1.5\n", "[commands] queue_limit");
  expect_error(state, BASE "[commands]\nqueue_limit = 99999999999999999999999\n", "[commands] queue_limit");
  expect_error(state, BASE "[store]\nmax_size = 10T\n", "[store] max_size");
  expect_error(state, BASE "[store]\nmax_size = 10MiB\n", "[store] max_size");
  expect_error(state, BASE "[amqp]\nidle_timeout = 10w\n", "[amqp] idle_timeout");
  expect_error(state, BASE "[amqp]\nidle_timeout = 10ms\n", "[amqp] idle_timeout");
  expect_error(state, BASE "[amqp]\nidle_timeout = 10sb\n", "[amqp] idle_timeout");
  expect_error(state, BASE "[amqp]\nidle_timeout =\n", "[amqp] idle_timeout");
}

static void test_out_of_range_number_is_named(void **state) {
  expect_error(state, BASE "[commands]\nqueue_limit = 0\n", "[commands] queue_limit");
  expect_error(state, BASE "[commands]\nqueue_limit = 100001\n", "[commands] queue_limit");
  expect_error(state, BASE "[commands]\nmax_delivery_count = 0\n", "[commands] max_delivery_count");
  expect_error(state, BASE "[gateway]\nthreads = 65\n", "[gateway] threads");
  expect_error(state, BASE "[store]\nmax_size = 1023K\n", "[store] max_size");
  expect_error(state, BASE "[store]\nmax_size = 16385G\n", "[store] max_size");
  expect_error(state, BASE "[amqp]\nmax_message_size = 1000\n", "[amqp] max_message_size");
  expect_error(state, BASE "[amqp]\nmax_message_size = 65M\n", "[amqp] max_message_size");
  expect_error(state, BASE "[amqp]\nidle_timeout = 0\n", "[amqp] idle_timeout");
  expect_error(state, BASE "[amqp]\nidle_timeout = 2d\n", "[amqp] idle_timeout");
  expect_error(state, BASE "[commands]\nmax_ttl = 366d\n", "[commands] max_ttl");
}

static void test_bad_bool_is_named(void **state) {
  expect_error(state, BASE "[auth]\ndev_mode = maybe\n", "[auth] dev_mode");
  expect_error(state, BASE "[auth]\nallow_key_password = 2\n", "[auth] allow_key_password");
  expect_error(state, BASE "[auth]\ndev_mode =\n", "[auth] dev_mode");
}

static void test_bad_listen_is_named(void **state) {
  expect_error(state, "[amqp]\ntls_listen =\nlisten = localhost\n", "[amqp] listen");
  expect_error(state, "[amqp]\ntls_listen =\nlisten = :5672\n", "[amqp] listen");
  expect_error(state, "[amqp]\ntls_listen =\nlisten = localhost:\n", "[amqp] listen");
  expect_error(state, "[amqp]\ntls_listen =\nlisten = localhost:65536\n", "[amqp] listen");
  expect_error(state, "[amqp]\ntls_listen =\nlisten = localhost:56x2\n", "[amqp] listen");
  expect_error(state, "[amqp]\ntls_listen = 5671\n", "[amqp] tls_listen");
  expect_error(state, BASE "[http]\nlisten = 8080\n", "[http] listen");
  wd_config_t *cfg = load_ok(state, "[amqp]\ntls_listen =\nlisten = localhost:65535\n");
  wd_config_free(cfg);
}

static void test_empty_listen_turns_listener_off(void **state) {
  wd_config_t *cfg = load_ok(state, BASE "[amqp]\nlisten =\n[http]\nlisten =\n");
  assert_string_equal(cfg->amqp_listen, "");
  assert_string_equal(cfg->http_listen, "");
  wd_config_free(cfg);
}

static void test_bad_scope_is_named(void **state) {
  expect_error(state, BASE "[service backend]\nsecret = 0123456789abcdef-x\nscopes = telemetry:read telemetry:write\n",
               "[service backend] scopes");
}

static void test_service_without_secret_or_thumbprint_is_named(void **state) {
  expect_error(state, BASE "[service backend]\nscopes = telemetry:read\n", "[service backend] secret");
}

static void test_service_with_short_secret_is_named(void **state) {
  expect_error(state, BASE "[service backend]\nsecret = 0123456789abcde\n", "[service backend] secret");
  wd_config_t *cfg = load_ok(state, BASE "[service backend]\nsecret = 0123456789abcdef\n");
  assert_string_equal(cfg->services[0].secret, "0123456789abcdef");
  wd_config_free(cfg);
}

static void test_service_with_bad_thumbprint_or_name_is_named(void **state) {
  expect_error(state, BASE "[service backend]\nthumbprint = ABCDEF\n", "[service backend] thumbprint");
  expect_error(state, BASE "[service back/end]\nsecret = 0123456789abcdef-x\n", "[service back/end] secret");
}

static void test_tls_listen_without_certificate_is_named_unless_dev_mode(void **state) {
  expect_error(state, "[amqp]\ntls_listen = 0.0.0.0:5671\n", "[amqp] tls_cert");
  expect_error(state, "[auth]\ndev_mode = false\n[amqp]\ntls_listen = 0.0.0.0:5671\ntls_key = /k.pem\n",
               "[amqp] tls_cert");
  wd_config_t *cfg = load_ok(state, "[auth]\ndev_mode = on\n[amqp]\ntls_listen = 0.0.0.0:5671\n");
  wd_config_free(cfg);
}

static void test_half_a_certificate_pair_is_named(void **state) {
  expect_error(state, BASE "[amqp]\ntls_key = /k.pem\n", "[amqp] tls_cert");
  expect_error(state, BASE "[amqp]\ntls_cert = /c.pem\n", "[amqp] tls_key");
  expect_error(state, BASE "[http]\ntls_cert = /c.pem\n", "[http] tls_key");
  expect_error(state, BASE "[http]\ntls_key = /k.pem\n", "[http] tls_cert");
}

static void test_inconsistent_values_are_named(void **state) {
  expect_error(state, BASE "[amqp]\nidle_timeout = 10m\nmax_idle_timeout = 5m\n", "[amqp] max_idle_timeout");
  expect_error(state, BASE "[commands]\ndefault_ttl = 2d\nmax_ttl = 1d\n", "[commands] default_ttl");
  expect_error(state, BASE "[gateway]\nlog_level = chatty\n", "[gateway] log_level");
  expect_error(state, BASE "[gateway]\nhostname =\n", "[gateway] hostname");
  expect_error(state, BASE "[store]\npath =\n", "[store] path");
}

static void test_first_error_wins(void **state) {
  expect_error(state, BASE "[amqp]\nmax_connections = zero\n[auth]\ndev_mode = maybe\n", "[amqp] max_connections");
}

static void test_line_that_is_not_ini_is_reported(void **state) {
  char err[512] = "";
  wd_config_t *cfg = NULL;
  assert_int_equal(wd_config_load(write_file(state, BASE "[amqp\nlisten = x:1\n"), &cfg, err, sizeof err),
                   WD_ERR_INVALID);
  assert_null(cfg);
  assert_non_null(strstr(err, "line 3"));
}

static void test_missing_file_is_an_io_error(void **state) {
  fixture_t *f = *state;
  char path[192], err[512] = "";
  snprintf(path, sizeof path, "%s/does-not-exist.ini", f->dir);
  wd_config_t *cfg = NULL;
  assert_int_equal(wd_config_load(path, &cfg, err, sizeof err), WD_ERR_IO);
  assert_null(cfg);
  assert_non_null(strstr(err, "does-not-exist.ini"));
}

static void test_error_message_fits_a_small_buffer(void **state) {
  char err[16];
  memset(err, 'x', sizeof err);
  wd_config_t *cfg = NULL;
  assert_int_equal(wd_config_load(write_file(state, BASE "[amqp]\nmax_connections = many\n"), &cfg, err, sizeof err),
                   WD_ERR_INVALID);
  assert_int_equal(strlen(err), sizeof err - 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_without_a_file_are_for_development),
      cmocka_unit_test_setup_teardown(test_file_leaves_unset_keys_at_defaults_and_dev_mode_off, setup, teardown),
      cmocka_unit_test_setup_teardown(test_full_file_sets_every_key, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dev_mode_allows_tls_listen_without_certificate, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sizes_take_k_m_g_units, setup, teardown),
      cmocka_unit_test_setup_teardown(test_durations_take_s_m_h_d_units, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bools_take_the_usual_spellings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_key_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_section_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_number_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_out_of_range_number_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_bool_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_listen_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_empty_listen_turns_listener_off, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_scope_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_service_without_secret_or_thumbprint_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_service_with_short_secret_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_service_with_bad_thumbprint_or_name_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls_listen_without_certificate_is_named_unless_dev_mode, setup, teardown),
      cmocka_unit_test_setup_teardown(test_half_a_certificate_pair_is_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inconsistent_values_are_named, setup, teardown),
      cmocka_unit_test_setup_teardown(test_first_error_wins, setup, teardown),
      cmocka_unit_test_setup_teardown(test_line_that_is_not_ini_is_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_file_is_an_io_error, setup, teardown),
      cmocka_unit_test_setup_teardown(test_error_message_fits_a_small_buffer, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for gateway/base/scopes.c and the log level parser. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "gateway/base/log.h"
#include "gateway/base/scopes.h"

static void test_scopes_parse_every_contract_scope(void **state) {
  (void)state;
  unsigned mask = 0;
  const char *bad = NULL;
  assert_true(wd_scopes_parse("telemetry:read commands:send notifications:send feedback:read inquiries:read "
                              "registry:read registry:write",
                              &mask, &bad));
  assert_int_equal(mask, WD_SCOPE_ALL);
  assert_true(wd_scopes_parse("telemetry:read", &mask, &bad));
  assert_int_equal(mask, WD_SCOPE_TELEMETRY_READ);
  assert_true(wd_scopes_parse("registry:write", &mask, &bad));
  assert_int_equal(mask, WD_SCOPE_REGISTRY_WRITE);
}

static void test_scopes_parse_tolerates_extra_whitespace_and_repeats(void **state) {
  (void)state;
  unsigned mask = 0;
  assert_true(wd_scopes_parse("  commands:send\t\tfeedback:read  commands:send ", &mask, NULL));
  assert_int_equal(mask, WD_SCOPE_COMMANDS_SEND | WD_SCOPE_FEEDBACK_READ);
}

static void test_scopes_parse_empty_is_no_scope(void **state) {
  (void)state;
  unsigned mask = 123;
  assert_true(wd_scopes_parse("", &mask, NULL));
  assert_int_equal(mask, 0);
  mask = 123;
  assert_true(wd_scopes_parse("   ", &mask, NULL));
  assert_int_equal(mask, 0);
}

static void test_scopes_parse_points_at_the_unknown_name(void **state) {
  (void)state;
  unsigned mask = 0;
  const char *bad = NULL;
  const char *s = "telemetry:read telemetry:write commands:send";
  assert_false(wd_scopes_parse(s, &mask, &bad));
  assert_ptr_equal(bad, s + strlen("telemetry:read "));
  /* Prefixes and case variants are not scopes. */
  assert_false(wd_scopes_parse("telemetry", &mask, &bad));
  assert_false(wd_scopes_parse("telemetry:readx", &mask, &bad));
  assert_false(wd_scopes_parse("Telemetry:Read", &mask, &bad));
  assert_false(wd_scopes_parse("telemetry:read,commands:send", &mask, &bad));
}

static void test_log_level_parses_known_names_only(void **state) {
  (void)state;
  wd_log_level_t l;
  assert_true(wd_log_parse_level("debug", &l));
  assert_int_equal(l, WD_LOG_DEBUG);
  assert_true(wd_log_parse_level("info", &l));
  assert_int_equal(l, WD_LOG_INFO);
  assert_true(wd_log_parse_level("warning", &l));
  assert_int_equal(l, WD_LOG_WARNING);
  assert_true(wd_log_parse_level("error", &l));
  assert_int_equal(l, WD_LOG_ERROR);
  assert_false(wd_log_parse_level("verbose", &l));
  assert_false(wd_log_parse_level("", &l));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_scopes_parse_every_contract_scope),
      cmocka_unit_test(test_scopes_parse_tolerates_extra_whitespace_and_repeats),
      cmocka_unit_test(test_scopes_parse_empty_is_no_scope),
      cmocka_unit_test(test_scopes_parse_points_at_the_unknown_name),
      cmocka_unit_test(test_log_level_parses_known_names_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

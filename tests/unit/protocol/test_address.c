/* Unit tests for protocol/address.c: every row of CONTRACT.md's AMQP address
 * tables, for devices and for services, allowed and refused. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "protocol/address.h"

static const wd_principal_t device_d = {.is_device = true, .id = "D", .scopes = 0};
static const wd_principal_t device_scoped = {.is_device = true, .id = "dev-1", .scopes = WD_SCOPE_ALL};

static wd_principal_t service(unsigned scopes) {
  return (wd_principal_t){.is_device = false, .id = "backend", .scopes = scopes};
}

/* Authorizes and checks the result; returns the address for further checks. */
static wd_address_t expect_ok(const wd_principal_t *who, wd_link_dir_t dir, const char *address,
                              wd_addr_kind_t kind, const char *param) {
  wd_address_t out;
  const char *why = NULL;
  int rc = wd_address_authorize(who, dir, address, &out, &why);
  if (rc != WD_OK)
    fail_msg("%s %s '%s': expected WD_OK, got %d (%s)", who->is_device ? "device" : "service",
             dir == WD_LINK_INBOUND ? "sending to" : "receiving from", address ? address : "(null)", rc,
             why ? why : "");
  assert_int_equal(out.kind, kind);
  assert_string_equal(out.param, param);
  return out;
}

static void expect_rc(const wd_principal_t *who, wd_link_dir_t dir, const char *address, int expect) {
  wd_address_t out;
  const char *why = NULL;
  int rc = wd_address_authorize(who, dir, address, &out, &why);
  if (rc != expect)
    fail_msg("%s %s '%s': expected %d, got %d", who->is_device ? "device" : "service",
             dir == WD_LINK_INBOUND ? "sending to" : "receiving from", address ? address : "(null)", expect, rc);
  assert_non_null(why);
  assert_true(why[0] != '\0'); /* a refusal explains itself */
}

/* ================================================================ devices */

static void test_device_sends_telemetry(void **state) {
  (void)state;
  wd_address_t a = expect_ok(&device_d, WD_LINK_INBOUND, "telemetry", WD_ADDR_TELEMETRY, "");
  assert_false(a.needs_peer_check);
}

static void test_device_sends_telemetry_through_its_own_alias(void **state) {
  (void)state;
  expect_ok(&device_d, WD_LINK_INBOUND, "devices/D/telemetry", WD_ADDR_TELEMETRY, "");
}

static void test_device_cannot_send_telemetry_as_another_device(void **state) {
  (void)state;
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/E/telemetry", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/d/telemetry", WD_ERR_DENIED); /* ids are case-sensitive */
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/DD/telemetry", WD_ERR_DENIED);
}

static void test_device_sends_inquiries_and_responses(void **state) {
  (void)state;
  expect_ok(&device_d, WD_LINK_INBOUND, "inquiries", WD_ADDR_INQUIRIES, "");
  expect_ok(&device_d, WD_LINK_INBOUND, "responses", WD_ADDR_RESPONSES, "");
}

static void test_device_sending_to_a_peer_needs_the_registry(void **state) {
  (void)state;
  wd_address_t a = expect_ok(&device_d, WD_LINK_INBOUND, "devices/E/commands", WD_ADDR_DEVICE_COMMANDS, "E");
  assert_true(a.needs_peer_check);
}

static void test_device_cannot_send_to_its_own_command_queue(void **state) {
  (void)state;
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/D/commands", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "commands", WD_ERR_DENIED);
}

static void test_device_receives_its_commands(void **state) {
  (void)state;
  expect_ok(&device_d, WD_LINK_OUTBOUND, "commands", WD_ADDR_EGRESS, "");
  expect_ok(&device_d, WD_LINK_OUTBOUND, "devices/D/commands", WD_ADDR_EGRESS, "");
}

static void test_device_cannot_receive_another_devices_commands(void **state) {
  (void)state;
  expect_rc(&device_d, WD_LINK_OUTBOUND, "devices/E/commands", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_OUTBOUND, "devices/d/commands", WD_ERR_DENIED);
}

static void test_device_cannot_receive_telemetry(void **state) {
  (void)state;
  expect_rc(&device_d, WD_LINK_OUTBOUND, "telemetry", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_OUTBOUND, "telemetry/$default", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_OUTBOUND, "devices/D/telemetry", WD_ERR_DENIED);
}

static void test_device_cannot_use_service_addresses(void **state) {
  (void)state;
  /* Scopes mean nothing for a device, even if a caller filled them in. */
  const wd_principal_t *ds[] = {&device_d, &device_scoped};
  for (size_t i = 0; i < 2; i++) {
    const wd_principal_t *d = ds[i];
    expect_rc(d, WD_LINK_OUTBOUND, "inquiries", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_OUTBOUND, "responses", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_OUTBOUND, "feedback", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_OUTBOUND, "deadletter", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_INBOUND, "devices/E/notifications", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_INBOUND, "groups/G/notifications", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_INBOUND, "telemetry/G", WD_ERR_DENIED);
    expect_rc(d, WD_LINK_INBOUND, "feedback", WD_ERR_DENIED);
  }
}

static void test_device_unknown_address_is_refused(void **state) {
  (void)state;
  const char *unknown[] = {"nonsense", "devices", "devices/E", "devices/E/commands/x", "/telemetry", "telemetry/"};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    wd_address_t out;
    const char *why = NULL;
    int rc = wd_address_authorize(&device_d, WD_LINK_INBOUND, unknown[i], &out, &why);
    if (rc != WD_ERR_DENIED && rc != WD_ERR_NOT_FOUND) fail_msg("'%s' gave %d", unknown[i], rc);
    rc = wd_address_authorize(&device_d, WD_LINK_OUTBOUND, unknown[i], &out, &why);
    if (rc != WD_ERR_DENIED && rc != WD_ERR_NOT_FOUND) fail_msg("'%s' gave %d", unknown[i], rc);
  }
}

static void test_device_peer_address_with_bad_id_is_refused(void **state) {
  (void)state;
  char long_id[WD_ID_MAX + 2], addr[WD_ID_MAX + 32];
  memset(long_id, 'e', WD_ID_MAX + 1);
  long_id[WD_ID_MAX + 1] = '\0';
  snprintf(addr, sizeof addr, "devices/%s/commands", long_id);
  expect_rc(&device_d, WD_LINK_INBOUND, addr, WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/a b/commands", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "devices//commands", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/$x/commands", WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "devices/a/b/commands", WD_ERR_DENIED);

  /* The longest valid id is fine. */
  long_id[WD_ID_MAX] = '\0';
  snprintf(addr, sizeof addr, "devices/%s/commands", long_id);
  expect_ok(&device_d, WD_LINK_INBOUND, addr, WD_ADDR_DEVICE_COMMANDS, long_id);
}

static void test_device_cannot_use_the_anonymous_relay(void **state) {
  (void)state;
  expect_rc(&device_d, WD_LINK_INBOUND, NULL, WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_INBOUND, "", WD_ERR_DENIED);
  expect_rc(&device_scoped, WD_LINK_INBOUND, NULL, WD_ERR_DENIED);
  expect_rc(&device_d, WD_LINK_OUTBOUND, NULL, WD_ERR_DENIED);
}

/* =============================================================== services */

static void test_service_reads_telemetry_in_the_default_group(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_TELEMETRY_READ);
  expect_ok(&s, WD_LINK_OUTBOUND, "telemetry", WD_ADDR_TELEMETRY, WD_DEFAULT_GROUP);
  expect_ok(&s, WD_LINK_OUTBOUND, "telemetry/$default", WD_ADDR_TELEMETRY, "$default");
}

static void test_service_reads_telemetry_in_a_named_group(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_TELEMETRY_READ);
  expect_ok(&s, WD_LINK_OUTBOUND, "telemetry/analytics", WD_ADDR_TELEMETRY, "analytics");
  expect_ok(&s, WD_LINK_OUTBOUND, "telemetry/a.b_c:d-1", WD_ADDR_TELEMETRY, "a.b_c:d-1");
  char g[WD_ID_MAX + 1], addr[WD_ID_MAX + 16];
  memset(g, 'g', WD_ID_MAX);
  g[WD_ID_MAX] = '\0';
  snprintf(addr, sizeof addr, "telemetry/%s", g);
  expect_ok(&s, WD_LINK_OUTBOUND, addr, WD_ADDR_TELEMETRY, g);
}

static void test_service_telemetry_group_with_bad_name_does_not_exist(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/$", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/a/b", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/a b", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/$$x", WD_ERR_NOT_FOUND);
  char g[WD_ID_MAX + 2], addr[WD_ID_MAX + 16];
  memset(g, 'g', WD_ID_MAX + 1);
  g[WD_ID_MAX + 1] = '\0';
  snprintf(addr, sizeof addr, "telemetry/%s", g);
  expect_rc(&s, WD_LINK_OUTBOUND, addr, WD_ERR_NOT_FOUND);
}

static void test_service_without_telemetry_read_cannot_read_telemetry(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL & ~WD_SCOPE_TELEMETRY_READ);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry", WD_ERR_DENIED);
  expect_rc(&s, WD_LINK_OUTBOUND, "telemetry/analytics", WD_ERR_DENIED);
}

static void test_service_reads_inquiries_with_inquiries_read(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_INQUIRIES_READ);
  expect_ok(&s, WD_LINK_OUTBOUND, "inquiries", WD_ADDR_INQUIRIES, "");
  wd_principal_t t = service(WD_SCOPE_ALL & ~WD_SCOPE_INQUIRIES_READ);
  expect_rc(&t, WD_LINK_OUTBOUND, "inquiries", WD_ERR_DENIED);
}

static void test_service_sends_commands_with_commands_send(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_COMMANDS_SEND);
  wd_address_t a = expect_ok(&s, WD_LINK_INBOUND, "devices/D/commands", WD_ADDR_DEVICE_COMMANDS, "D");
  assert_false(a.needs_peer_check);
  wd_principal_t t = service(WD_SCOPE_ALL & ~WD_SCOPE_COMMANDS_SEND);
  expect_rc(&t, WD_LINK_INBOUND, "devices/D/commands", WD_ERR_DENIED);
}

static void test_service_sends_device_notifications_with_notifications_send(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_NOTIFICATIONS_SEND);
  expect_ok(&s, WD_LINK_INBOUND, "devices/D/notifications", WD_ADDR_DEVICE_NOTIFICATIONS, "D");
  wd_principal_t t = service(WD_SCOPE_ALL & ~WD_SCOPE_NOTIFICATIONS_SEND);
  expect_rc(&t, WD_LINK_INBOUND, "devices/D/notifications", WD_ERR_DENIED);
}

static void test_service_sends_group_notifications_with_notifications_send(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_NOTIFICATIONS_SEND);
  expect_ok(&s, WD_LINK_INBOUND, "groups/floor-3/notifications", WD_ADDR_GROUP_NOTIFICATIONS, "floor-3");
  wd_principal_t t = service(WD_SCOPE_COMMANDS_SEND);
  expect_rc(&t, WD_LINK_INBOUND, "groups/floor-3/notifications", WD_ERR_DENIED);
}

static void test_service_reads_feedback_and_deadletter_with_feedback_read(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_FEEDBACK_READ);
  expect_ok(&s, WD_LINK_OUTBOUND, "feedback", WD_ADDR_FEEDBACK, "");
  expect_ok(&s, WD_LINK_OUTBOUND, "deadletter", WD_ADDR_DEADLETTER, "");
  wd_principal_t t = service(WD_SCOPE_ALL & ~WD_SCOPE_FEEDBACK_READ);
  expect_rc(&t, WD_LINK_OUTBOUND, "feedback", WD_ERR_DENIED);
  expect_rc(&t, WD_LINK_OUTBOUND, "deadletter", WD_ERR_DENIED);
}

static void test_service_reads_responses_with_commands_send(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_COMMANDS_SEND);
  expect_ok(&s, WD_LINK_OUTBOUND, "responses", WD_ADDR_RESPONSES, "");
  expect_ok(&s, WD_LINK_OUTBOUND, "responses/app-7", WD_ADDR_RESPONSES, "app-7");
  wd_principal_t t = service(WD_SCOPE_ALL & ~WD_SCOPE_COMMANDS_SEND);
  expect_rc(&t, WD_LINK_OUTBOUND, "responses", WD_ERR_DENIED);
  expect_rc(&t, WD_LINK_OUTBOUND, "responses/app-7", WD_ERR_DENIED);
  expect_rc(&s, WD_LINK_OUTBOUND, "responses/a/b", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "responses/", WD_ERR_NOT_FOUND);
}

static void test_service_with_no_scope_is_refused_everywhere(void **state) {
  (void)state;
  wd_principal_t s = service(0);
  const char *out[] = {"telemetry", "telemetry/g", "inquiries", "feedback", "deadletter", "responses", "responses/n"};
  for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) expect_rc(&s, WD_LINK_OUTBOUND, out[i], WD_ERR_DENIED);
  const char *in[] = {"devices/D/commands", "devices/D/notifications", "groups/G/notifications"};
  for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) expect_rc(&s, WD_LINK_INBOUND, in[i], WD_ERR_DENIED);
  expect_rc(&s, WD_LINK_INBOUND, NULL, WD_ERR_DENIED);
}

static void test_service_cannot_send_to_addresses_it_reads(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  const char *read_only[] = {"telemetry", "telemetry/g", "inquiries", "feedback", "deadletter", "responses", "responses/n"};
  for (size_t i = 0; i < sizeof read_only / sizeof read_only[0]; i++)
    expect_rc(&s, WD_LINK_INBOUND, read_only[i], WD_ERR_DENIED);
}

static void test_service_cannot_receive_from_addresses_it_sends_to(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  expect_rc(&s, WD_LINK_OUTBOUND, "devices/D/commands", WD_ERR_DENIED);
  expect_rc(&s, WD_LINK_OUTBOUND, "devices/D/notifications", WD_ERR_DENIED);
  expect_rc(&s, WD_LINK_OUTBOUND, "groups/G/notifications", WD_ERR_DENIED);
}

static void test_service_device_only_addresses_do_not_exist(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  expect_rc(&s, WD_LINK_OUTBOUND, "commands", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_INBOUND, "commands", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_OUTBOUND, "devices/D/telemetry", WD_ERR_NOT_FOUND);
}

static void test_service_unknown_address_is_not_found(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  const char *unknown[] = {"nonsense", "Telemetry", "telemetry ", "devices", "devices/D", "devices/D/commands/x",
                           "devices/D/inquiries", "groups/G/commands", "groups/G", "/feedback", "feedback/x"};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    expect_rc(&s, WD_LINK_OUTBOUND, unknown[i], WD_ERR_NOT_FOUND);
    expect_rc(&s, WD_LINK_INBOUND, unknown[i], WD_ERR_NOT_FOUND);
  }
}

static void test_service_bad_device_or_group_id_does_not_exist(void **state) {
  (void)state;
  wd_principal_t s = service(WD_SCOPE_ALL);
  char long_id[WD_ID_MAX + 2], addr[WD_ID_MAX + 32];
  memset(long_id, 'x', WD_ID_MAX + 1);
  long_id[WD_ID_MAX + 1] = '\0';
  snprintf(addr, sizeof addr, "devices/%s/commands", long_id);
  expect_rc(&s, WD_LINK_INBOUND, addr, WD_ERR_NOT_FOUND);
  snprintf(addr, sizeof addr, "groups/%s/notifications", long_id);
  expect_rc(&s, WD_LINK_INBOUND, addr, WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_INBOUND, "devices/a b/commands", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_INBOUND, "devices//commands", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_INBOUND, "devices/$default/commands", WD_ERR_NOT_FOUND);
  expect_rc(&s, WD_LINK_INBOUND, "groups/g%20/notifications", WD_ERR_NOT_FOUND);

  long_id[WD_ID_MAX] = '\0';
  snprintf(addr, sizeof addr, "devices/%s/commands", long_id);
  expect_ok(&s, WD_LINK_INBOUND, addr, WD_ADDR_DEVICE_COMMANDS, long_id);
}

static void test_service_uses_anonymous_relay_with_a_send_scope(void **state) {
  (void)state;
  wd_principal_t c = service(WD_SCOPE_COMMANDS_SEND);
  expect_ok(&c, WD_LINK_INBOUND, NULL, WD_ADDR_ANONYMOUS, "");
  expect_ok(&c, WD_LINK_INBOUND, "", WD_ADDR_ANONYMOUS, "");
  wd_principal_t n = service(WD_SCOPE_NOTIFICATIONS_SEND);
  expect_ok(&n, WD_LINK_INBOUND, NULL, WD_ADDR_ANONYMOUS, "");
}

static void test_service_anonymous_relay_refused_without_send_scope_or_for_receiving(void **state) {
  (void)state;
  wd_principal_t r = service(WD_SCOPE_ALL & ~(WD_SCOPE_COMMANDS_SEND | WD_SCOPE_NOTIFICATIONS_SEND));
  expect_rc(&r, WD_LINK_INBOUND, NULL, WD_ERR_DENIED);
  wd_principal_t all = service(WD_SCOPE_ALL);
  expect_rc(&all, WD_LINK_OUTBOUND, NULL, WD_ERR_DENIED);
  expect_rc(&all, WD_LINK_OUTBOUND, "", WD_ERR_DENIED);
}

static void test_authorize_clears_previous_output(void **state) {
  (void)state;
  wd_address_t out;
  memset(&out, 0x5a, sizeof out);
  const char *why = NULL;
  assert_int_equal(wd_address_authorize(&device_d, WD_LINK_INBOUND, "telemetry", &out, &why), WD_OK);
  assert_string_equal(out.param, "");
  assert_false(out.needs_peer_check);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_device_sends_telemetry),
      cmocka_unit_test(test_device_sends_telemetry_through_its_own_alias),
      cmocka_unit_test(test_device_cannot_send_telemetry_as_another_device),
      cmocka_unit_test(test_device_sends_inquiries_and_responses),
      cmocka_unit_test(test_device_sending_to_a_peer_needs_the_registry),
      cmocka_unit_test(test_device_cannot_send_to_its_own_command_queue),
      cmocka_unit_test(test_device_receives_its_commands),
      cmocka_unit_test(test_device_cannot_receive_another_devices_commands),
      cmocka_unit_test(test_device_cannot_receive_telemetry),
      cmocka_unit_test(test_device_cannot_use_service_addresses),
      cmocka_unit_test(test_device_unknown_address_is_refused),
      cmocka_unit_test(test_device_peer_address_with_bad_id_is_refused),
      cmocka_unit_test(test_device_cannot_use_the_anonymous_relay),
      cmocka_unit_test(test_service_reads_telemetry_in_the_default_group),
      cmocka_unit_test(test_service_reads_telemetry_in_a_named_group),
      cmocka_unit_test(test_service_telemetry_group_with_bad_name_does_not_exist),
      cmocka_unit_test(test_service_without_telemetry_read_cannot_read_telemetry),
      cmocka_unit_test(test_service_reads_inquiries_with_inquiries_read),
      cmocka_unit_test(test_service_sends_commands_with_commands_send),
      cmocka_unit_test(test_service_sends_device_notifications_with_notifications_send),
      cmocka_unit_test(test_service_sends_group_notifications_with_notifications_send),
      cmocka_unit_test(test_service_reads_feedback_and_deadletter_with_feedback_read),
      cmocka_unit_test(test_service_reads_responses_with_commands_send),
      cmocka_unit_test(test_service_with_no_scope_is_refused_everywhere),
      cmocka_unit_test(test_service_cannot_send_to_addresses_it_reads),
      cmocka_unit_test(test_service_cannot_receive_from_addresses_it_sends_to),
      cmocka_unit_test(test_service_device_only_addresses_do_not_exist),
      cmocka_unit_test(test_service_unknown_address_is_not_found),
      cmocka_unit_test(test_service_bad_device_or_group_id_does_not_exist),
      cmocka_unit_test(test_service_uses_anonymous_relay_with_a_send_scope),
      cmocka_unit_test(test_service_anonymous_relay_refused_without_send_scope_or_for_receiving),
      cmocka_unit_test(test_authorize_clears_previous_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

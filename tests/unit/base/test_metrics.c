/* Unit tests for gateway/base/metrics.c: counters render in Prometheus text,
 * and commit durations land in the right cumulative buckets. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/metrics.h"

static char *render(void) {
  char *buf = NULL;
  size_t len = 0, cap = 0;
  assert_int_equal(wd_metrics_render(&buf, &len, &cap), WD_OK);
  assert_int_equal(strlen(buf), len);
  return buf;
}

static void test_commit_durations_fill_cumulative_buckets(void **state) {
  (void)state;
  memset(&wd_metrics, 0, sizeof wd_metrics);
  wd_metrics_commit(100);     /* <= 250 us */
  wd_metrics_commit(800);     /* <= 1 ms */
  wd_metrics_commit(3000000); /* over every bound */
  char *text = render();
  assert_non_null(strstr(text, "warden_store_commit_seconds_bucket{le=\"0.00025\"} 1\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_bucket{le=\"0.0005\"} 1\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_bucket{le=\"0.001\"} 2\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_bucket{le=\"1\"} 2\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_bucket{le=\"+Inf\"} 3\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_count 3\n"));
  assert_non_null(strstr(text, "warden_store_commit_seconds_sum 3.000900\n"));
  free(text);
}

static void test_counters_render_with_their_labels(void **state) {
  (void)state;
  memset(&wd_metrics, 0, sizeof wd_metrics);
  wd_metric_add(&wd_metrics.messages_in[WD_MA_TELEMETRY], 42);
  wd_metric_add(&wd_metrics.messages_out[WD_MA_FEEDBACK], 7);
  wd_metric_add(&wd_metrics.auth_failures, 3);
  atomic_store(&wd_metrics.connections_device, 5);
  wd_metric_add(&wd_metrics.connections_accepted, 9);
  wd_metric_add(&wd_metrics.connections_closed, 4);
  wd_metric_add(&wd_metrics.frames_refused, 2);
  atomic_store(&wd_metrics.queued, -0); /* a gauge may be zero */
  char *text = render();
  assert_non_null(strstr(text, "warden_messages_in_total{address=\"telemetry\"} 42\n"));
  assert_non_null(strstr(text, "warden_messages_out_total{address=\"feedback\"} 7\n"));
  assert_non_null(strstr(text, "warden_messages_in_total{address=\"commands\"} 0\n"));
  assert_non_null(strstr(text, "warden_auth_failures_total 3\n"));
  assert_non_null(strstr(text, "warden_connections{kind=\"device\"} 5\n"));
  assert_non_null(strstr(text, "warden_connections_accepted_total 9\n"));
  assert_non_null(strstr(text, "warden_connections_closed_total 4\n"));
  assert_non_null(strstr(text, "warden_frames_refused_total 2\n"));
  assert_non_null(strstr(text, "# TYPE warden_store_commit_seconds histogram\n"));
  free(text);
}

static void test_printf_grows_the_buffer(void **state) {
  (void)state;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (int i = 0; i < 2000; i++) assert_int_equal(wd_metrics_printf(&buf, &len, &cap, "line %d\n", i), WD_OK);
  assert_true(cap > len);
  assert_non_null(strstr(buf, "line 1999\n"));
  assert_int_equal(strlen(buf), len);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commit_durations_fill_cumulative_buckets),
      cmocka_unit_test(test_counters_render_with_their_labels),
      cmocka_unit_test(test_printf_grows_the_buffer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

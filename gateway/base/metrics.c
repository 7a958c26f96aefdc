#include "gateway/base/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "gateway/base/err.h"

wd_metrics_t wd_metrics;

/* Upper bounds of the commit histogram, in microseconds. */
static const uint64_t commit_bounds_us[WD_COMMIT_BUCKETS - 1] = {250,   500,    1000,   2000,   5000,
                                                                   10000, 25000,  50000,  100000, 250000,
                                                                   1000000};

static const char *const address_names[WD_MA_COUNT] = {"telemetry", "inquiries", "responses", "commands",
                                                        "notifications", "feedback", "deadletter"};

void wd_metrics_commit(uint64_t us) {
  size_t i = 0;
  while (i < WD_COMMIT_BUCKETS - 1 && us > commit_bounds_us[i]) i++;
  wd_metric_add(&wd_metrics.commit_buckets[i], 1);
  wd_metric_add(&wd_metrics.commit_count, 1);
  wd_metric_add(&wd_metrics.commit_sum_us, us);
}

int wd_metrics_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return WD_ERR_INVALID;
    if (*buf && (size_t)n < *cap - *len) {
      *len += (size_t)n;
      return WD_OK;
    }
    size_t want = *cap ? *cap * 2 : 4096;
    while (want < *len + (size_t)n + 1) want *= 2;
    char *nb = realloc(*buf, want);
    if (!nb) return WD_ERR_NOMEM;
    *buf = nb;
    *cap = want;
  }
}

#define LOAD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))

int wd_metrics_render(char **b, size_t *l, size_t *c) {
  wd_metrics_t *m = &wd_metrics;
  int rc = wd_metrics_printf(b, l, c,
                             "# HELP warden_connections Live authenticated AMQP connections.\n"
                             "# TYPE warden_connections gauge\n"
                             "warden_connections{kind=\"device\"} %lld\n"
                             "warden_connections{kind=\"service\"} %lld\n",
                             (long long)atomic_load(&m->connections_device),
                             (long long)atomic_load(&m->connections_service));
  if (rc == WD_OK)
    rc = wd_metrics_printf(b, l, c,
                           "# HELP warden_connections_accepted_total AMQP connections accepted, before authentication.\n"
                           "# TYPE warden_connections_accepted_total counter\n"
                           "warden_connections_accepted_total %llu\n"
                           "# HELP warden_connections_closed_total AMQP connections ended, for any reason.\n"
                           "# TYPE warden_connections_closed_total counter\n"
                           "warden_connections_closed_total %llu\n"
                           "# HELP warden_frames_refused_total AMQP connections ended for a frame warden does not pass on.\n"
                           "# TYPE warden_frames_refused_total counter\n"
                           "warden_frames_refused_total %llu\n",
                           LOAD(m->connections_accepted), LOAD(m->connections_closed), LOAD(m->frames_refused));
  if (rc == WD_OK)
    rc = wd_metrics_printf(b, l, c,
                           "# HELP warden_messages_in_total Messages accepted, by address.\n"
                           "# TYPE warden_messages_in_total counter\n");
  for (int i = 0; i < WD_MA_COUNT && rc == WD_OK; i++)
    rc = wd_metrics_printf(b, l, c, "warden_messages_in_total{address=\"%s\"} %llu\n", address_names[i],
                           LOAD(m->messages_in[i]));
  if (rc == WD_OK)
    rc = wd_metrics_printf(b, l, c,
                           "# HELP warden_messages_out_total Messages delivered, by address.\n"
                           "# TYPE warden_messages_out_total counter\n");
  for (int i = 0; i < WD_MA_COUNT && rc == WD_OK; i++)
    rc = wd_metrics_printf(b, l, c, "warden_messages_out_total{address=\"%s\"} %llu\n", address_names[i],
                           LOAD(m->messages_out[i]));
  if (rc == WD_OK)
    rc = wd_metrics_printf(
        b, l, c,
        "# HELP warden_auth_failures_total Failed AMQP authentications.\n"
        "# TYPE warden_auth_failures_total counter\nwarden_auth_failures_total %llu\n"
        "# HELP warden_expirations_total Queued messages that expired.\n"
        "# TYPE warden_expirations_total counter\nwarden_expirations_total %llu\n"
        "# HELP warden_dead_letters_total Messages moved to the dead-letter log.\n"
        "# TYPE warden_dead_letters_total counter\nwarden_dead_letters_total %llu\n"
        "# HELP warden_queued_messages Messages waiting in device queues.\n"
        "# TYPE warden_queued_messages gauge\nwarden_queued_messages %lld\n"
        "# HELP warden_http_requests_total REST requests answered.\n"
        "# TYPE warden_http_requests_total counter\nwarden_http_requests_total %llu\n"
        "# HELP warden_http_errors_total REST requests answered with a 5xx status.\n"
        "# TYPE warden_http_errors_total counter\nwarden_http_errors_total %llu\n"
        "# HELP warden_store_commit_seconds Duration of store commits (group commits).\n"
        "# TYPE warden_store_commit_seconds histogram\n",
        LOAD(m->auth_failures), LOAD(m->expirations), LOAD(m->dead_letters), (long long)atomic_load(&m->queued),
        LOAD(m->http_requests), LOAD(m->http_errors));
  unsigned long long cumulative = 0;
  for (int i = 0; i < WD_COMMIT_BUCKETS && rc == WD_OK; i++) {
    cumulative += LOAD(m->commit_buckets[i]);
    if (i < WD_COMMIT_BUCKETS - 1)
      rc = wd_metrics_printf(b, l, c, "warden_store_commit_seconds_bucket{le=\"%g\"} %llu\n",
                             (double)commit_bounds_us[i] / 1e6, cumulative);
    else
      rc = wd_metrics_printf(b, l, c, "warden_store_commit_seconds_bucket{le=\"+Inf\"} %llu\n", cumulative);
  }
  if (rc == WD_OK)
    rc = wd_metrics_printf(b, l, c, "warden_store_commit_seconds_sum %.6f\nwarden_store_commit_seconds_count %llu\n",
                           (double)LOAD(m->commit_sum_us) / 1e6, LOAD(m->commit_count));
  return rc;
}

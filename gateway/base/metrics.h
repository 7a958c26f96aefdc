#ifndef WD_BASE_METRICS_H
#define WD_BASE_METRICS_H

/* Process-wide counters for GET /metrics. Each is incremented where its event
 * is decided; all are atomics, so any thread may count. */

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* AMQP addresses as metric labels. */
typedef enum {
  WD_MA_TELEMETRY,
  WD_MA_INQUIRIES,
  WD_MA_RESPONSES,
  WD_MA_COMMANDS,
  WD_MA_NOTIFICATIONS,
  WD_MA_FEEDBACK,
  WD_MA_DEADLETTER,
  WD_MA_COUNT
} wd_metric_address_t;

#define WD_COMMIT_BUCKETS 12

typedef struct {
  _Atomic int64_t connections_device, connections_service; /* gauges */
  _Atomic uint64_t connections_accepted, connections_closed; /* every transport, authenticated or not */
  _Atomic uint64_t frames_refused; /* connections ended by the frame guard */
  _Atomic uint64_t messages_in[WD_MA_COUNT];  /* accepted from peers and REST, by address */
  _Atomic uint64_t messages_out[WD_MA_COUNT]; /* delivered to peers, by address */
  _Atomic uint64_t auth_failures;
  _Atomic uint64_t expirations;   /* queued messages that expired */
  _Atomic uint64_t dead_letters;  /* messages moved to the dead-letter log, expired included */
  _Atomic int64_t queued;         /* messages in device queues (gauge) */
  _Atomic uint64_t commit_buckets[WD_COMMIT_BUCKETS]; /* cumulative counts per upper bound */
  _Atomic uint64_t commit_count, commit_sum_us;
  _Atomic uint64_t http_requests, http_errors; /* answered; of them 5xx */
} wd_metrics_t;

extern wd_metrics_t wd_metrics;

static inline void wd_metric_add(_Atomic uint64_t *c, uint64_t n) { atomic_fetch_add_explicit(c, n, memory_order_relaxed); }

/* Records one store commit's duration. */
void wd_metrics_commit(uint64_t us);

/* Appends the Prometheus text exposition of every counter to *buf (grown with
 * realloc; *len updated). Returns 0 or WD_ERR_NOMEM. */
int wd_metrics_render(char **buf, size_t *len, size_t *cap);

/* Appends one formatted line (printf) the same way. */
int wd_metrics_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif

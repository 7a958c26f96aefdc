#ifndef WD_HTTP_HTTP_H
#define WD_HTTP_HTTP_H

/* The REST projection (libmicrohttpd, JSON). It reads and changes the registry
 * through store/, and reaches live devices only through the operations below,
 * which gateway/ fills with protocol/ functions at start-up: http/ knows
 * nothing of AMQP. */

#include <stdbool.h>
#include <stdint.h>

#include "gateway/base/bridge.h"
#include "http/auth.h"
#include "store/store.h"

typedef struct wd_http wd_http_t;

typedef struct {
  void *ctx;
  /* Authenticates a bearer token. Returns 0 and sets *scopes (WD_SCOPE_* mask),
   * or WD_ERR_DENIED. Thread-safe. */
  int (*authenticate)(void *ctx, const char *token, unsigned *scopes);
  /* Closes the live AMQP connection of a device, if any, with
   * amqp:unauthorized-access and `reason`, within 100 ms. Thread-safe, never blocks. */
  void (*revoke_device)(void *ctx, const char *device_id, const char *reason);
  /* Queues a command or notification (wd_amqp_send's contract). Thread-safe. */
  int (*send)(void *ctx, const wd_send_t *req, wd_send_fn done, void *arg);
  /* Decodes a telemetry record (wd_amqp_telemetry_decode's contract). Thread-safe. */
  int (*telemetry_decode)(const void *record, size_t len, wd_telemetry_t *out);
  /* True if `name` is a configured service (device ids may not take it). Thread-safe. */
  bool (*is_service)(void *ctx, const char *name);
  /* True while the device has a live, authenticated connection. Thread-safe. */
  bool (*device_connected)(void *ctx, const char *device_id, int64_t *last_seen_ms);
} wd_http_ops_t;

typedef struct {
  const char *listen;   /* "host:port"; port 0 lets the OS pick */
  const char *tls_cert; /* PEM file paths; both set means HTTPS */
  const char *tls_key;
  uint32_t default_queue_limit;
  uint32_t max_payload;  /* the largest command or notification body, in bytes */
  const char *jwt_issuer;   /* JWTs are accepted when issuer and key are set */
  const char *jwt_audience;
  const char *jwt_public_key_pem; /* PEM text, copied */
} wd_http_config_t;

/* Starts the REST server on its own polling thread. cfg and ops are copied;
 * store is borrowed until wd_http_stop. Logs "listening http <host>:<port>".
 * *out returned owned: wd_http_stop. */
int wd_http_start(const wd_http_config_t *cfg, wd_store_t *store, const wd_http_ops_t *ops,
                  wd_http_t **out);

/* The port actually bound (useful with port 0). */
uint16_t wd_http_port(const wd_http_t *h);

/* Stops accepting, finishes every parked request, stops the thread, frees h.
 * Accepts NULL. */
void wd_http_stop(wd_http_t *h);

#endif

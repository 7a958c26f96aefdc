#ifndef WD_PROTOCOL_AMQP_H
#define WD_PROTOCOL_AMQP_H

/* The AMQP 1.0 side of warden: listeners on a Proton proactor, SASL, the
 * address rules, telemetry in and out, and the registry of live connections
 * through which other threads hand work to a connection. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/base/bridge.h"
#include "store/store.h"

typedef struct wd_amqp wd_amqp_t;

typedef struct {
  const char *name;
  const char *secret;     /* NULL or "" when the service logs in by certificate only */
  const char *thumbprint; /* NULL or "" when none */
  unsigned scopes;        /* WD_SCOPE_* */
} wd_amqp_service_t;

typedef struct {
  const char *hostname;   /* the resource in SAS tokens: <hostname>/devices/<id> */
  const char *listen;     /* plain AMQP "host:port", NULL/"" for none */
  const char *tls_listen; /* AMQPS "host:port", NULL/"" for none */
  const char *tls_cert, *tls_key, *tls_ca; /* PEM paths; tls_ca enables client certificates */
  const char *tls_ciphers; /* OpenSSL cipher list for TLS 1.2; NULL: ECDHE with AES-GCM or ChaCha20 only */
  uint32_t idle_timeout_ms;
  uint32_t max_idle_timeout_ms;
  uint32_t max_message_size;
  uint32_t max_connections;
  uint32_t max_connections_per_address;
  uint32_t sasl_timeout_ms;
  uint32_t max_frame_size;
  uint32_t max_sessions, max_links;   /* per connection */
  uint32_t auth_failures_per_address; /* within a minute; then the address is refused for auth_block_ms */
  uint32_t auth_block_ms;
  uint32_t device_rate;               /* messages per second per device connection; 0: no limit */
  uint64_t default_ttl_ms, max_ttl_ms; /* commands and notifications */
  uint32_t queue_limit;                /* a device's queue, unless its registry entry says otherwise */
  uint32_t max_delivery_count;
  bool dev_mode;           /* allows PLAIN over plain TCP */
  bool allow_key_password; /* allows a device's base64 key as its PLAIN password */
  const wd_amqp_service_t *services; /* copied */
  size_t n_services;
} wd_amqp_config_t;

/* Creates the proactor and opens the listeners. cfg is copied; store is
 * borrowed until wd_amqp_free. Nothing runs until threads call wd_amqp_run. */
int wd_amqp_new(const wd_amqp_config_t *cfg, wd_store_t *store, wd_amqp_t **out);

/* Runs one proactor worker loop; returns when the proactor is shut down. Call
 * from each of N threads. */
void wd_amqp_run(wd_amqp_t *a);

/* Waits until every listener reported its address (or failed). Returns 0 or
 * WD_ERR_IO when a listener could not be opened. Call after threads started. */
int wd_amqp_wait_listening(wd_amqp_t *a);

/* Drains and stops: closes the listeners, grants no more credit, waits up to
 * `drain_ms` for telemetry already received to be committed and settled, then
 * closes every connection; the wd_amqp_run loops return. Thread-safe. */
void wd_amqp_shutdown(wd_amqp_t *a, int drain_ms);

/* Frees everything once all wd_amqp_run loops returned. Accepts NULL. */
void wd_amqp_free(wd_amqp_t *a);

/* Authenticates a service by secret. 0 and *scopes, or WD_ERR_DENIED. Thread-safe. */
int wd_amqp_authenticate_service(wd_amqp_t *a, const char *secret, unsigned *scopes);

/* Queues a command or notification. `done` runs exactly once, on any thread:
 * when it is queued (or refused), or - with wait_s - when the device responds,
 * the command fails, or the wait runs out. Returns < 0 (and never calls done)
 * only when it could not even be attempted. Thread-safe. */
int wd_amqp_send(wd_amqp_t *a, const wd_send_t *req, wd_send_fn done, void *arg);

/* Decodes a stored telemetry record for REST. Returns 0 and fills *out (free
 * out->owned), or WD_ERR_INVALID. Thread-safe. */
int wd_amqp_telemetry_decode(const void *record, size_t len, wd_telemetry_t *out);

/* Ends every REST wait now (outcome "shutdown") and refuses new ones: the
 * first step of shutdown, before the HTTP server stops. Thread-safe. */
void wd_amqp_end_waits(wd_amqp_t *a);

/* True if `name` is a configured service. Thread-safe. */
bool wd_amqp_is_service(wd_amqp_t *a, const char *name);

/* Closes the device's live connection with amqp:unauthorized-access. Thread-safe. */
void wd_amqp_revoke_device(wd_amqp_t *a, const char *device_id, const char *reason);

/* True if the device has a live connection; *last_seen_ms gets the time of its
 * last frame (may be NULL). Thread-safe. */
bool wd_amqp_device_connected(wd_amqp_t *a, const char *device_id, int64_t *last_seen_ms);

#endif

#ifndef WD_GATEWAY_CONFIG_H
#define WD_GATEWAY_CONFIG_H

/* warden's configuration: the INI file of CONTRACT.md ("Running it"), or the
 * embedded development defaults when no file is given. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  char *name;
  char *secret;
  char *thumbprint;
  unsigned scopes;
} wd_service_config_t;

typedef struct {
  char *hostname;
  unsigned threads;
  char *log_level;

  char *store_path;
  uint64_t store_max_size;

  char *amqp_listen, *amqp_tls_listen;
  char *amqp_tls_cert, *amqp_tls_key, *amqp_tls_ca, *amqp_tls_ciphers;
  uint32_t idle_timeout_s, max_idle_timeout_s;
  uint32_t max_message_size, max_connections;
  uint32_t max_connections_per_address, sasl_timeout_s, max_frame_size, max_sessions, max_links;
  uint32_t auth_failures_per_address, auth_block_s;
  uint32_t device_rate; /* messages per second a device may send; 0: no limit */

  char *http_listen, *http_tls_cert, *http_tls_key;

  bool dev_mode, allow_key_password;
  char *jwt_issuer, *jwt_public_key, *jwt_audience;

  uint32_t default_ttl_s, max_ttl_s, queue_limit, max_delivery_count;

  wd_service_config_t *services;
  size_t n_services;

  char *upstream_url, *upstream_device_id, *upstream_key, *upstream_ca;
} wd_config_t;

/* Loads `path`, or the embedded defaults when path is NULL. On error returns
 * < 0 and writes a message naming the key and the problem into err. *out is
 * returned owned: wd_config_free. */
int wd_config_load(const char *path, wd_config_t **out, char *err, size_t errcap);
void wd_config_free(wd_config_t *cfg);

#endif

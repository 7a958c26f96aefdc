#ifndef WD_BASE_BRIDGE_H
#define WD_BASE_BRIDGE_H

/* The types REST and AMQP exchange through gateway/: plain C, so that http/
 * and protocol/ never include each other. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A command or notification to queue for a device (or a group), as REST
 * hands it to the AMQP side: no AMQP types, so neither module knows the other. */
typedef struct {
  const char *target;       /* device id, or group id when group */
  bool group;               /* notifications only */
  bool notification;
  const void *body;         /* the payload, borrowed for the call */
  size_t len;
  const char *content_type; /* may be NULL */
  uint32_t ttl_s;           /* 0: the configured default */
  uint32_t wait_s;          /* commands: wait this long for the device's response; the TTL is then the wait */
} wd_send_t;

typedef struct {
  int rc;                  /* WD_OK, or why it was not queued: WD_ERR_NOT_FOUND, _DISABLED, _LIMIT (queue full),
                              _TOO_BIG, _BUSY, _FULL, _INVALID */
  char message_id[37];
  int64_t expires_ms;
  uint64_t devices;        /* group notifications: members reached */
  /* With wait_s and rc == WD_OK: "responded", "timeout", "shutdown" (warden
     is stopping; the command stays queued), or the command's failed status
     ("rejected", "expired", "undeliverable", ...). */
  const char *outcome;
  const void *response;    /* borrowed for the call */
  size_t response_len;
  const char *response_type;
} wd_send_result_t;

typedef void (*wd_send_fn)(void *arg, const wd_send_result_t *res);

/* A telemetry record as REST shows it. Strings and body point into `owned`
 * (or the record) and live until the decoder's caller frees `owned`. */
typedef struct {
  char device_id[129];
  uint64_t seq;
  int64_t enqueued_ms;
  char content_type[256];
  const void *body;
  size_t len;
  void *owned; /* free() when done */
} wd_telemetry_t;

#endif

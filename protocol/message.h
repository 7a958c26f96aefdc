#ifndef WD_PROTOCOL_MESSAGE_H
#define WD_PROTOCOL_MESSAGE_H

/* Rewrites encoded AMQP 1.0 messages without decoding their payload. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  WD_ANN_STRING,    /* str */
  WD_ANN_TIMESTAMP, /* value, ms since the epoch */
  WD_ANN_SEQUENCE,  /* a ulong left zero; its offset is returned for the store to fill */
} wd_msg_ann_type_t;

typedef struct {
  const char *key; /* a symbol */
  wd_msg_ann_type_t type;
  const char *str;
  int64_t value;
} wd_msg_ann_t;

typedef struct {
  bool drop_header;       /* the header is kept apart (command queues) and rebuilt on delivery */
  bool strip_reserved;    /* drop the sender's "x-opt-" message annotations: those are warden's to set */
  const char *message_id; /* when not NULL: the message-id to set if the message has none */
  const wd_msg_ann_t *add;
  size_t n_add;
} wd_msg_rewrite_t;

/* Rewrites a message section by section without touching its payload:
 * delivery annotations are dropped; the header is copied (or dropped); the
 * message annotations keep the sender's entries (less reserved ones) and gain
 * `add`; the properties gain a message-id where asked; the rest is copied.
 * The sections' framing and order are checked (AMQP 1.0 part 3.2).
 * Returns 0 with *out returned owned (free) and, if one annotation is
 * WD_ANN_SEQUENCE, *seq_offset set (else SIZE_MAX); or WD_ERR_INVALID. */
int wd_msg_rewrite(const uint8_t *in, size_t len, const wd_msg_rewrite_t *how, uint8_t **out, size_t *out_len,
                   size_t *seq_offset);

/* The stored form of a device's telemetry, inquiry or response: the sender's
 * x-opt- annotations dropped; x-opt-device-id, x-opt-enqueued-time and
 * x-opt-sequence-number (at *seq_offset, for the store) added. */
int wd_msg_annotate(const uint8_t *in, size_t len, const char *device_id, int64_t enqueued_ms, uint8_t **out,
                    size_t *out_len, size_t *seq_offset);

/* Encodes a header section; returns its length (at most WD_MSG_HEADER_MAX). */
#define WD_MSG_HEADER_MAX 24
size_t wd_msg_header_encode(uint8_t out[WD_MSG_HEADER_MAX], bool durable, uint8_t priority, uint32_t ttl_ms,
                            uint32_t delivery_count);

/* A big-endian uint32, as AMQP encodes frame sizes, widths and counts. */
static inline uint32_t wd_msg_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Skips one encoded AMQP value. Returns the byte after it, or NULL if it runs
 * past end or is malformed. */
const uint8_t *wd_msg_skip_value(const uint8_t *p, const uint8_t *end);

#endif

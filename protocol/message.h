#ifndef WD_PROTOCOL_MESSAGE_H
#define WD_PROTOCOL_MESSAGE_H

/* Rewrites encoded AMQP 1.0 messages without decoding their payload. */

#include <stddef.h>
#include <stdint.h>

/* Builds the stored form of a device's message: the header and everything
 * from the properties on are copied untouched; delivery annotations are
 * dropped; the message annotations keep the sender's entries except any
 * "x-opt-" key (those are warden's to set) and gain x-opt-device-id,
 * x-opt-enqueued-time (timestamp) and x-opt-sequence-number (ulong; its 8
 * bytes are left zero at *seq_offset for the store to fill).
 * Returns 0 with *out returned owned (free), or WD_ERR_INVALID when the bytes
 * are not a well-formed sequence of message sections. */
int wd_msg_annotate(const uint8_t *in, size_t len, const char *device_id, int64_t enqueued_ms, uint8_t **out,
                    size_t *out_len, size_t *seq_offset);

/* Skips one encoded AMQP value. Returns the byte after it, or NULL if it runs
 * past end or is malformed. */
const uint8_t *wd_msg_skip_value(const uint8_t *p, const uint8_t *end);

#endif

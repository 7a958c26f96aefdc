/* A minimal reader of the AMQP type system (part 1 of the spec): every
 * variable-width and compound encoding carries its size up front, so a value
 * is skipped by looking at its format code alone. That lets the ingress path
 * copy sections as bytes instead of decoding and re-encoding each message. */

#include "protocol/message.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/err.h"

enum {
  SECTION_HEADER = 0x70,
  SECTION_DELIVERY_ANNOTATIONS = 0x71,
  SECTION_MESSAGE_ANNOTATIONS = 0x72,
  SECTION_PROPERTIES = 0x73,
};

#define MAX_NESTING 32

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const uint8_t *skip(const uint8_t *p, const uint8_t *end, int depth) {
  if (p >= end || depth > MAX_NESTING) return NULL;
  uint8_t code = *p++;
  if (code == 0x00) { /* described: descriptor, then value */
    p = skip(p, end, depth + 1);
    return p ? skip(p, end, depth + 1) : NULL;
  }
  size_t n;
  switch (code >> 4) {
    case 0x4: n = 0; break;
    case 0x5: n = 1; break;
    case 0x6: n = 2; break;
    case 0x7: n = 4; break;
    case 0x8: n = 8; break;
    case 0x9: n = 16; break;
    case 0xa:
    case 0xc:
    case 0xe:
      if (p >= end) return NULL;
      n = *p++;
      break;
    case 0xb:
    case 0xd:
    case 0xf:
      if (end - p < 4) return NULL;
      n = be32(p);
      p += 4;
      break;
    default: return NULL;
  }
  if ((size_t)(end - p) < n) return NULL;
  return p + n;
}

const uint8_t *wd_msg_skip_value(const uint8_t *p, const uint8_t *end) { return skip(p, end, 0); }

/* Reads a section's descriptor code; returns the byte after the descriptor. */
static const uint8_t *section_code(const uint8_t *p, const uint8_t *end, unsigned *code) {
  if (end - p < 3 || p[0] != 0x00) return NULL;
  if (p[1] == 0x53) {
    *code = p[2];
    return p + 3;
  }
  if (p[1] == 0x80 && end - p >= 10) {
    uint64_t v = 0;
    for (int i = 2; i < 10; i++) v = v << 8 | p[i];
    if (v > 0xff) return NULL;
    *code = (unsigned)v;
    return p + 10;
  }
  static const char *const names[] = {"amqp:header:list", "amqp:delivery-annotations:map",
                                      "amqp:message-annotations:map", "amqp:properties:list",
                                      "amqp:application-properties:map", "amqp:data:binary",
                                      "amqp:amqp-sequence:list", "amqp:amqp-value:*", "amqp:footer:map"};
  if (p[1] == 0xa3) {
    size_t n = p[2];
    if ((size_t)(end - p - 3) < n) return NULL;
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
      if (strlen(names[i]) == n && memcmp(p + 3, names[i], n) == 0) {
        *code = 0x70 + i;
        return p + 3 + n;
      }
    }
  }
  return NULL;
}

/* True if an encoded map key is a symbol or string starting with "x-opt-". */
static bool reserved_key(const uint8_t *k, const uint8_t *kend) {
  const uint8_t *s;
  size_t n;
  if (k[0] == 0xa3 || k[0] == 0xa1) {
    n = k[1];
    s = k + 2;
  } else if (k[0] == 0xb3 || k[0] == 0xb1) {
    n = be32(k + 1);
    s = k + 5;
  } else {
    return false;
  }
  return s + n <= kend && n >= 6 && memcmp(s, "x-opt-", 6) == 0;
}

static uint8_t *put_symbol(uint8_t *w, const char *s) {
  size_t n = strlen(s);
  *w++ = 0xa3;
  *w++ = (uint8_t)n;
  memcpy(w, s, n);
  return w + n;
}

static uint8_t *put_be64(uint8_t *w, uint64_t v) {
  for (int i = 7; i >= 0; i--) w[7 - i] = (uint8_t)(v >> (i * 8));
  return w + 8;
}

static void put_be32(uint8_t *w, uint32_t v) {
  w[0] = (uint8_t)(v >> 24);
  w[1] = (uint8_t)(v >> 16);
  w[2] = (uint8_t)(v >> 8);
  w[3] = (uint8_t)v;
}

int wd_msg_annotate(const uint8_t *in, size_t len, const char *device_id, int64_t enqueued_ms, uint8_t **out,
                    size_t *out_len, size_t *seq_offset) {
  const uint8_t *p = in, *end = in + len;
  const uint8_t *header = NULL, *header_end = NULL, *ann = NULL, *ann_end = NULL;
  unsigned code, last = 0;
  /* Sections before the properties: header, delivery-annotations, message-annotations. */
  while (p < end) {
    const uint8_t *value = section_code(p, end, &code);
    if (!value) return WD_ERR_INVALID;
    if (code < SECTION_HEADER || code > 0x78 || (last && code <= last)) return WD_ERR_INVALID;
    if (code >= SECTION_PROPERTIES) break;
    const uint8_t *next = skip(value, end, 0);
    if (!next) return WD_ERR_INVALID;
    if (code == SECTION_HEADER) {
      header = p;
      header_end = next;
    } else if (code == SECTION_MESSAGE_ANNOTATIONS) {
      ann = value;
      ann_end = next;
    }
    last = code;
    p = next;
  }
  const uint8_t *rest = p;
  /* Validate the remaining sections' framing and order too. */
  while (p < end) {
    const uint8_t *value = section_code(p, end, &code);
    if (!value || code < SECTION_PROPERTIES || code > 0x78 || (last && code <= last && code < 0x75))
      return WD_ERR_INVALID;
    if (!(p = skip(value, end, 0))) return WD_ERR_INVALID;
    last = code;
  }

  /* The sender's own annotations, minus reserved keys. */
  const uint8_t *entries = NULL;
  size_t count = 0;
  if (ann) {
    if (ann[0] == 0xc1 && ann_end - ann >= 3) {
      count = ann[2];
      entries = ann + 3;
    } else if (ann[0] == 0xd1 && ann_end - ann >= 9) {
      count = be32(ann + 5);
      entries = ann + 9;
    } else if (ann[0] != 0x40) { /* null is an empty map */
      return WD_ERR_INVALID;
    }
    if (count % 2) return WD_ERR_INVALID;
  }

  size_t id_len = strlen(device_id);
  if (id_len > 255) return WD_ERR_INVALID;
  size_t cap = (size_t)(header_end - header) + (size_t)(ann_end - ann) + (size_t)(end - rest) + id_len + 128;
  uint8_t *buf = malloc(cap), *w = buf;
  if (!buf) return WD_ERR_NOMEM;
  if (header) {
    memcpy(w, header, (size_t)(header_end - header));
    w += header_end - header;
  }
  *w++ = 0x00;
  *w++ = 0x53;
  *w++ = SECTION_MESSAGE_ANNOTATIONS;
  *w++ = 0xd1;
  uint8_t *size_at = w;
  w += 8; /* size and count, filled below */
  uint32_t kept = 0;
  const uint8_t *e = entries;
  for (size_t i = 0; i < count; i += 2) {
    const uint8_t *k = e, *v = skip(k, ann_end, 0);
    const uint8_t *next = v ? skip(v, ann_end, 0) : NULL;
    if (!next) {
      free(buf);
      return WD_ERR_INVALID;
    }
    if (!reserved_key(k, v)) {
      memcpy(w, k, (size_t)(next - k));
      w += next - k;
      kept += 2;
    }
    e = next;
  }
  w = put_symbol(w, "x-opt-device-id");
  *w++ = 0xa1;
  *w++ = (uint8_t)id_len;
  memcpy(w, device_id, id_len);
  w += id_len;
  w = put_symbol(w, "x-opt-enqueued-time");
  *w++ = 0x83;
  w = put_be64(w, (uint64_t)enqueued_ms);
  w = put_symbol(w, "x-opt-sequence-number");
  *w++ = 0x80;
  *seq_offset = (size_t)(w - buf);
  w = put_be64(w, 0);
  put_be32(size_at, (uint32_t)(w - size_at - 4));
  put_be32(size_at + 4, kept + 6);
  memcpy(w, rest, (size_t)(end - rest));
  w += end - rest;
  *out = buf;
  *out_len = (size_t)(w - buf);
  return WD_OK;
}

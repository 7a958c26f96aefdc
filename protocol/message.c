/* A minimal reader of the AMQP type system (part 1 of the spec): every
 * variable-width and compound encoding carries its size up front, so a value
 * is skipped by looking at its format code alone. That lets the ingress path
 * copy sections as bytes instead of decoding and re-encoding each message. */

#include "protocol/message.h"

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

/* The format codes AMQP 1.0 defines (part 1, 1.6); anything else is not a value. */
static bool defined_code(uint8_t c) {
  switch (c) {
    case 0x40: case 0x41: case 0x42: case 0x43: case 0x44: case 0x45:
    case 0x50: case 0x51: case 0x52: case 0x53: case 0x54: case 0x55: case 0x56:
    case 0x60: case 0x61:
    case 0x70: case 0x71: case 0x72: case 0x73: case 0x74:
    case 0x80: case 0x81: case 0x82: case 0x83: case 0x84:
    case 0x94: case 0x98:
    case 0xa0: case 0xa1: case 0xa3: case 0xb0: case 0xb1: case 0xb3:
    case 0xc0: case 0xc1: case 0xd0: case 0xd1: case 0xe0: case 0xf0: return true;
    default: return false;
  }
}

static const uint8_t *skip(const uint8_t *p, const uint8_t *end, int depth);

/* Skips `count` values encoded without constructors (array elements of one
 * constructor `ctor`); NULL if they do not fit exactly before end. */
static const uint8_t *skip_bodies(uint8_t ctor, size_t count, const uint8_t *p, const uint8_t *end, int depth);

/* The width of a value's size field and of its fixed body, by format code. */
static const uint8_t *skip_body(uint8_t code, const uint8_t *p, const uint8_t *end, int depth) {
  size_t n;
  switch (code >> 4) {
    case 0x4: return p;
    case 0x5: n = 1; break;
    case 0x6: n = 2; break;
    case 0x7: n = 4; break;
    case 0x8: n = 8; break;
    case 0x9: n = 16; break;
    case 0xa:
      if (p >= end) return NULL;
      n = *p++;
      break;
    case 0xb:
      if (end - p < 4) return NULL;
      n = wd_msg_be32(p);
      p += 4;
      break;
    case 0xc:
    case 0xd:
    case 0xe:
    case 0xf: {
      /* Compounds and arrays: size, count, then exactly that many elements. */
      bool wide = (code >> 4) == 0xd || (code >> 4) == 0xf;
      size_t hdr = wide ? 4 : 1;
      if ((size_t)(end - p) < hdr) return NULL;
      size_t size = wide ? wd_msg_be32(p) : *p;
      p += hdr;
      if ((size_t)(end - p) < size || size < hdr) return NULL;
      const uint8_t *cend = p + size;
      size_t count = wide ? wd_msg_be32(p) : *p;
      p += hdr;
      if ((code >> 4) == 0xc || (code >> 4) == 0xd) {
        if ((code & 0x0f) == 1 && count % 2) return NULL; /* a map holds pairs */
        for (size_t i = 0; i < count; i++)
          if (!(p = skip(p, cend, depth + 1))) return NULL;
        return p == cend ? p : NULL;
      }
      /* An array: one constructor (maybe described), then the elements' bodies. */
      if (p >= cend) return NULL;
      uint8_t ctor = *p++;
      if (ctor == 0x00) {
        if (p >= cend || !(*p == 0x44 || *p == 0x53 || *p == 0x80 || *p == 0xa3 || *p == 0xb3)) return NULL;
        if (!(p = skip(p, cend, depth + 1)) || p >= cend) return NULL;
        ctor = *p++;
      }
      if (!defined_code(ctor) || ctor == 0x00) return NULL;
      /* Elements of a zero-width type (null, true, false, 0, the empty list)
         take no bytes, so a few bytes could claim billions of them: walking
         those took seconds, and a consumer decoding them would build a node
         each. No more of them than the array has bytes. */
      if ((ctor >> 4) == 0x4 && count > size) return NULL;
      p = skip_bodies(ctor, count, p, cend, depth + 1);
      return p == cend ? p : NULL;
    }
    default: return NULL;
  }
  if ((size_t)(end - p) < n) return NULL;
  return p + n;
}

static const uint8_t *skip_bodies(uint8_t ctor, size_t count, const uint8_t *p, const uint8_t *end, int depth) {
  if (depth > MAX_NESTING) return NULL;
  for (size_t i = 0; i < count && p; i++) p = skip_body(ctor, p, end, depth);
  return p;
}

static const uint8_t *skip(const uint8_t *p, const uint8_t *end, int depth) {
  if (p >= end || depth > MAX_NESTING) return NULL;
  uint8_t code = *p++;
  if (code == 0x00) { /* described: descriptor (a ulong or a symbol, never itself described), then value */
    if (p >= end || !(*p == 0x44 || *p == 0x53 || *p == 0x80 || *p == 0xa3 || *p == 0xb3)) return NULL;
    p = skip(p, end, depth + 1);
    return p ? skip(p, end, depth + 1) : NULL;
  }
  if (!defined_code(code)) return NULL;
  return skip_body(code, p, end, depth);
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
  const uint8_t *str;
  size_t n;
  if (k[0] == 0xa3 || k[0] == 0xa1) {
    n = k[1];
    str = k + 2;
  } else if (k[0] == 0xb3 || k[0] == 0xb1) {
    n = wd_msg_be32(k + 1);
    str = k + 5;
  } else {
    return false;
  }
  return str + n <= kend && n >= 6 && memcmp(str, "x-opt-", 6) == 0;
}

static uint8_t *put_str(uint8_t *w, uint8_t code8, uint8_t code32, const char *s) {
  size_t n = strlen(s);
  if (n <= 255) {
    *w++ = code8;
    *w++ = (uint8_t)n;
  } else {
    *w++ = code32;
    for (int i = 3; i >= 0; i--) *w++ = (uint8_t)(n >> (8 * i));
  }
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

/* The type each section's value must have (part 3.2): the header and
 * properties are lists, annotations and footers maps, data binary, an
 * amqp-sequence a list; an amqp-value may be anything. A parser that accepted
 * more would read a message differently from its consumers. */
static bool section_value_ok(unsigned code, uint8_t fc) {
  bool list = fc == 0x45 || fc == 0xc0 || fc == 0xd0, map = fc == 0x40 || fc == 0xc1 || fc == 0xd1;
  switch (code) {
    case 0x70: case 0x73: case 0x76: return list;
    case 0x71: case 0x72: case 0x74: case 0x78: return map;
    case 0x75: return fc == 0xa0 || fc == 0xb0;
    default: return true;
  }
}

/* Section order (part 3.2): header, delivery-annotations, message-annotations,
 * properties, application-properties, then the body - data sections, or
 * amqp-sequence sections, or one amqp-value - and last an optional footer. */
static bool in_order(unsigned last, unsigned code) {
  bool last_body = last >= 0x75 && last <= 0x77, body = code >= 0x75 && code <= 0x77;
  if (last_body && body && code != last) return false;
  return code > last || (code == last && (code == 0x75 || code == 0x76));
}

/* A compound's element count and first element (list or map, any width);
 * false unless exactly `count` well-formed elements fill it. */
static bool compound_header(const uint8_t *v, const uint8_t *end, size_t *count, const uint8_t **first);

static bool compound(const uint8_t *v, const uint8_t *end, size_t *count, const uint8_t **first) {
  if (!compound_header(v, end, count, first)) return false;
  const uint8_t *p = *first;
  for (size_t i = 0; i < *count; i++)
    if (!(p = skip(p, end, 1))) return false;
  return p == end;
}

static bool compound_header(const uint8_t *v, const uint8_t *end, size_t *count, const uint8_t **first) {
  if (v[0] == 0x45 || v[0] == 0x40) { /* list0, or null as an empty map */
    *count = 0;
    *first = v + 1;
    return true;
  }
  if ((v[0] == 0xc0 || v[0] == 0xc1) && end - v >= 3) {
    *count = v[2];
    *first = v + 3;
    return true;
  }
  if ((v[0] == 0xd0 || v[0] == 0xd1) && end - v >= 9) {
    *count = wd_msg_be32(v + 5);
    *first = v + 9;
    return true;
  }
  return false;
}

static size_t ann_size(const wd_msg_ann_t *a) {
  return 5 + strlen(a->key) + 9 + (a->type == WD_ANN_STRING ? strlen(a->str) + 5 : 0);
}

int wd_msg_rewrite(const uint8_t *in, size_t len, const wd_msg_rewrite_t *how, uint8_t **out, size_t *out_len,
                   size_t *seq_offset) {
  const uint8_t *p = in, *end = in + len;
  const uint8_t *header = NULL, *header_end = NULL, *ann = NULL, *ann_end = NULL;
  const uint8_t *props = NULL, *props_end = NULL, *props_section = NULL, *rest = NULL;
  unsigned code, last = 0;
  while (p < end) {
    const uint8_t *value = section_code(p, end, &code);
    if (!value || code < SECTION_HEADER || code > 0x78 || (last && !in_order(last, code))) return WD_ERR_INVALID;
    const uint8_t *next = skip(value, end, 0);
    if (!next || !section_value_ok(code, value[0])) return WD_ERR_INVALID;
    if (code == SECTION_HEADER) {
      header = p;
      header_end = next;
    } else if (code == SECTION_MESSAGE_ANNOTATIONS) {
      ann = value;
      ann_end = next;
    } else if (code == SECTION_PROPERTIES) {
      props_section = p;
      props = value;
      props_end = next;
    }
    if (code > SECTION_PROPERTIES && !rest) rest = p;
    last = code;
    p = next;
  }
  if (!rest) rest = end;

  size_t ann_count = 0, props_count = 0;
  const uint8_t *ann_first = NULL, *props_first = NULL;
  /* Annotations are a map (or null); properties a list. */
  if (ann && (!compound(ann, ann_end, &ann_count, &ann_first) || ann_count % 2 ||
              !(ann[0] == 0x40 || ann[0] == 0xc1 || ann[0] == 0xd1)))
    return WD_ERR_INVALID;
  if (props && (!compound(props, props_end, &props_count, &props_first) ||
                !(props[0] == 0x45 || props[0] == 0xc0 || props[0] == 0xd0)))
    return WD_ERR_INVALID;
  /* A message-id is wanted when there are no properties, or the first field is null or absent. */
  bool set_id = how->message_id && (!props || props_count == 0 || props_first[0] == 0x40);

  size_t cap = (size_t)(end - in) + 64 + (how->message_id ? strlen(how->message_id) + 8 : 0);
  for (size_t i = 0; i < how->n_add; i++) cap += ann_size(&how->add[i]);
  uint8_t *buf = malloc(cap), *w = buf;
  if (!buf) return WD_ERR_NOMEM;
  *seq_offset = SIZE_MAX;
  if (header && !how->drop_header) {
    memcpy(w, header, (size_t)(header_end - header));
    w += header_end - header;
  }

  /* Message annotations: the sender's (less reserved keys), then ours. */
  uint32_t kept = 0;
  uint8_t *size_at = NULL;
  if (ann_count > 0 || how->n_add > 0) {
    *w++ = 0x00;
    *w++ = 0x53;
    *w++ = SECTION_MESSAGE_ANNOTATIONS;
    *w++ = 0xd1;
    size_at = w;
    w += 8;
  }
  const uint8_t *e = ann_first;
  for (size_t i = 0; i < ann_count; i += 2) {
    const uint8_t *k = e, *v = skip(k, ann_end, 0);
    const uint8_t *next = v ? skip(v, ann_end, 0) : NULL;
    if (!next) {
      free(buf);
      return WD_ERR_INVALID;
    }
    if (!(how->strip_reserved && reserved_key(k, v))) {
      memcpy(w, k, (size_t)(next - k));
      w += next - k;
      kept += 2;
    }
    e = next;
  }
  for (size_t i = 0; i < how->n_add; i++) {
    const wd_msg_ann_t *a = &how->add[i];
    w = put_str(w, 0xa3, 0xb3, a->key);
    if (a->type == WD_ANN_STRING) {
      w = put_str(w, 0xa1, 0xb1, a->str);
    } else {
      *w++ = a->type == WD_ANN_TIMESTAMP ? 0x83 : 0x80;
      if (a->type == WD_ANN_SEQUENCE) *seq_offset = (size_t)(w - buf);
      w = put_be64(w, a->type == WD_ANN_TIMESTAMP ? (uint64_t)a->value : 0);
    }
    kept += 2;
  }
  if (size_at) {
    put_be32(size_at, (uint32_t)(w - size_at - 4));
    put_be32(size_at + 4, kept);
  }

  /* Properties, with a message-id where one is wanted and missing. */
  if (set_id) {
    *w++ = 0x00;
    *w++ = 0x53;
    *w++ = SECTION_PROPERTIES;
    *w++ = 0xd0;
    uint8_t *list_at = w;
    w += 8;
    w = put_str(w, 0xa1, 0xb1, how->message_id);
    const uint8_t *others = props && props_count > 0 ? skip(props_first, props_end, 0) : NULL;
    if (others) {
      memcpy(w, others, (size_t)(props_end - others));
      w += props_end - others;
    }
    put_be32(list_at, (uint32_t)(w - list_at - 4));
    put_be32(list_at + 4, props_count > 0 ? (uint32_t)props_count : 1);
  } else if (props) {
    memcpy(w, props_section, (size_t)(props_end - props_section));
    w += props_end - props_section;
  }
  memcpy(w, rest, (size_t)(end - rest));
  w += end - rest;
  *out = buf;
  *out_len = (size_t)(w - buf);
  return WD_OK;
}

int wd_msg_annotate(const uint8_t *in, size_t len, const char *device_id, int64_t enqueued_ms, uint8_t **out,
                    size_t *out_len, size_t *seq_offset) {
  if (strlen(device_id) > 255) return WD_ERR_INVALID;
  const wd_msg_ann_t add[] = {
      {"x-opt-device-id", WD_ANN_STRING, device_id, 0},
      {"x-opt-enqueued-time", WD_ANN_TIMESTAMP, NULL, enqueued_ms},
      {"x-opt-sequence-number", WD_ANN_SEQUENCE, NULL, 0},
  };
  const wd_msg_rewrite_t how = {.strip_reserved = true, .add = add, .n_add = 3};
  return wd_msg_rewrite(in, len, &how, out, out_len, seq_offset);
}

size_t wd_msg_header_encode(uint8_t out[WD_MSG_HEADER_MAX], bool durable, uint8_t priority, uint32_t ttl_ms,
                            uint32_t delivery_count) {
  uint8_t *w = out;
  *w++ = 0x00;
  *w++ = 0x53;
  *w++ = SECTION_HEADER;
  *w++ = 0xc0;
  uint8_t *size_at = w++;
  *w++ = 5;                    /* durable, priority, ttl, first-acquirer, delivery-count */
  *w++ = durable ? 0x41 : 0x42;
  *w++ = 0x50;
  *w++ = priority;
  if (ttl_ms) {
    *w++ = 0x70;
    put_be32(w, ttl_ms);
    w += 4;
  } else {
    *w++ = 0x40;
  }
  *w++ = 0x42;
  *w++ = 0x70;
  put_be32(w, delivery_count);
  w += 4;
  *size_at = (uint8_t)(w - size_at - 1);
  return (size_t)(w - out);
}

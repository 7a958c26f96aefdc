/* What Proton 0.37 does with a transfer (transport.c, pn_do_transfer), and so
 * what the guard mirrors: a link's `more_pending` flag is set by a transfer
 * with more=true, kept while more=true frames follow, and cleared by one with
 * aborted=true. A transfer with more=true that finds the flag clear must
 * carry a delivery-id, or Proton asserts. Attach, detach, begin and end give a
 * channel's links fresh flags, and a transfer whose handle the guard cannot
 * read might be any link's: each of those makes the guard forget the channel. */

#include "protocol/frame_guard.h"

#include <stdlib.h>
#include <string.h>

#include "protocol/message.h"

enum { PH_PROTOCOL, PH_HEADER, PH_SKIP_EXT, PH_BODY, PH_SKIP_REST, PH_FAILED };

enum { BEGIN = 0x11, ATTACH = 0x12, TRANSFER = 0x14, DETACH = 0x16, END = 0x17 };

/* transfer's fields, in order, up to the last one the guard reads */
enum { F_HANDLE, F_DELIVERY_ID, F_TAG, F_FORMAT, F_SETTLED, F_MORE, F_RCV_MODE, F_STATE, F_RESUME, F_ABORTED, N_FIELDS };

static const char framing[] = "amqp:connection:framing-error";

void wd_frame_guard_init(wd_frame_guard_t *g) { memset(g, 0, sizeof *g); }

void wd_frame_guard_fini(wd_frame_guard_t *g) {
  free(g->buf);
  g->buf = NULL;
}

/* An unsigned integer of any width, as a descriptor may be written. */
static bool read_unsigned(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  const uint8_t *q = *p;
  if (q >= end) return false;
  switch (q[0]) {
    case 0x43: /* uint0 */
    case 0x44: /* ulong0 */
      *v = 0;
      *p = q + 1;
      return true;
    case 0x52: /* smalluint */
    case 0x53: /* smallulong */
      if (end - q < 2) return false;
      *v = q[1];
      *p = q + 2;
      return true;
    case 0x70: /* uint */
      if (end - q < 5) return false;
      *v = wd_msg_be32(q + 1);
      *p = q + 5;
      return true;
    case 0x80: /* ulong */
      if (end - q < 9) return false;
      *v = (uint64_t)wd_msg_be32(q + 1) << 32 | wd_msg_be32(q + 5);
      *p = q + 9;
      return true;
    default:
      return false;
  }
}

/* A complete value that Proton reads as a uint (the only type it takes for a handle or delivery-id). */
static bool read_uint(const uint8_t *v, const uint8_t *end, uint32_t *out) {
  uint64_t x;
  if ((v[0] != 0x43 && v[0] != 0x52 && v[0] != 0x70) || !read_unsigned(&v, end, &x)) return false;
  *out = (uint32_t)x;
  return true;
}

/* Booleans, read two ways so that a doubt always falls on the strict side:
 * `may_be_true` also looks through a descriptor and takes any non-zero byte;
 * `surely_true` and `surely_false` take only the plain encodings. v is a
 * complete value. */
static bool may_be_true(const uint8_t *v, const uint8_t *end) {
  if (v[0] == 0x00) {
    const uint8_t *value = wd_msg_skip_value(v + 1, end); /* past the descriptor */
    return value && value < end && may_be_true(value, end);
  }
  return v[0] == 0x41 || (v[0] == 0x56 && end - v >= 2 && v[1] != 0);
}

static bool surely_true(const uint8_t *v) { return v[0] == 0x41 || (v[0] == 0x56 && v[1] == 1); }

static bool surely_false(const uint8_t *v) { return v[0] == 0x40 || v[0] == 0x42 || (v[0] == 0x56 && v[1] == 0); }

static int find_pending(const wd_frame_guard_t *g, uint16_t channel, uint32_t handle) {
  for (int i = 0; i < g->n_pending; i++)
    if (g->pending[i].channel == channel && g->pending[i].handle == handle) return i;
  return -1;
}

static void forget_channel(wd_frame_guard_t *g, uint16_t channel) {
  for (int i = g->n_pending - 1; i >= 0; i--)
    if (g->pending[i].channel == channel) g->pending[i] = g->pending[--g->n_pending];
}

static void remember(wd_frame_guard_t *g, uint16_t channel, uint32_t handle) {
  if (g->n_pending == WD_GUARD_PENDING_MAX) g->pending[0] = g->pending[--g->n_pending];
  g->pending[g->n_pending].channel = channel;
  g->pending[g->n_pending++].handle = handle;
}

/* p: just past the descriptor; end: the end of what the window holds.
 * Proton 0.37 reads a performative's fields to the end of the list's size,
 * whatever its count says (fuzz_amqp found a count of 4 in front of 7
 * fields, the 6th of them more=true), so the guard does too. */
static const char *judge_transfer(wd_frame_guard_t *g, const uint8_t *p, const uint8_t *end, const char **condition) {
  size_t list_bytes; /* the fields' bytes, as the size says */
  if (p >= end) return NULL; /* not a list: Proton refuses the frame itself */
  if (p[0] == 0x45) {
    list_bytes = 0;
    p += 1;
  } else if (p[0] == 0xc0 && end - p >= 3) {
    list_bytes = p[1] >= 1 ? p[1] - 1u : 0;
    p += 3;
  } else if (p[0] == 0xd0 && end - p >= 9) {
    uint32_t size = wd_msg_be32(p + 1);
    list_bytes = size >= 4 ? size - 4u : 0;
    p += 9;
  } else {
    return NULL;
  }
  const uint8_t *stop = (size_t)(end - p) < list_bytes ? end : p + list_bytes;
  const uint8_t *field[N_FIELDS] = {0};
  size_t known = 0;
  const uint8_t *q = p;
  while (known < N_FIELDS && q < stop) {
    const uint8_t *next = wd_msg_skip_value(q, stop);
    if (!next) break;
    field[known++] = q;
    q = next;
  }
  bool all_read = known == N_FIELDS || (size_t)(q - p) == list_bytes;
  if (!all_read && known <= F_MORE) {
    *condition = "amqp:decode-error";
    return "a transfer whose fields up to more cannot be read";
  }
  uint16_t channel = g->channel;
  uint32_t handle = 0, id;
  bool have_handle = field[F_HANDLE] && read_uint(field[F_HANDLE], stop, &handle);
  bool has_id = field[F_DELIVERY_ID] && read_uint(field[F_DELIVERY_ID], stop, &id);
  bool more = field[F_MORE] && may_be_true(field[F_MORE], stop);
  bool surely_more = field[F_MORE] && surely_true(field[F_MORE]);
  /* unread (beyond the window) counts as aborted: the flag is then taken as clear */
  bool surely_not_aborted = field[F_ABORTED] ? surely_false(field[F_ABORTED]) : all_read;
  int at = have_handle ? find_pending(g, channel, handle) : -1;

  if (more && !has_id && at < 0) {
    *condition = "amqp:invalid-field";
    return "the first transfer of a delivery has more=true and no delivery-id";
  }
  if (!have_handle) {
    forget_channel(g, channel);
  } else if (surely_more && surely_not_aborted) {
    if (at < 0) remember(g, channel, handle);
  } else if (at >= 0) {
    g->pending[at] = g->pending[--g->n_pending];
  }
  return NULL;
}

/* window: the start of a frame body (all of it when whole). */
static const char *judge(wd_frame_guard_t *g, const uint8_t *window, size_t len, const char **condition) {
  const uint8_t *p = window + 1, *end = window + len;
  uint64_t code;
  if (len < 1 || window[0] != 0x00 || !read_unsigned(&p, end, &code)) return NULL; /* Proton refuses these */
  switch (code) {
    case BEGIN:
    case ATTACH:
    case DETACH:
    case END:
      forget_channel(g, g->channel);
      return NULL;
    case TRANSFER:
      return judge_transfer(g, p, end, condition);
    default:
      return NULL;
  }
}

/* Makes the next `want` bytes (<= WD_GUARD_WINDOW) contiguous: in place when
 * this read holds them all, else gathered across reads. 1 when *out is ready,
 * 0 when the read ran out first, -1 when out of memory. */
static int gather(wd_frame_guard_t *g, const uint8_t **p, size_t *n, size_t want, const uint8_t **out) {
  if (g->have == 0 && *n >= want) {
    *out = *p;
    *p += want;
    *n -= want;
    return 1;
  }
  if (!g->buf && !(g->buf = malloc(WD_GUARD_WINDOW))) return -1;
  size_t take = want - g->have < *n ? want - g->have : *n;
  memcpy(g->buf + g->have, *p, take);
  g->have += (uint32_t)take;
  *p += take;
  *n -= take;
  if (g->have < want) return 0;
  g->have = 0;
  *out = g->buf;
  return 1;
}

static void after_body(wd_frame_guard_t *g) { g->phase = g->skip ? PH_SKIP_REST : PH_HEADER; }

static void before_body(wd_frame_guard_t *g) { g->phase = g->body_left ? PH_BODY : PH_HEADER; }

const char *wd_frame_guard_feed(wd_frame_guard_t *g, const uint8_t *p, size_t n, const char **condition) {
  static const uint8_t amqp_header[8] = {'A', 'M', 'Q', 'P', 0, 1, 0, 0};
  const char *why = NULL;
  *condition = framing;
  while (n > 0 && !why) {
    const uint8_t *piece;
    int got;
    switch (g->phase) {
      case PH_PROTOCOL:
        if ((got = gather(g, &p, &n, sizeof amqp_header, &piece)) <= 0) break;
        /* Proton would also take a TLS upgrade here, and read it above the guard. */
        if (memcmp(piece, amqp_header, sizeof amqp_header) != 0) why = "expected the AMQP 1.0 protocol header after SASL";
        g->phase = PH_HEADER;
        break;
      case PH_HEADER: {
        if ((got = gather(g, &p, &n, 8, &piece)) <= 0) break;
        uint32_t size = wd_msg_be32(piece);
        uint32_t offset = (uint32_t)piece[4] * 4;
        if (size < 8 || offset < 8 || offset > size) {
          why = "malformed frame header";
        } else if (piece[5] != 0) {
          why = "a frame that is not an AMQP frame after SASL";
        } else {
          g->channel = (uint16_t)(piece[6] << 8 | piece[7]);
          g->body_left = size - offset;
          g->skip = offset - 8;
          if (g->skip)
            g->phase = PH_SKIP_EXT;
          else
            before_body(g);
        }
        break;
      }
      case PH_SKIP_EXT:
      case PH_SKIP_REST: {
        size_t take = g->skip < n ? (size_t)g->skip : n;
        p += take;
        n -= take;
        g->skip -= take;
        if (g->skip == 0) {
          if (g->phase == PH_SKIP_EXT)
            before_body(g);
          else
            g->phase = PH_HEADER;
        }
        got = 1;
        break;
      }
      case PH_BODY: {
        size_t want = g->body_left < WD_GUARD_WINDOW ? g->body_left : WD_GUARD_WINDOW;
        if ((got = gather(g, &p, &n, want, &piece)) <= 0) break;
        why = judge(g, piece, want, condition);
        g->skip = g->body_left - want;
        after_body(g);
        break;
      }
      default:
        why = "the connection already broke the protocol";
        got = 1;
        break;
    }
    if (got < 0) {
      *condition = "amqp:resource-limit-exceeded";
      why = "out of memory";
    }
  }
  if (why) g->phase = PH_FAILED;
  return why;
}

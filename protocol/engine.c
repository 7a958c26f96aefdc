/* warden's AMQP 1.0 engine for device connections (decision 8, stage 2).
 *
 * Memory is the point: an idle connection holds the engine, its sessions and
 * its links, and nothing else. Input is handled in place: only a frame split
 * across reads is copied, into a buffer that lives until the frame is whole.
 * A message is copied only when it spans several transfer frames, into its
 * link's buffer, freed once the message is handed over. Output goes straight
 * to the owner's `write`: each frame is encoded on the stack, and a transfer's
 * payload is written from the caller's bytes.
 *
 * Performatives are decoded with Proton's codec (one pn_data_t per thread),
 * after wd_msg_skip_value has checked that the value is well formed, not too
 * deeply nested (Proton's decoder recurses) and holds no array that claims
 * more elements than it has bytes (Proton would build a node for each).
 * Transfers, the one performative of the hot path, are read by hand from the
 * same checked bytes: a handful of scalar fields, no allocation.
 *
 * Sessions use the peer's channel number for warden's end too: the peer's
 * channels are distinct while in use, and the peer used it, so it is within
 * both channel-max values. Dispositions warden settles are coalesced into
 * ranges and link flows into one per link; both wait for wd_engine_flush or
 * for the next frame of any other kind, so the order of frames is kept.
 *
 * Callbacks may call back into the engine (open, refuse, send, settle, flow,
 * close), but may not free it. Links and sessions are freed only by the
 * peer's frames (detach, end, close) and by wd_engine_free, never by a call
 * the owner makes, so a loop over links survives any callback. */

#include "protocol/engine.h"

#include <limits.h>
#include <proton/codec.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/message.h"

enum { OPEN = 0x10, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE };
enum { ERROR_LIST = 0x1d, RECEIVED = 0x23, ACCEPTED, REJECTED, RELEASED, MODIFIED, SOURCE, TARGET };

#define MIN_MAX_FRAME 512u
#define DEFAULT_MAX_FRAME 65536u
#define WINDOW 0x7FFFFFFFu     /* warden's session windows: never the limit */
#define CREDIT_MAX 0x7FFFFFFFu /* so that credit always fits an int */
#define TAG_MAX 32
/* A transfer's frame header and performative, at most: 8 + 3 + 9 (list32) +
   5 (handle) + 5 (delivery-id) + 5 + 32 (tag) + 1 + 1 + 1. */
#define TRANSFER_OVERHEAD 80u
/* An over-size message is counted, not kept, up to max_message_size + SLACK;
   beyond that its link is closed. With no max_message_size, HARD_CAP. */
#define OVERSIZE_SLACK (64u * 1024)
#define HARD_CAP (64u * 1024 * 1024)
/* Bytes a peer may pipeline after its open while the owner has not answered it. */
#define HELD_MAX (64u * 1024)
/* Delivery-ids one link's unsettled inbound deliveries may span (a 128 KiB bitmap). */
#define UNSETTLED_SPAN_MAX (1u << 20)
/* The stack buffer small frames are encoded in; larger ones are allocated. */
#define FRAME_STACK 512

static const uint8_t amqp_header[8] = {'A', 'M', 'Q', 'P', 0, 1, 0, 0};
static const uint8_t empty_frame[8] = {0, 0, 0, 8, 2, 0, 0, 0};

static const char framing_error[] = "amqp:connection:framing-error";
static const char decode_error[] = "amqp:decode-error";
static const char invalid_field[] = "amqp:invalid-field";
static const char not_allowed[] = "amqp:not-allowed";
static const char resource_limit[] = "amqp:resource-limit-exceeded";
static const char unattached_handle[] = "amqp:session:unattached-handle";
static const char message_size_exceeded[] = "amqp:link:message-size-exceeded";

typedef struct session session_t;

/* A delivery warden sent that the peer has not settled. */
typedef struct {
  wd_engine_link_t *link;
  uint32_t id;
  uint8_t state;        /* the peer's last outcome, as its descriptor code; 0 none */
  bool peer_settled;    /* set while on_outcome reports the peer's settlement */
  bool failed, undeliverable;
  uint8_t tag_len;
  uint8_t tag[TAG_MAX];
} sent_t;

struct wd_engine_link {
  wd_engine_t *engine;
  session_t *session;
  wd_engine_link_t *next;
  void *ctx;
  const char *source, *target; /* the peer's addresses, in `strings`; NULL when none */
  uint32_t name_len, source_len, target_len;
  uint32_t remote_handle, handle;
  /* Inbound: the receiver's delivery-count and the credit warden granted.
     Outbound: the sender's delivery-count and the peer's credit. */
  uint32_t delivery_count, credit;
  uint32_t max_message_size;
  /* Inbound: the delivery whose frames are arriving (more=true seen). */
  uint32_t partial_id;
  size_t partial_len; /* its bytes so far, counted even when not kept */
  size_t partial_cap;
  uint8_t *partial;   /* its bytes, when kept */
  /* Inbound deliveries the owner has not settled: bit i is delivery-id base + i. */
  uint64_t *unsettled;
  uint32_t unsettled_base, unsettled_words;
  uint8_t snd_settle_mode, rcv_settle_mode;
  bool inbound;
  bool has_source, has_target; /* the peer gave the terminus */
  bool attach_sent, opened, detach_sent;
  bool in_delivery;       /* a delivery's first frame came, its last has not */
  bool partial_settled;   /* a frame of it said settled */
  bool partial_oversize;  /* it outgrew max_message_size: counted, no longer kept */
  bool partial_accepted;  /* it had credit and is being taken (not ignored) */
  bool draining;          /* outbound: the peer's last flow asked for a drain */
  bool drain_answered;    /* outbound: warden's drained flow for that flow is out */
  bool flow_pending;
  char strings[]; /* name, source address, target address, each NUL-terminated */
};

struct session {
  session_t *next;
  wd_engine_link_t *links;
  uint32_t serial;
  uint16_t channel;
  bool delivery_in_known;
  uint32_t next_delivery_in;  /* the delivery-id the peer's next delivery must have */
  uint32_t next_delivery_out; /* warden's next delivery-id */
  uint32_t next_incoming_id;  /* transfer-ids */
  uint32_t next_outgoing_id;
  uint32_t peer_next_incoming_id, peer_incoming_window;
  sent_t *sent; /* ordered by id */
  uint32_t n_sent, cap_sent;
};

struct wd_engine {
  wd_engine_config_t cfg;
  wd_engine_handler_t h;
  void *ctx;
  session_t *sessions;
  uint32_t n_links;
  uint32_t next_serial;
  uint32_t max_frame; /* warden's */
  uint32_t peer_max_frame, peer_idle_ms, local_idle_ms;
  int64_t now, last_in, last_out;
  uint64_t frames_in;
  uint8_t header_have; /* bytes of the peer's protocol header matched so far */
  /* A frame split across reads, while it is incomplete. */
  uint8_t *in;
  size_t in_len, in_cap;
  /* Bytes that came after the peer's open, while warden's open is not sent. */
  uint8_t *held;
  size_t held_len;
  /* Settles waiting to be written: one range of one session. */
  struct {
    session_t *session;
    uint32_t first, last;
    uint8_t state;
    bool receiver;
    bool active;
  } disp;
  uint32_t flows_pending;
  bool header_in, header_out, open_in, open_out, close_in, close_out, close_reported, finished, broken;
};

/* ------------------------------------------------------------ the decoder */

static pthread_key_t decoder_key;
static pthread_once_t decoder_once = PTHREAD_ONCE_INIT;
static bool decoder_key_ok;

static void free_decoder(void *d) { pn_data_free(d); }

static void make_decoder_key(void) { decoder_key_ok = pthread_key_create(&decoder_key, free_decoder) == 0; }

/* The calling thread's decoder; NULL when out of memory. */
static pn_data_t *decoder(void) {
  pthread_once(&decoder_once, make_decoder_key);
  if (!decoder_key_ok) return NULL;
  pn_data_t *d = pthread_getspecific(decoder_key);
  if (!d && (d = pn_data(16)) && pthread_setspecific(decoder_key, d) != 0) {
    pn_data_free(d);
    d = NULL;
  }
  return d;
}

void wd_engine_thread_done(void) {
  pthread_once(&decoder_once, make_decoder_key);
  if (!decoder_key_ok) return;
  pn_data_t *d = pthread_getspecific(decoder_key);
  if (d) {
    pthread_setspecific(decoder_key, NULL);
    pn_data_free(d);
  }
}

/* ------------------------------------------------------ reading the fields */

/* Moves to a performative's next field: true when it is there and not null. */
static bool field(pn_data_t *d) { return pn_data_next(d) && pn_data_type(d) != PN_NULL; }

/* An unsigned integer of any width, at most max. */
static bool get_unsigned(pn_data_t *d, uint64_t max, uint64_t *v) {
  switch (pn_data_type(d)) {
    case PN_UBYTE: *v = pn_data_get_ubyte(d); break;
    case PN_USHORT: *v = pn_data_get_ushort(d); break;
    case PN_UINT: *v = pn_data_get_uint(d); break;
    case PN_ULONG: *v = pn_data_get_ulong(d); break;
    default: return false;
  }
  return *v <= max;
}

static bool get_uint(pn_data_t *d, uint32_t *v) {
  uint64_t x;
  if (!get_unsigned(d, UINT32_MAX, &x)) return false;
  *v = (uint32_t)x;
  return true;
}

static bool get_bool(pn_data_t *d, bool *v) {
  if (pn_data_type(d) != PN_BOOL) return false;
  *v = pn_data_get_bool(d);
  return true;
}

static bool get_text(pn_data_t *d, pn_bytes_t *v) {
  if (pn_data_type(d) == PN_STRING)
    *v = pn_data_get_string(d);
  else if (pn_data_type(d) == PN_SYMBOL)
    *v = pn_data_get_symbol(d);
  else
    return false;
  return true;
}

/* The symbolic descriptors warden reads, and their codes. */
static const struct {
  const char *name;
  uint8_t code;
} symbolic[] = {
    {"amqp:open:list", OPEN},         {"amqp:begin:list", BEGIN},
    {"amqp:attach:list", ATTACH},     {"amqp:flow:list", FLOW},
    {"amqp:transfer:list", TRANSFER}, {"amqp:disposition:list", DISPOSITION},
    {"amqp:detach:list", DETACH},     {"amqp:end:list", END},
    {"amqp:close:list", CLOSE},       {"amqp:error:list", ERROR_LIST},
    {"amqp:received:list", RECEIVED}, {"amqp:accepted:list", ACCEPTED},
    {"amqp:rejected:list", REJECTED}, {"amqp:released:list", RELEASED},
    {"amqp:modified:list", MODIFIED}, {"amqp:source:list", SOURCE},
    {"amqp:target:list", TARGET},
};

static uint8_t symbolic_code(const void *name, size_t len) {
  for (size_t i = 0; i < sizeof symbolic / sizeof symbolic[0]; i++)
    if (strlen(symbolic[i].name) == len && memcmp(symbolic[i].name, name, len) == 0) return symbolic[i].code;
  return 0;
}

/* A descriptor's code (a symbolic one mapped to its code); 0 for any other. */
static uint64_t descriptor(pn_data_t *d) {
  if (pn_data_type(d) == PN_ULONG) return pn_data_get_ulong(d);
  if (pn_data_type(d) != PN_SYMBOL) return 0;
  pn_bytes_t sym = pn_data_get_symbol(d);
  return symbolic_code(sym.start, sym.size);
}

/* At a described list: enters it, past its descriptor, before its first
   field. Returns the descriptor's code, 0 when it is not a described list. */
static uint64_t enter_described_list(pn_data_t *d) {
  if (pn_data_type(d) != PN_DESCRIBED || !pn_data_enter(d) || !pn_data_next(d)) return 0;
  uint64_t code = descriptor(d);
  if (!pn_data_next(d) || pn_data_type(d) != PN_LIST || !pn_data_enter(d)) return 0;
  return code;
}

/* An error condition, copied out (the decoder is reused by the next frame). */
typedef struct {
  char condition[128];
  char description[256];
  bool present;
} condition_t;

static void copy_text(char *out, size_t cap, pn_bytes_t b) {
  size_t n = b.size < cap - 1 ? b.size : cap - 1;
  if (n) memcpy(out, b.start, n);
  out[n] = '\0';
}

/* At an error field: reads it. false when it is not an error. */
static bool get_error(pn_data_t *d, condition_t *c) {
  pn_bytes_t b;
  if (enter_described_list(d) != ERROR_LIST || !field(d) || pn_data_type(d) != PN_SYMBOL) return false;
  copy_text(c->condition, sizeof c->condition, pn_data_get_symbol(d));
  c->description[0] = '\0';
  if (field(d)) {
    if (!get_text(d, &b)) return false;
    copy_text(c->description, sizeof c->description, b);
  }
  pn_data_exit(d);
  pn_data_exit(d);
  c->present = true;
  return true;
}

/* A terminus (source or target): whether it is there and its address. */
typedef struct {
  bool present;
  pn_bytes_t address; /* start NULL when none */
} terminus_t;

static bool get_terminus(pn_data_t *d, terminus_t *t) {
  t->present = true;
  t->address = (pn_bytes_t){0, NULL};
  uint64_t code = enter_described_list(d);
  if (!code) return false;
  /* A coordinator (transactions) or another kind has no address warden reads. */
  if ((code == SOURCE || code == TARGET) && field(d) && !get_text(d, &t->address)) return false;
  pn_data_exit(d);
  pn_data_exit(d);
  return true;
}

/* --------------------------------------------------------------- encoding */

typedef struct {
  uint8_t *b;
  size_t n, cap;
  bool over;      /* something did not fit: the frame is not written */
  bool allocated; /* b is the heap's */
} enc_t;

/* A frame encoder over `stack`, or over the heap when the frame may need more. */
static void enc_init(enc_t *w, uint8_t *stack, size_t cap, size_t need) {
  *w = (enc_t){.b = stack, .cap = cap, .n = 8};
  if (need > cap) {
    w->b = malloc(need);
    w->cap = need;
    w->allocated = true;
    w->over = !w->b;
  }
}

static void enc_fini(enc_t *w) {
  if (w->allocated) free(w->b);
}

static void put(enc_t *w, const void *p, size_t n) {
  if (w->over || w->cap - w->n < n) {
    w->over = true;
    return;
  }
  if (n) memcpy(w->b + w->n, p, n);
  w->n += n;
}

static void put_u8(enc_t *w, uint8_t v) { put(w, &v, 1); }

static void store_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void put_be32(enc_t *w, uint32_t v) {
  uint8_t b[4];
  store_be32(b, v);
  put(w, b, 4);
}

static void put_null(enc_t *w) { put_u8(w, 0x40); }

static void put_bool(enc_t *w, bool v) { put_u8(w, v ? 0x41 : 0x42); }

static void put_ubyte(enc_t *w, uint8_t v) {
  uint8_t b[2] = {0x50, v};
  put(w, b, 2);
}

static void put_ushort(enc_t *w, uint16_t v) {
  uint8_t b[3] = {0x60, (uint8_t)(v >> 8), (uint8_t)v};
  put(w, b, 3);
}

static void put_uint(enc_t *w, uint32_t v) {
  if (v == 0) {
    put_u8(w, 0x43);
  } else if (v < 256) {
    uint8_t b[2] = {0x52, (uint8_t)v};
    put(w, b, 2);
  } else {
    put_u8(w, 0x70);
    put_be32(w, v);
  }
}

static void put_ulong(enc_t *w, uint64_t v) {
  if (v < 256) {
    uint8_t b[2] = {0x53, (uint8_t)v};
    put(w, b, 2);
  } else {
    put_u8(w, 0x80);
    put_be32(w, (uint32_t)(v >> 32));
    put_be32(w, (uint32_t)v);
  }
}

/* A string, symbol or binary: its 8-bit-length code, or the 32-bit one (+0x10). */
static void put_variable(enc_t *w, uint8_t code8, const void *p, size_t n) {
  if (n < 256) {
    uint8_t b[2] = {code8, (uint8_t)n};
    put(w, b, 2);
  } else {
    put_u8(w, (uint8_t)(code8 + 0x10));
    put_be32(w, (uint32_t)n);
  }
  put(w, p, n);
}

static void put_string(enc_t *w, const char *s) { put_variable(w, 0xa1, s, strlen(s)); }

static void put_symbol(enc_t *w, const char *s) { put_variable(w, 0xa3, s, strlen(s)); }

static void put_descriptor(enc_t *w, uint8_t code) {
  uint8_t b[3] = {0x00, 0x53, code};
  put(w, b, 3);
}

/* Starts a list as list32; end_list shrinks it to list8 or list0 when it can. */
static size_t begin_list(enc_t *w) {
  size_t at = w->n;
  uint8_t b[9] = {0xd0};
  put(w, b, 9);
  return at;
}

static void end_list(enc_t *w, size_t at, uint32_t count) {
  if (w->over) return;
  size_t items = w->n - at - 9;
  if (count == 0) {
    w->b[at] = 0x45;
    w->n = at + 1;
  } else if (items + 1 < 256 && count < 256) {
    w->b[at] = 0xc0;
    w->b[at + 1] = (uint8_t)(items + 1);
    w->b[at + 2] = (uint8_t)count;
    memmove(w->b + at + 3, w->b + at + 9, items);
    w->n -= 6;
  } else {
    store_be32(w->b + at + 1, (uint32_t)(items + 4));
    store_be32(w->b + at + 5, count);
  }
}

static size_t begin_performative(enc_t *w, uint8_t code) {
  put_descriptor(w, code);
  return begin_list(w);
}

/* An error list with a condition (NULL: null instead of the list). */
static void put_error(enc_t *w, const char *condition, const char *description) {
  if (!condition) {
    put_null(w);
    return;
  }
  put_descriptor(w, ERROR_LIST);
  size_t at = begin_list(w);
  put_symbol(w, condition);
  if (description) put_string(w, description);
  end_list(w, at, description ? 2 : 1);
}

static size_t error_size(const char *condition, const char *description) {
  return (condition ? strlen(condition) + 16 : 0) + (description ? strlen(description) + 5 : 0);
}

/* -------------------------------------------------------------- writing */

static void fail(wd_engine_t *e, const char *condition, const char *description);

static bool write_raw(wd_engine_t *e, const void *p, size_t n) {
  if (e->broken) return false;
  if (e->h.write(e->ctx, p, n) < 0) {
    e->broken = true;
    e->finished = true;
    return false;
  }
  e->last_out = e->now;
  return true;
}

static void send_header(wd_engine_t *e) {
  if (!e->header_out) {
    e->header_out = true;
    write_raw(e, amqp_header, sizeof amqp_header);
  }
}

/* Writes the frame w holds on channel, with payload after it (a transfer's). */
static void emit(wd_engine_t *e, enc_t *w, uint16_t channel, const void *payload, size_t payload_len) {
  if (w->over) {
    /* Only a frame the owner's strings made too large gets here. */
    enc_fini(w);
    fail(e, "amqp:internal-error", "a frame warden could not encode");
    return;
  }
  send_header(e);
  store_be32(w->b, (uint32_t)(w->n + payload_len));
  w->b[4] = 2;
  w->b[5] = 0;
  w->b[6] = (uint8_t)(channel >> 8);
  w->b[7] = (uint8_t)channel;
  if (write_raw(e, w->b, w->n) && payload_len) write_raw(e, payload, payload_len);
  enc_fini(w);
}

static void flush_pending(wd_engine_t *e);

/* Writes a frame after whatever settles and flows are pending. */
static void send_frame(wd_engine_t *e, enc_t *w, uint16_t channel) {
  if (e->disp.active || e->flows_pending) flush_pending(e);
  emit(e, w, channel, NULL, 0);
}

/* Frames can be written: the peer has not been told goodbye. */
static bool can_write(const wd_engine_t *e) { return !e->close_out && !e->finished; }

static void write_open(wd_engine_t *e, uint32_t idle_ms) {
  uint8_t stack[FRAME_STACK];
  enc_t w;
  const char *id = e->cfg.container_id ? e->cfg.container_id : "";
  enc_init(&w, stack, sizeof stack, strlen(id) + 64);
  size_t at = begin_performative(&w, OPEN);
  put_string(&w, id);
  put_null(&w); /* hostname */
  put_uint(&w, e->max_frame);
  put_ushort(&w, e->cfg.channel_max);
  if (idle_ms) put_uint(&w, idle_ms);
  end_list(&w, at, idle_ms ? 5 : 4);
  e->open_out = true;
  send_frame(e, &w, 0);
}

static void write_close(wd_engine_t *e, const char *condition, const char *description) {
  uint8_t stack[FRAME_STACK];
  enc_t w;
  enc_init(&w, stack, sizeof stack, error_size(condition, description) + 32);
  size_t at = begin_performative(&w, CLOSE);
  put_error(&w, condition, description);
  end_list(&w, at, condition ? 1 : 0);
  e->close_out = true;
  send_frame(e, &w, 0);
}

static void write_begin(wd_engine_t *e, const session_t *s) {
  uint8_t stack[64];
  enc_t w;
  enc_init(&w, stack, sizeof stack, 0);
  size_t at = begin_performative(&w, BEGIN);
  put_ushort(&w, s->channel); /* remote-channel: the begin it answers */
  put_uint(&w, s->next_outgoing_id);
  put_uint(&w, WINDOW);
  put_uint(&w, WINDOW);
  end_list(&w, at, 4);
  send_frame(e, &w, s->channel);
}

static void write_end(wd_engine_t *e, const session_t *s) {
  uint8_t stack[32];
  enc_t w;
  enc_init(&w, stack, sizeof stack, 0);
  size_t at = begin_performative(&w, END);
  end_list(&w, at, 0);
  send_frame(e, &w, s->channel);
}

static void put_terminus(enc_t *w, uint8_t code, const char *address, uint32_t len) {
  put_descriptor(w, code);
  size_t at = begin_list(w);
  if (address)
    put_variable(w, 0xa1, address, len);
  else
    put_null(w);
  end_list(w, at, 1);
}

/* warden's attach for l; `refused` leaves out the terminus at warden's end. */
static void write_attach(wd_engine_t *e, const wd_engine_link_t *l, bool refused) {
  uint8_t stack[FRAME_STACK];
  enc_t w;
  enc_init(&w, stack, sizeof stack, (size_t)l->name_len + l->source_len + l->target_len + 128);
  const char *name = l->strings;
  size_t at = begin_performative(&w, ATTACH);
  put_variable(&w, 0xa1, name, l->name_len);
  put_uint(&w, l->handle);
  put_bool(&w, l->inbound); /* role: true is receiver */
  put_ubyte(&w, l->inbound ? l->snd_settle_mode : 0);
  put_ubyte(&w, 0); /* rcv-settle-mode first */
  bool source = l->inbound ? l->has_source : !refused;
  bool target = l->inbound ? !refused : l->has_target;
  if (source)
    put_terminus(&w, SOURCE, l->source, l->source_len);
  else
    put_null(&w);
  if (target)
    put_terminus(&w, TARGET, l->target, l->target_len);
  else
    put_null(&w);
  uint32_t count = 7;
  if (!l->inbound) {
    put_null(&w); /* unsettled */
    put_null(&w); /* incomplete-unsettled */
    put_uint(&w, l->delivery_count);
    count = 10;
  } else if (l->max_message_size && !refused) {
    put_null(&w);
    put_null(&w);
    put_null(&w); /* initial-delivery-count: a receiver's is ignored */
    put_ulong(&w, l->max_message_size);
    count = 11;
  }
  end_list(&w, at, count);
  send_frame(e, &w, l->session->channel);
}

static void write_detach(wd_engine_t *e, const wd_engine_link_t *l, bool closed, const char *condition,
                         const char *description) {
  uint8_t stack[FRAME_STACK];
  enc_t w;
  enc_init(&w, stack, sizeof stack, error_size(condition, description) + 48);
  size_t at = begin_performative(&w, DETACH);
  put_uint(&w, l->handle);
  put_bool(&w, closed);
  if (condition) put_error(&w, condition, description);
  end_list(&w, at, condition ? 3 : 2);
  send_frame(e, &w, l->session->channel);
}

/* A flow with the session's state, and l's when l is not NULL. */
static void encode_flow(enc_t *w, const session_t *s, const wd_engine_link_t *l) {
  size_t at = begin_performative(w, FLOW);
  put_uint(w, s->next_incoming_id);
  put_uint(w, WINDOW);
  put_uint(w, s->next_outgoing_id);
  put_uint(w, WINDOW);
  if (l) {
    put_uint(w, l->handle);
    put_uint(w, l->delivery_count);
    put_uint(w, l->credit);
    put_null(w); /* available */
    put_bool(w, !l->inbound && l->draining);
  }
  end_list(w, at, l ? 9 : 4);
}

static void encode_disposition(enc_t *w, bool receiver, uint32_t first, uint32_t last, uint8_t state,
                               const char *condition, const char *description) {
  size_t at = begin_performative(w, DISPOSITION);
  put_bool(w, receiver);
  put_uint(w, first);
  if (last != first)
    put_uint(w, last);
  else
    put_null(w);
  put_bool(w, true); /* settled: warden settles whenever it says anything */
  if (state) {
    put_descriptor(w, state);
    size_t at_state = begin_list(w);
    if (state == REJECTED && condition) put_error(w, condition, description);
    end_list(w, at_state, state == REJECTED && condition ? 1 : 0);
  }
  end_list(w, at, state ? 5 : 4);
}

/* Writes the pending disposition, then the pending link flows. */
static void flush_pending(wd_engine_t *e) {
  uint8_t stack[96];
  enc_t w;
  if (e->disp.active) {
    e->disp.active = false;
    if (can_write(e)) {
      enc_init(&w, stack, sizeof stack, 0);
      encode_disposition(&w, e->disp.receiver, e->disp.first, e->disp.last, e->disp.state, NULL, NULL);
      emit(e, &w, e->disp.session->channel, NULL, 0);
    }
  }
  for (session_t *s = e->sessions; s && e->flows_pending; s = s->next) {
    for (wd_engine_link_t *l = s->links; l && e->flows_pending; l = l->next) {
      if (!l->flow_pending) continue;
      l->flow_pending = false;
      e->flows_pending--;
      if (!can_write(e)) continue;
      enc_init(&w, stack, sizeof stack, 0);
      encode_flow(&w, s, l);
      emit(e, &w, s->channel, NULL, 0);
    }
  }
  e->flows_pending = 0;
}

static void want_flow(wd_engine_link_t *l) {
  if (!l->flow_pending) {
    l->flow_pending = true;
    l->engine->flows_pending++;
  }
}

static void cancel_flow(wd_engine_link_t *l) {
  if (l->flow_pending) {
    l->flow_pending = false;
    l->engine->flows_pending--;
  }
}

/* ------------------------------------------------------- closing, failing */

/* The connection breaks off: warden's close (after its header and open if
   they are not out yet), and nothing more. */
static void fail(wd_engine_t *e, const char *condition, const char *description) {
  if (e->finished) return;
  if (!e->close_out) {
    if (!e->open_out) write_open(e, 0);
    write_close(e, condition, description);
  }
  e->finished = true;
  if (!e->close_reported) {
    e->close_reported = true;
    if (e->h.on_close) e->h.on_close(e->ctx, false, condition, description);
  }
}

/* ------------------------------------------------------- sessions, links */

static session_t *find_session(const wd_engine_t *e, uint16_t channel) {
  for (session_t *s = e->sessions; s; s = s->next)
    if (s->channel == channel) return s;
  return NULL;
}

static session_t *session_by_serial(const wd_engine_t *e, uint32_t serial) {
  for (session_t *s = e->sessions; s; s = s->next)
    if (s->serial == serial) return s;
  return NULL;
}

static wd_engine_link_t *find_link(const session_t *s, uint32_t remote_handle) {
  for (wd_engine_link_t *l = s->links; l; l = l->next)
    if (l->remote_handle == remote_handle) return l;
  return NULL;
}

/* The lowest handle none of the session's links has. */
static uint32_t free_handle(const session_t *s) {
  uint32_t h = 0;
  for (bool again = true; again;) {
    again = false;
    for (const wd_engine_link_t *l = s->links; l; l = l->next)
      if (l->handle == h) {
        h++;
        again = true;
      }
  }
  return h;
}

/* Transfer frames the peer's session window lets warden send now. */
static uint32_t window_left(const session_t *s) {
  uint32_t left = s->peer_next_incoming_id + s->peer_incoming_window - s->next_outgoing_id;
  return left > 0x7FFFFFFFu ? 0 : left;
}

static void forget_sent(session_t *s, const wd_engine_link_t *l) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < s->n_sent; i++)
    if (s->sent[i].link != l) s->sent[kept++] = s->sent[i];
  s->n_sent = kept;
  if (kept == 0) {
    free(s->sent);
    s->sent = NULL;
    s->cap_sent = 0;
  }
}

/* The index of the unsettled delivery id warden sent, or -1. */
static int64_t find_sent(const session_t *s, uint32_t id) {
  /* The ids were taken in order, so they are sorted relative to the first. */
  if (s->n_sent == 0) return -1;
  uint32_t base = s->sent[0].id;
  uint32_t lo = 0, hi = s->n_sent;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (s->sent[mid].id - base < id - base)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < s->n_sent && s->sent[lo].id == id ? (int64_t)lo : -1;
}

static void remove_sent(session_t *s, uint32_t i) {
  memmove(s->sent + i, s->sent + i + 1, (s->n_sent - i - 1) * sizeof *s->sent);
  if (--s->n_sent == 0) {
    free(s->sent);
    s->sent = NULL;
    s->cap_sent = 0;
  }
}

static bool mark_unsettled(wd_engine_link_t *l, uint32_t id) {
  if (!l->unsettled) l->unsettled_base = id & ~63u;
  uint32_t offset = id - l->unsettled_base;
  if (offset >= UNSETTLED_SPAN_MAX) return false;
  uint32_t word = offset / 64;
  if (word >= l->unsettled_words) {
    uint32_t words = l->unsettled_words ? l->unsettled_words * 2 : 1;
    while (words <= word) words *= 2;
    uint64_t *bits = realloc(l->unsettled, words * sizeof *bits);
    if (!bits) return false;
    memset(bits + l->unsettled_words, 0, (words - l->unsettled_words) * sizeof *bits);
    l->unsettled = bits;
    l->unsettled_words = words;
  }
  l->unsettled[word] |= UINT64_C(1) << (offset % 64);
  return true;
}

/* Clears id's bit; false when it was not set. */
static bool clear_unsettled(wd_engine_link_t *l, uint32_t id) {
  if (!l->unsettled) return false;
  uint32_t offset = id - l->unsettled_base;
  if (offset / 64 >= l->unsettled_words) return false;
  uint64_t bit = UINT64_C(1) << (offset % 64);
  if (!(l->unsettled[offset / 64] & bit)) return false;
  l->unsettled[offset / 64] &= ~bit;
  uint32_t done = 0; /* leading words with nothing unsettled left */
  while (done < l->unsettled_words && l->unsettled[done] == 0) done++;
  if (done == l->unsettled_words) {
    free(l->unsettled);
    l->unsettled = NULL;
    l->unsettled_words = 0;
  } else if (done) {
    memmove(l->unsettled, l->unsettled + done, (l->unsettled_words - done) * sizeof *l->unsettled);
    memset(l->unsettled + l->unsettled_words - done, 0, done * sizeof *l->unsettled);
    l->unsettled_base += done * 64;
  }
  return true;
}

static void drop_partial(wd_engine_link_t *l) {
  free(l->partial);
  l->partial = NULL;
  l->partial_len = l->partial_cap = 0;
  l->partial_oversize = false;
}

/* The link is gone: on_detach, then its memory. */
static void drop_link(wd_engine_t *e, session_t *s, wd_engine_link_t *l) {
  forget_sent(s, l);
  cancel_flow(l);
  l->opened = false;
  l->detach_sent = true; /* inactive during on_detach */
  if (e->h.on_detach) e->h.on_detach(e->ctx, l);
  for (wd_engine_link_t **at = &s->links; *at; at = &(*at)->next)
    if (*at == l) {
      *at = l->next;
      break;
    }
  e->n_links--;
  drop_partial(l);
  free(l->unsettled);
  free(l);
}

static void drop_session(wd_engine_t *e, session_t *s) {
  while (s->links) drop_link(e, s, s->links);
  if (e->disp.active && e->disp.session == s) e->disp.active = false;
  for (session_t **at = &e->sessions; *at; at = &(*at)->next)
    if (*at == s) {
      *at = s->next;
      break;
    }
  free(s->sent);
  free(s);
}

static void drop_all(wd_engine_t *e) {
  while (e->sessions) drop_session(e, e->sessions);
}

/* ------------------------------------------------------ the peer's frames */

static void on_open_frame(wd_engine_t *e, pn_data_t *d) {
  uint64_t v;
  pn_bytes_t text;
  if (e->open_in) {
    fail(e, not_allowed, "a second open");
    return;
  }
  if (!field(d) || !get_text(d, &text)) {
    fail(e, invalid_field, "open without a container-id");
    return;
  }
  uint32_t max_frame = UINT32_MAX, idle = 0;
  bool ok = true;
  if (field(d)) ok = get_text(d, &text); /* hostname */
  if (ok && field(d) && (ok = get_unsigned(d, UINT32_MAX, &v))) max_frame = (uint32_t)v;
  if (ok && field(d)) ok = get_unsigned(d, UINT16_MAX, &v); /* channel-max: warden answers on the peer's channels */
  if (ok && field(d) && (ok = get_unsigned(d, UINT32_MAX, &v))) idle = (uint32_t)v;
  if (!ok) {
    fail(e, decode_error, "an open field of the wrong type");
    return;
  }
  if (max_frame < MIN_MAX_FRAME) {
    fail(e, invalid_field, "max-frame-size below 512");
    return;
  }
  e->open_in = true;
  e->peer_max_frame = max_frame;
  e->peer_idle_ms = idle;
  if (e->h.on_open) e->h.on_open(e->ctx, idle);
}

static void on_begin(wd_engine_t *e, uint16_t channel, pn_data_t *d) {
  uint32_t next_outgoing = 0, incoming_window = 0, outgoing_window = 0;
  if (field(d)) {
    fail(e, not_allowed, "a begin with a remote-channel: warden never begins a session");
    return;
  }
  if (!field(d) || !get_uint(d, &next_outgoing) || !field(d) || !get_uint(d, &incoming_window) || !field(d) ||
      !get_uint(d, &outgoing_window)) {
    fail(e, invalid_field, "a begin without its windows");
    return;
  }
  if (channel > e->cfg.channel_max) {
    fail(e, not_allowed, "a channel above channel-max");
    return;
  }
  if (find_session(e, channel)) {
    fail(e, not_allowed, "a begin on a channel already in use");
    return;
  }
  session_t *s = calloc(1, sizeof *s);
  if (!s) {
    fail(e, resource_limit, "out of memory");
    return;
  }
  if (++e->next_serial == 0) e->next_serial = 1;
  s->serial = e->next_serial;
  s->channel = channel;
  s->next_incoming_id = next_outgoing;
  s->peer_incoming_window = incoming_window;
  s->next = e->sessions;
  e->sessions = s;
  write_begin(e, s);
}

static void on_end(wd_engine_t *e, session_t *s) {
  while (s->links) drop_link(e, s, s->links);
  if (can_write(e)) write_end(e, s);
  drop_session(e, s);
}

static void on_attach_frame(wd_engine_t *e, session_t *s, pn_data_t *d) {
  pn_bytes_t name;
  uint32_t handle, initial_count = 0;
  uint64_t snd_mode = 2, rcv_mode = 0;
  bool role;
  terminus_t source = {0}, target = {0};
  if (!field(d) || !get_text(d, &name) || !field(d) || !get_uint(d, &handle) || !field(d) || !get_bool(d, &role)) {
    fail(e, invalid_field, "an attach without its name, handle or role");
    return;
  }
  bool ok = true;
  if (field(d)) ok = get_unsigned(d, 2, &snd_mode);
  if (ok && field(d)) ok = get_unsigned(d, 1, &rcv_mode);
  if (ok && field(d)) ok = get_terminus(d, &source);
  if (ok && field(d)) ok = get_terminus(d, &target);
  if (ok) {
    pn_data_next(d); /* unsettled */
    pn_data_next(d); /* incomplete-unsettled */
    if (field(d)) ok = get_uint(d, &initial_count);
  }
  if (!ok) {
    fail(e, invalid_field, "an attach field of the wrong type or out of range");
    return;
  }
  if (find_link(s, handle)) {
    fail(e, "amqp:session:handle-in-use", "an attach on a handle in use");
    return;
  }
  if (e->n_links >= e->cfg.max_links) {
    fail(e, resource_limit, "too many links");
    return;
  }
  size_t size = sizeof(wd_engine_link_t) + name.size + source.address.size + target.address.size + 3;
  wd_engine_link_t *l = calloc(1, size);
  if (!l) {
    fail(e, resource_limit, "out of memory");
    return;
  }
  char *at = l->strings;
  memcpy(at, name.start, name.size);
  l->name_len = (uint32_t)name.size;
  at += name.size + 1;
  if (source.address.start) {
    memcpy(at, source.address.start, source.address.size);
    l->source = at;
    l->source_len = (uint32_t)source.address.size;
    at += source.address.size + 1;
  }
  if (target.address.start) {
    memcpy(at, target.address.start, target.address.size);
    l->target = at;
    l->target_len = (uint32_t)target.address.size;
  }
  l->engine = e;
  l->session = s;
  l->remote_handle = handle;
  l->inbound = !role; /* the peer is the sender */
  l->has_source = source.present;
  l->has_target = target.present;
  l->snd_settle_mode = (uint8_t)snd_mode;
  l->rcv_settle_mode = (uint8_t)rcv_mode;
  l->delivery_count = l->inbound ? initial_count : 0;
  l->handle = free_handle(s);
  l->next = s->links;
  s->links = l;
  e->n_links++;
  if (e->h.on_attach) e->h.on_attach(e->ctx, l);
  if (!l->attach_sent) wd_engine_link_refuse(l, "amqp:internal-error", "the link was neither opened nor refused");
}

static void on_detach_frame(wd_engine_t *e, session_t *s, pn_data_t *d) {
  uint32_t handle;
  bool closed = false;
  if (!field(d) || !get_uint(d, &handle) || (field(d) && !get_bool(d, &closed))) {
    fail(e, invalid_field, "a detach without its handle");
    return;
  }
  wd_engine_link_t *l = find_link(s, handle);
  if (!l) {
    fail(e, unattached_handle, "a detach of a handle not attached");
    return;
  }
  if (!l->detach_sent && can_write(e)) {
    l->detach_sent = true;
    write_detach(e, l, closed, NULL, NULL);
  }
  drop_link(e, s, l);
}

/* Calls on_flow for l, if it still may send. */
static void notify_flow(wd_engine_t *e, wd_engine_link_t *l) {
  if (e->h.on_flow && can_write(e) && wd_engine_link_active(l)) e->h.on_flow(e->ctx, l);
}

static void on_flow_frame(wd_engine_t *e, session_t *s, pn_data_t *d) {
  uint32_t next_incoming = 0, incoming_window, next_outgoing, outgoing_window, handle = 0;
  uint32_t delivery_count = 0, credit = 0, available;
  bool has_next_incoming = false, has_handle = false, has_count = false, drain = false, echo = false;
  bool ok = (!(has_next_incoming = field(d)) || get_uint(d, &next_incoming)) && field(d) &&
            get_uint(d, &incoming_window) && field(d) && get_uint(d, &next_outgoing) && field(d) &&
            get_uint(d, &outgoing_window);
  if (!ok) {
    fail(e, invalid_field, "a flow without its session fields");
    return;
  }
  ok = (!(has_handle = field(d)) || get_uint(d, &handle)) && (!(has_count = field(d)) || get_uint(d, &delivery_count)) &&
       (!field(d) || get_uint(d, &credit)) && (!field(d) || get_uint(d, &available)) &&
       (!field(d) || get_bool(d, &drain)) && (!field(d) || get_bool(d, &echo));
  if (!ok) {
    fail(e, invalid_field, "a flow field of the wrong type");
    return;
  }
  uint32_t window_before = window_left(s);
  /* Without next-incoming-id the peer had not seen warden's begin: warden's initial id, 0. */
  s->peer_next_incoming_id = has_next_incoming ? next_incoming : 0;
  s->peer_incoming_window = incoming_window;
  wd_engine_link_t *l = NULL;
  bool link_grew = false;
  if (has_handle) {
    l = find_link(s, handle);
    if (!l) {
      fail(e, unattached_handle, "a flow for a handle not attached");
      return;
    }
    if (!wd_engine_link_active(l)) {
      l = NULL; /* warden detached it: the peer's view no longer matters */
    } else if (l->inbound) {
      /* The sender may have used up credit (a drain): its count moved on. */
      int32_t ahead = (int32_t)(delivery_count - l->delivery_count);
      if (has_count && ahead > 0) {
        l->delivery_count = delivery_count;
        l->credit = (uint32_t)ahead >= l->credit ? 0 : l->credit - (uint32_t)ahead;
      }
      if (echo) want_flow(l);
    } else {
      uint32_t limit = (has_count ? delivery_count : 0) + credit;
      uint32_t now_credit = limit - l->delivery_count;
      if (now_credit > CREDIT_MAX) now_credit = 0;
      link_grew = now_credit > l->credit || drain;
      l->credit = now_credit;
      l->draining = drain;
      l->drain_answered = false;
      if (echo) want_flow(l);
    }
  }
  if (echo && !has_handle && can_write(e)) {
    uint8_t stack[96];
    enc_t w;
    enc_init(&w, stack, sizeof stack, 0);
    encode_flow(&w, s, NULL);
    send_frame(e, &w, s->channel);
  }
  if (window_left(s) > window_before) {
    for (wd_engine_link_t *x = s->links; x; x = x->next)
      if (!x->inbound && (x->credit > 0 || (x == l && link_grew))) notify_flow(e, x);
  } else if (l && !l->inbound && link_grew) {
    notify_flow(e, l);
  }
}

/* A transfer's fields, read by hand from bytes wd_msg_skip_value checked. */
typedef struct {
  uint32_t handle, delivery_id;
  const uint8_t *tag;
  size_t tag_len;
  bool has_handle, has_id, has_tag, settled, more, aborted;
} transfer_t;

/* An encoded unsigned integer (of any width) that fits 32 bits; *present false for null. */
static bool read_uint(const uint8_t *p, bool *present, uint32_t *v) {
  uint64_t x = 0;
  *present = true;
  switch (p[0]) {
    case 0x40: *present = false; return true;
    case 0x43: case 0x44: x = 0; break;
    case 0x50: case 0x52: case 0x53: x = p[1]; break;
    case 0x60: x = (uint32_t)p[1] << 8 | p[2]; break;
    case 0x70: x = wd_msg_be32(p + 1); break;
    case 0x80: x = (uint64_t)wd_msg_be32(p + 1) << 32 | wd_msg_be32(p + 5); break;
    default: return false;
  }
  if (x > UINT32_MAX) return false;
  *v = (uint32_t)x;
  return true;
}

static bool read_bool(const uint8_t *p, bool *v) {
  switch (p[0]) {
    case 0x40: case 0x42: *v = false; return true;
    case 0x41: *v = true; return true;
    case 0x56: *v = p[1] != 0; return true;
    default: return false;
  }
}

/* p..end: the performative, a complete, checked value. */
static bool read_transfer(const uint8_t *p, const uint8_t *end, transfer_t *t) {
  memset(t, 0, sizeof *t);
  /* the descriptor: the checker allowed a ulong or a symbol only */
  const uint8_t *list = wd_msg_skip_value(p + 1, end);
  if (!list || list >= end) return false;
  size_t count;
  const uint8_t *f;
  switch (list[0]) {
    case 0x45: count = 0; f = list + 1; break;
    case 0xc0: count = list[2]; f = list + 3; break;
    case 0xd0: count = wd_msg_be32(list + 5); f = list + 9; break;
    default: return false;
  }
  bool present, ok = true;
  for (size_t i = 0; i < count && ok && f < end; i++) {
    switch (i) {
      case 0: ok = read_uint(f, &t->has_handle, &t->handle); break;
      case 1: ok = read_uint(f, &t->has_id, &t->delivery_id); break;
      case 2:
        if (f[0] == 0xa0) {
          t->tag_len = f[1];
          t->tag = f + 2;
        } else if (f[0] == 0xb0) {
          t->tag_len = wd_msg_be32(f + 1);
          t->tag = f + 5;
        } else {
          ok = f[0] == 0x40;
        }
        t->has_tag = t->tag != NULL;
        break;
      case 3: {
        uint32_t format;
        ok = read_uint(f, &present, &format);
        break;
      }
      case 4: ok = read_bool(f, &t->settled); break;
      case 5: ok = read_bool(f, &t->more); break;
      case 9: ok = read_bool(f, &t->aborted); break;
      default: break; /* rcv-settle-mode, state, resume, batchable: not warden's concern */
    }
    if (ok) f = wd_msg_skip_value(f, end);
    ok = ok && f;
  }
  return ok;
}

/* Keeps n more bytes of the delivery being assembled, within the link's limits.
   false when the link had to be closed for it. */
static bool keep_partial(wd_engine_link_t *l, const uint8_t *p, size_t n) {
  uint64_t total = (uint64_t)l->partial_len + n;
  uint64_t hard = l->max_message_size ? (uint64_t)l->max_message_size + OVERSIZE_SLACK : HARD_CAP;
  if (total > hard) {
    drop_partial(l);
    wd_engine_link_close(l, message_size_exceeded, "a message far over max-message-size");
    return false;
  }
  if (l->max_message_size && total > l->max_message_size) {
    /* It will be rejected: count the rest, keep nothing. */
    free(l->partial);
    l->partial = NULL;
    l->partial_cap = 0;
    l->partial_oversize = true;
  } else if (n) {
    if (total > l->partial_cap) {
      size_t cap = l->partial_cap ? l->partial_cap * 2 : 1024;
      while (cap < total) cap *= 2;
      if (cap > hard) cap = (size_t)hard;
      uint8_t *b = realloc(l->partial, cap);
      if (!b) {
        drop_partial(l);
        wd_engine_link_close(l, resource_limit, "out of memory");
        return false;
      }
      l->partial = b;
      l->partial_cap = cap;
    }
    memcpy(l->partial + l->partial_len, p, n);
  }
  l->partial_len = (size_t)total;
  return true;
}

/* A whole message arrived (msg NULL when it went over max-message-size). */
static void deliver(wd_engine_t *e, session_t *s, wd_engine_link_t *l, uint32_t id, bool settled,
                    const uint8_t *msg, size_t len) {
  static const uint8_t nothing[1];
  wd_engine_delivery_t dv = {.session = s->serial, .id = id, .outbound = false};
  if (!msg) {
    if (!settled && can_write(e)) {
      uint8_t stack[FRAME_STACK];
      enc_t w;
      enc_init(&w, stack, sizeof stack, 0);
      encode_disposition(&w, true, id, id, REJECTED, message_size_exceeded, "the message is over max-message-size");
      send_frame(e, &w, s->channel);
    }
    settled = true;
  } else if (!settled && !mark_unsettled(l, id)) {
    fail(e, resource_limit, "too many unsettled deliveries");
    return;
  }
  if (e->h.on_message) e->h.on_message(e->ctx, l, dv, settled, msg ? (len ? msg : nothing) : NULL, len);
}

static void on_transfer(wd_engine_t *e, session_t *s, const uint8_t *perf, const uint8_t *perf_end,
                        const uint8_t *payload, size_t payload_len) {
  transfer_t t;
  if (!read_transfer(perf, perf_end, &t)) {
    fail(e, decode_error, "a transfer field of the wrong type");
    return;
  }
  if (!t.has_handle) {
    fail(e, invalid_field, "a transfer without a handle");
    return;
  }
  wd_engine_link_t *l = find_link(s, t.handle);
  if (!l) {
    fail(e, unattached_handle, "a transfer on a handle not attached");
    return;
  }
  if (!l->inbound) {
    fail(e, not_allowed, "a transfer on a link where warden is the sender");
    return;
  }
  s->next_incoming_id++;
  bool first = !l->in_delivery;
  if (first) {
    if (!t.has_id || !t.has_tag) {
      fail(e, invalid_field, "the first transfer of a delivery has no delivery-id or delivery-tag");
      return;
    }
    if (t.tag_len > TAG_MAX) {
      fail(e, invalid_field, "a delivery-tag over 32 bytes");
      return;
    }
    if (s->delivery_in_known && t.delivery_id != s->next_delivery_in) {
      fail(e, invalid_field, "a delivery-id out of sequence");
      return;
    }
    s->delivery_in_known = true;
    s->next_delivery_in = t.delivery_id + 1;
    l->partial_id = t.delivery_id;
    l->partial_settled = false;
    l->partial_accepted = false;
    if (wd_engine_link_active(l)) {
      if (l->credit == 0) {
        wd_engine_link_close(l, "amqp:link:transfer-limit-exceeded", "a transfer without credit");
      } else {
        l->credit--;
        l->delivery_count++;
        l->partial_accepted = true;
      }
    }
  } else if (t.has_id && t.delivery_id != l->partial_id) {
    fail(e, invalid_field, "a continuation transfer with another delivery-id");
    return;
  }
  l->in_delivery = t.more && !t.aborted;
  /* A link warden detached (or refused) still numbers the frames in flight. */
  if (!l->partial_accepted || !wd_engine_link_active(l)) {
    drop_partial(l);
    return;
  }
  l->partial_settled = l->partial_settled || t.settled;
  if (t.aborted) {
    uint32_t id = l->partial_id;
    drop_partial(l);
    /* Settled by the abort itself: nothing to answer, but its credit was spent. */
    wd_engine_delivery_t dv = {.session = s->serial, .id = id, .outbound = false};
    if (e->h.on_message) e->h.on_message(e->ctx, l, dv, true, NULL, 0);
    return;
  }
  if (t.more) {
    keep_partial(l, payload, payload_len);
    return;
  }
  uint64_t total = (uint64_t)l->partial_len + payload_len;
  bool settled = l->partial_settled;
  uint32_t id = l->partial_id;
  if ((l->max_message_size && total > l->max_message_size) || total > HARD_CAP) {
    drop_partial(l);
    deliver(e, s, l, id, settled, NULL, (size_t)total);
  } else if (first) {
    deliver(e, s, l, id, settled, payload, payload_len); /* no copy */
  } else if (keep_partial(l, payload, payload_len)) {
    /* Taken from the link first: the owner may close it during the call. */
    uint8_t *msg = l->partial;
    size_t len = l->partial_len;
    l->partial = NULL;
    drop_partial(l);
    deliver(e, s, l, id, settled, msg ? msg : payload, len);
    free(msg);
  }
}

/* A delivery state: its code, and modified's two flags. */
static bool get_state(pn_data_t *d, uint8_t *code, bool *failed, bool *undeliverable) {
  uint64_t c = enter_described_list(d);
  if (c < RECEIVED || c > MODIFIED) return false;
  *code = (uint8_t)c;
  if (c == MODIFIED) {
    if (field(d) && !get_bool(d, failed)) return false;
    if (field(d) && !get_bool(d, undeliverable)) return false;
  }
  pn_data_exit(d);
  pn_data_exit(d);
  return true;
}

static void on_disposition(wd_engine_t *e, session_t *s, pn_data_t *d) {
  bool receiver, settled = false, failed = false, undeliverable = false;
  uint32_t first, last;
  uint8_t state = 0;
  if (!field(d) || !get_bool(d, &receiver) || !field(d) || !get_uint(d, &first)) {
    fail(e, invalid_field, "a disposition without its role or first");
    return;
  }
  last = first;
  bool ok = (!field(d) || get_uint(d, &last)) && (!field(d) || get_bool(d, &settled)) &&
            (!field(d) || get_state(d, &state, &failed, &undeliverable));
  if (!ok) {
    fail(e, invalid_field, "a disposition field of the wrong type");
    return;
  }
  if (!receiver) return; /* the peer settles what it sent: warden settled it first */
  uint32_t span = last - first;
  if (span > 0x7FFFFFFFu) return; /* last before first: about nothing */
  wd_engine_outcome_t o = {.settled = settled};
  switch (state) {
    case ACCEPTED: o.state = WD_ENGINE_ACCEPTED; break;
    case REJECTED: o.state = WD_ENGINE_REJECTED; break;
    case RELEASED: o.state = WD_ENGINE_RELEASED; break;
    case MODIFIED:
      o.state = WD_ENGINE_MODIFIED;
      o.delivery_failed = failed;
      o.undeliverable_here = undeliverable;
      break;
    default: o.state = WD_ENGINE_NONE; break;
  }
  /* Walks the ids in order; a callback may settle (remove) entries, so each
     step finds its place again by id. */
  uint32_t i = 0;
  while (i < s->n_sent && can_write(e)) {
    sent_t *x = &s->sent[i];
    if (x->id - first > span) {
      i++;
      continue;
    }
    uint32_t id = x->id;
    if (state) {
      x->state = state;
      x->failed = failed;
      x->undeliverable = undeliverable;
    }
    x->peer_settled = settled;
    sent_t copy = *x;
    o.tag = copy.tag;
    o.tag_len = copy.tag_len;
    if (state == 0) { /* report what the peer said before */
      o.state = copy.state == ACCEPTED   ? WD_ENGINE_ACCEPTED
                : copy.state == REJECTED ? WD_ENGINE_REJECTED
                : copy.state == RELEASED ? WD_ENGINE_RELEASED
                : copy.state == MODIFIED ? WD_ENGINE_MODIFIED
                                         : WD_ENGINE_NONE;
    }
    wd_engine_delivery_t dv = {.session = s->serial, .id = id, .outbound = true};
    if (e->h.on_outcome) e->h.on_outcome(e->ctx, copy.link, dv, &o);
    int64_t at = find_sent(s, id);
    if (at >= 0) {
      if (settled) {
        remove_sent(s, (uint32_t)at);
        i = (uint32_t)at;
      } else {
        i = (uint32_t)at + 1;
      }
    } else {
      /* The owner settled it: the next entry is the first after id. */
      i = 0;
      while (i < s->n_sent && s->sent[i].id - id - 1 > 0x7FFFFFFFu) i++;
    }
  }
}

static void on_close_frame(wd_engine_t *e, pn_data_t *d) {
  condition_t c = {.present = false};
  if (field(d) && !get_error(d, &c)) c.present = false; /* an unreadable error: a close all the same */
  e->close_in = true;
  drop_all(e);
  if (!e->close_out) {
    e->flows_pending = 0;
    if (!e->open_out) write_open(e, 0);
    write_close(e, NULL, NULL);
  }
  e->finished = true;
  if (!e->close_reported) {
    e->close_reported = true;
    if (e->h.on_close)
      e->h.on_close(e->ctx, true, c.present ? c.condition : NULL, c.present ? c.description : NULL);
  }
}

/* The performative's code, with d inside its list; 0 when the body is not one. */
static int read_performative(pn_data_t *d, const uint8_t *body, size_t len) {
  pn_data_clear(d); /* decoding appends */
  if (pn_data_decode(d, (const char *)body, len) != (ssize_t)len) return 0;
  pn_data_rewind(d);
  if (!pn_data_next(d)) return 0;
  uint64_t code = enter_described_list(d);
  return code >= OPEN && code <= CLOSE ? (int)code : 0;
}

/* The performative code of a checked described value; -1 for another, 0 if not described. */
static int peek_code(const uint8_t *p, const uint8_t *end) {
  if (p[0] != 0x00) return 0;
  uint32_t v;
  bool present;
  if (p[1] == 0xa3 || p[1] == 0xb3) {
    size_t n = p[1] == 0xa3 ? p[2] : wd_msg_be32(p + 2);
    const uint8_t *name = p + (p[1] == 0xa3 ? 3 : 6);
    if ((size_t)(end - name) < n) return -1;
    v = symbolic_code(name, n);
  } else if (!read_uint(p + 1, &present, &v)) {
    return -1;
  }
  return v >= OPEN && v <= CLOSE ? (int)v : -1;
}

static void handle_frame(wd_engine_t *e, const uint8_t *f, size_t size) {
  e->frames_in++;
  size_t doff = (size_t)f[4] * 4;
  const uint8_t *body = f + doff, *end = f + size;
  uint16_t channel = (uint16_t)(f[6] << 8 | f[7]);
  if (body == end) return; /* an empty frame: the peer is alive */
  const uint8_t *after = wd_msg_skip_value(body, end);
  int code = after ? peek_code(body, after) : -1;
  if (code <= 0) {
    fail(e, decode_error, "a frame body that is not a performative");
    return;
  }
  if (e->close_out && code != CLOSE) return; /* warden said goodbye: only the peer's close matters */
  if (!e->open_in && code != OPEN) {
    fail(e, not_allowed, "a frame before open");
    return;
  }
  session_t *s = NULL;
  if (code != OPEN && code != CLOSE && code != BEGIN && !(s = find_session(e, channel))) {
    fail(e, not_allowed, "a frame on a channel with no session");
    return;
  }
  if (code == TRANSFER) {
    on_transfer(e, s, body, after, after, (size_t)(end - after));
    return;
  }
  pn_data_t *d = decoder();
  if (!d) {
    fail(e, resource_limit, "out of memory");
    return;
  }
  if (read_performative(d, body, (size_t)(after - body)) != code) {
    fail(e, decode_error, "a performative Proton's codec cannot read");
    return;
  }
  switch (code) {
    case OPEN: on_open_frame(e, d); break;
    case BEGIN: on_begin(e, channel, d); break;
    case ATTACH: on_attach_frame(e, s, d); break;
    case FLOW: on_flow_frame(e, s, d); break;
    case DISPOSITION: on_disposition(e, s, d); break;
    case DETACH: on_detach_frame(e, s, d); break;
    case END: on_end(e, s); break;
    case CLOSE: on_close_frame(e, d); break;
    default: break;
  }
}

/* ------------------------------------------------------------------ input */

/* A frame header is acceptable: false (and the connection closed) if not. */
static bool check_frame_header(wd_engine_t *e, const uint8_t *h) {
  uint32_t size = wd_msg_be32(h);
  if (size < 8 || h[4] < 2 || (uint32_t)h[4] * 4 > size) {
    fail(e, framing_error, "a malformed frame header");
    return false;
  }
  if (h[5] != 0) {
    fail(e, framing_error, "a frame that is not an AMQP frame");
    return false;
  }
  if (size > e->max_frame) {
    fail(e, framing_error, "a frame over max-frame-size");
    return false;
  }
  return true;
}

static bool waiting_for_open(const wd_engine_t *e) { return e->open_in && !e->open_out && !e->close_out; }

static void hold(wd_engine_t *e, const uint8_t *p, size_t n) {
  if (e->held_len + n > HELD_MAX) {
    fail(e, resource_limit, "too much input before warden's open");
    return;
  }
  uint8_t *b = realloc(e->held, e->held_len + n);
  if (!b) {
    fail(e, resource_limit, "out of memory");
    return;
  }
  memcpy(b + e->held_len, p, n);
  e->held = b;
  e->held_len += n;
}

/* Appends to the incomplete frame. */
static bool keep_input(wd_engine_t *e, const uint8_t *p, size_t n) {
  size_t need = e->in_len + n;
  if (need > e->in_cap) {
    size_t cap = e->in_cap ? e->in_cap * 2 : 256;
    while (cap < need) cap *= 2;
    if (e->in_len >= 8 && cap > wd_msg_be32(e->in)) cap = wd_msg_be32(e->in);
    uint8_t *b = realloc(e->in, cap);
    if (!b) return false;
    e->in = b;
    e->in_cap = cap;
  }
  memcpy(e->in + e->in_len, p, n);
  e->in_len = need;
  return true;
}

static void drop_input(wd_engine_t *e) {
  free(e->in);
  e->in = NULL;
  e->in_len = e->in_cap = 0;
}

/* Frames: whole ones in place, a split one gathered in e->in. */
static void take_frames(wd_engine_t *e, const uint8_t *p, size_t n) {
  while (n > 0 && !e->finished) {
    if (waiting_for_open(e)) {
      hold(e, p, n);
      return;
    }
    if (e->in_len == 0 && n >= 8) {
      if (!check_frame_header(e, p)) return;
      uint32_t size = wd_msg_be32(p);
      if (n >= size) {
        handle_frame(e, p, size);
        p += size;
        n -= size;
        continue;
      }
    }
    size_t before = e->in_len;
    size_t want = before < 8 ? 8 - before : wd_msg_be32(e->in) - before;
    size_t take = want < n ? want : n;
    if (!keep_input(e, p, take)) {
      fail(e, resource_limit, "out of memory");
      return;
    }
    p += take;
    n -= take;
    if (before < 8 && e->in_len == 8 && !check_frame_header(e, e->in)) return;
    if (e->in_len >= 8 && e->in_len == wd_msg_be32(e->in)) {
      handle_frame(e, e->in, e->in_len);
      drop_input(e);
    }
  }
}

static void resume_held(wd_engine_t *e) {
  if (!e->held) return;
  uint8_t *p = e->held;
  size_t n = e->held_len;
  e->held = NULL;
  e->held_len = 0;
  take_frames(e, p, n);
  free(p);
}

void wd_engine_input(wd_engine_t *e, const uint8_t *p, size_t n, int64_t now_ms) {
  if (e->finished || n == 0) return;
  e->now = now_ms;
  e->last_in = now_ms;
  while (!e->header_in && n > 0) {
    if (*p != amqp_header[e->header_have]) {
      send_header(e);
      e->finished = true;
      if (!e->close_reported) {
        e->close_reported = true;
        if (e->h.on_close) e->h.on_close(e->ctx, false, framing_error, "not the AMQP 1.0 protocol header");
      }
      return;
    }
    p++;
    n--;
    if (++e->header_have == sizeof amqp_header) {
      e->header_in = true;
      send_header(e);
    }
  }
  if (e->held)
    hold(e, p, n);
  else
    take_frames(e, p, n);
  if (e->finished) {
    drop_input(e);
    free(e->held);
    e->held = NULL;
    e->held_len = 0;
  }
}

/* ------------------------------------------------------------ the engine */

wd_engine_t *wd_engine_new(const wd_engine_config_t *cfg, const wd_engine_handler_t *h, void *ctx) {
  wd_engine_t *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->cfg = *cfg;
  e->h = *h;
  e->ctx = ctx;
  e->max_frame = cfg->max_frame_size ? cfg->max_frame_size : DEFAULT_MAX_FRAME;
  if (e->max_frame < MIN_MAX_FRAME) e->max_frame = MIN_MAX_FRAME;
  e->peer_max_frame = MIN_MAX_FRAME;
  return e;
}

void wd_engine_free(wd_engine_t *e) {
  if (!e) return;
  drop_all(e);
  drop_input(e);
  free(e->held);
  free(e);
}

void wd_engine_flush(wd_engine_t *e) {
  if (e->disp.active || e->flows_pending) flush_pending(e);
}

int64_t wd_engine_tick(wd_engine_t *e, int64_t now_ms) {
  e->now = now_ms;
  if (!can_write(e) || !e->open_in || !e->open_out) return INT64_MAX;
  int64_t next = INT64_MAX;
  if (e->local_idle_ms) {
    int64_t deadline = e->last_in + e->local_idle_ms;
    if (now_ms >= deadline) {
      fail(e, resource_limit, "local-idle-timeout expired");
      return INT64_MAX;
    }
    next = deadline;
  }
  if (e->peer_idle_ms) {
    int64_t every = e->peer_idle_ms / 2 ? e->peer_idle_ms / 2 : 1;
    if (now_ms - e->last_out >= every) {
      wd_engine_flush(e);
      if (now_ms - e->last_out >= every) write_raw(e, empty_frame, sizeof empty_frame);
    }
    if (e->last_out + every < next) next = e->last_out + every;
  }
  return next;
}

void wd_engine_open(wd_engine_t *e, uint32_t idle_ms, int64_t now_ms) {
  if (e->open_out || !can_write(e)) return;
  e->now = now_ms;
  e->last_in = now_ms; /* the peer's time-out is counted from warden's open */
  e->local_idle_ms = idle_ms;
  write_open(e, idle_ms);
  resume_held(e);
}

void wd_engine_close(wd_engine_t *e, const char *condition, const char *description) {
  if (!can_write(e)) return;
  if (!e->open_out) write_open(e, 0);
  write_close(e, condition, description); /* after the pending settles and flows */
  resume_held(e); /* the peer's close may be among them */
}

bool wd_engine_finished(const wd_engine_t *e) { return e->finished; }

uint64_t wd_engine_frames_in(const wd_engine_t *e) { return e->frames_in; }

/* ------------------------------------------------------------------ links */

bool wd_engine_link_inbound(const wd_engine_link_t *l) { return l->inbound; }

const char *wd_engine_link_address(const wd_engine_link_t *l) { return l->inbound ? l->target : l->source; }

const char *wd_engine_link_name(const wd_engine_link_t *l) { return l->strings; }

int wd_engine_link_snd_settle_mode(const wd_engine_link_t *l) { return l->snd_settle_mode; }

void wd_engine_link_set_context(wd_engine_link_t *l, void *ctx) { l->ctx = ctx; }

void *wd_engine_link_get_context(const wd_engine_link_t *l) { return l->ctx; }

wd_engine_t *wd_engine_link_engine(const wd_engine_link_t *l) { return l->engine; }

void wd_engine_link_open(wd_engine_link_t *l, uint32_t max_message_size) {
  wd_engine_t *e = l->engine;
  if (l->attach_sent || !can_write(e)) return;
  l->attach_sent = true;
  l->opened = true;
  l->max_message_size = l->inbound ? max_message_size : 0;
  write_attach(e, l, false);
}

void wd_engine_link_refuse(wd_engine_link_t *l, const char *condition, const char *description) {
  wd_engine_t *e = l->engine;
  if (l->attach_sent || !can_write(e)) return;
  l->attach_sent = true;
  l->detach_sent = true;
  write_attach(e, l, true);
  write_detach(e, l, true, condition, description);
}

void wd_engine_link_close(wd_engine_link_t *l, const char *condition, const char *description) {
  wd_engine_t *e = l->engine;
  if (!wd_engine_link_active(l) || !can_write(e)) return;
  l->detach_sent = true;
  cancel_flow(l);
  drop_partial(l);
  write_detach(e, l, true, condition, description);
}

bool wd_engine_link_active(const wd_engine_link_t *l) { return l->opened && !l->detach_sent; }

int wd_engine_link_credit(const wd_engine_link_t *l) {
  if (l->inbound) return (int)l->credit;
  if (!wd_engine_link_active(l)) return 0;
  uint32_t window = window_left(l->session);
  return (int)(l->credit < window ? l->credit : window);
}

void wd_engine_link_flow(wd_engine_link_t *l, int n) {
  if (!l->inbound || n <= 0 || !wd_engine_link_active(l) || !can_write(l->engine)) return;
  l->credit = (uint32_t)n > CREDIT_MAX - l->credit ? CREDIT_MAX : l->credit + (uint32_t)n;
  want_flow(l);
}

bool wd_engine_link_draining(const wd_engine_link_t *l) { return !l->inbound && l->draining; }

void wd_engine_link_drained(wd_engine_link_t *l) {
  if (l->inbound || !l->draining || !wd_engine_link_active(l) || !can_write(l->engine)) return;
  if (l->drain_answered && l->credit == 0) return; /* said already: the owner pumps often */
  l->drain_answered = true;
  l->delivery_count += l->credit;
  l->credit = 0;
  want_flow(l);
}

/* One transfer frame of a delivery: the performative, then its share of head and body. */
static void write_transfer(wd_engine_t *e, const wd_engine_link_t *l, uint32_t id, const uint8_t *tag, size_t tag_len,
                           bool first, bool settled, bool more, const uint8_t *a, size_t a_len, const uint8_t *b,
                           size_t b_len) {
  uint8_t stack[FRAME_STACK];
  enc_t w;
  enc_init(&w, stack, sizeof stack, 0);
  size_t at = begin_performative(&w, TRANSFER);
  put_uint(&w, l->handle);
  /* Continuations leave out the id and tag: old rhea takes a repeated id for a new delivery. */
  if (first) {
    put_uint(&w, id);
    put_variable(&w, 0xa0, tag, tag_len);
    put_uint(&w, 0); /* message-format */
  } else {
    put_null(&w);
    put_null(&w);
    put_null(&w);
  }
  put_bool(&w, settled);
  put_bool(&w, more);
  end_list(&w, at, 6);
  /* Small frames go out in one write; larger ones as performative, then the bytes. */
  if (w.cap - w.n >= a_len + b_len) {
    put(&w, a, a_len);
    put(&w, b, b_len);
    if (e->disp.active || e->flows_pending) flush_pending(e);
    emit(e, &w, l->session->channel, NULL, 0);
    return;
  }
  if (e->disp.active || e->flows_pending) flush_pending(e);
  if (w.over) {
    emit(e, &w, l->session->channel, NULL, 0);
    return;
  }
  send_header(e);
  store_be32(w.b, (uint32_t)(w.n + a_len + b_len));
  w.b[4] = 2;
  w.b[5] = 0;
  w.b[6] = (uint8_t)(l->session->channel >> 8);
  w.b[7] = (uint8_t)l->session->channel;
  bool ok = write_raw(e, w.b, w.n);
  if (ok && a_len) ok = write_raw(e, a, a_len);
  if (ok && b_len) write_raw(e, b, b_len);
  enc_fini(&w);
}

/* The transfer frames a message of total bytes takes at the peer's max-frame-size. */
static size_t frames_for(const wd_engine_t *e, size_t total) {
  size_t chunk = e->peer_max_frame - TRANSFER_OVERHEAD;
  return total == 0 ? 1 : (total - 1) / chunk + 1;
}

bool wd_engine_link_fits(const wd_engine_link_t *l, size_t len) {
  return !l->inbound && wd_engine_link_active(l) && can_write(l->engine) && l->credit > 0 &&
         frames_for(l->engine, len) <= window_left(l->session);
}

int wd_engine_send(wd_engine_link_t *l, const uint8_t *tag, size_t tag_len, const void *head, size_t head_len,
                   const void *body, size_t body_len, bool settled, wd_engine_delivery_t *d) {
  wd_engine_t *e = l->engine;
  session_t *s = l->session;
  size_t total = head_len + body_len;
  if (tag_len > TAG_MAX || !wd_engine_link_fits(l, total)) return -1;
  size_t chunk = e->peer_max_frame - TRANSFER_OVERHEAD;
  size_t frames = frames_for(e, total);
  uint32_t id = s->next_delivery_out;
  if (!settled) {
    if (s->n_sent == s->cap_sent) {
      uint32_t cap = s->cap_sent ? s->cap_sent * 2 : 4;
      sent_t *grown = realloc(s->sent, cap * sizeof *grown);
      if (!grown) return -1;
      s->sent = grown;
      s->cap_sent = cap;
    }
    sent_t *x = &s->sent[s->n_sent++];
    *x = (sent_t){.link = l, .id = id, .tag_len = (uint8_t)tag_len};
    if (tag_len) memcpy(x->tag, tag, tag_len);
  }
  s->next_delivery_out++;
  const uint8_t *hp = head, *bp = body;
  size_t sent = 0;
  for (size_t i = 0; i < frames; i++) {
    size_t len = total - sent < chunk ? total - sent : chunk;
    /* This frame's bytes: what is left of head, then of body. */
    size_t from_head = sent < head_len ? (head_len - sent < len ? head_len - sent : len) : 0;
    const uint8_t *a = from_head ? hp + sent : NULL;
    size_t body_at = sent + from_head - head_len;
    const uint8_t *b = len - from_head ? bp + body_at : NULL;
    write_transfer(e, l, id, tag, tag_len, i == 0, settled, i + 1 < frames, a, from_head, b, len - from_head);
    sent += len;
  }
  s->next_outgoing_id += (uint32_t)frames;
  l->credit--;
  l->delivery_count++;
  if (d) *d = (wd_engine_delivery_t){.session = s->serial, .id = id, .outbound = true};
  return e->broken ? -1 : 0;
}

/* Queues a settle of inbound deliveries, joined with the pending range when it continues it. */
static void queue_settle(wd_engine_t *e, session_t *s, bool receiver, uint32_t id, uint8_t state) {
  if (e->disp.active && e->disp.session == s && e->disp.receiver == receiver && e->disp.state == state &&
      id == e->disp.last + 1) {
    e->disp.last = id;
    return;
  }
  if (e->disp.active) flush_pending(e);
  e->disp.session = s;
  e->disp.receiver = receiver;
  e->disp.first = e->disp.last = id;
  e->disp.state = state;
  e->disp.active = true;
}

void wd_engine_settle(wd_engine_t *e, wd_engine_delivery_t d, wd_engine_state_t state, const char *condition,
                      const char *description) {
  session_t *s = session_by_serial(e, d.session);
  if (!s || !can_write(e)) return;
  if (d.outbound) {
    int64_t at = find_sent(s, d.id);
    if (at < 0 || s->sent[at].peer_settled) return;
    uint8_t peer_state = s->sent[at].state;
    remove_sent(s, (uint32_t)at);
    /* A modified or rejected outcome has fields; the peer has them already. */
    queue_settle(e, s, false, d.id, peer_state == ACCEPTED || peer_state == RELEASED ? peer_state : 0);
    return;
  }
  /* A link detached (by either side) takes its deliveries' settlement with it. */
  wd_engine_link_t *l = s->links;
  while (l && !(l->inbound && !l->detach_sent && clear_unsettled(l, d.id))) l = l->next;
  if (!l) return;
  uint8_t code = state == WD_ENGINE_ACCEPTED   ? ACCEPTED
                 : state == WD_ENGINE_REJECTED ? REJECTED
                 : state == WD_ENGINE_RELEASED ? RELEASED
                 : state == WD_ENGINE_MODIFIED ? MODIFIED
                                               : 0;
  if (code == REJECTED && condition) {
    uint8_t stack[FRAME_STACK];
    enc_t w;
    enc_init(&w, stack, sizeof stack, error_size(condition, description) + 48);
    encode_disposition(&w, true, d.id, d.id, REJECTED, condition, description);
    send_frame(e, &w, s->channel);
    return;
  }
  queue_settle(e, s, true, d.id, code);
}

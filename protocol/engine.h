#ifndef WD_PROTOCOL_ENGINE_H
#define WD_PROTOCOL_ENGINE_H

/* warden's own AMQP 1.0 engine for device connections (decision 8, stage 2).
 *
 * It serves one connection after SASL: the AMQP protocol header, then open,
 * begin, attach, flow, transfer, disposition, detach, end, close and empty
 * frames, as a server. It keeps only what a device's addresses need - a few
 * sessions, a few links, transfers up to a link's max_message_size - and no
 * buffer while the connection is idle: an idle connection holds the engine
 * struct, its sessions and its links (a few hundred bytes), against ~23 KiB
 * for Proton's engine.
 *
 * It does no I/O and takes no locks: its owner feeds it the bytes the peer
 * sent (wd_engine_input), and it writes frames through the owner's `write`
 * callback as it produces them. Everything of one engine runs on one thread
 * at a time (the connection's raw connection events).
 *
 * Performatives are decoded with Proton's codec (pn_data_t, one per thread),
 * so no AMQP type decoding is hand-written; the few frames it writes are
 * encoded directly.
 *
 * Violations of the protocol by the peer close the connection with an AMQP
 * error condition (amqp:connection:framing-error, amqp:decode-error,
 * amqp:invalid-field, amqp:not-allowed, amqp:session:unattached-handle, ...):
 * nothing a peer sends may crash, assert or grow memory without bound. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct wd_engine wd_engine_t;
typedef struct wd_engine_link wd_engine_link_t;

/* One delivery, for settling it later. Stays valid after its link detaches
 * or its session ends; settling it then does nothing. */
typedef struct {
  uint32_t session; /* the session's serial within the engine (not its channel) */
  uint32_t id;      /* its delivery-id */
  bool outbound;    /* warden sent it (a device's command) */
} wd_engine_delivery_t;

typedef enum {
  WD_ENGINE_NONE = 0, /* no outcome: a settle without a state */
  WD_ENGINE_ACCEPTED,
  WD_ENGINE_REJECTED,
  WD_ENGINE_RELEASED,
  WD_ENGINE_MODIFIED,
} wd_engine_state_t;

/* What the peer said of a delivery warden sent. */
typedef struct {
  wd_engine_state_t state;
  bool settled;            /* the peer settled it: it is forgotten once the callback returns */
  bool delivery_failed;    /* modified only */
  bool undeliverable_here; /* modified only */
  const uint8_t *tag;      /* the delivery-tag warden gave it */
  size_t tag_len;
} wd_engine_outcome_t;

typedef struct {
  /* Writes bytes for the peer; < 0 when it cannot (the engine then stops). */
  int (*write)(void *ctx, const uint8_t *p, size_t n);
  /* The peer's open arrived. The owner answers with wd_engine_open or
     wd_engine_close, in the callback or later. idle_ms: the peer's
     idle-time-out (0: none). */
  void (*on_open)(void *ctx, uint32_t peer_idle_ms);
  /* The peer attached a link. The owner answers with wd_engine_link_open or
     wd_engine_link_refuse before returning. */
  void (*on_attach)(void *ctx, wd_engine_link_t *l);
  /* An outbound link's credit (or its session's window) grew, or the peer
     asked it to drain. */
  void (*on_flow)(void *ctx, wd_engine_link_t *l);
  /* A whole message arrived on an inbound link (its last transfer frame).
     msg and len are valid during the call only. msg is NULL when there is no
     message to take, and the owner may grant the credit again: the engine
     refused it (len: its size, over the link's max_message_size; it was
     rejected with amqp:link:message-size-exceeded, or dropped if the peer had
     settled it), or the peer aborted it (len 0, settled). d.outbound is
     false; a settled delivery (the peer pre-settled it) needs no settle. */
  void (*on_message)(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, bool settled, const uint8_t *msg,
                     size_t len);
  /* The peer updated or settled a delivery sent on an outbound link. */
  void (*on_outcome)(void *ctx, wd_engine_link_t *l, wd_engine_delivery_t d, const wd_engine_outcome_t *o);
  /* The link is gone: the peer detached it, ended its session or closed the
     connection, or the engine is being freed. Its deliveries warden sent and
     the peer did not settle get no on_outcome any more. The link's memory is
     freed after the call. */
  void (*on_detach)(void *ctx, wd_engine_link_t *l);
  /* The connection is closing: the peer sent close (by_peer, with its
     condition or NULL), or the engine closed it (a protocol violation, or the
     local idle time-out expired) with that condition. Called once. */
  void (*on_close)(void *ctx, bool by_peer, const char *condition, const char *description);
} wd_engine_handler_t;

typedef struct {
  const char *container_id; /* warden's, in its open */
  uint32_t max_frame_size;  /* warden's; 0: 64 KiB. At least 512. */
  uint16_t channel_max;     /* highest channel warden accepts */
  uint32_t max_links;       /* attached at once per connection, refused links included; beyond: closed */
} wd_engine_config_t;

/* NULL when out of memory. cfg is copied (container_id must outlive the engine). */
wd_engine_t *wd_engine_new(const wd_engine_config_t *cfg, const wd_engine_handler_t *h, void *ctx);
/* Detaches (on_detach) every link still attached, then frees everything. */
void wd_engine_free(wd_engine_t *e);

/* Takes n bytes from the peer, starting with its AMQP protocol header. Whole
 * frames are handled at once; a partial frame is kept. now_ms: monotonic. */
void wd_engine_input(wd_engine_t *e, const uint8_t *p, size_t n, int64_t now_ms);
/* Writes what settles and flows have left pending (they are coalesced). The
 * owner calls it after each batch of events, before the socket is written. */
void wd_engine_flush(wd_engine_t *e);
/* Sends heartbeats and applies the local idle time-out. Returns when it next
 * needs a tick (monotonic ms), INT64_MAX when never. */
int64_t wd_engine_tick(wd_engine_t *e, int64_t now_ms);

/* Answers the peer's open: warden's open with its idle-time-out (0: none). */
void wd_engine_open(wd_engine_t *e, uint32_t idle_ms, int64_t now_ms);
/* Closes the connection with a condition (NULL: none); sends an open first if
 * none was sent. Idempotent. */
void wd_engine_close(wd_engine_t *e, const char *condition, const char *description);
/* True once warden sent its close and has nothing more to say: the peer
 * answered, or will not be waited for (a protocol error, the idle time-out).
 * The owner ends the socket once the written bytes are gone. */
bool wd_engine_finished(const wd_engine_t *e);
/* Frames read so far (empty ones included). */
uint64_t wd_engine_frames_in(const wd_engine_t *e);

/* ------------------------------------------------------------------ links */

/* True for a link the peer sends on (warden receives; the address is its
   target); false for one warden sends on (the address is its source). */
bool wd_engine_link_inbound(const wd_engine_link_t *l);
/* The address the peer gave (NULL when it gave none). */
const char *wd_engine_link_address(const wd_engine_link_t *l);
const char *wd_engine_link_name(const wd_engine_link_t *l);
/* The peer's snd-settle-mode: 0 unsettled, 1 settled, 2 mixed. */
int wd_engine_link_snd_settle_mode(const wd_engine_link_t *l);
void wd_engine_link_set_context(wd_engine_link_t *l, void *ctx);
void *wd_engine_link_get_context(const wd_engine_link_t *l);
wd_engine_t *wd_engine_link_engine(const wd_engine_link_t *l);

/* Accepts an attach. Inbound: warden's receiver, rcv-settle-mode first,
 * refusing messages over max_message_size (0: no limit). Outbound: warden's
 * sender, snd-settle-mode unsettled. The source and target echo the peer's
 * addresses. */
void wd_engine_link_open(wd_engine_link_t *l, uint32_t max_message_size);
/* Refuses an attach: an attach with no terminus on warden's end, then a
 * detach with the condition. The link is gone once the peer detaches too. */
void wd_engine_link_refuse(wd_engine_link_t *l, const char *condition, const char *description);
/* Detaches an open link with a condition; it is gone once the peer answers. */
void wd_engine_link_close(wd_engine_link_t *l, const char *condition, const char *description);
/* Open, and not closed by warden. */
bool wd_engine_link_active(const wd_engine_link_t *l);

/* Inbound: credit warden granted that the peer has not used (negative never:
 * a peer that sends past its credit has its link closed with
 * amqp:link:transfer-limit-exceeded). Outbound: what warden may send now, the
 * peer's credit within its session's incoming window. */
int wd_engine_link_credit(const wd_engine_link_t *l);
/* Inbound: grants n more credit (a flow, coalesced until wd_engine_flush). */
void wd_engine_link_flow(wd_engine_link_t *l, int n);
/* Outbound: the peer asked for a drain. */
bool wd_engine_link_draining(const wd_engine_link_t *l);
/* Outbound: after sending what it has, warden uses up the rest of a draining
 * link's credit (a flow with drain). Nothing when not draining. */
void wd_engine_link_drained(wd_engine_link_t *l);
/* Outbound: whether a message of len bytes could be sent now: there is
 * credit, and its session's incoming window has room for all its frames. */
bool wd_engine_link_fits(const wd_engine_link_t *l, size_t len);
/* Outbound: sends one message, the bytes of head followed by those of body,
 * in as many transfer frames as the peer's max-frame-size needs, with a
 * delivery-tag of tag_len <= 32 bytes. Unsettled unless `settled`. Returns 0,
 * or < 0 without sending when there is no credit or the link is not active.
 * *d receives the delivery (may be NULL). */
int wd_engine_send(wd_engine_link_t *l, const uint8_t *tag, size_t tag_len, const void *head, size_t head_len,
                   const void *body, size_t body_len, bool settled, wd_engine_delivery_t *d);

/* Settles a delivery. Inbound: with state ACCEPTED, or REJECTED with the
 * condition (NULL: none), or NONE. Outbound: the peer's outcome was recorded;
 * warden settles it too (state ignored). Pending settles of consecutive
 * deliveries with the same state go out as one disposition at the next flush.
 * Settling a delivery whose session ended, or twice, does nothing. */
void wd_engine_settle(wd_engine_t *e, wd_engine_delivery_t d, wd_engine_state_t state, const char *condition,
                      const char *description);

/* Frees the calling thread's decoder (for threads that end before the process). */
void wd_engine_thread_done(void);

#endif

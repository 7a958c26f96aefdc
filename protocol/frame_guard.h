#ifndef WD_PROTOCOL_FRAME_GUARD_H
#define WD_PROTOCOL_FRAME_GUARD_H

/* Reads what a service sends after SASL - the AMQP protocol header and every
 * frame - before Proton does, and stops the frames Proton 0.37 cannot take.
 * (Devices are served by warden's own engine, protocol/engine.c.)
 *
 * One such frame is known: a transfer with more=true and no delivery-id that
 * does not continue a multi-frame delivery on its link. Proton then fails
 * `assert(id_present)` in pn_do_transfer and, built with assertions as Debian
 * builds it, aborts the whole process. The spec requires the delivery-id on
 * the first frame of a delivery, so no correct peer sends it.
 *
 * The guard mirrors Proton's per-link "multi-frame delivery in progress" flag
 * from the frames alone. Where it cannot be sure the flag is set, it takes it
 * as clear, which can only make it stricter than Proton.
 *
 * The bytes may arrive in any pieces. Frames are judged in place when the
 * piece holds them; only a performative split between pieces is copied. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Links with a multi-frame delivery in progress that the guard remembers.
 * Forgetting one is safe: its next frame must then carry a delivery-id. */
#define WD_GUARD_PENDING_MAX 8

/* The most of a frame body the guard reads: a transfer's fields up to
 * `aborted` fit unless its delivery-tag is far beyond the spec's 32 bytes. */
#define WD_GUARD_WINDOW 256

typedef struct {
  uint8_t phase;
  uint16_t channel;
  uint32_t have;      /* bytes gathered into `buf` for the current piece */
  uint32_t body_left; /* bytes of the current frame's body not yet read */
  uint64_t skip;      /* bytes to pass unread before the next phase */
  uint8_t *buf;       /* allocated the first time a piece straddles two reads */
  uint8_t n_pending;
  struct {
    uint16_t channel;
    uint32_t handle;
  } pending[WD_GUARD_PENDING_MAX];
} wd_frame_guard_t;

void wd_frame_guard_init(wd_frame_guard_t *g);
void wd_frame_guard_fini(wd_frame_guard_t *g);

/* Reads the next n bytes from the peer. Returns NULL while they may go on to
 * Proton; otherwise why they may not, and the connection must end (all later
 * calls fail too). `condition` receives the AMQP error condition to report. */
const char *wd_frame_guard_feed(wd_frame_guard_t *g, const uint8_t *p, size_t n, const char **condition);

#endif

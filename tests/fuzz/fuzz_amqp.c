/* libFuzzer target: bytes from the network into warden's AMQP handlers.
 *
 * Input: one control byte, then the bytes a peer sends on one connection.
 *   control % 4         who the peer is (fh_mode_t): 0 nobody - the bytes
 *                       start with the SASL or AMQP header; 1 the service
 *                       "svc"; 2 device dev-1; 3 device dev-2. For 1..3 the
 *                       harness first sends a valid login (SASL header, PLAIN
 *                       sasl-init, AMQP header) and the bytes are AMQP frames,
 *                       starting with the peer's open.
 *   (control >> 2) % 4  how the bytes arrive: 0 frame by frame, as a client
 *                       that waits for answers sends them (the seeds are
 *                       recorded that way); 1 all at once; 2 and 3 in pieces
 *                       of 64 and 5 bytes. Events are handled between pieces.
 * Then the peer disconnects. Seeds: corpus/fuzz_amqp, made by fuzz_seedgen.
 *
 * Frames that would trip Qpid Proton 0.37's assertion in pn_do_transfer are
 * not skipped: warden's frame guard must stop every one of them. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "amqp_harness.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (fh_init() < 0) {
    fprintf(stderr, "fuzz_amqp: cannot set up the server\n");
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t chunks[4] = {FH_FRAMES, SIZE_MAX, 64, 5};
  if (size < 1) return 0;
  fh_serve((fh_mode_t)(data[0] % FH_N_MODES), data + 1, size - 1, chunks[(data[0] >> 2) & 3]);
  return 0;
}

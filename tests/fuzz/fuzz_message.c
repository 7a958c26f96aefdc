/* libFuzzer target: the byte-level rewrite of messages (protocol/message.c)
 * that every telemetry message, inquiry, response and command goes through.
 *
 * Input: a control byte, then an encoded AMQP message (its sections, as a
 * transfer carries them). Runs wd_msg_skip_value, wd_msg_annotate and one
 * wd_msg_rewrite whose options come from the control byte:
 *   bit 0 drop_header, bit 1 strip_reserved, bit 2 set a message-id,
 *   bits 3-5 which of three annotations to add.
 * Checks: the sequence-number slot lies inside the output (the store writes 8
 * bytes there), and a message Proton can decode still decodes after the
 * rewrite, with warden's x-opt-device-id in its annotations. */

#include <proton/codec.h>
#include <proton/message.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "gateway/base/err.h"
#include "protocol/message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool decodes(const uint8_t *p, size_t len) {
  if (len == 0) return false; /* Proton asserts on an empty buffer */
  pn_message_t *m = pn_message();
  bool ok = m && pn_message_decode(m, (const char *)p, len) == 0;
  pn_message_free(m);
  return ok;
}

/* The value of annotation `key` as a string, or "" (into out). */
static void annotation(const uint8_t *p, size_t len, const char *key, char *out, size_t cap) {
  out[0] = '\0';
  pn_message_t *m = pn_message();
  if (m && len && pn_message_decode(m, (const char *)p, len) == 0) {
    pn_data_t *ann = pn_message_annotations(m);
    pn_data_rewind(ann);
    if (pn_data_next(ann) && pn_data_type(ann) == PN_MAP) {
      pn_data_enter(ann);
      while (pn_data_next(ann)) {
        bool match = pn_data_type(ann) == PN_SYMBOL && pn_data_get_symbol(ann).size == strlen(key) &&
                     memcmp(pn_data_get_symbol(ann).start, key, strlen(key)) == 0;
        if (!pn_data_next(ann)) break;
        if (match && pn_data_type(ann) == PN_STRING) {
          pn_bytes_t v = pn_data_get_string(ann);
          snprintf(out, cap, "%.*s", (int)v.size, v.start);
        }
      }
    }
  }
  pn_message_free(m);
}

static void check_seq(const uint8_t *out, size_t out_len, size_t seq_offset) {
  if (seq_offset == SIZE_MAX) return;
  CHECK(seq_offset <= out_len && out_len - seq_offset >= 8, "sequence slot %zu in %zu bytes", seq_offset, out_len);
  uint8_t *w = (uint8_t *)out + seq_offset; /* what the store does with it */
  for (int i = 0; i < 8; i++) w[i] = (uint8_t)(0x11 * (i + 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t ctl = data[0];
  const uint8_t *in = data + 1;
  const size_t len = size - 1;

  for (const uint8_t *p = in; p && p < in + len;) p = wd_msg_skip_value(p, in + len);

  const bool valid_in = decodes(in, len);
  uint8_t *out = NULL;
  size_t out_len = 0, seq = SIZE_MAX;
  int rc = wd_msg_annotate(in, len, "dev-1", 1700000000123, &out, &out_len, &seq);
  CHECK(rc == WD_OK || rc == WD_ERR_INVALID || rc == WD_ERR_NOMEM, "wd_msg_annotate returned %d", rc);
  if (rc == WD_OK) {
    CHECK(seq != SIZE_MAX, "annotate gave no sequence slot");
    check_seq(out, out_len, seq);
    if (valid_in) {
      CHECK(decodes(out, out_len), "a message Proton decodes no longer decodes after wd_msg_annotate");
      char dev[64];
      annotation(out, out_len, "x-opt-device-id", dev, sizeof dev);
      CHECK(strcmp(dev, "dev-1") == 0, "x-opt-device-id is '%s' after wd_msg_annotate", dev);
    }
    free(out);
  }

  const wd_msg_ann_t all[] = {
      {"x-opt-device-id", WD_ANN_STRING, "dev-2", 0},
      {"x-opt-enqueued-time", WD_ANN_TIMESTAMP, NULL, -1},
      {"x-opt-sequence-number", WD_ANN_SEQUENCE, NULL, 0},
  };
  wd_msg_ann_t add[3];
  size_t n_add = 0;
  for (int i = 0; i < 3; i++)
    if (ctl & (8 << i)) add[n_add++] = all[i];
  const wd_msg_rewrite_t how = {
      .drop_header = ctl & 1,
      .strip_reserved = ctl & 2,
      .message_id = ctl & 4 ? "fuzz-message-id" : NULL,
      .add = add,
      .n_add = n_add,
  };
  out = NULL;
  seq = SIZE_MAX;
  rc = wd_msg_rewrite(in, len, &how, &out, &out_len, &seq);
  CHECK(rc == WD_OK || rc == WD_ERR_INVALID || rc == WD_ERR_NOMEM, "wd_msg_rewrite returned %d", rc);
  if (rc == WD_OK) {
    CHECK((seq != SIZE_MAX) == ((ctl & 32) != 0), "sequence slot %s",
          seq != SIZE_MAX ? "given but not asked for" : "asked for but not given");
    check_seq(out, out_len, seq);
    /* Dropping the header of a message that was only a header leaves nothing, which is fine. */
    if (valid_in && out_len > 0)
      CHECK(decodes(out, out_len), "a message Proton decodes no longer decodes after wd_msg_rewrite");
    free(out);
  }
  return 0;
}

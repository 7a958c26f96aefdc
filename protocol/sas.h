#ifndef WD_PROTOCOL_SAS_H
#define WD_PROTOCOL_SAS_H

/* Shared access signatures, exactly as Azure IoT Hub writes them:
 *   SharedAccessSignature sr=<enc(resource)>&sig=<enc(base64(HMAC-SHA256(key, enc(resource) "\n" se)))>&se=<expiry>
 * with resource = <hostname>/devices/<device id>. */

#include <stddef.h>
#include <stdint.h>

#include "gateway/base/util.h"

/* Checks `token` for `device_id` against its key. Returns 0 and sets
 * *expiry_s, or WD_ERR_INVALID (malformed), WD_ERR_DENIED (wrong resource,
 * wrong signature or expired at now_s), WD_ERR_NOMEM. */
int wd_sas_verify(const char *token, const char *hostname, const char *device_id,
                  const uint8_t key[WD_KEY_BYTES], int64_t now_s, int64_t *expiry_s);

/* Builds a token valid until expiry_s. Returns returned-owned, or NULL. */
char *wd_sas_build(const char *hostname, const char *device_id, const uint8_t key[WD_KEY_BYTES],
                   int64_t expiry_s);

#endif

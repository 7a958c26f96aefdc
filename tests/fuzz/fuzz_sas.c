/* libFuzzer target: SAS token parsing and checking (protocol/sas.c), the
 * password of every device that logs in with PLAIN.
 *
 * Input: the token, as the device's PLAIN password arrives (NUL-terminated
 * here; a PLAIN password holds no NUL). It is checked for device dev-1 of
 * hub.example.com with a fixed key at a fixed time, so seeds made by
 * fuzz_seedgen with wd_sas_build stay valid. A token that verifies must have
 * been signed for exactly that resource: nothing else may pass. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "fuzz_values.h"
#include "gateway/base/err.h"
#include "protocol/sas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *token = fz_strndup(data, size);
  int64_t expiry = -1;
  int rc = wd_sas_verify(token, FZ_SAS_HOSTNAME, FZ_SAS_DEVICE, fz_sas_key, FZ_NOW_S, &expiry);
  if (rc != WD_OK && rc != WD_ERR_INVALID && rc != WD_ERR_DENIED && rc != WD_ERR_NOMEM) {
    fprintf(stderr, "wd_sas_verify returned %d, which it never should\n", rc);
    abort();
  }
  if (rc == WD_OK && expiry < FZ_NOW_S) {
    fprintf(stderr, "wd_sas_verify accepted a token that expired at %lld\n", (long long)expiry);
    abort();
  }
  /* The same token for another device must not verify: the resource is signed. */
  if (rc == WD_OK && wd_sas_verify(token, FZ_SAS_HOSTNAME, "dev-2", fz_sas_key, FZ_NOW_S, &expiry) == WD_OK) {
    fprintf(stderr, "a token for %s also verified for dev-2\n", FZ_SAS_DEVICE);
    abort();
  }
  free(token);
  return 0;
}

/* libFuzzer target: bearer JWT verification (http/jwt.c), which every REST
 * request with a token that is not a service secret reaches.
 *
 * Input: the token (NUL-terminated here, as a header value is). It is
 * verified against a fixed ES256 key, issuer and audience at a fixed time, so
 * that the valid tokens fuzz_seedgen signs stay valid. A token that verifies
 * must carry only known scopes and valid ids. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "fuzz_values.h"
#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "http/auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const wd_jwt_config_t cfg = {
      .issuer = FZ_JWT_ISSUER,
      .audience = FZ_JWT_AUDIENCE,
      .public_key_pem = fz_jwt_public_pem,
      .public_key_len = sizeof fz_jwt_public_pem - 1,
  };
  char *token = fz_strndup(data, size);
  wd_http_principal_t p;
  memset(&p, 0, sizeof p);
  int rc = wd_http__jwt_verify(&cfg, token, FZ_NOW_S, &p);
  if (rc != WD_OK && rc != WD_ERR_DENIED && rc != WD_ERR_NOMEM) {
    fprintf(stderr, "wd_http__jwt_verify returned %d\n", rc);
    abort();
  }
  if (rc == WD_OK) {
    if ((p.scopes & ~(unsigned)WD_SCOPE_ALL) != 0) {
      fprintf(stderr, "unknown scope bits 0x%x granted\n", p.scopes);
      abort();
    }
    for (size_t i = 0; i < p.n_devices; i++)
      if (!wd_id_valid(p.devices[i])) {
        fprintf(stderr, "device '%s' in a verified token is not an id\n", p.devices[i]);
        abort();
      }
    for (size_t i = 0; i < p.n_groups; i++)
      if (!wd_id_valid(p.groups[i])) {
        fprintf(stderr, "group '%s' in a verified token is not an id\n", p.groups[i]);
        abort();
      }
  }
  wd_http_principal_fini(&p);
  free(token);
  return 0;
}

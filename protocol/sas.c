#include "protocol/sas.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/base/err.h"

static const char prefix[] = "SharedAccessSignature ";

#define MAX_FIELD 1024

/* Copies the value of field `name` (undecoded) from the &-separated list. */
static int field(const char *list, const char *name, char *out, size_t cap) {
  size_t nlen = strlen(name);
  const char *p = list;
  int found = 0;
  while (*p) {
    size_t n = strcspn(p, "&");
    if (n > nlen && p[nlen] == '=' && strncmp(p, name, nlen) == 0) {
      if (found++ || n - nlen - 1 >= cap) return WD_ERR_INVALID; /* repeated or too long */
      memcpy(out, p + nlen + 1, n - nlen - 1);
      out[n - nlen - 1] = '\0';
    }
    p += n;
    if (*p == '&') p++;
  }
  return found ? WD_OK : WD_ERR_INVALID;
}

/* Computes the signature; false (and nothing usable in mac) when out of memory. */
static bool sign(const uint8_t key[WD_KEY_BYTES], const char *sr_encoded, const char *se, uint8_t mac[32]) {
  size_t len = strlen(sr_encoded) + 1 + strlen(se);
  char *msg = malloc(len + 1);
  unsigned int mac_len = 32;
  if (!msg) return false;
  sprintf(msg, "%s\n%s", sr_encoded, se);
  bool ok = HMAC(EVP_sha256(), key, WD_KEY_BYTES, (const unsigned char *)msg, len, mac, &mac_len) != NULL;
  free(msg);
  return ok && mac_len == 32;
}

int wd_sas_verify(const char *token, const char *hostname, const char *device_id,
                  const uint8_t key[WD_KEY_BYTES], int64_t now_s, int64_t *expiry_s) {
  if (strncmp(token, prefix, sizeof prefix - 1) != 0) return WD_ERR_INVALID;
  const char *list = token + sizeof prefix - 1;
  char sr_raw[MAX_FIELD], sr[MAX_FIELD], sig[MAX_FIELD], se[32];
  if (field(list, "sr", sr_raw, sizeof sr_raw) < 0 || field(list, "sig", sig, sizeof sig) < 0 ||
      field(list, "se", se, sizeof se) < 0)
    return WD_ERR_INVALID;

  char *end;
  long long expiry = strtoll(se, &end, 10);
  if (!se[0] || *end || expiry <= 0) return WD_ERR_INVALID;

  memcpy(sr, sr_raw, sizeof sr);
  if (wd_url_decode(sr) < 0 || wd_url_decode(sig) < 0) return WD_ERR_INVALID;
  /* The resource names this device on this gateway; host names compare without case. */
  size_t hlen = strlen(hostname);
  if (strncasecmp(sr, hostname, hlen) != 0 || strncmp(sr + hlen, "/devices/", 9) != 0 ||
      strcmp(sr + hlen + 9, device_id) != 0)
    return WD_ERR_DENIED;

  uint8_t given[64];
  int glen = wd_base64_decode(sig, strlen(sig), given, sizeof given);
  if (glen < 0) return WD_ERR_INVALID;
  uint8_t mac[32];
  /* IoT Hub signs the resource as it appears, URL-encoded, in the token. */
  if (!sign(key, sr_raw, se, mac)) return WD_ERR_NOMEM;
  bool ok = wd_secure_equal(mac, sizeof mac, given, (size_t)glen);
  explicit_bzero(mac, sizeof mac);
  if (!ok || expiry <= now_s) return WD_ERR_DENIED;
  if (expiry_s) *expiry_s = expiry;
  return WD_OK;
}

char *wd_sas_build(const char *hostname, const char *device_id, const uint8_t key[WD_KEY_BYTES],
                   int64_t expiry_s) {
  size_t rlen = strlen(hostname) + 9 + strlen(device_id);
  char *resource = malloc(rlen + 1);
  if (!resource) return NULL;
  snprintf(resource, rlen + 1, "%s/devices/%s", hostname, device_id);
  char *sr = wd_url_encode(resource);
  free(resource);
  if (!sr) return NULL;
  char se[24];
  snprintf(se, sizeof se, "%lld", (long long)expiry_s);
  uint8_t mac[32];
  if (!sign(key, sr, se, mac)) {
    free(sr);
    return NULL;
  }
  char b64[64];
  wd_base64_encode(mac, sizeof mac, b64);
  char *sig = wd_url_encode(b64);
  char *token = NULL;
  if (sig) {
    size_t len = sizeof prefix + strlen(sr) + strlen(sig) + strlen(se) + 16;
    token = malloc(len);
    if (token) snprintf(token, len, "%ssr=%s&sig=%s&se=%s", prefix, sr, sig, se);
  }
  free(sr);
  free(sig);
  return token;
}

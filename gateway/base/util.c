#include "gateway/base/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "gateway/base/err.h"

const char *wd_err_str(int rc) {
  switch (rc) {
    case WD_OK: return "ok";
    case WD_ERR_NOMEM: return "out of memory";
    case WD_ERR_INVALID: return "invalid input";
    case WD_ERR_NOT_FOUND: return "not found";
    case WD_ERR_EXISTS: return "already exists";
    case WD_ERR_FULL: return "store full";
    case WD_ERR_IO: return "I/O error";
    case WD_ERR_CORRUPT: return "store corrupt or of an unknown format";
    case WD_ERR_SHUTDOWN: return "shutting down";
    case WD_ERR_DENIED: return "access denied";
    case WD_ERR_LIMIT: return "limit reached";
    case WD_ERR_DISABLED: return "device disabled";
    case WD_ERR_BUSY: return "store nearly full";
    case WD_ERR_TOO_BIG: return "message too large";
    case WD_ERR_IN_USE: return "in use by another process";
    default: return rc > 0 ? "ok" : "unknown error";
  }
}

int64_t wd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wd_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t wd_mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool wd_id_valid(const char *s) {
  size_t n = 0;
  for (; s[n]; n++) {
    char c = s[n];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == ':' || c == '-';
    if (!ok || n >= WD_ID_MAX) return false;
  }
  return n > 0;
}

bool wd_thumbprint_valid(const char *s) {
  size_t n = 0;
  for (; s[n]; n++) {
    if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return false;
  }
  return n == WD_THUMBPRINT_HEX;
}

int wd_random_bytes(void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return WD_ERR_IO;
    }
    p += n;
    len -= (size_t)n;
  }
  return WD_OK;
}

bool wd_secure_equal(const void *a, size_t alen, const void *b, size_t blen) {
  const volatile uint8_t *x = a, *y = b;
  size_t n = alen < blen ? alen : blen;
  uint8_t diff = alen != blen;
  for (size_t i = 0; i < n; i++) diff |= x[i] ^ y[i];
  return diff == 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t wd_base64_encoded_len(size_t len) { return (len + 2) / 3 * 4 + 1; }

void wd_base64_encode(const void *in, size_t len, char *out) {
  const uint8_t *p = in;
  size_t i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    *out++ = b64[v >> 18];
    *out++ = b64[(v >> 12) & 63];
    *out++ = b64[(v >> 6) & 63];
    *out++ = b64[v & 63];
  }
  if (i < len) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
    *out++ = b64[v >> 18];
    *out++ = b64[(v >> 12) & 63];
    *out++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
    *out++ = '=';
  }
  *out = '\0';
}

static int b64_value(char c) {
  const char *p = c ? strchr(b64, c) : NULL;
  return p ? (int)(p - b64) : -1;
}

int wd_base64_decode(const char *in, size_t inlen, uint8_t *out, size_t outcap) {
  if (inlen % 4 != 0) return WD_ERR_INVALID;
  size_t n = 0;
  for (size_t i = 0; i < inlen; i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; j++) {
      char c = in[i + j];
      if (c == '=' && i + 4 == inlen && j >= 2) {
        v[j] = 0;
        pad++;
      } else {
        if (pad) return WD_ERR_INVALID; /* data after padding */
        v[j] = b64_value(c);
        if (v[j] < 0) return WD_ERR_INVALID;
      }
    }
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
    uint8_t bytes[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
    for (int j = 0; j < 3 - pad; j++) {
      if (n >= outcap) return WD_ERR_INVALID;
      out[n++] = bytes[j];
    }
  }
  return (int)n;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int wd_url_decode(char *s) {
  char *w = s;
  for (const char *r = s; *r; r++) {
    if (*r == '%') {
      int hi = hex_value(r[1]), lo = hi < 0 ? -1 : hex_value(r[2]);
      if (hi < 0 || lo < 0) return WD_ERR_INVALID;
      char c = (char)(hi << 4 | lo);
      if (c == '\0') return WD_ERR_INVALID;
      *w++ = c;
      r += 2;
    } else {
      *w++ = *r;
    }
  }
  *w = '\0';
  return (int)(w - s);
}

char *wd_url_encode(const char *s) {
  size_t n = strlen(s);
  char *out = malloc(n * 3 + 1), *w = out;
  if (!out) return NULL;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      *w++ = (char)c;
    } else {
      w += sprintf(w, "%%%02X", c);
    }
  }
  *w = '\0';
  return out;
}

void wd_iso8601(int64_t ms, char out[25]) {
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  /* Field widths are bounded by struct tm's ranges; the casts tell the compiler so. */
  snprintf(out, 25, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ", (unsigned)(tm.tm_year + 1900) % 10000u,
           (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u, (unsigned)tm.tm_hour % 100u,
           (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u, (unsigned)(ms % 1000));
}

char *wd_read_file(const char *path, size_t *len_out) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (cap - len < 4096) {
      cap = cap ? cap * 2 : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        errno = ENOMEM;
        return NULL;
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, cap - len - 1, f);
    len += n;
    if (n == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    errno = EIO;
    return NULL;
  }
  buf[len] = '\0';
  if (len_out) *len_out = len;
  return buf;
}

#ifndef WD_BASE_UTIL_H
#define WD_BASE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WD_ID_MAX 128          /* device, group and service ids */
#define WD_KEY_BYTES 32        /* 256-bit device keys */
#define WD_THUMBPRINT_HEX 64   /* SHA-256 as lowercase hex */

/* Milliseconds since the epoch (wall clock) and on the monotonic clock. */
int64_t wd_now_ms(void);
int64_t wd_mono_ms(void);
int64_t wd_mono_us(void);

/* True if s is a valid device/group id: [A-Za-z0-9._:-]{1,128}. */
bool wd_id_valid(const char *s);

/* True if s is 64 lowercase hex digits. */
bool wd_thumbprint_valid(const char *s);

/* Fills buf with cryptographically secure random bytes. Returns 0 or WD_ERR_IO. */
int wd_random_bytes(void *buf, size_t len);

/* Constant-time comparison of two byte strings; different lengths compare unequal. */
bool wd_secure_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Standard base64 with padding. out must hold wd_base64_encoded_len(len) bytes (incl. NUL). */
size_t wd_base64_encoded_len(size_t len);
void wd_base64_encode(const void *in, size_t len, char *out);
/* Decodes standard base64 (padding required). Returns the length, or WD_ERR_INVALID. */
int wd_base64_decode(const char *in, size_t inlen, uint8_t *out, size_t outcap);

/* Percent-decodes in place ("+" is left alone). Returns the new length or WD_ERR_INVALID. */
int wd_url_decode(char *s);
/* Percent-encodes every byte outside [A-Za-z0-9-._~]. Returns returned-owned string or NULL. */
char *wd_url_encode(const char *s);

/* Formats ms-since-epoch as ISO 8601 UTC with milliseconds; out needs 25 bytes. */
void wd_iso8601(int64_t ms, char out[25]);

/* Reads a whole file into a NUL-terminated buffer. Returns returned-owned, or NULL (errno set). */
char *wd_read_file(const char *path, size_t *len_out);

#endif

#ifndef WD_GATEWAY_CRYPTO_MEMORY_H
#define WD_GATEWAY_CRYPTO_MEMORY_H

#include <stdbool.h>

/* Routes OpenSSL's large short-lived buffers (handshake and record buffers)
 * to blocks outside the malloc heap, so that idle TLS connections do not keep
 * the pages they leave behind. Call first thing in main, before OpenSSL is
 * used; false (and nothing changed) when it already was. */
bool wd_crypto_memory_install(void);

/* True when p is one of those blocks (for tests). */
bool wd_crypto_memory_owns(const void *p);

#endif

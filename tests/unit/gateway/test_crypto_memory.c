/* Unit tests for gateway/crypto_memory.c: which of OpenSSL's allocations go to
 * the blocks, that contents survive every move between blocks and malloc, that
 * blocks past the hot ones give their pages back, that a small allocation
 * never pins a block a large one left resident, that threads share it
 * safely, and that TLS works on top of it. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "gateway/crypto_memory.h"

static void fill(uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seed + i * 7);
}

static bool holds(const uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (uint8_t)(seed + i * 7)) return false;
  return true;
}

static void test_sizes_between_4_and_24_kib_are_pooled(void **state) {
  (void)state;
  void *small = OPENSSL_malloc(1000), *mid = OPENSSL_malloc(8 * 1024), *edge = OPENSSL_malloc(24 * 1024);
  void *big = OPENSSL_malloc(64 * 1024);
  assert_false(wd_crypto_memory_owns(small));
  assert_true(wd_crypto_memory_owns(mid));
  assert_true(wd_crypto_memory_owns(edge));
  assert_false(wd_crypto_memory_owns(big));
  fill(edge, 24 * 1024, 3); /* the whole block is usable */
  assert_true(holds(edge, 24 * 1024, 3));
  OPENSSL_free(small);
  OPENSSL_free(mid);
  OPENSSL_free(edge);
  OPENSSL_free(big);
}

static void test_a_freed_block_is_reused_first(void **state) {
  (void)state;
  void *a = OPENSSL_malloc(10000);
  OPENSSL_free(a);
  void *b = OPENSSL_malloc(12000);
  assert_ptr_equal(a, b);
  OPENSSL_free(b);
}

static void test_realloc_keeps_contents_across_every_move(void **state) {
  (void)state;
  uint8_t *p = OPENSSL_malloc(100);
  fill(p, 100, 1);
  p = OPENSSL_realloc(p, 10000); /* malloc -> block */
  assert_true(wd_crypto_memory_owns(p));
  assert_true(holds(p, 100, 1));
  fill(p, 10000, 2);
  uint8_t *same = OPENSSL_realloc(p, 20000); /* stays in its block */
  assert_ptr_equal(same, p);
  assert_true(holds(p, 10000, 2));
  p = OPENSSL_realloc(p, 40000); /* block -> malloc */
  assert_false(wd_crypto_memory_owns(p));
  assert_true(holds(p, 10000, 2));
  p = OPENSSL_realloc(p, 6000); /* malloc -> block again */
  assert_true(wd_crypto_memory_owns(p));
  assert_true(holds(p, 6000, 2));
  p = OPENSSL_realloc(p, 50); /* shrunk to a long-lived size: back to malloc */
  assert_false(wd_crypto_memory_owns(p));
  assert_true(holds(p, 50, 2));
  assert_null(OPENSSL_realloc(p, 0)); /* frees */
}

/* Past the hot ones, a freed block's pages are given back: taken again, it reads as zeros. */
static void test_cold_blocks_give_their_pages_back(void **state) {
  (void)state;
  enum { N = 100, SIZE = 16 * 1024 };
  uint8_t *blocks[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = OPENSSL_malloc(SIZE);
    assert_true(wd_crypto_memory_owns(blocks[i]));
    memset(blocks[i], 0xAB, SIZE);
  }
  for (int i = 0; i < N; i++) OPENSSL_free(blocks[i]);
  int zeroed = 0, kept = 0;
  for (int i = 0; i < N; i++) {
    blocks[i] = OPENSSL_malloc(SIZE);
    if (blocks[i][0] == 0 && blocks[i][SIZE - 1] == 0) zeroed++;
    if (blocks[i][0] == 0xAB) kept++;
  }
  for (int i = 0; i < N; i++) OPENSSL_free(blocks[i]);
  assert_int_equal(kept, 16);       /* the hot ones, taken first */
  assert_int_equal(zeroed, N - 16); /* the rest had lost their pages */
}

static int resident_pages(const uint8_t *block) {
  enum { BLOCK = 24 * 1024, PAGE = 4096 };
  unsigned char vec[BLOCK / PAGE];
  assert_int_equal(mincore((void *)block, BLOCK, vec), 0);
  int n = 0;
  for (int i = 0; i < BLOCK / PAGE; i++) n += vec[i] & 1;
  return n;
}

static void test_a_small_allocation_never_pins_a_block_a_large_one_left_resident(void **state) {
  (void)state;
  uint8_t *large = OPENSSL_malloc(24 * 1024);
  memset(large, 0xCD, 24 * 1024);
  OPENSSL_free(large); /* resident, every page */
  uint8_t *small = OPENSSL_malloc(5000);
  assert_true(wd_crypto_memory_owns(small));
  assert_ptr_not_equal(small, large);
  memset(small, 0xEF, 5000);
  assert_int_equal(resident_pages(small), 2); /* what 5000 bytes need: the SSL object lives as long as its connection */
  OPENSSL_free(small);
  assert_ptr_equal(OPENSSL_malloc(5000), small); /* small ones reuse each other's blocks */
  OPENSSL_free(small);
  uint8_t *again = OPENSSL_malloc(20 * 1024);
  assert_ptr_equal(again, large); /* and large ones theirs */
  OPENSSL_free(again);
}

static void *churn(void *arg) {
  uint8_t seed = (uint8_t)(uintptr_t)arg;
  uint8_t *held[8] = {0};
  size_t sizes[8] = {0};
  unsigned r = seed;
  for (int i = 0; i < 8000; i++) {
    r = r * 1103515245u + 12345u;
    int slot = (int)(r >> 16) % 8;
    if (held[slot]) {
      if (!holds(held[slot], sizes[slot], (uint8_t)(seed + slot))) return (void *)1;
      OPENSSL_free(held[slot]);
    }
    sizes[slot] = 1000 + (r >> 8) % 30000;
    held[slot] = OPENSSL_malloc(sizes[slot]);
    if (!held[slot]) return (void *)1;
    fill(held[slot], sizes[slot], (uint8_t)(seed + slot));
  }
  for (int s = 0; s < 8; s++) OPENSSL_free(held[s]);
  return NULL;
}

static void test_threads_never_share_a_block(void **state) {
  (void)state;
  pthread_t t[4];
  for (uintptr_t i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)(i * 40)), 0);
  for (int i = 0; i < 4; i++) {
    void *failed = (void *)1;
    pthread_join(t[i], &failed);
    assert_null(failed);
  }
}

static void pump(BIO *from, BIO *to) {
  char buf[4096];
  int n;
  while ((n = BIO_read(from, buf, sizeof buf)) > 0) BIO_write(to, buf, n);
}

/* A whole TLS 1.3 exchange between two in-memory peers (no certificate: an anonymous-free PSK-less
   handshake needs one, so the server gets a generated EC key and self-signed certificate). */
static void test_tls_runs_on_it(void **state) {
  (void)state;
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  assert_non_null(key);
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, (const unsigned char *)"t", -1, -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
  SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
  assert_int_equal(SSL_CTX_use_certificate(sctx, cert), 1);
  assert_int_equal(SSL_CTX_use_PrivateKey(sctx, key), 1);
  SSL_CTX_set_mode(sctx, SSL_MODE_RELEASE_BUFFERS);
  SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
  BIO *s_in = BIO_new(BIO_s_mem()), *s_out = BIO_new(BIO_s_mem());
  BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
  SSL_set_bio(s, s_in, s_out);
  SSL_set_bio(c, c_in, c_out);
  SSL_set_accept_state(s);
  SSL_set_connect_state(c);
  for (int i = 0; i < 10 && !(SSL_is_init_finished(s) && SSL_is_init_finished(c)); i++) {
    SSL_do_handshake(c);
    pump(c_out, s_in);
    SSL_do_handshake(s);
    pump(s_out, c_in);
  }
  assert_true(SSL_is_init_finished(s) && SSL_is_init_finished(c));
  static uint8_t msg[40000], got[40000];
  fill(msg, sizeof msg, 9);
  size_t have = 0;
  for (size_t off = 0; off < sizeof msg;) {
    int n = SSL_write(c, msg + off, (int)(sizeof msg - off));
    assert_true(n > 0);
    off += (size_t)n;
    pump(c_out, s_in);
    while ((n = SSL_read(s, got + have, (int)(sizeof got - have))) > 0) have += (size_t)n;
  }
  assert_int_equal(have, sizeof msg);
  assert_memory_equal(got, msg, sizeof msg);
  SSL_free(s);
  SSL_free(c);
  SSL_CTX_free(sctx);
  SSL_CTX_free(cctx);
  X509_free(cert);
  EVP_PKEY_free(key);
}

int main(void) {
  /* Before anything of OpenSSL's runs; a second install is refused. */
  if (!wd_crypto_memory_install()) return 1;
  if (wd_crypto_memory_install()) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sizes_between_4_and_24_kib_are_pooled),
      cmocka_unit_test(test_a_freed_block_is_reused_first),
      cmocka_unit_test(test_realloc_keeps_contents_across_every_move),
      cmocka_unit_test(test_cold_blocks_give_their_pages_back),
      cmocka_unit_test(test_a_small_allocation_never_pins_a_block_a_large_one_left_resident),
      cmocka_unit_test(test_threads_never_share_a_block),
      cmocka_unit_test(test_tls_runs_on_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

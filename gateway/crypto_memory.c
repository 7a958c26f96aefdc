/* OpenSSL's large short-lived buffers, kept out of the malloc heap.
 *
 * A TLS handshake allocates ~60 KiB that it frees at its end (two 16.7 KiB
 * record buffers, a handshake buffer BUF_MEM_grow sizes to 21.3 KiB, ...),
 * interleaved with what the connection keeps. In the malloc heap the holes
 * they leave are filled by small long-lived allocations, and their pages stay
 * resident: 1 000 idle TLS connections opened one after another cost 51.1 kB
 * each, 43.3 kB once every allocation of 8 KiB or more got pages of its own
 * (glibc's mmap threshold, which would make every large allocation a syscall).
 *
 * Here OpenSSL's allocations of 4-24 KiB (and those of protocol/tls.c's
 * buffers, which use OpenSSL's allocator) come from fixed 24 KiB blocks in a
 * region of their own. A freed block goes back on a stack; past HOT free
 * blocks its pages are given back (MADV_DONTNEED), so busy connections reuse
 * resident blocks without a syscall and idle ones hold none. Resident blocks
 * are kept apart by how much of them was written, so that a small allocation
 * that stays (the SSL object, ~6.5 KiB, lives as long as its connection)
 * does not pin a block a 16 KiB record buffer left resident. Everything else,
 * and anything once the region is used up, goes to malloc as before. */

#include "gateway/crypto_memory.h"

#include <malloc.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define BLOCK (24 * 1024)
#define POOLED_MIN (4 * 1024)
#define REGION_BYTES ((size_t)256 << 20) /* address space only: pages exist while written */
#define N_BLOCKS (REGION_BYTES / BLOCK)
#define HOT 16 /* resident free blocks kept, of each kind */
#define PAGE 4096
#define SMALL_PAGES 2
enum { SMALL, LARGE };

static struct {
  uint8_t *base;
  pthread_mutex_t lock;
  /* Free blocks whose pages are resident, taken first: those a small
     allocation left (SMALL_PAGES at most written) apart from those a large
     one did, so that a small allocation, which may live as long as its
     connection (the SSL object does), never pins a block a record buffer
     left resident. */
  struct {
    uint32_t index[HOT];
    size_t n;
  } hot[2]; /* [SMALL], [LARGE] */
  uint32_t *cold;      /* free blocks whose pages were given back */
  size_t n_cold;
  size_t n_carved;     /* blocks handed out at least once */
  uint8_t *written;    /* per block: the pages its allocations may have written since it was last given back */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

bool wd_crypto_memory_owns(const void *p) {
  return pool.base && (const uint8_t *)p >= pool.base && (const uint8_t *)p < pool.base + N_BLOCKS * BLOCK;
}

static uint8_t pages(size_t n) { return (uint8_t)((n + PAGE - 1) / PAGE); }

static uint32_t index_of(const void *p) { return (uint32_t)(((const uint8_t *)p - pool.base) / BLOCK); }

static int kind(uint8_t written_pages) { return written_pages <= SMALL_PAGES ? SMALL : LARGE; }

static void *block_take(size_t n) {
  uint8_t need = pages(n);
  int want = kind(need), other = want == SMALL ? LARGE : SMALL;
  size_t index = N_BLOCKS;
  bool trim = false; /* a small allocation in a block a large one left resident */
  pthread_mutex_lock(&pool.lock);
  if (pool.hot[want].n > 0) {
    index = pool.hot[want].index[--pool.hot[want].n];
  } else if (pool.n_cold > 0) {
    index = pool.cold[--pool.n_cold];
  } else if (pool.n_carved < N_BLOCKS) {
    index = pool.n_carved++;
  } else if (pool.hot[other].n > 0) {
    index = pool.hot[other].index[--pool.hot[other].n];
    trim = want == SMALL;
  }
  if (index < N_BLOCKS) {
    uint8_t before = pool.written[index];
    pool.written[index] = trim || need > before ? need : before;
  }
  pthread_mutex_unlock(&pool.lock);
  if (index >= N_BLOCKS) return NULL;
  uint8_t *p = pool.base + index * BLOCK;
  if (trim) madvise(p + (size_t)need * PAGE, BLOCK - (size_t)need * PAGE, MADV_DONTNEED);
  return p;
}

static void block_give_back(void *p) {
  uint32_t index = index_of(p);
  pthread_mutex_lock(&pool.lock);
  int k = kind(pool.written[index]);
  if (pool.hot[k].n < HOT) {
    pool.hot[k].index[pool.hot[k].n++] = index;
    pthread_mutex_unlock(&pool.lock);
    return;
  }
  pthread_mutex_unlock(&pool.lock);
  /* Its pages go before anyone can take it again. */
  madvise(p, BLOCK, MADV_DONTNEED);
  pthread_mutex_lock(&pool.lock);
  pool.written[index] = 0;
  pool.cold[pool.n_cold++] = index;
  pthread_mutex_unlock(&pool.lock);
}

static void *crypto_malloc(size_t n, const char *file, int line) {
  (void)file;
  (void)line;
  if (n >= POOLED_MIN && n <= BLOCK) {
    void *p = block_take(n);
    if (p) return p;
  }
  return malloc(n);
}

static void crypto_free(void *p, const char *file, int line) {
  (void)file;
  (void)line;
  if (wd_crypto_memory_owns(p))
    block_give_back(p);
  else
    free(p);
}

static void *crypto_realloc(void *p, size_t n, const char *file, int line) {
  if (!p) return crypto_malloc(n, file, line);
  if (n == 0) {
    crypto_free(p, file, line);
    return NULL;
  }
  if (wd_crypto_memory_owns(p)) {
    if (n >= POOLED_MIN && n <= BLOCK) {
      uint32_t index = index_of(p); /* only its holder touches its entry while it is taken */
      if (pages(n) > pool.written[index]) pool.written[index] = pages(n);
      return p;
    }
    /* Grown past a block, or shrunk to what a long-lived small buffer is: to malloc. */
    void *q = malloc(n);
    if (!q) return NULL;
    memcpy(q, p, n < BLOCK ? n : BLOCK);
    block_give_back(p);
    return q;
  }
  if (n >= POOLED_MIN && n <= BLOCK) {
    void *q = block_take(n);
    if (q) {
      /* The old size is not known here; the block holds all that can have been in use. */
      size_t old = malloc_usable_size(p);
      memcpy(q, p, old < n ? old : n);
      free(p);
      return q;
    }
  }
  return realloc(p, n);
}

bool wd_crypto_memory_install(void) {
  if (pool.base) return false;
  void *base = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  uint32_t *cold = malloc(N_BLOCKS * sizeof *cold);
  uint8_t *written = calloc(N_BLOCKS, 1);
  if (base == MAP_FAILED || !cold || !written) {
    if (base != MAP_FAILED) munmap(base, REGION_BYTES);
    free(cold);
    free(written);
    return false;
  }
  pool.base = base;
  pool.cold = cold;
  pool.written = written;
  /* Refused once OpenSSL has allocated anything: then all of it stays with malloc. */
  if (CRYPTO_set_mem_functions(crypto_malloc, crypto_realloc, crypto_free)) return true;
  pool.base = NULL;
  pool.cold = NULL;
  pool.written = NULL;
  munmap(base, REGION_BYTES);
  free(cold);
  free(written);
  return false;
}

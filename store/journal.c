/* The append journal: a fast path to durability for small batches of log
 * appends.
 *
 * A synchronous LMDB commit flushes the disk twice (data pages, then the meta
 * page), ~0.4 ms here; one 4 KiB O_DIRECT|O_DSYNC write flushes it once and
 * skips the page cache, ~0.1 ms. So a batch made only of appends to existing
 * logs is written here, acknowledged, and left in the writer's open LMDB
 * transaction, which is committed a little later with whatever followed it.
 * Readers see the records at that commit, as before; what the journal changes
 * is only when the appending peer hears they are safe.
 *
 * The file is preallocated and written from its start in generations. A
 * record carries the store's id and its generation; the meta key
 * `journal_applied` names the last generation every record of which is in
 * LMDB, and is written by the commit that makes it so. Replay reads the
 * records of the next generation, from offset 0 until the first one that is
 * not whole (a torn write was never acknowledged), and puts them again: each
 * names its log and number, so putting one twice changes nothing. */

#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "gateway/base/log.h"
#include "store/internal.h"

#define JOURNAL_FILE_SIZE (8u << 20)
#define BLOCK 4096u /* O_DIRECT wants offsets, lengths and buffers aligned to the device's blocks */
#define HEADER_LEN 32u
#define ENTRY_HEADER_LEN 16u

static const uint8_t magic[4] = {'W', 'D', 'J', '1'};
static const char applied_key[] = "journal_applied";
static const char store_id_key[] = "journal_store_id";

static size_t round_up(size_t n) { return (n + BLOCK - 1) / BLOCK * BLOCK; }

size_t wd_store__journal_entry_len(size_t data_len) { return ENTRY_HEADER_LEN + data_len; }

static int fill_zeros(int fd, off_t from, off_t to) {
  static const uint8_t zeros[64 * 1024];
  while (from < to) {
    size_t n = (size_t)(to - from) < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
    ssize_t w = pwrite(fd, zeros, n, from);
    if (w <= 0) return -1;
    from += w;
  }
  return fdatasync(fd);
}

int wd_store__journal_open(wd_store__journal_t *j, const char *dir) {
  memset(j, 0, sizeof *j);
  j->fd = -1;
  snprintf(j->path, sizeof j->path, "%s/journal", dir);
  int fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) goto io_error;
  /* Written out rather than fallocated: an O_DSYNC write into an unwritten
   * extent would have to flush the extent's conversion too. */
  if (st.st_size < (off_t)JOURNAL_FILE_SIZE) {
    if (fill_zeros(fd, st.st_size, JOURNAL_FILE_SIZE) != 0) goto io_error;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }
  close(fd);
  fd = -1;
  j->fd = open(j->path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
  if (j->fd < 0 && errno == EINVAL) { /* tmpfs */
    wd_log("store", WD_LOG_INFO, "the file system of %s refuses O_DIRECT: journal writes go through the page cache",
           j->path);
    j->fd = open(j->path, O_WRONLY | O_DSYNC | O_CLOEXEC);
  }
  if (j->fd < 0) goto io_error;
  j->cap = 64 * 1024;
  if (posix_memalign((void **)&j->buf, BLOCK, j->cap) != 0) {
    j->buf = NULL;
    close(j->fd);
    j->fd = -1;
    return WD_ERR_NOMEM;
  }
  return WD_OK;
io_error:
  /* Not fatal: every write then commits before it is acknowledged, as the
   * big batches always do; a journal already there is still replayed. */
  wd_log("store", WD_LOG_WARNING, "cannot prepare the journal %s (%s): appends are acknowledged after their commit",
         j->path, strerror(errno));
  if (fd >= 0) close(fd);
  if (j->fd >= 0) close(j->fd);
  j->fd = -1;
  return WD_OK;
}

void wd_store__journal_close(wd_store__journal_t *j) {
  if (j->fd >= 0) close(j->fd);
  j->fd = -1;
  free(j->buf);
  j->buf = NULL;
}

bool wd_store__journal_room(const wd_store__journal_t *j, size_t entries_len) {
  return j->offset + round_up(HEADER_LEN + entries_len) <= JOURNAL_FILE_SIZE;
}

void wd_store__journal_begin(wd_store__journal_t *j) {
  j->len = HEADER_LEN;
  j->count = 0;
}

int wd_store__journal_add(wd_store__journal_t *j, uint32_t log_id, uint64_t seq, const void *data, size_t len) {
  size_t need = j->len + ENTRY_HEADER_LEN + len;
  if (len > UINT32_MAX || need > JOURNAL_FILE_SIZE) return WD_ERR_FULL; /* spoils the batch: it goes without the journal */
  if (need > j->cap) {
    size_t cap = j->cap;
    while (cap < need) cap *= 2;
    uint8_t *buf;
    if (posix_memalign((void **)&buf, BLOCK, cap) != 0) return WD_ERR_NOMEM;
    memcpy(buf, j->buf, j->len);
    free(j->buf);
    j->buf = buf;
    j->cap = cap;
  }
  uint8_t *e = j->buf + j->len;
  wd_store__u32_be(e, log_id);
  wd_store__u64_be(e + 4, seq);
  wd_store__u32_be(e + 12, (uint32_t)len);
  memcpy(e + ENTRY_HEADER_LEN, data, len);
  j->len = need;
  j->count++;
  return WD_OK;
}

int wd_store__journal_write(wd_store__journal_t *j) {
  size_t padded = round_up(j->len);
  if (j->offset + padded > JOURNAL_FILE_SIZE) return WD_ERR_FULL;
  if (padded > j->cap) return WD_ERR_NOMEM; /* cannot happen: cap is a multiple of BLOCK */
  uint8_t *h = j->buf;
  memcpy(h, magic, 4);
  wd_store__u64_be(h + 8, j->store_id);
  wd_store__u64_be(h + 16, j->gen);
  wd_store__u32_be(h + 24, (uint32_t)(j->len - HEADER_LEN));
  wd_store__u32_be(h + 28, j->count);
  memset(h + j->len, 0, padded - j->len);
  wd_store__u32_be(h + 4, (uint32_t)crc32(crc32(0, NULL, 0), h + 8, (uInt)(j->len - 8)));
  size_t done = 0;
  while (done < padded) {
    ssize_t w = pwrite(j->fd, h + done, padded - done, (off_t)(j->offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      /* What it already holds is still replayed; new appends wait for their commits. */
      wd_log("store", WD_LOG_ERROR, "journal write failed (%s): appends are acknowledged after their commit from now on",
             w < 0 ? strerror(errno) : "short write");
      close(j->fd);
      j->fd = -1;
      return WD_ERR_IO;
    }
    done += (size_t)w;
  }
  j->offset += padded;
  j->pending = true;
  return WD_OK;
}

int wd_store__journal_seal(wd_store_t *s, MDB_txn *txn) {
  uint8_t v[8];
  wd_store__u64_be(v, s->journal.gen);
  MDB_val k = {sizeof applied_key - 1, (void *)applied_key}, val = {8, v};
  return wd_store__map_rc(mdb_put(txn, s->dbi_meta, &k, &val, 0));
}

void wd_store__journal_sealed(wd_store__journal_t *j) {
  j->gen++;
  j->offset = 0;
  j->pending = false;
}

static int meta_u64(wd_store_t *s, MDB_txn *txn, const char *key, uint64_t *out) {
  MDB_val k = {strlen(key), (void *)key}, v;
  int rc = mdb_get(txn, s->dbi_meta, &k, &v);
  if (rc == MDB_NOTFOUND) return WD_ERR_NOT_FOUND;
  if (rc != MDB_SUCCESS) return wd_store__map_rc(rc);
  if (v.mv_size != 8) return WD_ERR_CORRUPT;
  *out = wd_store__be_u64(v.mv_data);
  return WD_OK;
}

/* Why a record whose checksum holds is still not one this store wrote for
 * this replay; NULL if it is. The writer journals a batch of at most
 * JOURNAL_MAX_OPS appends to stored logs, numbered on from each log's last
 * record, so anything else (a gap, a number taken already, a log that is not
 * there) would put a record where the store never acknowledged one. */
static const char *record_invalid(wd_store_t *s, const uint8_t *entries, size_t len, uint32_t count) {
  if (count == 0 || count > JOURNAL_MAX_OPS || len > JOURNAL_MAX_BYTES) return "it has no entries, or more than a batch";
  const uint8_t *e = entries;
  for (uint32_t i = 0; i < count; i++) {
    if (len < ENTRY_HEADER_LEN) return "its entries do not fill it";
    uint32_t log_id = wd_store__be_u32(e);
    size_t n = wd_store__be_u32(e + 12);
    if (n > len - ENTRY_HEADER_LEN) return "its entries do not fill it";
    uint64_t expected = wd_store__log_replay_next(s, log_id);
    if (expected == 0) return "it names a log the store does not have";
    for (const uint8_t *q = entries; q < e; q += ENTRY_HEADER_LEN + wd_store__be_u32(q + 12))
      if (wd_store__be_u32(q) == log_id) expected++;
    uint64_t seq = wd_store__be_u64(e + 4);
    if (seq != expected || seq == UINT64_MAX) return "its numbers do not continue the log";
    e += ENTRY_HEADER_LEN + n;
    len -= ENTRY_HEADER_LEN + n;
  }
  return len == 0 ? NULL : "its entries do not fill it";
}

/* Reads exactly n bytes at off; false at the end of the file or on an error. */
static bool read_at(int fd, void *buf, size_t n, size_t off) {
  size_t have = 0;
  while (have < n) {
    ssize_t r = pread(fd, (uint8_t *)buf + have, n - have, (off_t)(off + have));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    have += (size_t)r;
  }
  return true;
}

int wd_store__journal_replay(wd_store_t *s, MDB_txn *txn, uint64_t gen, size_t *replayed) {
  wd_store__journal_t *j = &s->journal;
  *replayed = 0;
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 && errno != ENOENT) {
    wd_log("store", WD_LOG_ERROR, "cannot read the journal %s: %s", j->path, strerror(errno));
    return WD_ERR_IO;
  }
  size_t size = fd >= 0 && fstat(fd, &st) == 0 ? (size_t)st.st_size : 0; /* none: nothing to replay */
  int rc = WD_OK;
  uint8_t *rec = NULL;
  size_t off = 0;
  uint8_t h[HEADER_LEN];
  while (rc == WD_OK && off + HEADER_LEN <= size && read_at(fd, h, HEADER_LEN, off)) {
    size_t payload = wd_store__be_u32(h + 24);
    uint32_t count = wd_store__be_u32(h + 28);
    if (memcmp(h, magic, 4) != 0 || wd_store__be_u64(h + 8) != j->store_id || wd_store__be_u64(h + 16) != gen ||
        payload > size - off - HEADER_LEN)
      break;
    uint8_t *grown = realloc(rec, HEADER_LEN + payload);
    if (!grown) {
      rc = WD_ERR_NOMEM;
      break;
    }
    rec = grown;
    memcpy(rec, h, HEADER_LEN);
    if (!read_at(fd, rec + HEADER_LEN, payload, off + HEADER_LEN) ||
        wd_store__be_u32(h + 4) != (uint32_t)crc32(crc32(0, NULL, 0), rec + 8, (uInt)(HEADER_LEN - 8 + payload)))
      break; /* torn: its appends were never acknowledged */
    const char *why = record_invalid(s, rec + HEADER_LEN, payload, count);
    if (why) {
      wd_log("store", WD_LOG_WARNING, "the journal's record at offset %zu is not replayed, nor any after it: %s", off,
             why);
      break;
    }
    const uint8_t *e = rec + HEADER_LEN;
    for (; count > 0 && rc == WD_OK; count--) {
      size_t n = wd_store__be_u32(e + 12);
      rc = wd_store__log_replay(s, txn, wd_store__be_u32(e), wd_store__be_u64(e + 4), e + ENTRY_HEADER_LEN, n);
      e += ENTRY_HEADER_LEN + n;
      if (rc == WD_OK) (*replayed)++;
    }
    off += round_up(HEADER_LEN + payload);
  }
  free(rec);
  if (fd >= 0) close(fd);
  if (rc == WD_OK) {
    j->gen = gen;
    rc = wd_store__journal_seal(s, txn);
  }
  return rc;
}

int wd_store__journal_recover(wd_store_t *s, MDB_txn *txn) {
  uint64_t id = 0, applied = 0;
  int rc = meta_u64(s, txn, store_id_key, &id);
  if (rc == WD_ERR_NOT_FOUND) {
    /* A journal left beside a store made anew must not be replayed into it. */
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) return WD_ERR_IO;
    uint8_t v[8];
    wd_store__u64_be(v, id);
    MDB_val k = {sizeof store_id_key - 1, (void *)store_id_key}, val = {8, v};
    if ((rc = wd_store__map_rc(mdb_put(txn, s->dbi_meta, &k, &val, 0))) < 0) return rc;
  } else if (rc < 0) {
    return rc;
  }
  s->journal.store_id = id;
  rc = meta_u64(s, txn, applied_key, &applied);
  if (rc < 0 && rc != WD_ERR_NOT_FOUND) return rc;
  size_t replayed;
  if ((rc = wd_store__journal_replay(s, txn, applied + 1, &replayed)) < 0) return rc;
  if (replayed > 0)
    wd_log("store", WD_LOG_INFO, "applied %zu acknowledged appends from the journal", replayed);
  wd_store__journal_sealed(&s->journal); /* by the commit that ends opening */
  return WD_OK;
}

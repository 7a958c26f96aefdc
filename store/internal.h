#ifndef WD_STORE_INTERNAL_H
#define WD_STORE_INTERNAL_H

/* Shared between the files of store/ only. */

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>

#include "store/store.h"

/* A unit of work for the writer thread. `apply` runs inside the batch's write
 * transaction and returns WD_OK, a logical error that leaves the transaction
 * usable (WD_ERR_NOT_FOUND, ...), or WD_ERR_FULL, which spoils the transaction
 * (the batch is then retried op by op). `complete` runs after the commit, with
 * the op's final rc, calls the user's callback and frees the op. */
typedef struct wd_store__op wd_store__op_t;
struct wd_store__op {
  wd_store__op_t *next;
  int (*apply)(wd_store_t *s, MDB_txn *txn, wd_store__op_t *op);
  void (*complete)(wd_store_t *s, wd_store__op_t *op, int rc);
  /* Set by a plain append, which the journal can carry; else NULL. */
  wd_store_log_t *appends_to;
  size_t append_len;
};

/* The append journal (journal.c). The writer's. */
typedef struct {
  char path[4096];
  int fd; /* O_DIRECT|O_DSYNC where the file system allows it, else O_DSYNC; -1: no journal */
  uint64_t store_id;
  uint64_t gen;    /* generation being written; LMDB holds every record of the earlier ones */
  uint64_t offset; /* where the next record goes */
  bool pending; /* records of this generation were written: the open transaction holds them */
  uint8_t *buf; /* the record being built, block-aligned */
  size_t len, cap;
  uint32_t count;
} wd_store__journal_t;

/* A log touched by the open write transaction: its number before the
 * transaction, to roll back on abort and to publish on commit. */
typedef struct {
  wd_store_log_t *log;
  uint64_t seq_before;
} wd_store__touched_t;

struct wd_store {
  MDB_env *env;
  int lock_fd; /* holds the store's flock */
  MDB_dbi dbi_meta, dbi_devices, dbi_thumbprints, dbi_members, dbi_presence;
  MDB_dbi dbi_logs, dbi_records, dbi_groups;
  MDB_dbi dbi_queues, dbi_queue_meta, dbi_blobs, dbi_expiry, dbi_commands;
  uint64_t map_size;

  pthread_t writer;
  pthread_mutex_t lock; /* guards the op list and `stopping` */
  pthread_cond_t wake;
  wd_store__op_t *head, *tail;
  bool stopping;
  _Atomic uint64_t submitted; /* ops ever queued: lets the writer look for new ones without the lock */

  /* Logs. The list only grows; each log's next_seq is the writer's. */
  pthread_mutex_t logs_lock; /* guards the log list and each log's group list; taken before a group's lock */
  wd_store_log_t *logs;
  uint32_t next_log_id;
  _Atomic bool logs_dirty; /* group progress or a new log or group to persist */
  wd_store__touched_t *touched; /* writer only */
  size_t n_touched, cap_touched;

  /* Device queues (queue.c). Writer only, except the codec (set once at start). */
  uint64_t next_blob_id;
  int64_t next_expiry_ms; /* earliest key of the expiry index, INT64_MAX if none */
  _Atomic bool sweeping;  /* expiry runs once the codec is set: nothing expires unreported */
  wd_store_codec_t codec;
  uint32_t max_delivery_count;
  int64_t queued_delta; /* messages added to queues minus removed by the open transaction */

  pthread_mutex_t listeners_lock; /* held while listeners run */
  struct {
    wd_store_append_fn fn;
    void *arg;
  } listeners[4];
  int n_listeners;

  _Atomic uint64_t commits, commit_failures_full, journal_writes;
  _Atomic uint64_t used_pages; /* data pages in use, measured after commits */
  unsigned page_size;
  _Atomic bool pressure;
  uint64_t txn_bytes; /* appended by the open transaction; the writer's */

  /* Journaled appends wait in this transaction for a commit (the writer's). */
  wd_store__journal_t journal;
  bool journal_collecting; /* log puts are copied into the journal record */
  MDB_txn *open_txn;
  int64_t open_since_us, journaled_us;
};

/* Queues an op for the writer. Returns WD_ERR_SHUTDOWN if the store is closing. */
int wd_store__submit(wd_store_t *s, wd_store__op_t *op);

/* True (and counted) if an append of len bytes leaves the reserve that keeps
 * deletes possible; false when the store is too full for it. Writer only. */
bool wd_store__append_room(wd_store_t *s, size_t len);

/* Maps an LMDB return code to a wd_err_t. */
int wd_store__map_rc(int mdb_rc);

/* Logs (log.c), called by the writer inside its transaction. */
int wd_store__logs_load(wd_store_t *s, MDB_txn *txn);
/* Appends a record to `log` in txn; data is patched at seq_offset (SIZE_MAX: not). */
int wd_store__log_put(wd_store_t *s, MDB_txn *txn, wd_store_log_t *log, void *data, size_t len, size_t seq_offset);
/* Finds or creates a log by name from the writer (no lock order issue: takes logs_lock). */
wd_store_log_t *wd_store__log_get(wd_store_t *s, const char *name);
int wd_store__logs_persist(wd_store_t *s, MDB_txn *txn);
/* After the transaction: abort undoes the numbers it took; commit publishes
 * them (and, if logs_persist ran, what it wrote) and calls the listener. */
void wd_store__logs_rollback(wd_store_t *s);
void wd_store__logs_committed(wd_store_t *s, bool persisted);
void wd_store__logs_free(wd_store_t *s);
/* After a journal write: what the open transaction appended is acknowledged
 * (wd_store_log_bounds counts it) though not yet readable. */
void wd_store__logs_acknowledged(wd_store_t *s);

/* True once the log's entry is stored: appends to it can be journaled. Writer only. */
bool wd_store__log_persisted(const wd_store_log_t *log);
/* Puts a record the journal names, again: the log's numbering follows it. */
int wd_store__log_replay(wd_store_t *s, MDB_txn *txn, uint32_t log_id, uint64_t seq, const void *data, size_t len);

/* The number the next replayed append to log_id must carry: one past the
 * log's last record; 0 if no stored log has that id. Writer only. */
uint64_t wd_store__log_replay_next(wd_store_t *s, uint32_t log_id);

/* The journal (journal.c). Only batches of at most JOURNAL_MAX_OPS appends
 * (JOURNAL_MAX_BYTES of entries) go through it: larger ones commit at once,
 * where one commit is shared by many and a journal write would only add a
 * flush. */
#define JOURNAL_MAX_OPS 16
#define JOURNAL_MAX_BYTES (256u << 10)
int wd_store__journal_open(wd_store__journal_t *j, const char *dir);
void wd_store__journal_close(wd_store__journal_t *j);
/* Bytes an entry of data_len takes in a record. */
size_t wd_store__journal_entry_len(size_t data_len);
/* True if a record with entries of that many bytes fits in this generation. */
bool wd_store__journal_room(const wd_store__journal_t *j, size_t entries_len);
void wd_store__journal_begin(wd_store__journal_t *j);
int wd_store__journal_add(wd_store__journal_t *j, uint32_t log_id, uint64_t seq, const void *data, size_t len);
/* Writes the record built since begin, durably; WD_ERR_FULL if it does not fit. */
int wd_store__journal_write(wd_store__journal_t *j);
/* In the transaction that makes this generation's records LMDB's: says so. */
int wd_store__journal_seal(wd_store_t *s, MDB_txn *txn);
/* After that transaction committed: the next generation starts at offset 0. */
void wd_store__journal_sealed(wd_store__journal_t *j);
/* Puts again the records of generation `gen` and seals it, in txn. */
int wd_store__journal_replay(wd_store_t *s, MDB_txn *txn, uint64_t gen, size_t *replayed);
/* At open: the store's id, then the replay of what the last run acknowledged
 * but did not commit. */
int wd_store__journal_recover(wd_store_t *s, MDB_txn *txn);

/* Registry hooks (registry.c) for queue.c. */
int wd_store__device_get_in(wd_store_t *s, MDB_txn *txn, const char *id, wd_device_t **out);

/* Queues (queue.c). */
int wd_store__queues_load(wd_store_t *s, MDB_txn *txn);
/* Moves expired messages to the dead-letter log; called by the writer when due. */
void wd_store__sweep(wd_store_t *s);
/* Drops a deleted device's queue and commands; inside the registry's transaction. */
int wd_store__queue_drop_device(wd_store_t *s, MDB_txn *txn, const char *id);
/* Keeps the group membership index in step with a device's groups. */
int wd_store__members_update(wd_store_t *s, MDB_txn *txn, const char *id, const char *old_groups,
                             const char *new_groups);

/* Big-endian integers, as every key and record of the store writes them. */
void wd_store__u64_be(uint8_t out[8], uint64_t v);
uint64_t wd_store__be_u64(const uint8_t in[8]);
void wd_store__u32_be(uint8_t out[4], uint32_t v);
uint32_t wd_store__be_u32(const uint8_t in[4]);
#endif

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
  bool appends_telemetry;
};

struct wd_store {
  MDB_env *env;
  MDB_dbi dbi_meta, dbi_devices, dbi_thumbprints, dbi_telemetry, dbi_groups;
  uint64_t map_size;

  pthread_t writer;
  pthread_mutex_t lock; /* guards the op list and `stopping` */
  pthread_cond_t wake;
  wd_store__op_t *head, *tail;
  bool stopping;

  /* Telemetry. next_seq is the writer's; committed_next_seq is published after
   * each commit and is what readers may claim up to. */
  uint64_t next_seq;
  _Atomic uint64_t committed_next_seq;
  _Atomic uint64_t first_seq;
  _Atomic bool groups_dirty;

  pthread_mutex_t groups_lock; /* guards the group list; taken before any group's lock */
  wd_store_group_t *groups;

  pthread_mutex_t listener_lock;
  wd_store_append_fn append_fn;
  void *append_arg;

  _Atomic uint64_t commits, commit_failures_full;
};

/* Queues an op for the writer. Returns WD_ERR_SHUTDOWN if the store is closing. */
int wd_store__submit(wd_store_t *s, wd_store__op_t *op);

/* Maps an LMDB return code to a wd_err_t. */
int wd_store__map_rc(int mdb_rc);

void wd_store__u64_be(uint8_t out[8], uint64_t v);
uint64_t wd_store__be_u64(const uint8_t in[8]);

/* Telemetry internals, called by the writer. */
int wd_store__telemetry_load(wd_store_t *s, MDB_txn *txn);
int wd_store__groups_persist(wd_store_t *s, MDB_txn *txn);
void wd_store__groups_free(wd_store_t *s);

#endif

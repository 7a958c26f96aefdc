#ifndef WD_STORE_STORE_H
#define WD_STORE_STORE_H

/* The durable store: one LMDB environment holding the device registry and the
 * telemetry log with its consumer groups. Reads run on the caller's thread in
 * short read transactions; every write goes through one writer thread that
 * batches the writes of all callers into one commit (group commit) and runs
 * each caller's `done` callback after that commit.
 *
 * Callback rule: when a submit function returns an error, its callback never
 * runs; when it returns WD_OK, the callback runs exactly once, on the writer
 * thread, with rc = WD_OK after a durable commit, or rc < 0 (WD_ERR_FULL when
 * the store is full, WD_ERR_SHUTDOWN when the store closed before committing).
 * Callbacks must be quick: they hand work to other threads and return. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/base/err.h"
#include "gateway/base/util.h"

typedef struct wd_store wd_store_t;

#define WD_STORE_SCHEMA_VERSION 1u

/* Opens (creating if needed) the store in directory `path`, whose size may grow
 * to `max_size` bytes, and starts the writer thread. Returns WD_ERR_CORRUPT for
 * a damaged store or one of another schema version (never emptied), WD_ERR_IO
 * when the directory cannot be used. *out is returned owned: wd_store_close. */
int wd_store_open(const char *path, uint64_t max_size, wd_store_t **out);

/* Commits what was submitted, stops the writer and closes the environment.
 * Work submitted after close began gets WD_ERR_SHUTDOWN. Accepts NULL. */
void wd_store_close(wd_store_t *s);

/* Size facts for metrics. Thread-safe. */
typedef struct {
  uint64_t map_size;    /* the configured limit */
  uint64_t used_bytes;  /* pages in use */
  uint64_t telemetry_first_seq, telemetry_next_seq;
  uint64_t commits, commit_failures_full;
} wd_store_stats_t;
void wd_store_stats(wd_store_t *s, wd_store_stats_t *out);

/* ---------------------------------------------------------------- registry */

typedef struct {
  char id[WD_ID_MAX + 1];
  bool enabled;
  bool has_key;
  uint8_t key[WD_KEY_BYTES];
  char thumbprint[WD_THUMBPRINT_HEX + 1]; /* "" when none is registered */
  char *groups;                           /* space-separated ids, owned, never NULL */
  char *peers;                            /* space-separated device or group ids, owned, never NULL */
  uint32_t queue_limit;                   /* 0 = the configured default */
  uint64_t generation;                    /* raised by every change; credentials checked against it */
  int64_t created_ms, updated_ms;
} wd_device_t;

/* Returned owned, with empty groups/peers; NULL when out of memory. */
wd_device_t *wd_device_new(void);
void wd_device_free(wd_device_t *d);
wd_device_t *wd_device_dup(const wd_device_t *d);

/* Reads one device. Thread-safe. *out returned owned. WD_ERR_NOT_FOUND if absent. */
int wd_store_device_get(wd_store_t *s, const char *id, wd_device_t **out);

/* Finds the device that registered this SHA-256 thumbprint. Thread-safe.
 * id_out receives the id. WD_ERR_NOT_FOUND if none. */
int wd_store_device_by_thumbprint(wd_store_t *s, const char *thumbprint, char id_out[WD_ID_MAX + 1]);

/* Lists up to `limit` devices with ids greater than `after` ("" or NULL from the
 * start), in id order. *out is an owned array of owned devices; free each with
 * wd_device_free and the array with free. Returns the count (>= 0) or < 0. */
int wd_store_device_list(wd_store_t *s, const char *after, size_t limit, wd_device_t ***out);

typedef enum {
  WD_DEVICE_CREATE,  /* fails WD_ERR_EXISTS if the id is taken */
  WD_DEVICE_UPDATE,  /* replaces groups, peers, queue_limit, thumbprint; keeps key and enabled */
  WD_DEVICE_ENABLE,
  WD_DEVICE_DISABLE,
  WD_DEVICE_ROTATE,  /* replaces the key with change->key */
  WD_DEVICE_DELETE,
} wd_device_op_t;

/* `after` is the record as committed (borrowed for the call; NULL after DELETE
 * or on error). */
typedef void (*wd_store_device_done_fn)(void *ctx, int rc, const wd_device_t *after);

/* Applies one registry change in the writer thread, read-modify-write, so that
 * concurrent changes never lose each other. Each change raises `generation`.
 * change: borrowed for the call (copied). WD_ERR_NOT_FOUND reaches `done` for
 * a missing device (except CREATE), WD_ERR_EXISTS for CREATE of a taken id, and
 * WD_ERR_EXISTS when the thumbprint belongs to another device. Thread-safe. */
int wd_store_device_write(wd_store_t *s, wd_device_op_t op, const wd_device_t *change,
                          wd_store_device_done_fn done, void *ctx);

/* --------------------------------------------------------------- telemetry */

/* Called on the writer thread after each commit that appended telemetry, with
 * the next sequence number to be assigned (so all below it are readable). */
typedef void (*wd_store_append_fn)(void *arg, uint64_t next_seq);
void wd_store_set_append_listener(wd_store_t *s, wd_store_append_fn fn, void *arg);

typedef void (*wd_store_done_fn)(void *ctx, int rc);

/* Appends one record to the telemetry log. The writer assigns the sequence
 * number and, when seq_offset != SIZE_MAX, writes it as a big-endian u64 at
 * data[seq_offset] before storing (so a record may carry its own number).
 * data: taken on WD_OK (freed by the store); on error the caller still owns it.
 * Thread-safe. */
int wd_store_telemetry_append(wd_store_t *s, void *data, size_t len, size_t seq_offset,
                              wd_store_done_fn done, void *ctx);

/* Consumer groups share the log: each group sees every record; the consumers
 * of one group share the work. A new group starts at the oldest retained record.
 * Records acknowledged by every group are trimmed. */
typedef struct wd_store_group wd_store_group_t;

/* Returns a reference to the group, creating it if needed. Thread-safe.
 * Release with wd_store_group_unref. */
int wd_store_group_open(wd_store_t *s, const char *name, wd_store_group_t **out);
void wd_store_group_unref(wd_store_group_t *g);

typedef struct {
  uint64_t seq;
  void *data; /* owned: free() it */
  size_t len;
} wd_store_record_t;

/* Claims up to `max` records for delivery: first released ones, then new ones.
 * Returns the count claimed (>= 0) or < 0. Thread-safe. */
int wd_store_group_claim(wd_store_group_t *g, wd_store_record_t *out, size_t max);

/* Settles a claimed record: acknowledged (never delivered to this group again)
 * or released (delivered again, to any consumer of the group). Thread-safe. */
void wd_store_group_ack(wd_store_group_t *g, uint64_t seq);
void wd_store_group_release(wd_store_group_t *g, uint64_t seq);

#endif

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

/* Returns once every write submitted so far is committed: readers see it.
 * (An append is acknowledged as soon as it is durable, which for a small
 * batch is when the journal holds it; readers see it up to ~1.35 ms later.) */
void wd_store_sync(wd_store_t *s);

/* Finishes every write submitted so far (their callbacks have run when it
 * returns), stops expiry and forgets the codec: after it, the store calls
 * nothing outside itself except for writes submitted later. For shutdown,
 * before the owners of those callbacks go away. */
void wd_store_quiesce(wd_store_t *s);

/* Commits what was submitted, stops the writer and closes the environment.
 * Work submitted after close began gets WD_ERR_SHUTDOWN. Accepts NULL. */
void wd_store_close(wd_store_t *s);

/* True while the store is nearly full (over 90% of max_size in use, until it
 * drops under 80%): accepted work still commits, but new work should wait.
 * Enqueues are refused with WD_ERR_BUSY meanwhile. Thread-safe. */
bool wd_store_under_pressure(wd_store_t *s);

/* Size facts for metrics. Thread-safe. */
typedef struct {
  uint64_t map_size;    /* the configured limit */
  uint64_t used_bytes;  /* pages holding data now */
  uint64_t file_bytes;  /* pages the file has grown to */
  uint64_t commits, commit_failures_full;
  uint64_t journal_writes; /* batches of appends acknowledged from the journal */
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
  WD_DEVICE_UPDATE,  /* replaces groups, peers, queue_limit, thumbprint; drops the key when change->has_key
                        is false (keys are only ever added by CREATE and ROTATE); keeps enabled */
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

/* When a device was last seen (connected or disconnected), kept apart from
 * its record so presence never changes the registry's generation. The write
 * is fire-and-forget. Thread-safe. */
int wd_store_presence_set(wd_store_t *s, const char *device_id, int64_t when_ms);
/* 0 and *when_ms, or WD_ERR_NOT_FOUND when never seen. Thread-safe. */
int wd_store_presence_get(wd_store_t *s, const char *device_id, int64_t *when_ms);

/* -------------------------------------------------------------------- logs */

/* Durable logs of opaque records: "telemetry", "inquiries", "feedback",
 * "deadletter", "responses" and "responses/<name>". Records are numbered from
 * 1 in commit order. Consumer groups read a log: each group sees every record,
 * the consumers of one group share the work, and a new group starts at the
 * oldest retained record. Records every group has acknowledged are deleted. */
typedef struct wd_store_log wd_store_log_t;
typedef struct wd_store_group wd_store_group_t;

typedef struct {
  uint64_t seq;
  void *data; /* owned: free() it */
  size_t len;
} wd_store_record_t;


/* Returns the log of that name, creating it if needed. The handle lives as
 * long as the store. Thread-safe. */
int wd_store_log_open(wd_store_t *s, const char *name, wd_store_log_t **out);
const char *wd_store_log_name(const wd_store_log_t *log);

/* Called on the writer thread after each commit that appended to `log`; must
 * be quick and must not add or remove listeners. Up to four. Thread-safe; once
 * remove returns, fn is not running and will not run again. */
typedef void (*wd_store_append_fn)(void *arg, wd_store_log_t *log);
int wd_store_add_append_listener(wd_store_t *s, wd_store_append_fn fn, void *arg);
void wd_store_remove_append_listener(wd_store_t *s, wd_store_append_fn fn, void *arg);

/* Reads committed records from seq `from` on, whoever has read them: up to
 * max, in order. Returns the count or < 0; free each record's data. Thread-safe. */
int wd_store_log_read(wd_store_log_t *log, uint64_t from, wd_store_record_t *out, size_t max);
/* The oldest retained record, and the number after the last one whose
 * appender was told it is stored: a reader starting there sees only later
 * appends (the last ~1 ms of them may not be readable yet; reads wait for
 * their commit). Thread-safe. */
void wd_store_log_bounds(wd_store_log_t *log, uint64_t *first, uint64_t *next);

typedef void (*wd_store_done_fn)(void *ctx, int rc);

/* Appends one record. The writer assigns its number and, when seq_offset !=
 * SIZE_MAX, writes it as a big-endian u64 at data[seq_offset] (so a record may
 * carry its own number). `done` gets WD_ERR_BUSY when the store is too full to
 * take it (a reserve stays free so that deletes always commit). data: taken on
 * WD_OK; on error the caller keeps it. Thread-safe. */
int wd_store_log_append(wd_store_log_t *log, void *data, size_t len, size_t seq_offset, wd_store_done_fn done,
                        void *ctx);

/* Returns the group, creating it if needed; it lives as long as the store. Thread-safe. */
int wd_store_group_open(wd_store_log_t *log, const char *name, wd_store_group_t **out);

/* Claims up to `max` (at most WD_STORE_CLAIM_MAX) records for delivery, first
 * released ones, then new ones, and hands each to `fn` in that order. `data`
 * points into the store and is valid only during the call; fn may settle the
 * record. A claimed record found gone from the log is acknowledged instead.
 * Returns the count claimed (>= 0) or < 0. Thread-safe. */
#define WD_STORE_CLAIM_MAX 256
typedef void (*wd_store_record_fn)(void *ctx, uint64_t seq, const void *data, size_t len);
int wd_store_group_claim(wd_store_group_t *g, size_t max, wd_store_record_fn fn, void *ctx);

/* Settles a claimed record: acknowledged (never delivered to this group again)
 * or released (delivered again, to any consumer of the group). Thread-safe. */
void wd_store_group_ack(wd_store_group_t *g, uint64_t seq);
void wd_store_group_release(wd_store_group_t *g, uint64_t seq);

/* ------------------------------------------------------------ device queues */

#define WD_REPLY_TO_MAX (WD_ID_MAX + 12) /* "responses/<id>" */

/* Each device has a durable FIFO queue of commands, notifications and inquiry
 * replies, held until the device takes them, they expire, or they fail too
 * often. Outcomes of commands produce feedback records and failures dead-letter
 * records; the store asks the codec (set by protocol/) to build them, so that
 * the store never knows the message format. */

typedef enum { WD_QUEUE_COMMAND = 1, WD_QUEUE_NOTIFICATION = 2 } wd_queue_kind_t;

/* A queued message as read back. Strings and data are owned; free with
 * wd_store_queued_free. */
typedef struct {
  uint64_t seq;
  wd_queue_kind_t kind;
  bool durable;
  uint8_t priority;
  uint32_t ttl_ms;         /* as the sender gave it; 0 when none */
  uint32_t delivery_count; /* failed deliveries so far */
  int64_t enqueued_ms, expiry_ms;
  char *message_id;        /* the message-id as text, the key of its status */
  void *message_id_raw;    /* the message-id as encoded AMQP (opaque here) */
  size_t message_id_raw_len;
  void *data;              /* the message without its header section */
  size_t len;
} wd_store_queued_t;
void wd_store_queued_free(wd_store_queued_t *q); /* frees the members, not q */

typedef struct {
  void *arg;
  /* Builds the feedback record for a command's outcome. Returns owned bytes
   * or NULL. *seq_offset: where its log number goes (SIZE_MAX: nowhere). */
  void *(*feedback)(void *arg, const char *device_id, const wd_store_queued_t *cmd, const char *status,
                    int64_t time_ms, size_t *len, size_t *seq_offset);
  /* Builds the dead-letter record: the whole message and why. */
  void *(*deadletter)(void *arg, const char *device_id, const wd_store_queued_t *msg, const char *reason,
                      int64_t time_ms, size_t *len, size_t *seq_offset);
} wd_store_codec_t;

/* Sets the codec and the policy before any queue is used, and starts expiry:
 * until then nothing expires, so every expiry is reported. Call once. */
void wd_store_set_codec(wd_store_t *s, const wd_store_codec_t *codec, uint32_t max_delivery_count);

typedef struct {
  wd_queue_kind_t kind;
  bool durable;
  uint8_t priority;
  uint32_t ttl_ms;
  int64_t expiry_ms;
  const char *message_id;            /* borrowed for the call */
  const void *message_id_raw;        /* borrowed for the call */
  size_t message_id_raw_len;
  const char *reply_to;              /* commands: the log its responses go to; NULL: "responses" */
  void *data;                        /* the message without header: taken on WD_OK */
  size_t len;
} wd_store_enqueue_t;

/* rc: WD_OK; WD_ERR_NOT_FOUND (no such device or group); WD_ERR_DISABLED
 * (device disabled); WD_ERR_LIMIT (the device's queue is at its limit);
 * WD_ERR_BUSY (the store is nearly full); WD_ERR_FULL. `count` is the sequence number given (append) or the number of
 * devices reached (group). */
typedef void (*wd_store_enqueue_done_fn)(void *ctx, int rc, uint64_t count);

/* Appends to one device's queue; its limit is the registry's queue_limit, or
 * default_limit when that is 0. Thread-safe. */
int wd_store_queue_append(wd_store_t *s, const char *device_id, wd_store_enqueue_t *msg, uint32_t default_limit,
                          wd_store_enqueue_done_fn done, void *ctx);

/* Appends to the queue of every enabled member of a group whose queue has
 * room; the payload is stored once. Thread-safe. */
int wd_store_group_enqueue(wd_store_t *s, const char *group, wd_store_enqueue_t *msg, uint32_t default_limit,
                           wd_store_enqueue_done_fn done, void *ctx);

/* Reads, in order, up to `max` messages of a device's queue that are not
 * expired at now_ms and whose seq is not in skip[0..n_skip). *out: owned
 * array of n entries (free each with wd_store_queued_free, then the array).
 * Returns n or < 0. Thread-safe. */
int wd_store_queue_read(wd_store_t *s, const char *device_id, const uint64_t *skip, size_t n_skip, size_t max,
                        int64_t now_ms, wd_store_queued_t **out);

typedef enum {
  WD_SETTLE_DELIVERED,     /* sent to the device: counts as a failed delivery if never settled */
  WD_SETTLE_COMPLETED,     /* accepted: removed; feedback "completed" */
  WD_SETTLE_REJECTED,      /* rejected: removed; feedback "rejected" */
  WD_SETTLE_RELEASED,      /* to be delivered again, delivery count unchanged */
  WD_SETTLE_FAILED,        /* modified delivery-failed or link lost: delivered again, count raised */
  WD_SETTLE_UNDELIVERABLE, /* modified undeliverable-here: dead-lettered; feedback "undeliverable" */
} wd_settle_t;

/* Records a delivery's fate. A message that reaches max_delivery_count failed
 * deliveries is dead-lettered (feedback "delivery-count-exceeded"). rc
 * WD_ERR_NOT_FOUND when the message is gone (expired meanwhile). Thread-safe. */
int wd_store_queue_settle(wd_store_t *s, const char *device_id, uint64_t seq, wd_settle_t how, wd_store_done_fn done,
                          void *ctx);

/* Turns every message delivered but never settled (a connection lost, a
 * crash) into a failed delivery. Called when the device attaches its receiver.
 * Thread-safe. */
int wd_store_queue_recover(wd_store_t *s, const char *device_id, wd_store_done_fn done, void *ctx);

/* Number of messages queued for a device. Thread-safe. */
int wd_store_queue_depth(wd_store_t *s, const char *device_id, uint32_t *depth);

/* Removes every message of a device's queue; each command gets feedback
 * "purged". `done` gets the number removed; WD_ERR_NOT_FOUND for an unknown
 * device. Thread-safe. */
int wd_store_queue_purge(wd_store_t *s, const char *device_id, wd_store_enqueue_done_fn done, void *ctx);

/* What became of a command, kept for a day after it ended. */
typedef struct {
  char state[16]; /* queued, delivered, completed, rejected, expired, dead-lettered, purged */
  int64_t queued_ms, delivered_ms, final_ms, expires_ms, responded_ms; /* 0: not (yet) */
  char reply_to[WD_REPLY_TO_MAX + 1];
  char response_type[256];
  void *response; /* owned, NULL unless responded; its first 64 KiB */
  size_t response_len;
} wd_store_status_t;

/* Reads a command's status. WD_ERR_NOT_FOUND if unknown. *out: fini with
 * wd_store_status_fini. Thread-safe. */
int wd_store_command_status(wd_store_t *s, const char *device_id, const char *message_id, wd_store_status_t *out);
void wd_store_status_fini(wd_store_status_t *st);

/* Records the device's response to a command in its status. body: copied.
 * WD_ERR_NOT_FOUND reaches `done` for an unknown command. Thread-safe. */
int wd_store_command_respond(wd_store_t *s, const char *device_id, const char *message_id, const char *content_type,
                             const void *body, size_t len, wd_store_done_fn done, void *ctx);

/* The reply-to recorded with a command, so that the device's response can be
 * routed. Returns WD_ERR_NOT_FOUND if unknown. out: at least WD_ID_MAX+12 bytes. Thread-safe. */
int wd_store_command_reply_to(wd_store_t *s, const char *device_id, const char *message_id,
                              char out[WD_REPLY_TO_MAX + 1]);

#endif

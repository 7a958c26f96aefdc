/* The registry of live connections and the hand-off of work to them.
 *
 * Other threads never keep a connection's pointers: they name a connection by
 * id (or a device by its id) and post a job. Posting appends to the
 * connection's job list and wakes its raw connection while conns_lock is
 * held; the connection is removed from the registry under the same lock
 * before its raw connection is let go (stream.c). So a wake can never reach a
 * freed connection. Wakes coalesce, so each wake runs every job queued so far. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/base/log.h"
#include "protocol/internal.h"

#define N_BUCKETS 16384

static size_t hash_u64(uint64_t v) { return (size_t)((v * 0x9E3779B97F4A7C15ull) >> 40) % N_BUCKETS; }

static size_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return (size_t)(h % N_BUCKETS);
}

int wd_amqp__conns_init(wd_amqp_t *a) {
  pthread_mutex_init(&a->conns_lock, NULL);
  a->n_buckets = N_BUCKETS;
  a->by_id = calloc(N_BUCKETS, sizeof *a->by_id);
  a->by_device = calloc(N_BUCKETS, sizeof *a->by_device);
  a->peers = calloc(N_BUCKETS, sizeof *a->peers);
  return a->by_id && a->by_device && a->peers ? WD_OK : WD_ERR_NOMEM;
}

void wd_amqp__conns_fini(wd_amqp_t *a) {
  for (size_t b = 0; a->peers && b < N_BUCKETS; b++) {
    wd_peer_addr_t *p = a->peers[b];
    while (p) {
      wd_peer_addr_t *next = p->next;
      free(p);
      p = next;
    }
  }
  free(a->peers);
  free(a->by_id);
  free(a->by_device);
  pthread_mutex_destroy(&a->conns_lock);
}

wd_conn_t *wd_amqp__conn_new(wd_amqp_t *a, pn_raw_connection_t *raw) {
  wd_conn_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->amqp = a;
  c->raw = raw;
  atomic_store(&c->last_seen_ms, wd_now_ms());
  wd_metric_add(&wd_metrics.connections_accepted, 1);
  pthread_mutex_lock(&a->conns_lock);
  c->id = ++a->next_conn_id;
  c->accepted_mono_ms = wd_mono_ms();
  size_t b = hash_u64(c->id);
  c->by_id_next = a->by_id[b];
  a->by_id[b] = c;
  c->all_next = a->all;
  if (c->all_next) c->all_next->all_pprev = &c->all_next;
  c->all_pprev = &a->all;
  a->all = c;
  a->n_conns++;
  pthread_mutex_unlock(&a->conns_lock);
  return c;
}

void wd_amqp__conn_free(wd_conn_t *c) {
  wd_metric_add(&wd_metrics.connections_closed, 1);
  free(c);
}

size_t wd_amqp__conn_count(wd_amqp_t *a) {
  pthread_mutex_lock(&a->conns_lock);
  size_t n = a->n_conns;
  pthread_mutex_unlock(&a->conns_lock);
  return n;
}

static wd_conn_t *find_device_locked(wd_amqp_t *a, const char *device_id) {
  wd_conn_t *c = a->by_device[hash_str(device_id)];
  while (c && strcmp(c->who.id, device_id) != 0) c = c->by_device_next;
  return c;
}

static void unlink_device_locked(wd_conn_t *c) {
  if (!c->in_device_index) return;
  wd_conn_t **pp = &c->amqp->by_device[hash_str(c->who.id)];
  while (*pp && *pp != c) pp = &(*pp)->by_device_next;
  if (*pp) *pp = c->by_device_next;
  c->in_device_index = false;
}

static void post_locked(wd_conn_t *c, wd_job_fn fn, void *arg, wd_job_t *job) {
  job->fn = fn;
  job->arg = arg;
  job->next = NULL;
  if (c->jobs_tail)
    c->jobs_tail->next = job;
  else
    c->jobs_head = job;
  c->jobs_tail = job;
  pn_raw_connection_wake(c->raw);
}

typedef struct {
  const char *condition;
  char *description;
} close_job_t;

static void run_close(wd_conn_t *c, void *arg, bool discard) {
  close_job_t *j = arg;
  if (!discard) wd_amqp__conn_close_PT(c, j->condition, j->description);
  free(j->description);
  free(j);
}

/* Posts a close to c; the caller holds conns_lock. */
static void post_close_locked(wd_conn_t *c, const char *condition, const char *description) {
  close_job_t *cj = malloc(sizeof *cj);
  wd_job_t *job = malloc(sizeof *job);
  char *desc = strdup(description);
  if (!cj || !job || !desc) {
    /* Out of memory: the connection stays open until its next close; say so loudly. */
    wd_log("amqp", WD_LOG_ERROR, "[C%llu] out of memory: could not close connection (%s)",
           (unsigned long long)c->id, description);
    free(cj);
    free(job);
    free(desc);
    return;
  }
  cj->condition = condition;
  cj->description = desc;
  post_locked(c, run_close, cj, job);
}

void wd_amqp__conn_index_device(wd_conn_t *c) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t *old = find_device_locked(a, c->who.id);
  if (old) {
    unlink_device_locked(old);
    post_close_locked(old, "amqp:connection:forced", "replaced by a newer connection of the same device");
  }
  size_t b = hash_str(c->who.id);
  c->by_device_next = a->by_device[b];
  a->by_device[b] = c;
  c->in_device_index = true;
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__conn_add_consumer(wd_conn_t *c) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  if (!c->in_consumer_list && !c->gone) {
    c->consumer_next = a->consumers;
    a->consumers = c;
    c->in_consumer_list = true;
  }
  pthread_mutex_unlock(&a->conns_lock);
}

/* Every new connection is watched until its first idle deadline, so with many
 * connections opening and closing, unlinking must not walk the list. */
static void idle_unwatch_locked(wd_conn_t *c) {
  *c->idle_pprev = c->idle_next;
  if (c->idle_next) c->idle_next->idle_pprev = c->idle_pprev;
  c->idle_watched = false;
}

void wd_amqp__conn_gone(wd_conn_t *c) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t **pp = &a->by_id[hash_u64(c->id)];
  while (*pp && *pp != c) pp = &(*pp)->by_id_next;
  if (*pp) *pp = c->by_id_next;
  if (c->all_pprev) {
    *c->all_pprev = c->all_next;
    if (c->all_next) c->all_next->all_pprev = c->all_pprev;
    c->all_pprev = NULL;
  }
  unlink_device_locked(c);
  if (c->in_consumer_list) {
    pp = &a->consumers;
    while (*pp && *pp != c) pp = &(*pp)->consumer_next;
    if (*pp) *pp = c->consumer_next;
    c->in_consumer_list = false;
  }
  if (c->idle_watched) idle_unwatch_locked(c);
  if (c->throttled) {
    pp = &a->throttled;
    while (*pp && *pp != c) pp = &(*pp)->throttled_next;
    if (*pp) *pp = c->throttled_next;
    c->throttled = false;
  }
  if (c->in_closing_list) {
    pp = &a->closing;
    while (*pp && *pp != c) pp = &(*pp)->closing_next;
    if (*pp) *pp = c->closing_next;
    c->in_closing_list = false;
  }
  a->n_conns--;
  if (c->peer) c->peer->conns--;
  c->peer = NULL;
  c->gone = true;
  wd_job_t *jobs = c->jobs_head;
  c->jobs_head = c->jobs_tail = NULL;
  pthread_mutex_unlock(&a->conns_lock);
  while (jobs) {
    wd_job_t *next = jobs->next;
    jobs->fn(NULL, jobs->arg, true);
    free(jobs);
    jobs = next;
  }
}

void wd_amqp__post(wd_amqp_t *a, uint64_t conn_id, wd_job_fn fn, void *arg) {
  wd_job_t *job = malloc(sizeof *job);
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t *c = a->by_id[hash_u64(conn_id)];
  while (c && c->id != conn_id) c = c->by_id_next;
  if (c && job) {
    post_locked(c, fn, arg, job);
    pthread_mutex_unlock(&a->conns_lock);
    return;
  }
  pthread_mutex_unlock(&a->conns_lock);
  free(job);
  fn(NULL, arg, true);
}

void wd_amqp__conn_run_jobs(wd_conn_t *c) {
  pthread_mutex_lock(&c->amqp->conns_lock);
  wd_job_t *jobs = c->jobs_head;
  c->jobs_head = c->jobs_tail = NULL;
  pthread_mutex_unlock(&c->amqp->conns_lock);
  while (jobs) {
    wd_job_t *next = jobs->next;
    jobs->fn(c, jobs->arg, false);
    free(jobs);
    jobs = next;
  }
}

/* Posts one pump job to c unless one is already queued. Caller holds conns_lock. */
static void post_pump_locked(wd_conn_t *c) {
  if (atomic_exchange(&c->pump_pending, true)) return;
  wd_job_t *job = malloc(sizeof *job);
  if (!job) {
    atomic_store(&c->pump_pending, false);
    return;
  }
  post_locked(c, wd_amqp__pump_job, NULL, job);
}

void wd_amqp__post_consumers(wd_amqp_t *a) {
  pthread_mutex_lock(&a->conns_lock);
  for (wd_conn_t *c = a->consumers; c; c = c->consumer_next) post_pump_locked(c);
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_device(wd_amqp_t *a, const char *device_id) {
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t *c = find_device_locked(a, device_id);
  if (c && c->has_egress) post_pump_locked(c);
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_devices(wd_amqp_t *a) {
  pthread_mutex_lock(&a->conns_lock);
  for (size_t b = 0; b < a->n_buckets; b++)
    for (wd_conn_t *c = a->by_device[b]; c; c = c->by_device_next)
      if (c->has_egress) post_pump_locked(c);
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_all(wd_amqp_t *a, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (size_t b = 0; b < a->n_buckets; b++) {
    for (wd_conn_t *c = a->by_id[b]; c; c = c->by_id_next) {
      wd_job_t *job = malloc(sizeof *job);
      if (job) post_locked(c, fn, NULL, job);
    }
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_expired(wd_amqp_t *a, int64_t now_s, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (size_t b = 0; b < a->n_buckets; b++) {
    wd_conn_t *next;
    for (wd_conn_t *c = a->by_device[b]; c; c = next) {
      next = c->by_device_next;
      if (c->who.token_expiry_s == 0 || c->who.token_expiry_s > now_s) continue;
      wd_job_t *job = malloc(sizeof *job);
      if (!job) continue;
      unlink_device_locked(c); /* closing: not posted again, and no longer "connected" */
      post_locked(c, fn, NULL, job);
    }
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__conn_closing(wd_conn_t *c, int64_t deadline_mono_ms) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  if (!c->in_closing_list && !c->gone) {
    c->close_deadline_ms = deadline_mono_ms;
    c->closing_next = a->closing;
    a->closing = c;
    c->in_closing_list = true;
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_overdue(wd_amqp_t *a, int64_t now_mono_ms, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (wd_conn_t *c = a->closing; c; c = c->closing_next) {
    if (c->close_deadline_ms > now_mono_ms) continue;
    wd_job_t *job = malloc(sizeof *job);
    if (job) post_locked(c, fn, NULL, job);
    c->close_deadline_ms = INT64_MAX; /* once */
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp_revoke_device(wd_amqp_t *a, const char *device_id, const char *reason) {
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t *c = find_device_locked(a, device_id);
  if (c) {
    unlink_device_locked(c);
    post_close_locked(c, "amqp:unauthorized-access", reason);
  }
  pthread_mutex_unlock(&a->conns_lock);
}

bool wd_amqp_device_connected(wd_amqp_t *a, const char *device_id, int64_t *last_seen_ms) {
  pthread_mutex_lock(&a->conns_lock);
  wd_conn_t *c = find_device_locked(a, device_id);
  if (c && last_seen_ms) *last_seen_ms = atomic_load(&c->last_seen_ms);
  pthread_mutex_unlock(&a->conns_lock);
  return c != NULL;
}

#define AUTH_WINDOW_MS 60000

/* The entry of ip, created if asked. Caller holds conns_lock. */
static wd_peer_addr_t *peer_find_locked(wd_amqp_t *a, const char *ip, bool create) {
  wd_peer_addr_t **pp = &a->peers[hash_str(ip)];
  for (wd_peer_addr_t *p = *pp; p; p = p->next)
    if (strcmp(p->ip, ip) == 0) return p;
  if (!create) return NULL;
  wd_peer_addr_t *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  snprintf(p->ip, sizeof p->ip, "%s", ip);
  p->next = *pp;
  *pp = p;
  return p;
}

int wd_amqp__conn_bind(wd_conn_t *c, const char *ip) {
  wd_amqp_t *a = c->amqp;
  int rc = WD_OK;
  pthread_mutex_lock(&a->conns_lock);
  wd_peer_addr_t *p = c->gone ? NULL : peer_find_locked(a, ip, true);
  if (p) {
    p->conns++;
    c->peer = p;
    if (p->blocked_until_ms > wd_mono_ms())
      rc = WD_ERR_DENIED;
    else if (p->conns > a->cfg.max_connections_per_address)
      rc = WD_ERR_LIMIT;
  }
  pthread_mutex_unlock(&a->conns_lock);
  return rc;
}

void wd_amqp__auth_failed(wd_amqp_t *a, const char *ip) {
  int64_t now = wd_mono_ms();
  bool blocked = false;
  pthread_mutex_lock(&a->conns_lock);
  wd_peer_addr_t *p = peer_find_locked(a, ip, true);
  if (p) {
    if (now - p->window_start_ms > AUTH_WINDOW_MS) {
      p->window_start_ms = now;
      p->failures = 0;
    }
    if (++p->failures >= a->cfg.auth_failures_per_address && p->blocked_until_ms <= now) {
      p->blocked_until_ms = now + a->cfg.auth_block_ms;
      blocked = true;
    }
  }
  pthread_mutex_unlock(&a->conns_lock);
  if (blocked)
    wd_log("amqp", WD_LOG_WARNING, "%s failed to log in %u times within a minute: refused for %u s", ip,
           a->cfg.auth_failures_per_address, a->cfg.auth_block_ms / 1000);
}

bool wd_amqp__addr_blocked(wd_amqp_t *a, const char *ip) {
  pthread_mutex_lock(&a->conns_lock);
  wd_peer_addr_t *p = peer_find_locked(a, ip, false);
  bool blocked = p && p->blocked_until_ms > wd_mono_ms();
  pthread_mutex_unlock(&a->conns_lock);
  return blocked;
}

void wd_amqp__conn_admitted(wd_conn_t *c) {
  pthread_mutex_lock(&c->amqp->conns_lock);
  c->admitted = true;
  pthread_mutex_unlock(&c->amqp->conns_lock);
}

void wd_amqp__post_unadmitted(wd_amqp_t *a, int64_t now, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (size_t b = 0; b < a->n_buckets; b++) {
    for (wd_conn_t *c = a->by_id[b]; c; c = c->by_id_next) {
      if (c->admitted || c->accepted_mono_ms == INT64_MAX || now - c->accepted_mono_ms < (int64_t)a->cfg.sasl_timeout_ms)
        continue;
      wd_job_t *job = malloc(sizeof *job);
      if (!job) continue;
      c->accepted_mono_ms = INT64_MAX; /* once */
      post_locked(c, fn, NULL, job);
    }
    /* Forget addresses with nothing left to remember. */
    for (wd_peer_addr_t **pp = &a->peers[b]; *pp;) {
      wd_peer_addr_t *p = *pp;
      if (p->conns == 0 && p->blocked_until_ms <= now && now - p->window_start_ms > AUTH_WINDOW_MS) {
        *pp = p->next;
        free(p);
      } else {
        pp = &p->next;
      }
    }
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__conn_throttle(wd_conn_t *c) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  if (!c->throttled && !c->gone) {
    c->throttled = true;
    c->throttled_next = a->throttled;
    a->throttled = c;
  }
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__post_throttled(wd_amqp_t *a, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (wd_conn_t *c = a->throttled, *next; c; c = next) {
    next = c->throttled_next;
    c->throttled = false;
    c->throttled_next = NULL;
    wd_job_t *job = malloc(sizeof *job);
    if (job) post_locked(c, fn, NULL, job);
  }
  a->throttled = NULL;
  pthread_mutex_unlock(&a->conns_lock);
}

void wd_amqp__conn_watch_idle(wd_conn_t *c, int64_t deadline_mono_ms) {
  wd_amqp_t *a = c->amqp;
  pthread_mutex_lock(&a->conns_lock);
  if (!c->idle_watched && !c->gone) {
    c->idle_deadline_ms = deadline_mono_ms;
    c->idle_watched = true;
    c->idle_next = a->idle_watch;
    if (c->idle_next) c->idle_next->idle_pprev = &c->idle_next;
    c->idle_pprev = &a->idle_watch;
    a->idle_watch = c;
  }
  pthread_mutex_unlock(&a->conns_lock);
}

int64_t wd_amqp__wake_ticks_due(wd_amqp_t *a, int64_t now) {
  int64_t next = INT64_MAX;
  pthread_mutex_lock(&a->conns_lock);
  for (wd_conn_t *c = a->all; c; c = c->all_next) {
    int64_t due = atomic_load(&c->tick_due_ms);
    if (due <= 0) continue;
    if (due <= now)
      pn_raw_connection_wake(c->raw);
    else if (due < next && atomic_load(&c->tick_on_time))
      next = due;
  }
  pthread_mutex_unlock(&a->conns_lock);
  return next;
}

void wd_amqp__post_idle_due(wd_amqp_t *a, int64_t now, wd_job_fn fn) {
  pthread_mutex_lock(&a->conns_lock);
  for (wd_conn_t *c = a->idle_watch, *next; c; c = next) {
    next = c->idle_next;
    if (c->idle_deadline_ms > now) continue;
    idle_unwatch_locked(c);
    wd_job_t *job = malloc(sizeof *job);
    if (job) post_locked(c, fn, NULL, job);
  }
  pthread_mutex_unlock(&a->conns_lock);
}

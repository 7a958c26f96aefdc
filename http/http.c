/* The REST server: libmicrohttpd on one internal epoll thread (the HTTP
 * thread), requests as objects, and the hand-off of registry writes to the
 * store's writer thread.
 *
 * Threads. Every access handler and completion callback runs on the HTTP
 * thread, so a request object belongs to that thread, with one exception:
 * while a store write is in flight the request is suspended, and the store
 * writer thread's `done` callback fills in its result fields (store_rc, after)
 * and resumes it. Those fields, the `pending` link between request and write,
 * and the counters below are guarded by g_lock. Reads (get, list, by
 * thumbprint) run directly on the HTTP thread: they are short LMDB read
 * transactions.
 *
 * Suspend before submit: the connection is suspended *before* the write is
 * handed to the store, so a commit that finishes at once never resumes a
 * connection that is still running. Whoever resumes a request (the store
 * callback, the submit error path or wd_http_stop) first unlinks its pending
 * record under g_lock, so a request is resumed exactly once, and counts itself
 * in n_resuming until MHD_resume_connection has returned, so that
 * MHD_stop_daemon (which aborts on a suspended connection) cannot run in
 * between. No MHD function is ever called with g_lock held, so there is no
 * lock order to keep with libmicrohttpd's own mutexes.
 *
 * A pending record outlives its request when wd_http_stop gives up waiting: it
 * then belongs to the store callback alone, which frees it without touching
 * the request or the server.
 *
 * Stopping drains: no new connections, every response says Connection: close,
 * new writes get 503, and requests in flight get up to STOP_GRACE_MS to be
 * answered and sent (a resumed request is not yet an answered one, and
 * MHD_stop_daemon would close it unanswered). What is still parked then is
 * answered 503 shutting_down. */

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "http/http.h"
#include "gateway/base/metrics.h"
#include "http/internal.h"

#define STOP_GRACE_MS 5000       /* how long wd_http_stop lets requests in flight finish */
#define STOP_ANSWER_MS 1000      /* and then how long it waits for the 503s it forced */
#define CONNECTION_TIMEOUT_S 60u /* idle keep-alive connections; suspended ones are exempt */
#define PUT_ATTEMPTS 3           /* create/update races retried before 409 */
#define KEY_B64_LEN ((WD_KEY_BYTES + 2) / 3 * 4 + 1)

typedef struct wd_http_req wd_http_req_t;
typedef struct pending pending_t;

/* One registry write in flight. Owned by the store callback (which always
 * runs exactly once after a successful submit) or, when the submit fails, by
 * the submitter. */
struct pending {
  wd_http_t *h;           /* valid while req != NULL */
  wd_http_req_t *req;     /* NULL once unlinked */
  pending_t *prev, *next; /* in h->pending while req != NULL */
};

typedef enum {
  REQ_OPEN,    /* headers seen; reading the body or answering */
  REQ_WAITING, /* suspended on a store write, or resumed with its result */
} req_state_t;

struct wd_http_req {
  wd_http_t *h;
  struct MHD_Connection *conn;
  uint64_t id;
  int64_t start_ms;
  const char *method; /* borrowed from MHD for the request's life */
  const char *url;    /* raw path, not percent-decoded (see unescape_none) */
  wd_http_route_t route;

  char *body; /* owned; NUL-terminated */
  size_t body_len, body_cap;
  bool too_large;
  bool answered; /* a response is queued; ignore whatever MHD still delivers */

  req_state_t state;
  wd_device_op_t op;           /* the write in flight or last finished */
  int attempts;                /* CREATE submissions made by a PUT */
  wd_http_device_body_t dev;   /* the parsed PUT body */
  bool dev_parsed;
  uint8_t key[WD_KEY_BYTES];   /* the key a CREATE or ROTATE sets */
  bool key_fresh;
  char old_thumbprint[WD_THUMBPRINT_HEX + 1]; /* before an UPDATE */
  bool old_has_key;                           /* before an UPDATE */

  /* Guarded by g_lock while state == REQ_WAITING. */
  pending_t *pending;
  int store_rc;
  wd_device_t *after; /* owned copy of the committed record */
  uint32_t wait_s;    /* a command send that waits for the response */
  const char *location, *retry_after, *message_id; /* extra response headers, borrowed while answering */
  wd_http_principal_t who; /* the caller, once authenticated */
  wd_send_result_t sent; /* its outcome; strings point into the fields below */
  char sent_outcome[32];
  char sent_type[256];
  void *sent_body;    /* owned */
  uint64_t purged;
};

struct wd_http {
  struct MHD_Daemon *daemon;
  wd_store_t *store; /* borrowed */
  wd_http_ops_t ops;
  uint32_t default_queue_limit;
  uint32_t max_payload;
  wd_jwt_config_t jwt; /* strings owned; issuer NULL when JWTs are off */
  uint16_t port;
  bool started;  /* set once MHD_start_daemon returned: MHD's log goes to DEBUG */
  uint64_t next_req_id; /* HTTP thread only */
  char *tls_key_pem, *tls_cert_pem;
  size_t tls_key_len;

  wd_store_log_t *telemetry; /* streamed to SSE clients */
  struct sse *streams;        /* guarded by g_lock */
  uint64_t telemetry_gen;     /* guarded by g_lock; raised by each telemetry commit */
  pthread_t keepalive;
  bool keepalive_started;

  /* Guarded by g_lock. */
  bool stopping;
  pending_t *pending;
  size_t n_pending, n_resuming;
  size_t n_active;     /* requests between their first handler call and their completion */
  pthread_cond_t cond; /* signalled when n_pending, n_resuming or n_active drops */
};

/* One lock for every server: the store callback may run after its server
 * stopped waiting for it, and then it must not need anything of the server's. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---------------------------------------------------------------- answers */

/* The URL as it may appear in a log line: bounded and printable. */
static const char *log_url(const char *url, char buf[160]) {
  size_t n = 0;
  for (; url && url[n] && n < 159; n++) {
    unsigned char c = (unsigned char)url[n];
    buf[n] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
  }
  buf[n] = '\0';
  return buf;
}

/* Queues status with body (taken; NULL for none) of len bytes and the given
 * content type, plus whatever headers the request collected. */
static enum MHD_Result answer_raw(wd_http_req_t *r, unsigned status, char *body, size_t len, const char *type,
                                  const char *allow) {
  struct MHD_Response *resp;
  if (body) {
    resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(body);
  } else {
    resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
  }
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  pthread_mutex_lock(&g_lock);
  bool stopping = r->h->stopping;
  pthread_mutex_unlock(&g_lock);
  if (stopping) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
  if (r->location) MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, r->location);
  if (r->retry_after) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, r->retry_after);
  if (r->message_id) MHD_add_response_header(resp, "X-Message-Id", r->message_id);
  if (status == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
  enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
  MHD_destroy_response(resp);
  r->answered = true;
  wd_metric_add(&wd_metrics.http_requests, 1);
  if (status >= 500) wd_metric_add(&wd_metrics.http_errors, 1);
  char ub[160];
  wd_log("http", WD_LOG_DEBUG, "[H%llu] %s %s -> %u (%lld ms)", (unsigned long long)r->id, r->method,
         log_url(r->url, ub), status, (long long)(wd_mono_ms() - r->start_ms));
  return ret;
}

/* Queues status with a JSON body (taken; NULL for none). */
static enum MHD_Result answer(wd_http_req_t *r, unsigned status, char *body, const char *allow) {
  return answer_raw(r, status, body, body ? strlen(body) : 0, "application/json", allow);
}

__attribute__((format(printf, 4, 5)))
static enum MHD_Result answer_error(wd_http_req_t *r, unsigned status, const char *code, const char *fmt,
                                    ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char *body = wd_http__error_body(code, msg);
  if (!body) return MHD_NO;
  return answer(r, status, body, status == MHD_HTTP_METHOD_NOT_ALLOWED ? r->route.allow : NULL);
}

/* Answers a negative wd_err_t from the store. Unexpected ones are logged:
 * this is where the error is decided. */
static enum MHD_Result answer_store_error(wd_http_req_t *r, int rc) {
  const char *code;
  unsigned status = wd_http__err_status(rc, &code);
  switch (rc) {
    case WD_ERR_NOT_FOUND: return answer_error(r, status, code, "device %s not found", r->route.id);
    case WD_ERR_FULL: return answer_error(r, status, code, "the store is full; try again later");
    case WD_ERR_BUSY:
      r->retry_after = "10";
      return answer_error(r, status, code, "the store is nearly full; try again when consumers have drained it");
    case WD_ERR_SHUTDOWN: return answer_error(r, status, code, "the server is shutting down");
    default: break;
  }
  if (status >= 500)
    wd_log("http", WD_LOG_ERROR, "[H%llu] store error on device %s: %s", (unsigned long long)r->id,
           r->route.id, wd_err_str(rc));
  return answer_error(r, status, code, "%s", wd_err_str(rc));
}

static enum MHD_Result answer_json(wd_http_req_t *r, unsigned status, json_t *j /* taken */) {
  char *text = j ? wd_http__json_text(j) : NULL;
  json_decref(j);
  if (!text) return answer_store_error(r, WD_ERR_NOMEM);
  return answer(r, status, text, NULL);
}

static json_t *device_render(wd_http_t *h, const wd_device_t *d, const char *key_b64) {
  wd_http_live_t live = {0};
  if (h->ops.device_connected) live.connected = h->ops.device_connected(h->ops.ctx, d->id, &live.last_seen_ms);
  if (!live.connected) wd_store_presence_get(h->store, d->id, &live.last_seen_ms); /* a sleeping device */
  uint32_t depth = 0;
  if (wd_store_queue_depth(h->store, d->id, &depth) == WD_OK) live.queue_depth = depth;
  return wd_http__device_render(d, &live, h->default_queue_limit, key_b64);
}

static enum MHD_Result answer_device(wd_http_req_t *r, unsigned status, const wd_device_t *d, bool show_key) {
  char b64[KEY_B64_LEN];
  if (show_key) wd_base64_encode(r->key, sizeof r->key, b64);
  enum MHD_Result ret = answer_json(r, status, device_render(r->h, d, show_key ? b64 : NULL));
  explicit_bzero(b64, sizeof b64);
  return ret;
}

static void revoke_device(wd_http_req_t *r, const char *reason) {
  wd_http_t *h = r->h;
  wd_log("http", WD_LOG_DEBUG, "[H%llu] revoking device %s: %s", (unsigned long long)r->id, r->route.id, reason);
  if (h->ops.revoke_device) h->ops.revoke_device(h->ops.ctx, r->route.id, reason);
}

/* ---------------------------------------------------------- store hand-off */

/* Unlinks p from its server and request. g_lock held. */
static void pending_unlink(pending_t *p) {
  wd_http_t *h = p->h;
  if (p->prev) p->prev->next = p->next;
  else h->pending = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
  h->n_pending--;
  p->req->pending = NULL;
  p->req = NULL;
}

/* Resumes a connection whose request the caller unlinked (and counted in
 * n_resuming) under g_lock. Any thread. */
static void resume(wd_http_t *h, struct MHD_Connection *conn) {
  MHD_resume_connection(conn);
  pthread_mutex_lock(&g_lock);
  h->n_resuming--;
  pthread_cond_broadcast(&h->cond);
  pthread_mutex_unlock(&g_lock);
}

/* Any thread: the request p was parked for, unlinked and counted as
 * resuming, with g_lock held so the caller can hand it the outcome before
 * unpark_finish; NULL, unlocked, when stop has answered it already. */
static wd_http_req_t *unpark_claim(pending_t *p) {
  pthread_mutex_lock(&g_lock);
  wd_http_req_t *r = p->req;
  if (!r) {
    pthread_mutex_unlock(&g_lock);
    return NULL;
  }
  pending_unlink(p);
  r->h->n_resuming++;
  return r;
}

static void unpark_finish(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  struct MHD_Connection *conn = r->conn; /* r may be gone once resumed */
  pthread_mutex_unlock(&g_lock);
  resume(h, conn);
}

/* Store writer thread. Copies the result into the request, if it still has
 * one, and resumes it; never blocks. */
static void on_write_done(void *ctx, int rc, const wd_device_t *after) {
  pending_t *p = ctx;
  wd_device_t *copy = (rc == WD_OK && after) ? wd_device_dup(after) : NULL;
  wd_http_req_t *r = unpark_claim(p);
  if (r) {
    r->store_rc = rc;
    r->after = copy;
    copy = NULL;
    unpark_finish(r);
  }
  wd_device_free(copy);
  free(p);
}

static pending_t *park(wd_http_req_t *r);
static void unpark_failed(wd_http_req_t *r, pending_t *p, int rc);

/* Suspends r and hands `change` (borrowed for the call) to the store writer.
 * Whatever happens, the handler is called again once the request resumes and
 * finds the outcome in store_rc: an immediate failure resumes it here. HTTP
 * thread. */
static enum MHD_Result submit(wd_http_req_t *r, wd_device_op_t op, const wd_device_t *change) {
  r->op = op;
  pending_t *p = park(r);
  if (!p) return MHD_YES; /* answered: stopping, or out of memory */
  int rc = wd_store_device_write(r->h->store, op, change, on_write_done, p);
  if (rc < 0) unpark_failed(r, p, rc); /* the callback will never run */
  return MHD_YES;
}

static void change_init(wd_device_t *c, const char *id) {
  memset(c, 0, sizeof *c);
  memcpy(c->id, id, strlen(id) + 1);
  c->groups = (char *)"";
  c->peers = (char *)"";
  c->created_ms = c->updated_ms = wd_now_ms();
}

/* ---------------------------------------------------------------- devices */

static enum MHD_Result device_get(wd_http_req_t *r) {
  wd_device_t *d = NULL;
  int rc = wd_store_device_get(r->h->store, r->route.id, &d);
  if (rc < 0) return answer_store_error(r, rc);
  enum MHD_Result ret = answer_device(r, MHD_HTTP_OK, d, false);
  wd_device_free(d);
  return ret;
}

static bool may_reach_device(wd_http_req_t *r, const char *id);
static bool listed(char **ids, size_t n, const char *id);

static enum MHD_Result device_list(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  const char *cursor_raw = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "cursor");
  const char *limit_raw = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "limit");
  char cursor[WD_ID_MAX + 1], msg[256];
  size_t limit;
  if (wd_http__list_query_parse(cursor_raw, limit_raw, cursor, &limit, msg, sizeof msg) < 0)
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "%s", msg);

  /* One more than asked tells whether another page follows. */
  wd_device_t **devs = NULL;
  int n = wd_store_device_list(h->store, cursor, limit + 1, &devs);
  if (n < 0) return answer_store_error(r, n);
  size_t shown = (size_t)n > limit ? limit : (size_t)n;
  json_t *list = json_array(), *root = json_object();
  bool bad = !list || !root;
  /* A restricted caller sees its devices only (pages may then be short). */
  for (size_t i = 0; i < shown && !bad; i++)
    if (may_reach_device(r, devs[i]->id)) bad = json_array_append_new(list, device_render(h, devs[i], NULL)) < 0;
  if (!bad) {
    bad = json_object_set(root, "devices", list) < 0 ||
          json_object_set_new(root, "nextCursor",
                              (size_t)n > limit ? json_string(devs[shown - 1]->id) : json_null()) < 0;
  }
  json_decref(list);
  for (int i = 0; i < n; i++) wd_device_free(devs[i]);
  free(devs);
  if (bad) {
    json_decref(root);
    return answer_store_error(r, WD_ERR_NOMEM);
  }
  return answer_json(r, MHD_HTTP_OK, root);
}

/* PUT: CREATE first, and UPDATE when the id is taken. The device may appear
 * or vanish between the two, so both directions are retried a few times. */
static enum MHD_Result put_create(wd_http_req_t *r) {
  wd_device_t c;
  change_init(&c, r->route.id);
  c.enabled = true;
  c.groups = r->dev.groups;
  c.peers = r->dev.peers;
  c.queue_limit = r->dev.queue_limit;
  memcpy(c.thumbprint, r->dev.thumbprint, sizeof c.thumbprint);
  r->key_fresh = false;
  if (r->dev.key) {
    if (wd_random_bytes(r->key, sizeof r->key) < 0) return answer_store_error(r, WD_ERR_IO);
    memcpy(c.key, r->key, sizeof c.key);
    c.has_key = true;
    r->key_fresh = true;
  }
  r->attempts++;
  enum MHD_Result ret = submit(r, WD_DEVICE_CREATE, &c);
  explicit_bzero(c.key, sizeof c.key);
  return ret;
}

/* 409 when another device holds the thumbprint; otherwise retry the CREATE
 * while attempts last. */
static enum MHD_Result put_retry(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  if (r->dev.thumbprint[0]) {
    char owner[WD_ID_MAX + 1];
    int rc = wd_store_device_by_thumbprint(h->store, r->dev.thumbprint, owner);
    if (rc == WD_OK && strcmp(owner, r->route.id) != 0)
      return answer_error(r, MHD_HTTP_CONFLICT, "conflict", "the thumbprint is registered to device %s", owner);
    if (rc < 0 && rc != WD_ERR_NOT_FOUND) return answer_store_error(r, rc);
  }
  if (r->attempts >= PUT_ATTEMPTS)
    return answer_error(r, MHD_HTTP_CONFLICT, "conflict", "device %s changed concurrently; try again",
                        r->route.id);
  return put_create(r);
}

static enum MHD_Result put_update(wd_http_req_t *r) {
  wd_device_t *cur = NULL;
  int rc = wd_store_device_get(r->h->store, r->route.id, &cur);
  if (rc == WD_ERR_NOT_FOUND) return put_retry(r);
  if (rc < 0) return answer_store_error(r, rc);
  wd_device_t c;
  change_init(&c, r->route.id);
  c.enabled = cur->enabled;
  c.groups = r->dev.groups;
  c.peers = r->dev.peers;
  c.queue_limit = r->dev.queue_limit;
  /* Credentials change only when the body speaks of them; "key": false drops the key. */
  memcpy(c.thumbprint, r->dev.has_auth ? r->dev.thumbprint : cur->thumbprint, sizeof c.thumbprint);
  c.has_key = cur->has_key && !(r->dev.has_auth && !r->dev.key);
  memcpy(r->old_thumbprint, cur->thumbprint, sizeof r->old_thumbprint);
  r->old_has_key = cur->has_key;
  wd_device_free(cur);
  return submit(r, WD_DEVICE_UPDATE, &c);
}

/* A restricted caller may list as peers only devices it reaches and groups it
 * holds: otherwise it could let its device command others. */
static bool peers_allowed(wd_http_req_t *r, const char *peers, char bad[WD_ID_MAX + 1]) {
  if (!r->who.restricted) return true;
  for (const char *p = peers; *p;) {
    size_t len = strcspn(p, " ");
    if (len > 0 && len <= WD_ID_MAX) {
      char id[WD_ID_MAX + 1];
      memcpy(id, p, len);
      id[len] = '\0';
      if (!listed(r->who.groups, r->who.n_groups, id) && !may_reach_device(r, id)) {
        memcpy(bad, id, len + 1);
        return false;
      }
    }
    p += len;
    while (*p == ' ') p++;
  }
  return true;
}

static enum MHD_Result device_put(wd_http_req_t *r) {
  char msg[256];
  /* A device named like a service could never log in: PLAIN user names are looked up as services first. */
  if (r->h->ops.is_service && r->h->ops.is_service(r->h->ops.ctx, r->route.id))
    return answer_error(r, MHD_HTTP_CONFLICT, "conflict", "the id %s is the name of a service", r->route.id);
  int rc = wd_http__device_body_parse(r->body ? r->body : "", r->body_len, r->route.id, &r->dev, msg, sizeof msg);
  if (rc == WD_ERR_INVALID) return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "%s", msg);
  if (rc < 0) return answer_store_error(r, rc);
  r->dev_parsed = true;
  char bad[WD_ID_MAX + 1];
  if (!peers_allowed(r, r->dev.peers, bad))
    return answer_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "the token does not reach peer %s", bad);
  if (r->dev.thumbprint[0]) {
    char owner[WD_ID_MAX + 1];
    rc = wd_store_device_by_thumbprint(r->h->store, r->dev.thumbprint, owner);
    if (rc == WD_OK && strcmp(owner, r->route.id) != 0)
      return answer_error(r, MHD_HTTP_CONFLICT, "conflict", "the thumbprint is registered to device %s", owner);
    if (rc < 0 && rc != WD_ERR_NOT_FOUND) return answer_store_error(r, rc);
  }
  return put_create(r);
}

/* The committed record: the callback's copy, or a fresh read when copying it
 * ran out of memory. Returned owned, or NULL. */
static wd_device_t *take_after(wd_http_req_t *r) {
  wd_device_t *d = r->after;
  r->after = NULL;
  if (!d) (void)wd_store_device_get(r->h->store, r->route.id, &d);
  return d;
}

static enum MHD_Result answer_after(wd_http_req_t *r, unsigned status, bool show_key) {
  wd_device_t *d = take_after(r);
  if (!d) return answer_store_error(r, WD_ERR_NOMEM);
  enum MHD_Result ret = answer_device(r, status, d, show_key);
  wd_device_free(d);
  return ret;
}

static enum MHD_Result put_done(wd_http_req_t *r, int rc) {
  if (r->op == WD_DEVICE_CREATE) {
    if (rc == WD_OK) {
      wd_log("http", WD_LOG_INFO, "[H%llu] device %s created", (unsigned long long)r->id, r->route.id);
      return answer_after(r, MHD_HTTP_CREATED, r->key_fresh);
    }
    if (rc == WD_ERR_EXISTS) return put_update(r);
    return answer_store_error(r, rc);
  }
  if (rc == WD_OK) {
    wd_device_t *d = take_after(r);
    if (!d) return answer_store_error(r, WD_ERR_NOMEM);
    if ((r->old_thumbprint[0] && strcmp(r->old_thumbprint, d->thumbprint) != 0) || (r->old_has_key && !d->has_key))
      revoke_device(r, "credentials changed");
    enum MHD_Result ret = answer_device(r, MHD_HTTP_OK, d, false);
    wd_device_free(d);
    return ret;
  }
  if (rc == WD_ERR_EXISTS) return put_retry(r); /* UPDATE: the thumbprint is another device's */
  if (rc == WD_ERR_NOT_FOUND) return put_retry(r); /* deleted since the CREATE */
  return answer_store_error(r, rc);
}

/* DELETE, disable, enable, rotate: one write each. */
static enum MHD_Result device_change(wd_http_req_t *r) {
  static const wd_device_op_t ops[] = {
      [WD_HTTP_ROUTE_DEVICE_DELETE] = WD_DEVICE_DELETE,
      [WD_HTTP_ROUTE_DEVICE_DISABLE] = WD_DEVICE_DISABLE,
      [WD_HTTP_ROUTE_DEVICE_ENABLE] = WD_DEVICE_ENABLE,
      [WD_HTTP_ROUTE_DEVICE_ROTATE] = WD_DEVICE_ROTATE,
  };
  wd_device_t c;
  change_init(&c, r->route.id);
  wd_device_op_t op = ops[r->route.kind];
  if (op == WD_DEVICE_ROTATE) {
    if (wd_random_bytes(r->key, sizeof r->key) < 0) return answer_store_error(r, WD_ERR_IO);
    memcpy(c.key, r->key, sizeof c.key);
    c.has_key = true;
    r->key_fresh = true;
  }
  enum MHD_Result ret = submit(r, op, &c);
  explicit_bzero(c.key, sizeof c.key);
  return ret;
}

static enum MHD_Result change_done(wd_http_req_t *r, int rc) {
  if (rc < 0) return answer_store_error(r, rc);
  const char *what = "";
  switch (r->op) {
    case WD_DEVICE_DELETE:
      revoke_device(r, "device deleted");
      what = "deleted";
      break;
    case WD_DEVICE_DISABLE:
      revoke_device(r, "device disabled");
      what = "disabled";
      break;
    case WD_DEVICE_ROTATE:
      revoke_device(r, "key rotated");
      what = "key rotated";
      break;
    case WD_DEVICE_ENABLE: what = "enabled"; break;
    default: break;
  }
  wd_log("http", WD_LOG_INFO, "[H%llu] device %s %s", (unsigned long long)r->id, r->route.id, what);
  if (r->op == WD_DEVICE_DELETE) return answer(r, MHD_HTTP_NO_CONTENT, NULL, NULL);
  return answer_after(r, MHD_HTTP_OK, r->op == WD_DEVICE_ROTATE);
}

/* ---------------------------------------------------- commands, notifications */

/* Parks r (suspended) on work whose callback will resume it. Returns the
 * pending record, or NULL after answering 503 when the server is stopping.
 * HTTP thread. */
static pending_t *park(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  pending_t *p = calloc(1, sizeof *p);
  if (!p) {
    answer_store_error(r, WD_ERR_NOMEM);
    return NULL;
  }
  pthread_mutex_lock(&g_lock);
  if (h->stopping) {
    pthread_mutex_unlock(&g_lock);
    free(p);
    answer_store_error(r, WD_ERR_SHUTDOWN);
    return NULL;
  }
  p->h = h;
  p->req = r;
  p->next = h->pending;
  if (h->pending) h->pending->prev = p;
  h->pending = p;
  h->n_pending++;
  r->pending = p;
  r->store_rc = WD_OK;
  r->state = REQ_WAITING;
  pthread_mutex_unlock(&g_lock);
  MHD_suspend_connection(r->conn);
  return p;
}

/* The work never started: resume r with rc unless stop already took it. */
static void unpark_failed(wd_http_req_t *r, pending_t *p, int rc) {
  if (unpark_claim(p) == r) {
    r->store_rc = rc;
    unpark_finish(r);
  }
  free(p);
}

/* Any thread: the command or notification was queued, refused, or (waiting)
 * answered, failed or timed out. */
static void on_sent(void *arg, const wd_send_result_t *res) {
  pending_t *p = arg;
  void *body = NULL;
  if (res->response_len) {
    body = malloc(res->response_len);
    if (body) memcpy(body, res->response, res->response_len);
  }
  wd_http_req_t *r = unpark_claim(p);
  if (r) {
    r->store_rc = res->rc;
    r->sent = *res;
    snprintf(r->sent_outcome, sizeof r->sent_outcome, "%s", res->outcome ? res->outcome : "");
    snprintf(r->sent_type, sizeof r->sent_type, "%s", res->response_type ? res->response_type : "");
    r->sent_body = body;
    r->sent.response = body;
    r->sent.response_len = body ? res->response_len : 0;
    body = NULL;
    unpark_finish(r);
  }
  free(body);
  free(p);
}

/* A query value, percent-decoded (the server leaves them raw, see unescape_none).
 * Returns false when it is present but malformed; *found says whether it is there. */
static bool query_value(wd_http_req_t *r, const char *name, char *out, size_t cap, bool *found) {
  const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
  *found = v != NULL;
  if (!v) return true;
  if (strlen(v) >= cap) return false;
  memcpy(out, v, strlen(v) + 1);
  return wd_url_decode(out) >= 0;
}

/* ?name=N with 1 <= N <= max; absent gives 0. false when malformed. */
static bool query_seconds(wd_http_req_t *r, const char *name, uint32_t max, uint32_t *out) {
  char v[32];
  bool found;
  *out = 0;
  if (!query_value(r, name, v, sizeof v, &found)) return false;
  if (!found) return true;
  char *end;
  unsigned long n = strtoul(v, &end, 10);
  if (!*v || *end || *v == '-' || n < 1 || n > max) return false;
  *out = (uint32_t)n;
  return true;
}

#define WAIT_MAX_S 3600u
#define TTL_MAX_S (365u * 86400u)

static enum MHD_Result command_send(wd_http_req_t *r) {
  bool notification = r->route.kind != WD_HTTP_ROUTE_COMMAND_SEND;
  uint32_t ttl, wait;
  if (!query_seconds(r, "ttl", TTL_MAX_S, &ttl))
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "ttl must be a whole number of seconds from 1");
  if (!query_seconds(r, "wait", WAIT_MAX_S, &wait))
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "wait must be a whole number of seconds from 1 to %u",
                        WAIT_MAX_S);
  if (wait && notification)
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "notifications get no response to wait for");
  if (wait && ttl)
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "with wait, the command's TTL is the wait; drop ttl");
  if (!r->h->ops.send) return answer_store_error(r, WD_ERR_SHUTDOWN);
  const char *type = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
  wd_send_t req = {.target = r->route.id,
                   .group = r->route.kind == WD_HTTP_ROUTE_NOTIFY_GROUP,
                   .notification = notification,
                   .body = r->body ? r->body : "",
                   .len = r->body_len,
                   .content_type = type,
                   .ttl_s = ttl,
                   .wait_s = wait};
  r->wait_s = wait;
  pending_t *p = park(r);
  if (!p) return MHD_YES;
  int rc = r->h->ops.send(r->h->ops.ctx, &req, on_sent, p);
  if (rc < 0) unpark_failed(r, p, rc);
  return MHD_YES;
}

static enum MHD_Result send_done(wd_http_req_t *r, int rc) {
  wd_http_t *h = r->h;
  const char *what = r->route.kind == WD_HTTP_ROUTE_NOTIFY_GROUP ? "group" : "device";
  switch (rc) {
    case WD_OK: break;
    case WD_ERR_NOT_FOUND:
      return answer_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no %s %s", what, r->route.id);
    case WD_ERR_DISABLED:
      return answer_error(r, MHD_HTTP_CONFLICT, "device_disabled", "device %s is disabled", r->route.id);
    case WD_ERR_LIMIT:
      r->retry_after = "30"; /* a sleeping device drains its queue when it next connects */
      return answer_error(r, MHD_HTTP_TOO_MANY_REQUESTS, "queue_full", "the queue of device %s is full",
                          r->route.id);
    case WD_ERR_INVALID: return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "the message was refused");
    case WD_ERR_TOO_BIG:
      return answer_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large",
                          "the message would exceed the %u-byte limit", r->h->max_payload);
    default: return answer_store_error(r, rc);
  }
  char expires[25];
  wd_iso8601(r->sent.expires_ms, expires);
  if (r->wait_s == 0) {
    json_t *j = json_pack("{s:s, s:s, s:s}", "messageId", r->sent.message_id, "status", "queued", "expiresAt", expires);
    if (j && r->route.kind == WD_HTTP_ROUTE_NOTIFY_GROUP) json_object_set_new(j, "devices", json_integer((json_int_t)r->sent.devices));
    char location[WD_ID_MAX * 3 + 64];
    if (r->route.kind == WD_HTTP_ROUTE_COMMAND_SEND) {
      snprintf(location, sizeof location, "/v1/devices/%s/commands/%s", r->route.id, r->sent.message_id);
      r->location = location;
    }
    wd_log("http", WD_LOG_DEBUG, "[H%llu] queued %s for %s %s", (unsigned long long)r->id, r->sent.message_id, what,
           r->route.id);
    enum MHD_Result ret = answer_json(r, MHD_HTTP_ACCEPTED, j);
    r->location = NULL;
    return ret;
  }
  if (strcmp(r->sent_outcome, "responded") == 0) {
    char *body = malloc(r->sent.response_len + 1);
    if (!body) return answer_store_error(r, WD_ERR_NOMEM);
    if (r->sent.response_len) memcpy(body, r->sent.response, r->sent.response_len);
    body[r->sent.response_len] = '\0';
    r->message_id = r->sent.message_id;
    return answer_raw(r, MHD_HTTP_OK, body, r->sent.response_len,
                      r->sent_type[0] ? r->sent_type : "application/octet-stream", NULL);
  }
  if (strcmp(r->sent_outcome, "shutdown") == 0)
    return answer_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                        "warden is stopping; command %s stays queued for device %s until it expires",
                        r->sent.message_id, r->route.id);
  if (strcmp(r->sent_outcome, "timeout") == 0 || strcmp(r->sent_outcome, "expired") == 0) {
    wd_store_status_t st;
    bool taken = wd_store_command_status(h->store, r->route.id, r->sent.message_id, &st) == WD_OK &&
                 strcmp(st.state, "completed") == 0;
    if (taken) wd_store_status_fini(&st);
    return answer_error(r, MHD_HTTP_GATEWAY_TIMEOUT, "timeout",
                        taken ? "device %s took command %s but sent no response within %u s"
                              : "no response from device %s to command %s within %u s; the command expired unexecuted",
                        r->route.id, r->sent.message_id, r->wait_s);
  }
  return answer_error(r, MHD_HTTP_UNPROCESSABLE_CONTENT, r->sent_outcome, "device %s did not execute command %s: %s",
                      r->route.id, r->sent.message_id, r->sent_outcome);
}

static void on_purged(void *ctx, int rc, uint64_t count) {
  pending_t *p = ctx;
  wd_http_req_t *r = unpark_claim(p);
  if (r) {
    r->store_rc = rc;
    r->purged = count;
    unpark_finish(r);
  }
  free(p);
}

static enum MHD_Result command_purge(wd_http_req_t *r) {
  pending_t *p = park(r);
  if (!p) return MHD_YES;
  int rc = wd_store_queue_purge(r->h->store, r->route.id, on_purged, p);
  if (rc < 0) unpark_failed(r, p, rc);
  return MHD_YES;
}

static enum MHD_Result purge_done(wd_http_req_t *r, int rc) {
  if (rc == WD_ERR_NOT_FOUND) return answer_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no device %s", r->route.id);
  if (rc < 0) return answer_store_error(r, rc);
  wd_log("http", WD_LOG_INFO, "[H%llu] purged %llu messages of device %s", (unsigned long long)r->id,
         (unsigned long long)r->purged, r->route.id);
  return answer_json(r, MHD_HTTP_OK, json_pack("{s:I}", "purged", (json_int_t)r->purged));
}

static void set_time(json_t *j, const char *key, int64_t ms) {
  char when[25];
  if (!ms) return;
  wd_iso8601(ms, when);
  json_object_set_new(j, key, json_string(when));
}

static enum MHD_Result command_status(wd_http_req_t *r) {
  wd_store_status_t st;
  int rc = wd_store_command_status(r->h->store, r->route.id, r->route.message_id, &st);
  if (rc == WD_ERR_NOT_FOUND)
    return answer_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no command %s for device %s (statuses are kept a day)",
                        r->route.message_id, r->route.id);
  if (rc < 0) return answer_store_error(r, rc);
  json_t *j = json_pack("{s:s, s:s, s:s}", "messageId", r->route.message_id, "deviceId", r->route.id, "status",
                        st.state);
  if (j) {
    set_time(j, "queuedAt", st.queued_ms);
    set_time(j, "deliveredAt", st.delivered_ms);
    set_time(j, "finishedAt", st.final_ms);
    set_time(j, "expiresAt", st.expires_ms);
    if (st.responded_ms) {
      json_t *resp = wd_http__payload_render(st.response, st.response_len, st.response_type);
      if (resp) {
        set_time(resp, "receivedAt", st.responded_ms);
        json_object_set_new(j, "response", resp);
      }
    }
  }
  wd_store_status_fini(&st);
  return answer_json(r, MHD_HTTP_OK, j);
}

/* ------------------------------------------------------------------- streams */

#define SSE_BATCH 64
#define SSE_MAX_LAG 10000        /* records behind the head: the client is too slow and is dropped */
#define SSE_KEEPALIVE_MS 15000   /* a comment line, so idle streams notice vanished clients */

/* One GET /v1/telemetry/stream. It reads the durable log at its own pace, so
 * a slow client can fall behind but never hold anything up; too far behind,
 * it is dropped. With nothing to send it suspends its connection; the store's
 * append listener (or the keep-alive tick) resumes it. */
typedef struct sse {
  struct sse *prev, *next; /* h->streams, under g_lock */
  wd_http_t *h;
  struct MHD_Connection *conn;
  uint64_t req_id;
  char device[WD_ID_MAX + 1]; /* "" for every device */
  uint64_t next_seq;
  char *buf;
  size_t len, off, cap;
  _Atomic int64_t last_write_ms; /* the keep-alive thread reads it */
  bool suspended; /* under g_lock */
  bool ended;     /* under g_lock: the server is stopping */
} sse_t;

static bool sse_append(sse_t *st, const char *text, size_t n) {
  if (st->len + n > st->cap) {
    size_t cap = st->cap ? st->cap : 8192;
    while (cap < st->len + n) cap *= 2;
    char *nb = realloc(st->buf, cap);
    if (!nb) return false;
    st->buf = nb;
    st->cap = cap;
  }
  memcpy(st->buf + st->len, text, n);
  st->len += n;
  return true;
}

/* Renders the next records as events. Returns false when the client fell too
 * far behind (or memory ran out) and must be dropped. */
static bool sse_fill(sse_t *st) {
  wd_http_t *h = st->h;
  uint64_t first, next;
  wd_store_log_bounds(h->telemetry, &first, &next);
  if (next > st->next_seq && next - st->next_seq > SSE_MAX_LAG) {
    wd_log("http", WD_LOG_WARNING, "[H%llu] telemetry stream %llu records behind; dropping the client",
           (unsigned long long)st->req_id, (unsigned long long)(next - st->next_seq));
    return false;
  }
  if (st->next_seq < first) st->next_seq = first; /* what it asked for is gone */
  wd_store_record_t recs[SSE_BATCH];
  int n = wd_store_log_read(h->telemetry, st->next_seq, recs, SSE_BATCH);
  bool ok = n >= 0;
  for (int i = 0; i < n; i++) {
    st->next_seq = recs[i].seq + 1;
    wd_telemetry_t t;
    if (ok && h->ops.telemetry_decode && h->ops.telemetry_decode(recs[i].data, recs[i].len, &t) == WD_OK) {
      if (!st->device[0] || strcmp(st->device, t.device_id) == 0) {
        json_t *j = wd_http__payload_render(t.body, t.len, t.content_type[0] ? t.content_type : NULL);
        char when[25];
        wd_iso8601(t.enqueued_ms, when);
        if (j) {
          json_object_set_new(j, "deviceId", json_string(t.device_id));
          json_object_set_new(j, "sequenceNumber", json_integer((json_int_t)recs[i].seq));
          json_object_set_new(j, "enqueuedTime", json_string(when));
        }
        char *data = j ? json_dumps(j, JSON_COMPACT) : NULL;
        char head[64];
        int hn = snprintf(head, sizeof head, "event: telemetry\nid: %llu\ndata: ", (unsigned long long)recs[i].seq);
        /* A record that cannot be shown is skipped: one device must not end everyone's stream. */
        if (data)
          ok = sse_append(st, head, (size_t)hn) && sse_append(st, data, strlen(data)) && sse_append(st, "\n\n", 2);
        free(data);
        json_decref(j);
      }
      free(t.owned);
    }
    free(recs[i].data);
  }
  return ok;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  sse_t *st = cls;
  for (;;) {
    if (st->off < st->len) {
      size_t n = st->len - st->off < max ? st->len - st->off : max;
      memcpy(buf, st->buf + st->off, n);
      st->off += n;
      st->last_write_ms = wd_mono_ms();
      return (ssize_t)n;
    }
    st->off = st->len = 0;
    pthread_mutex_lock(&g_lock);
    bool ended = st->ended;
    uint64_t gen = st->h->telemetry_gen;
    pthread_mutex_unlock(&g_lock);
    if (ended) return MHD_CONTENT_READER_END_OF_STREAM;
    if (!sse_fill(st)) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (st->len > 0) continue;
    if (wd_mono_ms() - st->last_write_ms >= SSE_KEEPALIVE_MS) {
      if (!sse_append(st, ": keepalive\n\n", 13)) return MHD_CONTENT_READER_END_WITH_ERROR;
      continue;
    }
    /* Nothing to send: sleep until a commit (or the tick) - unless one came meanwhile. */
    pthread_mutex_lock(&g_lock);
    bool again = st->h->telemetry_gen != gen || st->ended;
    if (!again) st->suspended = true;
    pthread_mutex_unlock(&g_lock);
    if (again) continue;
    MHD_suspend_connection(st->conn);
    return 0;
  }
}

static void sse_free(void *cls) {
  sse_t *st = cls;
  pthread_mutex_lock(&g_lock);
  if (st->prev) st->prev->next = st->next;
  else st->h->streams = st->next;
  if (st->next) st->next->prev = st->prev;
  pthread_mutex_unlock(&g_lock);
  wd_log("http", WD_LOG_DEBUG, "[H%llu] telemetry stream ended", (unsigned long long)st->req_id);
  free(st->buf);
  free(st);
}

/* Resumes every sleeping stream; with `end`, tells them to finish. g_lock held. */
static void sse_wake_locked(wd_http_t *h, bool end) {
  h->telemetry_gen++;
  for (sse_t *st = h->streams; st; st = st->next) {
    if (end) st->ended = true;
    if (st->suspended) {
      st->suspended = false;
      MHD_resume_connection(st->conn);
    }
  }
}

/* Store writer thread: telemetry was committed. */
static void on_log_appended(void *arg, wd_store_log_t *log) {
  wd_http_t *h = arg;
  if (log != h->telemetry) return;
  pthread_mutex_lock(&g_lock);
  sse_wake_locked(h, false);
  pthread_mutex_unlock(&g_lock);
}

/* Once a second, wakes each sleeping stream that has been silent for the
 * keep-alive interval, so it writes a comment and learns if its client left. */
static void *keepalive_main(void *arg) {
  wd_http_t *h = arg;
  pthread_mutex_lock(&g_lock);
  while (!h->stopping) {
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_sec += 1;
    pthread_cond_timedwait(&h->cond, &g_lock, &at);
    int64_t now = wd_mono_ms();
    for (sse_t *st = h->streams; st && !h->stopping; st = st->next) {
      if (st->suspended && now - atomic_load(&st->last_write_ms) >= SSE_KEEPALIVE_MS) {
        st->suspended = false;
        MHD_resume_connection(st->conn);
      }
    }
  }
  pthread_mutex_unlock(&g_lock);
  return NULL;
}

static enum MHD_Result metrics(wd_http_req_t *r) {
  char *buf = NULL;
  size_t len = 0, cap = 0;
  wd_store_stats_t st;
  wd_store_stats(r->h->store, &st);
  int rc = wd_metrics_render(&buf, &len, &cap);
  if (rc == WD_OK)
    rc = wd_metrics_printf(&buf, &len, &cap,
                           "# HELP warden_store_bytes The store's size: in use, and the configured limit.\n"
                           "# TYPE warden_store_bytes gauge\n"
                           "warden_store_bytes{kind=\"used\"} %llu\nwarden_store_bytes{kind=\"limit\"} %llu\n"
                           "# HELP warden_store_full_total Commits refused because the store was full.\n"
                           "# TYPE warden_store_full_total counter\nwarden_store_full_total %llu\n"
                           "# HELP warden_store_journal_writes_total Batches of appends acknowledged from the "
                           "journal, ahead of their commit.\n"
                           "# TYPE warden_store_journal_writes_total counter\nwarden_store_journal_writes_total %llu\n",
                           (unsigned long long)st.used_bytes, (unsigned long long)st.map_size,
                           (unsigned long long)st.commit_failures_full, (unsigned long long)st.journal_writes);
  if (rc < 0) {
    free(buf);
    return answer_store_error(r, rc);
  }
  return answer_raw(r, MHD_HTTP_OK, buf, len, "text/plain; version=0.0.4", NULL);
}

static enum MHD_Result telemetry_stream(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  char device_buf[WD_ID_MAX * 3 + 1];
  bool has_device;
  bool ok = query_value(r, "device", device_buf, sizeof device_buf, &has_device);
  const char *device = has_device ? device_buf : NULL;
  if (!ok || (device && !wd_id_valid(device)))
    return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "device must be a device id");
  if (r->who.restricted && !(device && may_reach_device(r, device)))
    return answer_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "this token may stream only devices it reaches: add ?device=");
  sse_t *st = calloc(1, sizeof *st);
  if (!st) return answer_store_error(r, WD_ERR_NOMEM);
  st->h = h;
  st->conn = r->conn;
  st->req_id = r->id;
  st->last_write_ms = wd_mono_ms();
  if (device) memcpy(st->device, device, strlen(device) + 1); /* a valid id: at most WD_ID_MAX */
  uint64_t first, next;
  wd_store_log_bounds(h->telemetry, &first, &next);
  st->next_seq = next; /* live, unless the client resumes */
  const char *last = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
  if (last && *last) {
    char *end;
    unsigned long long id = strtoull(last, &end, 10);
    if (*end == '\0' && id < next) st->next_seq = id + 1;
  }
  struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, st, sse_free);
  if (!resp) {
    free(st);
    return answer_store_error(r, WD_ERR_NOMEM);
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  pthread_mutex_lock(&g_lock);
  st->next = h->streams;
  if (h->streams) h->streams->prev = st;
  h->streams = st;
  pthread_mutex_unlock(&g_lock);
  enum MHD_Result ret = MHD_queue_response(r->conn, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  r->answered = true;
  wd_log("http", WD_LOG_DEBUG, "[H%llu] telemetry stream from %llu%s%s", (unsigned long long)r->id,
         (unsigned long long)st->next_seq, device ? " for " : "", device ? device : "");
  return ret;
}

/* ------------------------------------------------------------- the handler */

static wd_http_req_t *req_new(wd_http_t *h, struct MHD_Connection *conn, const char *method, const char *url) {
  wd_http_req_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->h = h;
  r->conn = conn;
  r->id = ++h->next_req_id;
  r->start_ms = wd_mono_ms();
  r->method = method;
  r->url = url;
  r->state = REQ_OPEN;
  pthread_mutex_lock(&g_lock);
  h->n_active++;
  pthread_mutex_unlock(&g_lock);
  return r;
}

static void req_free(wd_http_req_t *r) {
  if (!r) return;
  wd_http_principal_fini(&r->who);
  free(r->body);
  free(r->sent_body);
  if (r->dev_parsed) wd_http__device_body_fini(&r->dev);
  wd_device_free(r->after);
  explicit_bzero(r->key, sizeof r->key);
  free(r);
}

/* The largest body a route takes: a payload up to the AMQP message size, JSON 64 KiB. */
static size_t body_max(const wd_http_req_t *r) {
  return r->route.payload && r->h->max_payload ? r->h->max_payload : WD_HTTP_BODY_MAX;
}

static bool content_length_too_big(const char *v, size_t max) {
  size_t n = 0;
  for (; *v == ' '; v++) {}
  for (; *v >= '0' && *v <= '9'; v++) {
    n = n * 10 + (size_t)(*v - '0');
    if (n > max) return true;
  }
  return false;
}

static void body_append(wd_http_req_t *r, const char *data, size_t len) {
  if (r->too_large) return;
  if (len > body_max(r) - r->body_len) {
    r->too_large = true;
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    return;
  }
  if (r->body_len + len + 1 > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 1024;
    while (cap < r->body_len + len + 1) cap *= 2;
    char *nb = realloc(r->body, cap);
    if (!nb) {
      /* Reads as too large; nothing better to tell a client when out of memory. */
      r->too_large = true;
      return;
    }
    r->body = nb;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, data, len);
  r->body_len += len;
  r->body[r->body_len] = '\0';
}

/* The checks that need only the headers: route, authentication, scope, size.
 * Answering here spares reading the body of a request that is refused. */
static enum MHD_Result on_headers(wd_http_req_t *r) {
  wd_http_t *h = r->h;
  wd_http__route(r->method, r->url, &r->route);
  if (r->route.needs_auth) {
    const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *token = wd_http__bearer_token(auth);
    if (!token)
      return answer_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", "an Authorization: Bearer token is required");
    bool ok = h->ops.authenticate && h->ops.authenticate(h->ops.ctx, token, &r->who.scopes) == WD_OK;
    if (!ok && h->jwt.issuer) ok = wd_http__jwt_verify(&h->jwt, token, wd_now_ms() / 1000, &r->who) == WD_OK;
    if (!ok) return answer_error(r, MHD_HTTP_UNAUTHORIZED, "unauthorized", "the bearer token is not valid");
    unsigned scopes = r->who.scopes;
    if ((scopes & r->route.scope) != r->route.scope)
      return answer_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "this call needs the scope %s",
                          wd_scope_name(r->route.scope));
  }
  switch (r->route.kind) {
    case WD_HTTP_ROUTE_NOT_FOUND: return answer_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no such resource");
    case WD_HTTP_ROUTE_METHOD_NOT_ALLOWED:
      return answer_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed", "%s is not allowed here; use %s",
                          r->method, r->route.allow);
    case WD_HTTP_ROUTE_BAD_ID:
      return answer_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
                          "a device id is 1 to %d characters from [A-Za-z0-9._:-]", WD_ID_MAX);
    default: break;
  }
  const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl && content_length_too_big(cl, body_max(r)))
    return answer_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large", "the body may be at most %zu bytes",
                        body_max(r));
  return MHD_YES;
}

/* The whole request is in: act on it. */
static bool listed(char **ids, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(ids[i], id) == 0) return true;
  return false;
}

/* May the caller reach this device? A restricted JWT names its devices, or
 * groups whose members it may reach. */
static bool may_reach_device(wd_http_req_t *r, const char *id) {
  const wd_http_principal_t *p = &r->who;
  if (!p->restricted || listed(p->devices, p->n_devices, id)) return true;
  if (p->n_groups == 0) return false;
  wd_device_t *d = NULL;
  if (wd_store_device_get(r->h->store, id, &d) < 0) return false;
  bool ok = false;
  for (const char *g = d->groups; !ok && *g;) {
    size_t len = strcspn(g, " ");
    for (size_t i = 0; i < p->n_groups && !ok; i++)
      ok = strlen(p->groups[i]) == len && strncmp(p->groups[i], g, len) == 0;
    g += len;
    while (*g == ' ') g++;
  }
  wd_device_free(d);
  return ok;
}

static enum MHD_Result on_complete(wd_http_req_t *r) {
  if (r->route.id[0] && r->who.restricted) {
    bool group = r->route.kind == WD_HTTP_ROUTE_NOTIFY_GROUP;
    if (group ? !listed(r->who.groups, r->who.n_groups, r->route.id) : !may_reach_device(r, r->route.id))
      return answer_error(r, MHD_HTTP_FORBIDDEN, "forbidden", "the token does not reach %s %s",
                          group ? "group" : "device", r->route.id);
  }
  if (r->too_large)
    return answer_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large", "the body may be at most %zu bytes",
                        body_max(r));
  switch (r->route.kind) {
    case WD_HTTP_ROUTE_HEALTHZ: {
      char *body = strdup("{\"status\":\"ok\"}");
      return body ? answer(r, MHD_HTTP_OK, body, NULL) : MHD_NO;
    }
    case WD_HTTP_ROUTE_DEVICE_LIST: return device_list(r);
    case WD_HTTP_ROUTE_DEVICE_GET: return device_get(r);
    case WD_HTTP_ROUTE_DEVICE_PUT: return device_put(r);
    case WD_HTTP_ROUTE_DEVICE_DELETE:
    case WD_HTTP_ROUTE_DEVICE_DISABLE:
    case WD_HTTP_ROUTE_DEVICE_ENABLE:
    case WD_HTTP_ROUTE_DEVICE_ROTATE: return device_change(r);
    case WD_HTTP_ROUTE_COMMAND_SEND:
    case WD_HTTP_ROUTE_NOTIFY_DEVICE:
    case WD_HTTP_ROUTE_NOTIFY_GROUP: return command_send(r);
    case WD_HTTP_ROUTE_COMMAND_PURGE: return command_purge(r);
    case WD_HTTP_ROUTE_COMMAND_STATUS: return command_status(r);
    case WD_HTTP_ROUTE_TELEMETRY_STREAM: return telemetry_stream(r);
    case WD_HTTP_ROUTE_METRICS: return metrics(r);
    default: return answer_store_error(r, WD_ERR_INVALID); /* on_headers answered these */
  }
}

/* Called again after MHD_resume_connection: the write's outcome is in. */
static enum MHD_Result on_resumed(wd_http_req_t *r) {
  pthread_mutex_lock(&g_lock);
  int rc = r->store_rc;
  pthread_mutex_unlock(&g_lock);
  r->state = REQ_OPEN;
  switch (r->route.kind) {
    case WD_HTTP_ROUTE_DEVICE_PUT: return put_done(r, rc);
    case WD_HTTP_ROUTE_COMMAND_SEND:
    case WD_HTTP_ROUTE_NOTIFY_DEVICE:
    case WD_HTTP_ROUTE_NOTIFY_GROUP: return send_done(r, rc);
    case WD_HTTP_ROUTE_COMMAND_PURGE: return purge_done(r, rc);
    default: return change_done(r, rc);
  }
}

/* HTTP thread. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version;
  wd_http_t *h = cls;
  wd_http_req_t *r = *con_cls;
  if (!r) {
    r = req_new(h, conn, method, url);
    if (!r) return MHD_NO;
    *con_cls = r;
    return on_headers(r);
  }
  if (r->state == REQ_WAITING) return on_resumed(r);
  if (r->answered) {
    *upload_size = 0;
    return MHD_YES;
  }
  if (*upload_size) {
    body_append(r, upload, *upload_size);
    *upload_size = 0;
    return MHD_YES;
  }
  return on_complete(r);
}

/* HTTP thread (or the thread stopping the daemon). A request is never
 * completed while suspended; one resumed just before MHD_stop_daemon may be
 * completed without its handler running again, so its result is dropped here. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  (void)toe;
  wd_http_req_t *r = *con_cls;
  if (!r) return;
  wd_http_t *h = r->h;
  pthread_mutex_lock(&g_lock);
  if (r->pending) pending_unlink(r->pending); /* not expected; keeps the callback off freed memory */
  h->n_active--;
  pthread_cond_broadcast(&h->cond);
  pthread_mutex_unlock(&g_lock);
  req_free(r);
  *con_cls = NULL;
}

/* Leaves the URL and query arguments percent-encoded: routes.c decodes each
 * path segment on its own, so an encoded "/" stays inside its segment and an
 * encoded NUL is refused rather than truncating. */
static size_t unescape_none(void *cls, struct MHD_Connection *conn, char *s) {
  (void)cls;
  (void)conn;
  return strlen(s);
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  wd_http_t *h = cls;
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
  /* At start-up MHD explains why it cannot listen; afterwards it reports
   * every misbehaving client, which is not worth more than DEBUG. */
  if (__atomic_load_n(&h->started, __ATOMIC_ACQUIRE)) wd_log("http", WD_LOG_DEBUG, "libmicrohttpd: %s", buf);
  else wd_log("http", WD_LOG_WARNING, "libmicrohttpd: %s", buf);
}

/* -------------------------------------------------------------- lifecycle */

static void tls_free(wd_http_t *h) {
  if (h->tls_key_pem) explicit_bzero(h->tls_key_pem, h->tls_key_len);
  free(h->tls_key_pem);
  free(h->tls_cert_pem);
  h->tls_key_pem = h->tls_cert_pem = NULL;
}

static void http_free(wd_http_t *h) {
  tls_free(h);
  free((char *)h->jwt.issuer);
  free((char *)h->jwt.audience);
  free((char *)h->jwt.public_key_pem);
  pthread_cond_destroy(&h->cond);
  free(h);
}

/* Resolves host (numeric or a name; "" = every IPv4 interface), preferring
 * IPv4 for names like "localhost" that have both. */
static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *sslen) {
  struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
  hints.ai_family = *host ? AF_UNSPEC : AF_INET;
  char portstr[8];
  snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(*host ? host : NULL, portstr, &hints, &res);
  if (gai != 0) {
    wd_log("http", WD_LOG_ERROR, "cannot resolve listen host \"%s\": %s", host, gai_strerror(gai));
    return WD_ERR_INVALID;
  }
  const struct addrinfo *pick = NULL;
  for (const struct addrinfo *a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
    if (a->ai_family == AF_INET6 && !pick) pick = a;
  }
  if (pick) {
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *sslen = pick->ai_addrlen;
  }
  freeaddrinfo(res);
  if (!pick) {
    wd_log("http", WD_LOG_ERROR, "listen host \"%s\" has no IP address", host);
    return WD_ERR_INVALID;
  }
  return WD_OK;
}

static int tls_load(wd_http_t *h, const wd_http_config_t *cfg) {
  size_t len;
  h->tls_cert_pem = wd_read_file(cfg->tls_cert, &len);
  if (!h->tls_cert_pem) {
    wd_log("http", WD_LOG_ERROR, "cannot read tls_cert %s: %s", cfg->tls_cert, strerror(errno));
    return WD_ERR_IO;
  }
  h->tls_key_pem = wd_read_file(cfg->tls_key, &h->tls_key_len);
  if (!h->tls_key_pem) {
    wd_log("http", WD_LOG_ERROR, "cannot read tls_key %s: %s", cfg->tls_key, strerror(errno));
    return WD_ERR_IO;
  }
  return WD_OK;
}

int wd_http_start(const wd_http_config_t *cfg, wd_store_t *store, const wd_http_ops_t *ops, wd_http_t **out) {
  if (!out) return WD_ERR_INVALID;
  *out = NULL;
  if (!cfg || !store || !ops) return WD_ERR_INVALID;

  char host[256];
  uint16_t port;
  if (wd_http__listen_parse(cfg->listen, host, sizeof host, &port) < 0) {
    wd_log("http", WD_LOG_ERROR, "invalid [http] listen \"%s\": want host:port", cfg->listen ? cfg->listen : "");
    return WD_ERR_INVALID;
  }
  bool has_cert = cfg->tls_cert && *cfg->tls_cert, has_key = cfg->tls_key && *cfg->tls_key;
  if (has_cert != has_key) {
    wd_log("http", WD_LOG_ERROR, "[http] tls_cert and tls_key must be set together");
    return WD_ERR_INVALID;
  }
  bool tls = has_cert;
  struct sockaddr_storage ss;
  socklen_t sslen = 0;
  int rc = resolve(host, port, &ss, &sslen);
  if (rc < 0) return rc;

  wd_http_t *h = calloc(1, sizeof *h);
  if (!h) return WD_ERR_NOMEM;
  h->store = store;
  h->ops = *ops;
  h->default_queue_limit = cfg->default_queue_limit;
  h->max_payload = cfg->max_payload;
  if (cfg->jwt_issuer && cfg->jwt_public_key_pem) {
    h->jwt.issuer = strdup(cfg->jwt_issuer);
    h->jwt.audience = strdup(cfg->jwt_audience ? cfg->jwt_audience : "warden");
    h->jwt.public_key_pem = strdup(cfg->jwt_public_key_pem);
    h->jwt.public_key_len = strlen(cfg->jwt_public_key_pem);
    if (!h->jwt.issuer || !h->jwt.audience || !h->jwt.public_key_pem) {
      http_free(h);
      return WD_ERR_NOMEM;
    }
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cond, &ca);
  pthread_condattr_destroy(&ca);
  if (tls && (rc = tls_load(h, cfg)) < 0) {
    http_free(h);
    return rc;
  }

  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  if (tls) flags |= MHD_USE_TLS;
  struct MHD_OptionItem tls_opts[] = {
      {MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key_pem},
      {MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert_pem},
      {MHD_OPTION_END, 0, NULL},
  };
  struct MHD_OptionItem no_opts[] = {{MHD_OPTION_END, 0, NULL}};
  h->daemon = MHD_start_daemon(flags, port, NULL, NULL, on_request, h,
                               MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, /* first, or MHD warns */
                               MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                               MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, NULL,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                               MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT_S,
                               MHD_OPTION_ARRAY, tls ? tls_opts : no_opts,
                               MHD_OPTION_END);
  if (!h->daemon) {
    wd_log("http", WD_LOG_ERROR, "cannot listen %s on %s", tls ? "https" : "http", cfg->listen);
    http_free(h);
    return WD_ERR_IO;
  }
  __atomic_store_n(&h->started, true, __ATOMIC_RELEASE);
  if (wd_store_log_open(store, "telemetry", &h->telemetry) == WD_OK &&
      wd_store_add_append_listener(store, on_log_appended, h) == WD_OK &&
      pthread_create(&h->keepalive, NULL, keepalive_main, h) == 0) {
    h->keepalive_started = true;
  } else {
    wd_log("http", WD_LOG_ERROR, "cannot set up telemetry streaming");
    wd_store_remove_append_listener(store, on_log_appended, h);
    MHD_stop_daemon(h->daemon);
    http_free(h);
    return WD_ERR_NOMEM;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
  h->port = info && info->port ? info->port : port;

  char numeric[NI_MAXHOST];
  if (getnameinfo((struct sockaddr *)&ss, sslen, numeric, sizeof numeric, NULL, 0, NI_NUMERICHOST) != 0)
    snprintf(numeric, sizeof numeric, "%s", host);
  bool v6 = ss.ss_family == AF_INET6;
  wd_log("http", WD_LOG_INFO, "listening %s %s%s%s:%u", tls ? "https" : "http", v6 ? "[" : "", numeric,
         v6 ? "]" : "", (unsigned)h->port);
  *out = h;
  return WD_OK;
}

uint16_t wd_http_port(const wd_http_t *h) { return h ? h->port : 0; }

/* Waits, g_lock held, until *count is 0 or the monotonic deadline passes. */
static void wait_zero(wd_http_t *h, const size_t *count, const struct timespec *deadline) {
  while (*count > 0) {
    if (!deadline) pthread_cond_wait(&h->cond, &g_lock);
    else if (pthread_cond_timedwait(&h->cond, &g_lock, deadline) == ETIMEDOUT) break;
  }
}

static struct timespec deadline_in(int ms) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

void wd_http_stop(wd_http_t *h) {
  if (!h) return;
  pthread_mutex_lock(&g_lock);
  h->stopping = true; /* from now on a write is answered 503 instead of parked */
  sse_wake_locked(h, true);
  pthread_cond_broadcast(&h->cond);
  pthread_mutex_unlock(&g_lock);
  if (h->keepalive_started) pthread_join(h->keepalive, NULL);
  wd_store_remove_append_listener(h->store, on_log_appended, h);

  /* No new clients from here on. MHD's thread drops the listening socket
   * from its epoll set in its own time, so it is closed only once that thread
   * is gone. */
  MHD_socket ls = MHD_quiesce_daemon(h->daemon);

  /* Let requests in flight, writes with the store included, finish for real. */
  struct timespec grace = deadline_in(STOP_GRACE_MS);
  pthread_mutex_lock(&g_lock);
  wait_zero(h, &h->n_active, &grace);
  if (h->n_pending > 0)
    wd_log("http", WD_LOG_WARNING, "%zu requests still wait for the store; answering 503", h->n_pending);
  /* What is left is answered 503; its store callbacks, whenever they come,
   * find their pending record unlinked and only free it. */
  while (h->pending) {
    pending_t *p = h->pending;
    wd_http_req_t *r = p->req;
    struct MHD_Connection *conn = r->conn;
    pending_unlink(p);
    r->store_rc = WD_ERR_SHUTDOWN;
    h->n_resuming++;
    pthread_mutex_unlock(&g_lock);
    resume(h, conn);
    pthread_mutex_lock(&g_lock);
  }
  /* MHD_stop_daemon aborts on a connection still suspended: no resume may be
   * half done when it runs. Then give the forced answers a moment to go out. */
  wait_zero(h, &h->n_resuming, NULL);
  struct timespec answer_by = deadline_in(STOP_ANSWER_MS);
  wait_zero(h, &h->n_active, &answer_by);
  pthread_mutex_unlock(&g_lock);

  MHD_stop_daemon(h->daemon);
  if (ls != MHD_INVALID_SOCKET) close(ls);
  http_free(h);
}

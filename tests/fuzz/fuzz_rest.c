/* libFuzzer target: the pure half of the REST API (http/internal.h) - what a
 * request from the network reaches before any store or device is touched.
 *
 * Input: a selector byte, then two fields split at the first NUL (a, b; b is
 * empty when there is no NUL):
 *   0  wd_http__route(method a, raw path b)
 *   1  wd_http__device_body_parse(body b, path id a), then the device it
 *      describes rendered back (wd_http__device_render, wd_http__json_text)
 *   2  wd_http__list_query_parse(cursor a, limit b); selector bits 3 and 4
 *      pass NULL instead (the parameter is absent)
 *   3  wd_http__thumbprint_normalize(a)
 *   4  wd_http__bearer_token(a)
 *   5  wd_http__payload_render(data b, content type a; NULL with bit 3)
 *   6  wd_http__listen_parse(a)
 *   7  wd_http__error_body(code a, message b)
 * Each result is checked against what the header promises; a broken promise
 * aborts, as a crash would. */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "http/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool names_device(wd_http_route_kind_t k) {
  return k >= WD_HTTP_ROUTE_DEVICE_GET && k <= WD_HTTP_ROUTE_NOTIFY_GROUP;
}

static void fuzz_route(const char *method, const char *path) {
  wd_http_route_t r;
  wd_http__route(method, path, &r);
  CHECK(r.kind <= WD_HTTP_ROUTE_METRICS, "route kind %d out of range", (int)r.kind);
  if (names_device(r.kind)) CHECK(wd_id_valid(r.id), "route %d with an invalid id '%s'", (int)r.kind, r.id);
  if (r.kind == WD_HTTP_ROUTE_COMMAND_STATUS)
    CHECK(strlen(r.message_id) <= WD_HTTP_MSGID_MAX, "message id longer than %d", WD_HTTP_MSGID_MAX);
  /* Anything that needs a scope, and /metrics, must be behind authentication:
     http.c checks the bearer token only when needs_auth is set. */
  if (r.scope != 0 || r.kind == WD_HTTP_ROUTE_METRICS)
    CHECK(r.needs_auth, "%s %s routes to %d (scope 0x%x) without needs_auth", method, path, (int)r.kind, r.scope);
  if (r.kind == WD_HTTP_ROUTE_METHOD_NOT_ALLOWED) CHECK(r.allow != NULL, "405 without an Allow list");
}

static void fuzz_device_body(const char *id, const char *body, size_t len) {
  if (!wd_id_valid(id)) id = "dev-1"; /* the path's id was checked by the route */
  wd_http_device_body_t b;
  char msg[256];
  int rc = wd_http__device_body_parse(body, len, id, &b, msg, sizeof msg);
  CHECK(rc == WD_OK || rc == WD_ERR_INVALID || rc == WD_ERR_NOMEM, "device body parse returned %d", rc);
  if (rc == WD_ERR_INVALID) CHECK(msg[0] != '\0' && memchr(msg, '\0', sizeof msg), "refused without a message");
  if (rc != WD_OK) return;
  CHECK(b.groups && b.peers, "parsed body without groups or peers");
  CHECK(!b.thumbprint[0] || wd_thumbprint_valid(b.thumbprint), "unnormalised thumbprint '%s'", b.thumbprint);
  CHECK(b.queue_limit <= WD_HTTP_QUEUE_LIMIT_MAX, "queue limit %u", b.queue_limit);
  CHECK(!b.has_auth || b.key || b.thumbprint[0], "auth with neither key nor thumbprint");

  /* Render the device this body would create, as PUT answers. */
  wd_device_t *d = wd_device_new();
  if (d) {
    snprintf(d->id, sizeof d->id, "%s", id);
    free(d->groups);
    free(d->peers);
    d->groups = strdup(b.groups);
    d->peers = strdup(b.peers);
    d->queue_limit = b.queue_limit;
    d->has_key = b.key;
    memcpy(d->thumbprint, b.thumbprint, sizeof d->thumbprint);
    if (d->groups && d->peers) {
      wd_http_live_t live = {.connected = true, .last_seen_ms = 1700000000123, .queue_depth = 3};
      json_t *j = wd_http__device_render(d, &live, 50, b.key ? "c2VjcmV0" : NULL);
      char *text = j ? wd_http__json_text(j) : NULL;
      if (j) CHECK(text != NULL, "a rendered device did not serialise");
      free(text);
      json_decref(j);
    }
    wd_device_free(d);
  }
  wd_http__device_body_fini(&b);
}

static void fuzz_list_query(const char *cursor_raw, const char *limit_raw) {
  char cursor[WD_ID_MAX + 1];
  size_t limit = 0;
  char msg[256];
  int rc = wd_http__list_query_parse(cursor_raw, limit_raw, cursor, &limit, msg, sizeof msg);
  CHECK(rc == WD_OK || rc == WD_ERR_INVALID, "list query parse returned %d", rc);
  if (rc == WD_OK) {
    CHECK(limit >= 1 && limit <= WD_HTTP_LIST_MAX, "limit %zu", limit);
    CHECK(!cursor[0] || wd_id_valid(cursor), "cursor '%s' is not an id", cursor);
  }
}

static void fuzz_thumbprint(const char *in) {
  char out[WD_THUMBPRINT_HEX + 1];
  if (wd_http__thumbprint_normalize(in, out) == WD_OK)
    CHECK(wd_thumbprint_valid(out), "normalised thumbprint '%s' is not valid", out);
}

static void fuzz_bearer(const char *header) {
  const char *t = wd_http__bearer_token(header);
  if (t) {
    size_t hl = strlen(header);
    CHECK(t > header && t < header + hl && *t && *t != ' ' && *t != '\t', "bearer token outside its header");
  }
}

static void fuzz_payload(const char *type, const uint8_t *body, size_t len) {
  json_t *j = wd_http__payload_render(body, len, type);
  /* NULL means out of memory, which does not happen here: the SSE stream ends
     on it, and resumes at the same record. */
  CHECK(j != NULL, "payload with content type '%s' not rendered", type ? type : "(null)");
  const json_t *text = json_object_get(j, "body"), *b64 = json_object_get(j, "bodyBase64");
  CHECK(!text != !b64, "payload rendered with %s", text ? "both bodies" : "no body");
  if (text) CHECK(json_string_length(text) == len && memcmp(json_string_value(text), body, len) == 0,
                  "text body differs from the payload");
  if (b64) {
    const char *s = json_string_value(b64);
    uint8_t *back = malloc(len + 4);
    int n = back ? wd_base64_decode(s, strlen(s), back, len + 4) : (int)len;
    if (back) CHECK(n == (int)len && (len == 0 || memcmp(back, body, len) == 0), "base64 body does not decode back");
    free(back);
  }
  char *out = wd_http__json_text(j);
  free(out);
  json_decref(j);
}

static void fuzz_listen(const char *listen) {
  char host[64];
  uint16_t port = 0;
  if (wd_http__listen_parse(listen, host, sizeof host, &port) == WD_OK)
    CHECK(memchr(host, '\0', sizeof host) != NULL, "host not terminated");
}

static void fuzz_error_body(const char *code, const char *message) {
  char *body = wd_http__error_body(code, message);
  free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t sel = data[0];
  const uint8_t *rest = data + 1;
  size_t n = size - 1;
  const uint8_t *nul = memchr(rest, '\0', n);
  size_t alen = nul ? (size_t)(nul - rest) : n;
  size_t blen = nul ? n - alen - 1 : 0;
  char *a = fz_strndup(rest, alen);
  char *b = fz_strndup(nul ? nul + 1 : rest + n, blen);
  switch (sel & 7) {
    case 0: fuzz_route(a, b); break;
    case 1: fuzz_device_body(a, b, blen); break;
    case 2: fuzz_list_query(sel & 8 ? NULL : a, sel & 16 ? NULL : b); break;
    case 3: fuzz_thumbprint(a); break;
    case 4: fuzz_bearer(a); break;
    case 5: fuzz_payload(sel & 8 ? NULL : a, (const uint8_t *)b, blen); break;
    case 6: fuzz_listen(a); break;
    default: fuzz_error_body(a, b); break;
  }
  free(a);
  free(b);
  return 0;
}

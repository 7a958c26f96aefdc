/* The pure half of the REST projection: which route a request names, what a
 * device body means, how a record looks on the wire. Nothing here touches
 * libmicrohttpd, the store or the clock, so tests/unit/http drives it
 * directly; http.c owns the server and the request lifecycle. */

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "http/internal.h"

/* ------------------------------------------------------------------ routes */

#define MAX_SEGMENTS 6

static const char ALLOW_GET[] = "GET, HEAD";
static const char ALLOW_DEVICE[] = "GET, HEAD, PUT, DELETE";
static const char ALLOW_POST[] = "POST";
static const char ALLOW_COMMANDS[] = "POST, DELETE";

/* Splits the mutable copy p ("/a/b/c") into at most MAX_SEGMENTS decoded
 * segments. Returns the count, or -1 when the path has too many segments or an
 * empty one. bad[i] is set when segment i failed to percent-decode; such a
 * segment reads as "" so it never matches a literal. */
static int split_path(char *p, char *seg[MAX_SEGMENTS], bool bad[MAX_SEGMENTS]) {
  if (*p != '/') return -1;
  int n = 0;
  for (char *s = p + 1;;) {
    if (n == MAX_SEGMENTS) return -1;
    char *slash = strchr(s, '/');
    if (slash) *slash = '\0';
    if (*s == '\0') return -1;
    seg[n] = s;
    bad[n] = wd_url_decode(s) < 0;
    if (bad[n]) *s = '\0';
    n++;
    if (!slash) break;
    s = slash + 1;
  }
  return n;
}

static bool method_is(const char *method, const char *want) { return strcmp(method, want) == 0; }

/* Sets the device id from segment i, or marks the route BAD_ID. */
static void take_id(wd_http_route_t *out, char *seg, bool bad) {
  if (bad || !wd_id_valid(seg)) {
    out->kind = WD_HTTP_ROUTE_BAD_ID;
    return;
  }
  memcpy(out->id, seg, strlen(seg) + 1);
}

void wd_http__route(const char *method, const char *path, wd_http_route_t *out) {
  memset(out, 0, sizeof *out);
  out->kind = WD_HTTP_ROUTE_NOT_FOUND;
  if (!method || !path) return;
  bool get = method_is(method, "GET") || method_is(method, "HEAD");

  char *copy = strdup(path);
  if (!copy) return; /* out of memory reads as 404; the caller logs nothing worse */
  char *seg[MAX_SEGMENTS];
  bool bad[MAX_SEGMENTS];
  int n = split_path(copy, seg, bad);
  /* Every path but /healthz needs a token - decided after decoding, so an
     encoded "/%76%31" cannot reach /v1 without one. */
  out->needs_auth = !(n == 1 && strcmp(seg[0], "healthz") == 0);

  if (n == 1 && strcmp(seg[0], "healthz") == 0) {
    out->allow = ALLOW_GET;
    out->kind = get ? WD_HTTP_ROUTE_HEALTHZ : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
  } else if (n >= 2 && strcmp(seg[0], "v1") == 0 && strcmp(seg[1], "devices") == 0) {
    wd_http_route_kind_t kind = WD_HTTP_ROUTE_NOT_FOUND;
    if (n == 2) {
      out->allow = ALLOW_GET;
      kind = get ? WD_HTTP_ROUTE_DEVICE_LIST : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    } else if (n == 3) {
      out->allow = ALLOW_DEVICE;
      kind = get                             ? WD_HTTP_ROUTE_DEVICE_GET
             : method_is(method, "PUT")      ? WD_HTTP_ROUTE_DEVICE_PUT
             : method_is(method, "DELETE")   ? WD_HTTP_ROUTE_DEVICE_DELETE
                                             : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    } else if (n == 4 && (strcmp(seg[3], "disable") == 0 || strcmp(seg[3], "enable") == 0)) {
      out->allow = ALLOW_POST;
      kind = !method_is(method, "POST")      ? WD_HTTP_ROUTE_METHOD_NOT_ALLOWED
             : strcmp(seg[3], "disable") == 0 ? WD_HTTP_ROUTE_DEVICE_DISABLE
                                              : WD_HTTP_ROUTE_DEVICE_ENABLE;
    } else if (n == 5 && strcmp(seg[3], "keys") == 0 && strcmp(seg[4], "rotate") == 0) {
      out->allow = ALLOW_POST;
      kind = method_is(method, "POST") ? WD_HTTP_ROUTE_DEVICE_ROTATE : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    } else if (n == 4 && strcmp(seg[3], "commands") == 0) {
      out->allow = ALLOW_COMMANDS;
      kind = method_is(method, "POST")     ? WD_HTTP_ROUTE_COMMAND_SEND
             : method_is(method, "DELETE") ? WD_HTTP_ROUTE_COMMAND_PURGE
                                           : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    } else if (n == 5 && strcmp(seg[3], "commands") == 0) {
      out->allow = ALLOW_GET;
      kind = get ? WD_HTTP_ROUTE_COMMAND_STATUS : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
      if (kind == WD_HTTP_ROUTE_COMMAND_STATUS) {
        if (bad[4] || strlen(seg[4]) > WD_HTTP_MSGID_MAX) kind = WD_HTTP_ROUTE_NOT_FOUND;
        else memcpy(out->message_id, seg[4], strlen(seg[4]) + 1);
      }
    } else if (n == 4 && strcmp(seg[3], "notifications") == 0) {
      out->allow = ALLOW_POST;
      kind = method_is(method, "POST") ? WD_HTTP_ROUTE_NOTIFY_DEVICE : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    }
    out->kind = kind;
    if (kind == WD_HTTP_ROUTE_NOT_FOUND) out->allow = NULL;
    if (kind != WD_HTTP_ROUTE_NOT_FOUND && kind != WD_HTTP_ROUTE_METHOD_NOT_ALLOWED &&
        kind != WD_HTTP_ROUTE_DEVICE_LIST)
      take_id(out, seg[2], bad[2]);
  } else if (n == 4 && strcmp(seg[0], "v1") == 0 && strcmp(seg[1], "groups") == 0 &&
           strcmp(seg[3], "notifications") == 0) {
    out->allow = ALLOW_POST;
    out->kind = method_is(method, "POST") ? WD_HTTP_ROUTE_NOTIFY_GROUP : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
    if (out->kind == WD_HTTP_ROUTE_NOTIFY_GROUP) take_id(out, seg[2], bad[2]);
  } else if (n == 3 && strcmp(seg[0], "v1") == 0 && strcmp(seg[1], "telemetry") == 0 &&
             strcmp(seg[2], "stream") == 0) {
    out->allow = ALLOW_GET;
    out->kind = get ? WD_HTTP_ROUTE_TELEMETRY_STREAM : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
  } else if (n == 1 && strcmp(seg[0], "metrics") == 0) {
    out->allow = ALLOW_GET;
    out->kind = get ? WD_HTTP_ROUTE_METRICS : WD_HTTP_ROUTE_METHOD_NOT_ALLOWED;
  }

  switch (out->kind) {
    case WD_HTTP_ROUTE_COMMAND_SEND:
    case WD_HTTP_ROUTE_COMMAND_PURGE:
    case WD_HTTP_ROUTE_COMMAND_STATUS: out->scope = WD_SCOPE_COMMANDS_SEND; break;
    case WD_HTTP_ROUTE_NOTIFY_DEVICE:
    case WD_HTTP_ROUTE_NOTIFY_GROUP: out->scope = WD_SCOPE_NOTIFICATIONS_SEND; break;
    case WD_HTTP_ROUTE_TELEMETRY_STREAM: out->scope = WD_SCOPE_TELEMETRY_READ; break;
    case WD_HTTP_ROUTE_DEVICE_LIST:
    case WD_HTTP_ROUTE_DEVICE_GET: out->scope = WD_SCOPE_REGISTRY_READ; break;
    case WD_HTTP_ROUTE_DEVICE_PUT:
    case WD_HTTP_ROUTE_DEVICE_DELETE:
    case WD_HTTP_ROUTE_DEVICE_DISABLE:
    case WD_HTTP_ROUTE_DEVICE_ENABLE:
    case WD_HTTP_ROUTE_DEVICE_ROTATE: out->scope = WD_SCOPE_REGISTRY_WRITE; break;
    default: out->scope = 0; break;
  }
  out->payload = out->kind == WD_HTTP_ROUTE_COMMAND_SEND || out->kind == WD_HTTP_ROUTE_NOTIFY_DEVICE ||
                 out->kind == WD_HTTP_ROUTE_NOTIFY_GROUP;
  free(copy);
}

/* ------------------------------------------------------------ request body */

int wd_http__thumbprint_normalize(const char *in, char out[WD_THUMBPRINT_HEX + 1]) {
  size_t n = 0;
  for (const char *p = in; *p; p++) {
    if (*p == ':') continue;
    if (!isxdigit((unsigned char)*p) || n == WD_THUMBPRINT_HEX) return WD_ERR_INVALID;
    out[n++] = (char)tolower((unsigned char)*p);
  }
  out[n] = '\0';
  if (!wd_thumbprint_valid(out)) {
    out[0] = '\0';
    return WD_ERR_INVALID;
  }
  return WD_OK;
}

/* Joins the ids of a JSON array into a space-separated string, dropping
 * duplicates. NULL or json null give "". Returns 0, WD_ERR_INVALID (msg
 * filled) or WD_ERR_NOMEM; *out is returned owned on 0. */
static int id_list_parse(const json_t *arr, const char *name, char **out, char *msg,
                         size_t msgcap) {
  *out = NULL;
  if (arr && !json_is_null(arr) && !json_is_array(arr)) {
    snprintf(msg, msgcap, "\"%s\" must be an array of ids", name);
    return WD_ERR_INVALID;
  }
  size_t count = arr ? json_array_size(arr) : 0, cap = 1;
  for (size_t i = 0; i < count; i++) {
    const json_t *v = json_array_get(arr, i);
    if (!json_is_string(v) || !wd_id_valid(json_string_value(v))) {
      snprintf(msg, msgcap, "\"%s\"[%zu] must be an id of 1 to %d characters from [A-Za-z0-9._:-]",
               name, i, WD_ID_MAX);
      return WD_ERR_INVALID;
    }
    cap += strlen(json_string_value(v)) + 1;
  }
  char *s = malloc(cap);
  if (!s) return WD_ERR_NOMEM;
  size_t len = 0;
  s[0] = '\0';
  for (size_t i = 0; i < count; i++) {
    const char *id = json_string_value(json_array_get(arr, i));
    bool dup = false;
    for (size_t j = 0; j < i && !dup; j++) dup = strcmp(id, json_string_value(json_array_get(arr, j))) == 0;
    if (dup) continue;
    size_t idlen = strlen(id);
    if (len) s[len++] = ' ';
    memcpy(s + len, id, idlen + 1);
    len += idlen;
  }
  *out = s;
  return WD_OK;
}

static int auth_parse(const json_t *auth, wd_http_device_body_t *out, char *msg, size_t msgcap) {
  if (!auth || json_is_null(auth)) return WD_OK;
  if (!json_is_object(auth)) {
    snprintf(msg, msgcap, "\"auth\" must be an object");
    return WD_ERR_INVALID;
  }
  out->has_auth = true;
  const json_t *key = json_object_get(auth, "key");
  if (key && !json_is_null(key)) {
    if (!json_is_boolean(key)) {
      snprintf(msg, msgcap, "\"auth.key\" must be true or false");
      return WD_ERR_INVALID;
    }
    out->key = json_is_true(key);
  }
  const json_t *tp = json_object_get(auth, "thumbprint");
  if (tp && !json_is_null(tp)) {
    if (!json_is_string(tp) || wd_http__thumbprint_normalize(json_string_value(tp), out->thumbprint) < 0) {
      snprintf(msg, msgcap,
               "\"auth.thumbprint\" must be a SHA-256 thumbprint: 64 hex digits, optionally colon-separated");
      return WD_ERR_INVALID;
    }
  }
  if (!out->key && !out->thumbprint[0]) {
    snprintf(msg, msgcap, "\"auth\" must enable a key or register a thumbprint");
    return WD_ERR_INVALID;
  }
  return WD_OK;
}

int wd_http__device_body_parse(const char *body, size_t len, const char *id,
                               wd_http_device_body_t *out, char *msg, size_t msgcap) {
  memset(out, 0, sizeof *out);
  out->key = true;
  msg[0] = '\0';

  bool blank = true;
  for (size_t i = 0; i < len && blank; i++) blank = isspace((unsigned char)body[i]) != 0;
  json_t *root = NULL;
  if (!blank) {
    json_error_t jerr;
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
      snprintf(msg, msgcap, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
      return WD_ERR_INVALID;
    }
    if (!json_is_object(root)) {
      json_decref(root);
      snprintf(msg, msgcap, "the body must be a JSON object");
      return WD_ERR_INVALID;
    }
  }

  int rc = WD_OK;
  const json_t *v;
  if (root && (v = json_object_get(root, "id")) && !json_is_null(v) &&
      (!json_is_string(v) || strcmp(json_string_value(v), id) != 0)) {
    snprintf(msg, msgcap, "\"id\" in the body must match the id in the path");
    rc = WD_ERR_INVALID;
  }
  if (rc == WD_OK) rc = id_list_parse(root ? json_object_get(root, "groups") : NULL, "groups", &out->groups, msg, msgcap);
  if (rc == WD_OK) rc = id_list_parse(root ? json_object_get(root, "peers") : NULL, "peers", &out->peers, msg, msgcap);
  if (rc == WD_OK && root && (v = json_object_get(root, "queueLimit")) && !json_is_null(v)) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        json_integer_value(v) > (json_int_t)WD_HTTP_QUEUE_LIMIT_MAX) {
      snprintf(msg, msgcap, "\"queueLimit\" must be an integer from 1 to %u", WD_HTTP_QUEUE_LIMIT_MAX);
      rc = WD_ERR_INVALID;
    } else {
      out->queue_limit = (uint32_t)json_integer_value(v);
    }
  }
  if (rc == WD_OK && root) rc = auth_parse(json_object_get(root, "auth"), out, msg, msgcap);

  json_decref(root);
  if (rc < 0) {
    wd_http__device_body_fini(out);
    memset(out, 0, sizeof *out);
  }
  return rc;
}

void wd_http__device_body_fini(wd_http_device_body_t *b) {
  if (!b) return;
  free(b->groups);
  free(b->peers);
  b->groups = b->peers = NULL;
}

int wd_http__list_query_parse(const char *cursor_raw, const char *limit_raw,
                              char cursor[WD_ID_MAX + 1], size_t *limit, char *msg,
                              size_t msgcap) {
  cursor[0] = '\0';
  *limit = WD_HTTP_LIST_DEFAULT;
  if (cursor_raw && *cursor_raw) {
    /* An id is at most 128 bytes, so its encoding is at most three times that. */
    char buf[3 * WD_ID_MAX + 1];
    size_t n = strlen(cursor_raw);
    if (n >= sizeof buf || (memcpy(buf, cursor_raw, n + 1), wd_url_decode(buf) < 0) || !wd_id_valid(buf)) {
      snprintf(msg, msgcap, "\"cursor\" is not a cursor this server returned");
      return WD_ERR_INVALID;
    }
    memcpy(cursor, buf, strlen(buf) + 1);
  }
  if (limit_raw && *limit_raw) {
    size_t v = 0;
    for (const char *p = limit_raw; *p; p++) {
      if (*p < '0' || *p > '9') {
        v = 0;
        break;
      }
      if (v <= WD_HTTP_LIST_MAX) v = v * 10 + (size_t)(*p - '0');
    }
    if (v == 0) {
      snprintf(msg, msgcap, "\"limit\" must be a whole number from 1 to %u", WD_HTTP_LIST_MAX);
      return WD_ERR_INVALID;
    }
    *limit = v > WD_HTTP_LIST_MAX ? WD_HTTP_LIST_MAX : v;
  }
  return WD_OK;
}

/* ---------------------------------------------------------------- render */

static json_t *id_list_render(const char *s) {
  json_t *arr = json_array();
  if (!arr) return NULL;
  while (s && *s) {
    while (*s == ' ') s++;
    size_t n = strcspn(s, " ");
    if (n && json_array_append_new(arr, json_stringn(s, n)) < 0) {
      json_decref(arr);
      return NULL;
    }
    s += n;
  }
  return arr;
}

static json_t *time_render(int64_t ms) {
  if (ms <= 0) return json_null();
  char buf[25];
  wd_iso8601(ms, buf);
  return json_string(buf);
}

json_t *wd_http__device_render(const wd_device_t *d, const wd_http_live_t *live,
                               uint32_t default_queue_limit, const char *key_b64) {
  static const wd_http_live_t none = {0};
  if (!live) live = &none;
  json_t *o = json_object();
  if (!o) return NULL;
  uint32_t limit = d->queue_limit ? d->queue_limit : default_queue_limit;
  /* json_object_set_new takes its value even when it fails, so one check of
   * the sum is enough: any failure leaves a non-zero total. */
  int bad = 0;
  bad |= json_object_set_new(o, "id", json_string(d->id));
  bad |= json_object_set_new(o, "enabled", json_boolean(d->enabled));
  bad |= json_object_set_new(o, "groups", id_list_render(d->groups));
  bad |= json_object_set_new(o, "peers", id_list_render(d->peers));
  bad |= json_object_set_new(o, "queueLimit", json_integer(limit));
  bad |= json_object_set_new(o, "connected", json_boolean(live->connected));
  bad |= json_object_set_new(o, "lastSeen", time_render(live->last_seen_ms));
  bad |= json_object_set_new(o, "queueDepth", json_integer((json_int_t)live->queue_depth));
  if (d->thumbprint[0]) bad |= json_object_set_new(o, "thumbprint", json_string(d->thumbprint));
  bad |= json_object_set_new(o, "createdAt", time_render(d->created_ms));
  bad |= json_object_set_new(o, "updatedAt", time_render(d->updated_ms));
  if (key_b64) bad |= json_object_set_new(o, "key", json_string(key_b64));
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

char *wd_http__json_text(const json_t *j) { return json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER); }

char *wd_http__error_body(const char *code, const char *message) {
  json_t *o = json_object();
  char *text = NULL;
  if (o && json_object_set_new(o, "error", json_string(code)) == 0 &&
      json_object_set_new(o, "message", json_string(message)) == 0)
    text = wd_http__json_text(o);
  json_decref(o);
  /* A message that is not valid UTF-8 cannot be a JSON string; say so rather
   * than answer with no body. */
  if (!text && o) text = strdup("{\"error\":\"internal_error\",\"message\":\"unprintable error message\"}");
  return text;
}

unsigned wd_http__err_status(int rc, const char **code) {
  switch (rc) {
    case WD_ERR_INVALID: *code = "bad_request"; return 400;
    case WD_ERR_DENIED: *code = "forbidden"; return 403;
    case WD_ERR_NOT_FOUND: *code = "not_found"; return 404;
    case WD_ERR_EXISTS: *code = "conflict"; return 409;
    case WD_ERR_FULL: *code = "store_full"; return 503;
    case WD_ERR_BUSY: *code = "store_busy"; return 503;
    case WD_ERR_SHUTDOWN: *code = "shutting_down"; return 503;
    case WD_ERR_LIMIT: *code = "limit_reached"; return 503;
    default: *code = "internal_error"; return 500;
  }
}

const char *wd_http__bearer_token(const char *header) {
  if (!header) return NULL;
  while (*header == ' ' || *header == '\t') header++;
  if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t')) return NULL;
  const char *t = header + 6;
  while (*t == ' ' || *t == '\t') t++;
  return *t ? t : NULL;
}

static bool port_parse(const char *s, uint16_t *port) {
  unsigned v = 0;
  if (!*s) return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    v = v * 10 + (unsigned)(*s - '0');
    if (v > 65535) return false;
  }
  *port = (uint16_t)v;
  return true;
}

int wd_http__listen_parse(const char *listen, char *host, size_t hostcap, uint16_t *port) {
  if (!listen || hostcap == 0) return WD_ERR_INVALID;
  const char *hs, *he, *ps;
  if (listen[0] == '[') {
    hs = listen + 1;
    he = strchr(hs, ']');
    if (!he || he == hs || he[1] != ':') return WD_ERR_INVALID;
    ps = he + 2;
  } else {
    hs = listen;
    he = strrchr(listen, ':');
    if (!he || memchr(hs, ':', (size_t)(he - hs))) return WD_ERR_INVALID; /* bare IPv6 needs brackets */
    ps = he + 1;
  }
  size_t n = (size_t)(he - hs);
  if (n >= hostcap || !port_parse(ps, port)) return WD_ERR_INVALID;
  memcpy(host, hs, n);
  host[n] = '\0';
  return WD_OK;
}

/* ------------------------------------------------------------------ payloads */

/* Well-formed UTF-8 without NUL (overlong forms are not worth refusing here:
 * jansson checks again when it builds the string). */
static bool utf8_valid(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t k;
    if (c == 0) return false;
    if (c < 0x80) k = 0;
    else if ((c & 0xe0) == 0xc0) k = 1;
    else if ((c & 0xf0) == 0xe0) k = 2;
    else if ((c & 0xf8) == 0xf0) k = 3;
    else return false;
    if (n - i - 1 < k) return false;
    for (size_t j = 1; j <= k; j++)
      if ((s[i + j] & 0xc0) != 0x80) return false;
    i += k + 1;
  }
  return true;
}

json_t *wd_http__payload_render(const void *data, size_t len, const char *content_type) {
  /* The content type comes from a device too: one that is not text is not shown. */
  const char *type = content_type && content_type[0] && utf8_valid((const uint8_t *)content_type, strlen(content_type))
                         ? content_type
                         : "application/octet-stream";
  bool text = (strncasecmp(type, "application/json", 16) == 0 || strncasecmp(type, "text/", 5) == 0) &&
              utf8_valid(data, len);
  json_t *j = json_pack("{s:s}", "contentType", type);
  if (!j) j = json_pack("{s:s}", "contentType", "application/octet-stream"); /* not text after all */
  if (!j) return NULL;
  if (text) {
    json_t *body = json_stringn(data, len);
    if (!body) { /* jansson found it not to be UTF-8 after all */
      json_decref(j);
      return wd_http__payload_render(data, len, "application/octet-stream");
    }
    json_object_set_new(j, "body", body);
  } else {
    char *b64 = malloc(wd_base64_encoded_len(len));
    if (!b64) {
      json_decref(j);
      return NULL;
    }
    wd_base64_encode(data, len, b64);
    json_object_set_new(j, "bodyBase64", json_string(b64));
    free(b64);
  }
  return j;
}

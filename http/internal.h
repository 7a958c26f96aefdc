#ifndef WD_HTTP_INTERNAL_H
#define WD_HTTP_INTERNAL_H

/* Private to http/: the pure parts of the REST projection (routing, request
 * body validation, record rendering, error bodies), kept free of
 * libmicrohttpd so that tests/unit/http can check them without a network.
 * Everything here is reentrant and may run on any thread. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/base/util.h"
#include "store/store.h"

#define WD_HTTP_BODY_MAX (64u * 1024u)   /* larger request bodies get 413 */
#define WD_HTTP_LIST_DEFAULT 100u
#define WD_HTTP_LIST_MAX 1000u
#define WD_HTTP_QUEUE_LIMIT_MAX 100000u

/* ------------------------------------------------------------------ routes */

typedef enum {
  WD_HTTP_ROUTE_NOT_FOUND = 0,        /* no such path: 404 */
  WD_HTTP_ROUTE_METHOD_NOT_ALLOWED,   /* path exists, method does not: 405 */
  WD_HTTP_ROUTE_BAD_ID,               /* path names an invalid device id: 400 */
  WD_HTTP_ROUTE_HEALTHZ,
  WD_HTTP_ROUTE_DEVICE_LIST,
  WD_HTTP_ROUTE_DEVICE_GET,
  WD_HTTP_ROUTE_DEVICE_PUT,
  WD_HTTP_ROUTE_DEVICE_DELETE,
  WD_HTTP_ROUTE_DEVICE_DISABLE,
  WD_HTTP_ROUTE_DEVICE_ENABLE,
  WD_HTTP_ROUTE_DEVICE_ROTATE,
  WD_HTTP_ROUTE_COMMAND_SEND,       /* POST /v1/devices/{id}/commands */
  WD_HTTP_ROUTE_COMMAND_PURGE,      /* DELETE /v1/devices/{id}/commands */
  WD_HTTP_ROUTE_COMMAND_STATUS,     /* GET /v1/devices/{id}/commands/{messageId} */
  WD_HTTP_ROUTE_NOTIFY_DEVICE,      /* POST /v1/devices/{id}/notifications */
  WD_HTTP_ROUTE_NOTIFY_GROUP,       /* POST /v1/groups/{id}/notifications */
  WD_HTTP_ROUTE_TELEMETRY_STREAM,   /* GET /v1/telemetry/stream */
  WD_HTTP_ROUTE_METRICS,            /* GET /metrics */
} wd_http_route_kind_t;

#define WD_HTTP_MSGID_MAX 1024

typedef struct {
  wd_http_route_kind_t kind;
  bool needs_auth;       /* every path but /healthz, found or not */
  unsigned scope;        /* WD_SCOPE_* the caller needs; 0 when none */
  const char *allow;     /* methods the path accepts (the 405 Allow header); static */
  char id[WD_ID_MAX + 1]; /* the decoded device (or group) id, else "" */
  char message_id[WD_HTTP_MSGID_MAX + 1]; /* COMMAND_STATUS: the decoded message-id */
  bool payload;           /* the body is an opaque payload (up to the AMQP message size), not JSON */
} wd_http_route_t;

/* Matches a request. path: the raw (still percent-encoded) path without the
 * query string, borrowed for the call; each segment is percent-decoded on its
 * own, so "%2F" inside an id never splits it. HEAD is routed like GET. Never
 * fails: unknown paths give WD_HTTP_ROUTE_NOT_FOUND. */
void wd_http__route(const char *method, const char *path, wd_http_route_t *out);

/* ------------------------------------------------------------ request body */

typedef struct {
  char *groups;            /* space-separated ids, owned, never NULL after a parse */
  char *peers;             /* space-separated ids, owned, never NULL after a parse */
  uint32_t queue_limit;    /* 0 = not given (the configured default) */
  bool has_auth;           /* the body had an "auth" object */
  bool key;                /* auth.key, default true: generate a key on create */
  char thumbprint[WD_THUMBPRINT_HEX + 1]; /* normalised; "" when none */
} wd_http_device_body_t;

/* Parses and validates the body of PUT /v1/devices/{id}. An empty body means
 * {}. id: the path's id; a body "id" member must equal it. On WD_ERR_INVALID,
 * msg (msgcap bytes) says what is wrong in words fit for the client. On
 * success *out holds owned strings: wd_http__device_body_fini. On error *out
 * needs no fini. Returns 0, WD_ERR_INVALID or WD_ERR_NOMEM. */
int wd_http__device_body_parse(const char *body, size_t len, const char *id,
                               wd_http_device_body_t *out, char *msg, size_t msgcap);
void wd_http__device_body_fini(wd_http_device_body_t *b);

/* Accepts a SHA-256 thumbprint as 64 hex digits in either case, optionally
 * separated by colons ("AB:CD:..."), and writes it as lowercase hex.
 * Returns 0 or WD_ERR_INVALID. */
int wd_http__thumbprint_normalize(const char *in, char out[WD_THUMBPRINT_HEX + 1]);

/* Parses the query of GET /v1/devices. cursor_raw and limit_raw are the raw
 * (percent-encoded) values or NULL when absent. cursor receives the decoded id
 * to start after ("" from the start); limit defaults to 100 and is capped at
 * 1000. Returns 0 or WD_ERR_INVALID with msg filled. */
int wd_http__list_query_parse(const char *cursor_raw, const char *limit_raw,
                              char cursor[WD_ID_MAX + 1], size_t *limit, char *msg,
                              size_t msgcap);

/* ---------------------------------------------------------------- render */

/* Live facts about a device that the registry does not hold. */
typedef struct {
  bool connected;
  int64_t last_seen_ms;   /* 0 when never seen */
  uint64_t queue_depth;
} wd_http_live_t;

/* Renders a device record as CONTRACT.md writes it. key_b64: the freshly
 * generated key to show once, or NULL. A stored queue_limit of 0 shows
 * default_queue_limit. Returns returned-owned JSON (json_decref), or NULL when
 * out of memory. */
json_t *wd_http__device_render(const wd_device_t *d, const wd_http_live_t *live,
                               uint32_t default_queue_limit, const char *key_b64);

/* Serialises j compactly. Returns returned-owned text (free), or NULL. */
char *wd_http__json_text(const json_t *j);

/* {"error": code, "message": message}. Returns returned-owned text (free), or
 * NULL when out of memory. */
char *wd_http__error_body(const char *code, const char *message);

/* The HTTP status and error code for a negative wd_err_t from the store. */
unsigned wd_http__err_status(int rc, const char **code);

/* Returns the token of an "Authorization: Bearer <token>" header value
 * (borrowed from header), or NULL when the header is absent, of another scheme
 * or carries an empty token. The scheme is matched case-insensitively. */
const char *wd_http__bearer_token(const char *header);

/* Splits "host:port" or "[v6]:port". host receives the host without brackets
 * ("" for ":port"). Returns 0 or WD_ERR_INVALID. */
int wd_http__listen_parse(const char *listen, char *host, size_t hostcap, uint16_t *port);

/* Renders a payload for JSON: {"contentType", "body"} with the payload as
 * text when the content type is application/json or text/<anything> and it is valid
 * UTF-8; otherwise {"contentType", "bodyBase64"}. Returns owned JSON or NULL. */
json_t *wd_http__payload_render(const void *data, size_t len, const char *content_type);

#endif

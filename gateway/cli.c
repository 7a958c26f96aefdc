/* The operator's commands: `warden device ...`, `warden send` and `warden tail`.
 *
 * Every command is one or a few REST calls (for tail, a Server-Sent Events
 * stream) against a running gateway, made with libcurl and read with jansson,
 * so the same commands manage a local gateway and a remote one. The CLI runs
 * single-threaded in a `warden` process that was started as a CLI command; it
 * never meets the gateway's threads or its store.
 *
 * Errors are written for the person at the terminal: what went wrong and which
 * option changes it. Exit codes: 0 success, 1 the gateway refused or the call
 * failed, 2 the command line was wrong (then the command's usage follows). */

#include "gateway/cli.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gateway/base/util.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define DEFAULT_DATA_DIR "./warden-data"
#define TOKEN_FILE "admin.token"

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define CONNECT_TIMEOUT_S 10L
#define CALL_TIMEOUT_S 60L
#define WAIT_SLACK_S 30L      /* beyond --wait, for the gateway to answer 504 itself */
#define LIST_PAGE "1000"      /* the gateway's largest page */
#define MAX_SECONDS 315360000 /* ten years: larger durations are typos */

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

/* ------------------------------------------------------------ small helpers */

static void say(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("warden: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static char *fmt_alloc(const char *fmt, ...) PRINTF_LIKE(1, 2);
static char *fmt_alloc(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char *s = malloc((size_t)n + 1);
  if (!s) return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

/* A growable byte buffer, always NUL-terminated once anything was added. */
typedef struct {
  char *p;
  size_t len, cap;
} buf_t;

static int buf_add(buf_t *b, const void *data, size_t len) {
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + len + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) return -1;
    b->p = np;
    b->cap = cap;
  }
  if (len) memcpy(b->p + b->len, data, len);
  b->len += len;
  b->p[b->len] = '\0';
  return 0;
}

static void buf_fini(buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

static char *read_stream(FILE *f, size_t *len) {
  buf_t b = {0};
  char chunk[8192];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (buf_add(&b, chunk, n) < 0) {
      buf_fini(&b);
      errno = ENOMEM;
      return NULL;
    }
  }
  if (ferror(f) || buf_add(&b, "", 0) < 0) {
    buf_fini(&b);
    if (!errno) errno = EIO;
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* A whole number of seconds: digits with an optional s, m, h or d. */
static bool seconds_parse(const char *s, long *out) {
  long v = 0;
  const char *p = s;
  if (*p < '0' || *p > '9') return false;
  for (; *p >= '0' && *p <= '9'; p++) {
    v = v * 10 + (*p - '0');
    if (v > MAX_SECONDS) return false;
  }
  long unit = 1;
  if (*p) {
    switch (*p) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      default: return false;
    }
    if (p[1]) return false;
  }
  if (v == 0 || v > MAX_SECONDS / unit) return false;
  *out = v * unit;
  return true;
}

static bool count_parse(const char *s, long max, long *out) {
  long v = 0;
  if (!*s) return false;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    v = v * 10 + (*p - '0');
    if (v > max) return false;
  }
  if (v == 0) return false;
  *out = v;
  return true;
}

static const char *jstr(const json_t *o, const char *key) {
  const json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Writes s on one line: control characters become C escapes, so a payload
 * with newlines cannot break `warden tail`'s one line per event. */
static void put_escaped(const char *s, FILE *f) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      default:
        if (*p < 0x20 || *p == 0x7f)
          fprintf(f, "\\x%02x", *p);
        else
          fputc(*p, f);
    }
  }
}

/* Prints a body as received, ending the line if the body did not. */
static void put_body(const char *body, size_t len) {
  if (len) fwrite(body, 1, len, stdout);
  if (len && body[len - 1] != '\n') fputc('\n', stdout);
}

/* ---------------------------------------------------------------- options */

typedef enum {
  O_URL,
  O_TOKEN,
  O_DATA_DIR,
  O_CACERT,
  O_JSON,
  O_HELP,
  O_GROUP,
  O_PEER,
  O_QUEUE_LIMIT,
  O_THUMBPRINT,
  O_NO_KEY,
  O_LIMIT,
  O_CURSOR,
  O_CONTENT_TYPE,
  O_TTL,
  O_WAIT,
  O_NOTIFICATION,
  O_DEVICE,
  O_COUNT
} opt_t;

static const struct {
  const char *name;
  bool value;
} opt_defs[O_COUNT] = {
    [O_URL] = {"url", true},
    [O_TOKEN] = {"token", true},
    [O_DATA_DIR] = {"data-dir", true},
    [O_CACERT] = {"cacert", true},
    [O_JSON] = {"json", false},
    [O_HELP] = {"help", false},
    [O_GROUP] = {"group", true},
    [O_PEER] = {"peer", true},
    [O_QUEUE_LIMIT] = {"queue-limit", true},
    [O_THUMBPRINT] = {"thumbprint", true},
    [O_NO_KEY] = {"no-key", false},
    [O_LIMIT] = {"limit", true},
    [O_CURSOR] = {"cursor", true},
    [O_CONTENT_TYPE] = {"content-type", true},
    [O_TTL] = {"ttl", true},
    [O_WAIT] = {"wait", true},
    [O_NOTIFICATION] = {"notification", false},
    [O_DEVICE] = {"device", true},
};

#define BIT(o) (1u << (o))
#define GLOBAL_OPTS (BIT(O_URL) | BIT(O_TOKEN) | BIT(O_DATA_DIR) | BIT(O_CACERT) | BIT(O_JSON) | BIT(O_HELP))

/* The command line after argv[1]: positional words in order, and every
 * option occurrence in order (repeatable options keep all; others, the last). */
typedef struct {
  const char **pos;
  size_t npos;
  struct {
    opt_t id;
    const char *val;
  } *opts;
  size_t nopts;
} args_t;

static void args_fini(args_t *a) {
  free(a->pos);
  free(a->opts);
}

static const char *opt_last(const args_t *a, opt_t id) {
  const char *v = NULL;
  for (size_t i = 0; i < a->nopts; i++)
    if (a->opts[i].id == id) v = a->opts[i].val ? a->opts[i].val : "";
  return v;
}

static bool opt_has(const args_t *a, opt_t id) { return opt_last(a, id) != NULL; }

/* ------------------------------------------------------------- commands */

typedef struct cli cli_t;
typedef int (*run_fn)(cli_t *c, const args_t *a);

typedef struct {
  const char *name;  /* "device add", "send", ... */
  size_t nargs;      /* positional words after the name */
  unsigned opts;     /* allowed options besides the global ones */
  const char *usage; /* the synopsis line(s) */
  const char *help;  /* what it does and its own options */
  run_fn run;
} command_t;

static const char global_help[] =
    "options for every command:\n"
    "  --url URL        the gateway's REST address (env WARDEN_URL; default " DEFAULT_URL ")\n"
    "  --token TOKEN    a service secret with the scopes the call needs (env WARDEN_TOKEN)\n"
    "  --data-dir DIR   without a token, read DIR/" TOKEN_FILE " (default " DEFAULT_DATA_DIR ")\n"
    "  --cacert FILE    trust this CA for an https:// URL\n"
    "  --json           print the gateway's JSON instead of a summary\n";

static void usage(const command_t *cmd, FILE *f) {
  fprintf(f, "usage: %s\n", cmd->usage);
  if (cmd->help) fprintf(f, "\n%s", cmd->help);
  fprintf(f, "\n%s", global_help);
}

static const char device_usage[] =
    "warden device add ID [--group G]... [--peer P]... [--queue-limit N] [--thumbprint HEX] [--no-key]\n"
    "       warden device show ID\n"
    "       warden device list [--limit N [--cursor C]]\n"
    "       warden device disable|enable|rotate|delete ID";

static void device_usage_print(FILE *f) {
  fprintf(f, "usage: %s\n\n%s", device_usage, global_help);
}

/* ------------------------------------------------------------------ HTTP */

struct cli {
  char *url;            /* the gateway's base URL, without a trailing '/'; owned */
  char *token;          /* owned */
  char *token_from;     /* where the token came from, for messages; owned */
  const char *cacert;
  const char *token_opt; /* --token, or NULL */
  const char *data_dir;  /* --data-dir, or NULL */
  bool json;
  const command_t *cmd;
  CURL *curl;
  const char *method;   /* the last request, for messages */
  const char *path;
};

typedef struct {
  long status;
  buf_t body;
  char content_type[128];
  char retry_after[32];
} resp_t;

static void resp_fini(resp_t *r) { buf_fini(&r->body); }

static size_t on_body(char *data, size_t size, size_t n, void *ctx) {
  resp_t *r = ctx;
  return buf_add(&r->body, data, size * n) < 0 ? 0 : size * n;
}

static void header_copy(const char *v, size_t len, char *out, size_t cap) {
  while (len && (*v == ' ' || *v == '\t')) v++, len--;
  while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ')) len--;
  if (len >= cap) len = cap - 1;
  memcpy(out, v, len);
  out[len] = '\0';
}

static size_t on_header(char *data, size_t size, size_t n, void *ctx) {
  resp_t *r = ctx;
  size_t len = size * n;
  if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) { /* a new response (after 100 Continue) */
    r->content_type[0] = r->retry_after[0] = '\0';
  } else if (len > 13 && strncasecmp(data, "Content-Type:", 13) == 0) {
    header_copy(data + 13, len - 13, r->content_type, sizeof r->content_type);
  } else if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0) {
    header_copy(data + 12, len - 12, r->retry_after, sizeof r->retry_after);
  }
  return len;
}

/* Says why no answer came. Returns EXIT_FAIL. */
static int transport_error(const cli_t *c, CURLcode rc, const char *detail, long timeout_s) {
  const char *d = detail && *detail ? detail : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
      say("cannot reach warden at %s: is it running? (--url)", c->url);
      break;
    case CURLE_COULDNT_RESOLVE_HOST:
      say("cannot reach warden at %s: unknown host (--url)", c->url);
      break;
    case CURLE_OPERATION_TIMEDOUT:
      say("warden at %s did not answer within %ld s", c->url, timeout_s);
      break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      say("'%s' is not a URL warden can be reached at: use http://HOST:PORT or https://HOST:PORT (--url)",
          c->url);
      break;
    case CURLE_PEER_FAILED_VERIFICATION:
      say("cannot verify the certificate of warden at %s: %s (trust its CA with --cacert FILE)", c->url, d);
      break;
    case CURLE_SSL_CACERT_BADFILE:
      say("cannot use %s as a CA (--cacert): %s", c->cacert ? c->cacert : "the CA file", d);
      break;
    case CURLE_SSL_CONNECT_ERROR:
      say("TLS with warden at %s failed: %s (is the URL's scheme right? --url)", c->url, d);
      break;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      say("warden at %s closed the connection without an answer: %s", c->url, d);
      break;
    default:
      say("the request to warden at %s failed: %s", c->url, d);
      break;
  }
  return EXIT_FAIL;
}

/* The token: --token, else --data-dir's admin.token, else WARDEN_TOKEN, else
 * ./warden-data/admin.token (an option beats the environment, which beats the
 * default). Returns 0, or EXIT_FAIL after saying why there is none. */
static int token_load(cli_t *c) {
  const char *token = c->token_opt, *dir = c->data_dir;
  if (token) {
    c->token_from = strdup("--token");
  } else if (!dir && (token = getenv("WARDEN_TOKEN")) && *token) {
    c->token_from = strdup("WARDEN_TOKEN");
  } else {
    token = NULL;
    if (!dir) dir = DEFAULT_DATA_DIR;
    char *path = fmt_alloc("%s/%s", dir, TOKEN_FILE);
    if (!path) return EXIT_FAIL;
    size_t len = 0;
    c->token = wd_read_file(path, &len);
    if (!c->token) {
      say("no token: cannot read %s (%s); pass --token TOKEN, set WARDEN_TOKEN, or point --data-dir at "
          "the gateway's data directory",
          path, strerror(errno));
      free(path);
      return EXIT_FAIL;
    }
    while (len && (c->token[len - 1] == '\n' || c->token[len - 1] == '\r' || c->token[len - 1] == ' '))
      c->token[--len] = '\0';
    c->token_from = path;
  }
  if (token) c->token = strdup(token);
  if (!c->token || !c->token_from) {
    say("out of memory");
    return EXIT_FAIL;
  }
  if (!*c->token || strpbrk(c->token, "\r\n")) {
    say("the token from %s is empty or spans lines", c->token_from);
    return EXIT_FAIL;
  }
  return 0;
}

/* Sets what every request shares: URL, token, TLS trust, timeouts. Returns
 * the headers to free after the transfer, or NULL after saying what failed. */
static struct curl_slist *request_setup(cli_t *c, const char *method, const char *path, const char *url,
                                        const char *accept, const char *ctype, char *errbuf) {
  if (!url) {
    say("out of memory");
    return NULL;
  }
  if (!c->token && token_load(c) != 0) return NULL;
  CURL *h = c->curl;
  curl_easy_reset(h);
  c->method = method;
  c->path = path;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "warden-cli");
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  if (c->cacert) curl_easy_setopt(h, CURLOPT_CAINFO, c->cacert);

  struct curl_slist *hdrs = NULL, *t;
  char *auth = fmt_alloc("Authorization: Bearer %s", c->token);
  char *acc = fmt_alloc("Accept: %s", accept);
  char *ct = ctype ? fmt_alloc("Content-Type: %s", ctype) : NULL;
  bool ok = auth && acc && (!ctype || ct);
  if (ok && (t = curl_slist_append(hdrs, auth))) hdrs = t; else ok = false;
  if (ok && (t = curl_slist_append(hdrs, acc))) hdrs = t; else ok = false;
  if (ok && (t = curl_slist_append(hdrs, "Expect:"))) hdrs = t; else ok = false;
  if (ok && ct && (t = curl_slist_append(hdrs, ct))) hdrs = t; else if (ct) ok = false;
  if (auth) explicit_bzero(auth, strlen(auth));
  free(auth);
  free(acc);
  free(ct);
  if (!ok) {
    curl_slist_free_all(hdrs);
    say("out of memory");
    return NULL;
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  if (strcmp(method, "GET") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  return hdrs;
}

/* Makes one request; body may be NULL (POST then sends an empty body).
 * Returns 0 with r filled for any HTTP status, or EXIT_FAIL after saying why
 * no answer came. */
static int call(cli_t *c, const char *method, const char *path, const char *ctype, const char *body,
                size_t len, long timeout_s, resp_t *r) {
  memset(r, 0, sizeof *r);
  char errbuf[CURL_ERROR_SIZE] = "";
  char *url = fmt_alloc("%s%s", c->url, path);
  struct curl_slist *hdrs = request_setup(c, method, path, url, "application/json", ctype, errbuf);
  if (!hdrs) {
    free(url);
    return EXIT_FAIL;
  }
  CURL *h = c->curl;
  if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
  }
  curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
  curl_slist_free_all(hdrs);
  free(url);
  if (rc != CURLE_OK) {
    resp_fini(r);
    return transport_error(c, rc, errbuf, timeout_s);
  }
  if (buf_add(&r->body, "", 0) < 0) {
    resp_fini(r);
    say("out of memory");
    return EXIT_FAIL;
  }
  return 0;
}

/* The gateway's error as text: its JSON "message", else the body's first
 * line, else the status. Writes into out. */
static void error_text(const resp_t *r, char *out, size_t cap, char *code, size_t codecap) {
  snprintf(out, cap, "HTTP %ld", r->status);
  if (code) code[0] = '\0';
  if (!r->body.len) return;
  json_t *j = json_loadb(r->body.p, r->body.len, 0, NULL);
  const char *m = j ? jstr(j, "message") : NULL;
  const char *e = j ? jstr(j, "error") : NULL;
  bool have = m && *m; /* m dies with j */
  if (have) snprintf(out, cap, "%s", m);
  if (code && e) snprintf(code, codecap, "%s", e);
  json_decref(j);
  if (have) return;
  size_t n = strcspn(r->body.p, "\r\n");
  if (n > 200) n = 200;
  if (n) snprintf(out, cap, "%.*s", (int)n, r->body.p);
}

/* Says why the gateway refused a call. device: the device the call names, or
 * NULL. Returns EXIT_FAIL. */
static int refused(const cli_t *c, const resp_t *r, const char *device) {
  char msg[512], code[64];
  error_text(r, msg, sizeof msg, code, sizeof code);
  switch (r->status) {
    case 401:
      say("the token was refused by warden at %s (it came from %s; pass a valid one with --token, "
          "WARDEN_TOKEN, or the gateway's --data-dir)",
          c->url, c->token_from);
      break;
    case 403: {
      const char *s = strstr(msg, "scope ");
      if (s) {
        s += 6;
        say("the token lacks scope %.*s, which %s %s needs (from %s)", (int)strcspn(s, " ,;.)"), s, c->method,
            c->path, c->token_from);
      } else {
        say("the token lacks a scope this call needs: %s (from %s)", msg, c->token_from);
      }
      break;
    }
    case 404:
      /* A route the gateway does not have answers "no such resource"; a
       * device route for a missing device names the device. */
      if (device && !strstr(msg, "no such resource"))
        say("no device %s", device);
      else
        say("warden at %s does not offer %s %s (%s): is it an older version?", c->url, c->method, c->path, msg);
      break;
    default:
      if (code[0])
        say("%s (HTTP %ld %s)", msg, r->status, code);
      else
        say("%s (HTTP %ld)", msg, r->status);
      break;
  }
  return EXIT_FAIL;
}

static char *device_path(const char *id, const char *suffix) {
  char *enc = wd_url_encode(id);
  char *p = enc ? fmt_alloc("/v1/devices/%s%s", enc, suffix) : NULL;
  free(enc);
  return p;
}

/* Parses a 2xx JSON body for the summary. Returns NULL after saying so. */
static json_t *body_json(const cli_t *c, const resp_t *r) {
  json_error_t err;
  json_t *j = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, &err);
  if (!j || !json_is_object(j)) {
    json_decref(j);
    say("warden at %s answered %s %s with something that is not a JSON object: %s", c->url, c->method, c->path,
        j ? "(not an object)" : err.text);
  }
  return j;
}

/* ---------------------------------------------------------------- device */

static bool id_check(const cli_t *c, const char *what, const char *id) {
  if (wd_id_valid(id)) return true;
  say("%s: '%s' is not a %s id: 1 to %d characters from A-Z a-z 0-9 . _ : -", c->cmd->name, id, what, WD_ID_MAX);
  return false;
}

/* Appends --group/--peer values (each may be comma-separated) to arr. */
static bool ids_collect(const cli_t *c, const args_t *a, opt_t id, const char *what, json_t *arr) {
  for (size_t i = 0; i < a->nopts; i++) {
    if (a->opts[i].id != id) continue;
    const char *s = a->opts[i].val;
    if (!*s) {
      say("%s: --%s needs a %s id", c->cmd->name, opt_defs[id].name, what);
      return false;
    }
    while (*s) {
      size_t n = strcspn(s, ",");
      char one[WD_ID_MAX + 2];
      if (n == 0 || n > WD_ID_MAX) {
        say("%s: '%s' is not a list of %s ids (--%s)", c->cmd->name, a->opts[i].val, what, opt_defs[id].name);
        return false;
      }
      memcpy(one, s, n);
      one[n] = '\0';
      if (!id_check(c, what, one)) return false;
      json_array_append_new(arr, json_string(one));
      s += n;
      if (*s == ',') s++;
    }
  }
  return true;
}

static void list_print(const json_t *arr, FILE *f) {
  size_t n = json_array_size(arr);
  if (n == 0) {
    fputs("-", f);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const json_t *v = json_array_get(arr, i);
    fprintf(f, "%s%s", i ? ", " : "", json_is_string(v) ? json_string_value(v) : "?");
  }
}

static void device_print(const json_t *d) {
  const char *s;
  printf("id:          %s\n", (s = jstr(d, "id")) ? s : "?");
  printf("enabled:     %s\n", json_is_true(json_object_get(d, "enabled")) ? "yes" : "no");
  printf("connected:   %s\n", json_is_true(json_object_get(d, "connected")) ? "yes" : "no");
  printf("last seen:   %s\n", (s = jstr(d, "lastSeen")) ? s : "never");
  printf("groups:      ");
  list_print(json_object_get(d, "groups"), stdout);
  printf("\npeers:       ");
  list_print(json_object_get(d, "peers"), stdout);
  printf("\nqueue:       %lld of %lld\n", (long long)json_integer_value(json_object_get(d, "queueDepth")),
         (long long)json_integer_value(json_object_get(d, "queueLimit")));
  if ((s = jstr(d, "thumbprint"))) printf("thumbprint:  %s\n", s);
  if ((s = jstr(d, "createdAt"))) printf("created:     %s\n", s);
  if ((s = jstr(d, "updatedAt"))) printf("updated:     %s\n", s);
}

static void key_print(const char *id, const char *key) {
  printf("key:         %s\n", key);
  printf("The key is shown only this once: keep it now. If it is lost, `warden device rotate %s` issues a new one.\n",
         id);
}

static int device_add(cli_t *c, const args_t *a) {
  const char *id = a->pos[1];
  if (!id_check(c, "device", id)) return EXIT_USAGE;
  json_t *body = json_object();
  json_t *groups = json_array(), *peers = json_array();
  json_object_set_new(body, "groups", groups);
  json_object_set_new(body, "peers", peers);
  if (!ids_collect(c, a, O_GROUP, "group", groups) || !ids_collect(c, a, O_PEER, "device or group", peers)) {
    json_decref(body);
    return EXIT_USAGE;
  }
  const char *v;
  long limit;
  if ((v = opt_last(a, O_QUEUE_LIMIT))) {
    if (!count_parse(v, 100000000L, &limit)) {
      say("%s: --queue-limit wants a whole number of messages above 0, not '%s'", c->cmd->name, v);
      json_decref(body);
      return EXIT_USAGE;
    }
    json_object_set_new(body, "queueLimit", json_integer(limit));
  }
  const char *tp = opt_last(a, O_THUMBPRINT);
  bool no_key = opt_has(a, O_NO_KEY);
  if (no_key && !tp) {
    say("%s: --no-key leaves device %s without a credential: register a certificate with --thumbprint HEX",
        c->cmd->name, id);
    json_decref(body);
    return EXIT_USAGE;
  }
  if (tp || no_key) {
    json_t *auth = json_object();
    json_object_set_new(auth, "key", json_boolean(!no_key));
    if (tp) json_object_set_new(auth, "thumbprint", json_string(tp));
    json_object_set_new(body, "auth", auth);
  }
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  char *path = device_path(id, "");
  if (!text || !path) {
    free(text);
    free(path);
    say("out of memory");
    return EXIT_FAIL;
  }

  /* PUT creates or updates; `add` should not quietly change a device that is
   * already there, so look first (a device created between the two calls is
   * reported as updated below). */
  resp_t r;
  int rc = call(c, "GET", path, NULL, NULL, 0, CALL_TIMEOUT_S, &r);
  if (rc == 0 && r.status == 200) {
    say("device %s already exists (see `warden device show %s`; delete it first to create it anew)", id, id);
    rc = EXIT_FAIL;
  } else if (rc == 0 && (r.status == 401 || r.status >= 500)) {
    rc = refused(c, &r, id);
  }
  if (rc == 0) {
    resp_fini(&r);
    rc = call(c, "PUT", path, "application/json", text, strlen(text), CALL_TIMEOUT_S, &r);
    if (rc == 0) {
      if (r.status != 200 && r.status != 201) {
        rc = refused(c, &r, NULL);
      } else if (c->json) {
        put_body(r.body.p, r.body.len);
      } else {
        json_t *d = body_json(c, &r);
        if (!d) {
          rc = EXIT_FAIL;
        } else {
          const char *key = jstr(d, "key");
          if (r.status == 201)
            printf("created device %s\n", id);
          else
            printf("device %s already existed and was updated; its key is unchanged\n", id);
          if (key) key_print(id, key);
          else if ((tp = jstr(d, "thumbprint")))
            printf("credential:  certificate with SHA-256 thumbprint %s\n", tp);
          json_decref(d);
        }
      }
    }
  }
  resp_fini(&r);
  free(text);
  free(path);
  return rc;
}

static int device_show(cli_t *c, const args_t *a) {
  const char *id = a->pos[1];
  if (!id_check(c, "device", id)) return EXIT_USAGE;
  char *path = device_path(id, "");
  if (!path) return EXIT_FAIL;
  resp_t r;
  int rc = call(c, "GET", path, NULL, NULL, 0, CALL_TIMEOUT_S, &r);
  if (rc == 0) {
    if (r.status != 200) {
      rc = refused(c, &r, id);
    } else if (c->json) {
      put_body(r.body.p, r.body.len);
    } else {
      json_t *d = body_json(c, &r);
      if (d) device_print(d);
      else rc = EXIT_FAIL;
      json_decref(d);
    }
  }
  resp_fini(&r);
  free(path);
  return rc;
}

static void queue_text(const json_t *d, char *out, size_t cap) {
  snprintf(out, cap, "%lld/%lld", (long long)json_integer_value(json_object_get(d, "queueDepth")),
           (long long)json_integer_value(json_object_get(d, "queueLimit")));
}

/* One row per device, columns as wide as their widest cell. */
static void table_print(const json_t *devices) {
  size_t n = json_array_size(devices);
  int idw = 2, qw = 5, sw = 9;
  for (size_t i = 0; i < n; i++) {
    const json_t *d = json_array_get(devices, i);
    const char *id = jstr(d, "id"), *seen = jstr(d, "lastSeen");
    char queue[48];
    queue_text(d, queue, sizeof queue);
    if (id && (int)strlen(id) > idw) idw = (int)strlen(id);
    if (seen && (int)strlen(seen) > sw) sw = (int)strlen(seen);
    if ((int)strlen(queue) > qw) qw = (int)strlen(queue);
  }
  printf("%-*s  %-7s  %-9s  %-*s  %-*s  %s\n", idw, "ID", "ENABLED", "CONNECTED", qw, "QUEUE", sw, "LAST SEEN",
         "GROUPS");
  for (size_t i = 0; i < n; i++) {
    const json_t *d = json_array_get(devices, i);
    const char *id = jstr(d, "id"), *seen = jstr(d, "lastSeen");
    char queue[48];
    queue_text(d, queue, sizeof queue);
    printf("%-*s  %-7s  %-9s  %-*s  %-*s  ", idw, id ? id : "?",
           json_is_true(json_object_get(d, "enabled")) ? "yes" : "no",
           json_is_true(json_object_get(d, "connected")) ? "yes" : "no", qw, queue, sw, seen ? seen : "-");
    list_print(json_object_get(d, "groups"), stdout);
    putchar('\n');
  }
}

/* One page, or every page when --limit is absent (following nextCursor). */
static int device_list(cli_t *c, const args_t *a) {
  const char *limit_s = opt_last(a, O_LIMIT), *start = opt_last(a, O_CURSOR);
  long limit = 0;
  if (limit_s && !count_parse(limit_s, 1000000L, &limit)) {
    say("%s: --limit wants a whole number of devices above 0, not '%s'", c->cmd->name, limit_s);
    return EXIT_USAGE;
  }
  if (start && !limit_s) {
    say("%s: --cursor goes with --limit (without --limit every device is listed)", c->cmd->name);
    return EXIT_USAGE;
  }
  json_t *all = json_array();
  char *cursor = start ? strdup(start) : NULL;
  const char *next = NULL;
  json_t *page = NULL;
  resp_t r = {0};
  int rc = 0;
  for (unsigned pages = 0; rc == 0; pages++) {
    char *enc = cursor ? wd_url_encode(cursor) : NULL;
    char lim[24];
    snprintf(lim, sizeof lim, "%ld", limit);
    char *path = fmt_alloc("/v1/devices?limit=%s%s%s", limit ? lim : LIST_PAGE, enc ? "&cursor=" : "",
                           enc ? enc : "");
    free(enc);
    if (!path) {
      rc = EXIT_FAIL;
      break;
    }
    resp_fini(&r);
    rc = call(c, "GET", path, NULL, NULL, 0, CALL_TIMEOUT_S, &r);
    c->path = "/v1/devices";
    free(path);
    if (rc) break;
    if (r.status != 200) {
      rc = refused(c, &r, NULL);
      break;
    }
    json_decref(page);
    if (!(page = body_json(c, &r))) {
      rc = EXIT_FAIL;
      break;
    }
    json_array_extend(all, json_object_get(page, "devices"));
    next = jstr(page, "nextCursor");
    if (limit || !next) break;
    if (cursor && strcmp(cursor, next) == 0) {
      say("warden at %s returned the same cursor twice; stopping after %zu devices", c->url, json_array_size(all));
      rc = EXIT_FAIL;
      break;
    }
    free(cursor);
    cursor = strdup(next);
  }
  if (rc == 0) {
    if (c->json && limit) {
      put_body(r.body.p, r.body.len);
    } else if (c->json) {
      json_t *o = json_pack("{s:O,s:n}", "devices", all, "nextCursor");
      char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
      if (text) puts(text);
      free(text);
      json_decref(o);
    } else if (json_array_size(all) == 0) {
      fprintf(stderr, "no devices\n");
    } else {
      table_print(all);
    }
    if (!c->json && limit && next)
      fprintf(stderr, "more devices follow: warden device list --limit %ld --cursor %s\n", limit, next);
  }
  json_decref(page);
  json_decref(all);
  free(cursor);
  resp_fini(&r);
  return rc;
}

/* disable, enable, rotate, delete. */
static int device_change(cli_t *c, const args_t *a) {
  const char *op = a->pos[0], *id = a->pos[1];
  if (!id_check(c, "device", id)) return EXIT_USAGE;
  bool del = strcmp(op, "delete") == 0, rotate = strcmp(op, "rotate") == 0;
  const char *suffix = del ? "" : rotate ? "/keys/rotate" : strcmp(op, "disable") == 0 ? "/disable" : "/enable";
  char *path = device_path(id, suffix);
  if (!path) return EXIT_FAIL;
  resp_t r;
  int rc = call(c, del ? "DELETE" : "POST", path, NULL, NULL, 0, CALL_TIMEOUT_S, &r);
  if (rc == 0) {
    if (r.status < 200 || r.status > 299) {
      rc = refused(c, &r, id);
    } else if (c->json) {
      put_body(r.body.p, r.body.len);
    } else if (del) {
      printf("deleted device %s; its connection, if any, was closed\n", id);
    } else if (strcmp(op, "enable") == 0) {
      printf("enabled device %s\n", id);
    } else if (!rotate) {
      printf("disabled device %s; its connection, if any, was closed\n", id);
    } else {
      json_t *d = body_json(c, &r);
      const char *key = d ? jstr(d, "key") : NULL;
      printf("rotated the key of device %s; the old key no longer works and its connection, if any, was closed\n",
             id);
      if (key) key_print(id, key);
      else if (d) printf("device %s has no key (it authenticates with a certificate)\n", id);
      if (!d) rc = EXIT_FAIL;
      json_decref(d);
    }
  }
  resp_fini(&r);
  free(path);
  return rc;
}

/* ------------------------------------------------------------------ send */

static int send_cmd(cli_t *c, const args_t *a) {
  const char *id = a->pos[0], *payload = a->pos[1], *v;
  if (!id_check(c, "device", id)) return EXIT_USAGE;
  bool note = opt_has(a, O_NOTIFICATION);
  long ttl = 0, wait = 0;
  if ((v = opt_last(a, O_TTL)) && !seconds_parse(v, &ttl)) {
    say("%s: --ttl wants seconds above 0 (or a number with s, m, h or d), not '%s'", c->cmd->name, v);
    return EXIT_USAGE;
  }
  if ((v = opt_last(a, O_WAIT)) && !seconds_parse(v, &wait)) {
    say("%s: --wait wants seconds above 0 (or a number with s, m, h or d), not '%s'", c->cmd->name, v);
    return EXIT_USAGE;
  }
  if (note && wait) {
    say("%s: a notification gets no response, so --wait goes with commands only", c->cmd->name);
    return EXIT_USAGE;
  }
  if (ttl && wait) {
    say("%s: with --wait the command lives as long as the wait; drop --ttl", c->cmd->name);
    return EXIT_USAGE;
  }
  const char *ctype = opt_last(a, O_CONTENT_TYPE);
  if (!ctype) ctype = "text/plain";
  if (!*ctype || strpbrk(ctype, "\r\n")) {
    say("%s: --content-type wants a media type such as application/json", c->cmd->name);
    return EXIT_USAGE;
  }

  char *owned = NULL;
  const char *body = payload;
  size_t len = strlen(payload);
  if (strcmp(payload, "-") == 0) {
    if (!(owned = read_stream(stdin, &len))) {
      say("cannot read the payload from standard input: %s", strerror(errno));
      return EXIT_FAIL;
    }
    body = owned;
  } else if (payload[0] == '@') {
    if (!(owned = wd_read_file(payload + 1, &len))) {
      say("cannot read the payload from %s: %s", payload + 1, strerror(errno));
      return EXIT_FAIL;
    }
    body = owned;
  }

  char ttl_q[32] = "", wait_q[32] = "";
  if (ttl) snprintf(ttl_q, sizeof ttl_q, "ttl=%ld", ttl);
  if (wait) snprintf(wait_q, sizeof wait_q, "wait=%ld", wait);
  char *base = device_path(id, note ? "/notifications" : "/commands");
  char *path = base ? fmt_alloc("%s%s%s%s%s", base, (ttl || wait) ? "?" : "", ttl_q, (ttl && wait) ? "&" : "",
                                wait_q)
                    : NULL;
  if (!path) {
    free(base);
    free(owned);
    return EXIT_FAIL;
  }

  resp_t r;
  long timeout = wait ? wait + WAIT_SLACK_S : CALL_TIMEOUT_S;
  int rc = call(c, "POST", path, ctype, body, len, timeout, &r);
  c->path = base;
  const char *what = note ? "notification" : "command";
  if (rc == 0) {
    char msg[512], code[64];
    error_text(&r, msg, sizeof msg, code, sizeof code);
    if (r.status == 202) {
      json_t *j;
      if (c->json) {
        put_body(r.body.p, r.body.len);
      } else if ((j = body_json(c, &r))) {
        const char *s;
        printf("messageId:   %s\n", (s = jstr(j, "messageId")) ? s : "?");
        printf("status:      %s\n", (s = jstr(j, "status")) ? s : "?");
        printf("expiresAt:   %s\n", (s = jstr(j, "expiresAt")) ? s : "?");
        json_decref(j);
      } else {
        rc = EXIT_FAIL;
      }
    } else if (r.status == 200) {
      /* The device's response, as it sent it. */
      if (r.body.len) fwrite(r.body.p, 1, r.body.len, stdout);
      if (r.body.len && r.body.p[r.body.len - 1] != '\n' && isatty(STDOUT_FILENO)) fputc('\n', stdout);
    } else if (r.status == 504 && wait) {
      /* The device may have taken the command and not answered; then the
       * gateway says so, and "expired unexecuted" would be untrue. */
      if (strstr(msg, " took "))
        say("%s", msg);
      else
        say("no response from %s within %ld s; the command expired unexecuted", id, wait);
      rc = EXIT_FAIL;
    } else if (r.status == 422) {
      /* The outcome is the error code: rejected, delivery-count-exceeded, ... */
      if (code[0] && strcmp(code, "rejected") != 0)
        say("device %s did not execute the %s (%s): %s", id, what, code, msg);
      else
        say("device %s rejected the %s: %s", id, what, msg);
      rc = EXIT_FAIL;
    } else if (r.status == 409 && strcmp(code, "device_disabled") == 0) {
      say("device %s is disabled, so it takes no %ss (`warden device enable %s`)", id, what, id);
      rc = EXIT_FAIL;
    } else if (r.status == 429) {
      if (r.retry_after[0])
        say("the queue of device %s is full: %s; retry after %s s", id, msg, r.retry_after);
      else
        say("the queue of device %s is full: %s", id, msg);
      rc = EXIT_FAIL;
    } else if (r.status == 413) {
      say("the payload (%zu bytes) is too large: %s", len, msg);
      rc = EXIT_FAIL;
    } else {
      rc = refused(c, &r, id);
    }
  }
  resp_fini(&r);
  free(path);
  free(base);
  free(owned);
  return rc;
}

/* ------------------------------------------------------------------ tail */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

/* One Server-Sent Events stream (text/event-stream, per the HTML standard):
 * lines are fields; a blank line dispatches the event assembled so far. */
typedef struct {
  cli_t *c;
  long status;      /* 0 until the first body bytes */
  resp_t err;       /* the body of a refusal, when the status is not 200 */
  buf_t line;       /* the incomplete line */
  buf_t data;       /* the event's data lines, joined with '\n' */
  char event[64];
  bool out_failed;  /* stdout is gone (a closed pipe) */
} sse_t;

static void event_print(sse_t *s) {
  const char *data = s->data.p ? s->data.p : "";
  if (s->c->json) {
    printf("%s\n", data);
  } else {
    json_t *j = json_loads(data, 0, NULL);
    if (!json_is_object(j)) {
      put_escaped(data, stdout);
      putchar('\n');
    } else {
      const char *t = jstr(j, "enqueuedTime"), *dev = jstr(j, "deviceId"), *body = jstr(j, "body");
      const json_t *seq = json_object_get(j, "sequenceNumber");
      printf("%s %s #", t ? t : "-", dev ? dev : "-");
      if (json_is_integer(seq))
        printf("%lld", (long long)json_integer_value(seq));
      else if (json_is_string(seq))
        fputs(json_string_value(seq), stdout);
      else
        putchar('?');
      putchar(' ');
      if (body)
        put_escaped(body, stdout);
      else if ((body = jstr(j, "bodyBase64")))
        fputs(body, stdout);
      putchar('\n');
    }
    json_decref(j);
  }
  if (fflush(stdout) != 0 || ferror(stdout)) s->out_failed = true;
}

static void sse_line(sse_t *s, const char *line, size_t len) {
  if (len == 0) {
    if (s->data.len && (!s->event[0] || strcmp(s->event, "telemetry") == 0)) {
      s->data.p[--s->data.len] = '\0'; /* the last data line's '\n' */
      event_print(s);
    }
    s->data.len = 0;
    if (s->data.p) s->data.p[0] = '\0';
    s->event[0] = '\0';
    return;
  }
  if (line[0] == ':') return; /* a comment: keep-alive */
  const char *colon = memchr(line, ':', len);
  size_t flen = colon ? (size_t)(colon - line) : len;
  const char *value = colon ? colon + 1 : line + len;
  if (*value == ' ') value++;
  if (flen == 4 && strncmp(line, "data", 4) == 0) {
    if (buf_add(&s->data, value, strlen(value)) < 0 || buf_add(&s->data, "\n", 1) < 0) s->out_failed = true;
  } else if (flen == 5 && strncmp(line, "event", 5) == 0) {
    snprintf(s->event, sizeof s->event, "%s", value);
  }
  /* "id" and "retry" matter to a reconnecting browser; tail does not reconnect. */
}

static size_t on_stream(char *data, size_t size, size_t n, void *ctx) {
  sse_t *s = ctx;
  size_t len = size * n;
  if (g_stop || s->out_failed) return 0;
  if (!s->status) curl_easy_getinfo(s->c->curl, CURLINFO_RESPONSE_CODE, &s->status);
  if (s->status != 200) return buf_add(&s->err.body, data, len) < 0 ? 0 : len;
  for (size_t i = 0; i < len; i++) {
    if (data[i] != '\n') {
      if (buf_add(&s->line, &data[i], 1) < 0) return 0;
      continue;
    }
    size_t l = s->line.len;
    if (l && s->line.p[l - 1] == '\r') s->line.p[--l] = '\0';
    sse_line(s, l ? s->line.p : "", l);
    s->line.len = 0;
    if (s->line.p) s->line.p[0] = '\0';
    if (s->out_failed) return 0;
  }
  return len;
}

static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  (void)ctx, (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
  return g_stop ? 1 : 0;
}

static int tail_cmd(cli_t *c, const args_t *a) {
  const char *dev = opt_last(a, O_DEVICE);
  if (dev && !id_check(c, "device", dev)) return EXIT_USAGE;
  char *enc = dev ? wd_url_encode(dev) : NULL;
  char *path = fmt_alloc("/v1/telemetry/stream%s%s", dev ? "?device=" : "", enc ? enc : "");
  char *url = path ? fmt_alloc("%s%s", c->url, path) : NULL;
  free(enc);
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *hdrs = request_setup(c, "GET", "/v1/telemetry/stream", url, "text/event-stream", NULL, errbuf);
  if (!hdrs) {
    free(path);
    free(url);
    return EXIT_FAIL;
  }

  /* Ctrl-C ends a tail normally. The handler only sets a flag; libcurl polls
   * the progress callback at least once a second, which then aborts. */
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  sse_t s = {.c = c};
  CURL *h = c->curl;
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_stream);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &s.err);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
  if (isatty(STDERR_FILENO))
    fprintf(stderr, "warden: telemetry from %s%s%s (Ctrl-C ends)\n", c->url, dev ? " for device " : "",
            dev ? dev : "");
  CURLcode rc = curl_easy_perform(h);
  if (!s.status) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s.status);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
  curl_slist_free_all(hdrs);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  c->path = path;

  int ret = EXIT_OK;
  if (g_stop || s.out_failed) {
    ret = EXIT_OK; /* interrupted, or the reader of our output went away */
  } else if (rc != CURLE_OK && s.status != 200) {
    ret = transport_error(c, rc, errbuf, 0);
  } else if (s.status != 200) {
    s.err.status = s.status;
    if (buf_add(&s.err.body, "", 0) < 0) ret = EXIT_FAIL;
    else ret = refused(c, &s.err, dev);
  } else if (rc != CURLE_OK) {
    say("the telemetry stream from warden at %s broke: %s", c->url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    ret = EXIT_FAIL;
  } else {
    say("warden at %s ended the telemetry stream", c->url);
  }
  resp_fini(&s.err);
  buf_fini(&s.line);
  buf_fini(&s.data);
  free(path);
  free(url);
  return ret;
}

/* --------------------------------------------------------------- dispatch */

static const command_t commands[] = {
    {"device add", 1, BIT(O_GROUP) | BIT(O_PEER) | BIT(O_QUEUE_LIMIT) | BIT(O_THUMBPRINT) | BIT(O_NO_KEY),
     "warden device add ID [--group G]... [--peer P]... [--queue-limit N] [--thumbprint HEX] [--no-key]",
     "Registers device ID and prints its key, which is shown only this once.\n"
     "  --group G        make it a member of group G (repeat, or G1,G2)\n"
     "  --peer P         let it send commands to device or group P (repeat, or P1,P2)\n"
     "  --queue-limit N  hold at most N commands for it (default: the gateway's)\n"
     "  --thumbprint HEX also accept the client certificate with this SHA-256 thumbprint\n"
     "  --no-key         no key: the certificate is its only credential\n",
     device_add},
    {"device show", 1, 0, "warden device show ID", "Prints device ID's registration and state.\n", device_show},
    {"device list", 0, BIT(O_LIMIT) | BIT(O_CURSOR), "warden device list [--limit N [--cursor C]]",
     "Lists every device, or one page of N from cursor C.\n", device_list},
    {"device disable", 1, 0, "warden device disable ID",
     "Refuses device ID from now on and closes its connection.\n", device_change},
    {"device enable", 1, 0, "warden device enable ID", "Accepts device ID again.\n", device_change},
    {"device rotate", 1, 0, "warden device rotate ID",
     "Issues device ID a new key (shown once); the old key stops working at once.\n", device_change},
    {"device delete", 1, 0, "warden device delete ID",
     "Removes device ID and closes its connection.\n", device_change},
    {"send", 2, BIT(O_CONTENT_TYPE) | BIT(O_TTL) | BIT(O_WAIT) | BIT(O_NOTIFICATION),
     "warden send ID PAYLOAD [--content-type T] [--ttl S] [--wait S] [--notification]",
     "Queues a command (or notification) for device ID. PAYLOAD is the text itself,\n"
     "- for standard input, or @FILE for a file's contents.\n"
     "  --content-type T the payload's media type (default text/plain)\n"
     "  --ttl S          expire it unexecuted after S seconds (or 5m, 2h, 1d)\n"
     "  --wait S         wait up to S seconds for the device's response and print it;\n"
     "                   without one in time the command expires unexecuted\n"
     "  --notification   a one-way notification instead of a command\n",
     send_cmd},
    {"tail", 0, BIT(O_DEVICE), "warden tail [--device ID]",
     "Prints telemetry as it arrives, one line per message:\n"
     "<enqueued time> <device> #<sequence number> <payload, or base64 if binary>\n"
     "  --device ID      only device ID's telemetry\n",
     tail_cmd},
};

/* Splits argv[2..] into words and options. Returns 0, EXIT_FAIL (no memory)
 * or EXIT_USAGE with *bad the offending word and *why what is wrong with it. */
static int args_parse(int argc, char **argv, args_t *a, const char **bad, const char **why) {
  memset(a, 0, sizeof *a);
  a->pos = calloc((size_t)argc, sizeof *a->pos);
  a->opts = calloc((size_t)argc, sizeof *a->opts);
  if (!a->pos || !a->opts) return EXIT_FAIL;
  bool words_only = false;
  for (int i = 2; i < argc; i++) {
    const char *s = argv[i];
    if (words_only || s[0] != '-' || s[1] == '\0') { /* "-" is a word: standard input */
      a->pos[a->npos++] = s;
      continue;
    }
    if (strcmp(s, "--") == 0) {
      words_only = true;
      continue;
    }
    if (strcmp(s, "-h") == 0) {
      a->opts[a->nopts++].id = O_HELP;
      continue;
    }
    const char *name = s[1] == '-' ? s + 2 : NULL;
    size_t nlen = name ? strcspn(name, "=") : 0;
    int id = -1;
    for (int o = 0; name && o < O_COUNT; o++)
      if (strlen(opt_defs[o].name) == nlen && strncmp(opt_defs[o].name, name, nlen) == 0) id = o;
    if (id < 0) {
      *bad = s;
      *why = "unknown option";
      return EXIT_USAGE;
    }
    const char *val = NULL;
    if (name[nlen] == '=') {
      if (!opt_defs[id].value) {
        *bad = s;
        *why = "this option takes no value";
        return EXIT_USAGE;
      }
      val = name + nlen + 1;
    } else if (opt_defs[id].value) {
      if (i + 1 >= argc) {
        *bad = s;
        *why = "this option needs a value";
        return EXIT_USAGE;
      }
      val = argv[++i];
    }
    a->opts[a->nopts].id = (opt_t)id;
    a->opts[a->nopts++].val = val;
  }
  return 0;
}

/* --url, --cacert, --json, and where the token is to come from. The token
 * itself is read only when a request needs it, so that a usage error is
 * reported as one even where no token is at hand. Returns 0 or EXIT_FAIL. */
static int globals_load(cli_t *c, const args_t *a) {
  const char *url = opt_last(a, O_URL);
  if (!url) url = getenv("WARDEN_URL");
  if (!url || !*url) url = DEFAULT_URL;
  c->url = strstr(url, "://") ? strdup(url) : fmt_alloc("http://%s", url);
  if (!c->url) {
    say("out of memory");
    return EXIT_FAIL;
  }
  size_t n = strlen(c->url);
  while (n && c->url[n - 1] == '/') c->url[--n] = '\0';
  c->cacert = opt_last(a, O_CACERT);
  c->json = opt_has(a, O_JSON);
  c->token_opt = opt_last(a, O_TOKEN);
  c->data_dir = opt_last(a, O_DATA_DIR);
  return 0;
}

int wd_cli_is_command(const char *name) {
  return strcmp(name, "device") == 0 || strcmp(name, "send") == 0 || strcmp(name, "tail") == 0;
}

int wd_cli_main(int argc, char **argv) {
  args_t a;
  const char *bad = NULL, *why = NULL;
  int rc = args_parse(argc, argv, &a, &bad, &why);
  if (rc == EXIT_FAIL) {
    say("out of memory");
    args_fini(&a);
    return EXIT_FAIL;
  }
  bool device = strcmp(argv[1], "device") == 0;
  bool help = opt_has(&a, O_HELP);

  /* Which command: "device" takes its verb from the first word. */
  const command_t *cmd = NULL;
  char name[64];
  snprintf(name, sizeof name, "%s%s%s", argv[1], device && a.npos ? " " : "", device && a.npos ? a.pos[0] : "");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(commands[i].name, name) == 0) cmd = &commands[i];

  if (!cmd) { /* only "device" without a known verb gets here */
    if (a.npos)
      say("device: '%s' is not a device command: add, show, list, disable, enable, rotate or delete", a.pos[0]);
    else if (rc)
      say("device: %s: %s", bad, why);
    else if (!help)
      say("device: which one? add, show, list, disable, enable, rotate or delete");
    help = help && !rc && !a.npos;
    device_usage_print(help ? stdout : stderr);
    args_fini(&a);
    return help ? EXIT_OK : EXIT_USAGE;
  }
  if (rc) {
    say("%s: %s: %s", cmd->name, bad, why);
    usage(cmd, stderr);
    args_fini(&a);
    return EXIT_USAGE;
  }
  if (help) {
    usage(cmd, stdout);
    args_fini(&a);
    return EXIT_OK;
  }
  for (size_t i = 0; i < a.nopts; i++) {
    if (!((GLOBAL_OPTS | cmd->opts) & BIT(a.opts[i].id))) {
      say("%s: --%s does not apply to this command", cmd->name, opt_defs[a.opts[i].id].name);
      usage(cmd, stderr);
      args_fini(&a);
      return EXIT_USAGE;
    }
  }
  size_t skip = device ? 1 : 0, given = a.npos - skip;
  if (given != cmd->nargs) {
    if (given < cmd->nargs)
      say("%s: missing %s", cmd->name, given == 1 ? "PAYLOAD" : "ID");
    else
      say("%s: unexpected '%s'", cmd->name, a.pos[skip + cmd->nargs]);
    usage(cmd, stderr);
    args_fini(&a);
    return EXIT_USAGE;
  }

  cli_t c = {.cmd = cmd};
  rc = globals_load(&c, &a);
  if (rc == 0 && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    say("cannot initialise libcurl");
    rc = EXIT_FAIL;
  } else if (rc == 0) {
    c.curl = curl_easy_init();
    if (!c.curl) {
      say("cannot initialise libcurl");
      rc = EXIT_FAIL;
    } else {
      rc = cmd->run(&c, &a);
      if (rc == EXIT_USAGE) usage(cmd, stderr);
    }
    curl_easy_cleanup(c.curl);
    curl_global_cleanup();
  }
  if (fflush(stdout) != 0 && rc == 0) rc = EXIT_FAIL;
  if (c.token) explicit_bzero(c.token, strlen(c.token));
  free(c.token);
  free(c.token_from);
  free(c.url);
  args_fini(&a);
  return rc;
}

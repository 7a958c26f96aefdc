/* Configuration from an INI file (libinih). Every key is checked here, once,
 * and a bad one is reported as "[section] key: problem". */

#include "gateway/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"

typedef struct {
  wd_config_t *cfg;
  char *err;
  size_t errcap;
  bool failed;
} parse_t;

__attribute__((format(printf, 4, 5))) static int fail(parse_t *p, const char *section, const char *key,
                                                       const char *fmt, ...) {
  if (!p->failed) {
    char problem[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errcap, "[%s] %s: %s", section, key, problem);
    p->failed = true;
  }
  return 0;
}

static bool set_string(char **dst, const char *value) {
  char *copy = strdup(value);
  if (!copy) return false;
  free(*dst);
  *dst = copy;
  return true;
}

/* Whole numbers with an optional unit: sizes take K, M, G (powers of 1024),
 * durations s, m, h, d. */
static bool parse_number(const char *v, bool duration, uint64_t max, uint64_t *out) {
  if (!isdigit((unsigned char)v[0])) return false;
  errno = 0;
  char *end;
  unsigned long long n = strtoull(v, &end, 10);
  if (errno) return false;
  uint64_t mult = 1;
  if (*end) {
    char u = (char)tolower((unsigned char)*end);
    if (end[1] && !(tolower((unsigned char)end[1]) == 'b' && !end[2] && !duration)) return false;
    if (duration)
      mult = u == 's' ? 1 : u == 'm' ? 60 : u == 'h' ? 3600 : u == 'd' ? 86400 : 0;
    else
      mult = u == 'k' ? 1024ull : u == 'm' ? 1024ull * 1024 : u == 'g' ? 1024ull * 1024 * 1024 : 0;
    if (!mult) return false;
  }
  if (n > max / mult) return false;
  *out = n * mult;
  return true;
}

static bool parse_bool(const char *v, bool *out) {
  if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1")) {
    *out = true;
    return true;
  }
  if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0")) {
    *out = false;
    return true;
  }
  return false;
}

/* "host:port", port 0..65535; an empty value turns the listener off. */
static bool valid_listen(const char *v) {
  if (!v[0]) return true;
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v || !colon[1]) return false;
  for (const char *p = colon + 1; *p; p++)
    if (!isdigit((unsigned char)*p)) return false;
  return atol(colon + 1) <= 65535;
}

static wd_service_config_t *service_for(parse_t *p, const char *name) {
  wd_config_t *cfg = p->cfg;
  for (size_t i = 0; i < cfg->n_services; i++)
    if (strcmp(cfg->services[i].name, name) == 0) return &cfg->services[i];
  wd_service_config_t *s = realloc(cfg->services, (cfg->n_services + 1) * sizeof *s);
  if (!s) return NULL;
  cfg->services = s;
  s = &cfg->services[cfg->n_services++];
  memset(s, 0, sizeof *s);
  s->name = strdup(name);
  return s->name ? s : NULL;
}

typedef enum { T_STRING, T_LISTEN, T_BOOL, T_SIZE, T_SECONDS, T_COUNT } kind_t;

typedef struct {
  const char *section, *key;
  kind_t kind;
  size_t offset;
  uint64_t min, max;
} key_t_;

#define OFF(field) offsetof(wd_config_t, field)
static const key_t_ keys[] = {
    {"gateway", "hostname", T_STRING, OFF(hostname), 0, 0},
    {"gateway", "threads", T_COUNT, OFF(threads), 1, 64},
    {"gateway", "log_level", T_STRING, OFF(log_level), 0, 0},
    {"store", "path", T_STRING, OFF(store_path), 0, 0},
    {"store", "max_size", T_SIZE, OFF(store_max_size), 1u << 20, UINT64_C(1) << 44},
    {"amqp", "listen", T_LISTEN, OFF(amqp_listen), 0, 0},
    {"amqp", "tls_listen", T_LISTEN, OFF(amqp_tls_listen), 0, 0},
    {"amqp", "tls_cert", T_STRING, OFF(amqp_tls_cert), 0, 0},
    {"amqp", "tls_key", T_STRING, OFF(amqp_tls_key), 0, 0},
    {"amqp", "tls_ca", T_STRING, OFF(amqp_tls_ca), 0, 0},
    {"amqp", "tls_ciphers", T_STRING, OFF(amqp_tls_ciphers), 0, 0},
    {"amqp", "idle_timeout", T_SECONDS, OFF(idle_timeout_s), 1, 86400},
    {"amqp", "max_idle_timeout", T_SECONDS, OFF(max_idle_timeout_s), 1, 7 * 86400},
    {"amqp", "max_message_size", T_SIZE, OFF(max_message_size), 1024, 64u << 20},
    {"amqp", "max_connections", T_COUNT, OFF(max_connections), 1, 10000000},
    {"amqp", "max_connections_per_address", T_COUNT, OFF(max_connections_per_address), 1, 10000000},
    {"amqp", "sasl_timeout", T_SECONDS, OFF(sasl_timeout_s), 1, 300},
    {"amqp", "max_frame_size", T_SIZE, OFF(max_frame_size), 512, 16u << 20},
    {"amqp", "max_sessions", T_COUNT, OFF(max_sessions), 1, 65536},
    {"amqp", "max_links", T_COUNT, OFF(max_links), 1, 65536},
    {"amqp", "device_rate", T_COUNT, OFF(device_rate), 0, 10000000},
    {"auth", "failures_per_address", T_COUNT, OFF(auth_failures_per_address), 1, 1000000},
    {"auth", "block_time", T_SECONDS, OFF(auth_block_s), 1, 86400},
    {"http", "listen", T_LISTEN, OFF(http_listen), 0, 0},
    {"http", "tls_cert", T_STRING, OFF(http_tls_cert), 0, 0},
    {"http", "tls_key", T_STRING, OFF(http_tls_key), 0, 0},
    {"auth", "dev_mode", T_BOOL, OFF(dev_mode), 0, 0},
    {"auth", "allow_key_password", T_BOOL, OFF(allow_key_password), 0, 0},
    {"auth", "jwt_issuer", T_STRING, OFF(jwt_issuer), 0, 0},
    {"auth", "jwt_public_key", T_STRING, OFF(jwt_public_key), 0, 0},
    {"auth", "jwt_audience", T_STRING, OFF(jwt_audience), 0, 0},
    {"commands", "default_ttl", T_SECONDS, OFF(default_ttl_s), 1, 365 * 86400},
    {"commands", "max_ttl", T_SECONDS, OFF(max_ttl_s), 1, 365 * 86400},
    {"commands", "queue_limit", T_COUNT, OFF(queue_limit), 1, 100000},
    {"commands", "max_delivery_count", T_COUNT, OFF(max_delivery_count), 1, 1000},
    {"upstream", "url", T_STRING, OFF(upstream_url), 0, 0},
    {"upstream", "device_id", T_STRING, OFF(upstream_device_id), 0, 0},
    {"upstream", "key", T_STRING, OFF(upstream_key), 0, 0},
    {"upstream", "ca", T_STRING, OFF(upstream_ca), 0, 0},
};

static int on_service_key(parse_t *p, const char *section, const char *name, const char *key, const char *value) {
  if (!wd_id_valid(name)) return fail(p, section, key, "service name '%s' is not a valid id", name);
  wd_service_config_t *s = service_for(p, name);
  if (!s) return fail(p, section, key, "out of memory");
  if (strcmp(key, "secret") == 0) {
    if (strlen(value) < 16) return fail(p, section, key, "a secret needs at least 16 characters");
    if (!set_string(&s->secret, value)) return fail(p, section, key, "out of memory");
  } else if (strcmp(key, "thumbprint") == 0) {
    if (!wd_thumbprint_valid(value))
      return fail(p, section, key, "'%s' is not a SHA-256 thumbprint (64 lowercase hex digits)", value);
    if (!set_string(&s->thumbprint, value)) return fail(p, section, key, "out of memory");
  } else if (strcmp(key, "scopes") == 0) {
    const char *bad = NULL;
    if (!wd_scopes_parse(value, &s->scopes, &bad)) return fail(p, section, key, "unknown scope in '%s'", bad);
  } else {
    return fail(p, section, key, "unknown key (expected secret, thumbprint or scopes)");
  }
  return 1;
}

static int on_key(void *user, const char *section, const char *key, const char *value) {
  parse_t *p = user;
  if (p->failed) return 0;
  if (strncmp(section, "service ", 8) == 0) return on_service_key(p, section, section + 8, key, value);
  bool section_known = false;
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    const key_t_ *k = &keys[i];
    if (strcmp(k->section, section) != 0) continue;
    section_known = true;
    if (strcmp(k->key, key) != 0) continue;
    void *field = (char *)p->cfg + k->offset;
    uint64_t n;
    switch (k->kind) {
      case T_LISTEN:
        if (!valid_listen(value)) return fail(p, section, key, "'%s' is not host:port", value);
        __attribute__((fallthrough));
      case T_STRING:
        if (!set_string(field, value)) return fail(p, section, key, "out of memory");
        return 1;
      case T_BOOL:
        if (!parse_bool(value, field)) return fail(p, section, key, "'%s' is not true or false", value);
        return 1;
      case T_SIZE:
      case T_SECONDS:
      case T_COUNT:
        if (!parse_number(value, k->kind == T_SECONDS, k->kind == T_SIZE && k->max > UINT32_MAX ? UINT64_MAX : UINT32_MAX, &n))
          return fail(p, section, key, "'%s' is not %s", value,
                      k->kind == T_SIZE      ? "a size (a number, optionally with K, M or G)"
                      : k->kind == T_SECONDS ? "a duration (seconds, or a number with s, m, h or d)"
                                             : "a whole number");
        if (n < k->min || n > k->max)
          return fail(p, section, key, "%s is out of range (%llu to %llu)", value, (unsigned long long)k->min,
                      (unsigned long long)k->max);
        if (k->offset == OFF(store_max_size))
          *(uint64_t *)field = n;
        else
          *(uint32_t *)field = (uint32_t)n;
        return 1;
    }
  }
  if (!section_known) return fail(p, section, key, "unknown section [%s]", section);
  return fail(p, section, key, "unknown key");
}

static int set_defaults(wd_config_t *cfg) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->threads = cpus > 0 && cpus < 64 ? (unsigned)cpus : 2;
  cfg->store_max_size = UINT64_C(1) << 30;
  cfg->idle_timeout_s = 120;
  cfg->max_idle_timeout_s = 1800;
  cfg->max_message_size = 256 * 1024;
  cfg->max_connections = 100000;
  cfg->max_connections_per_address = 100000; /* fleets behind one NAT share an address */
  cfg->sasl_timeout_s = 10;
  cfg->max_frame_size = 64 * 1024;
  cfg->max_sessions = 16;
  cfg->max_links = 64;
  cfg->auth_failures_per_address = 20;
  cfg->auth_block_s = 60;
  cfg->device_rate = 5000;
  cfg->default_ttl_s = 3600;
  cfg->max_ttl_s = 7 * 86400;
  cfg->queue_limit = 50;
  cfg->max_delivery_count = 10;
  return set_string(&cfg->hostname, "localhost") && set_string(&cfg->log_level, "info") &&
                 set_string(&cfg->store_path, "./warden-data") && set_string(&cfg->amqp_listen, "127.0.0.1:5672") &&
                 set_string(&cfg->amqp_tls_listen, "127.0.0.1:5671") && set_string(&cfg->http_listen, "127.0.0.1:8080")
             ? WD_OK
             : WD_ERR_NOMEM;
}

/* Checks that need more than one key. */
static int check(wd_config_t *cfg, char *err, size_t errcap) {
  wd_log_level_t level;
  if (!wd_log_parse_level(cfg->log_level, &level)) {
    snprintf(err, errcap, "[gateway] log_level: '%s' is not debug, info, warning or error", cfg->log_level);
    return WD_ERR_INVALID;
  }
  if (!cfg->hostname[0]) {
    snprintf(err, errcap, "[gateway] hostname: must not be empty");
    return WD_ERR_INVALID;
  }
  if (!cfg->store_path[0]) {
    snprintf(err, errcap, "[store] path: must not be empty");
    return WD_ERR_INVALID;
  }
  if (cfg->max_idle_timeout_s < cfg->idle_timeout_s) {
    snprintf(err, errcap, "[amqp] max_idle_timeout: must not be shorter than idle_timeout (%u s)", cfg->idle_timeout_s);
    return WD_ERR_INVALID;
  }
  if (cfg->default_ttl_s > cfg->max_ttl_s) {
    snprintf(err, errcap, "[commands] default_ttl: must not exceed max_ttl (%u s)", cfg->max_ttl_s);
    return WD_ERR_INVALID;
  }
  if (cfg->amqp_tls_listen && cfg->amqp_tls_listen[0] && !cfg->dev_mode &&
      !(cfg->amqp_tls_cert && cfg->amqp_tls_key)) {
    snprintf(err, errcap,
             "[amqp] tls_cert: tls_cert and tls_key are required when tls_listen is set (or turn on [auth] "
             "dev_mode to use a generated development certificate)");
    return WD_ERR_INVALID;
  }
  if (!cfg->amqp_tls_cert != !cfg->amqp_tls_key) {
    snprintf(err, errcap, "[amqp] %s: tls_cert and tls_key go together", cfg->amqp_tls_cert ? "tls_key" : "tls_cert");
    return WD_ERR_INVALID;
  }
  if (!cfg->jwt_issuer != !cfg->jwt_public_key) {
    snprintf(err, errcap, "[auth] %s: jwt_issuer and jwt_public_key go together", cfg->jwt_issuer ? "jwt_public_key" : "jwt_issuer");
    return WD_ERR_INVALID;
  }
  if (!cfg->http_tls_cert != !cfg->http_tls_key) {
    snprintf(err, errcap, "[http] %s: tls_cert and tls_key go together", cfg->http_tls_cert ? "tls_key" : "tls_cert");
    return WD_ERR_INVALID;
  }
  for (size_t i = 0; i < cfg->n_services; i++) {
    wd_service_config_t *s = &cfg->services[i];
    if (!s->secret && !s->thumbprint) {
      snprintf(err, errcap, "[service %s] secret: a service needs a secret or a thumbprint", s->name);
      return WD_ERR_INVALID;
    }
  }
  return WD_OK;
}

int wd_config_load(const char *path, wd_config_t **out, char *err, size_t errcap) {
  wd_config_t *cfg = calloc(1, sizeof *cfg);
  if (!cfg || set_defaults(cfg) < 0) {
    wd_config_free(cfg);
    snprintf(err, errcap, "out of memory");
    return WD_ERR_NOMEM;
  }
  if (!path) {
    cfg->dev_mode = true; /* the embedded defaults: loopback only, for development */
  } else {
    parse_t p = {.cfg = cfg, .err = err, .errcap = errcap};
    int line = ini_parse(path, on_key, &p);
    if (line < 0) {
      snprintf(err, errcap, "cannot read config file %s: %s", path, strerror(errno));
      wd_config_free(cfg);
      return WD_ERR_IO;
    }
    if (p.failed || line > 0) {
      if (!p.failed) snprintf(err, errcap, "%s line %d: not a [section] or key = value line", path, line);
      wd_config_free(cfg);
      return WD_ERR_INVALID;
    }
  }
  int rc = check(cfg, err, errcap);
  if (rc < 0) {
    wd_config_free(cfg);
    return rc;
  }
  *out = cfg;
  return WD_OK;
}

void wd_config_free(wd_config_t *cfg) {
  if (!cfg) return;
  char **strings[] = {&cfg->hostname,        &cfg->log_level,       &cfg->store_path,    &cfg->amqp_listen,
                      &cfg->amqp_tls_listen, &cfg->amqp_tls_cert,   &cfg->amqp_tls_key,  &cfg->amqp_tls_ca, &cfg->amqp_tls_ciphers,
                      &cfg->http_listen,     &cfg->http_tls_cert,   &cfg->http_tls_key,  &cfg->jwt_issuer,
                      &cfg->jwt_public_key,  &cfg->jwt_audience, &cfg->upstream_url,    &cfg->upstream_device_id, &cfg->upstream_key,
                      &cfg->upstream_ca};
  for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) free(*strings[i]);
  for (size_t i = 0; i < cfg->n_services; i++) {
    free(cfg->services[i].name);
    if (cfg->services[i].secret) explicit_bzero(cfg->services[i].secret, strlen(cfg->services[i].secret));
    free(cfg->services[i].secret);
    free(cfg->services[i].thumbprint);
  }
  free(cfg->services);
  free(cfg);
}

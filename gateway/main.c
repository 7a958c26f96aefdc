/* warden: the process. Wires config, store, AMQP and REST together, owns the
 * proactor threads and the shutdown order. */

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/metrics.h"
#include "gateway/base/scopes.h"
#include "gateway/base/util.h"
#include "gateway/cli.h"
#include "gateway/config.h"
#include "gateway/crypto_memory.h"
#include "gateway/devcert.h"
#include "http/http.h"
#include "protocol/amqp.h"
#include "store/store.h"

#define ADMIN_SERVICE "admin"
#define DRAIN_MS 5000

static void usage(FILE *f) {
  fprintf(f,
          "usage: warden serve [--config FILE]\n"
          "       warden device add|show|list|disable|enable|rotate|delete ...\n"
          "       warden send DEVICE PAYLOAD [--ttl SECONDS] [--wait SECONDS]\n"
          "       warden tail [--device DEVICE]\n"
          "       warden --version\n"
          "\n"
          "With no config file warden runs on its embedded development defaults: data in ./warden-data,\n"
          "AMQP on 127.0.0.1:5672 (plain) and 127.0.0.1:5671 (TLS), REST on 127.0.0.1:8080, and an admin\n"
          "token in ./warden-data/admin.token.\n");
}

/* Reads the admin secret from <dir>/admin.token, creating it on first start. */
static char *admin_token(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/admin.token", dir);
  size_t len;
  char *token = wd_read_file(path, &len);
  if (token) {
    while (len > 0 && (token[len - 1] == '\n' || token[len - 1] == '\r')) token[--len] = '\0';
    if (len >= 16) return token;
    free(token);
  }
  uint8_t raw[32];
  char *fresh = malloc(wd_base64_encoded_len(sizeof raw));
  if (!fresh || wd_random_bytes(raw, sizeof raw) < 0) {
    free(fresh);
    return NULL;
  }
  wd_base64_encode(raw, sizeof raw, fresh);
  for (char *p = fresh; *p; p++) /* URL- and shell-safe */
    if (*p == '+') *p = '-'; else if (*p == '/') *p = '_'; else if (*p == '=') *p = '\0';
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || write(fd, fresh, strlen(fresh)) != (ssize_t)strlen(fresh) || write(fd, "\n", 1) != 1) {
    wd_log("gateway", WD_LOG_ERROR, "cannot write %s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    free(fresh);
    return NULL;
  }
  close(fd);
  wd_log("gateway", WD_LOG_INFO, "wrote a new admin token to %s", path);
  return fresh;
}

static int http_authenticate(void *ctx, const char *token, unsigned *scopes) {
  return wd_amqp_authenticate_service(ctx, token, scopes);
}

static void http_revoke(void *ctx, const char *device_id, const char *reason) {
  wd_amqp_revoke_device(ctx, device_id, reason);
}

static int http_send(void *ctx, const wd_send_t *req, wd_send_fn done, void *arg) {
  return wd_amqp_send(ctx, req, done, arg);
}

static bool http_is_service(void *ctx, const char *name) { return wd_amqp_is_service(ctx, name); }

static bool http_connected(void *ctx, const char *device_id, int64_t *last_seen_ms) {
  return wd_amqp_device_connected(ctx, device_id, last_seen_ms);
}

/* Reads the JWT issuer's public key and checks it is one warden verifies with
 * (RSA for RS256, P-256 for ES256), so a wrong key fails at start, not per call. */
static char *jwt_public_key(const char *path) {
  size_t len;
  char *pem = wd_read_file(path, &len);
  if (!pem) {
    fprintf(stderr, "warden: bad configuration: [auth] jwt_public_key: cannot read %s: %s\n", path, strerror(errno));
    return NULL;
  }
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
  bool ok = key && (EVP_PKEY_is_a(key, "RSA") ||
                    (EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 256));
  EVP_PKEY_free(key);
  BIO_free(bio);
  if (!ok) {
    fprintf(stderr, "warden: bad configuration: [auth] jwt_public_key: %s is not a PEM RSA or P-256 public key\n", path);
    free(pem);
    return NULL;
  }
  return pem;
}

/* glibc keeps what closed connections freed inside its arenas, where it still
 * counts as resident: after 3 000 idle TLS connections closed, warden stayed at
 * 210 MB without a trim and fell to 39 MB with one. A trim holds each arena's
 * lock while it walks the free chunks (25 ms for that heap), so it waits until
 * connections stop coming and going, or for TRIM_EVERY_MS while they never do. */
#define TICK_MS 500
#define TRIM_EVERY_MS 10000

typedef struct {
  uint64_t churn_seen;    /* connections accepted + closed at the last tick */
  bool pending;           /* churn since the last trim */
  int64_t last_trim_ms;
} trim_state_t;

static void trim_now(trim_state_t *t, int64_t now) {
  t->pending = false;
  t->last_trim_ms = now;
  int64_t t0 = wd_mono_us();
  malloc_trim(0);
  wd_log("gateway", WD_LOG_DEBUG, "returned free memory to the system in %lld us",
         (long long)(wd_mono_us() - t0));
}

static void trim_after_churn(trim_state_t *t) {
  uint64_t churn = atomic_load(&wd_metrics.connections_accepted) + atomic_load(&wd_metrics.connections_closed);
  bool moving = churn != t->churn_seen;
  int64_t now = wd_mono_ms();
  t->churn_seen = churn;
  t->pending |= moving;
  if (t->pending && !(moving && now - t->last_trim_ms < TRIM_EVERY_MS)) trim_now(t, now);
}

/* Descriptors warden needs besides its AMQP connections: store, listeners,
 * REST clients, epoll and eventfds. */
#define FD_RESERVE 64

/* Every connection holds a descriptor: take all the hard limit allows, and say
 * so when even that falls short of max_connections. */
static void raise_fd_limit(const wd_config_t *cfg) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  }
  rlim_t want = (rlim_t)cfg->max_connections + FD_RESERVE;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    wd_log("gateway", WD_LOG_WARNING,
           "[amqp] max_connections is %u, but this process may open only %llu descriptors (RLIMIT_NOFILE): "
           "past about %llu connections, new ones wait until others close; raise the limit (systemd: "
           "LimitNOFILE=%llu)",
           (unsigned)cfg->max_connections, (unsigned long long)rl.rlim_cur,
           (unsigned long long)(rl.rlim_cur > FD_RESERVE ? rl.rlim_cur - FD_RESERVE : 0),
           (unsigned long long)want);
}

static void *proactor_thread(void *arg) {
  wd_amqp_run(arg);
  return NULL;
}

static int serve(const char *config_path) {
  char err[512];
  wd_config_t *cfg = NULL;
  if (wd_config_load(config_path, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "warden: bad configuration: %s\n", err);
    return 2;
  }
  wd_log_parse_level(cfg->log_level, &wd_log_threshold);
  raise_fd_limit(cfg);
  if (cfg->upstream_url)
    wd_log("gateway", WD_LOG_WARNING, "[upstream] is configured but federation is not implemented yet; ignored");

  /* Signals are taken by sigwait in this thread only; every thread created below inherits the mask. */
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, NULL);
  signal(SIGPIPE, SIG_IGN);

  int exit_code = 1;
  wd_store_t *store = NULL;
  wd_amqp_t *amqp = NULL;
  wd_http_t *http = NULL;
  pthread_t *threads = NULL;
  unsigned n_threads = 0;
  char *token = NULL, *dev_cert = NULL, *dev_key = NULL, *jwt_key = NULL;
  wd_amqp_service_t *services = NULL;

  int rc = wd_store_open(cfg->store_path, cfg->store_max_size, &store);
  if (rc < 0) {
    fprintf(stderr, "warden: cannot open the store in %s: %s\n", cfg->store_path, wd_err_str(rc));
    goto out;
  }
  if (!(token = admin_token(cfg->store_path))) goto out;

  const char *tls_cert = cfg->amqp_tls_cert, *tls_key = cfg->amqp_tls_key;
  if (cfg->amqp_tls_listen && cfg->amqp_tls_listen[0] && !tls_cert) {
    if (wd_devcert_ensure(cfg->store_path, cfg->hostname, &dev_cert, &dev_key) < 0) goto out;
    tls_cert = dev_cert;
    tls_key = dev_key;
  }

  services = calloc(cfg->n_services + 1, sizeof *services);
  if (!services) goto out;
  size_t n_services = 0;
  bool admin_taken = false;
  for (size_t i = 0; i < cfg->n_services; i++) {
    services[n_services++] = (wd_amqp_service_t){cfg->services[i].name, cfg->services[i].secret,
                                                 cfg->services[i].thumbprint, cfg->services[i].scopes};
    admin_taken |= strcmp(cfg->services[i].name, ADMIN_SERVICE) == 0;
  }
  if (!admin_taken) services[n_services++] = (wd_amqp_service_t){ADMIN_SERVICE, token, NULL, WD_SCOPE_ALL};

  wd_amqp_config_t acfg = {
      .hostname = cfg->hostname,
      .listen = cfg->amqp_listen,
      .tls_listen = cfg->amqp_tls_listen,
      .tls_cert = tls_cert,
      .tls_key = tls_key,
      .tls_ca = cfg->amqp_tls_ca,
      .tls_ciphers = cfg->amqp_tls_ciphers,
      .idle_timeout_ms = cfg->idle_timeout_s * 1000,
      .max_idle_timeout_ms = cfg->max_idle_timeout_s * 1000,
      .max_message_size = cfg->max_message_size,
      .max_connections = cfg->max_connections,
      .max_connections_per_address = cfg->max_connections_per_address,
      .sasl_timeout_ms = cfg->sasl_timeout_s * 1000,
      .max_frame_size = cfg->max_frame_size,
      .max_sessions = cfg->max_sessions,
      .max_links = cfg->max_links,
      .auth_failures_per_address = cfg->auth_failures_per_address,
      .auth_block_ms = cfg->auth_block_s * 1000,
      .device_rate = cfg->device_rate,
      .default_ttl_ms = (uint64_t)cfg->default_ttl_s * 1000,
      .max_ttl_ms = (uint64_t)cfg->max_ttl_s * 1000,
      .queue_limit = cfg->queue_limit,
      .max_delivery_count = cfg->max_delivery_count,
      .dev_mode = cfg->dev_mode,
      .allow_key_password = cfg->allow_key_password,
      .services = services,
      .n_services = n_services,
  };
  if ((rc = wd_amqp_new(&acfg, store, &amqp)) < 0) {
    fprintf(stderr, "warden: cannot start AMQP: %s\n", wd_err_str(rc));
    goto out;
  }
  threads = calloc(cfg->threads, sizeof *threads);
  if (!threads) goto out;
  for (; n_threads < cfg->threads; n_threads++)
    if (pthread_create(&threads[n_threads], NULL, proactor_thread, amqp) != 0) break;
  if (wd_amqp_wait_listening(amqp) < 0) {
    fprintf(stderr, "warden: cannot listen for AMQP (see the log above)\n");
    goto out;
  }

  if (cfg->jwt_issuer && !(jwt_key = jwt_public_key(cfg->jwt_public_key))) goto out;
  if (cfg->http_listen && cfg->http_listen[0]) {
    wd_http_config_t hcfg = {.jwt_issuer = cfg->jwt_issuer,
                             .jwt_audience = cfg->jwt_audience,
                             .jwt_public_key_pem = jwt_key,.listen = cfg->http_listen,
                             .tls_cert = cfg->http_tls_cert,
                             .tls_key = cfg->http_tls_key,
                             .default_queue_limit = cfg->queue_limit,
                             .max_payload = cfg->max_message_size};
    wd_http_ops_t ops = {.ctx = amqp, .authenticate = http_authenticate, .revoke_device = http_revoke,
                         .is_service = http_is_service,
                         .send = http_send,
                         .telemetry_decode = wd_amqp_telemetry_decode,
                         .device_connected = http_connected};
    if ((rc = wd_http_start(&hcfg, store, &ops, &http)) < 0) {
      fprintf(stderr, "warden: cannot start REST on %s: %s\n", cfg->http_listen, wd_err_str(rc));
      goto out;
    }
  }
  wd_log("gateway", WD_LOG_INFO, "warden ready (%u threads, store %s, dev_mode %s)", n_threads, cfg->store_path,
         cfg->dev_mode ? "on" : "off");

  int sig;
  trim_state_t trim = {.last_trim_ms = wd_mono_ms()};
  const struct timespec tick = {0, TICK_MS * 1000000L};
  while ((sig = sigtimedwait(&signals, NULL, &tick)) < 0) trim_after_churn(&trim);
  wd_log("gateway", WD_LOG_INFO, "%s: draining and stopping", strsignal(sig));
  exit_code = 0;

out:
  /* Shutdown order: REST waits, REST (no new work), AMQP (drain, close, join), then the store. */
  if (amqp) wd_amqp_end_waits(amqp);
  wd_http_stop(http);
  if (amqp) {
    wd_amqp_shutdown(amqp, exit_code == 0 ? DRAIN_MS : 0);
    for (unsigned i = 0; i < n_threads; i++) pthread_join(threads[i], NULL);
    /* Store callbacks already queued still reach the AMQP side: let them run first. */
    wd_store_quiesce(store);
    wd_amqp_free(amqp);
  }
  wd_store_close(store);
  free(threads);
  free(services);
  free(dev_cert);
  free(dev_key);
  free(jwt_key);
  if (token) explicit_bzero(token, strlen(token));
  free(token);
  wd_config_free(cfg);
  if (exit_code == 0) wd_log("gateway", WD_LOG_INFO, "stopped");
  return exit_code;
}

int main(int argc, char **argv) {
  wd_crypto_memory_install();
  if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0)) {
    printf("warden 0.1.0\n");
    return 0;
  }
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc >= 2 && wd_cli_is_command(argv[1])) return wd_cli_main(argc, argv);
  if (argc < 2 || strcmp(argv[1], "serve") != 0) {
    usage(stderr);
    return 2;
  }
  const char *config = NULL;
  for (int i = 2; i < argc; i++) {
    if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc) {
      config = argv[++i];
    } else if (strncmp(argv[i], "--config=", 9) == 0) {
      config = argv[i] + 9;
    } else {
      fprintf(stderr, "warden: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  return serve(config);
}

/* libFuzzer target: the configuration file parser (gateway/config.c, on
 * libinih). Input: the file's bytes, written to a private temporary file and
 * loaded with wd_config_load. On success a few promises of the parser are
 * checked: every required string is there and the timeouts are ordered. */

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256], path[300];

static void cleanup(void) {
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  wd_log_threshold = WD_LOG_NONE;
  if (fz_tempdir("config", dir, sizeof dir) < 0) abort();
  snprintf(path, sizeof path, "%s/warden.ini", dir);
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) abort();
  for (size_t off = 0; off < size;) {
    ssize_t n = write(fd, data + off, size - off);
    if (n <= 0) abort();
    off += (size_t)n;
  }
  close(fd);

  wd_config_t *cfg = NULL;
  char err[512];
  err[0] = '\0';
  int rc = wd_config_load(path, &cfg, err, sizeof err);
  if (rc == WD_OK) {
    if (!cfg || !cfg->hostname || !cfg->hostname[0] || !cfg->store_path || !cfg->log_level ||
        cfg->max_idle_timeout_s < cfg->idle_timeout_s || cfg->default_ttl_s > cfg->max_ttl_s) {
      fprintf(stderr, "wd_config_load accepted a configuration it promises to refuse\n");
      abort();
    }
    for (size_t i = 0; i < cfg->n_services; i++)
      if (!cfg->services[i].name || (!cfg->services[i].secret && !cfg->services[i].thumbprint)) {
        fprintf(stderr, "wd_config_load accepted a service without credentials\n");
        abort();
      }
    wd_config_free(cfg);
  } else if (!err[0] || !memchr(err, '\0', sizeof err)) {
    fprintf(stderr, "wd_config_load failed (%d) without saying why\n", rc);
    abort();
  }
  return 0;
}

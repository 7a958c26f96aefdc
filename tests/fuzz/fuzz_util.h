#ifndef WD_FUZZ_UTIL_H
#define WD_FUZZ_UTIL_H

/* Small helpers shared by the fuzz targets: CHECK for the promises a harness
 * verifies, a private temporary directory (in memory when /dev/shm is there,
 * so store commits cost no disk flush) and its removal at exit. */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A promise of the header under test that the input broke: say which, and
 * abort so that libFuzzer keeps the input. */
#define CHECK(cond, ...)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      fprintf(stderr, "broken promise: " __VA_ARGS__); \
      fputc('\n', stderr);                             \
      abort();                                         \
    }                                                  \
  } while (0)

/* Creates "<tmp>/warden-fuzz-<what>-XXXXXX" into dir. Returns 0 or -1. */
static inline int fz_tempdir(const char *what, char *dir, size_t cap) {
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
  if (!base || !base[0]) base = "/tmp";
  int n = snprintf(dir, cap, "%s/warden-fuzz-%s-XXXXXX", base, what);
  if (n < 0 || (size_t)n >= cap) return -1;
  return mkdtemp(dir) ? 0 : -1;
}

/* Removes a directory holding only files. */
static inline void fz_rmdir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  rmdir(dir);
}

/* A NUL-terminated copy of fuzz bytes (owned; free). */
static inline char *fz_strndup(const uint8_t *data, size_t len) {
  char *s = malloc(len + 1);
  if (!s) abort();
  if (len) memcpy(s, data, len);
  s[len] = '\0';
  return s;
}

#endif

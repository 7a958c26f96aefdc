#include "gateway/base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

wd_log_level_t wd_log_threshold = WD_LOG_INFO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

bool wd_log_parse_level(const char *s, wd_log_level_t *out) {
  static const char *const names[] = {"debug", "info", "warning", "error"};
  for (int i = 0; i < 4; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (wd_log_level_t)i;
      return true;
    }
  }
  return false;
}

void wd_log_write(const char *module, wd_log_level_t level, const char *fmt, ...) {
  /* One fprintf per line: stdio locks the stream, so lines from threads never interleave. */
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: %s\n", tm.tm_year + 1900, tm.tm_mon + 1,
          tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], module,
          msg);
}

#ifndef WD_BASE_LOG_H
#define WD_BASE_LOG_H

#include <stdbool.h>

typedef enum { WD_LOG_DEBUG = 0, WD_LOG_INFO, WD_LOG_WARNING, WD_LOG_ERROR, WD_LOG_NONE } wd_log_level_t;

extern wd_log_level_t wd_log_threshold;

/* Parses "debug", "info", "warning", "error"; returns false on anything else. */
bool wd_log_parse_level(const char *s, wd_log_level_t *out);

void wd_log_write(const char *module, wd_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Arguments are not evaluated when the level is disabled. Thread-safe. */
#define wd_log(module, level, ...)                                  \
  do {                                                              \
    if ((level) >= wd_log_threshold) wd_log_write((module), (level), __VA_ARGS__); \
  } while (0)

#endif

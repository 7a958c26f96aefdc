#ifndef WD_BASE_SCOPES_H
#define WD_BASE_SCOPES_H

#include <stdbool.h>

/* Service scopes, as named in CONTRACT.md. */
enum {
  WD_SCOPE_TELEMETRY_READ = 1u << 0,
  WD_SCOPE_COMMANDS_SEND = 1u << 1,
  WD_SCOPE_NOTIFICATIONS_SEND = 1u << 2,
  WD_SCOPE_FEEDBACK_READ = 1u << 3,
  WD_SCOPE_INQUIRIES_READ = 1u << 4,
  WD_SCOPE_REGISTRY_READ = 1u << 5,
  WD_SCOPE_REGISTRY_WRITE = 1u << 6,
  WD_SCOPE_ALL = (1u << 7) - 1,
};

/* Parses space-separated scope names into a mask. On an unknown name returns false
 * and points *bad at it (borrowed from s). */
bool wd_scopes_parse(const char *s, unsigned *mask, const char **bad);

/* The name of one scope bit, e.g. "registry:read"; "" for anything else. */
const char *wd_scope_name(unsigned bit);

#endif

#include "gateway/base/scopes.h"

#include <string.h>

static const struct {
  const char *name;
  unsigned bit;
} scope_names[] = {
    {"telemetry:read", WD_SCOPE_TELEMETRY_READ},   {"commands:send", WD_SCOPE_COMMANDS_SEND},
    {"notifications:send", WD_SCOPE_NOTIFICATIONS_SEND}, {"feedback:read", WD_SCOPE_FEEDBACK_READ},
    {"inquiries:read", WD_SCOPE_INQUIRIES_READ},   {"registry:read", WD_SCOPE_REGISTRY_READ},
    {"registry:write", WD_SCOPE_REGISTRY_WRITE},
};

bool wd_scopes_parse(const char *s, unsigned *mask, const char **bad) {
  unsigned m = 0;
  while (*s) {
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) break;
    size_t n = strcspn(s, " \t");
    bool known = false;
    for (size_t i = 0; i < sizeof scope_names / sizeof scope_names[0]; i++) {
      if (strlen(scope_names[i].name) == n && memcmp(scope_names[i].name, s, n) == 0) {
        m |= scope_names[i].bit;
        known = true;
      }
    }
    if (!known) {
      if (bad) *bad = s;
      return false;
    }
    s += n;
  }
  *mask = m;
  return true;
}

const char *wd_scope_name(unsigned bit) {
  for (size_t i = 0; i < sizeof scope_names / sizeof scope_names[0]; i++)
    if (scope_names[i].bit == bit) return scope_names[i].name;
  return "";
}

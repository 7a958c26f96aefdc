#include "protocol/address.h"

#include <stdio.h>
#include <string.h>

#include "gateway/base/err.h"
#include "gateway/base/scopes.h"

/* Splits "a/b/c" shaped addresses: if address is "<head>/<param>/<tail>" (tail
 * may be NULL for "<head>/<param>") copies param out. */
static bool match(const char *address, const char *head, const char *tail, char param[WD_ID_MAX + 1]) {
  size_t hlen = strlen(head);
  if (strncmp(address, head, hlen) != 0 || address[hlen] != '/') return false;
  const char *p = address + hlen + 1;
  size_t plen = tail ? strcspn(p, "/") : strlen(p);
  if (plen == 0 || plen > WD_ID_MAX) return false;
  if (tail) {
    if (p[plen] != '/' || strcmp(p + plen + 1, tail) != 0) return false;
  }
  memcpy(param, p, plen);
  param[plen] = '\0';
  return wd_id_valid(param) || (strcmp(head, "telemetry") == 0 && param[0] == '$' && wd_id_valid(param + 1));
}

static int deny(const char **why, const char *text) {
  *why = text;
  return WD_ERR_DENIED;
}

static int device_rules(const wd_principal_t *who, wd_link_dir_t dir, const char *a, wd_address_t *out,
                        const char **why) {
  char p[WD_ID_MAX + 1];
  if (dir == WD_LINK_INBOUND) {
    if (strcmp(a, "telemetry") == 0 || (match(a, "devices", "telemetry", p) && strcmp(p, who->id) == 0)) {
      out->kind = WD_ADDR_TELEMETRY;
      return WD_OK;
    }
    if (strcmp(a, "inquiries") == 0) {
      out->kind = WD_ADDR_INQUIRIES;
      return WD_OK;
    }
    if (strcmp(a, "responses") == 0) {
      out->kind = WD_ADDR_RESPONSES;
      return WD_OK;
    }
    if (match(a, "devices", "commands", p) && strcmp(p, who->id) != 0) {
      out->kind = WD_ADDR_DEVICE_COMMANDS;
      memcpy(out->param, p, sizeof p);
      out->needs_peer_check = true;
      return WD_OK;
    }
    return deny(why, "a device may send only to telemetry, inquiries, responses or a permitted peer");
  }
  if (strcmp(a, "commands") == 0 || (match(a, "devices", "commands", p) && strcmp(p, who->id) == 0)) {
    out->kind = WD_ADDR_EGRESS;
    return WD_OK;
  }
  return deny(why, "a device may receive only from its own commands");
}

static int service_rules(const wd_principal_t *who, wd_link_dir_t dir, const char *a, wd_address_t *out,
                         const char **why) {
  char p[WD_ID_MAX + 1];
  unsigned need = 0;
  bool known = true;
  if (dir == WD_LINK_OUTBOUND) {
    if (strcmp(a, "telemetry") == 0 || match(a, "telemetry", NULL, p)) {
      out->kind = WD_ADDR_TELEMETRY;
      snprintf(out->param, sizeof out->param, "%s", strcmp(a, "telemetry") == 0 ? WD_DEFAULT_GROUP : p);
      need = WD_SCOPE_TELEMETRY_READ;
    } else if (strcmp(a, "inquiries") == 0) {
      out->kind = WD_ADDR_INQUIRIES;
      need = WD_SCOPE_INQUIRIES_READ;
    } else if (strcmp(a, "feedback") == 0) {
      out->kind = WD_ADDR_FEEDBACK;
      need = WD_SCOPE_FEEDBACK_READ;
    } else if (strcmp(a, "deadletter") == 0) {
      out->kind = WD_ADDR_DEADLETTER;
      need = WD_SCOPE_FEEDBACK_READ;
    } else if (strcmp(a, "responses") == 0 || match(a, "responses", NULL, p)) {
      out->kind = WD_ADDR_RESPONSES;
      if (strcmp(a, "responses") != 0) memcpy(out->param, p, sizeof p);
      need = WD_SCOPE_COMMANDS_SEND;
    } else {
      known = match(a, "devices", "commands", p) || match(a, "devices", "notifications", p) ||
              match(a, "groups", "notifications", p);
      if (!known) {
        *why = "no such address";
        return WD_ERR_NOT_FOUND;
      }
      return deny(why, "this address takes messages; it cannot be received from");
    }
  } else {
    if (match(a, "devices", "commands", p)) {
      out->kind = WD_ADDR_DEVICE_COMMANDS;
      need = WD_SCOPE_COMMANDS_SEND;
    } else if (match(a, "devices", "notifications", p)) {
      out->kind = WD_ADDR_DEVICE_NOTIFICATIONS;
      need = WD_SCOPE_NOTIFICATIONS_SEND;
    } else if (match(a, "groups", "notifications", p)) {
      out->kind = WD_ADDR_GROUP_NOTIFICATIONS;
      need = WD_SCOPE_NOTIFICATIONS_SEND;
    } else {
      known = strcmp(a, "telemetry") == 0 || match(a, "telemetry", NULL, p) || strcmp(a, "inquiries") == 0 ||
              strcmp(a, "feedback") == 0 || strcmp(a, "deadletter") == 0 || strcmp(a, "responses") == 0 ||
              match(a, "responses", NULL, p);
      if (!known) {
        *why = "no such address";
        return WD_ERR_NOT_FOUND;
      }
      return deny(why, "this address is read by services; it cannot be sent to");
    }
    memcpy(out->param, p, sizeof p);
  }
  if ((who->scopes & need) != need) return deny(why, "the service lacks the scope this address needs");
  return WD_OK;
}

int wd_address_authorize(const wd_principal_t *who, wd_link_dir_t dir, const char *address, wd_address_t *out,
                         const char **why) {
  memset(out, 0, sizeof *out);
  *why = "";
  if (!address || !address[0]) {
    if (who->is_device || dir != WD_LINK_INBOUND) return deny(why, "an address is required");
    if (!(who->scopes & (WD_SCOPE_COMMANDS_SEND | WD_SCOPE_NOTIFICATIONS_SEND)))
      return deny(why, "the service lacks the scope to send commands or notifications");
    out->kind = WD_ADDR_ANONYMOUS;
    return WD_OK;
  }
  return who->is_device ? device_rules(who, dir, address, out, why) : service_rules(who, dir, address, out, why);
}

#ifndef WD_PROTOCOL_ADDRESS_H
#define WD_PROTOCOL_ADDRESS_H

/* The AMQP address rules of CONTRACT.md: what each principal may attach to,
 * in which direction. Pure functions, no Proton. */

#include <stdbool.h>

#include "gateway/base/util.h"

typedef enum {
  WD_ADDR_TELEMETRY,            /* device → log, or service ← log (param: consumer group) */
  WD_ADDR_INQUIRIES,            /* device → inquiries, or service ← inquiries */
  WD_ADDR_RESPONSES,            /* device → responses, or service ← responses[/N] (param: N) */
  WD_ADDR_EGRESS,               /* device ← its own command queue */
  WD_ADDR_DEVICE_COMMANDS,      /* service or peer device → devices/D/commands (param: D) */
  WD_ADDR_DEVICE_NOTIFICATIONS, /* service → devices/D/notifications (param: D) */
  WD_ADDR_GROUP_NOTIFICATIONS,  /* service → groups/G/notifications (param: G) */
  WD_ADDR_ANONYMOUS,            /* service → null target; each message names `to` */
  WD_ADDR_FEEDBACK,             /* service ← feedback */
  WD_ADDR_DEADLETTER,           /* service ← deadletter */
} wd_addr_kind_t;

typedef enum {
  WD_LINK_INBOUND,  /* the peer sends (our receiving link; the address is the target) */
  WD_LINK_OUTBOUND, /* the peer receives (our sending link; the address is the source) */
} wd_link_dir_t;

typedef struct {
  bool is_device;
  const char *id;  /* device id or service name */
  unsigned scopes; /* services only */
} wd_principal_t;

typedef struct {
  wd_addr_kind_t kind;
  char param[WD_ID_MAX + 1];
  bool needs_peer_check; /* a device sending to another device: the registry decides */
} wd_address_t;

/* Decides an attach. address may be NULL (the anonymous relay). Returns 0 and
 * fills *out; WD_ERR_DENIED (amqp:unauthorized-access) or WD_ERR_NOT_FOUND
 * (amqp:not-found, an address that does not exist) with *why set to a
 * static explanation. */
int wd_address_authorize(const wd_principal_t *who, wd_link_dir_t dir, const char *address,
                         wd_address_t *out, const char **why);

/* The default consumer group. */
#define WD_DEFAULT_GROUP "$default"

#endif

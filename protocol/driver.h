#ifndef WD_PROTOCOL_DRIVER_H
#define WD_PROTOCOL_DRIVER_H

/* For fuzzing and tests only: serve connections without sockets, through
 * exactly the handlers the proactor uses. Every connection is a Proton raw
 * connection (protocol/stream.c); the caller replaces Proton's at link time
 * (pn_raw_connection, pn_listener_raw_accept and the pn_raw_connection_*
 * calls stream.c makes; see tests/fuzz/amqp_harness.c) and delivers the raw
 * connection's events itself. Includes Proton, so gateway/ never includes it. */

#include <proton/event.h>
#include <proton/raw_connection.h>
#include <stdbool.h>
#include <stddef.h>

#include "protocol/amqp.h"

/* Sets up a's TLS server context from PEM files. Returns 0 or < 0. */
int wd_amqp_driver_tls_init(wd_amqp_t *a, const char *cert_file, const char *key_file);

/* Accepts one connection, plain or TLS: stream.c asks pn_raw_connection()
 * for it, with a NULL listener. */
void wd_amqp_driver_accept(wd_amqp_t *a, bool tls);

/* Handles one event of that raw connection. */
void wd_amqp_driver_event(pn_raw_connection_t *raw, pn_event_type_t type);

/* Connections in warden's registry: accepted and not yet gone. */
size_t wd_amqp_driver_connections(wd_amqp_t *a);

#endif

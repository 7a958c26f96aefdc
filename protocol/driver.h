#ifndef WD_PROTOCOL_DRIVER_H
#define WD_PROTOCOL_DRIVER_H

/* For fuzzing and tests only: serve a connection whose bytes the caller moves
 * (a pn_connection_driver) instead of a socket, through exactly the handlers
 * the proactor uses. Includes Proton, so gateway/ never includes it. */

#include <proton/connection.h>
#include <proton/event.h>
#include <proton/raw_connection.h>
#include <proton/transport.h>
#include <stdbool.h>

#include "protocol/amqp.h"

/* Sets up pc and t as an accepted plain connection would be (SASL, limits).
 * Call before pn_connection_driver_init. Returns 0 or < 0. */
int wd_amqp_driver_accept(wd_amqp_t *a, pn_connection_t *pc, pn_transport_t *t);

/* Handles one event of such a connection. */
void wd_amqp_driver_event(wd_amqp_t *a, pn_event_t *e);

/* TLS connections (protocol/tls.c) without a socket. The caller replaces
 * Proton's raw connection at link time (pn_raw_connection,
 * pn_listener_raw_accept and the pn_raw_connection_* calls tls.c makes; see
 * tests/fuzz/fuzz_tls.c) and delivers the raw connection's events itself. */

/* Sets up a's TLS server context from PEM files. Returns 0 or < 0. */
int wd_amqp_driver_tls_init(wd_amqp_t *a, const char *cert_file, const char *key_file);

/* Accepts one TLS connection: tls.c asks pn_raw_connection() for it, with a
 * NULL listener. */
void wd_amqp_driver_tls_accept(wd_amqp_t *a);

/* Handles one event of that raw connection. */
void wd_amqp_driver_tls_event(pn_raw_connection_t *raw, pn_event_type_t type);

/* Connections in warden's registry: accepted and not yet gone. */
size_t wd_amqp_driver_connections(wd_amqp_t *a);

#endif

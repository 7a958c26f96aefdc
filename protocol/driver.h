#ifndef WD_PROTOCOL_DRIVER_H
#define WD_PROTOCOL_DRIVER_H

/* For fuzzing and tests only: serve a connection whose bytes the caller moves
 * (a pn_connection_driver) instead of a socket, through exactly the handlers
 * the proactor uses. Includes Proton, so gateway/ never includes it. */

#include <proton/connection.h>
#include <proton/event.h>
#include <proton/transport.h>
#include <stdbool.h>

#include "protocol/amqp.h"

/* Sets up pc and t as an accepted plain connection would be (SASL, limits).
 * Call before pn_connection_driver_init. Returns 0 or < 0. */
int wd_amqp_driver_accept(wd_amqp_t *a, pn_connection_t *pc, pn_transport_t *t);

/* Handles one event of such a connection. */
void wd_amqp_driver_event(wd_amqp_t *a, pn_event_t *e);

#endif

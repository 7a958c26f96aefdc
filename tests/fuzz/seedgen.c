/* fuzz_seedgen: writes the seed corpora of every fuzz target.
 *
 *   build/fuzz/tests/fuzz/fuzz_seedgen tests/fuzz/corpus
 *
 * AMQP seeds are real sessions: a Proton client talks to warden's handlers in
 * memory (amqp_harness.c) and every byte the client sends is kept, so no frame
 * is encoded by hand. Seeds of the authenticated modes drop the login prefix
 * the harness sends itself and start with the mode byte (see fuzz_amqp.c).
 * SAS tokens come from wd_sas_build, JWTs are signed here with the test key
 * whose public half is in fuzz_values.h, messages are encoded by Proton; the
 * rest are texts written out as they are. Regenerating rewrites every file;
 * ECDSA signatures differ from run to run. */

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "amqp_harness.h"
#include "fuzz_values.h"
#include "gateway/base/util.h"
#include "protocol/sas.h"

static const char *root;
static int n_written;

/* ------------------------------------------------------------------ output */

static void write_seed(const char *target, const char *name, const void *data, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", root, target);
  if (mkdir(path, 0755) < 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof path, "%s/%s/%s", root, target, name);
  FILE *f = fopen(path, "wb");
  if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
  n_written++;
}

static void write_text(const char *target, const char *name, const char *text) {
  write_seed(target, name, text, strlen(text));
}

/* A seed with a leading control byte (fuzz_rest, fuzz_message, fuzz_amqp). */
static void write_ctl(const char *target, const char *name, uint8_t ctl, const void *data, size_t len) {
  uint8_t *buf = malloc(len + 1);
  if (!buf) abort();
  buf[0] = ctl;
  if (len) memcpy(buf + 1, data, len);
  write_seed(target, name, buf, len + 1);
  free(buf);
}

/* fuzz_tls: its four control bytes (who logs in, how bytes and writes move
 * and how the connection ends, the ciphertext offset + 1 to flip), then the
 * plaintext after the login. */
static void write_tls(const char *name, fh_mode_t mode, uint8_t delivery, uint16_t flip, const void *data,
                      size_t len) {
  uint8_t *buf = malloc(len + 4);
  if (!buf) abort();
  buf[0] = (uint8_t)mode;
  buf[1] = delivery;
  buf[2] = (uint8_t)(flip >> 8);
  buf[3] = (uint8_t)flip;
  if (len) memcpy(buf + 4, data, len);
  write_seed("fuzz_tls", name, buf, len + 4);
  free(buf);
}

/* Each AMQP session is a fuzz_tls seed too, with these deliveries in turn
 * (read size | write completion << 2 | end << 4; see fuzz_tls.c). */
static uint8_t next_tls_delivery(void) {
  static const uint8_t ways[] = {0x03, 0x10, 0x25, 0x3a, 0x0f, 0x11, 0x26, 0x32};
  static unsigned n;
  return ways[n++ % sizeof ways];
}

/* -------------------------------------------------------------------- AMQP */

static pn_bytes_t str(const char *s) { return pn_bytes(strlen(s), s); }

static pn_session_t *session(fh_loop_t *l) {
  pn_session_t *s = pn_session(l->c.connection);
  pn_session_open(s);
  return s;
}

/* A link on which the client sends; target NULL: the anonymous relay. */
static pn_link_t *sender(pn_session_t *s, const char *name, const char *target) {
  pn_link_t *k = pn_sender(s, name);
  if (target) pn_terminus_set_address(pn_link_target(k), target);
  pn_link_open(k);
  return k;
}

static pn_link_t *receiver(pn_session_t *s, const char *name, const char *source, int credit) {
  pn_link_t *k = pn_receiver(s, name);
  pn_terminus_set_address(pn_link_source(k), source);
  pn_link_open(k);
  pn_link_flow(k, credit);
  return k;
}

typedef struct {
  const char *body;
  const char *id;       /* message-id, a string */
  uint64_t ulong_id;    /* message-id, a ulong, when id is NULL and this is not 0 */
  const char *to, *reply_to, *correlation, *content_type, *subject;
  uint32_t ttl;
  bool durable, binary, annotations;
} msg_t;

static size_t encode(const msg_t *spec, char *buf, size_t cap) {
  pn_message_t *m = pn_message();
  if (spec->id) pn_message_set_id(m, (pn_atom_t){.type = PN_STRING, .u.as_bytes = str(spec->id)});
  else if (spec->ulong_id) pn_message_set_id(m, (pn_atom_t){.type = PN_ULONG, .u.as_ulong = spec->ulong_id});
  if (spec->to) pn_message_set_address(m, spec->to);
  if (spec->reply_to) pn_message_set_reply_to(m, spec->reply_to);
  if (spec->correlation)
    pn_message_set_correlation_id(m, (pn_atom_t){.type = PN_STRING, .u.as_bytes = str(spec->correlation)});
  if (spec->content_type) pn_message_set_content_type(m, spec->content_type);
  if (spec->subject) pn_message_set_subject(m, spec->subject);
  if (spec->ttl) pn_message_set_ttl(m, spec->ttl);
  pn_message_set_durable(m, spec->durable);
  if (spec->annotations) {
    pn_data_t *ma = pn_message_annotations(m);
    pn_data_put_map(ma);
    pn_data_enter(ma);
    pn_data_put_symbol(ma, str("x-opt-device-id"));
    pn_data_put_string(ma, str("spoofed"));
    pn_data_put_symbol(ma, str("app-note"));
    pn_data_put_int(ma, 7);
    pn_data_exit(ma);
    pn_data_t *props = pn_message_properties(m);
    pn_data_put_map(props);
    pn_data_enter(props);
    pn_data_put_string(props, str("temperature"));
    pn_data_put_double(props, 21.5);
    pn_data_exit(props);
  }
  pn_data_t *body = pn_message_body(m);
  const char *text = spec->body ? spec->body : "";
  if (spec->binary) pn_data_put_binary(body, str(text));
  else pn_data_put_string(body, str(text));
  size_t n = cap;
  if (pn_message_encode(m, buf, &n) != 0) abort();
  pn_message_free(m);
  return n;
}

static pn_delivery_t *send_msg(pn_link_t *k, const char *tag, const msg_t *spec, bool presettled) {
  char buf[8192];
  size_t n = encode(spec, buf, sizeof buf);
  pn_delivery_t *d = pn_delivery(k, pn_dtag(tag, strlen(tag)));
  pn_link_send(k, buf, n);
  pn_link_advance(k);
  if (presettled) pn_delivery_settle(d);
  return d;
}

/* Settles what arrived on receiver k, cycling through the outcomes. */
static void settle_received(pn_link_t *k, int start) {
  static const uint64_t outcomes[] = {PN_ACCEPTED, PN_REJECTED, PN_RELEASED, PN_MODIFIED, PN_MODIFIED};
  int i = start;
  pn_delivery_t *d;
  char buf[4096];
  while ((d = pn_link_current(k)) && pn_delivery_readable(d) && !pn_delivery_partial(d)) {
    while (pn_link_recv(k, buf, sizeof buf) > 0) {
    }
    pn_link_advance(k);
    int o = i++ % 5;
    if (o == 3) pn_disposition_set_failed(pn_delivery_local(d), true);
    if (o == 4) pn_disposition_set_undeliverable(pn_delivery_local(d), true);
    pn_delivery_update(d, outcomes[o]);
    pn_delivery_settle(d);
  }
}

static void close_all(fh_loop_t *l, pn_session_t *s) {
  for (pn_link_t *k = pn_link_head(l->c.connection, PN_LOCAL_ACTIVE); k; k = pn_link_next(k, PN_LOCAL_ACTIVE))
    pn_link_close(k);
  if (s) pn_session_close(s);
  pn_connection_close(l->c.connection);
  fh_loop_pump(l);
}

typedef void (*script_fn)(fh_loop_t *l);

/* Runs a script as a client of `mode` and writes what it sent as a seed. */
static void amqp_seed(const char *name, fh_mode_t mode, uint8_t chunking, script_fn script) {
  fh_loop_t l;
  if (fh_loop_start(&l, "PLAIN", fh_user(mode), fh_password(mode)) < 0) abort();
  fh_loop_pump(&l);
  script(&l);
  fh_loop_finish(&l);
  size_t plen;
  const uint8_t *prefix = fh_prefix(mode, &plen, NULL);
  if (l.sent_len < plen || memcmp(l.sent, prefix, plen) != 0) {
    fprintf(stderr, "seed %s: the session does not start with the login prefix\n", name);
    exit(1);
  }
  write_ctl("fuzz_amqp", name, (uint8_t)(mode | chunking << 2), l.sent + plen, l.sent_len - plen);
  write_tls(name, mode, next_tls_delivery(), 0, l.sent + plen, l.sent_len - plen);
  if (strcmp(name, "dev-telemetry") == 0) {
    /* a byte of the ClientHello, and one of the telemetry's records, spoiled */
    write_tls("dev-telemetry-flip-in-handshake", mode, 0x03, 100, l.sent + plen, l.sent_len - plen);
    write_tls("dev-telemetry-flip-in-data", mode, 0x03, 1200, l.sent + plen, l.sent_len - plen);
  }
  free(l.sent);
}

/* The same, keeping the login: a seed of the unauthenticated mode. */
static void amqp_raw_seed(const char *name, const char *mechs, const char *user, const char *password,
                          script_fn script) {
  fh_loop_t l;
  if (fh_loop_start(&l, mechs, user, password) < 0) abort();
  fh_loop_pump(&l);
  if (script) script(&l);
  fh_loop_finish(&l);
  write_ctl("fuzz_amqp", name, FH_RAW, l.sent, l.sent_len);
  write_tls(name, FH_RAW, next_tls_delivery(), 0, l.sent, l.sent_len);
  free(l.sent);
}

static void just_close(fh_loop_t *l) { close_all(l, NULL); }

static void svc_commands(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "cmd", "devices/" FH_DEVICE_ID "/commands");
  fh_loop_pump(l);
  send_msg(k, "1", &(msg_t){.body = "reboot", .id = "cmd-1", .reply_to = "responses", .ttl = 30000, .durable = true},
           false);
  send_msg(k, "2", &(msg_t){.body = "\x01\x02", .ulong_id = 42, .reply_to = "responses/" FH_SERVICE_NAME,
                            .binary = true, .content_type = "application/octet-stream"},
           false);
  send_msg(k, "3", &(msg_t){.body = "{\"led\":true}", .content_type = "application/json"}, true);
  fh_loop_pump(l);
  pn_link_t *k2 = sender(s, "cmd2", "devices/" FH_PEER_ID "/commands");
  fh_loop_pump(l);
  send_msg(k2, "4", &(msg_t){.body = "ping", .id = "cmd-2", .ttl = 1}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void svc_notify(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *a = sender(s, "n1", "devices/" FH_DEVICE_ID "/notifications");
  pn_link_t *b = sender(s, "n2", "groups/" FH_GROUP "/notifications");
  fh_loop_pump(l);
  send_msg(a, "1", &(msg_t){.body = "hello", .subject = "greeting"}, false);
  send_msg(b, "2", &(msg_t){.body = "all of you", .id = "n-2", .ttl = 5000}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void svc_anonymous(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "anon", NULL);
  fh_loop_pump(l);
  send_msg(k, "1", &(msg_t){.body = "via relay", .id = "cmd-3", .to = "devices/" FH_DEVICE_ID "/commands"}, false);
  send_msg(k, "2", &(msg_t){.body = "group", .to = "groups/" FH_GROUP "/notifications"}, false);
  send_msg(k, "3", &(msg_t){.body = "nowhere", .to = "nowhere/at/all"}, false);
  send_msg(k, "4", &(msg_t){.body = "no to"}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void svc_read_logs(fh_loop_t *l) {
  pn_session_t *s = session(l);
  static const char *const sources[] = {"telemetry", "telemetry/grp1", "inquiries", "feedback",
                                        "deadletter", "responses", "responses/svc"};
  pn_link_t *links[sizeof sources / sizeof sources[0]];
  for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
    char name[16];
    snprintf(name, sizeof name, "r%zu", i);
    links[i] = receiver(s, name, sources[i], 20);
  }
  fh_loop_pump(l);
  for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) settle_received(links[i], (int)i);
  fh_loop_pump(l);
  close_all(l, s);
}

static void svc_bad_addresses(fh_loop_t *l) {
  pn_session_t *s = session(l);
  sender(s, "b1", "telemetry");
  receiver(s, "b2", "devices/" FH_DEVICE_ID "/commands", 5);
  sender(s, "b3", "nope");
  sender(s, "b4", "devices/bad id!/commands");
  pn_link_t *k = sender(s, "b5", "devices/dev-9/commands");
  receiver(s, "b6", "", 5);
  sender(s, "b7", "groups//notifications");
  fh_loop_pump(l);
  send_msg(k, "1", &(msg_t){.body = "to nobody", .id = "cmd-9"}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void svc_too_many(fh_loop_t *l) {
  pn_session_t *s = NULL;
  for (int i = 0; i < 16; i++) s = session(l); /* max_sessions: Proton keeps a client to it */
  for (int i = 0; i < 66; i++) {          /* max_links is 64 */
    char name[16];
    snprintf(name, sizeof name, "l%d", i);
    sender(s, name, "devices/" FH_DEVICE_ID "/commands");
  }
  fh_loop_pump(l);
  close_all(l, NULL);
}

static void dev_telemetry(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "t", "telemetry");
  fh_loop_pump(l);
  send_msg(k, "1", &(msg_t){.body = "{\"t\":21.5}", .content_type = "application/json", .annotations = true}, false);
  send_msg(k, "2", &(msg_t){.body = "\x7f\x01\x02", .binary = true, .id = "m-2"}, true);
  fh_loop_pump(l);
  pn_link_t *k2 = sender(s, "t2", "devices/" FH_DEVICE_ID "/telemetry");
  fh_loop_pump(l);
  send_msg(k2, "3", &(msg_t){.body = "again", .subject = "s"}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_inquiries(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "i", "inquiries");
  pn_link_t *r = sender(s, "r", "responses");
  fh_loop_pump(l);
  send_msg(k, "1", &(msg_t){.body = "what now?", .id = "inq-1", .reply_to = "devices/" FH_DEVICE_ID "/commands"},
           false);
  send_msg(r, "2", &(msg_t){.body = "done", .correlation = "cmd-1", .content_type = "text/plain"}, false);
  send_msg(r, "3", &(msg_t){.body = "unknown", .correlation = "no-such-command"}, false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_egress(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *r = receiver(s, "c", "devices/" FH_DEVICE_ID "/commands", 10);
  fh_loop_pump(l);
  settle_received(r, 0);
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_egress_unsettled(fh_loop_t *l) {
  pn_session_t *s = session(l);
  receiver(s, "c", "commands", 10);
  fh_loop_pump(l);
  pn_connection_close(l->c.connection); /* leaves whatever arrived unsettled */
  fh_loop_pump(l);
}

static void dev_peers(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *ok = sender(s, "p1", "devices/" FH_PEER_ID "/commands");
  sender(s, "p2", "devices/dev-3/commands");
  sender(s, "p3", "devices/" FH_DEVICE_ID "/commands");
  fh_loop_pump(l);
  send_msg(ok, "1", &(msg_t){.body = "peer to peer", .id = "p2p-1", .reply_to = "devices/" FH_DEVICE_ID "/commands"},
           false);
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_bad_addresses(fh_loop_t *l) {
  pn_session_t *s = session(l);
  sender(s, "b1", "feedback");
  receiver(s, "b2", "telemetry", 5);
  sender(s, "b3", NULL);
  receiver(s, "b4", "devices/" FH_PEER_ID "/commands", 5);
  sender(s, "b5", "devices/" FH_PEER_ID "/telemetry");
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_partial(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "t", "telemetry");
  fh_loop_pump(l);
  char buf[8192];
  size_t n = encode(&(msg_t){.body = "a message cut short by a lost connection", .binary = true}, buf, sizeof buf);
  pn_delivery(k, pn_dtag("1", 1));
  pn_link_send(k, buf, n / 2);
  fh_loop_pump(l);
  pn_connection_close(l->c.connection);
  fh_loop_pump(l);
}

static void dev_abort(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "t", "telemetry");
  fh_loop_pump(l);
  char buf[8192];
  size_t n = encode(&(msg_t){.body = "aborted half way", .binary = true}, buf, sizeof buf);
  pn_delivery_t *d = pn_delivery(k, pn_dtag("1", 1));
  pn_link_send(k, buf, n / 2);
  fh_loop_pump(l);
  pn_delivery_abort(d);
  fh_loop_pump(l);
  send_msg(k, "2", &(msg_t){.body = "after the abort"}, false);
  fh_loop_pump(l);
  pn_link_detach(k); /* detach without closing */
  fh_loop_pump(l);
  close_all(l, s);
}

/* A transfer with no payload at all. */
static void empty_transfer(fh_loop_t *l, const char *target) {
  pn_session_t *s = session(l);
  pn_link_t *k = sender(s, "e", target);
  fh_loop_pump(l);
  pn_delivery(k, pn_dtag("1", 1));
  pn_link_advance(k);
  fh_loop_pump(l);
  close_all(l, s);
}

static void dev_empty_response(fh_loop_t *l) { empty_transfer(l, "responses"); }
static void dev_empty_telemetry(fh_loop_t *l) { empty_transfer(l, "telemetry"); }
static void svc_empty_command(fh_loop_t *l) { empty_transfer(l, "devices/" FH_DEVICE_ID "/commands"); }

static void peer_session(fh_loop_t *l) {
  pn_session_t *s = session(l);
  pn_link_t *t = sender(s, "t", "telemetry");
  pn_link_t *r = receiver(s, "c", "commands", 5);
  fh_loop_pump(l);
  send_msg(t, "1", &(msg_t){.body = "from dev-2"}, false);
  fh_loop_pump(l);
  settle_received(r, 0);
  fh_loop_pump(l);
  close_all(l, s);
}

static void amqp_seeds(void) {
  if (fh_init() < 0) {
    fprintf(stderr, "cannot start the AMQP harness\n");
    exit(1);
  }
  /* Commands first, so that the device sessions below find some queued. */
  amqp_seed("svc-commands", FH_SERVICE, 0, svc_commands);
  amqp_seed("svc-commands-5-byte-pieces", FH_SERVICE, 3, svc_commands);
  amqp_seed("svc-notifications", FH_SERVICE, 0, svc_notify);
  amqp_seed("svc-anonymous-relay", FH_SERVICE, 0, svc_anonymous);
  amqp_seed("svc-bad-addresses", FH_SERVICE, 0, svc_bad_addresses);
  amqp_seed("svc-too-many-sessions-and-links", FH_SERVICE, 0, svc_too_many);
  amqp_seed("dev-telemetry", FH_DEVICE, 0, dev_telemetry);
  amqp_seed("dev-telemetry-64-byte-pieces", FH_DEVICE, 2, dev_telemetry);
  amqp_seed("dev-inquiries-responses", FH_DEVICE, 0, dev_inquiries);
  amqp_seed("dev-egress-settle", FH_DEVICE, 0, dev_egress);
  amqp_seed("dev-egress-unsettled", FH_DEVICE, 0, dev_egress_unsettled);
  amqp_seed("dev-egress-unsettled-all-at-once", FH_DEVICE, 1, dev_egress_unsettled);
  amqp_seed("dev-peers", FH_DEVICE, 0, dev_peers);
  amqp_seed("dev-bad-addresses", FH_DEVICE, 0, dev_bad_addresses);
  amqp_seed("dev-partial-transfer", FH_DEVICE, 0, dev_partial);
  amqp_seed("dev-aborted-transfer", FH_DEVICE, 0, dev_abort);
  amqp_seed("peer-telemetry-and-commands", FH_PEER, 0, peer_session);
  amqp_seed("svc-read-logs", FH_SERVICE, 0, svc_read_logs);
  amqp_seed("svc-open-close", FH_SERVICE, 0, just_close);
  amqp_seed("dev-empty-telemetry", FH_DEVICE, 0, dev_empty_telemetry);
  amqp_seed("svc-empty-command", FH_SERVICE, 0, svc_empty_command);
  amqp_seed("dev-empty-response", FH_DEVICE, 0, dev_empty_response);

  amqp_raw_seed("raw-svc-commands", "PLAIN", FH_SERVICE_NAME, FH_SERVICE_SECRET, svc_commands);
  amqp_raw_seed("raw-dev-telemetry", "PLAIN", FH_DEVICE_ID, fh_password(FH_DEVICE), dev_telemetry);
  amqp_raw_seed("raw-wrong-secret", "PLAIN", FH_SERVICE_NAME, "not-the-secret", NULL);
  amqp_raw_seed("raw-unknown-user", "PLAIN", "nobody", "whatever-it-is", NULL);
  amqp_raw_seed("raw-bad-user-name", "PLAIN", "bad name!", "x", NULL);
  amqp_raw_seed("raw-malformed-token", "PLAIN", FH_DEVICE_ID, "SharedAccessSignature sr=x&sig=y&se=1", NULL);
  amqp_raw_seed("raw-key-as-password", "PLAIN", FH_DEVICE_ID, "ZnV6emluZy1rZXktMDEyMzQ1Njc4OWFiY2RlZi0wMTI=", NULL);
  char *disabled = wd_sas_build(FH_HOSTNAME, "dev-3", fh_device_key(), FZ_NOW_S + INT64_C(3650) * 86400 * 2);
  amqp_raw_seed("raw-disabled-device", "PLAIN", "dev-3", disabled, NULL);
  free(disabled);
  amqp_raw_seed("raw-anonymous", "ANONYMOUS", NULL, NULL, NULL);
  amqp_raw_seed("raw-no-sasl", NULL, NULL, NULL, NULL);
  amqp_raw_seed("raw-external-without-tls", "EXTERNAL", NULL, NULL, NULL);
  fh_fini();
}

/* --------------------------------------------------------------------- SAS */

static void sas_seeds(void) {
  const int64_t later = FZ_NOW_S + 3600;
  char *t = wd_sas_build(FZ_SAS_HOSTNAME, FZ_SAS_DEVICE, fz_sas_key, later);
  write_text("fuzz_sas", "valid", t);
  /* The same fields in another order, one signature character changed, an
     unknown field, a repeated one. */
  const char *sr = strstr(t, "sr="), *sig = strstr(t, "sig="), *se = strstr(t, "se=");
  if (!sr || !sig || !se) abort();
  char buf[2048];
  snprintf(buf, sizeof buf, "SharedAccessSignature %.*s&%.*s&%.*s", (int)strcspn(se, "&"), se,
           (int)strcspn(sr, "&"), sr, (int)strcspn(sig, "&"), sig);
  write_text("fuzz_sas", "valid-reordered", buf);
  snprintf(buf, sizeof buf, "%s", t);
  char *c = strstr(buf, "sig=") + 4;
  *c = *c == 'A' ? 'B' : 'A';
  write_text("fuzz_sas", "wrong-signature", buf);
  snprintf(buf, sizeof buf, "%s&skn=extra", t);
  write_text("fuzz_sas", "extra-field", buf);
  snprintf(buf, sizeof buf, "%s&se=1", t);
  write_text("fuzz_sas", "repeated-field", buf);
  free(t);
  t = wd_sas_build(FZ_SAS_HOSTNAME, FZ_SAS_DEVICE, fz_sas_key, FZ_NOW_S - 1);
  write_text("fuzz_sas", "expired", t);
  free(t);
  t = wd_sas_build(FZ_SAS_HOSTNAME, "dev-2", fz_sas_key, later);
  write_text("fuzz_sas", "other-device", t);
  free(t);
  t = wd_sas_build("other.example.com", FZ_SAS_DEVICE, fz_sas_key, later);
  write_text("fuzz_sas", "other-hostname", t);
  free(t);
  write_text("fuzz_sas", "no-prefix", "sr=hub.example.com%2Fdevices%2Fdev-1&sig=abc%3D&se=1700003600");
  write_text("fuzz_sas", "empty-fields", "SharedAccessSignature sr=&sig=&se=");
  write_text("fuzz_sas", "bad-percent", "SharedAccessSignature sr=hub.example.com%2&sig=%ZZ&se=1700003600");
  write_text("fuzz_sas", "huge-expiry",
             "SharedAccessSignature sr=hub.example.com%2Fdevices%2Fdev-1&sig=AAAA&se=99999999999999999999999");
  write_text("fuzz_sas", "negative-expiry", "SharedAccessSignature sr=hub.example.com%2Fdevices%2Fdev-1&sig=AAAA&se=-5");
}

/* --------------------------------------------------------------------- JWT */

static const char jwt_private_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgusZ8IQhnvR0vzJK3\n"
    "iDNyTaGYatbKO+zkg+7W6mpYS9ihRANCAAQxzrdekiYO8vl5zv1TFlZb8e1l8Uwn\n"
    "/8rPVIA4YJaaG1nt3K8Sr+eXh+xAweAApsqPW3Rc+8Wl3zV5Kl/ZffBa\n"
    "-----END PRIVATE KEY-----\n";

static void b64url(const uint8_t *in, size_t len, char *out) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
    out[o++] = abc[v >> 18 & 63];
    out[o++] = abc[v >> 12 & 63];
    if (i + 1 < len) out[o++] = abc[v >> 6 & 63];
    if (i + 2 < len) out[o++] = abc[v & 63];
  }
  out[o] = '\0';
}

/* header.claims.signature; sign = false leaves a bogus signature. */
static void jwt_seed(const char *name, const char *header, const char *claims, bool sign) {
  static EVP_PKEY *key;
  if (!key) {
    BIO *b = BIO_new_mem_buf(jwt_private_pem, -1);
    key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!key) abort();
  }
  char token[4096];
  b64url((const uint8_t *)header, strlen(header), token);
  size_t n = strlen(token);
  token[n++] = '.';
  b64url((const uint8_t *)claims, strlen(claims), token + n);
  n = strlen(token);
  uint8_t sig[64];
  memset(sig, 0x5a, sizeof sig);
  if (sign) {
    uint8_t der[128];
    size_t der_len = sizeof der;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(ctx, der, &der_len, (const uint8_t *)token, n) != 1)
      abort();
    EVP_MD_CTX_free(ctx);
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!es || BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) != 32 || BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32) != 32)
      abort();
    ECDSA_SIG_free(es);
  }
  token[n++] = '.';
  b64url(sig, sizeof sig, token + n);
  write_text("fuzz_jwt", name, token);
}

static void jwt_seeds(void) {
  const char *es = "{\"alg\":\"ES256\",\"typ\":\"JWT\"}";
  jwt_seed("valid-scope-string", es,
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600,"
           "\"scope\":\"telemetry:read commands:send\"}",
           true);
  jwt_seed("valid-scopes-array-restricted", es,
           "{\"iss\":\"https://issuer.example\",\"aud\":[\"other\",\"warden\"],\"exp\":1700003600.5,"
           "\"nbf\":1699999990,\"scopes\":[\"registry:read\",\"registry:write\"],"
           "\"devices\":[\"dev-1\",\"dev-2\"],\"groups\":[\"grp-a\"]}",
           true);
  jwt_seed("valid-no-scope", es, "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700000010}", true);
  jwt_seed("expired", es, "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1600000000}", true);
  jwt_seed("not-yet-valid", es,
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1800000000,\"nbf\":1750000000}", true);
  jwt_seed("wrong-issuer", es, "{\"iss\":\"https://evil.example\",\"aud\":\"warden\",\"exp\":1700003600}", true);
  jwt_seed("bad-device-id", es,
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600,\"devices\":[\"bad id\"]}",
           true);
  jwt_seed("unknown-scope", es,
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600,\"scope\":\"root\"}", true);
  jwt_seed("bad-signature", es, "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600}", false);
  jwt_seed("alg-none", "{\"alg\":\"none\"}", "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600}",
           false);
  jwt_seed("alg-hs256", "{\"alg\":\"HS256\"}",
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600}", false);
  jwt_seed("alg-rs256", "{\"alg\":\"RS256\"}",
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600}", false);
  jwt_seed("crit-header", "{\"alg\":\"ES256\",\"crit\":[\"exp\"]}",
           "{\"iss\":\"https://issuer.example\",\"aud\":\"warden\",\"exp\":1700003600}", true);
  write_text("fuzz_jwt", "two-segments", "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0");
  write_text("fuzz_jwt", "empty-segments", "..");
}

/* ---------------------------------------------------------------- messages */

static void message_seed(const char *name, uint8_t ctl, const msg_t *spec, bool instructions) {
  pn_message_t *m = pn_message();
  char buf[8192];
  size_t n = encode(spec, buf, sizeof buf);
  if (instructions) { /* re-encode with delivery annotations and a header in front */
    if (pn_message_decode(m, buf, n) != 0) abort();
    pn_message_set_priority(m, 7);
    pn_message_set_delivery_count(m, 3);
    pn_data_t *da = pn_message_instructions(m);
    pn_data_put_map(da);
    pn_data_enter(da);
    pn_data_put_symbol(da, str("x-opt-lock-token"));
    pn_data_put_string(da, str("lock"));
    pn_data_exit(da);
    n = sizeof buf;
    if (pn_message_encode(m, buf, &n) != 0) abort();
  }
  pn_message_free(m);
  write_ctl("fuzz_message", name, ctl, buf, n);
}

static void message_seeds(void) {
  message_seed("plain", 0, &(msg_t){.body = "hello"}, false);
  message_seed("all-sections-annotate", 0x3f,
               &(msg_t){.body = "\x7f\x01\x02", .binary = true, .id = "m-1", .to = "telemetry", .reply_to = "r",
                        .correlation = "c-1", .content_type = "application/octet-stream", .subject = "s",
                        .ttl = 60000, .durable = true, .annotations = true},
               true);
  message_seed("drop-header-set-id", 0x05, &(msg_t){.body = "x", .ttl = 1000, .durable = true}, false);
  message_seed("strip-reserved", 0x02, &(msg_t){.body = "y", .annotations = true, .ulong_id = 7}, true);
  /* Hand-made bytes: an empty message, a lone value, sections out of order, a
     properties list with a long message-id, and a truncated section. */
  static const uint8_t amqp_value[] = {0x00, 0x53, 0x77, 0xa1, 0x02, 'h', 'i'};
  static const uint8_t out_of_order[] = {0x00, 0x53, 0x77, 0x40, 0x00, 0x53, 0x70, 0x45};
  static const uint8_t symbolic[] = {0x00, 0xa3, 0x11, 'a', 'm', 'q', 'p', ':', 'h', 'e', 'a', 'd', 'e',
                                     'r',  ':',  'l',  'i', 's', 't', 0x45, 0x00, 0x53, 0x75, 0xa0, 0x00};
  static const uint8_t truncated[] = {0x00, 0x53, 0x73, 0xd0, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x02};
  static const uint8_t nested[] = {0x00, 0x53, 0x72, 0xc1, 0x06, 0x02, 0xa3, 0x01, 'k', 0x00, 0x00,
                                   0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x53, 0x75, 0xa0, 0x00};
  write_ctl("fuzz_message", "empty", 0x38, "", 0);
  write_ctl("fuzz_message", "amqp-value", 0x38, amqp_value, sizeof amqp_value);
  write_ctl("fuzz_message", "out-of-order", 0x00, out_of_order, sizeof out_of_order);
  write_ctl("fuzz_message", "symbolic-descriptor", 0x01, symbolic, sizeof symbolic);
  write_ctl("fuzz_message", "truncated", 0x20, truncated, sizeof truncated);
  write_ctl("fuzz_message", "deeply-described", 0x3a, nested, sizeof nested);
}

/* -------------------------------------------------------------------- REST */

#define REST(name, bytes) write_seed("fuzz_rest", name, bytes, sizeof bytes - 1)

static void rest_seeds(void) {
  REST("route-healthz", "\x00GET\0/healthz");
  REST("route-list", "\x00HEAD\0/v1/devices");
  REST("route-device", "\x00PUT\0/v1/devices/dev-1");
  REST("route-device-encoded", "\x00GET\0/v1/devices/dev%2D1");
  REST("route-bad-id", "\x00GET\0/v1/devices/bad%20id");
  REST("route-rotate", "\x00POST\0/v1/devices/dev-1/keys/rotate");
  REST("route-disable", "\x00POST\0/v1/devices/dev-1/disable");
  REST("route-commands", "\x00" "DELETE\0/v1/devices/dev-1/commands");
  REST("route-status", "\x00GET\0/v1/devices/dev-1/commands/cmd%2F1");
  REST("route-notify-group", "\x00POST\0/v1/groups/grp-a/notifications");
  REST("route-stream", "\x00GET\0/v1/telemetry/stream");
  REST("route-metrics", "\x00GET\0/metrics");
  REST("route-encoded-healthz", "\x00GET\0/%68ealthz");
  REST("route-encoded-devices", "\x00GET\0/v1/%64evices/dev-1/commands/%2F");
  REST("route-405", "\x00PATCH\0/v1/devices/dev-1");
  REST("route-empty-segment", "\x00GET\0/v1//devices");
  REST("route-deep", "\x00GET\0/v1/devices/a/b/c/d/e/f");
  REST("body-empty", "\x01" "dev-1\0");
  REST("body-full", "\x01" "dev-1\0{\"id\":\"dev-1\",\"groups\":[\"g1\",\"g2\",\"g1\"],\"peers\":[\"dev-2\"],"
       "\"queueLimit\":10,\"auth\":{\"key\":false,\"thumbprint\":\"AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:"
       "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\"}}");
  REST("body-bad-types", "\x01" "dev-1\0{\"groups\":\"g1\",\"queueLimit\":-1,\"auth\":[]}");
  REST("body-nulls", "\x01" "dev-1\0{\"id\":null,\"groups\":null,\"peers\":null,\"queueLimit\":null,\"auth\":null}");
  REST("body-not-object", "\x01" "dev-1\0[1,2,3]");
  REST("body-duplicate-keys", "\x01" "dev-1\0{\"groups\":[],\"groups\":[\"x\"]}");
  REST("body-bad-json", "\x01" "dev-1\0{\"groups\":[\"a\"");
  REST("list-query", "\x02" "dev%2D1\0" "250");
  REST("list-query-huge", "\x02" "\0" "99999999999999999999999");
  REST("list-query-absent", "\x1a\0");
  REST("thumbprint", "\x03" "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF");
  REST("thumbprint-colons", "\x03" "01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:"
       "89:ab:cd:ef");
  REST("bearer", "\x04" "Bearer abc.def.ghi");
  REST("bearer-case", "\x04" " \tbEaReR\t token");
  REST("bearer-basic", "\x04" "Basic dXNlcjpwYXNz");
  REST("payload-json", "\x05" "application/json\0{\"t\":1}");
  REST("payload-text-utf8", "\x05" "text/plain; charset=utf-8\0gr\xc3\xbc\xc3\x9f" "e");
  REST("payload-binary", "\x05" "text/plain\0\xff\xfe\x00\x01");
  REST("payload-no-type", "\x0d\0abc");
  REST("listen-v4", "\x06" "0.0.0.0:8080");
  REST("listen-v6", "\x06" "[::1]:443");
  REST("listen-bad", "\x06" "::1:443");
  REST("error-body", "\x07" "bad_request\0quote \" and \\ and \x01 control");
}

/* ------------------------------------------------------------------ config */

static void config_seeds(void) {
  write_text("fuzz_config", "full",
             "; a complete configuration\n"
             "[gateway]\nhostname = hub.example.com\nthreads = 4\nlog_level = debug\n"
             "[store]\npath = /var/lib/warden\nmax_size = 2G\n"
             "[amqp]\nlisten = 0.0.0.0:5672\ntls_listen = [::]:5671\ntls_cert = /etc/warden/cert.pem\n"
             "tls_key = /etc/warden/key.pem\ntls_ca = /etc/warden/ca.pem\nidle_timeout = 2m\n"
             "max_idle_timeout = 1h\nmax_message_size = 1M\nmax_connections = 5000\n"
             "max_connections_per_address = 100\nsasl_timeout = 10s\nmax_frame_size = 64K\nmax_sessions = 8\n"
             "max_links = 32\n"
             "[http]\nlisten = 0.0.0.0:8443\ntls_cert = /etc/warden/http-cert.pem\ntls_key = /etc/warden/http-key.pem\n"
             "[auth]\ndev_mode = false\nallow_key_password = yes\nfailures_per_address = 5\nblock_time = 1m\n"
             "jwt_issuer = https://issuer.example.com\njwt_public_key = /etc/warden/jwt.pem\njwt_audience = warden\n"
             "[commands]\ndefault_ttl = 30m\nmax_ttl = 2d\nqueue_limit = 200\nmax_delivery_count = 5\n"
             "[service backend]\nsecret = 0123456789abcdef-backend\nscopes = telemetry:read commands:send\n"
             "[service ops]\nthumbprint = 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
             "scopes = registry:read registry:write\n"
             "[upstream]\nurl = amqps://parent.example.com:5671\ndevice_id = edge-1\nkey = c2VjcmV0\n"
             "ca = /etc/warden/parent-ca.pem\n");
  write_text("fuzz_config", "dev-mode", "[auth]\ndev_mode = true\n");
  write_text("fuzz_config", "empty", "");
  write_text("fuzz_config", "units", "[amqp]\ntls_listen =\nmax_message_size = 64KB\nidle_timeout = 1d\n"
                                     "[store]\nmax_size = 16G\n");
  write_text("fuzz_config", "unknown-key", "[amqp]\ntls_listen =\nlisten_port = 5672\n");
  write_text("fuzz_config", "unknown-section", "[storage]\npath = /tmp/x\n");
  write_text("fuzz_config", "bad-numbers", "[amqp]\ntls_listen =\nmax_connections = 0x10\nmax_links = 99999999999999999999\n");
  write_text("fuzz_config", "ttl-order", "[amqp]\ntls_listen =\n[commands]\ndefault_ttl = 3d\nmax_ttl = 1d\n");
  write_text("fuzz_config", "service-without-credentials", "[amqp]\ntls_listen =\n[service lonely]\nscopes = telemetry:read\n");
  write_text("fuzz_config", "service-bad-name", "[service bad name!]\nsecret = 0123456789abcdef-x\n");
  write_text("fuzz_config", "not-ini", "this is not\n  an ini file\n[unclosed\n");
  write_text("fuzz_config", "continuation-and-comments",
             "[gateway]\nhostname = a\n  continued\n# comment\n; another\n[amqp] ; trailing\ntls_listen = ; none\n");
}

/* ----------------------------------------------------------------- journal */

/* fuzz_journal's records: flags, entry count, then per entry log, numbering, length, bytes. */
#define J(name, ...)                                      \
  do {                                                    \
    static const uint8_t seed[] = {__VA_ARGS__};          \
    write_seed("fuzz_journal", name, seed, sizeof seed);  \
  } while (0)

static void journal_seeds(void) {
  J("one-append", 0, 1, 1, 0, 5, 'h', 'e', 'l', 'l', 'o');
  J("two-logs-two-records", 0, 3, 1, 0, 2, 'a', 'b', 2, 0, 1, 'c', 1, 0, 0, 0, 1, 2, 0, 3, 'x', 'y', 'z');
  J("gap-ends-replay", 0, 1, 1, 0, 1, 'a', 0, 1, 1, 1, 1, 'b', 0, 1, 1, 0, 1, 'c');
  J("taken-number", 0, 1, 1, 2, 1, 'a');
  J("first-number", 0, 1, 2, 5, 1, 'a');
  J("numbers-no-log-has", 0, 2, 1, 3, 1, 'a', 1, 4, 1, 'b');
  J("unknown-logs", 0, 1, 3, 0, 1, 'a', 0, 1, 0, 0, 1, 'b');
  J("torn-then-whole", 8, 1, 1, 0, 1, 'a', 0, 1, 1, 0, 1, 'b');
  J("every-frame-flaw", 0, 1, 1, 0, 1, 'a', 1, 1, 1, 0, 1, 'b', 2, 1, 1, 0, 1, 'c', 4, 1, 1, 0, 1, 'd', 16, 1, 1, 0,
    1, 'e', 32, 1, 1, 0, 1, 'f');
  J("sixteen-entries", 0, 16, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0,
    1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0);
  J("seventeen-entries", 0, 17, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0,
    0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0);
  J("no-entries", 0, 0, 0, 1, 1, 0, 1, 'a');
}
#undef J

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <corpus directory, e.g. tests/fuzz/corpus>\n", argv[0]);
    return 2;
  }
  root = argv[1];
  if (mkdir(root, 0755) < 0 && errno != EEXIST) {
    perror(root);
    return 1;
  }
  sas_seeds();
  jwt_seeds();
  message_seeds();
  rest_seeds();
  config_seeds();
  amqp_seeds();
  journal_seeds();
  printf("wrote %d seeds under %s\n", n_written, root);
  return 0;
}

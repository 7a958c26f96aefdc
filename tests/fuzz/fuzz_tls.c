/* libFuzzer target: a TLS peer, through warden's own TLS layer (protocol/stream.c)
 * into its AMQP handlers.
 *
 * Proton's raw connection is replaced by the harness's fake (amqp_harness.h),
 * so the input decides how bytes arrive, when warden's writes complete and
 * how the connection ends. The peer is a real OpenSSL client over
 * memory BIOs: it completes the handshake, so the input reaches the engine as
 * plaintext inside valid records, unless the input says to flip a byte of the
 * ciphertext.
 *
 * Input: four control bytes, then the plaintext the client writes.
 *   c0 % 4         who logs in (fh_mode_t, as in fuzz_amqp): for 1..3 the
 *                  client first sends that login (SASL, then the AMQP
 *                  header), then the plaintext; for 0 the plaintext is the
 *                  whole connection. The client writes it a frame at a time
 *                  (fh_frame_len), letting warden answer in between
 *   c1 & 3         read buffers filled 1, 7 or 300 bytes at a time, or full
 *   (c1 >> 2) & 3  warden's writes complete: at once; every other round;
 *                  only once 4 are queued; not until the end (so that stream.c
 *                  meets its limits on what it hands out)
 *   (c1 >> 4) & 3  the end: close_notify then end of stream; end of stream;
 *                  a reset; the peer stops and lets warden act first
 *   c2 c3          n (big endian), non-zero: the ciphertext byte at offset
 *                  n - 1 is flipped on its way to warden
 *
 * After the disconnect, warden's registry must be empty again: a TLS
 * connection whatever its end leaves nothing behind. */

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <proton/types.h>
#include <proton/raw_connection.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_harness.h"
#include "fuzz_util.h"
#include "protocol/driver.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ROUNDS_MAX 4000 /* bound on one input's pumping */
#define BARRIERS_MAX 8  /* store round trips per input */

/* ------------------------------------------------------------- the client */

static struct {
  SSL_CTX *client;
  char dir[256]; /* warden's certificate and key */
} T;

/* A self-signed P-256 certificate and key for warden, in files (stream.c loads files). */
static int write_server_identity(char *cert_path, char *key_path, size_t cap) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  if (!key || !cert) return -1;
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400L * 3650);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                             -1, 0);
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  if (X509_sign(cert, key, EVP_sha256()) <= 0) return -1;
  snprintf(cert_path, cap, "%s/cert.pem", T.dir);
  snprintf(key_path, cap, "%s/key.pem", T.dir);
  FILE *c = fopen(cert_path, "w"), *k = fopen(key_path, "w");
  int ok = c && k && PEM_write_X509(c, cert) && PEM_write_PrivateKey(k, key, NULL, NULL, 0, NULL, NULL);
  if (c) fclose(c);
  if (k) fclose(k);
  X509_free(cert);
  EVP_PKEY_free(key);
  return ok ? 0 : -1;
}

static void remove_identity(void) {
  if (T.dir[0]) fz_rmdir(T.dir);
  SSL_CTX_free(T.client);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char cert[512], key[512];
  if (fh_init() < 0 || fz_tempdir("tls", T.dir, sizeof T.dir) < 0 ||
      write_server_identity(cert, key, sizeof cert) < 0 ||
      wd_amqp_driver_tls_init(fh_amqp(), cert, key) < 0 || !(T.client = SSL_CTX_new(TLS_client_method()))) {
    fprintf(stderr, "fuzz_tls: cannot set up the server\n");
    abort();
  }
  atexit(remove_identity);
  SSL_CTX_set_verify(T.client, SSL_VERIFY_NONE, NULL);
  return 0;
}

/* ------------------------------------------------------------- one input */

typedef struct {
  SSL *ssl;
  BIO *to_client, *from_client; /* memory BIOs: what warden wrote; what the client wrote */
  uint8_t *pending;             /* ciphertext from the client not yet in a read buffer */
  size_t pending_len, pending_cap;
  size_t ciphertext_seen;       /* bytes from the client so far, for the flip */
  size_t flip_at;               /* 0: none; else offset + 1 */
  size_t read_chunk;            /* 0: as much as the buffer holds */
  int write_policy;
  int barriers;
  long round;
} peer_t;

static void to_client(void *arg, const uint8_t *p, size_t n) {
  peer_t *peer = arg;
  BIO_write(peer->to_client, p, (int)n);
}

/* Moves warden's written ciphertext to the client, as the policy allows. */
static bool complete_writes(peer_t *p, bool all) {
  bool now = all || p->write_policy == 0 || (p->write_policy == 1 && (p->round & 1)) ||
             (p->write_policy == 2 && fh_raw->n_writes >= 4);
  return now && fh_raw_complete_writes(to_client, p);
}

/* Collects what the client wrote, flipping the chosen byte. */
static void collect_client_output(peer_t *p) {
  uint8_t buf[4096];
  int n;
  while ((n = BIO_read(p->from_client, buf, sizeof buf)) > 0) {
    if (p->pending_len + (size_t)n > p->pending_cap) {
      size_t cap = p->pending_cap ? p->pending_cap * 2 : 8192;
      while (cap < p->pending_len + (size_t)n) cap *= 2;
      uint8_t *grown = realloc(p->pending, cap);
      if (!grown) abort();
      p->pending = grown;
      p->pending_cap = cap;
    }
    for (int i = 0; i < n; i++, p->ciphertext_seen++)
      if (p->flip_at && p->ciphertext_seen == p->flip_at - 1) buf[i] ^= 0x5a;
    memcpy(p->pending + p->pending_len, buf, (size_t)n);
    p->pending_len += (size_t)n;
  }
}

/* Fills warden's read buffer from the pending ciphertext, one read at a time. */
static bool deliver_reads(peer_t *p) {
  size_t n = fh_raw_deliver(p->pending, p->pending_len, p->read_chunk);
  memmove(p->pending, p->pending + n, p->pending_len - n);
  p->pending_len -= n;
  return n > 0;
}

/* The client reads what reached it (and so answers handshake messages). */
static void client_reads(peer_t *p) {
  uint8_t sink[4096];
  if (!SSL_is_init_finished(p->ssl)) {
    SSL_do_handshake(p->ssl);
  } else {
    while (SSL_read(p->ssl, sink, sizeof sink) > 0) {
    }
  }
  ERR_clear_error();
}

/* One round both ways. Returns whether anything moved. */
static bool pump_once(peer_t *p) {
  p->round++;
  bool moved = complete_writes(p, false);
  client_reads(p);
  collect_client_output(p);
  moved |= deliver_reads(p);
  moved |= fh_raw_answer();
  return moved;
}

static void pump(peer_t *p) {
  for (int idle = 0; idle < 3 && p->round < ROUNDS_MAX;) {
    if (pump_once(p)) {
      idle = 0;
    } else {
      /* Store writes complete on the writer thread and come back as wakes. */
      if (p->barriers < BARRIERS_MAX) {
        p->barriers++;
        fh_store_barrier();
      }
      idle++;
    }
  }
}

/* The client writes plaintext a frame at a time, as a client that waits for
 * answers does (so that a recorded session replays as it ran), pumping in
 * between. */
static void client_writes(peer_t *p, const uint8_t *data, size_t len) {
  for (size_t off = 0; off < len && p->round < ROUNDS_MAX;) {
    size_t n = fh_frame_len(data + off, len - off);
    if (SSL_write(p->ssl, data + off, (int)n) <= 0) break; /* warden's alert ended the session */
    off += n;
    pump(p);
  }
  ERR_clear_error();
}

/* Ends the connection as the input says, then lets the fake deliver what
 * Proton would: the closed halves, and last the disconnect. */
static void finish(peer_t *p, int how) {
  if (how == 0) {
    SSL_shutdown(p->ssl);
    collect_client_output(p);
    deliver_reads(p);
  }
  if (how <= 1 && !fh_raw->read_closed) { /* end of stream from the peer */
    fh_raw->read_close_asked = fh_raw->read_closed = true;
    fh_raw_event(PN_RAW_CONNECTION_CLOSED_READ);
    pump(p);
  }
  if (how == 3) pump(p); /* the peer stops sending and lets warden act first: what it sends on its own arrives */
  fh_raw_disconnect();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t chunks[4] = {1, 7, 300, 0};
  if (size < 4) return 0;
  fh_mode_t mode = (fh_mode_t)(data[0] % FH_N_MODES);
  peer_t p = {.read_chunk = chunks[data[1] & 3], .write_policy = (data[1] >> 2) & 3};
  int how = (data[1] >> 4) & 3;
  p.flip_at = (size_t)data[2] << 8 | data[3];
  data += 4;
  size -= 4;

  fh_raw_accept(true);

  p.ssl = SSL_new(T.client);
  p.to_client = BIO_new(BIO_s_mem());
  p.from_client = BIO_new(BIO_s_mem());
  if (!p.ssl || !p.to_client || !p.from_client) abort();
  SSL_set_bio(p.ssl, p.to_client, p.from_client);
  SSL_set_connect_state(p.ssl);
  SSL_set_tlsext_host_name(p.ssl, "localhost");
  pump(&p);

  if (SSL_is_init_finished(p.ssl) && !fh_raw->read_close_asked) {
    size_t len = 0, sasl_len = 0;
    const uint8_t *login = fh_prefix(mode, &len, &sasl_len);
    if (login) {
      client_writes(&p, login, sasl_len); /* the SASL part; the AMQP header once the outcome is in */
      client_writes(&p, login + sasl_len, len - sasl_len);
    }
    client_writes(&p, data, size);
  }
  finish(&p, how);

  SSL_free(p.ssl);
  free(p.pending);
  ERR_clear_error();
  return 0;
}

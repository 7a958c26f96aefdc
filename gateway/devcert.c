/* A development certificate, so that the embedded defaults serve TLS out of
 * the box. EC P-256, self-signed, SAN DNS:<hostname> (Proton's client checks
 * DNS names only, never IP addresses). Never used outside dev_mode. */

#include "gateway/devcert.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/base/err.h"
#include "gateway/base/log.h"
#include "gateway/base/util.h"

static char *join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s/%s", a, b);
  return s;
}

static bool add_ext(X509 *cert, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (!ext) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

static int generate(const char *hostname, const char *cert_path, const char *key_path) {
  int rc = WD_ERR_IO;
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = X509_new();
  FILE *f = NULL;
  char san[300];
  snprintf(san, sizeof san, strcmp(hostname, "localhost") ? "DNS:%s,DNS:localhost" : "DNS:%s", hostname);
  uint8_t serial[16];
  if (!key || !cert || wd_random_bytes(serial, sizeof serial) < 0) goto out;
  serial[0] &= 0x7f;
  BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
  bool ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  X509_NAME *name = X509_get_subject_name(cert);
  ok = ok && X509_set_version(cert, 2) && X509_gmtime_adj(X509_getm_notBefore(cert), -3600) &&
       X509_gmtime_adj(X509_getm_notAfter(cert), 825L * 86400) &&
       X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hostname, -1, -1, 0) &&
       X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"warden development", -1, -1, 0) &&
       X509_set_issuer_name(cert, name) && X509_set_pubkey(cert, key) &&
       add_ext(cert, NID_basic_constraints, "critical,CA:TRUE") &&
       add_ext(cert, NID_subject_key_identifier, "hash") && add_ext(cert, NID_subject_alt_name, san) &&
       X509_sign(cert, key, EVP_sha256()) > 0;
  if (!ok) goto out;
  int fd = open(key_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || !(f = fdopen(fd, "w"))) {
    if (fd >= 0) close(fd);
    goto out;
  }
  ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
  ok = fclose(f) == 0 && ok;
  f = NULL;
  if (!ok || !(f = fopen(cert_path, "w"))) goto out;
  ok = PEM_write_X509(f, cert) == 1;
  ok = fclose(f) == 0 && ok;
  f = NULL;
  if (ok) rc = WD_OK;
out:
  if (f) fclose(f);
  X509_free(cert);
  EVP_PKEY_free(key);
  return rc;
}

int wd_devcert_ensure(const char *dir, const char *hostname, char **cert_path, char **key_path) {
  char *tls_dir = join(dir, "tls");
  char *cert = tls_dir ? join(tls_dir, "dev-cert.pem") : NULL;
  char *key = tls_dir ? join(tls_dir, "dev-key.pem") : NULL;
  int rc = cert && key ? WD_OK : WD_ERR_NOMEM;
  if (rc == WD_OK && (mkdir(tls_dir, 0700) != 0 && errno != EEXIST)) rc = WD_ERR_IO;
  if (rc == WD_OK && (access(cert, R_OK) != 0 || access(key, R_OK) != 0)) {
    rc = generate(hostname, cert, key);
    if (rc == WD_OK) wd_log("gateway", WD_LOG_INFO, "generated a development TLS certificate for %s in %s", hostname, cert);
  }
  if (rc < 0) {
    wd_log("gateway", WD_LOG_ERROR, "cannot create a development certificate in %s: %s", tls_dir ? tls_dir : dir,
           wd_err_str(rc));
    free(cert);
    free(key);
  } else {
    *cert_path = cert;
    *key_path = key;
  }
  free(tls_dir);
  return rc;
}

#ifndef WD_GATEWAY_DEVCERT_H
#define WD_GATEWAY_DEVCERT_H

/* Makes (once) a self-signed development certificate for `hostname` in
 * <dir>/tls/dev-cert.pem and dev-key.pem, and returns their paths, returned
 * owned. Returns 0 or < 0 with a log line. */
int wd_devcert_ensure(const char *dir, const char *hostname, char **cert_path, char **key_path);

#endif

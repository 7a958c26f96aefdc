#ifndef WD_GATEWAY_CLI_H
#define WD_GATEWAY_CLI_H

/* The operator's `warden` commands other than `serve`: device management,
 * send and tail, all over the REST API (never the store directly, so they work
 * against a running gateway, local or remote). */

/* argv[0] is the program, argv[1] the command ("device", "send", "tail").
 * Prints results on stdout and errors a person can act on on stderr. Returns
 * the process exit code: 0 success, 1 the gateway refused or failed, 2 usage. */
int wd_cli_main(int argc, char **argv);

/* True if argv[1] names a CLI command. */
int wd_cli_is_command(const char *name);

#endif

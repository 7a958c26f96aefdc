/* Placeholder until the CLI lands: every command reports that it is missing. */
#include "gateway/cli.h"

#include <stdio.h>
#include <string.h>

int wd_cli_is_command(const char *name) {
  return strcmp(name, "device") == 0 || strcmp(name, "send") == 0 || strcmp(name, "tail") == 0;
}

int wd_cli_main(int argc, char **argv) {
  (void)argc;
  fprintf(stderr, "warden: '%s' is not available in this build yet\n", argv[1]);
  return 2;
}

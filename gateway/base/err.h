#ifndef WD_BASE_ERR_H
#define WD_BASE_ERR_H

/* 0 is success, negative values are failures, positive values are counts. */
typedef enum {
  WD_OK = 0,
  WD_ERR_NOMEM = -1,
  WD_ERR_INVALID = -2,    /* bad input from a caller or peer */
  WD_ERR_NOT_FOUND = -3,
  WD_ERR_EXISTS = -4,
  WD_ERR_FULL = -5,       /* the store has no room left */
  WD_ERR_IO = -6,
  WD_ERR_CORRUPT = -7,    /* the store is damaged or of an unknown format */
  WD_ERR_SHUTDOWN = -8,   /* the component is stopping; work was discarded */
  WD_ERR_DENIED = -9,     /* authentication or authorization failed */
  WD_ERR_LIMIT = -10,     /* a configured limit was reached */
  WD_ERR_DISABLED = -11,  /* the device is disabled */
  WD_ERR_TOO_BIG = -13,   /* a message over the configured size */
  WD_ERR_BUSY = -12,      /* the store is nearly full: new work is refused until consumers drain it */
  WD_ERR_IN_USE = -14,    /* the store is open in another process */
} wd_err_t;

/* A short, stable, human-readable name for an error code. */
const char *wd_err_str(int rc);

#endif

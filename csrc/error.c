/*
 * error.c -- error codes, their names and messages, and the thread-local failure detail.
 *
 * NDSHM_ERRORS is the one table: it yields ndshm_strerror() and ndshm_errname(), and the
 * static assertion below keeps it in step with the pinned enum in ndshm.h.
 */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NDSHM_ERRORS(X)                                                          \
    X(OK, "success")                                                             \
    X(EINVAL, "invalid argument")                                                \
    X(ENOMEM, "out of memory")                                                   \
    X(EOVERFLOW, "size overflows")                                               \
    X(EEXIST, "segment exists already")                                          \
    X(ENOENT, "no such segment")                                                 \
    X(EACCES, "permission denied")                                               \
    X(ENOSPC, "no space left for the segment")                                   \
    X(ECORRUPT, "segment is corrupt or not an ndshm segment")                    \
    X(ETIMEDOUT, "timed out")                                                    \
    X(EBUSY, "busy")                                                             \
    X(EEMPTY, "queue is empty")                                                  \
    X(EFULL, "queue is full")                                                    \
    X(ETOOBIG, "message larger than a queue slot")                               \
    X(EOWNERDEAD, "previous owner died holding the lock")                        \
    X(ECLOSED, "closed")                                                         \
    X(ENOTSUP, "not supported on this system")                                   \
    X(EPERM, "operation not permitted")                                          \
    X(ESYS, "operating-system error")                                            \
    X(EBROKEN, "barrier is broken")                                             \
    X(ESHUTDOWN, "shut down")                                                    \
    X(ELAGGED, "subscriber lagged: messages were overwritten")

#define NDSHM_COUNT_ONE(name, msg) +1
_Static_assert(0 NDSHM_ERRORS(NDSHM_COUNT_ONE) == 1 - NDSHM_ERROR_MIN_,
               "NDSHM_ERRORS and enum ndshm_error disagree");

static const struct {
    int code;
    const char *name;
    const char *message;
} error_table[] = {
#define NDSHM_ROW(n, msg) {NDSHM_##n, "NDSHM_" #n, msg},
    NDSHM_ERRORS(NDSHM_ROW)
#undef NDSHM_ROW
};

static _Thread_local char last_detail[512];
static _Thread_local int last_errno;

int ndshm_version(void) { return NDSHM_VERSION_NUMBER; }

int ndshm_abi_version(void) { return NDSHM_ABI_VERSION; }

static int table_index(int code) {
    if (code > 0 || code < NDSHM_ERROR_MIN_) return -1;
    int i = -code;
    return error_table[i].code == code ? i : -1;
}

const char *ndshm_strerror(int code) {
    int i = table_index(code);
    return i < 0 ? "unknown error" : error_table[i].message;
}

const char *ndshm_errname(int code) {
    int i = table_index(code);
    return i < 0 ? "NDSHM_E?" : error_table[i].name;
}

const char *ndshm_last_detail(void) { return last_detail; }

int ndshm_last_errno(void) { return last_errno; }

void ndshm__error_save(ndshm__error_state_t *s) {
    memcpy(s->detail, last_detail, sizeof s->detail);
    s->err = last_errno;
}

void ndshm__error_restore(const ndshm__error_state_t *s) {
    memcpy(last_detail, s->detail, sizeof last_detail);
    last_errno = s->err;
}

static void set_detail(int err, const char *fmt, va_list ap) {
    last_errno = err;
    int n = vsnprintf(last_detail, sizeof last_detail, fmt, ap);
    if (err != 0 && n >= 0 && (size_t)n < sizeof last_detail)
        snprintf(last_detail + n, sizeof last_detail - (size_t)n, ": %s", strerror(err));
}

int ndshm__fail(int code, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_detail(err, fmt, ap);
    va_end(ap);
    return code;
}

static int code_of_errno(int err) {
    switch (err) {
    case ENOMEM: return NDSHM_ENOMEM;
    case EEXIST: return NDSHM_EEXIST;
    case ENOENT: return NDSHM_ENOENT;
    case EACCES: return NDSHM_EACCES;
    case EPERM: return NDSHM_EPERM;
    case ENOSPC: return NDSHM_ENOSPC;
    case EOVERFLOW: return NDSHM_EOVERFLOW;
    case ETIMEDOUT: return NDSHM_ETIMEDOUT;
    case EBUSY: return NDSHM_EBUSY;
    case ENOTSUP: return NDSHM_ENOTSUP;
    default: return NDSHM_ESYS;
    }
}

int ndshm__fail_errno(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_detail(err, fmt, ap);
    va_end(ap);
    return code_of_errno(err);
}

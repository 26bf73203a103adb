/*
 * testhelper.h -- a tiny CHECK harness for the C tests (after mimalloc's test/testhelper.h).
 *
 *   TEST(name) { CHECK(expr); CHECK_RC(call, NDSHM_EINVAL); }
 *   int main(void) { RUN(name); ...; return SUMMARY(); }
 *
 * Each TEST counts as one; it fails if any CHECK in it fails. SUMMARY prints the closing line
 * "N passed, N failed" and returns the exit status.
 */
#ifndef NDSHM_TESTHELPER_H
#define NDSHM_TESTHELPER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ndshm.h"

static int th_passed, th_failed, th_current_ok;

#define TEST(name) static void test_##name(void)

#define RUN(name)                                                   \
    do {                                                            \
        th_current_ok = 1;                                          \
        test_##name();                                              \
        if (th_current_ok) th_passed++;                             \
        else { th_failed++; fprintf(stderr, "FAIL %s\n", #name); }  \
    } while (0)

#define CHECK(expr)                                                                  \
    do {                                                                             \
        if (!(expr)) {                                                               \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #expr); \
            th_current_ok = 0;                                                       \
        }                                                                            \
    } while (0)

/* CHECK that `call` returns `want`, printing the code's name and the detail when not. */
#define CHECK_RC(call, want)                                                                      \
    do {                                                                                          \
        int th_rc_ = (call);                                                                      \
        if (th_rc_ != (want)) {                                                                   \
            fprintf(stderr, "  %s:%d: %s returned %s (%s), wanted %s\n", __FILE__, __LINE__, #call, \
                    ndshm_errname(th_rc_), ndshm_last_detail(), ndshm_errname(want));             \
            th_current_ok = 0;                                                                    \
        }                                                                                         \
    } while (0)

/* CHECK that this thread's failure detail mentions `needle`. */
#define CHECK_DETAIL(needle) CHECK(strstr(ndshm_last_detail(), (needle)) != NULL)

/* The library's counters now. */
static inline ndshm_stats_t stats(void) {
    ndshm_stats_t s;
    ndshm_get_stats(&s);
    return s;
}

/* Seconds on the monotonic clock. */
static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* `bytes` of zeroed memory shared with children created by fork(), or NULL. */
static inline void *shared_mem(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Waits for child `pid` at most `limit` seconds, then kills it: a hang becomes a failure. */
static inline void wait_or_kill(pid_t pid, double limit) {
    int st;
    double t0 = now_s();
    while (pid > 0 && waitpid(pid, &st, WNOHANG) == 0) {
        if (now_s() - t0 > limit) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        usleep(2000);
    }
}

/* rmdir(dir) of a test's own directory, removing first the process tables (".ndshm-procs-*",
 * csrc/identity.c) that every process which opened a segment there left. */
static inline int rmdir_tables(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/.ndshm-procs-*", dir);
    if (system(cmd) != 0) return -1;
    return rmdir(dir);
}

#define SUMMARY() (printf("%d passed, %d failed\n", th_passed, th_failed), th_failed != 0)

#endif /* NDSHM_TESTHELPER_H */

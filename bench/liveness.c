/*
 * liveness.c -- what the process identity costs (csrc/identity.c): ns per liveness test of
 * another process's id (alive, dead, unknown), per self_key, per public ndshm_key_alive, and
 * ns per put + take pair of a queue (whose hot path must not test liveness at all).
 *
 * Built with the library's sources (it calls the hidden ndshm__ functions):
 *   cc -O2 -std=c11 -D_GNU_SOURCE -pthread -Icsrc bench/liveness.c csrc/(*).c -o liveness
 *   ./liveness [iterations] [--json]       (make bench-liveness)
 * -DPUT_TAKE_ONLY builds the put + take loop alone, against any version of the sources (to
 * compare with the library before process ids).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* This thread's CPU time (user and system): a loaded machine's preemptions do not count. */
static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* The best of 5 runs of `n` calls, in thread-CPU ns per call (the minimum is the cost). */
#define BEST_NS(n, body)                                              \
    ({                                                                \
        double best_ = 1e30;                                          \
        for (int r_ = 0; r_ < 5; r_++) {                              \
            double t0_ = now_ns();                                    \
            for (long i_ = 0; i_ < (n); i_++) { body; }               \
            double d_ = (now_ns() - t0_) / (double)(n);               \
            if (d_ < best_) best_ = d_;                               \
        }                                                             \
        best_;                                                        \
    })

static double put_take_ns(long n) {
    uint64_t bytes;
    if (ndshm_queue_ring_bytes(64, 64, &bytes) != 0) return -1;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, bytes) != 0) return -1;
    ndshm_queue_t *q = NULL;
    if (ndshm_queue_init_raw(mem, bytes, 64, 64) != 0 || ndshm_queue_open_raw(mem, bytes, &q) != 0) return -1;
    char msg[64] = {1}, out[64];
    int64_t shape[1] = {64};
    ndshm_qmsg_t m;
    volatile int bad = 0;
    double ns = BEST_NS(n, {
        if (ndshm_queue_put(q, msg, 64, "|u1", 1, shape, 0) != 0) bad = 1;
        if (ndshm_queue_take_copy(q, 0, &m, out, sizeof out) != 0) bad = 1;
    });
    ndshm_queue_close(q);
    free(mem);
    return bad ? -1 : ns;
}

#ifndef PUT_TAKE_ONLY
/* A child registered in `dir` that lives until `hold` gives it a byte (or dies at once with -1). */
static pid_t child(const char *dir, int hold, uint64_t *key) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t k = 0;
        if (ndshm_process_key(dir, &k) != 0) k = 0;
        ssize_t w = write(fds[1], &k, sizeof k);
        char c;
        if (hold >= 0) w = read(hold, &c, 1);
        _exit(w >= 0 ? 0 : 1);
    }
    if (read(fds[0], key, sizeof *key) != (ssize_t)sizeof *key) *key = 0;
    close(fds[0]);
    close(fds[1]);
    return pid;
}
#endif

int main(int argc, char **argv) {
    long n = argc > 1 && argv[1][0] != '-' ? atol(argv[1]) : 200000;
    int json = argc > 1 && strcmp(argv[argc - 1], "--json") == 0;
    if (n < 10) n = 10;
#ifdef PUT_TAKE_ONLY
    double pt = put_take_ns(n);
    if (json) printf("{\"put_take_ns\": %.1f}\n", pt);
    else printf("queue put + take_copy, 64 B, one thread (thread CPU): %.1f ns per pair\n", pt);
    return pt < 0;
#else
    char dir[64];
    snprintf(dir, sizeof dir, "/dev/shm/ndshm-bench-liveness-%d", (int)getpid());
    if (mkdir(dir, 0700) != 0) {
        perror(dir);
        return 1;
    }
    uint64_t me = 0;
    if (ndshm_process_key(dir, &me) != 0) {
        fprintf(stderr, "ndshm_process_key: %s\n", ndshm_last_detail());
        return 1;
    }
    int hold[2];
    if (pipe(hold) != 0) return 1;
    uint64_t live = 0, dead = 0;
    pid_t lp = child(dir, hold[0], &live);
    pid_t dp = child(dir, -1, &dead);
    waitpid(dp, NULL, 0);
    volatile int bad = 0;
    double self_ns = BEST_NS(n * 10, {
        if (ndshm__self_key() != me) bad = 1;
    });
    double alive_ns = BEST_NS(n, {
        if (ndshm__key_alive(live) != 1) bad = 1;
    });
    double dead_ns = BEST_NS(n, {
        if (ndshm__key_alive(dead) != 0) bad = 1;
    });
    long few = n / 20 > 10 ? n / 20 : 10;
    double unknown_ns = BEST_NS(few, {
        if (ndshm__key_alive(0x5eed5eed5eed5eedull) != 0) bad = 1;
    });
    double sys_ns = BEST_NS(n, {
        if (getppid() < 0) bad = 1;
    });
    double api_ns = BEST_NS(n, {
        if (ndshm_key_alive(dir, live) != 1) bad = 1;
    });
    double pt = put_take_ns(n);
    if (write(hold[1], "x", 1) != 1) bad = 1;
    waitpid(lp, NULL, 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) bad = 1;
    if (bad || pt < 0) {
        fprintf(stderr, "liveness: a call gave a wrong answer\n");
        return 1;
    }
    if (json) {
        printf("{\"self_key_ns\": %.2f, \"key_alive_alive_ns\": %.1f, \"key_alive_dead_ns\": %.1f, "
               "\"key_alive_unknown_ns\": %.1f, \"ndshm_key_alive_ns\": %.1f, \"getppid_ns\": %.1f, "
               "\"put_take_ns\": %.1f}\n",
               self_ns, alive_ns, dead_ns, unknown_ns, api_ns, sys_ns, pt);
    } else {
        printf("liveness test of another process's id (thread CPU, best of 5 x %ld calls):\n", n);
        printf("  alive (its entry's lock held: one F_OFD_GETLK)   %8.1f ns\n", alive_ns);
        printf("  dead  (its entry found, lock free)                %8.1f ns\n", dead_ns);
        printf("  never registered (a look for new tables too)      %8.1f ns\n", unknown_ns);
        printf("  public ndshm_key_alive(dir, id), alive            %8.1f ns\n", api_ns);
        printf("  self_key                                          %8.2f ns\n", self_ns);
        printf("  (a bare system call, getppid, for scale)          %8.1f ns\n", sys_ns);
        printf("queue put + take_copy, 64 B, one thread:           %8.1f ns per pair\n", pt);
    }
    return 0;
#endif
}

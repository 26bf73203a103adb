/*
 * handoff.c -- the queue's hand-off latency through the C API alone (no Python), beside a bare
 * futex wake-up: the floor the Python rows of bench_queue.py stand on.
 *
 *   cc -O2 -std=c11 -D_GNU_SOURCE -pthread -Icsrc bench/handoff.c <every .c file in csrc> -o handoff
 *   ./handoff [messages]
 *
 * A producer (CPU 0) and a consumer (CPU 1, forked) share one queue of 64-byte slots in
 * anonymous shared memory. Each message carries the producer's CLOCK_MONOTONIC time taken just
 * before ndshm_queue_put; the consumer subtracts it from the time it holds the message. Messages
 * are paced 1 ms apart (the consumer has gone to sleep on the futex) and 20 us apart (it is
 * still spinning). The bare futex row does the same with a counter and FUTEX_WAIT/FUTEX_WAKE.
 * Prints one JSON object: p50/p99 in microseconds for each.
 */
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ndshm.h"

#define MAXN 20000

typedef struct {
    _Atomic uint32_t seq;    /* the bare futex word */
    _Atomic uint64_t stamp;  /* its send time */
    double lat[MAXN];        /* the consumer's results, microseconds */
} shared_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static cpu_set_t cpus; /* the CPUs this program may use, read before any pinning */

static void pin(int which) {
    cpu_set_t one;
    if (CPU_COUNT(&cpus) < 2) return;
    int seen = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &cpus)) continue;
        if (seen++ == which) {
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            sched_setaffinity(0, sizeof one, &one);
            return;
        }
    }
}

static void pace(uint64_t gap_ns) {
    if (gap_ns >= 1000000) {
        struct timespec ts = {0, (long)gap_ns};
        nanosleep(&ts, NULL);
        return;
    }
    uint64_t end = now_ns() + gap_ns;
    while (now_ns() < end) {
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs n messages paced gap_ns apart; `queue` NULL means the bare futex. p50/p99 into out. */
static int run(ndshm_queue_t *queue, shared_t *sh, int n, uint64_t gap_ns, double out[2]) {
    atomic_store(&sh->seq, 0);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        pin(1);
        for (int i = 0; i < n; i++) {
            uint64_t sent;
            if (queue) {
                ndshm_qmsg_t m;
                if (ndshm_queue_take(queue, 10.0, &m) != 0) _exit(1);
                memcpy(&sent, m.data, sizeof sent);
                uint64_t t = now_ns();
                ndshm_queue_release(queue, &m);
                sh->lat[i] = (double)(t - sent) / 1e3;
            } else {
                uint32_t want = (uint32_t)i + 1;
                while (atomic_load(&sh->seq) < want)
                    syscall(SYS_futex, &sh->seq, FUTEX_WAIT, want - 1, NULL, NULL, 0);
                sh->lat[i] = (double)(now_ns() - atomic_load(&sh->stamp)) / 1e3;
            }
        }
        _exit(0);
    }
    pin(0);
    struct timespec settle = {0, 5000000};
    nanosleep(&settle, NULL);
    int64_t shape[1] = {8};
    for (int i = 0; i < n; i++) {
        pace(gap_ns);
        uint64_t msg[8] = {now_ns()};
        if (queue) {
            if (ndshm_queue_put(queue, msg, sizeof msg, "|u1", 1, shape, 10.0) != 0) break;
        } else {
            atomic_store(&sh->stamp, msg[0]);
            atomic_fetch_add(&sh->seq, 1);
            syscall(SYS_futex, &sh->seq, FUTEX_WAKE, 1, NULL, NULL, 0);
        }
    }
    int st = 0;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    qsort(sh->lat, (size_t)n, sizeof(double), cmp);
    out[0] = sh->lat[n / 2];
    out[1] = sh->lat[(n * 99) / 100];
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    if (n < 10 || n > MAXN) {
        fprintf(stderr, "messages must be 10..%d, not %s\n", MAXN, argv[1]);
        return 2;
    }
    if (sched_getaffinity(0, sizeof cpus, &cpus) != 0) CPU_ZERO(&cpus);
    shared_t *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t bytes = 0;
    if (sh == MAP_FAILED || ndshm_queue_ring_bytes(64, 64, &bytes) != 0) return 1;
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ndshm_queue_t *q = NULL;
    if (mem == MAP_FAILED || ndshm_queue_init_raw(mem, bytes, 64, 64) != 0 || ndshm_queue_open_raw(mem, bytes, &q)) {
        fprintf(stderr, "queue: %s\n", ndshm_last_detail());
        return 1;
    }
    double r[4][2];
    int asleep = n / 4 < 10 ? 10 : n / 4; /* 1 ms apart: fewer of them */
    if (run(q, sh, asleep, 1000000, r[0]) || run(q, sh, n, 20000, r[1]) || run(NULL, sh, asleep, 1000000, r[2]) ||
        run(NULL, sh, n, 20000, r[3])) {
        fprintf(stderr, "a run failed: %s\n", ndshm_last_detail());
        return 1;
    }
    printf("{\"queue_asleep\": [%.2f, %.2f], \"queue_awake\": [%.2f, %.2f], "
           "\"futex_asleep\": [%.2f, %.2f], \"futex_awake\": [%.2f, %.2f]}\n",
           r[0][0], r[0][1], r[1][0], r[1][1], r[2][0], r[2][1], r[3][0], r[3][1]);
    ndshm_queue_close(q);
    return 0;
}

/*
 * test_sync.c -- process-shared lock, event and barrier on zeroed 64-byte areas, across fork(),
 * including a lock whose owner is killed while holding it.
 */
#include "internal.h" /* ndshm__deadline */
#include "testhelper.h"

#include <float.h>
#include <math.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int wait_ok(pid_t pid) {
    int st;
    return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

TEST(lock_basics) {
    char *area = shared_mem(4096);
    CHECK_RC(ndshm_lock_acquire(NULL, 0), NDSHM_EINVAL);
    CHECK_RC(ndshm_lock_acquire(area + 4, 0), NDSHM_EINVAL);
    CHECK(ndshm_lock_state(area) == 0);
    CHECK_RC(ndshm_lock_release(area), NDSHM_EPERM);
    CHECK_DETAIL("is not held by any process");
    CHECK(strstr(ndshm_last_detail(), "pid 0") == NULL);
    CHECK_RC(ndshm_lock_acquire(area, 0), 0);
    CHECK(ndshm_lock_state(area) == 1);
    CHECK_RC(ndshm_lock_acquire(area, 0), NDSHM_EBUSY); /* not recursive */
    double t0 = now_s();
    CHECK_RC(ndshm_lock_acquire(area, 0.05), NDSHM_ETIMEDOUT);
    CHECK(now_s() - t0 >= 0.045);
    CHECK_RC(ndshm_lock_release(area), 0);
    CHECK(ndshm_lock_state(area) == 0);
    munmap(area, 4096);
}

TEST(lock_mutual_exclusion) {
    char *area = shared_mem(4096);
    volatile long *counter = (volatile long *)(area + 64);
    enum { K = 4, N = 20000 };
    pid_t pids[K];
    for (int k = 0; k < K; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            for (int i = 0; i < N; i++) {
                if (ndshm_lock_acquire(area, -1) != 0) _exit(2);
                long v = *counter;
                *counter = v + 1;
                if (ndshm_lock_release(area) != 0) _exit(3);
            }
            _exit(0);
        }
    }
    int ok = 1;
    for (int k = 0; k < K; k++) ok &= wait_ok(pids[k]);
    CHECK(ok);
    CHECK(*counter == (long)K * N);
    munmap(area, 4096);
}

TEST(lock_owner_killed) {
    char *area = shared_mem(4096);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (ndshm_lock_acquire(area, 0) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(3);
        pause();
        _exit(0);
    }
    char c;
    CHECK(read(fds[0], &c, 1) == 1);
    CHECK(ndshm_lock_state(area) == 2);
    CHECK_RC(ndshm_lock_release(area), NDSHM_EPERM);
    char held_by[64];
    snprintf(held_by, sizeof held_by, "but by pid %d", (int)pid);
    CHECK_DETAIL(held_by);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(ndshm_lock_state(area) == 3);
    double t0 = now_s();
    CHECK_RC(ndshm_lock_acquire(area, 2), NDSHM_EOWNERDEAD);
    CHECK_DETAIL("died");
    CHECK(now_s() - t0 < 1);
    CHECK(ndshm_lock_state(area) == 1);
    CHECK_RC(ndshm_lock_release(area), 0);
    /* a waiter already asleep when the owner dies gets the lock too */
    pid = fork();
    if (pid == 0) {
        if (ndshm_lock_acquire(area, 0) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(3);
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        kill(getpid(), SIGKILL);
        _exit(0);
    }
    CHECK(read(fds[0], &c, 1) == 1);
    CHECK_RC(ndshm_lock_acquire(area, 5), NDSHM_EOWNERDEAD);
    CHECK_RC(ndshm_lock_release(area), 0);
    waitpid(pid, NULL, 0);
    CHECK(ndshm_process_alive(pid, 0) == 0);
    CHECK(ndshm_process_alive(getpid(), 0) == 1);
    CHECK(ndshm_process_alive(getpid(), 1) == 0); /* the wrong start time: a reused pid */
    close(fds[0]);
    close(fds[1]);
    munmap(area, 4096);
}

TEST(event_across_processes) {
    char *area = shared_mem(4096);
    CHECK(ndshm_event_is_set(area) == 0);
    CHECK_RC(ndshm_event_wait(area, 0), NDSHM_ETIMEDOUT);
    CHECK_RC(ndshm_event_wait(area, 0.02), NDSHM_ETIMEDOUT);
    pid_t pid = fork();
    if (pid == 0) _exit(ndshm_event_wait(area, 5) == 0 ? 0 : 1);
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    CHECK_RC(ndshm_event_set(area), 0);
    CHECK(wait_ok(pid));
    CHECK(ndshm_event_is_set(area) == 1);
    CHECK_RC(ndshm_event_wait(area, 0), 0);
    CHECK_RC(ndshm_event_clear(area), 0);
    CHECK(ndshm_event_is_set(area) == 0);
    munmap(area, 4096);
}

/* 1 if the P indices at `got` are 0 .. P-1, each once. */
static int is_permutation(const _Atomic uint32_t *got, int P) {
    unsigned seen = 0;
    for (int k = 0; k < P; k++) {
        uint32_t i = atomic_load(&got[k]);
        if (i >= (uint32_t)P || (seen & (1u << i))) return 0;
        seen |= 1u << i;
    }
    return 1;
}

TEST(barrier_across_processes) {
    enum { P = 4, ROUNDS = 50 };
    char *area = shared_mem(4096);
    _Atomic int *seen = (_Atomic int *)(area + 64);
    /* got[r][w][k]: the index party k drew in round r at wait w (two waits a round) */
    _Atomic uint32_t(*got)[2][P] = (_Atomic uint32_t(*)[2][P])(area + 128);
    _Static_assert(128 + sizeof(uint32_t) * ROUNDS * 2 * P <= 4096, "indices fit");
    memset((void *)got, 0xff, sizeof(uint32_t) * ROUNDS * 2 * P);
    pid_t pids[P - 1];
    for (int k = 0; k < P - 1; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            for (int r = 0; r < ROUNDS; r++) {
                uint32_t idx;
                atomic_fetch_add(seen, 1);
                if (ndshm_barrier_wait(area, P, 5, &idx) != 0) _exit(2);
                atomic_store(&got[r][0][k], idx);
                if (atomic_load(seen) < (r + 1) * P) _exit(3); /* everyone of this round arrived */
                if (ndshm_barrier_wait(area, P, 5, &idx) != 0) _exit(4);
                atomic_store(&got[r][1][k], idx);
            }
            _exit(0);
        }
    }
    int ok = 1;
    for (int r = 0; r < ROUNDS; r++) {
        uint32_t idx = 99;
        atomic_fetch_add(seen, 1);
        if (ndshm_barrier_wait(area, P, 5, &idx) != 0) ok = 0;
        atomic_store(&got[r][0][P - 1], idx);
        idx = 99;
        if (ndshm_barrier_wait(area, P, 5, &idx) != 0) ok = 0;
        atomic_store(&got[r][1][P - 1], idx);
    }
    for (int k = 0; k < P - 1; k++) ok &= wait_ok(pids[k]);
    CHECK(ok);
    /* every wait of every round handed out each arrival index once */
    int bad = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int w = 0; w < 2; w++)
            if (!is_permutation(got[r][w], P)) {
                if (bad++ == 0)
                    fprintf(stderr, "  round %d wait %d indices %u %u %u %u\n", r, w, atomic_load(&got[r][w][0]),
                            atomic_load(&got[r][w][1]), atomic_load(&got[r][w][2]), atomic_load(&got[r][w][3]));
            }
    CHECK(bad == 0);
    uint32_t idx;
    CHECK_RC(ndshm_barrier_wait(area, P + 1, 0, &idx), NDSHM_EINVAL);
    CHECK_RC(ndshm_barrier_wait(area, 0, 0, &idx), NDSHM_EINVAL);
    munmap(area, 4096);
}

TEST(barrier_timeout_breaks) {
    char *area = shared_mem(4096);
    pid_t pid = fork();
    if (pid == 0) {
        uint32_t idx;
        _exit(ndshm_barrier_wait(area, 3, 10, &idx) == NDSHM_EBROKEN ? 0 : 1);
    }
    uint32_t idx;
    double t0 = now_s();
    CHECK_RC(ndshm_barrier_wait(area, 3, 0.1, &idx), NDSHM_EBROKEN); /* the third party never comes */
    CHECK(now_s() - t0 < 2);
    CHECK(wait_ok(pid)); /* the other waiter was released, broken */
    CHECK_RC(ndshm_barrier_wait(area, 3, 0, &idx), NDSHM_EBROKEN);
    CHECK_RC(ndshm_barrier_reset(area), 0);
    int broken = 1;
    CHECK_RC(ndshm_barrier_state(area, NULL, NULL, &broken), 0);
    CHECK(broken == 0);
    CHECK_RC(ndshm_barrier_abort(area), 0);
    CHECK_RC(ndshm_barrier_wait(area, 3, 1, &idx), NDSHM_EBROKEN);
    munmap(area, 4096);
}

TEST(barrier_sliced_wait_resumes_and_leave_breaks) {
    char *area = shared_mem(4096);
    uint64_t ticket = 0;
    uint32_t idx = 99, waiting = 9;
    int broken = 1;
    /* bad arguments: nothing arrives */
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0.05, NULL, &idx), NDSHM_EINVAL);
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0, &ticket, &idx), NDSHM_EINVAL);
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, NAN, &ticket, &idx), NDSHM_EINVAL);
    CHECK_RC(ndshm_barrier_state(area, NULL, &waiting, NULL), 0);
    CHECK(waiting == 0);
    /* each slice comes back without touching the barrier; a resumed wait is the same arrival */
    double t0 = now_s();
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0.05, &ticket, &idx), NDSHM_ETIMEDOUT);
    CHECK(now_s() - t0 >= 0.045 && now_s() - t0 < 2);
    CHECK(ticket != 0);
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0.05, &ticket, &idx), NDSHM_ETIMEDOUT);
    CHECK_RC(ndshm_barrier_state(area, NULL, &waiting, &broken), 0);
    CHECK(waiting == 1 && broken == 0);
    uint64_t forged = 0x1234; /* not a ticket */
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0.05, &forged, &idx), NDSHM_EINVAL);
    forged = ((uint64_t)1 << 63) | 7; /* index 7 of 2 parties */
    CHECK_RC(ndshm_barrier_wait_sliced(area, 2, -1, 0.05, &forged, &idx), NDSHM_EINVAL);
    CHECK_DETAIL("ticket");
    pid_t pid = fork();
    if (pid == 0) {
        uint32_t i;
        _exit(ndshm_barrier_wait(area, 2, 5, &i) == 0 && i == 1 ? 0 : 1);
    }
    int rc;
    while ((rc = ndshm_barrier_wait_sliced(area, 2, 5, 0.05, &ticket, &idx)) == NDSHM_ETIMEDOUT) {
    }
    CHECK_RC(rc, 0);
    CHECK(idx == 0 && ticket == 0);
    CHECK(wait_ok(pid));
    CHECK_RC(ndshm_barrier_state(area, NULL, &waiting, &broken), 0);
    CHECK(waiting == 0 && broken == 0);
    /* a party that stops waiting breaks the barrier for the others (a barrier of 3 this time) */
    char *b3 = area + 64;
    pid = fork();
    if (pid == 0) {
        uint32_t i;
        _exit(ndshm_barrier_wait(b3, 3, 10, &i) == NDSHM_EBROKEN ? 0 : 1);
    }
    waiting = 0;
    for (int k = 0; k < 5000 && waiting != 1; k++) {
        usleep(1000);
        ndshm_barrier_state(b3, NULL, &waiting, NULL);
    }
    CHECK_RC(ndshm_barrier_wait_sliced(b3, 3, -1, 0.02, &ticket, &idx), NDSHM_ETIMEDOUT);
    CHECK_RC(ndshm_barrier_state(b3, NULL, &waiting, NULL), 0);
    CHECK(waiting == 2);
    t0 = now_s();
    CHECK_RC(ndshm_barrier_leave(b3, ticket), NDSHM_EBROKEN);
    CHECK_DETAIL("stopped waiting");
    CHECK(wait_ok(pid)); /* released at once, broken */
    CHECK(now_s() - t0 < 5);
    CHECK_RC(ndshm_barrier_state(b3, NULL, NULL, &broken), 0);
    CHECK(broken == 1);
    CHECK_RC(ndshm_barrier_leave(b3, 0), 0); /* no ticket: nothing to undo */
    CHECK_RC(ndshm_barrier_leave(b3, 1), NDSHM_EINVAL);
    /* a ticket whose barrier tripped (or was reset) since is not held against the next round */
    CHECK_RC(ndshm_barrier_reset(b3), 0);
    CHECK_RC(ndshm_barrier_leave(b3, ticket), 0);
    CHECK_RC(ndshm_barrier_state(b3, NULL, NULL, &broken), 0);
    CHECK(broken == 0);
    /* the timeout (not a slice) running out breaks it, as ndshm_barrier_wait does */
    ticket = 0;
    t0 = now_s();
    CHECK_RC(ndshm_barrier_wait_sliced(b3, 3, 0.02, 1, &ticket, &idx), NDSHM_EBROKEN);
    CHECK_DETAIL("before the timeout");
    CHECK(ticket == 0 && now_s() - t0 < 0.5);
    munmap(area, 4096);
}

/* Runs one call on `area` in a fork()ed child, so a call that never returns (a NaN timeout
 * used to wait for ever) is killed after `limit` s: returns its code, or 1 if it was killed. */
enum { OP_LOCK, OP_EVENT, OP_BARRIER };

static int bounded(int op, void *area, double timeout, double limit, char *detail, size_t detail_len) {
    struct shared {
        int done, rc;
        char detail[200];
    } *o = shared_mem(sizeof *o);
    if (o == NULL) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        uint32_t idx;
        int rc = op == OP_LOCK ? ndshm_lock_acquire(area, timeout)
               : op == OP_EVENT ? ndshm_event_wait(area, timeout)
                                : ndshm_barrier_wait(area, 2, timeout, &idx);
        o->rc = rc;
        snprintf(o->detail, sizeof o->detail, "%s", ndshm_last_detail());
        o->done = 1;
        _exit(0);
    }
    wait_or_kill(pid, limit);
    int rc = o->done ? o->rc : 1;
    snprintf(detail, detail_len, "%s", o->done ? o->detail : "killed: still waiting");
    munmap(o, sizeof *o);
    return rc;
}

TEST(nan_timeouts_are_refused) {
    char *area = shared_mem(4096);
    char *lock = area, *event = area + 64, *barrier = area + 128;
    char detail[200];
    /* the lock held by a live process, the event unset, the barrier one party short: each
     * would wait, and a NaN deadline never comes */
    int held[2], go[2];
    CHECK(pipe(held) == 0 && pipe(go) == 0);
    pid_t holder = fork();
    if (holder == 0) {
        char c;
        if (ndshm_lock_acquire(lock, 1) != 0) _exit(1);
        if (write(held[1], "x", 1) != 1 || read(go[0], &c, 1) != 1) _exit(2);
        _exit(ndshm_lock_release(lock) == 0 ? 0 : 3);
    }
    char c;
    CHECK(read(held[0], &c, 1) == 1);
    const int ops[] = {OP_LOCK, OP_EVENT, OP_BARRIER};
    const char *names[] = {"ndshm_lock_acquire", "ndshm_event_wait", "ndshm_barrier_wait"};
    for (int k = 0; k < 3; k++) {
        void *a = ops[k] == OP_LOCK ? lock : ops[k] == OP_EVENT ? event : barrier;
        int rc = bounded(ops[k], a, NAN, 1.0, detail, sizeof detail);
        if (rc != NDSHM_EINVAL || strstr(detail, "timeout nan is not a number") == NULL ||
            strstr(detail, names[k]) == NULL) {
            fprintf(stderr, "  %s(NaN) returned %s (%s)\n", names[k], rc == 1 ? "nothing" : ndshm_errname(rc), detail);
            th_current_ok = 0;
        }
    }
    uint32_t waiting = 9;
    int broken = 1;
    CHECK_RC(ndshm_barrier_state(barrier, NULL, &waiting, &broken), 0);
    CHECK(waiting == 0 && broken == 0); /* the refused call never arrived */
    CHECK(write(go[1], "x", 1) == 1);
    CHECK(wait_ok(holder));
    /* refused even when there is no need to wait */
    CHECK_RC(ndshm_lock_acquire(lock, NAN), NDSHM_EINVAL);
    CHECK_DETAIL("timeout nan");
    CHECK(ndshm_lock_state(lock) == 0); /* not taken */
    CHECK_RC(ndshm_event_set(event), 0);
    CHECK_RC(ndshm_event_wait(event, -NAN), NDSHM_EINVAL);
    CHECK_RC(ndshm_barrier_wait(barrier, 1, NAN, NULL), NDSHM_EINVAL);
    for (int i = 0; i < 2; i++) {
        close(held[i]);
        close(go[i]);
    }
    munmap(area, 4096);
}

TEST(infinite_timeouts_wait_for_ever) {
    /* +inf, -inf, negative and huge timeouts have no deadline: nothing overflows into the past */
    CHECK(ndshm__deadline(INFINITY) == INT64_MAX);
    CHECK(ndshm__deadline(-INFINITY) == INT64_MAX);
    CHECK(ndshm__deadline(-1) == INT64_MAX);
    CHECK(ndshm__deadline(1e300) == INT64_MAX);
    CHECK(ndshm__deadline(DBL_MAX) == INT64_MAX);
    int64_t now = ndshm__now_ns(), d = ndshm__deadline(0.5);
    CHECK(d >= now + 490000000 && d < now + 600000000);
    d = ndshm__deadline(1e8); /* ~3 years: a real deadline, far off */
    CHECK(d > now && d != INT64_MAX);
    char *area = shared_mem(4096);
    char *lock = area, *event = area + 64, *barrier = area + 128;
    const double forever[] = {INFINITY, -INFINITY, -1};
    for (int k = 0; k < 3; k++) {
        /* a lock released, an event set, a barrier joined 50 ms later */
        pid_t pid = fork();
        if (pid == 0) {
            if (ndshm_lock_acquire(lock, 1) != 0) _exit(1);
            usleep(100000);
            if (ndshm_lock_release(lock) != 0) _exit(2);
            usleep(50000);
            if (ndshm_event_set(event) != 0) _exit(3);
            usleep(50000);
            _exit(ndshm_barrier_wait(barrier, 2, 5, NULL) == 0 ? 0 : 4);
        }
        while (ndshm_lock_state(lock) != 2) usleep(1000);
        double t0 = now_s();
        CHECK_RC(ndshm_lock_acquire(lock, forever[k]), 0);
        CHECK_RC(ndshm_event_wait(event, forever[k]), 0);
        CHECK_RC(ndshm_barrier_wait(barrier, 2, forever[k], NULL), 0);
        double dt = now_s() - t0;
        CHECK(dt >= 0.05 && dt < 5);
        CHECK_RC(ndshm_lock_release(lock), 0);
        CHECK_RC(ndshm_event_clear(event), 0);
        CHECK(wait_ok(pid));
    }
    munmap(area, 4096);
}

int main(void) {
    RUN(lock_basics);
    RUN(lock_mutual_exclusion);
    RUN(lock_owner_killed);
    RUN(event_across_processes);
    RUN(barrier_across_processes);
    RUN(barrier_timeout_breaks);
    RUN(barrier_sliced_wait_resumes_and_leave_breaks);
    RUN(nan_timeouts_are_refused);
    RUN(infinite_timeouts_wait_for_ever);
    return SUMMARY();
}

/*
 * test_sync.c -- process-shared lock, event and barrier on zeroed 64-byte areas, across fork(),
 * including a lock whose owner is killed while holding it.
 */
#include "testhelper.h"

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

TEST(barrier_across_processes) {
    char *area = shared_mem(4096);
    _Atomic int *seen = (_Atomic int *)(area + 64);
    enum { P = 4, ROUNDS = 50 };
    pid_t pids[P - 1];
    for (int k = 0; k < P - 1; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            for (int r = 0; r < ROUNDS; r++) {
                uint32_t idx;
                atomic_fetch_add(seen, 1);
                if (ndshm_barrier_wait(area, P, 5, &idx) != 0 || idx >= P) _exit(2);
                if (atomic_load(seen) < (r + 1) * P) _exit(3); /* everyone of this round arrived */
                if (ndshm_barrier_wait(area, P, 5, &idx) != 0) _exit(4);
            }
            _exit(0);
        }
    }
    int ok = 1, indices = 0;
    for (int r = 0; r < ROUNDS; r++) {
        uint32_t idx = 99;
        atomic_fetch_add(seen, 1);
        if (ndshm_barrier_wait(area, P, 5, &idx) != 0) ok = 0;
        indices |= 1 << idx;
        if (ndshm_barrier_wait(area, P, 5, &idx) != 0) ok = 0;
    }
    for (int k = 0; k < P - 1; k++) ok &= wait_ok(pids[k]);
    CHECK(ok);
    CHECK(indices != 0);
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

int main(void) {
    RUN(lock_basics);
    RUN(lock_mutual_exclusion);
    RUN(lock_owner_killed);
    RUN(event_across_processes);
    RUN(barrier_across_processes);
    RUN(barrier_timeout_breaks);
    return SUMMARY();
}

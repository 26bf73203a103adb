/*
 * sync.c -- process-shared lock, event and barrier on 64-byte areas of shared memory, and the
 * helpers the queue shares with them: process identity and liveness, deadlines, futexes.
 *
 * Every object's all-zero state is valid (unlocked, unset, uninitialised barrier), so the
 * zeroed sync areas in every segment header need no initialisation.
 *
 * Owners are process ids (identity.c): a lock's owner word holds its holder's id, and a waiter
 * asks the kernel, through the holder's entry in a process table, whether it still runs, in
 * whatever PID namespace it lives.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- same-namespace pids (ndshm_process_alive) --------------------------------------- */

/* Reads state and start time of `pid`; returns 0, or -1 if there is no such process. */
static int read_stat(int64_t pid, char *state, uint64_t *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL || p[1] != ' ') return -1;
    p += 2;
    *state = *p;
    /* field 3 is the state; field 22 the start time: skip 19 more fields */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

int ndshm_process_alive(int64_t pid, uint64_t start_time) {
    if (pid <= 0 || pid > INT_MAX) return 0;
    char state;
    uint64_t start;
    if (read_stat(pid, &state, &start) != 0) return 0;
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    return start_time == 0 || start == start_time;
}

/* ---- time and futexes -------------------------------------------------------------- */

int64_t ndshm__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ndshm__deadline(double timeout) {
    if (!(timeout >= 0)) return INT64_MAX; /* negative (or NaN, which callers refuse): forever */
    if (timeout > 1e9) return INT64_MAX;   /* ~31 years or +inf: forever, and no overflow */
    return ndshm__now_ns() + (int64_t)(timeout * 1e9);
}

int ndshm__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline, int64_t slice_ns) {
    int64_t now = ndshm__now_ns();
    if (deadline != INT64_MAX && now >= deadline) return ETIMEDOUT;
    int64_t wait = deadline == INT64_MAX ? INT64_MAX : deadline - now;
    if (slice_ns > 0 && slice_ns < wait) wait = slice_ns;
    struct timespec ts, *tsp = NULL;
    if (wait != INT64_MAX) {
        ts.tv_sec = wait / 1000000000;
        ts.tv_nsec = wait % 1000000000;
        tsp = &ts;
    }
    /* shared (not FUTEX_PRIVATE_FLAG): the word lives in memory other processes map */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (rc == 0) return 0;
    int err = errno;
    if (err == ETIMEDOUT) return deadline != INT64_MAX && ndshm__now_ns() >= deadline ? ETIMEDOUT : 0;
    return err == EAGAIN || err == EINTR ? 0 : err;
}

void ndshm__futex_wake(_Atomic uint32_t *word, int count) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* How long a waiter sleeps before it looks for a dead owner again. */
#define DEAD_CHECK_NS 20000000 /* 20 ms */

/* ---- lock -------------------------------------------------------------------------- */

typedef struct lock_area {
    _Atomic uint64_t owner;   /* ndshm__self_key() of the holder, 0 when free */
    _Atomic uint32_t seq;     /* futex word: bumped at every release */
    _Atomic uint32_t waiters; /* sleepers on seq */
} lock_area_t;

typedef struct event_area {
    _Atomic uint32_t flag;    /* futex word: 0 unset, 1 set */
    _Atomic uint32_t waiters;
} event_area_t;

typedef struct barrier_area {
    _Atomic uint32_t parties; /* 0: not yet used */
    _Atomic uint32_t gen;     /* futex word: bumped when the barrier trips, breaks or resets */
    _Atomic uint64_t state;   /* bit 63 broken, bits 32..62 generation, bits 0..31 arrived */
    _Atomic uint32_t waiters;
} barrier_area_t;

_Static_assert(sizeof(lock_area_t) <= NDSHM_SYNC_SIZE, "lock area too big");
_Static_assert(sizeof(event_area_t) <= NDSHM_SYNC_SIZE, "event area too big");
_Static_assert(sizeof(barrier_area_t) <= NDSHM_SYNC_SIZE, "barrier area too big");

static int check_area(const void *area, const char *fn) {
    if (area == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "%s: area is NULL", fn);
    if ((uintptr_t)area % 8 != 0)
        return ndshm__fail(NDSHM_EINVAL, 0, "%s: area %p is not 8-byte aligned", fn, area);
    return 0;
}

int ndshm_lock_acquire(void *area, double timeout) {
    int rc = check_area(area, "ndshm_lock_acquire");
    if (rc == 0) rc = ndshm__check_timeout(timeout, "ndshm_lock_acquire");
    if (rc) return rc;
    lock_area_t *l = area;
    uint64_t me = ndshm__self_key();
    int64_t deadline = -1;
    for (int spin = 0;; spin++) {
        uint64_t cur = atomic_load(&l->owner);
        if (cur == 0) {
            if (atomic_compare_exchange_strong(&l->owner, &cur, me)) return 0;
            continue;
        }
        if (spin < 64) {
            ndshm__pause();
            continue;
        }
        if (!ndshm__key_alive(cur)) {
            char who[96];
            ndshm__key_describe(cur, who, sizeof who); /* before the entry is reused */
            if (atomic_compare_exchange_strong(&l->owner, &cur, me))
                return ndshm__fail(NDSHM_EOWNERDEAD, 0, "lock %p: its owner %s died holding it; acquired", area, who);
            continue;
        }
        if (timeout == 0) {
            char who[96];
            ndshm__key_describe(cur, who, sizeof who);
            return ndshm__fail(NDSHM_EBUSY, 0, "lock %p is held by %s", area, who);
        }
        if (deadline < 0) deadline = ndshm__deadline(timeout);
        uint32_t seq = atomic_load(&l->seq);
        atomic_fetch_add(&l->waiters, 1);
        int w = 0;
        if (atomic_load(&l->owner) == cur) w = ndshm__futex_wait(&l->seq, seq, deadline, DEAD_CHECK_NS);
        atomic_fetch_sub(&l->waiters, 1);
        if (w == ETIMEDOUT) {
            char who[96];
            ndshm__key_describe(cur, who, sizeof who);
            return ndshm__fail(NDSHM_ETIMEDOUT, 0, "lock %p: still held by %s after %g s", area, who, timeout);
        }
    }
}

int ndshm_lock_release(void *area) {
    int rc = check_area(area, "ndshm_lock_release");
    if (rc) return rc;
    lock_area_t *l = area;
    uint64_t me = ndshm__self_key(), cur = me;
    if (!atomic_compare_exchange_strong(&l->owner, &cur, 0)) {
        if (cur == 0)
            return ndshm__fail(NDSHM_EPERM, 0, "lock %p is not held by any process: pid %lld cannot release it",
                               area, (long long)getpid());
        char who[96];
        ndshm__key_describe(cur, who, sizeof who);
        return ndshm__fail(NDSHM_EPERM, 0, "lock %p is not held by this process (pid %lld) but by %s", area,
                           (long long)getpid(), who);
    }
    atomic_fetch_add(&l->seq, 1);
    if (atomic_load(&l->waiters) != 0) ndshm__futex_wake(&l->seq, 1);
    return 0;
}

int ndshm_lock_state(void *area) {
    int rc = check_area(area, "ndshm_lock_state");
    if (rc) return rc;
    uint64_t cur = atomic_load(&((lock_area_t *)area)->owner);
    if (cur == 0) return 0;
    if (cur == ndshm__self_key()) return 1;
    return ndshm__key_alive(cur) ? 2 : 3;
}

/* ---- event ------------------------------------------------------------------------- */

int ndshm_event_set(void *area) {
    int rc = check_area(area, "ndshm_event_set");
    if (rc) return rc;
    event_area_t *e = area;
    atomic_store(&e->flag, 1);
    if (atomic_load(&e->waiters) != 0) ndshm__futex_wake(&e->flag, INT_MAX);
    return 0;
}

int ndshm_event_clear(void *area) {
    int rc = check_area(area, "ndshm_event_clear");
    if (rc) return rc;
    atomic_store(&((event_area_t *)area)->flag, 0);
    return 0;
}

int ndshm_event_is_set(void *area) {
    int rc = check_area(area, "ndshm_event_is_set");
    if (rc) return rc;
    return atomic_load(&((event_area_t *)area)->flag) != 0;
}

int ndshm_event_wait(void *area, double timeout) {
    int rc = check_area(area, "ndshm_event_wait");
    if (rc == 0) rc = ndshm__check_timeout(timeout, "ndshm_event_wait");
    if (rc) return rc;
    event_area_t *e = area;
    for (int spin = 0; spin < 64; spin++) {
        if (atomic_load(&e->flag)) return 0;
        ndshm__pause();
    }
    int64_t deadline = ndshm__deadline(timeout);
    for (;;) {
        if (atomic_load(&e->flag)) return 0;
        atomic_fetch_add(&e->waiters, 1);
        int w = ndshm__futex_wait(&e->flag, 0, deadline, 0);
        atomic_fetch_sub(&e->waiters, 1);
        if (w == ETIMEDOUT) {
            if (atomic_load(&e->flag)) return 0;
            return ndshm__fail(NDSHM_ETIMEDOUT, 0, "event %p: not set within %g s", area, timeout);
        }
    }
}

/* ---- barrier ----------------------------------------------------------------------- */

#define B_BROKEN ((uint64_t)1 << 63)
#define B_GEN(s) (((s) >> 32) & 0x7fffffffu)
#define B_COUNT(s) ((uint32_t)(s))
#define B_MAKE(gen, count) ((((uint64_t)(gen) & 0x7fffffffu) << 32) | (uint32_t)(count))

static void barrier_bump(barrier_area_t *b) {
    atomic_fetch_add(&b->gen, 1);
    if (atomic_load(&b->waiters) != 0) ndshm__futex_wake(&b->gen, INT_MAX);
}

int ndshm_barrier_abort(void *area) {
    int rc = check_area(area, "ndshm_barrier_abort");
    if (rc) return rc;
    barrier_area_t *b = area;
    atomic_fetch_or(&b->state, B_BROKEN);
    barrier_bump(b);
    return 0;
}

int ndshm_barrier_reset(void *area) {
    int rc = check_area(area, "ndshm_barrier_reset");
    if (rc) return rc;
    barrier_area_t *b = area;
    uint64_t s = atomic_load(&b->state);
    while (!atomic_compare_exchange_weak(&b->state, &s, B_MAKE(B_GEN(s) + 1, 0))) {
    }
    barrier_bump(b);
    return 0;
}

int ndshm_barrier_state(void *area, uint32_t *parties, uint32_t *waiting, int *broken) {
    int rc = check_area(area, "ndshm_barrier_state");
    if (rc) return rc;
    barrier_area_t *b = area;
    uint64_t s = atomic_load(&b->state);
    if (parties) *parties = atomic_load(&b->parties);
    if (waiting) *waiting = B_COUNT(s);
    if (broken) *broken = (s & B_BROKEN) != 0;
    return 0;
}

/* A ticket: bit 63 set, the generation of the arrival in bits 32..62, its index in bits 0..31. */
#define B_TICKET(gen, idx) (((uint64_t)1 << 63) | B_MAKE(gen, idx))

/* Arrives (*ticket 0) or resumes the wait of the arrival in *ticket. With slice_ns > 0 it comes
 * back after slice_ns with NDSHM_ETIMEDOUT and *ticket set, unless the deadline of `timeout`
 * comes first (which breaks the barrier). *ticket is 0 after every other return. */
static int barrier_wait(void *area, uint32_t parties, double timeout, int64_t slice_ns, uint64_t *ticket,
                        uint32_t *index, const char *fn) {
    int rc = check_area(area, fn);
    if (rc == 0) rc = ndshm__check_timeout(timeout, fn); /* before arriving */
    if (rc) return rc;
    if (parties == 0 || parties > (1u << 20))
        return ndshm__fail(NDSHM_EINVAL, 0, "barrier parties %u is not between 1 and %u", parties, 1u << 20);
    barrier_area_t *b = area;
    uint32_t p = 0;
    if (!atomic_compare_exchange_strong(&b->parties, &p, parties) && p != parties)
        return ndshm__fail(NDSHM_EINVAL, 0, "barrier %p has %u parties, not %u", area, p, parties);
    int64_t deadline = ndshm__deadline(timeout), until = deadline;
    if (slice_ns > 0) {
        int64_t now = ndshm__now_ns();
        if (deadline - now > slice_ns) until = now + slice_ns;
    }
    uint64_t s, mygen;
    uint32_t idx;
    if (*ticket != 0) {
        if (!(*ticket >> 63) || B_COUNT(*ticket) >= parties)
            return ndshm__fail(NDSHM_EINVAL, 0, "barrier %p: ticket 0x%llx was not stored by %s", area,
                               (unsigned long long)*ticket, fn);
        mygen = B_GEN(*ticket);
        idx = B_COUNT(*ticket);
        *ticket = 0;
    } else {
        s = atomic_load(&b->state);
        for (;;) {
            if (s & B_BROKEN) return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p is broken", area);
            idx = B_COUNT(s);
            if (idx + 1 == parties) {
                if (atomic_compare_exchange_weak(&b->state, &s, B_MAKE(B_GEN(s) + 1, 0))) {
                    barrier_bump(b);
                    if (index) *index = idx;
                    return 0;
                }
            } else if (atomic_compare_exchange_weak(&b->state, &s, s + 1)) {
                mygen = B_GEN(s);
                break;
            }
        }
    }
    for (;;) {
        uint32_t g = atomic_load(&b->gen);
        s = atomic_load(&b->state);
        if (B_GEN(s) != mygen) { /* tripped (or reset, which releases the waiters too) */
            if (index) *index = idx;
            return 0;
        }
        if (s & B_BROKEN) return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p is broken", area);
        atomic_fetch_add(&b->waiters, 1);
        int w = ndshm__futex_wait(&b->gen, g, until, 0);
        atomic_fetch_sub(&b->waiters, 1);
        if (w == ETIMEDOUT) {
            s = atomic_load(&b->state);
            if (B_GEN(s) != mygen) continue; /* tripped just now */
            if (until != deadline) {         /* the slice ran out, not the timeout */
                *ticket = B_TICKET(mygen, idx);
                return ndshm__fail(NDSHM_ETIMEDOUT, 0, "barrier %p: still waiting (%u of %u parties arrived)", area,
                                   B_COUNT(s), parties);
            }
            atomic_fetch_or(&b->state, B_BROKEN);
            barrier_bump(b);
            if (slice_ns > 0)
                return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p: %u of %u parties arrived before the timeout; broken",
                                   area, B_COUNT(s), parties);
            return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p: %u of %u parties arrived within %g s; broken", area,
                               B_COUNT(s), parties, timeout);
        }
    }
}

int ndshm_barrier_wait(void *area, uint32_t parties, double timeout, uint32_t *index) {
    uint64_t ticket = 0;
    return barrier_wait(area, parties, timeout, 0, &ticket, index, "ndshm_barrier_wait");
}

int ndshm_barrier_wait_sliced(void *area, uint32_t parties, double timeout, double slice, uint64_t *ticket,
                              uint32_t *index) {
    if (ticket == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_barrier_wait_sliced: ticket is NULL");
    if (!(slice > 0) || slice > 1e9)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_barrier_wait_sliced: slice %g is not between 0 and 1e9 s", slice);
    return barrier_wait(area, parties, timeout, (int64_t)(slice * 1e9) + 1, ticket, index,
                        "ndshm_barrier_wait_sliced");
}

int ndshm_barrier_leave(void *area, uint64_t ticket) {
    int rc = check_area(area, "ndshm_barrier_leave");
    if (rc || ticket == 0) return rc;
    if (!(ticket >> 63))
        return ndshm__fail(NDSHM_EINVAL, 0, "barrier %p: ticket 0x%llx was not stored by ndshm_barrier_wait_sliced",
                           area, (unsigned long long)ticket);
    barrier_area_t *b = area;
    uint64_t s = atomic_load(&b->state);
    for (;;) {
        if (B_GEN(s) != B_GEN(ticket)) return 0; /* it tripped after all: the caller passed */
        if (s & B_BROKEN) return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p is broken", area);
        if (atomic_compare_exchange_weak(&b->state, &s, s | B_BROKEN)) break;
    }
    barrier_bump(b);
    return ndshm__fail(NDSHM_EBROKEN, 0, "barrier %p: a party stopped waiting; broken", area);
}

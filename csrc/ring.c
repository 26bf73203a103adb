/*
 * ring.c -- the cold half of what the queue and broadcast rings share (ring.h has the contract
 * and the hot, inline half).
 */
#include "ring.h"

#include <errno.h>

/* ---- waiting ------------------------------------------------------------------------- */

/* retry_expired's look at the clock (every 1024th retry). */
bool ndshm__ring_retry_clock(ndshm__ring_waiter_t *w) {
    int64_t now = ndshm__now_ns();
    int64_t d = ndshm__ring_waiter_deadline(w, now);
    return d != INT64_MAX && now >= d;
}

/* ndshm__ring_wait past its spinning fast path: reads the clock, spins on until spin_until,
 * then sleeps one slice at most. */
int ndshm__ring_wait_clock(ndshm__ring_waiter_t *w, _Atomic uint32_t *word, _Atomic uint32_t *waiters,
                           uint32_t seen) {
    int64_t now = ndshm__now_ns();
    int64_t d = ndshm__ring_waiter_deadline(w, now);
    if (now >= d) return ETIMEDOUT;
    if (now < w->spin_until) {
        ndshm__pause();
        return 0;
    }
    w->spin_until = 0; /* spinning is over: every later call reads the clock and sleeps */
    atomic_fetch_add(waiters, 1);
    int rc = ndshm__futex_wait(word, seen, d, NDSHM__RING_SLICE_NS);
    atomic_fetch_sub(waiters, 1);
    return rc == ETIMEDOUT ? ETIMEDOUT : 0;
}

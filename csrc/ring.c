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

/* ---- claim records ------------------------------------------------------------------- */

bool ndshm__ring_part_take_dead(ndshm__ring_part_t *parts, unsigned n, uint64_t me, uint32_t *out) {
    for (unsigned idx = 0; idx < n; idx++) {
        uint64_t cur = atomic_load(&parts[idx].owner);
        if (cur != 0 && cur != me && !ndshm__key_alive(cur) &&
            atomic_compare_exchange_strong(&parts[idx].owner, &cur, me)) {
            atomic_store(&parts[idx].intent, 0);
            *out = idx;
            return true;
        }
    }
    return false;
}

bool ndshm__ring_intent_alive(ndshm__ring_part_t *parts, unsigned n, uint64_t want) {
    for (unsigned i = 0; i < n; i++) {
        if (atomic_load(&parts[i].intent) != want) continue;
        uint64_t owner = atomic_load(&parts[i].owner);
        if (owner != 0 && ndshm__key_alive(owner) && atomic_load(&parts[i].intent) == want) return true;
    }
    return false;
}

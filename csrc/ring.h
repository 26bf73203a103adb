/*
 * ring.h -- what the two rings of slots in shared memory share: the MPMC queue (queue.c) and the
 * publish-subscribe broadcast (broadcast.c). Each file keeps its own header, slot protocol and
 * error texts; here are the pieces that are the same logic in both:
 *
 *   waiting      a waiter that spins, then sleeps on a futex word in slices, up to a deadline;
 *                wake(), the other side of it.
 *   claims       the table of claim records {owner, intent} a claimer holds from before its
 *                CAS on the ring until it finishes, so that others can tell a slow claimer
 *                from a dead one.
 *   messages     the descriptor of a message in its slot header (nbytes, typestr, ndim,
 *                shape): its checks, writing it at publish, reading it at take (never
 *                trusted), and the ndshm_qmsg_t states (loaned 1, taken 2).
 *
 *   pins         a publisher that still references a loan's memory after publishing it pins
 *                the slot: no publisher reuses the slot until it unpins or dies.
 *
 *   geometry     the header fields both rings start with (magic, version, sizes), the rings'
 *                magics and versions, the ring's size, its initialisation and validation at open
 *                (never trusting the ring), pre-faulting, the named segment that holds a ring
 *                (one create/attach with the same checks for both), and reading a ring's header
 *                from its file for listings (ndshm_ring_read_header).
 *
 * Hot helpers are static inline (the queue's put/take path calls them on every message); the
 * cold ones live in ring.c, hidden like every ndshm__ internal.
 */
#ifndef NDSHM_RING_H
#define NDSHM_RING_H

#include "internal.h"

#include <limits.h>
#include <string.h>

enum {
    NDSHM__RING_SPIN_NS = 100000,        /* spin this long before sleeping: a futex wake-up costs ~12 us
                                            one way, a spinning waiter sees a hand-off in < 1 us */
    NDSHM__RING_SLICE_NS = 20000000,     /* sleep at most this long between dead-claimer checks */
    NDSHM__RING_DEAD_CHECK_NS = 20000000 /* a claim unfinished this long is checked */
};

/* ---- waiting ------------------------------------------------------------------------- */

/* One call's wait for progress on a ring, set up by ndshm__ring_waiter_init. The deadline and
 * the end of the spinning phase are fixed at the first look at the clock (by retry_expired or
 * wait, whichever comes first), so a call that never waits never reads the clock. */
typedef struct ndshm__ring_waiter {
    double timeout;
    int64_t deadline, spin_until; /* -1 until the first look at the clock; spin_until 0: spinning is over */
    unsigned looks, retries;
    _Atomic uint32_t *intr; /* the handle's interrupt flag (NULL: none): once set, waits end as timed out */
} ndshm__ring_waiter_t;

static inline void ndshm__ring_waiter_init(ndshm__ring_waiter_t *w, double timeout) {
    w->timeout = timeout;
    w->deadline = -1;
    w->spin_until = -1;
    w->looks = 0;
    w->retries = 0;
    w->intr = NULL;
}

/* The waiter's deadline (CLOCK_MONOTONIC ns, INT64_MAX for none), fixed at the first call with
 * `now`: a timeout of 0 gives `now` itself. */
static inline int64_t ndshm__ring_waiter_deadline(ndshm__ring_waiter_t *w, int64_t now) {
    if (w->deadline < 0) {
        w->deadline = w->timeout == 0 ? now : ndshm__deadline(w->timeout);
        w->spin_until = w->deadline - now < NDSHM__RING_SPIN_NS ? w->deadline : now + NDSHM__RING_SPIN_NS;
    }
    return w->deadline;
}

NDSHM_HIDDEN bool ndshm__ring_retry_clock(ndshm__ring_waiter_t *w);

/* For a retry after a lost race or a stale read of the ring, which means somebody else made
 * progress. Only a writer that keeps corrupting the ring could make those go on for ever, so
 * every 1024th retry looks at the clock (off the hot path: a first look that succeeds never
 * gets here) and gives up at the deadline; a timeout of 0 gives up at the first such look. */
static inline bool ndshm__ring_retry_expired(ndshm__ring_waiter_t *w) {
    if ((++w->retries & 1023) != 0 || w->timeout < 0) return false;
    return ndshm__ring_retry_clock(w);
}

NDSHM_HIDDEN int ndshm__ring_wait_clock(ndshm__ring_waiter_t *w, _Atomic uint32_t *word, _Atomic uint32_t *waiters,
                                        uint32_t seen);

/* Waits for progress after the caller saw `seen` in `word`. Returns 0 to retry, or ETIMEDOUT.
 * Spins (a pause between looks at the ring, the clock read every 8th look) for
 * NDSHM__RING_SPIN_NS, then sleeps on the futex in slices of NDSHM__RING_SLICE_NS (so the caller
 * can look for dead claimers); a waker calls futex_wake only when someone sleeps (`waiters`).
 * Never called with a timeout of 0 (the caller gives up at once instead). */
static inline int ndshm__ring_wait(ndshm__ring_waiter_t *w, _Atomic uint32_t *word, _Atomic uint32_t *waiters,
                                   uint32_t seen) {
    if (w->deadline >= 0 && (++w->looks & 7) != 0 && w->spin_until > 0) {
        ndshm__pause();
        return 0;
    }
    return ndshm__ring_wait_clock(w, word, waiters, seen);
}

/* Sleeps while `word` holds `seen` (the caller read it before finding nothing to do), counted in
 * `waiters`, for at most `timeout` seconds (< 0: no limit). Returns 0 once it differs,
 * ETIMEDOUT, or ECANCELED once `intr` (may be NULL) is set. */
NDSHM_HIDDEN int ndshm__ring_wait_word(_Atomic uint32_t *word, _Atomic uint32_t *waiters, uint32_t seen,
                                       double timeout, _Atomic uint32_t *intr);

/* Signals progress on `word` (a futex word that waiters sleep on), waking the sleepers only if
 * `waiters` counts some. */
static inline void ndshm__ring_wake(_Atomic uint32_t *word, _Atomic uint32_t *waiters) {
    atomic_fetch_add(word, 1);
    if (atomic_load(waiters) != 0) ndshm__futex_wake(word, INT_MAX);
}

/* ---- claim records ------------------------------------------------------------------- */

/* One claim record in a ring's header (the layout both rings store: two words, 16 bytes). */
typedef struct ndshm__ring_part {
    _Atomic uint64_t owner;  /* process key (ndshm__self_key), 0 when free */
    _Atomic uint64_t intent; /* what the owner claims, encoded by the ring so that 0 means none */
} ndshm__ring_part_t;

_Static_assert(sizeof(ndshm__ring_part_t) == 16, "claim record is not two words");

/* Takes a free record of parts[0, n) for `me`, looking from `start` on (wrapping): true with
 * its index in *out, false if none is free. */
static inline bool ndshm__ring_part_take_free(ndshm__ring_part_t *parts, unsigned n, unsigned start, uint64_t me,
                                              uint32_t *out) {
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (start + i) % n;
        uint64_t cur = atomic_load_explicit(&parts[idx].owner, memory_order_relaxed);
        if (cur == 0 && atomic_compare_exchange_strong(&parts[idx].owner, &cur, me)) {
            *out = idx;
            return true;
        }
    }
    return false;
}

/* When every record is taken: takes over, for `me`, the first record whose owner process is
 * dead (clearing its intent). true with its index in *out, false if every owner is alive. */
NDSHM_HIDDEN bool ndshm__ring_part_take_dead(ndshm__ring_part_t *parts, unsigned n, uint64_t me, uint32_t *out);

/* Gives record `idx` up: intent first, then the owner (release: the record's next owner sees
 * no stale intent). */
static inline void ndshm__ring_part_release(ndshm__ring_part_t *parts, uint32_t idx) {
    atomic_store(&parts[idx].intent, 0);
    atomic_store_explicit(&parts[idx].owner, 0, memory_order_release);
}

/* true if a record of parts[0, n) holds intent `want` for an owner process that still runs. */
NDSHM_HIDDEN bool ndshm__ring_intent_alive(ndshm__ring_part_t *parts, unsigned n, uint64_t want);

/* ---- messages ------------------------------------------------------------------------ */

/* A message's description, in each slot header right after the slot's 8-byte state word. */
typedef struct ndshm__ring_desc {
    uint64_t nbytes;
    uint32_t ndim;
    uint32_t pinned; /* 1 while the publisher pins the slot (see pins), on the state word's cache line */
    char typestr[NDSHM_TYPESTR_MAX]; /* zero-padded (bindings may compare it as words) */
    int64_t shape[NDSHM_MAXDIM];
} ndshm__ring_desc_t;

/* 0 if a message of `nbytes` fits the slots of `slot_bytes` of the ring `ring` ("queue",
 * "broadcast": the detail names it), has at most NDSHM_MAXDIM dimensions and a typestr (or
 * NULL) NUL-terminated within NDSHM_TYPESTR_MAX; else NDSHM_ETOOBIG or NDSHM_EINVAL.
 * (Out of line, like the next: inlined into put and publish they made loan+publish slower.) */
NDSHM_HIDDEN int ndshm__ring_check_desc(uint64_t slot_bytes, const char *ring, uint64_t nbytes, const char *typestr,
                                        uint32_t ndim);

/* Writes a checked description (ndshm__ring_check_desc) into a slot header, the typestr
 * zero-padded: the whole field is a function of the typestr (bindings may compare it as words). */
NDSHM_HIDDEN void ndshm__ring_write_desc(ndshm__ring_desc_t *d, uint64_t nbytes, const char *typestr, uint32_t ndim,
                                         const int64_t *shape);

/* Fills `msg` for a loan of position `pos` (claim record `part`): state 1, no description yet. */
static inline void ndshm__ring_msg_loaned(ndshm_qmsg_t *msg, void *data, uint64_t capacity, uint64_t nbytes,
                                          uint64_t pos, uint32_t part) {
    msg->data = data;
    msg->capacity = capacity;
    msg->nbytes = nbytes;
    msg->typestr[0] = '\0';
    msg->ndim = 0;
    msg->pos_ = pos;
    msg->part_ = part;
    msg->state_ = 1;
}

/* 0 if `msg` is loaned (state 1), else NDSHM_EINVAL naming its state. */
static inline int ndshm__ring_check_loaned(const ndshm_qmsg_t *msg) {
    if (msg->state_ != 1) return ndshm__fail(NDSHM_EINVAL, 0, "message state %u is not loaned", msg->state_);
    return 0;
}

/* publish, up to the slot's state word: checks that `msg` is loaned and its description (the
 * caller's to fill, so its typestr is cut at the field's end), writes the description into
 * `d` and ends the loan (state 0). The caller then marks the slot published. */
static inline int ndshm__ring_publish_desc(ndshm_qmsg_t *msg, ndshm__ring_desc_t *d, uint64_t slot_bytes,
                                           const char *ring) {
    int rc = ndshm__ring_check_loaned(msg);
    if (rc) return rc;
    msg->typestr[NDSHM_TYPESTR_MAX - 1] = '\0';
    rc = ndshm__ring_check_desc(slot_bytes, ring, msg->nbytes, msg->typestr, msg->ndim);
    if (rc) return rc;
    ndshm__ring_write_desc(d, msg->nbytes, msg->typestr, msg->ndim, msg->shape);
    msg->state_ = 0;
    return 0;
}

/* Fills `msg` for a take of position `pos` (record `part`): state 2, `data` of `capacity` bytes,
 * and the description read from the slot header (nbytes, ndim read once by the caller; typestr
 * and shape from `typestr`, `shape`). Shared memory is never trusted: a description claiming
 * more than the slot or NDSHM_MAXDIM gives NDSHM_ECORRUPT naming it, with the message still
 * taken (the caller releases it) and described as empty. */
static inline int ndshm__ring_msg_taken(ndshm_qmsg_t *msg, void *data, uint64_t capacity, uint64_t pos, uint32_t part,
                                        uint64_t nbytes, uint32_t ndim, const char *typestr, const int64_t *shape) {
    msg->pos_ = pos;
    msg->part_ = part;
    msg->state_ = 2;
    msg->data = data;
    msg->capacity = capacity;
    if (nbytes > capacity || ndim > NDSHM_MAXDIM) {
        msg->nbytes = 0;
        msg->ndim = 0;
        msg->typestr[0] = '\0';
        return ndshm__fail(NDSHM_ECORRUPT, 0, "message at position %llu claims %llu bytes and %u dimensions",
                           (unsigned long long)pos, (unsigned long long)nbytes, ndim);
    }
    msg->nbytes = nbytes;
    msg->ndim = ndim;
    memcpy(msg->typestr, typestr, NDSHM_TYPESTR_MAX);
    msg->typestr[NDSHM_TYPESTR_MAX - 1] = '\0';
    if (ndim) memcpy(msg->shape, shape, ndim * sizeof *shape);
    return 0;
}

/* ---- pins ---------------------------------------------------------------------------- */

/* A published message whose loaned memory its publisher still references (a view or export
 * kept past the loan) is pinned: desc.pinned = 1 and the pinner's process key in the word right
 * after the descriptor (NDSHM__RING_PIN_OWNER bytes into the slot). A publisher that finds the
 * slot it claims next pinned waits as for a full ring, until the pinner unpins it or dies; the
 * consumers are not involved (they never read either word). */
enum { NDSHM__RING_PIN_OWNER = 8 + sizeof(ndshm__ring_desc_t) };

_Static_assert(NDSHM__RING_PIN_OWNER + 8 <= 320, "pin owner word outside the slot header");

static inline _Atomic uint64_t *ndshm__ring_pin_owner(void *slot) {
    return (_Atomic uint64_t *)((char *)slot + NDSHM__RING_PIN_OWNER);
}

/* Pins `slot` (its descriptor `d`) for `me`; called by the publisher before it marks the
 * message published. */
static inline void ndshm__ring_pin(void *slot, ndshm__ring_desc_t *d, uint64_t me) {
    atomic_store_explicit(ndshm__ring_pin_owner(slot), me, memory_order_relaxed);
    __atomic_store_n(&d->pinned, 1u, __ATOMIC_RELEASE);
}

/* true if the slot whose descriptor is `d` may be pinned (one load, on the state word's line). */
static inline bool ndshm__ring_pinned(const ndshm__ring_desc_t *d) {
    return __atomic_load_n(&d->pinned, __ATOMIC_ACQUIRE) != 0;
}

/* For a publisher that found `slot` pinned: 0 if it is no longer (its pinner died: the pin is
 * cleared), 1 if a live process other than `me` pins it (wait), NDSHM_EBUSY naming slot `idx`
 * of `ring` if `me` pins it itself (waiting would never end). */
NDSHM_HIDDEN int ndshm__ring_pin_check(void *slot, ndshm__ring_desc_t *d, uint64_t me, uint64_t idx,
                                       const char *ring);

/* Unpins `slot` if `me` pins it: 0, or NDSHM_EINVAL naming slot `idx` if it is not pinned by
 * `me` (the caller wakes publishers after a success). */
NDSHM_HIDDEN int ndshm__ring_unpin(void *slot, ndshm__ring_desc_t *d, uint64_t me, uint64_t idx);

/* ---- geometry ------------------------------------------------------------------------ */

enum {
    NDSHM__RING_SLOT_HDR = 320, /* bytes of each slot's header (state word, descriptor), before its data */
    NDSHM__RING_POPULATE = 1    /* ring_flags: attachers pre-fault the ring */
};

/* The fields both rings' headers start with (56 bytes; each ring's own fields follow). */
typedef struct ndshm__ring_hdr {
    _Atomic uint64_t magic; /* written last by the creator */
    uint32_t version, hdr_bytes;
    uint64_t slots, slot_bytes, slot_stride, ring_bytes, slots_offset;
} ndshm__ring_hdr_t;

_Static_assert(sizeof(ndshm__ring_hdr_t) == 56, "ring header prefix is not 56 bytes");

/* The rings' magics (the first word of their headers) and format versions: written here once,
 * for the ring files and for ndshm_ring_read_header. */
#define NDSHM__QUEUE_MAGIC 0x51554555534d444eull /* "NDMSQUEQ" */
#define NDSHM__QUEUE_VERSION 3u /* 2: shutdown bits in tail and head, producer records; 3: records hold process
                                   ids, pinned slots, consumer records */
#define NDSHM__QUEUE_OLDEST 1u  /* versions 1 to 3 start with the same fields (ndshm__ring_hdr_t) */
#define NDSHM__BCAST_MAGIC 0x5453414344424e44ull /* "NDBDCAST" */
#define NDSHM__BCAST_VERSION 2u /* 2: records hold process ids (identity.c), not pid and start time; pinned slots */
#define NDSHM__BCAST_OLDEST 2u
#define NDSHM__RING_MAX_BYTES ((uint64_t)PTRDIFF_MAX) /* the largest ring of either kind */
_Static_assert(PTRDIFF_MAX <= INT64_MAX, "a ring's size must fit a segment's int64 shape");

/* What a ring's kind fixes, and how its details name it. */
typedef struct ndshm__ring_kind {
    const char *name; /* "queue", "broadcast" */
    const char *ring; /* what the details call its ring: "ring", "broadcast ring" */
    const char *api;  /* the prefix of its functions, for details: "ndshm_queue", "ndshm_bcast" */
    uint64_t magic;
    uint32_t version;
    uint32_t oldest;    /* the oldest version whose header starts as this one's (ndshm_ring_read_header) */
    uint32_t hdr_bytes; /* sizeof its header, a multiple of 64: the slots start there */
    unsigned seg_flag;  /* NDSHM_SEG_QUEUE, NDSHM_SEG_BROADCAST: what its segment's header says it holds */
    uint64_t max_slots;
    _Atomic uint64_t *live; /* the counter of its handles open in this process (ndshm__counters) */
} ndshm__ring_kind_t;

/* The two kinds (queue.c, broadcast.c). */
NDSHM_HIDDEN extern const ndshm__ring_kind_t ndshm__queue_kind, ndshm__bcast_kind;

/* The geometry of an opened ring, read once from its header and checked. */
typedef struct ndshm__ring_geom {
    uint64_t slots, slot_bytes, stride, ring_bytes;
} ndshm__ring_geom_t;

/* The bytes between two slots' starts: header and data, rounded up to 64 (no overflow once
 * ndshm__ring_bytes accepted slot_bytes). */
static inline uint64_t ndshm__ring_stride(uint64_t slot_bytes) {
    return (NDSHM__RING_SLOT_HDR + slot_bytes + 63) & ~(uint64_t)63;
}

/* *out = the bytes a ring of kind `k` with `slots` slots of `slot_bytes` needs, or NDSHM_EINVAL
 * (slots not a power of two in [2, max_slots]) / NDSHM_EOVERFLOW naming the values. */
NDSHM_HIDDEN int ndshm__ring_bytes(const ndshm__ring_kind_t *k, uint64_t slots, uint64_t slot_bytes, uint64_t *out);

/* Checks the geometry and memory (`bytes` at `mem`, 64-aligned) and writes the common header
 * fields of a new ring, the rest of its header zeroed; the magic is left 0: the caller writes
 * its own fields and slots, then stores k->magic with release semantics. */
NDSHM_HIDDEN int ndshm__ring_hdr_init(const ndshm__ring_kind_t *k, void *mem, uint64_t bytes, uint64_t slots,
                                      uint64_t slot_bytes);

/* Validates the ring of kind `k` in `bytes` at `mem` (waiting up to 1 s for its creator to
 * publish it) and fills *g. NDSHM_EINVAL (memory not 64-aligned), NDSHM_EBUSY (still being
 * initialised), NDSHM_ECORRUPT naming the first bad field. */
NDSHM_HIDDEN int ndshm__ring_hdr_open(const ndshm__ring_kind_t *k, void *mem, uint64_t bytes, ndshm__ring_geom_t *g);

/* Pre-faults the `ring_bytes` at `ring` in this process if its `ring_flags` ask for it, and
 * records this process in *populated (a fork()ed child sees another key and populates again:
 * it inherits the mapping but not its page tables). */
NDSHM_HIDDEN void ndshm__ring_populate(const void *ring, uint64_t ring_bytes, uint32_t ring_flags,
                                       _Atomic uint64_t *populated);

/* What creating a named ring asks for (NULL instead of one: attach). */
typedef struct ndshm__ring_params {
    uint64_t slots, slot_bytes;
    unsigned mode, flags; /* flags: NDSHM_SEG_PERSIST, NDSHM_SEG_POPULATE */
} ndshm__ring_params_t;

/* The named segment that holds ring `name` of kind `k` in `dir`: created (`p` not NULL: the
 * flags and geometry checked, 64-aligned, its ring's bytes of "|u1", the header's flags with
 * k->seg_flag) or attached (`p` NULL: NDSHM_EINVAL if the header says it holds anything else,
 * naming what). The same checks and details for both rings. On success *info points to its
 * information (this thread's storage, valid until the next call); on failure nothing stays
 * open. The caller initialises (create) and opens the ring in info->data. */
NDSHM_HIDDEN int ndshm__ring_named(const ndshm__ring_kind_t *k, const char *name, const char *dir,
                                   const ndshm__ring_params_t *p, ndshm_segment_t **seg,
                                   const ndshm_segment_info_t **info);
/* The end of a named ring's create (`created`) or attach, once the caller opened the ring at
 * `ring` (`ring_bytes`, its header's `ring_flags`) into its handle: records this process in
 * *populated as the one that pre-faulted the ring (segment_create pre-faulted a creator's segment;
 * an attacher does it now if the creator asked), copies `name` into the handle's `name_out`
 * (NDSHM_NAME_MAX + 1 bytes) and counts the handle in k->live. Create, attach and close time only. */
NDSHM_HIDDEN void ndshm__ring_named_done(const ndshm__ring_kind_t *k, const char *name, int created, const void *ring,
                                         uint64_t ring_bytes, uint32_t ring_flags, _Atomic uint64_t *populated,
                                         char *name_out);
/* A failed named create or attach: closes `seg` (NULL: none) and frees `handle` (not counted yet). Returns `rc`. */
NDSHM_HIDDEN int ndshm__ring_named_fail(ndshm_segment_t *seg, void *handle, int rc);
/* Closes a counted handle of kind `k`: uncounts it, closes `seg` (NULL for raw rings), frees `handle`. */
NDSHM_HIDDEN void ndshm__ring_close(const ndshm__ring_kind_t *k, ndshm_segment_t *seg, void *handle);

/* A named segment of `bytes` raw bytes (a ring's or a pool's memory), created with `flags` (its
 * NDSHM_SEG_* kind among them), and its information in this thread's storage. */
NDSHM_HIDDEN int ndshm__named_bytes_create(const char *name, const char *dir, unsigned mode, unsigned flags,
                                           uint64_t bytes, ndshm_segment_t **seg, const ndshm_segment_info_t **info);

/* The ring_flags a creator's segment flags ask for (NDSHM_SEG_POPULATE: NDSHM__RING_POPULATE). */
static inline uint32_t ndshm__ring_flags_of(unsigned flags) {
    return (flags & NDSHM_SEG_POPULATE) ? NDSHM__RING_POPULATE : 0;
}

#endif /* NDSHM_RING_H */

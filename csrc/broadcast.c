/*
 * broadcast.c -- a publish-subscribe ring in shared memory: every subscriber receives every
 * message published after it joined, in order; publishers wait for the slowest subscriber
 * ("block") or overwrite the oldest messages ("overwrite", laggards are told how many they lost).
 *
 * Ring layout (offsets from the ring's first byte, 64-aligned):
 *   0     bc_hdr_t: magic, version, geometry, policy; tail, the two futex words and the
 *         subscriber high-water mark each on their own cache line; NPART publisher claim
 *         records {owner, intent}; NSUB subscriber records {owner, pos, hold}, one per line
 *   slots_offset: `slots` slots of slot_stride bytes: a 320-byte slot header (state word and
 *         message descriptor) followed by slot_bytes of data, 64-aligned.
 *
 * Positions. tail (bits 0..61) is the next position a publisher claims; bit 63 says shutdown,
 * bit 62 immediate shutdown. Message p lives in slot p % slots, whose state word is
 * ((p + 1) << 2 | st), st one of WRITING, PUBLISHED, SKIPPED (0: never written). A publisher
 * claims p (a CAS of tail from p) only once slot p % slots holds PUBLISHED or SKIPPED for
 * p - slots (the previous writer finished), and under "block" only once every live subscriber
 * has read p - slots (its record's pos is above it). A subscriber at p reads slot p % slots:
 * PUBLISHED(p) is its message, SKIPPED(p) is passed over, a state of a later position means it
 * was overwritten (Lagged: it resumes at tail - slots, the oldest retained), anything earlier
 * means not yet published.
 *
 * Overwrite and zero copy. Under "overwrite" a subscriber reading p sets its record's hold to
 * p + 1, then re-reads the state word; a publisher that claimed p + slots stores WRITING(p + slots)
 * first, then waits while a live record holds p + 1. Both are seq_cst, so either the reader sees
 * WRITING (and reports Lagged) or the writer sees the hold (and waits for its release): a view
 * never changes under its reader.
 *
 * Joining. A subscriber stores pos = tail in its record and re-reads tail; it retries until both
 * reads agree. Every publisher loads tail before it scans the records, so any claim that could
 * overwrite position pos (one of pos + slots or later) scans after the store and sees it.
 *
 * Faults. A publisher keeps a claim record with its intent (the position) from before its CAS
 * until publish or discard. A waiter stuck NDSHM__RING_DEAD_CHECK_NS (ring.h) on a position
 * claimed by nobody alive marks it SKIPPED (a publisher killed inside loan: its message is
 * skipped by every subscriber). A subscriber record whose owner process is dead is freed by the
 * first publisher it blocks (block) or whose hold it keeps (overwrite). Every transition is a
 * CAS from the exact value observed. Nothing read from the ring is trusted: impossible states
 * are NDSHM_ECORRUPT.
 */
#include "internal.h"
#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_HDR NDSHM__RING_SLOT_HDR
#define ST_WRITING 1u
#define ST_PUBLISHED 2u
#define ST_SKIPPED 3u
#define T_SHUTDOWN ((uint64_t)1 << 63)
#define T_IMMEDIATE ((uint64_t)1 << 62)
#define T_POS (T_IMMEDIATE - 1)
#define NO_POS UINT64_MAX
#define NPART 64
#define NSUB NDSHM_BCAST_MAX_SUBSCRIBERS

typedef struct bc_sub {
    _Atomic uint64_t owner; /* process key, 0 when free */
    _Atomic uint64_t pos;   /* next position to read; NO_POS while joining or free */
    _Atomic uint64_t hold;  /* overwrite: position + 1 being read in place, 0 when none */
    char pad[40];
} bc_sub_t;

typedef struct bc_hdr {
    ndshm__ring_hdr_t h; /* magic (written last by the creator), version, geometry */
    uint32_t ring_flags, policy; /* ring_flags: NDSHM__RING_POPULATE */
    _Atomic uint64_t tail;
    char pad1[56];
    _Atomic uint32_t published, pub_waiters; /* subscribers sleep here */
    char pad2[56];
    _Atomic uint32_t freed, freed_waiters; /* publishers sleep here */
    char pad3[56];
    _Atomic uint32_t sub_hw; /* records [0, sub_hw) may be in use */
    char pad4[60];
    ndshm__ring_part_t parts[NPART]; /* intent: position + 1 being published, 0 when none */
    bc_sub_t subs[NSUB];
} bc_hdr_t;

typedef struct bc_slot {
    _Atomic uint64_t state;
    ndshm__ring_desc_t d;
} bc_slot_t;

_Static_assert(sizeof(bc_slot_t) <= SLOT_HDR, "slot header too big");
_Static_assert(offsetof(bc_slot_t, d) == 8, "message descriptor not right after the state word");
_Static_assert(sizeof(bc_sub_t) == 64, "subscriber record is not one cache line");
_Static_assert(sizeof(bc_hdr_t) % 64 == 0, "ring header not a multiple of 64");
_Static_assert(offsetof(bc_hdr_t, tail) == 64, "tail not on its own line");

const ndshm__ring_kind_t ndshm__bcast_kind = {"broadcast", "broadcast ring", "ndshm_bcast", NDSHM__BCAST_MAGIC,
                                               NDSHM__BCAST_VERSION, NDSHM__BCAST_OLDEST, sizeof(bc_hdr_t),
                                               NDSHM_SEG_BROADCAST, NDSHM_BCAST_MAX_SLOTS, &ndshm__counters.live_broadcasts};
#define KIND ndshm__bcast_kind

struct ndshm_bcast_s {
    bc_hdr_t *r;
    char *slots;
    uint64_t n, mask, slot_bytes, stride, ring_bytes;
    uint32_t policy;
    ndshm_segment_t *seg; /* NULL for raw rings */
    _Atomic uint64_t populated;
    _Atomic uint32_t interrupted; /* ndshm_bcast_interrupt was called: this handle's publishers stop waiting */
    char name[NDSHM_NAME_MAX + 1];
};

struct ndshm_bsub_s {
    ndshm_bcast_t *b;
    uint32_t idx;  /* record */
    uint64_t key;  /* owner key written there */
    uint64_t pos;  /* next position (the record's pos is a copy for publishers; never read back) */
    int holding;   /* a message is taken */
    _Atomic uint32_t interrupted; /* ndshm_bsub_interrupt was called: this subscription's takes stop waiting */
};

static inline bc_slot_t *slot_at(const ndshm_bcast_t *b, uint64_t pos) {
    return (bc_slot_t *)(b->slots + (pos & b->mask) * b->stride);
}

static inline uint64_t st_word(uint64_t pos, unsigned st) { return (pos + 1) << 2 | st; }

/* ---- geometry ------------------------------------------------------------------------ */

int ndshm_bcast_ring_bytes(uint64_t slots, uint64_t slot_bytes, uint64_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_ring_bytes: out is NULL");
    return ndshm__ring_bytes(&KIND, slots, slot_bytes, out);
}

static int init_ring(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes, int policy, uint32_t flags) {
    if (policy != NDSHM_BCAST_BLOCK && policy != NDSHM_BCAST_OVERWRITE)
        return ndshm__fail(NDSHM_EINVAL, 0, "broadcast policy %d is neither NDSHM_BCAST_BLOCK (0) nor "
                                            "NDSHM_BCAST_OVERWRITE (1)", policy);
    int rc = ndshm__ring_hdr_init(&KIND, mem, bytes, slots, slot_bytes);
    if (rc) return rc;
    bc_hdr_t *r = mem;
    r->ring_flags = flags;
    r->policy = (uint32_t)policy;
    for (unsigned i = 0; i < NSUB; i++) atomic_store_explicit(&r->subs[i].pos, NO_POS, memory_order_relaxed);
    for (uint64_t i = 0; i < slots; i++)
        memset((char *)mem + r->h.slots_offset + i * r->h.slot_stride, 0, sizeof(bc_slot_t));
    atomic_store_explicit(&r->h.magic, KIND.magic, memory_order_release);
    return 0;
}

int ndshm_bcast_init_raw(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes, int policy) {
    (void)ndshm__self_key(); /* registers this process (the default directory) if it is not yet */
    return init_ring(mem, bytes, slots, slot_bytes, policy, 0);
}

static int open_ring(void *mem, uint64_t bytes, ndshm_bcast_t *b) {
    ndshm__ring_geom_t g;
    int rc = ndshm__ring_hdr_open(&KIND, mem, bytes, &g);
    if (rc) return rc;
    bc_hdr_t *r = mem;
    uint32_t policy = r->policy;
    if (policy != NDSHM_BCAST_BLOCK && policy != NDSHM_BCAST_OVERWRITE)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "broadcast ring policy %u is unknown", policy);
    b->r = r;
    b->slots = (char *)mem + sizeof(bc_hdr_t);
    b->n = g.slots;
    b->mask = g.slots - 1;
    b->slot_bytes = g.slot_bytes;
    b->stride = g.stride;
    b->ring_bytes = g.ring_bytes;
    b->policy = policy;
    return 0;
}

/* Pre-faults the ring in this process if its creator asked for it (see queue.c). */
static void populate_ring(ndshm_bcast_t *b) {
    ndshm__ring_populate(b->r, b->ring_bytes, b->r->ring_flags, &b->populated);
}

int ndshm_bcast_open_raw(void *mem, uint64_t bytes, ndshm_bcast_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_open_raw: out is NULL");
    *out = NULL;
    ndshm_bcast_t *b = calloc(1, sizeof *b);
    if (b == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a broadcast handle");
    int rc = open_ring(mem, bytes, b);
    if (rc) {
        free(b);
        return rc;
    }
    atomic_store_explicit(&b->populated, ndshm__self_key(), memory_order_relaxed);
    NDSHM__COUNT(live_broadcasts, 1);
    *out = b;
    return 0;
}

/* ---- segments ------------------------------------------------------------------------ */

/* The end of create and attach: the ring in the segment opened into `b` (`rc` 0) and the
 * handle counted and returned (ndshm__ring_named_done), or everything undone. */
static int finish_named(ndshm_bcast_t *b, int rc, const ndshm_segment_info_t *info, const char *name, int created,
                        ndshm_bcast_t **out) {
    if (rc == 0) rc = open_ring((void *)info->data, info->data_size, b);
    if (rc) return ndshm__ring_named_fail(b->seg, b, rc);
    ndshm__ring_named_done(&KIND, name, created, b->r, b->ring_bytes, b->r->ring_flags, &b->populated,
                           b->name);
    *out = b;
    return 0;
}

int ndshm_bcast_create(const char *name, const char *dir, uint64_t slots, uint64_t slot_bytes, int policy,
                       unsigned mode, unsigned flags, ndshm_bcast_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_create: out is NULL");
    *out = NULL;
    if (policy != NDSHM_BCAST_BLOCK && policy != NDSHM_BCAST_OVERWRITE) /* before the segment is made */
        return ndshm__fail(NDSHM_EINVAL, 0, "broadcast policy %d is neither NDSHM_BCAST_BLOCK (0) nor "
                                            "NDSHM_BCAST_OVERWRITE (1)", policy);
    ndshm_bcast_t *b = calloc(1, sizeof *b);
    if (b == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a broadcast handle");
    const ndshm__ring_params_t p = {slots, slot_bytes, mode, flags};
    const ndshm_segment_info_t *info = NULL;
    int rc = ndshm__ring_named(&KIND, name, dir, &p, &b->seg, &info);
    if (rc == 0)
        rc = init_ring((void *)info->data, info->data_size, slots, slot_bytes, policy, ndshm__ring_flags_of(flags));
    return finish_named(b, rc, info, name, 1, out);
}

int ndshm_bcast_attach(const char *name, const char *dir, ndshm_bcast_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_attach: out is NULL");
    *out = NULL;
    ndshm_bcast_t *b = calloc(1, sizeof *b);
    if (b == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a broadcast handle");
    const ndshm_segment_info_t *info = NULL;
    int rc = ndshm__ring_named(&KIND, name, dir, NULL, &b->seg, &info);
    return finish_named(b, rc, info, name, 0, out);
}

void ndshm_bcast_close(ndshm_bcast_t *b) {
    if (b == NULL) return;
    ndshm__ring_close(&KIND, b->seg, b);
}

int ndshm_bcast_info(const ndshm_bcast_t *b, ndshm_bcast_info_t *out) {
    if (b == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_info: NULL argument");
    memset(out, 0, sizeof *out);
    out->slots = b->n;
    out->slot_bytes = b->slot_bytes;
    out->slot_stride = b->stride;
    out->ring = (uintptr_t)b->r;
    out->ring_bytes = b->ring_bytes;
    out->policy = (int)b->policy;
    out->max_subscribers = NSUB;
    memcpy(out->name, b->name, sizeof out->name);
    return 0;
}

/* ---- waiting ------------------------------------------------------------------------- */

/* The clock of a position a call is stuck on (stuck_long). */
typedef struct stuck {
    int64_t since; /* -1 until the first look */
    uint64_t pos;
} stuck_t;

/* true once the call has been stuck on `pos` for NDSHM__RING_DEAD_CHECK_NS (then the clock
 * restarts). */
static bool stuck_long(stuck_t *k, uint64_t pos) {
    int64_t now = ndshm__now_ns();
    if (k->pos != pos || k->since < 0) {
        k->pos = pos;
        k->since = now;
        return false;
    }
    if (now - k->since < NDSHM__RING_DEAD_CHECK_NS) return false;
    k->since = now;
    return true;
}

/* ---- publisher claims ---------------------------------------------------------------- */

static int part_acquire(ndshm_bcast_t *b, uint32_t *out) {
    uint64_t me = ndshm__self_key();
    if (atomic_load_explicit(&b->populated, memory_order_relaxed) != me) populate_ring(b);
    if (ndshm__ring_part_take_free(b->r->parts, NPART, (unsigned)(me * 2654435761u) % NPART, me, out) ||
        ndshm__ring_part_take_dead(b->r->parts, NPART, me, out))
        return 0;
    return ndshm__fail(NDSHM_EBUSY, 0, "all %d publisher records of the broadcast are in use by live processes",
                       NPART);
}

static inline void part_release(ndshm_bcast_t *b, uint32_t idx) { ndshm__ring_part_release(b->r->parts, idx); }

/* Marks position `pos`, whose slot holds `raw`, SKIPPED if nobody alive publishes it. */
static void skip_if_dead(ndshm_bcast_t *b, uint64_t pos, uint64_t raw) {
    if (ndshm__ring_intent_alive(b->r->parts, NPART, pos + 1)) return; /* a live process publishes it */
    bc_slot_t *s = slot_at(b, pos);
    if (atomic_compare_exchange_strong(&s->state, &raw, st_word(pos, ST_SKIPPED))) {
        ndshm__ring_wake(&b->r->published, &b->r->pub_waiters);
        ndshm__ring_wake(&b->r->freed, &b->r->freed_waiters);
    }
}

/* Frees subscriber record `i` whose owner `owner` is dead. */
static void sub_reclaim(ndshm_bcast_t *b, unsigned i, uint64_t owner) {
    bc_sub_t *rec = &b->r->subs[i];
    uint64_t me = ndshm__self_key();
    if (!atomic_compare_exchange_strong(&rec->owner, &owner, me)) return;
    atomic_store(&rec->pos, NO_POS);
    atomic_store(&rec->hold, 0);
    atomic_store(&rec->owner, 0);
}

static unsigned sub_hw(const ndshm_bcast_t *b) {
    unsigned hw = atomic_load(&b->r->sub_hw);
    return hw > NSUB ? NSUB : hw; /* never trust the ring */
}

/* true if subscriber record `i`, which holds a publisher back, still does: it has an owner and,
 * with `reap`, one that runs (a dead owner's record is freed). */
static bool holds_back(ndshm_bcast_t *b, unsigned i, bool reap) {
    uint64_t owner = atomic_load(&b->r->subs[i].owner);
    if (owner == 0) return false;
    if (reap && !ndshm__key_alive(owner)) {
        sub_reclaim(b, i, owner);
        return false;
    }
    return true;
}

/* block: true if every subscriber has read `prev` (the message slot `pos` replaces). With
 * `reap`, records of dead processes that hold it back are freed. */
static bool readers_done(ndshm_bcast_t *b, uint64_t prev, bool reap) {
    unsigned hw = sub_hw(b);
    bool done = true;
    for (unsigned i = 0; i < hw; i++) {
        uint64_t p = atomic_load(&b->r->subs[i].pos);
        if (p == NO_POS || p > prev || !holds_back(b, i, reap)) continue;
        done = false;
        if (!reap) break;
    }
    return done;
}

/* overwrite: true if no subscriber reads in place an earlier message of the slot `pos` is
 * about to overwrite (not only pos - n: a publisher that timed out waiting for a holder leaves
 * the slot's data to it). With `reap`, the records of dead holders are freed. */
static bool holders_done(ndshm_bcast_t *b, uint64_t pos, bool reap) {
    unsigned hw = sub_hw(b);
    bool done = true;
    for (unsigned i = 0; i < hw; i++) {
        uint64_t h = atomic_load(&b->r->subs[i].hold);
        if (h == 0 || h - 1 >= pos || ((h - 1) & b->mask) != (pos & b->mask) || !holds_back(b, i, reap)) continue;
        done = false;
        if (!reap) break;
    }
    return done;
}

static int shut_down(const ndshm_bcast_t *b) {
    return ndshm__fail(NDSHM_ESHUTDOWN, 0, "broadcast '%s' is shut down", b->name);
}

static int full_or_timedout(const ndshm_bcast_t *b, double timeout) {
    const char *why = b->policy == NDSHM_BCAST_BLOCK ? "the slowest subscriber has not read the oldest message"
                                                     : "a subscriber is still reading the oldest slot in place";
    if (timeout == 0)
        return ndshm__fail(NDSHM_EFULL, 0, "broadcast is full (%llu slots): %s", (unsigned long long)b->n, why);
    return ndshm__fail(NDSHM_ETIMEDOUT, 0, "broadcast still full (%llu slots) after %g s: %s",
                       (unsigned long long)b->n, timeout, why);
}

static int impossible(const ndshm_bcast_t *b, uint64_t pos, uint64_t raw, const char *who) {
    return ndshm__fail(NDSHM_ECORRUPT, 0,
                       "broadcast ring is corrupt: slot %llu holds state 0x%llx, impossible for the %s at position %llu",
                       (unsigned long long)(pos & b->mask), (unsigned long long)raw, who, (unsigned long long)pos);
}

/* Claims the next position for a message (publisher record `part`), waiting per the policy. */
static int claim(ndshm_bcast_t *b, double timeout, uint32_t part, uint64_t *out_pos) {
    bc_hdr_t *r = b->r;
    const uint64_t n = b->n;
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, timeout);
    w.intr = &b->interrupted;
    stuck_t stuck = {-1, NO_POS};
    for (;;) {
        uint32_t seen = atomic_load(&r->freed);
        uint64_t t = atomic_load(&r->tail);
        if (t & T_SHUTDOWN) return shut_down(b);
        uint64_t pos = t & T_POS;
        if (pos >= T_POS - 2 * n) return ndshm__fail(NDSHM_ECORRUPT, 0, "broadcast tail %llu is impossible",
                                                     (unsigned long long)pos);
        bc_slot_t *s = slot_at(b, pos);
        uint64_t raw = atomic_load_explicit(&s->state, memory_order_acquire);
        unsigned st = (unsigned)(raw & 3);
        uint64_t rp = (raw >> 2) - 1; /* position of the slot's state (wraps for raw == 0) */
        bool ready = pos < n ? raw == 0 : (rp == pos - n && (st == ST_PUBLISHED || st == ST_SKIPPED));
        if (!ready) {
            /* the previous writer of the slot (pos - n) is still writing, or claimed it and
             * has not marked it yet: wait, and skip it if it died */
            uint64_t prev = pos - n;
            bool writing = pos >= n && rp == prev && st == ST_WRITING;
            bool unmarked = pos >= n && (pos < 2 * n ? raw == 0 : rp == prev - n && st >= ST_PUBLISHED);
            if (!writing && !unmarked) {
                if (atomic_load(&r->tail) == t) return impossible(b, pos, raw, "publisher");
                if (ndshm__ring_retry_expired(&w)) return full_or_timedout(b, timeout);
                continue;
            }
            if (stuck_long(&stuck, prev)) {
                skip_if_dead(b, prev, raw);
                continue;
            }
            if (timeout == 0 || ndshm__ring_wait(&w, &r->freed, &r->freed_waiters, seen) == ETIMEDOUT)
                return full_or_timedout(b, timeout);
            continue;
        }
        if (__builtin_expect(pos >= n && ndshm__ring_pinned(&s->d), 0)) { /* its last message is pinned */
            int pin = ndshm__ring_pin_check(s, &s->d, ndshm__self_key(), pos & b->mask, "broadcast");
            if (pin < 0) return pin;
            if (pin == 0) continue;
            if (timeout == 0 || ndshm__ring_wait(&w, &r->freed, &r->freed_waiters, seen) == ETIMEDOUT)
                return full_or_timedout(b, timeout);
            continue;
        }
        if (b->policy == NDSHM_BCAST_BLOCK && pos >= n && !readers_done(b, pos - n, false)) {
            if (stuck_long(&stuck, pos) && readers_done(b, pos - n, true)) continue;
            if (timeout == 0 || ndshm__ring_wait(&w, &r->freed, &r->freed_waiters, seen) == ETIMEDOUT)
                return full_or_timedout(b, timeout);
            continue;
        }
        atomic_store(&r->parts[part].intent, pos + 1);
        if (atomic_compare_exchange_strong(&r->tail, &t, t + 1)) {
            atomic_store(&s->state, st_word(pos, ST_WRITING)); /* seq_cst: see the overwrite handshake */
            if (b->policy == NDSHM_BCAST_OVERWRITE && pos >= n) {
                while (!holders_done(b, pos, false)) {
                    uint32_t seen2 = atomic_load(&r->freed);
                    if (holders_done(b, pos, false)) break;
                    if (stuck_long(&stuck, pos) && holders_done(b, pos, true)) break;
                    if (timeout == 0 || ndshm__ring_wait(&w, &r->freed, &r->freed_waiters, seen2) == ETIMEDOUT) {
                        /* give the position up: subscribers pass over it */
                        atomic_store_explicit(&s->state, st_word(pos, ST_SKIPPED), memory_order_release);
                        ndshm__ring_wake(&r->published, &r->pub_waiters);
                        return full_or_timedout(b, timeout);
                    }
                }
            }
            *out_pos = pos;
            return 0;
        }
        atomic_store(&r->parts[part].intent, 0);
        if (ndshm__ring_retry_expired(&w)) return full_or_timedout(b, timeout);
    }
}

static void finish(ndshm_bcast_t *b, uint64_t pos, uint32_t part, unsigned st) {
    atomic_store_explicit(&slot_at(b, pos)->state, st_word(pos, st), memory_order_release);
    part_release(b, part);
    ndshm__ring_wake(&b->r->published, &b->r->pub_waiters);
}

/* A publisher record and a position for a publisher (loan, put); the record is given back if
 * the claim fails. */
static int claim_slot(ndshm_bcast_t *b, double timeout, uint32_t *part, uint64_t *pos) {
    int rc = part_acquire(b, part);
    if (rc) return rc;
    rc = claim(b, timeout, *part, pos);
    if (rc) part_release(b, *part);
    if ((rc == NDSHM_ETIMEDOUT || rc == NDSHM_EFULL) && atomic_load(&b->interrupted))
        return ndshm__fail(NDSHM_ECLOSED, 0, "broadcast '%s': this handle was closed while the call waited", b->name);
    return rc;
}

uint32_t ndshm_bcast_epoch(const ndshm_bcast_t *b, int publisher) {
    if (b == NULL) return 0;
    return atomic_load(publisher ? &b->r->freed : &b->r->published);
}

int ndshm_bcast_wait_epoch(ndshm_bcast_t *b, ndshm_bsub_t *sub, uint32_t seen, double timeout) {
    if (b == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_wait_epoch: NULL argument");
    if (sub != NULL && sub->b != b) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_wait_epoch: foreign subscription");
    if (ndshm__check_timeout(timeout, "ndshm_bcast_wait_epoch")) return NDSHM_EINVAL;
    int rc = sub == NULL
                 ? ndshm__ring_wait_word(&b->r->freed, &b->r->freed_waiters, seen, timeout, &b->interrupted)
                 : ndshm__ring_wait_word(&b->r->published, &b->r->pub_waiters, seen, timeout, &sub->interrupted);
    if (rc == ECANCELED)
        return ndshm__fail(NDSHM_ECLOSED, 0, "broadcast '%s': this handle was closed while the call waited", b->name);
    if (rc == ETIMEDOUT) return ndshm__fail(NDSHM_ETIMEDOUT, 0, "broadcast unchanged after %g s", timeout);
    return 0;
}

void ndshm_bcast_interrupt(ndshm_bcast_t *b) {
    if (b == NULL) return;
    atomic_store(&b->interrupted, 1u);
    atomic_fetch_add(&b->r->freed, 1u); /* as ndshm_queue_interrupt: other handles' waiters look again */
    ndshm__futex_wake(&b->r->freed, INT_MAX);
}

void ndshm_bsub_interrupt(ndshm_bsub_t *sub) {
    if (sub == NULL) return;
    atomic_store(&sub->interrupted, 1u);
    atomic_fetch_add(&sub->b->r->published, 1u);
    ndshm__futex_wake(&sub->b->r->published, INT_MAX);
}

int ndshm_bcast_loan(ndshm_bcast_t *b, uint64_t nbytes, double timeout, ndshm_qmsg_t *msg) {
    if (b == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_loan: NULL argument");
    msg->state_ = 0;
    if (ndshm__check_timeout(timeout, "ndshm_bcast_loan")) return NDSHM_EINVAL;
    int rc = ndshm__ring_check_desc(b->slot_bytes, "broadcast", nbytes, NULL, 0);
    if (rc) return rc;
    uint32_t part;
    uint64_t pos;
    rc = claim_slot(b, timeout, &part, &pos);
    if (rc) return rc;
    ndshm__ring_msg_loaned(msg, (char *)slot_at(b, pos) + SLOT_HDR, b->slot_bytes, nbytes, pos, part);
    return 0;
}

int ndshm_bcast_publish(ndshm_bcast_t *b, ndshm_qmsg_t *msg) {
    if (b == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_publish: NULL argument");
    int rc = ndshm__ring_publish_desc(msg, &slot_at(b, msg->pos_)->d, b->slot_bytes, "broadcast");
    if (rc) return rc;
    finish(b, msg->pos_, msg->part_, ST_PUBLISHED);
    return 0;
}

int ndshm_bcast_pin(ndshm_bcast_t *b, ndshm_qmsg_t *msg) {
    if (b == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_pin: NULL argument");
    if (ndshm__ring_check_loaned(msg)) return NDSHM_EINVAL;
    bc_slot_t *s = slot_at(b, msg->pos_);
    ndshm__ring_pin(s, &s->d, ndshm__self_key());
    return 0;
}

int ndshm_bcast_unpin(ndshm_bcast_t *b, uint64_t pos) {
    if (b == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_unpin: NULL argument");
    bc_slot_t *s = slot_at(b, pos);
    int rc = ndshm__ring_unpin(s, &s->d, ndshm__self_key(), pos & b->mask);
    if (rc == 0) ndshm__ring_wake(&b->r->freed, &b->r->freed_waiters);
    return rc;
}

int ndshm_bcast_discard(ndshm_bcast_t *b, ndshm_qmsg_t *msg) {
    if (b == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_discard: NULL argument");
    if (ndshm__ring_check_loaned(msg)) return NDSHM_EINVAL;
    msg->state_ = 0;
    finish(b, msg->pos_, msg->part_, ST_SKIPPED);
    return 0;
}

int ndshm_bcast_put(ndshm_bcast_t *b, const void *data, uint64_t nbytes, const char *typestr, uint32_t ndim,
                    const int64_t *shape, double timeout) {
    if (b == NULL || (data == NULL && nbytes) || (shape == NULL && ndim))
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_put: NULL argument");
    if (ndshm__check_timeout(timeout, "ndshm_bcast_put")) return NDSHM_EINVAL;
    int rc = ndshm__ring_check_desc(b->slot_bytes, "broadcast", nbytes, typestr, ndim);
    if (rc) return rc;
    uint32_t part;
    uint64_t pos;
    rc = claim_slot(b, timeout, &part, &pos);
    if (rc) return rc;
    bc_slot_t *s = slot_at(b, pos);
    if (nbytes) memcpy((char *)s + SLOT_HDR, data, nbytes);
    ndshm__ring_write_desc(&s->d, nbytes, typestr, ndim, shape);
    finish(b, pos, part, ST_PUBLISHED);
    return 0;
}

int ndshm_bcast_shutdown(ndshm_bcast_t *b, int immediate) {
    if (b == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_shutdown: NULL argument");
    atomic_fetch_or(&b->r->tail, T_SHUTDOWN | (immediate ? T_IMMEDIATE : 0));
    ndshm__ring_wake(&b->r->published, &b->r->pub_waiters);
    ndshm__ring_wake(&b->r->freed, &b->r->freed_waiters);
    return 0;
}

int ndshm_bcast_is_shutdown(const ndshm_bcast_t *b) {
    if (b == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_is_shutdown: NULL argument");
    uint64_t t = atomic_load(&b->r->tail);
    return (t & T_IMMEDIATE) ? 2 : (t & T_SHUTDOWN) ? 1 : 0;
}

uint64_t ndshm_bcast_published(const ndshm_bcast_t *b) {
    return b == NULL ? 0 : atomic_load(&b->r->tail) & T_POS;
}

int ndshm_bcast_subscribers(const ndshm_bcast_t *b) {
    if (b == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_subscribers: NULL argument");
    unsigned hw = sub_hw(b), count = 0;
    for (unsigned i = 0; i < hw; i++) {
        uint64_t owner = atomic_load(&b->r->subs[i].owner);
        if (owner != 0 && atomic_load(&b->r->subs[i].pos) != NO_POS && ndshm__key_alive(owner)) count++;
    }
    return (int)count;
}

/* ---- subscribers --------------------------------------------------------------------- */

int ndshm_bcast_subscribe(ndshm_bcast_t *b, ndshm_bsub_t **out) {
    if (b == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_subscribe: NULL argument");
    *out = NULL;
    bc_hdr_t *r = b->r;
    uint64_t me = ndshm__self_key();
    if (atomic_load_explicit(&b->populated, memory_order_relaxed) != me) populate_ring(b);
    ndshm_bsub_t *sub = calloc(1, sizeof *sub);
    if (sub == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a subscription");
    unsigned idx = NSUB;
    for (int round = 0; round < 2 && idx == NSUB; round++) {
        for (unsigned i = 0; i < NSUB; i++) {
            uint64_t cur = atomic_load(&r->subs[i].owner);
            if (cur != 0 && (round == 0 || cur == me || ndshm__key_alive(cur))) continue;
            if (cur != 0) { /* second round: a dead process's record */
                sub_reclaim(b, i, cur);
                cur = 0;
            }
            if (atomic_compare_exchange_strong(&r->subs[i].owner, &cur, me)) {
                idx = i;
                break;
            }
        }
    }
    if (idx == NSUB) {
        free(sub);
        return ndshm__fail(NDSHM_EBUSY, 0, "all %d subscriber records of broadcast '%s' are in use by live processes",
                           NSUB, b->name);
    }
    bc_sub_t *rec = &r->subs[idx];
    atomic_store(&rec->hold, 0);
    uint32_t hw = atomic_load(&r->sub_hw);
    while (hw < idx + 1 && !atomic_compare_exchange_weak(&r->sub_hw, &hw, idx + 1)) {
    }
    /* join at tail: store it, then make sure no claim slipped past it (see the top comment) */
    uint64_t t = atomic_load(&r->tail) & T_POS;
    for (;;) {
        atomic_store(&rec->pos, t);
        uint64_t t2 = atomic_load(&r->tail) & T_POS;
        if (t2 == t) break;
        t = t2;
        ndshm__pause();
    }
    sub->b = b;
    sub->idx = idx;
    sub->key = me;
    sub->pos = t;
    *out = sub;
    return 0;
}

/* Writes the subscription's position for publishers and wakes those that wait. */
static void advance(ndshm_bsub_t *sub, uint64_t pos) {
    bc_hdr_t *r = sub->b->r;
    sub->pos = pos;
    if (sub->b->policy == NDSHM_BCAST_BLOCK) {
        atomic_store_explicit(&r->subs[sub->idx].pos, pos, memory_order_seq_cst);
        ndshm__ring_wake(&r->freed, &r->freed_waiters);
    } else {
        atomic_store_explicit(&r->subs[sub->idx].pos, pos, memory_order_relaxed);
    }
}

static bool sub_valid(const ndshm_bsub_t *sub) {
    return atomic_load_explicit(&sub->b->r->subs[sub->idx].owner, memory_order_relaxed) == sub->key;
}

void ndshm_bcast_unsubscribe(ndshm_bsub_t *sub) {
    if (sub == NULL) return;
    bc_hdr_t *r = sub->b->r;
    bc_sub_t *rec = &r->subs[sub->idx];
    if (sub_valid(sub)) {
        atomic_store(&rec->pos, NO_POS);
        atomic_store(&rec->hold, 0);
        uint64_t key = sub->key;
        atomic_compare_exchange_strong(&rec->owner, &key, 0);
        ndshm__ring_wake(&r->freed, &r->freed_waiters);
    }
    free(sub);
}

uint64_t ndshm_bcast_pending(const ndshm_bsub_t *sub) {
    if (sub == NULL) return 0;
    uint64_t t = atomic_load(&sub->b->r->tail) & T_POS;
    return t > sub->pos ? t - sub->pos : 0;
}

static int empty_or_timedout(double timeout) {
    if (timeout == 0) return ndshm__fail(NDSHM_EEMPTY, 0, "no new message");
    return ndshm__fail(NDSHM_ETIMEDOUT, 0, "no new message after %g s", timeout);
}

int ndshm_bcast_take(ndshm_bsub_t *sub, double timeout, ndshm_qmsg_t *msg, uint64_t *missed) {
    if (sub == NULL || msg == NULL || missed == NULL)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_take: NULL argument");
    msg->state_ = 0;
    *missed = 0;
    if (ndshm__check_timeout(timeout, "ndshm_bcast_take")) return NDSHM_EINVAL;
    if (sub->holding) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_take: the previous message is not released");
    ndshm_bcast_t *b = sub->b;
    bc_hdr_t *r = b->r;
    const uint64_t n = b->n;
    bc_sub_t *rec = &r->subs[sub->idx];
    if (!sub_valid(sub))
        return ndshm__fail(NDSHM_ECLOSED, 0, "subscription record %u of broadcast '%s' was taken over",
                           sub->idx, b->name);
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, timeout);
    w.intr = &sub->interrupted;
    stuck_t stuck = {-1, NO_POS};
    for (;;) {
        uint32_t seen = atomic_load(&r->published);
        uint64_t t = atomic_load(&r->tail);
        if (t & T_IMMEDIATE) return shut_down(b);
        uint64_t tpos = t & T_POS, p = sub->pos;
        bc_slot_t *s = slot_at(b, p);
        uint64_t raw = atomic_load_explicit(&s->state, memory_order_acquire);
        unsigned st = (unsigned)(raw & 3);
        uint64_t rp = (raw >> 2) - 1;
        if (raw != 0 && rp == p && st == ST_PUBLISHED) {
            if (b->policy == NDSHM_BCAST_OVERWRITE) {
                atomic_store(&rec->hold, p + 1);
                if (atomic_load(&s->state) != raw) { /* a publisher is overwriting it: lagged */
                    atomic_store(&rec->hold, 0);
                    ndshm__ring_wake(&r->freed, &r->freed_waiters);
                    continue;
                }
            }
            sub->holding = 1;
            int rc = ndshm__ring_msg_taken(msg, (char *)s + SLOT_HDR, b->slot_bytes, p, sub->idx, s->d.nbytes,
                                           s->d.ndim, s->d.typestr, s->d.shape);
            if (rc) ndshm_bcast_release(sub, msg); /* an impossible description: pass over it (keeps the detail) */
            return rc;
        }
        if (raw != 0 && rp == p && st == ST_SKIPPED) {
            advance(sub, p + 1);
            continue;
        }
        if (raw != 0 && rp > p && rp < tpos && st != 0) { /* overwritten */
            if (b->policy == NDSHM_BCAST_BLOCK) return impossible(b, p, raw, "subscriber");
            uint64_t oldest = tpos - n; /* rp >= p + n, so tpos > p + n */
            *missed = oldest - p;
            advance(sub, oldest);
            return ndshm__fail(NDSHM_ELAGGED, 0, "subscriber lagged behind and missed %llu messages",
                               (unsigned long long)(oldest - p));
        }
        bool writing = raw != 0 && rp == p && st == ST_WRITING;
        /* not yet written: the slot shows an older position of this slot (or none) */
        bool older = (raw == 0 && p < 2 * n) ||
                     (raw != 0 && st != 0 && rp < p && p - rp <= 2 * n && (p - rp) % n == 0);
        if (!writing && !older) {
            if (atomic_load(&r->tail) == t && atomic_load(&s->state) == raw) return impossible(b, p, raw, "subscriber");
            if (ndshm__ring_retry_expired(&w)) return empty_or_timedout(timeout);
            continue;
        }
        if (p >= tpos) {
            if (t & T_SHUTDOWN) return shut_down(b);
        } else if (stuck_long(&stuck, p)) {
            /* claimed: a publisher writes it, or died doing so (then it is skipped) */
            if (writing || (p >= n && rp == p - n && st >= ST_PUBLISHED) || (raw == 0 && p < n)) {
                skip_if_dead(b, p, raw);
                continue;
            }
        }
        if (timeout == 0 || ndshm__ring_wait(&w, &r->published, &r->pub_waiters, seen) == ETIMEDOUT) {
            if (atomic_load(&sub->interrupted))
                return ndshm__fail(NDSHM_ECLOSED, 0, "subscription to broadcast '%s' was closed while it waited",
                                   b->name);
            return empty_or_timedout(timeout);
        }
    }
}

int ndshm_bcast_release(ndshm_bsub_t *sub, ndshm_qmsg_t *msg) {
    if (sub == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_release: NULL argument");
    if (msg->state_ != 2 || !sub->holding || msg->pos_ != sub->pos || msg->part_ != sub->idx)
        return ndshm__fail(NDSHM_EINVAL, 0, "message state %u is not taken through this subscription", msg->state_);
    msg->state_ = 0;
    sub->holding = 0;
    bc_hdr_t *r = sub->b->r;
    if (sub->b->policy == NDSHM_BCAST_OVERWRITE && sub_valid(sub)) {
        atomic_store(&r->subs[sub->idx].hold, 0);
        advance(sub, msg->pos_ + 1);
        if (atomic_load(&r->freed_waiters) != 0) ndshm__ring_wake(&r->freed, &r->freed_waiters);
        return 0;
    }
    if (sub_valid(sub)) advance(sub, msg->pos_ + 1);
    else sub->pos = msg->pos_ + 1;
    return 0;
}

int ndshm_bcast_release_copy(ndshm_bsub_t *sub, ndshm_qmsg_t *msg, void *dst) {
    if (sub == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_release_copy: NULL argument");
    if (msg->state_ != 2) return ndshm__fail(NDSHM_EINVAL, 0, "message state %u is not taken", msg->state_);
    if (msg->nbytes) {
        if (dst == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_bcast_release_copy: dst is NULL");
        memcpy(dst, msg->data, msg->nbytes);
    }
    return ndshm_bcast_release(sub, msg);
}

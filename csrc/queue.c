/*
 * queue.c -- a bounded MPMC ring of aligned slots in shared memory (Vyukov's per-slot sequence
 * numbers), with futex sleeps and recovery of slots claimed by processes that died.
 *
 * Ring layout (all offsets from the ring's first byte, which is 64-aligned):
 *   0     ring_hdr_t: magic, version, geometry; tail, head and the two futex words each on
 *         their own cache line; then NDSHM_QUEUE_PARTICIPANTS claim records {owner, intent}
 *   slots_offset: `slots` slots of slot_stride bytes: a 320-byte slot header (sequence number
 *         and message descriptor) followed by slot_bytes of data, 64-aligned.
 *
 * Sequence protocol, for position pos in slot pos % slots:
 *   seq == pos           free for the producer of pos
 *   seq == pos + 1       published for the consumer of pos (SKIP bit set: nothing to read)
 *   seq == pos + slots   released: free for the producer of pos + slots
 *
 * Shutdown. Bit 63 of tail (T_SHUTDOWN) closes the queue to producers: a claim CASes tail from
 * a value without it, so once it is set tail is frozen and no message can be claimed after it;
 * consumers take what was claimed before it (waiting for in-flight loans), then get
 * NDSHM_ESHUTDOWN. Immediate shutdown also sets bit 63 of head (H_SHUTDOWN), which stops every
 * consumer at its next look at head (their CAS on head fails the same way). T_GONE (bit 62 of
 * tail) records that the shutdown came from the death of every registered producer: a consumer
 * that finds the queue empty for NDSHM__RING_DEAD_CHECK_NS checks the producer records' owners.
 *
 * Faults. Before its CAS on tail (or head), a claimer takes a claim record (owner = its process
 * id, identity.c) and writes its intent (pos, producer or consumer) there, and keeps it
 * until publish/discard (release); a producer whose CAS fails clears it (else, waiting for a
 * full ring, it would vouch for a dead winner's claim). A waiter stuck on a position that is
 * claimed but unfinished for NDSHM__RING_DEAD_CHECK_NS (ring.h) looks for a live claimer with
 * that intent; if there is none, the claimer died: a producer's slot is marked published+SKIP
 * (consumers pass over it), a consumer's slot is released. Both transitions are CASes from the
 * exact value observed, so they never undo progress made by anyone else.
 */
#include "internal.h"
#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_HDR NDSHM__RING_SLOT_HDR
#define SKIP ((uint64_t)1 << 63)
#define NPART NDSHM_QUEUE_PARTICIPANTS
#define NPROD NDSHM_QUEUE_MAX_PRODUCERS
#define T_SHUTDOWN ((uint64_t)1 << 63) /* in tail: no more claims */
#define T_GONE ((uint64_t)1 << 62)     /* in tail: shut down because every registered producer exited */
#define T_POS (((uint64_t)1 << 62) - 1)
#define H_SHUTDOWN ((uint64_t)1 << 63) /* in head: immediate shutdown, consumers stop at once */
#define H_POS (((uint64_t)1 << 63) - 1)

typedef struct ring_hdr {
    ndshm__ring_hdr_t h; /* magic (written last by the creator), version, geometry */
    uint32_t ring_flags; /* NDSHM__RING_POPULATE: attachers pre-fault the ring */
    char pad0[64 - 60];
    _Atomic uint64_t tail;
    char pad1[56];
    _Atomic uint64_t head;
    char pad2[56];
    _Atomic uint32_t not_empty, ne_waiters;
    char pad3[56];
    _Atomic uint32_t not_full, nf_waiters;
    char pad4[56];
    ndshm__ring_part_t parts[NPART]; /* intent: (pos << 1 | consumer) + 1 (enc), 0 when none */
    _Atomic uint64_t producers[NPROD]; /* process keys of registered producers, 0 when free */
    _Atomic uint32_t producers_ever;     /* registrations so far */
    _Atomic uint32_t producers_expected; /* the stream ends by producers exiting only after this many */
    char pad5[56];
    _Atomic uint64_t consumers[NPROD]; /* process keys of registered consumers, 0 when free */
    _Atomic uint32_t consumers_ever;     /* registrations so far */
    _Atomic uint32_t consumers_expected; /* producers give up on dead consumers only after this many */
    _Atomic uint32_t readers_gone;       /* 1: the shutdown came from every registered consumer exiting */
    char pad6[52];
} ring_hdr_t;

typedef struct slot_hdr {
    _Atomic uint64_t seq;
    ndshm__ring_desc_t d;
} slot_hdr_t;

_Static_assert(sizeof(slot_hdr_t) <= SLOT_HDR, "slot header too big");
_Static_assert(offsetof(slot_hdr_t, d) == 8, "message descriptor not right after the sequence number");
_Static_assert(sizeof(ring_hdr_t) % 64 == 0, "ring header not a multiple of 64");
_Static_assert(offsetof(ring_hdr_t, tail) == 64, "tail not on its own line");

const ndshm__ring_kind_t ndshm__queue_kind = {"queue", "ring", "ndshm_queue", NDSHM__QUEUE_MAGIC, NDSHM__QUEUE_VERSION,
                                               NDSHM__QUEUE_OLDEST, sizeof(ring_hdr_t), NDSHM_SEG_QUEUE,
                                               NDSHM_QUEUE_MAX_SLOTS, &ndshm__counters.live_queues};
#define KIND ndshm__queue_kind

struct ndshm_queue_s {
    ring_hdr_t *r;
    char *slots;
    uint64_t n, mask, slot_bytes, stride, ring_bytes;
    ndshm_segment_t *seg; /* NULL for raw rings */
    _Atomic uint64_t populated; /* key of the process that pre-faulted the ring (0: none) */
    _Atomic uint32_t interrupted; /* ndshm_queue_interrupt was called: this handle's waits end */
    char name[NDSHM_NAME_MAX + 1];
};

static inline slot_hdr_t *slot_at(const ndshm_queue_t *q, uint64_t pos) {
    return (slot_hdr_t *)(q->slots + (pos & q->mask) * q->stride);
}

static inline uint64_t enc(uint64_t pos, int consumer) { return (pos << 1 | (uint64_t)consumer) + 1; }

/* ---- geometry ------------------------------------------------------------------------ */

int ndshm_queue_ring_bytes(uint64_t slots, uint64_t slot_bytes, uint64_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_ring_bytes: out is NULL");
    return ndshm__ring_bytes(&KIND, slots, slot_bytes, out);
}

static int init_ring(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes, uint32_t ring_flags) {
    int rc = ndshm__ring_hdr_init(&KIND, mem, bytes, slots, slot_bytes);
    if (rc) return rc;
    ring_hdr_t *r = mem;
    r->ring_flags = ring_flags;
    for (uint64_t i = 0; i < slots; i++) {
        slot_hdr_t *s = (slot_hdr_t *)((char *)mem + r->h.slots_offset + i * r->h.slot_stride);
        memset(s, 0, sizeof *s);
        atomic_store_explicit(&s->seq, i, memory_order_relaxed);
    }
    atomic_store_explicit(&r->h.magic, KIND.magic, memory_order_release);
    return 0;
}

int ndshm_queue_init_raw(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes) {
    (void)ndshm__self_key(); /* registers this process (the default directory) if it is not yet */
    return init_ring(mem, bytes, slots, slot_bytes, 0);
}

static int open_ring(void *mem, uint64_t bytes, ndshm_queue_t *q) {
    ndshm__ring_geom_t g;
    int rc = ndshm__ring_hdr_open(&KIND, mem, bytes, &g);
    if (rc) return rc;
    q->r = mem;
    q->slots = (char *)mem + sizeof(ring_hdr_t);
    q->n = g.slots;
    q->mask = g.slots - 1;
    q->slot_bytes = g.slot_bytes;
    q->stride = g.stride;
    q->ring_bytes = g.ring_bytes;
    return 0;
}

/* Pre-faults the ring in this process (the creator asked for it), so the first messages do not
 * pay a page fault per 4 KiB. A fork()ed child inherits the mapping but not its page tables
 * (the kernel leaves shared mappings to fault again), so the first claim in a new process
 * populates again (see part_acquire): one madvise costs about 2/3 of the faults it saves and
 * takes them out of the steady state. */
static void populate_ring(ndshm_queue_t *q) {
    ndshm__ring_populate(q->r, q->ring_bytes, q->r->ring_flags, &q->populated);
}

int ndshm_queue_open_raw(void *mem, uint64_t bytes, ndshm_queue_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_open_raw: out is NULL");
    *out = NULL;
    ndshm_queue_t *q = calloc(1, sizeof *q);
    if (q == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a queue handle");
    int rc = open_ring(mem, bytes, q);
    if (rc) {
        free(q);
        return rc;
    }
    (void)ndshm__self_key(); /* registers this process (the default directory) if it is not yet */
    NDSHM__COUNT(live_queues, 1);
    *out = q;
    return 0;
}

/* ---- segments ------------------------------------------------------------------------ */

/* The end of create and attach: the ring in the segment opened into `q` (`rc` 0) and the
 * handle counted and returned (ndshm__ring_named_done), or everything undone. */
static int finish_named(ndshm_queue_t *q, int rc, const ndshm_segment_info_t *info, const char *name, int created,
                        ndshm_queue_t **out) {
    if (rc == 0) rc = open_ring((void *)info->data, info->data_size, q);
    if (rc) return ndshm__ring_named_fail(q->seg, q, rc);
    ndshm__ring_named_done(&KIND, name, created, q->r, q->ring_bytes, q->r->ring_flags, &q->populated,
                           q->name);
    *out = q;
    return 0;
}

int ndshm_queue_create(const char *name, const char *dir, uint64_t slots, uint64_t slot_bytes, unsigned mode,
                       unsigned flags, ndshm_queue_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_create: out is NULL");
    *out = NULL;
    ndshm_queue_t *q = calloc(1, sizeof *q);
    if (q == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a queue handle");
    const ndshm__ring_params_t p = {slots, slot_bytes, mode, flags};
    const ndshm_segment_info_t *info = NULL;
    int rc = ndshm__ring_named(&KIND, name, dir, &p, &q->seg, &info);
    if (rc == 0) rc = init_ring((void *)info->data, info->data_size, slots, slot_bytes, ndshm__ring_flags_of(flags));
    return finish_named(q, rc, info, name, 1, out);
}

int ndshm_queue_attach(const char *name, const char *dir, ndshm_queue_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_attach: out is NULL");
    *out = NULL;
    ndshm_queue_t *q = calloc(1, sizeof *q);
    if (q == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a queue handle");
    const ndshm_segment_info_t *info = NULL;
    int rc = ndshm__ring_named(&KIND, name, dir, NULL, &q->seg, &info);
    return finish_named(q, rc, info, name, 0, out);
}

void ndshm_queue_close(ndshm_queue_t *q) {
    if (q == NULL) return;
    ndshm__ring_close(&KIND, q->seg, q);
}

int ndshm_queue_info(const ndshm_queue_t *q, ndshm_queue_info_t *out) {
    if (q == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_info: NULL argument");
    memset(out, 0, sizeof *out);
    out->slots = q->n;
    out->slot_bytes = q->slot_bytes;
    out->slot_stride = q->stride;
    out->ring = (uintptr_t)q->r;
    out->ring_bytes = q->ring_bytes;
    memcpy(out->name, q->name, sizeof out->name);
    return 0;
}

uint64_t ndshm_queue_size(const ndshm_queue_t *q) {
    if (q == NULL) return 0;
    uint64_t head = atomic_load(&q->r->head), tail = atomic_load(&q->r->tail) & T_POS;
    if (head & H_SHUTDOWN) return 0; /* shut down immediately: what was queued is discarded */
    if (tail <= head) return 0;
    return tail - head > q->n ? q->n : tail - head;
}

/* ---- claim records ------------------------------------------------------------------- */

static _Thread_local unsigned part_hint = UINT_MAX;

static int part_acquire(ndshm_queue_t *q, uint32_t *out) {
    uint64_t me = ndshm__self_key();
    if (atomic_load_explicit(&q->populated, memory_order_relaxed) != me) populate_ring(q); /* a fork()ed child */
    if (part_hint >= NPART) part_hint = (unsigned)(((uintptr_t)&part_hint >> 6) * 2654435761u) % NPART;
    if (ndshm__ring_part_take_free(q->r->parts, NPART, part_hint, me, out)) {
        part_hint = *out;
        return 0;
    }
    if (ndshm__ring_part_take_dead(q->r->parts, NPART, me, out)) return 0; /* all taken: reclaim the dead's */
    return ndshm__fail(NDSHM_EBUSY, 0, "all %d claim records of the queue are in use by live processes", NPART);
}

static inline void part_release(ndshm_queue_t *q, uint32_t idx) { ndshm__ring_part_release(q->r->parts, idx); }

/* true if a live process holds intent `want` */
static bool intent_alive(ndshm_queue_t *q, uint64_t want) {
    return ndshm__ring_intent_alive(q->r->parts, NPART, want);
}

static void wake_all(ndshm_queue_t *q) {
    ndshm__ring_wake(&q->r->not_empty, &q->r->ne_waiters);
    ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
}

/* true if a registered producer still runs */
static bool producers_alive(ndshm_queue_t *q) {
    for (unsigned i = 0; i < NPROD; i++) {
        uint64_t owner = atomic_load(&q->r->producers[i]);
        if (owner != 0 && ndshm__key_alive(owner)) return true;
    }
    return false;
}

/* true if a registered consumer still runs */
static bool consumers_alive(ndshm_queue_t *q) {
    for (unsigned i = 0; i < NPROD; i++) {
        uint64_t owner = atomic_load(&q->r->consumers[i]);
        if (owner != 0 && ndshm__key_alive(owner)) return true;
    }
    return false;
}

/* true when consumers registered (as many as expected) and none of them runs any more */
static bool consumers_gone(ndshm_queue_t *q) {
    uint32_t ever = atomic_load_explicit(&q->r->consumers_ever, memory_order_relaxed);
    return ever && ever >= atomic_load_explicit(&q->r->consumers_expected, memory_order_relaxed) &&
           !consumers_alive(q);
}

/* ---- shutdown and producers ---------------------------------------------------------- */

static int shut_down(const ndshm_queue_t *q, uint64_t tail) {
    if (atomic_load(&q->r->readers_gone))
        return ndshm__fail(NDSHM_ESHUTDOWN, 0,
                           "queue '%s' is shut down: every registered consumer has exited (or unregistered), so "
                           "nothing put would be read",
                           q->name);
    if (tail & T_GONE)
        return ndshm__fail(NDSHM_ESHUTDOWN, 0, "queue '%s' is shut down: every registered producer has exited",
                           q->name);
    return ndshm__fail(NDSHM_ESHUTDOWN, 0, "queue '%s' is shut down", q->name);
}

int ndshm_queue_shutdown(ndshm_queue_t *q, int immediate) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_shutdown: NULL argument");
    atomic_fetch_or(&q->r->tail, T_SHUTDOWN);
    if (immediate) atomic_fetch_or(&q->r->head, H_SHUTDOWN);
    wake_all(q);
    return 0;
}

int ndshm_queue_is_shutdown(const ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_is_shutdown: NULL argument");
    if (atomic_load(&q->r->head) & H_SHUTDOWN) return 2;
    uint64_t t = atomic_load(&q->r->tail);
    return !(t & T_SHUTDOWN) ? 0 : (t & T_GONE) ? 3 : 1;
}

/* The records of registered participants (producers or consumers): `recs` holds NPROD keys. */
static int register_in(ndshm_queue_t *q, _Atomic uint64_t *recs, _Atomic uint32_t *ever, const char *who) {
    ring_hdr_t *r = q->r;
    uint64_t me = ndshm__self_key();
    for (unsigned i = 0; i < NPROD; i++)
        if (atomic_load(&recs[i]) == me) return 0; /* already registered */
    for (int round = 0; round < 2; round++) {      /* free records first, then those of the dead */
        for (unsigned i = 0; i < NPROD; i++) {
            uint64_t cur = atomic_load(&recs[i]);
            if (round == 0 ? cur != 0 : (cur == 0 || ndshm__key_alive(cur))) continue;
            if (atomic_compare_exchange_strong(&recs[i], &cur, me)) {
                atomic_fetch_add(ever, 1u);
                /* checked after the record is visible: a process that saw every one of them dead
                 * has shut the queue down by now, or will see this one alive */
                if (atomic_load(&r->tail) & T_SHUTDOWN) {
                    atomic_store(&recs[i], 0);
                    return shut_down(q, atomic_load(&r->tail));
                }
                return 0;
            }
        }
    }
    return ndshm__fail(NDSHM_EBUSY, 0, "all %d %s records of queue '%s' are held by live processes", NPROD, who,
                       q->name);
}

static int unregister_in(ndshm_queue_t *q, _Atomic uint64_t *recs, const char *who) {
    uint64_t me = ndshm__self_key();
    int found = 0;
    for (unsigned i = 0; i < NPROD; i++) {
        uint64_t cur = me;
        if (atomic_compare_exchange_strong(&recs[i], &cur, 0)) found = 1;
    }
    if (!found) return ndshm__fail(NDSHM_EINVAL, 0, "this process is not a registered %s of queue '%s'", who, q->name);
    wake_all(q); /* the other side may find every one of them gone now */
    return 0;
}

static int count_alive(_Atomic uint64_t *recs) {
    int n = 0;
    for (unsigned i = 0; i < NPROD; i++) {
        uint64_t owner = atomic_load(&recs[i]);
        if (owner != 0 && ndshm__key_alive(owner)) n++;
    }
    return n;
}

int ndshm_queue_register_producer(ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_register_producer: NULL argument");
    return register_in(q, q->r->producers, &q->r->producers_ever, "producer");
}

int ndshm_queue_expect_producers(ndshm_queue_t *q, uint32_t n) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_expect_producers: NULL argument");
    atomic_store(&q->r->producers_expected, n);
    ndshm__ring_wake(&q->r->not_empty, &q->r->ne_waiters);
    return 0;
}

int ndshm_queue_unregister_producer(ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_unregister_producer: NULL argument");
    return unregister_in(q, q->r->producers, "producer");
}

int ndshm_queue_producers(const ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_producers: NULL argument");
    return count_alive(q->r->producers);
}

int ndshm_queue_register_consumer(ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_register_consumer: NULL argument");
    return register_in(q, q->r->consumers, &q->r->consumers_ever, "consumer");
}

int ndshm_queue_expect_consumers(ndshm_queue_t *q, uint32_t n) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_expect_consumers: NULL argument");
    atomic_store(&q->r->consumers_expected, n);
    ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
    return 0;
}

int ndshm_queue_unregister_consumer(ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_unregister_consumer: NULL argument");
    return unregister_in(q, q->r->consumers, "consumer");
}

int ndshm_queue_consumers(const ndshm_queue_t *q) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_consumers: NULL argument");
    return count_alive(q->r->consumers);
}

void ndshm_queue_interrupt(ndshm_queue_t *q) {
    if (q == NULL) return;
    atomic_store(&q->interrupted, 1u);
    /* a waiter of this handle that read the words before the flag sees them changed and looks
     * again; waiters of other handles wake, find nothing new and sleep again */
    atomic_fetch_add(&q->r->not_empty, 1u);
    atomic_fetch_add(&q->r->not_full, 1u);
    ndshm__futex_wake(&q->r->not_empty, INT_MAX);
    ndshm__futex_wake(&q->r->not_full, INT_MAX);
}

uint32_t ndshm_queue_epoch(const ndshm_queue_t *q, int producer) {
    if (q == NULL) return 0;
    return atomic_load(producer ? &q->r->not_full : &q->r->not_empty);
}

int ndshm_queue_wait_epoch(ndshm_queue_t *q, int producer, uint32_t seen, double timeout) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_wait_epoch: NULL argument");
    if (ndshm__check_timeout(timeout, "ndshm_queue_wait_epoch")) return NDSHM_EINVAL;
    int rc = producer ? ndshm__ring_wait_word(&q->r->not_full, &q->r->nf_waiters, seen, timeout, &q->interrupted)
                      : ndshm__ring_wait_word(&q->r->not_empty, &q->r->ne_waiters, seen, timeout, &q->interrupted);
    if (rc == ECANCELED)
        return ndshm__fail(NDSHM_ECLOSED, 0, "queue '%s': this handle was closed while the call waited", q->name);
    if (rc == ETIMEDOUT) return ndshm__fail(NDSHM_ETIMEDOUT, 0, "queue unchanged after %g s", timeout);
    return 0;
}

/* A wait of handle q that ended early because q was interrupted: NDSHM_ECLOSED instead of `rc`. */
static int interrupted_or(const ndshm_queue_t *q, int rc) {
    if ((rc == NDSHM_ETIMEDOUT || rc == NDSHM_EFULL || rc == NDSHM_EEMPTY) && atomic_load(&q->interrupted))
        return ndshm__fail(NDSHM_ECLOSED, 0, "queue '%s': this handle was closed while the call waited", q->name);
    return rc;
}

/* ---- waiting (ring.h has the waiter) ------------------------------------------------- */

/* true if `dif` (a slot's sequence number minus what the claimer hoped for) is outside the
 * [-n, 0] that the protocol allows while tail (head) still holds the position read: a slot's
 * sequence is at least that of the claim n positions back and gets ahead only once tail
 * (head) has moved past the position. */
static inline bool dif_out_of_range(int64_t dif, uint64_t n) { return (uint64_t)dif + n > n; }

/* A slot sequence out of that range while tail (head), named `end`, still holds `pos`: the ring
 * holds what no producer or consumer could have written (shared memory is never trusted), and
 * retrying would spin. If tail (head) moved on, the read was only stale and the caller retries. */
static int impossible_seq(const ndshm_queue_t *q, uint64_t pos, uint64_t raw, const char *end) {
    return ndshm__fail(NDSHM_ECORRUPT, 0,
                       "queue ring is corrupt: slot %llu holds sequence %llu, impossible at %s %llu (%llu slots)",
                       (unsigned long long)(pos & q->mask), (unsigned long long)raw, end, (unsigned long long)pos,
                       (unsigned long long)q->n);
}

/* true when position `pos` has been stuck for NDSHM__RING_DEAD_CHECK_NS (and restarts the
 * clock). The clock lives in thread-local storage, so callers polling with timeout 0 get there
 * too (the broadcast keeps its clock per call). */
static _Thread_local struct {
    const void *ring;
    uint64_t pos;
    int64_t since;
} stuck[2];

static bool stuck_long(const ndshm_queue_t *q, int consumer, uint64_t pos) {
    int64_t now = ndshm__now_ns();
    if (stuck[consumer].ring != q->r || stuck[consumer].pos != pos) {
        stuck[consumer].ring = q->r;
        stuck[consumer].pos = pos;
        stuck[consumer].since = now;
        return false;
    }
    if (now - stuck[consumer].since < NDSHM__RING_DEAD_CHECK_NS) return false;
    stuck[consumer].since = now;
    return true;
}

/* ---- producer side ------------------------------------------------------------------- */

static int full_or_timedout(const ndshm_queue_t *q, double timeout) {
    if (timeout == 0) return ndshm__fail(NDSHM_EFULL, 0, "queue is full (%llu slots)", (unsigned long long)q->n);
    return ndshm__fail(NDSHM_ETIMEDOUT, 0, "queue still full (%llu slots) after %g s", (unsigned long long)q->n,
                       timeout);
}

static int claim_producer(ndshm_queue_t *q, double timeout, uint32_t part, uint64_t *out_pos) {
    ring_hdr_t *r = q->r;
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, timeout);
    w.intr = &q->interrupted;
    for (;;) {
        uint32_t seen = atomic_load(&r->not_full);
        uint64_t pos = atomic_load(&r->tail);
        if (pos & T_SHUTDOWN) return shut_down(q, pos);
        pos &= T_POS; /* a stray T_GONE without T_SHUTDOWN (a hostile writer): the CAS below fails */
        slot_hdr_t *s = slot_at(q, pos);
        uint64_t raw = atomic_load_explicit(&s->seq, memory_order_acquire);
        int64_t dif = (int64_t)((raw & ~SKIP) - pos);
        if (dif == 0) {
            if (__builtin_expect(ndshm__ring_pinned(&s->d), 0)) { /* its last message is pinned */
                int pin = ndshm__ring_pin_check(s, &s->d, ndshm__self_key(), pos & q->mask, "queue");
                if (pin < 0) return pin;
                if (pin == 0) continue;
                if (timeout == 0 || ndshm__ring_wait(&w, &r->not_full, &r->nf_waiters, seen) == ETIMEDOUT)
                    return full_or_timedout(q, timeout);
                continue;
            }
            atomic_store(&r->parts[part].intent, enc(pos, 0));
            if (atomic_compare_exchange_strong(&r->tail, &pos, pos + 1)) {
                *out_pos = pos;
                return 0;
            }
            /* lost the race: the intent goes, or a wait for a full ring below would keep it, and
             * should the winner die before publishing, consumers would take it for a live claim
             * of that position and never pass it (every producer then waits for ever) */
            atomic_store(&r->parts[part].intent, 0);
            if (ndshm__ring_retry_expired(&w)) return full_or_timedout(q, timeout);
            continue;
        }
        if (dif_out_of_range(dif, q->n)) {
            if (atomic_load(&r->tail) == pos) return impossible_seq(q, pos, raw, "tail");
            if (ndshm__ring_retry_expired(&w)) return full_or_timedout(q, timeout);
            continue;
        }
        /* full: slot of pos - n not yet released */
        uint64_t p0 = pos - q->n;
        if (stuck_long(q, 0, pos)) {
            if ((raw & ~SKIP) == p0 + 1 && (atomic_load(&r->head) & H_POS) > p0 && !intent_alive(q, enc(p0, 1))) {
                if (atomic_compare_exchange_strong(&s->seq, &raw, pos)) ndshm__ring_wake(&r->not_full, &r->nf_waiters);
                continue;
            }
            if (consumers_gone(q)) { /* nobody will ever free a slot: the stream ends */
                atomic_store(&r->readers_gone, 1u);
                uint64_t want = pos;
                if (atomic_compare_exchange_strong(&r->tail, &want, pos | T_SHUTDOWN)) wake_all(q);
                else if (!(want & T_SHUTDOWN)) atomic_store(&r->readers_gone, 0u); /* tail moved: look again */
                continue;
            }
        }
        if (timeout == 0 || ndshm__ring_wait(&w, &r->not_full, &r->nf_waiters, seen) == ETIMEDOUT)
            return full_or_timedout(q, timeout);
    }
}

/* A claim record and a position for a producer (loan, put); the record is given back if the
 * claim fails. */
static int claim_slot(ndshm_queue_t *q, double timeout, uint32_t *part, uint64_t *pos) {
    int rc = part_acquire(q, part);
    if (rc) return rc;
    rc = claim_producer(q, timeout, *part, pos);
    if (rc) part_release(q, *part);
    return rc;
}

int ndshm_queue_loan(ndshm_queue_t *q, uint64_t nbytes, double timeout, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_loan: NULL argument");
    msg->state_ = 0;
    if (ndshm__check_timeout(timeout, "ndshm_queue_loan")) return NDSHM_EINVAL;
    int rc = ndshm__ring_check_desc(q->slot_bytes, "queue", nbytes, NULL, 0);
    if (rc) return rc;
    uint32_t part;
    uint64_t pos;
    rc = claim_slot(q, timeout, &part, &pos);
    if (rc) return interrupted_or(q, rc);
    ndshm__ring_msg_loaned(msg, (char *)slot_at(q, pos) + SLOT_HDR, q->slot_bytes, nbytes, pos, part);
    return 0;
}

static void finish_producer(ndshm_queue_t *q, uint64_t pos, uint32_t part, bool skip) {
    slot_hdr_t *s = slot_at(q, pos);
    atomic_store_explicit(&s->seq, (pos + 1) | (skip ? SKIP : 0), memory_order_release);
    part_release(q, part);
    ndshm__ring_wake(&q->r->not_empty, &q->r->ne_waiters);
}

int ndshm_queue_publish(ndshm_queue_t *q, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_publish: NULL argument");
    int rc = ndshm__ring_publish_desc(msg, &slot_at(q, msg->pos_)->d, q->slot_bytes, "queue");
    if (rc) return rc;
    finish_producer(q, msg->pos_, msg->part_, false);
    return 0;
}

int ndshm_queue_pin(ndshm_queue_t *q, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_pin: NULL argument");
    if (ndshm__ring_check_loaned(msg)) return NDSHM_EINVAL;
    slot_hdr_t *s = slot_at(q, msg->pos_);
    ndshm__ring_pin(s, &s->d, ndshm__self_key());
    return 0;
}

int ndshm_queue_unpin(ndshm_queue_t *q, uint64_t pos) {
    if (q == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_unpin: NULL argument");
    slot_hdr_t *s = slot_at(q, pos);
    int rc = ndshm__ring_unpin(s, &s->d, ndshm__self_key(), pos & q->mask);
    if (rc == 0) ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
    return rc;
}

int ndshm_queue_discard(ndshm_queue_t *q, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_discard: NULL argument");
    if (ndshm__ring_check_loaned(msg)) return NDSHM_EINVAL;
    msg->state_ = 0;
    finish_producer(q, msg->pos_, msg->part_, true);
    return 0;
}

int ndshm_queue_put(ndshm_queue_t *q, const void *data, uint64_t nbytes, const char *typestr, uint32_t ndim,
                    const int64_t *shape, double timeout) {
    if (q == NULL || (data == NULL && nbytes) || (shape == NULL && ndim))
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_put: NULL argument");
    if (ndshm__check_timeout(timeout, "ndshm_queue_put")) return NDSHM_EINVAL;
    int rc = ndshm__ring_check_desc(q->slot_bytes, "queue", nbytes, typestr, ndim);
    if (rc) return rc;
    uint32_t part;
    uint64_t pos;
    rc = claim_slot(q, timeout, &part, &pos);
    if (rc) return interrupted_or(q, rc);
    slot_hdr_t *s = slot_at(q, pos);
    if (nbytes) memcpy((char *)s + SLOT_HDR, data, nbytes);
    ndshm__ring_write_desc(&s->d, nbytes, typestr, ndim, shape);
    finish_producer(q, pos, part, false);
    return 0;
}

int ndshm_queue_put_many(ndshm_queue_t *q, const void *data, const uint64_t *offsets, uint64_t count,
                         const char *typestr, uint64_t itemsize, double timeout, uint64_t *done) {
    if (q == NULL || offsets == NULL || done == NULL || (data == NULL && count))
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_put_many: NULL argument");
    *done = 0;
    if (ndshm__check_timeout(timeout, "ndshm_queue_put_many")) return NDSHM_EINVAL;
    if (itemsize == 0) return ndshm__fail(NDSHM_EINVAL, 0, "put_many: itemsize is 0");
    for (uint64_t i = 0; i < count; i++) {
        if (offsets[i + 1] < offsets[i])
            return ndshm__fail(NDSHM_EINVAL, 0, "put_many: offsets[%llu] = %llu decreases", (unsigned long long)i + 1,
                               (unsigned long long)offsets[i + 1]);
        uint64_t nb = offsets[i + 1] - offsets[i];
        if (nb % itemsize)
            return ndshm__fail(NDSHM_EINVAL, 0, "put_many: message %llu of %llu bytes is not a multiple of itemsize %llu",
                               (unsigned long long)i, (unsigned long long)nb, (unsigned long long)itemsize);
        int64_t shape = (int64_t)(nb / itemsize);
        int rc = ndshm_queue_put(q, (const char *)data + offsets[i], nb, typestr, 1, &shape, i == 0 ? timeout : 0);
        if (rc) return i == 0 || (rc != NDSHM_EFULL) ? rc : 0;
        *done = i + 1;
    }
    return 0;
}

/* ---- consumer side ------------------------------------------------------------------- */

enum { PEEK_FITS = 0, PEEK_STOP = 1 };

typedef struct peek {
    uint64_t max_bytes;  /* claim only messages up to this size */
    const char *typestr; /* and of this typestr, unless NULL */
} peek_t;

static int empty_or_timedout(double timeout) {
    if (timeout == 0) return ndshm__fail(NDSHM_EEMPTY, 0, "queue is empty");
    return ndshm__fail(NDSHM_ETIMEDOUT, 0, "queue still empty after %g s", timeout);
}

/* Claims the oldest published message into msg (state 2). With `pk`, a message that fails its
 * conditions is left alone and PEEK_STOP is returned. NDSHM_ECORRUPT with msg->state_ == 2: the
 * message was claimed but its descriptor is impossible (the caller releases it); with
 * msg->state_ != 2: nothing was claimed, the ring's head or a sequence number is impossible. */
static int claim_consumer(ndshm_queue_t *q, double timeout, uint32_t part, ndshm_qmsg_t *msg, const peek_t *pk) {
    ring_hdr_t *r = q->r;
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, timeout);
    w.intr = &q->interrupted;
    for (;;) {
        uint32_t seen = atomic_load(&r->not_empty);
        uint64_t pos = atomic_load(&r->head);
        if (pos & H_SHUTDOWN) return shut_down(q, atomic_load(&r->tail));
        slot_hdr_t *s = slot_at(q, pos);
        uint64_t raw = atomic_load_explicit(&s->seq, memory_order_acquire);
        int64_t dif = (int64_t)((raw & ~SKIP) - (pos + 1));
        if (dif == 0) {
            /* the descriptor is stable while head == pos: read it before the CAS, check after */
            uint64_t nbytes = s->d.nbytes;
            uint32_t ndim = s->d.ndim;
            char ts[NDSHM_TYPESTR_MAX];
            memcpy(ts, s->d.typestr, sizeof ts);
            ts[NDSHM_TYPESTR_MAX - 1] = '\0';
            if (pk && !(raw & SKIP) &&
                (nbytes > pk->max_bytes || ndim != 1 || (pk->typestr && strcmp(ts, pk->typestr) != 0))) {
                if (atomic_load(&r->head) == pos) return PEEK_STOP;
                if (ndshm__ring_retry_expired(&w)) return empty_or_timedout(timeout);
                continue;
            }
            atomic_store(&r->parts[part].intent, enc(pos, 1));
            if (!atomic_compare_exchange_strong(&r->head, &pos, pos + 1)) {
                if (ndshm__ring_retry_expired(&w)) return empty_or_timedout(timeout);
                continue;
            }
            if (raw & SKIP) { /* a discarded or reclaimed slot: pass over it */
                atomic_store_explicit(&s->seq, pos + q->n, memory_order_release);
                ndshm__ring_wake(&r->not_full, &r->nf_waiters);
                continue;
            }
            return ndshm__ring_msg_taken(msg, (char *)s + SLOT_HDR, q->slot_bytes, pos, part, nbytes, ndim, ts,
                                         s->d.shape);
        }
        if (dif_out_of_range(dif, q->n)) {
            if (atomic_load(&r->head) == pos) return impossible_seq(q, pos, raw, "head");
            if (ndshm__ring_retry_expired(&w)) return empty_or_timedout(timeout);
            continue;
        }
        /* empty, or the producer of pos has not published */
        uint64_t t = atomic_load(&r->tail), tpos = t & T_POS;
        if (tpos <= pos) { /* empty: nothing claimed at pos */
            if (t & T_SHUTDOWN) {
                if (atomic_load(&r->head) == pos) return shut_down(q, t);
                continue; /* head moved: look again */
            }
            uint32_t ever = atomic_load_explicit(&r->producers_ever, memory_order_relaxed);
            if (ever && ever >= atomic_load_explicit(&r->producers_expected, memory_order_relaxed) &&
                stuck_long(q, 1, pos) && !producers_alive(q)) {
                uint64_t want = tpos;
                if (atomic_compare_exchange_strong(&r->tail, &want, tpos | T_SHUTDOWN | T_GONE)) wake_all(q);
                continue;
            }
        } else if ((raw & ~SKIP) == pos && raw == pos && stuck_long(q, 1, pos) && !intent_alive(q, enc(pos, 0))) {
            if (atomic_compare_exchange_strong(&s->seq, &raw, (pos + 1) | SKIP))
                ndshm__ring_wake(&r->not_empty, &r->ne_waiters);
            continue;
        }
        if (timeout == 0 || ndshm__ring_wait(&w, &r->not_empty, &r->ne_waiters, seen) == ETIMEDOUT)
            return empty_or_timedout(timeout);
    }
}

int ndshm_queue_take(ndshm_queue_t *q, double timeout, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_take: NULL argument");
    msg->state_ = 0;
    if (ndshm__check_timeout(timeout, "ndshm_queue_take")) return NDSHM_EINVAL;
    uint32_t part;
    int rc = part_acquire(q, &part);
    if (rc) return rc;
    rc = claim_consumer(q, timeout, part, msg, NULL);
    if (rc == NDSHM_ECORRUPT && msg->state_ == 2) ndshm_queue_release(q, msg), rc = NDSHM_ECORRUPT; /* keeps the detail */
    else if (rc) part_release(q, part);
    return interrupted_or(q, rc);
}

int ndshm_queue_release(ndshm_queue_t *q, ndshm_qmsg_t *msg) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_release: NULL argument");
    if (msg->state_ != 2) return ndshm__fail(NDSHM_EINVAL, 0, "message state %u is not taken", msg->state_);
    msg->state_ = 0;
    atomic_store_explicit(&slot_at(q, msg->pos_)->seq, msg->pos_ + q->n, memory_order_release);
    part_release(q, msg->part_);
    ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
    return 0;
}

int ndshm_queue_take_copy(ndshm_queue_t *q, double timeout, ndshm_qmsg_t *msg, void *dst, uint64_t dst_bytes) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_take_copy: NULL argument");
    int rc = ndshm_queue_take(q, timeout, msg);
    if (rc) return rc;
    if (msg->nbytes > dst_bytes || (msg->nbytes && dst == NULL))
        return ndshm__fail(NDSHM_ETOOBIG, 0, "message of %llu bytes does not fit the %llu-byte destination: it stays taken",
                           (unsigned long long)msg->nbytes, (unsigned long long)dst_bytes);
    if (msg->nbytes) memcpy(dst, msg->data, msg->nbytes);
    return ndshm_queue_release(q, msg);
}

int ndshm_queue_release_copy(ndshm_queue_t *q, ndshm_qmsg_t *msg, void *dst) {
    if (q == NULL || msg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_release_copy: NULL argument");
    if (msg->state_ != 2) return ndshm__fail(NDSHM_EINVAL, 0, "message state %u is not taken", msg->state_);
    if (msg->nbytes) {
        if (dst == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_release_copy: dst is NULL");
        memcpy(dst, msg->data, msg->nbytes);
    }
    return ndshm_queue_release(q, msg);
}

int ndshm_queue_get_many(ndshm_queue_t *q, void *dst, uint64_t dst_bytes, uint64_t *offsets, uint64_t max,
                         char *typestr, double timeout, uint64_t *count) {
    if (q == NULL || offsets == NULL || count == NULL || typestr == NULL || (dst == NULL && dst_bytes))
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_queue_get_many: NULL argument");
    *count = 0;
    offsets[0] = 0;
    if (max == 0) return ndshm__fail(NDSHM_EINVAL, 0, "get_many: max is 0");
    if (ndshm__check_timeout(timeout, "ndshm_queue_get_many")) return NDSHM_EINVAL;
    uint32_t part;
    int rc = part_acquire(q, &part);
    if (rc) return rc;
    static _Thread_local ndshm_qmsg_t msg;
    msg.state_ = 0;
    uint64_t used = 0, n = 0;
    while (n < max) {
        peek_t pk = {dst_bytes - used, n ? typestr : NULL};
        rc = claim_consumer(q, n ? 0 : timeout, part, &msg, &pk);
        if (rc == PEEK_STOP) {
            rc = n ? 0 : ndshm__fail(NDSHM_ETOOBIG, 0, "get_many: the next message does not fit %llu bytes",
                                     (unsigned long long)(dst_bytes - used));
            break;
        }
        if (rc) {
            bool claimed = rc == NDSHM_ECORRUPT && msg.state_ == 2;
            if (claimed) { /* a message with an impossible descriptor: release, keep the record */
                msg.state_ = 0;
                atomic_store_explicit(&slot_at(q, msg.pos_)->seq, msg.pos_ + q->n, memory_order_release);
                ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
            }
            /* the messages got so far are returned; an impossible ring (nothing claimed) is
             * reported by the next call, which meets it again */
            if (n && !claimed) rc = 0;
            break;
        }
        if (n == 0) memcpy(typestr, msg.typestr, NDSHM_TYPESTR_MAX);
        if (msg.nbytes) memcpy((char *)dst + used, msg.data, msg.nbytes);
        used += msg.nbytes;
        atomic_store_explicit(&slot_at(q, msg.pos_)->seq, msg.pos_ + q->n, memory_order_release);
        msg.state_ = 0;
        atomic_store(&q->r->parts[part].intent, 0);
        ndshm__ring_wake(&q->r->not_full, &q->r->nf_waiters);
        offsets[++n] = used;
    }
    part_release(q, part);
    *count = n;
    return n ? rc : interrupted_or(q, rc);
}

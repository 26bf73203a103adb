/*
 * pool.c -- a pre-faulted shared-memory pool that blocks are carved from (see "Pool" in ndshm.h).
 *
 * Format (version 1), in one NAMED segment's data (NDSHM_SEG_POOL) or in raw shared memory:
 *
 *   pool_hdr_t   magic (written last by the creator), geometry (read once at open, validated,
 *                then used from the handle's copy), the pool's robust lock (a Sync lock: its
 *                owner is a process id, a dead owner is detected), then the mutable state that
 *                only the lock's holder touches: the generation counter, counters, the head of
 *                the list of unused records, the TLSF bins (a bitmap and one list head per bin)
 *                and the process slots (the ids of the processes using the pool).
 *   rec_t[n]     the block table: one 64-byte record per block or free range: offset, size,
 *                generation, state (UNUSED, FREE, USED), links in address order and in its bin,
 *                the bitmask of process slots pinning it, the outstanding hand-overs.
 *   data         page-aligned: the blocks.
 *
 * Allocator: TLSF-style good fit (two-level segregated lists: 4 bins per power of two of the
 * size in granules, a bitmap to find the first non-empty one), immediate coalescing of
 * neighbours in address order. O(1) per carve and free, and a block never gets more than 25%
 * larger than its request, free ranges are always maximal (no two free neighbours).
 *
 * Crash safety: only USED records are the truth. A carve writes a record's state USED last; a
 * process that dies holding the lock leaves the other structures maybe half-updated, and the
 * next holder (ndshm_lock_acquire reports NDSHM_EOWNERDEAD) rebuilds the free ranges, bins and
 * unused list from the USED records (rebuild()), after checking that they fit and do not overlap.
 *
 * Nothing read from shared memory is trusted: every index is checked against the table's size,
 * every offset and size against the capacity, every list walk is bounded by the table's size.
 */
#include "internal.h"
#include "ring.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#define POOL_MAGIC 0x4c4f4f504d485344ull /* "DSHMPOOL" */
#define POOL_VERSION 1u
#define NONE 0xFFFFFFFFu
#define NBINS 256
#define GRAN ((uint64_t)NDSHM_POOL_GRANULE)
#define NPROCS NDSHM_POOL_MAX_PROCS
#define LOCK_TIMEOUT 5.0
#define DATA_ALIGN 4096u

enum { ST_UNUSED = 0, ST_FREE = 1, ST_USED = 2 };

typedef struct pool_hdr {
    _Atomic uint64_t magic;
    uint32_t version, hdr_bytes;
    uint64_t total_bytes;  /* of the whole area at creation */
    uint64_t capacity;     /* bytes of data */
    uint64_t data_offset;  /* from the start of the area */
    uint64_t table_offset; /* from the start of the area */
    uint32_t max_blocks, max_procs;
    uint64_t pool_id;
    char lock[NDSHM_SYNC_SIZE];
    /* ---- under the lock ---- */
    uint64_t next_gen;
    uint64_t used, high_water, live_blocks, in_transit;
    uint64_t carves, frees, reclaimed;
    uint32_t unused_head, first;
    uint64_t bin_map[NBINS / 64];
    uint32_t bin_head[NBINS];
    uint64_t procs[NPROCS];
    uint64_t high_end; /* the highest end of a block ever carved: the pool's footprint */
    char pad[16];
} pool_hdr_t;

typedef struct rec {
    uint64_t offset, size, generation;
    uint32_t state, transit;
    uint32_t prev_addr, next_addr, prev_free, next_free;
    uint64_t pins;    /* bit s: process slot s pins the block */
    uint64_t senders; /* bit s: process slot s has a hand-over outstanding */
} rec_t;

_Static_assert(sizeof(rec_t) == 64, "a block record is one cache line");
_Static_assert(sizeof(pool_hdr_t) % 64 == 0, "pool header not a multiple of 64");
_Static_assert(offsetof(pool_hdr_t, lock) % 64 == 0, "pool lock not on its own line");
_Static_assert(NPROCS == 64, "process slots are the bits of a uint64_t");

struct ndshm_pool_s {
    pool_hdr_t *h;
    rec_t *r;
    char *data;
    uint64_t capacity; /* validated copies of the geometry */
    uint32_t n;
    uint64_t key; /* this process's id when the slot was taken (a fork()ed child differs) */
    int slot;     /* -1: none yet */
    uint32_t *local;     /* this process's pins per record */
    uint64_t *local_gen; /* the generation they pin */
    ndshm_segment_t *seg; /* NULL for raw pools */
    char name[NDSHM_NAME_MAX + 1];
};

#define CORRUPT(...) ndshm__fail(NDSHM_ECORRUPT, 0, __VA_ARGS__)

/* ---- geometry ------------------------------------------------------------------------ */

static int geometry(uint64_t capacity, uint32_t max_blocks, uint64_t *table, uint64_t *data, uint64_t *total) {
    if (max_blocks < 2 || max_blocks > NDSHM_POOL_MAX_BLOCKS)
        return ndshm__fail(NDSHM_EINVAL, 0, "pool of %u block records: must be 2 .. %u", max_blocks,
                           (unsigned)NDSHM_POOL_MAX_BLOCKS);
    if (capacity == 0 || capacity % GRAN)
        return ndshm__fail(NDSHM_EINVAL, 0, "pool capacity %llu: must be a positive multiple of %llu",
                           (unsigned long long)capacity, (unsigned long long)GRAN);
    size_t t = sizeof(pool_hdr_t), d, e;
    if (ndshm__mul_overflow((size_t)max_blocks, sizeof(rec_t), &d) || ndshm__add_overflow(t, d, &d) ||
        ndshm__round_up(d, DATA_ALIGN, &d) || capacity > (uint64_t)PTRDIFF_MAX ||
        ndshm__add_overflow(d, (size_t)capacity, &e) || e > (uint64_t)PTRDIFF_MAX)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "pool of %llu bytes and %u records", (unsigned long long)capacity,
                           max_blocks);
    *table = t;
    *data = d;
    *total = e;
    return 0;
}

int ndshm_pool_bytes(uint64_t capacity, uint32_t max_blocks, uint64_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_bytes: out is NULL");
    uint64_t t, d;
    return geometry(capacity, max_blocks, &t, &d, out);
}

/* ---- bins ---------------------------------------------------------------------------- */

static unsigned bin_of(uint64_t g) { /* the bin holding free ranges of g granules (g >= 1) */
    if (g < 4) return (unsigned)g;
    unsigned fl = 63u - (unsigned)__builtin_clzll(g);
    return 4u * (fl - 1u) + ((unsigned)(g >> (fl - 2u)) & 3u);
}

static unsigned bin_above(uint64_t g) { /* the first bin whose every range holds g granules */
    if (g < 4) return (unsigned)g;
    unsigned fl = 63u - (unsigned)__builtin_clzll(g);
    return bin_of(g + ((uint64_t)1 << (fl - 2u)) - 1u);
}

static rec_t *at(ndshm_pool_t *p, uint32_t i) { return i < p->n ? &p->r[i] : NULL; }

/* A record's range is inside the data, aligned, not empty. */
static bool range_ok(const ndshm_pool_t *p, const rec_t *x) {
    uint64_t off = x->offset, size = x->size;
    return size > 0 && off % GRAN == 0 && size % GRAN == 0 && off <= p->capacity && size <= p->capacity - off;
}

static int bin_remove(ndshm_pool_t *p, uint32_t i) {
    rec_t *x = &p->r[i];
    unsigned b = bin_of(x->size / GRAN);
    uint32_t prev = x->prev_free, next = x->next_free;
    if (prev != NONE) {
        rec_t *a = at(p, prev);
        if (a == NULL || a->next_free != i) return CORRUPT("pool: free record %u has a bad predecessor %u", i, prev);
        a->next_free = next;
    } else {
        if (p->h->bin_head[b] != i) return CORRUPT("pool: free record %u is not the head of bin %u", i, b);
        p->h->bin_head[b] = next;
    }
    if (next != NONE) {
        rec_t *c = at(p, next);
        if (c == NULL || c->prev_free != i) return CORRUPT("pool: free record %u has a bad successor %u", i, next);
        c->prev_free = prev;
    }
    if (p->h->bin_head[b] == NONE) p->h->bin_map[b / 64] &= ~((uint64_t)1 << (b % 64));
    x->prev_free = x->next_free = NONE;
    return 0;
}

static int bin_insert(ndshm_pool_t *p, uint32_t i) {
    rec_t *x = &p->r[i];
    unsigned b = bin_of(x->size / GRAN);
    uint32_t head = p->h->bin_head[b];
    if (head != NONE) {
        rec_t *c = at(p, head);
        if (c == NULL) return CORRUPT("pool: bin %u has head %u, beyond the %u records", b, head, p->n);
        c->prev_free = i;
    }
    x->state = ST_FREE;
    x->prev_free = NONE;
    x->next_free = head;
    p->h->bin_head[b] = i;
    p->h->bin_map[b / 64] |= (uint64_t)1 << (b % 64);
    return 0;
}

static uint32_t unused_pop(ndshm_pool_t *p) {
    uint32_t i = p->h->unused_head;
    rec_t *x = at(p, i);
    if (x == NULL || x->state != ST_UNUSED) return NONE;
    uint32_t next = x->next_free;
    p->h->unused_head = next < p->n ? next : NONE;
    return i;
}

static void unused_push(ndshm_pool_t *p, uint32_t i) {
    rec_t *x = &p->r[i];
    x->state = ST_UNUSED;
    x->offset = x->size = 0;
    x->pins = x->senders = 0;
    x->transit = 0;
    x->prev_addr = x->next_addr = x->prev_free = NONE;
    x->next_free = p->h->unused_head;
    p->h->unused_head = i;
}

/* ---- whole-table passes: initialise, check, rebuild ----------------------------------- */

/* Lays out records from the USED ones (sorted by offset in `used`, `nused` of them): the gaps
 * become FREE ranges, every other record UNUSED. */
static int lay_out(ndshm_pool_t *p, const uint32_t *used, uint32_t nused) {
    pool_hdr_t *h = p->h;
    char *is_used = calloc(p->n, 1);
    if (is_used == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "pool: cannot allocate %u bytes to rebuild", p->n);
    for (uint32_t k = 0; k < nused; k++) is_used[used[k]] = 1;
    h->unused_head = NONE;
    for (uint32_t i = p->n; i-- > 0;)
        if (!is_used[i]) unused_push(p, i);
    free(is_used);
    for (unsigned b = 0; b < NBINS; b++) h->bin_head[b] = NONE;
    memset(h->bin_map, 0, sizeof h->bin_map);
    uint64_t pos = 0, used_bytes = 0;
    uint32_t prev = NONE;
    h->first = NONE;
    for (uint32_t k = 0; k <= nused; k++) {
        uint64_t end = k < nused ? p->r[used[k]].offset : p->capacity;
        if (end > pos) { /* a gap: a free range */
            uint32_t f = unused_pop(p);
            if (f == NONE) return CORRUPT("pool: too few records to describe its free ranges (%u records)", p->n);
            rec_t *x = &p->r[f];
            x->offset = pos;
            x->size = end - pos;
            x->pins = x->senders = 0;
            x->transit = 0;
            x->prev_addr = prev;
            x->next_addr = NONE;
            if (prev == NONE) h->first = f;
            else p->r[prev].next_addr = f;
            int rc = bin_insert(p, f);
            if (rc) return rc;
            prev = f;
        }
        if (k == nused) break;
        rec_t *u = &p->r[used[k]];
        u->prev_addr = prev;
        u->next_addr = NONE;
        u->prev_free = u->next_free = NONE;
        if (prev == NONE) h->first = used[k];
        else p->r[prev].next_addr = used[k];
        prev = used[k];
        pos = u->offset + u->size;
        used_bytes += u->size;
    }
    h->used = used_bytes;
    if (h->high_water < used_bytes) h->high_water = used_bytes;
    h->live_blocks = nused;
    return 0;
}

static _Thread_local const ndshm_pool_t *sort_ctx; /* qsort has no context argument */

static int by_offset(const void *a, const void *b) {
    const rec_t *r = sort_ctx->r;
    uint64_t x = r[*(const uint32_t *)a].offset, y = r[*(const uint32_t *)b].offset;
    return x < y ? -1 : x > y;
}

/* Rebuilds everything but the USED records (after a holder of the lock died mid-update). */
static int rebuild(ndshm_pool_t *p) {
    uint32_t *used = malloc((size_t)p->n * sizeof *used), nused = 0;
    if (used == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "pool: cannot allocate %u indices to rebuild", p->n);
    uint64_t in_transit = 0, max_gen = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        rec_t *x = &p->r[i];
        if (x->state != ST_USED) continue;
        if (!range_ok(p, x)) {
            free(used);
            return CORRUPT("pool: block %u has offset %llu and size %llu, outside its %llu bytes", i,
                           (unsigned long long)x->offset, (unsigned long long)x->size,
                           (unsigned long long)p->capacity);
        }
        if (x->generation > max_gen) max_gen = x->generation;
        if (x->transit) in_transit++;
        used[nused++] = i;
    }
    sort_ctx = p;
    qsort(used, nused, sizeof *used, by_offset);
    for (uint32_t k = 1; k < nused; k++) {
        const rec_t *a = &p->r[used[k - 1]], *b = &p->r[used[k]];
        if (a->offset + a->size > b->offset) {
            uint32_t i = used[k - 1], j = used[k];
            free(used);
            return CORRUPT("pool: blocks %u and %u overlap", i, j);
        }
    }
    int rc = lay_out(p, used, nused);
    free(used);
    if (rc) return rc;
    if (p->h->next_gen <= max_gen) p->h->next_gen = max_gen + 1;
    p->h->in_transit = in_transit;
    return 0;
}

/* Checks every structure (attach, ndshm_pool_check); the caller holds the lock. */
static int check_all(ndshm_pool_t *p) {
    pool_hdr_t *h = p->h;
    uint32_t chain = 0, nfree = 0, nused = 0, prev = NONE;
    uint64_t pos = 0, used = 0, transit = 0;
    for (uint32_t i = h->first; i != NONE; i = p->r[i].next_addr) {
        rec_t *x = at(p, i);
        if (x == NULL) return CORRUPT("pool: address chain reaches record %u of %u", i, p->n);
        if (++chain > p->n) return CORRUPT("pool: address chain loops");
        if (x->state != ST_FREE && x->state != ST_USED)
            return CORRUPT("pool: record %u in the address chain has state %u", i, x->state);
        if (!range_ok(p, x) || x->offset != pos)
            return CORRUPT("pool: record %u has offset %llu and size %llu (expected offset %llu)", i,
                           (unsigned long long)x->offset, (unsigned long long)x->size, (unsigned long long)pos);
        if (x->prev_addr != prev) return CORRUPT("pool: record %u's predecessor is %u, not %u", i, x->prev_addr, prev);
        pos += x->size;
        if (x->state == ST_FREE) nfree++;
        else {
            nused++;
            used += x->size;
            if (x->transit) transit++;
            if (x->generation >= h->next_gen)
                return CORRUPT("pool: block %u has generation %llu, the pool's next is %llu", i,
                               (unsigned long long)x->generation, (unsigned long long)h->next_gen);
        }
        prev = i;
    }
    if (pos != p->capacity)
        return CORRUPT("pool: its ranges cover %llu of its %llu bytes", (unsigned long long)pos,
                       (unsigned long long)p->capacity);
    uint32_t binned = 0;
    for (unsigned b = 0; b < NBINS; b++) {
        bool bit = (h->bin_map[b / 64] >> (b % 64)) & 1;
        if (bit != (h->bin_head[b] != NONE)) return CORRUPT("pool: bin %u's bitmap bit is %d", b, (int)bit);
        uint32_t before = NONE;
        for (uint32_t i = h->bin_head[b]; i != NONE; i = p->r[i].next_free) {
            rec_t *x = at(p, i);
            if (x == NULL) return CORRUPT("pool: bin %u reaches record %u of %u", b, i, p->n);
            if (++binned > nfree) return CORRUPT("pool: bins hold more than its %u free ranges", nfree);
            if (x->state != ST_FREE || bin_of(x->size / GRAN) != b || x->prev_free != before)
                return CORRUPT("pool: record %u is misfiled in bin %u", i, b);
            before = i;
        }
    }
    if (binned != nfree) return CORRUPT("pool: bins hold %u of its %u free ranges", binned, nfree);
    uint32_t unused = 0;
    for (uint32_t i = h->unused_head; i != NONE; i = p->r[i].next_free) {
        rec_t *x = at(p, i);
        if (x == NULL) return CORRUPT("pool: unused list reaches record %u of %u", i, p->n);
        if (x->state != ST_UNUSED) return CORRUPT("pool: record %u in the unused list has state %u", i, x->state);
        if (++unused > p->n - chain) return CORRUPT("pool: unused list too long or looping");
    }
    if (unused + chain != p->n) return CORRUPT("pool: %u records are in no list", p->n - unused - chain);
    if (used != h->used || nused != h->live_blocks || transit != h->in_transit)
        return CORRUPT("pool: counts %llu bytes in %llu blocks, its blocks hold %llu in %u",
                       (unsigned long long)h->used, (unsigned long long)h->live_blocks, (unsigned long long)used,
                       nused);
    return 0;
}

/* ---- lock, process slot ---------------------------------------------------------------- */

static void release(ndshm_pool_t *p) { (void)ndshm_lock_release(p->h->lock); }

static int free_block(ndshm_pool_t *p, uint32_t i);

/* Releases the dead processes' slots (bits in `dead`) and what they held; under the lock. */
static int drop_procs(ndshm_pool_t *p, uint64_t dead) {
    if (!dead) return 0;
    for (uint32_t i = 0; i < p->n; i++) {
        rec_t *x = &p->r[i];
        if (x->state != ST_USED) continue;
        x->pins &= ~dead;
        if (x->senders & dead) { /* which hand-overs were the dead one's is not recorded: drop them all */
            x->senders = 0;
            if (x->transit) p->h->in_transit--;
            x->transit = 0;
        }
        if (x->pins == 0 && x->transit == 0) {
            int rc = free_block(p, i);
            if (rc) return rc;
        }
    }
    for (int s = 0; s < NPROCS; s++)
        if (dead & ((uint64_t)1 << s)) {
            p->h->procs[s] = 0;
            p->h->reclaimed++;
        }
    return 0;
}

static uint64_t dead_procs(ndshm_pool_t *p) {
    uint64_t dead = 0, me = ndshm__self_key();
    for (int s = 0; s < NPROCS; s++) {
        uint64_t k = p->h->procs[s];
        if (k != 0 && k != me && ndshm__key_alive(k) == 0) dead |= (uint64_t)1 << s;
    }
    return dead;
}

/* Takes a process slot for this handle (a fork()ed child: a new one, re-pinning what the handle
 * pins). Every handle has its own, even two of one process: its pins are its own bit, which its
 * close clears, so one handle's close never drops another's pins. */
static int take_slot(ndshm_pool_t *p) {
    uint64_t me = ndshm__self_key();
    int slot = -1;
    for (int pass = 0; slot < 0 && pass < 2; pass++) {
        for (int s = 0; s < NPROCS && slot < 0; s++)
            if (p->h->procs[s] == 0) slot = s;
        if (slot < 0 && pass == 0) {
            int rc = drop_procs(p, dead_procs(p));
            if (rc) return rc;
        }
    }
    if (slot < 0)
        return ndshm__fail(NDSHM_EBUSY, 0, "pool '%s': all %d process slots are held by live processes", p->name,
                           NPROCS);
    p->h->procs[slot] = me;
    bool child = p->key != 0 && p->key != me;
    p->key = me;
    p->slot = slot;
    if (child)
        for (uint32_t i = 0; i < p->n; i++) {
            if (p->local[i] == 0) continue;
            rec_t *x = &p->r[i];
            if (x->state == ST_USED && x->generation == p->local_gen[i]) x->pins |= (uint64_t)1 << slot;
            else p->local[i] = 0;
        }
    return 0;
}

static int lock_pool(ndshm_pool_t *p) {
    int rc = ndshm_lock_acquire(p->h->lock, LOCK_TIMEOUT);
    if (rc != 0 && rc != NDSHM_EOWNERDEAD) return rc; /* not held */
    if (rc == NDSHM_EOWNERDEAD) rc = rebuild(p); /* its holder died mid-update: USED records are the truth */
    if (rc == 0 && (p->slot < 0 || p->key != ndshm__self_key())) rc = take_slot(p);
    if (rc) release(p);
    return rc;
}

/* ---- carve and free --------------------------------------------------------------------- */

static int free_block(ndshm_pool_t *p, uint32_t i) {
    pool_hdr_t *h = p->h;
    rec_t *x = &p->r[i];
    h->used -= x->size <= h->used ? x->size : h->used;
    if (h->live_blocks) h->live_blocks--;
    h->frees++;
    x->state = ST_FREE;
    x->pins = x->senders = 0;
    x->transit = 0;
    x->prev_free = x->next_free = NONE;
    uint32_t next = x->next_addr;
    if (next != NONE) {
        rec_t *c = at(p, next);
        if (c == NULL || c->prev_addr != i || c->offset != x->offset + x->size)
            return CORRUPT("pool: block %u's neighbour %u does not follow it", i, next);
        if (c->state == ST_FREE) {
            int rc = bin_remove(p, next);
            if (rc) return rc;
            x->size += c->size;
            x->next_addr = c->next_addr;
            rec_t *d = at(p, c->next_addr);
            if (d) d->prev_addr = i;
            unused_push(p, next);
        }
    }
    uint32_t prev = x->prev_addr;
    if (prev != NONE) {
        rec_t *a = at(p, prev);
        if (a == NULL || a->next_addr != i || a->offset + a->size != x->offset)
            return CORRUPT("pool: block %u's neighbour %u does not precede it", i, prev);
        if (a->state == ST_FREE) {
            int rc = bin_remove(p, prev);
            if (rc) return rc;
            a->size += x->size;
            a->next_addr = x->next_addr;
            rec_t *d = at(p, x->next_addr);
            if (d) d->prev_addr = prev;
            unused_push(p, i);
            i = prev;
        }
    }
    return bin_insert(p, i);
}

static uint32_t find_free(ndshm_pool_t *p, uint64_t g) {
    pool_hdr_t *h = p->h;
    unsigned b = bin_above(g);
    for (unsigned w = b / 64; b < NBINS && w < NBINS / 64; w++) {
        uint64_t m = h->bin_map[w] & (~(uint64_t)0 << (b % 64));
        if (m) return h->bin_head[w * 64 + (unsigned)__builtin_ctzll(m)];
        b = (w + 1) * 64;
    }
    /* none surely large enough: ranges in g's own bin may still be (a bounded look) */
    uint32_t i = h->bin_head[bin_of(g)];
    for (int k = 0; k < 32 && i != NONE; k++) {
        rec_t *x = at(p, i);
        if (x == NULL) return i; /* the caller reports it */
        if (x->size / GRAN >= g) return i;
        i = x->next_free;
    }
    return NONE;
}

static void fill(const ndshm_pool_t *p, uint32_t i, ndshm_pool_block_t *out) {
    const rec_t *x = &p->r[i];
    out->index = i;
    out->generation = x->generation;
    out->offset = x->offset;
    out->size = x->size;
    out->data = (uintptr_t)(p->data + x->offset);
}

static int carve_locked(ndshm_pool_t *p, uint64_t g, ndshm_pool_block_t *out, bool *no_records) {
    pool_hdr_t *h = p->h;
    uint32_t i = find_free(p, g);
    if (i == NONE) return NDSHM_ENOSPC;
    rec_t *x = at(p, i);
    if (x == NULL || x->state != ST_FREE || !range_ok(p, x) || x->size / GRAN < g)
        return CORRUPT("pool: free record %u (of %u) is not a free range of %llu granules", i, p->n,
                       (unsigned long long)g);
    uint64_t want = g * GRAN;
    if (x->size > want && p->h->unused_head == NONE && x->size - want > want / 4) {
        *no_records = true; /* no record for the rest: a block may waste at most a quarter of its request */
        return NDSHM_ENOSPC;
    }
    int rc = bin_remove(p, i);
    if (rc) return rc;
    if (x->size > want) {
        uint32_t j = unused_pop(p);
        if (j != NONE) { /* split: the rest is a free range of its own (else the block keeps it) */
            rec_t *y = &p->r[j];
            y->offset = x->offset + want;
            y->size = x->size - want;
            y->pins = y->senders = 0;
            y->transit = 0;
            y->prev_addr = i;
            y->next_addr = x->next_addr;
            rec_t *c = at(p, x->next_addr);
            if (c) c->prev_addr = j;
            x->next_addr = j;
            x->size = want;
            rc = bin_insert(p, j);
            if (rc) return rc;
        }
    }
    x->generation = h->next_gen++;
    x->pins = (uint64_t)1 << p->slot;
    x->senders = 0;
    x->transit = 0;
    x->state = ST_USED; /* last: a USED record is the truth a rebuild keeps */
    p->local[i] = 1;
    p->local_gen[i] = x->generation;
    h->used += x->size;
    if (h->used > h->high_water) h->high_water = h->used;
    if (x->offset + x->size > h->high_end) h->high_end = x->offset + x->size;
    h->live_blocks++;
    h->carves++;
    fill(p, i, out);
    return 0;
}

int ndshm_pool_carve(ndshm_pool_t *p, uint64_t nbytes, ndshm_pool_block_t *out) {
    if (p == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_carve: NULL argument");
    if (nbytes > p->capacity)
        return ndshm__fail(NDSHM_ENOSPC, 0, "pool '%s' of %llu bytes has no room for a block of %llu bytes", p->name,
                           (unsigned long long)p->capacity, (unsigned long long)nbytes);
    uint64_t g = nbytes == 0 ? 1 : (nbytes + GRAN - 1) / GRAN;
    int rc = lock_pool(p);
    if (rc) return rc;
    bool no_records = false;
    rc = carve_locked(p, g, out, &no_records);
    if (rc == NDSHM_ENOSPC) { /* full: dead processes' blocks first */
        no_records = false;
        rc = drop_procs(p, dead_procs(p));
        if (rc == 0) rc = carve_locked(p, g, out, &no_records);
    }
    if (rc == NDSHM_ENOSPC) {
        uint64_t used = p->h->used, live = p->h->live_blocks;
        release(p);
        if (no_records)
            return ndshm__fail(NDSHM_ENOSPC, 0,
                               "pool '%s' of %llu bytes (%llu in use) has no block record left for a block of %llu "
                               "bytes: all %u are in use (%llu live blocks; make the pool with more max_blocks)",
                               p->name, (unsigned long long)p->capacity, (unsigned long long)used,
                               (unsigned long long)nbytes, p->n, (unsigned long long)live);
        return ndshm__fail(NDSHM_ENOSPC, 0,
                           "pool '%s' of %llu bytes (%llu in use) has no free range for a block of %llu bytes",
                           p->name, (unsigned long long)p->capacity, (unsigned long long)used,
                           (unsigned long long)nbytes);
    }
    release(p);
    return rc;
}

/* The USED record (index, generation), or an error naming why not. */
static int live(ndshm_pool_t *p, uint32_t index, uint64_t generation, rec_t **out) {
    rec_t *x = at(p, index);
    if (x == NULL)
        return ndshm__fail(NDSHM_ENOENT, 0, "pool '%s' has no block %u (it has %u records)", p->name, index, p->n);
    if (x->state != ST_USED || x->generation != generation)
        return ndshm__fail(NDSHM_ENOENT, 0, "pool '%s': block %u of generation %llu was freed since", p->name, index,
                           (unsigned long long)generation);
    if (!range_ok(p, x)) return CORRUPT("pool '%s': block %u lies outside the pool", p->name, index);
    *out = x;
    return 0;
}

int ndshm_pool_pin(ndshm_pool_t *p, uint32_t index, uint64_t generation, uint64_t offset, uint64_t nbytes,
                   int received, ndshm_pool_block_t *out) {
    if (p == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_pin: NULL argument");
    int rc = lock_pool(p);
    if (rc) return rc;
    rec_t *x;
    rc = live(p, index, generation, &x);
    if (rc == 0 && (x->offset != offset || nbytes > x->size))
        rc = ndshm__fail(NDSHM_ENOENT, 0,
                         "pool '%s': block %u is at offset %llu with %llu bytes, not at %llu with %llu", p->name,
                         index, (unsigned long long)x->offset, (unsigned long long)x->size,
                         (unsigned long long)offset, (unsigned long long)nbytes);
    if (rc == 0) {
        if (p->local_gen[index] != generation) {
            p->local_gen[index] = generation;
            p->local[index] = 0;
        }
        if (p->local[index] == UINT32_MAX) rc = ndshm__fail(NDSHM_EOVERFLOW, 0, "pool: block %u pinned 2^32 times", index);
    }
    if (rc == 0) {
        p->local[index]++;
        x->pins |= (uint64_t)1 << p->slot;
        if (received && x->transit) {
            if (--x->transit == 0) {
                x->senders = 0;
                if (p->h->in_transit) p->h->in_transit--;
            }
        }
        fill(p, index, out);
    }
    release(p);
    return rc;
}

int ndshm_pool_unpin(ndshm_pool_t *p, uint32_t index, uint64_t generation) {
    if (p == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_unpin: pool is NULL");
    int rc = lock_pool(p);
    if (rc) return rc;
    if (index >= p->n || p->local_gen[index] != generation || p->local[index] == 0) {
        release(p);
        return ndshm__fail(NDSHM_ENOENT, 0, "pool '%s': this process does not pin block %u of generation %llu",
                           p->name, index, (unsigned long long)generation);
    }
    if (--p->local[index] == 0) {
        rec_t *x = &p->r[index];
        if (x->state == ST_USED && x->generation == generation) {
            x->pins &= ~((uint64_t)1 << p->slot);
            if (x->pins == 0 && x->transit == 0) rc = free_block(p, index);
        }
    }
    release(p);
    return rc;
}

int ndshm_pool_send(ndshm_pool_t *p, uint32_t index, uint64_t generation) {
    if (p == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_send: pool is NULL");
    int rc = lock_pool(p);
    if (rc) return rc;
    rec_t *x;
    rc = live(p, index, generation, &x);
    if (rc == 0 && (p->local_gen[index] != generation || p->local[index] == 0))
        rc = ndshm__fail(NDSHM_ENOENT, 0, "pool '%s': this process does not pin block %u", p->name, index);
    if (rc == 0 && x->transit != UINT32_MAX) {
        if (x->transit++ == 0) p->h->in_transit++;
        x->senders |= (uint64_t)1 << p->slot;
    }
    release(p);
    return rc;
}

int ndshm_pool_reclaim(ndshm_pool_t *p, uint32_t *released) {
    if (p == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_reclaim: pool is NULL");
    int rc = lock_pool(p);
    if (rc) return rc;
    uint64_t dead = dead_procs(p);
    rc = drop_procs(p, dead);
    release(p);
    if (released) *released = (uint32_t)__builtin_popcountll(dead);
    return rc;
}

int ndshm_pool_stats(ndshm_pool_t *p, ndshm_pool_stats_t *out) {
    if (p == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_stats: NULL argument");
    int rc = lock_pool(p);
    if (rc) return rc;
    pool_hdr_t *h = p->h;
    memset(out, 0, sizeof *out);
    out->pool_id = h->pool_id;
    out->capacity = p->capacity;
    out->used = h->used;
    out->high_water = h->high_water;
    out->high_end = h->high_end;
    out->live_blocks = h->live_blocks;
    out->max_blocks = p->n;
    out->in_transit = h->in_transit;
    out->carves = h->carves;
    out->frees = h->frees;
    out->reclaimed = h->reclaimed;
    for (int s = 0; s < NPROCS; s++) out->procs += h->procs[s] != 0;
    uint32_t steps = 0;
    for (uint32_t i = h->first; i != NONE && steps <= p->n; steps++) {
        rec_t *x = at(p, i);
        if (x == NULL) break;
        if (x->state == ST_FREE) {
            out->free_extents++;
            if (x->size > out->largest_free) out->largest_free = x->size;
        }
        i = x->next_addr;
    }
    release(p);
    return 0;
}

int ndshm_pool_check(ndshm_pool_t *p) {
    if (p == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_check: pool is NULL");
    int rc = lock_pool(p);
    if (rc) return rc;
    rc = check_all(p);
    release(p);
    return rc;
}

int ndshm_pool_peek(int fd, uint64_t offset, ndshm_pool_stats_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_peek: out is NULL");
    memset(out, 0, sizeof *out);
    pool_hdr_t h;
    struct stat st;
    if (fstat(fd, &st) != 0) return ndshm__fail_errno(errno, "ndshm_pool_peek: fstat of descriptor %d", fd);
    if (offset > (uint64_t)INT64_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_peek: offset %llu", (unsigned long long)offset);
    ssize_t got = pread(fd, &h, sizeof h, (off_t)offset);
    if (got < 0) return ndshm__fail_errno(errno, "ndshm_pool_peek: reading descriptor %d", fd);
    if ((size_t)got != sizeof h) return CORRUPT("pool: its file ends inside its header (%zd bytes)", got);
    if (h.magic == 0) return ndshm__fail(NDSHM_EBUSY, 0, "pool is still being initialised");
    uint64_t t, d, total;
    if (h.magic != POOL_MAGIC || h.version != POOL_VERSION || h.hdr_bytes != sizeof h || h.max_procs != NPROCS ||
        geometry(h.capacity, h.max_blocks, &t, &d, &total) || t != h.table_offset || d != h.data_offset ||
        total != h.total_bytes || (uint64_t)st.st_size < offset || total > (uint64_t)st.st_size - offset)
        return CORRUPT("pool: its header (magic 0x%016llx, version %u) does not describe a pool in its file",
                       (unsigned long long)h.magic, h.version);
    out->pool_id = h.pool_id;
    out->capacity = h.capacity;
    out->used = h.used;
    out->high_water = h.high_water;
    out->high_end = h.high_end;
    out->live_blocks = h.live_blocks;
    out->max_blocks = h.max_blocks;
    out->in_transit = h.in_transit;
    for (int s = 0; s < NPROCS; s++) out->procs += h.procs[s] != 0;
    out->carves = h.carves;
    out->frees = h.frees;
    out->reclaimed = h.reclaimed;
    return 0;
}

/* ---- create, open, close ---------------------------------------------------------------- */

int ndshm_pool_init_raw(void *mem, uint64_t bytes, uint64_t capacity, uint32_t max_blocks) {
    if (mem == NULL || (uintptr_t)mem % 64)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_init_raw: memory %p is not 64-byte aligned", mem);
    uint64_t t, d, total;
    int rc = geometry(capacity, max_blocks, &t, &d, &total);
    if (rc) return rc;
    if (bytes < total)
        return ndshm__fail(NDSHM_EINVAL, 0, "pool needs %llu bytes, the memory has %llu", (unsigned long long)total,
                           (unsigned long long)bytes);
    (void)ndshm__self_key();
    pool_hdr_t *h = mem;
    memset(h, 0, sizeof *h);
    h->version = POOL_VERSION;
    h->hdr_bytes = sizeof *h;
    h->total_bytes = total;
    h->capacity = capacity;
    h->table_offset = t;
    h->data_offset = d;
    h->max_blocks = max_blocks;
    h->max_procs = NPROCS;
    h->pool_id = ndshm__random_id();
    h->next_gen = 1;
    ndshm_pool_t tmp = {.h = h, .r = (rec_t *)((char *)mem + t), .capacity = capacity, .n = max_blocks};
    memset(tmp.r, 0, (size_t)max_blocks * sizeof(rec_t));
    rc = lay_out(&tmp, NULL, 0);
    if (rc) return rc;
    h->high_water = 0;
    atomic_store_explicit(&h->magic, POOL_MAGIC, memory_order_release);
    return 0;
}

static int open_pool(void *mem, uint64_t bytes, const char *name, ndshm_pool_t **out) {
    *out = NULL;
    if (mem == NULL || (uintptr_t)mem % 64)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_open_raw: memory %p is not 64-byte aligned", mem);
    if (bytes < sizeof(pool_hdr_t)) return CORRUPT("pool of %llu bytes: smaller than its header", (unsigned long long)bytes);
    pool_hdr_t *h = mem;
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic == 0) return ndshm__fail(NDSHM_EBUSY, 0, "pool '%s' is still being initialised", name);
    if (magic != POOL_MAGIC) return CORRUPT("pool '%s': magic 0x%016llx is not a pool's", name, (unsigned long long)magic);
    if (h->version != POOL_VERSION) return CORRUPT("pool '%s': format version %u, this library reads %u", name, h->version, POOL_VERSION);
    uint64_t t, d, total;
    uint64_t capacity = h->capacity;
    uint32_t n = h->max_blocks;
    if (h->hdr_bytes != sizeof(pool_hdr_t) || h->max_procs != NPROCS || geometry(capacity, n, &t, &d, &total) ||
        t != h->table_offset || d != h->data_offset || total != h->total_bytes || total > bytes)
        return CORRUPT("pool '%s': geometry (%llu bytes, %u records) does not match its %llu bytes", name,
                       (unsigned long long)capacity, n, (unsigned long long)bytes);
    ndshm_pool_t *p = calloc(1, sizeof *p);
    uint32_t *local = calloc(n, sizeof *local);
    uint64_t *local_gen = calloc(n, sizeof *local_gen);
    if (p == NULL || local == NULL || local_gen == NULL) {
        free(p);
        free(local);
        free(local_gen);
        return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a pool handle of %u records", n);
    }
    p->h = h;
    p->r = (rec_t *)((char *)mem + t);
    p->data = (char *)mem + d;
    p->capacity = capacity;
    p->n = n;
    p->slot = -1;
    p->local = local;
    p->local_gen = local_gen;
    snprintf(p->name, sizeof p->name, "%s", name);
    int rc = lock_pool(p);
    if (rc == 0) {
        rc = check_all(p);
        if (rc) {
            p->h->procs[p->slot] = 0;
            p->slot = -1;
        }
        release(p);
    }
    if (rc) {
        free(local);
        free(local_gen);
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int ndshm_pool_open_raw(void *mem, uint64_t bytes, ndshm_pool_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_open_raw: out is NULL");
    return open_pool(mem, bytes, "(raw)", out);
}

int ndshm_pool_create(const char *name, const char *dir, uint64_t capacity, uint32_t max_blocks, unsigned mode,
                      unsigned flags, ndshm_pool_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_create: out is NULL");
    *out = NULL;
    if (name == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_create: name is NULL");
    const unsigned known = NDSHM_SEG_PERSIST | NDSHM_SEG_POPULATE | NDSHM_SEG_HUGEPAGES;
    if (flags & ~known) return ndshm__fail(NDSHM_EINVAL, 0, "unknown pool flags 0x%x", flags & ~known);
    if (capacity == 0 || capacity > (uint64_t)PTRDIFF_MAX - GRAN)
        return ndshm__fail(NDSHM_EINVAL, 0, "pool capacity %llu bytes: must be 1 .. 2^63", (unsigned long long)capacity);
    capacity = (capacity + GRAN - 1) / GRAN * GRAN;
    if (max_blocks == 0) {
        uint64_t m = capacity / 2048;
        max_blocks = (uint32_t)(m < 256 ? 256 : m > 1048576 ? 1048576 : m);
    }
    uint64_t bytes;
    int rc = ndshm_pool_bytes(capacity, max_blocks, &bytes);
    if (rc) return rc;
    ndshm_segment_t *seg;
    const ndshm_segment_info_t *info;
    rc = ndshm__named_bytes_create(name, dir, mode, flags | NDSHM_SEG_POOL, bytes, &seg, &info);
    if (rc) return rc;
    void *mem = (void *)info->data;
    uint64_t size = info->data_size;
    rc = ndshm_pool_init_raw(mem, size, capacity, max_blocks);
    if (rc == 0) rc = open_pool(mem, size, name, out);
    if (rc) {
        ndshm_segment_close(seg);
        return rc;
    }
    (*out)->seg = seg;
    return 0;
}

int ndshm_pool_attach(const char *name, const char *dir, unsigned flags, ndshm_pool_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_attach: out is NULL");
    *out = NULL;
    if (name == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_attach: name is NULL");
    if (flags & ~(unsigned)NDSHM_SEG_POPULATE) return ndshm__fail(NDSHM_EINVAL, 0, "unknown pool attach flags 0x%x", flags);
    ndshm_segment_t *seg;
    int rc = ndshm_segment_attach(NDSHM_KIND_NAMED, name, dir, flags, &seg);
    if (rc) return rc;
    ndshm_segment_info_t *info = malloc(sizeof *info);
    if (info == NULL) {
        ndshm_segment_close(seg);
        return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a segment description");
    }
    rc = ndshm_segment_info(seg, info);
    if (rc == 0 && !(info->flags & NDSHM_SEG_POOL))
        rc = ndshm__fail(NDSHM_EINVAL, 0, "segment '%s' is not a pool", name);
    if (rc == 0) {
        for (int tries = 0;; tries++) { /* a creator between its header and its pool: a bounded wait */
            rc = open_pool((void *)info->data, info->data_size, name, out);
            if (rc != NDSHM_EBUSY || tries >= 2000) break;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    free(info);
    if (rc) {
        ndshm_segment_close(seg);
        return rc;
    }
    (*out)->seg = seg;
    return 0;
}

int ndshm_pool_unlink(ndshm_pool_t *p) {
    if (p == NULL || p->seg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_pool_unlink: not a named pool");
    return ndshm_segment_unlink(p->seg);
}

void ndshm_pool_close(ndshm_pool_t *p) {
    if (p == NULL) return;
    if (lock_pool(p) == 0) {
        for (uint32_t i = 0; i < p->n; i++) {
            if (p->local[i] == 0) continue;
            p->local[i] = 0;
            rec_t *x = &p->r[i];
            if (x->state == ST_USED && x->generation == p->local_gen[i]) {
                x->pins &= ~((uint64_t)1 << p->slot);
                if (x->pins == 0 && x->transit == 0 && free_block(p, i)) break;
            }
        }
        if (p->slot >= 0 && p->h->procs[p->slot] == p->key) p->h->procs[p->slot] = 0;
        release(p);
    }
    if (p->seg) ndshm_segment_close(p->seg);
    free(p->local);
    free(p->local_gen);
    free(p);
}

/*
 * ring.c -- the cold half of what the queue and broadcast rings share (ring.h has the contract
 * and the hot, inline half).
 */
#include "ring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

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
    if (w->intr != NULL && atomic_load(w->intr)) return ETIMEDOUT; /* the caller's handle was interrupted */
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

int ndshm__ring_wait_word(_Atomic uint32_t *word, _Atomic uint32_t *waiters, uint32_t seen, double timeout,
                          _Atomic uint32_t *intr) {
    int64_t deadline = timeout == 0 ? 0 : ndshm__deadline(timeout);
    for (;;) {
        if (intr != NULL && atomic_load(intr)) return ECANCELED;
        if (atomic_load(word) != seen) return 0;
        if (timeout == 0 || ndshm__now_ns() >= deadline) return ETIMEDOUT;
        atomic_fetch_add(waiters, 1);
        ndshm__futex_wait(word, seen, deadline, NDSHM__RING_SLICE_NS); /* woken, slice over, or EINTR */
        atomic_fetch_sub(waiters, 1);
    }
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

/* ---- messages ------------------------------------------------------------------------ */

int ndshm__ring_check_desc(uint64_t slot_bytes, const char *ring, uint64_t nbytes, const char *typestr, uint32_t ndim) {
    if (nbytes > slot_bytes)
        return ndshm__fail(NDSHM_ETOOBIG, 0, "message of %llu bytes is larger than the %s's %llu-byte slots",
                           (unsigned long long)nbytes, ring, (unsigned long long)slot_bytes);
    if (ndim > NDSHM_MAXDIM) return ndshm__fail(NDSHM_EINVAL, 0, "message ndim %u exceeds %d", ndim, NDSHM_MAXDIM);
    if (typestr != NULL && strnlen(typestr, NDSHM_TYPESTR_MAX) >= NDSHM_TYPESTR_MAX)
        return ndshm__fail(NDSHM_EINVAL, 0, "message typestr is not NUL-terminated within %d bytes",
                           NDSHM_TYPESTR_MAX);
    return 0;
}

void ndshm__ring_write_desc(ndshm__ring_desc_t *d, uint64_t nbytes, const char *typestr, uint32_t ndim,
                            const int64_t *shape) {
    d->nbytes = nbytes;
    d->ndim = ndim;
    size_t n = typestr ? strnlen(typestr, NDSHM_TYPESTR_MAX - 1) : 0;
    if (n) memcpy(d->typestr, typestr, n);
    memset(d->typestr + n, 0, NDSHM_TYPESTR_MAX - n);
    if (ndim) memcpy(d->shape, shape, ndim * sizeof *shape);
}

/* ---- pins ---------------------------------------------------------------------------- */

int ndshm__ring_pin_check(void *slot, ndshm__ring_desc_t *d, uint64_t me, uint64_t idx, const char *ring) {
    uint64_t owner = atomic_load(ndshm__ring_pin_owner(slot));
    if (owner == me)
        return ndshm__fail(NDSHM_EBUSY, 0,
                           "%s slot %llu is pinned by this process: an array of an earlier loan() into it is still "
                           "referenced (a name, a view or an export of it); drop it or copy it (np.array(out))",
                           ring, (unsigned long long)idx);
    if (owner != 0 && ndshm__key_alive(owner)) return 1;
    /* the pinner died (or a hostile writer set the flag, to any value): cleared from the value
     * seen, so that a retry never finds the same flag again */
    uint32_t seen = __atomic_load_n(&d->pinned, __ATOMIC_ACQUIRE);
    if (seen != 0) __atomic_compare_exchange_n(&d->pinned, &seen, 0u, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return 0;
}

int ndshm__ring_unpin(void *slot, ndshm__ring_desc_t *d, uint64_t me, uint64_t idx) {
    if (!ndshm__ring_pinned(d) || atomic_load(ndshm__ring_pin_owner(slot)) != me)
        return ndshm__fail(NDSHM_EINVAL, 0, "slot %llu is not pinned by this process", (unsigned long long)idx);
    atomic_store_explicit(ndshm__ring_pin_owner(slot), 0, memory_order_relaxed);
    __atomic_store_n(&d->pinned, 0u, __ATOMIC_RELEASE);
    return 0;
}

/* ---- geometry ------------------------------------------------------------------------ */

int ndshm__ring_bytes(const ndshm__ring_kind_t *k, uint64_t slots, uint64_t slot_bytes, uint64_t *out) {
    /* two at least: with one slot "published for pos" and "free for pos + 1" would coincide */
    if (!ndshm__is_pow2(slots) || slots < 2 || slots > k->max_slots)
        return ndshm__fail(NDSHM_EINVAL, 0, "slots %llu is not a power of two between 2 and %llu",
                           (unsigned long long)slots, (unsigned long long)k->max_slots);
    if (slot_bytes > (uint64_t)PTRDIFF_MAX)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "slot_bytes %llu is too large", (unsigned long long)slot_bytes);
    size_t stride, total;
    if (ndshm__add_overflow(NDSHM__RING_SLOT_HDR, (size_t)slot_bytes, &stride) ||
        ndshm__round_up(stride, 64, &stride) ||
        ndshm__mul_overflow(stride, (size_t)slots, &total) || ndshm__add_overflow(total, k->hdr_bytes, &total) ||
        total > NDSHM__RING_MAX_BYTES)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "a %s of %llu slots of %llu bytes overflows", k->ring,
                           (unsigned long long)slots, (unsigned long long)slot_bytes);
    *out = total;
    return 0;
}

int ndshm__ring_hdr_init(const ndshm__ring_kind_t *k, void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes) {
    uint64_t need;
    int rc = ndshm__ring_bytes(k, slots, slot_bytes, &need);
    if (rc) return rc;
    if (mem == NULL || (uintptr_t)mem % 64 != 0)
        return ndshm__fail(NDSHM_EINVAL, 0, "ring memory %p is not 64-byte aligned", mem);
    if (bytes < need)
        return ndshm__fail(NDSHM_EINVAL, 0, "ring memory of %llu bytes is smaller than the %llu needed",
                           (unsigned long long)bytes, (unsigned long long)need);
    ndshm__ring_hdr_t *h = mem;
    memset(mem, 0, k->hdr_bytes);
    h->version = k->version;
    h->hdr_bytes = k->hdr_bytes;
    h->slots = slots;
    h->slot_bytes = slot_bytes;
    h->slot_stride = ndshm__ring_stride(slot_bytes);
    h->ring_bytes = need;
    h->slots_offset = k->hdr_bytes;
    return 0;
}

int ndshm__ring_hdr_open(const ndshm__ring_kind_t *k, void *mem, uint64_t bytes, ndshm__ring_geom_t *g) {
    ndshm__ring_hdr_t *h = mem;
    if (mem == NULL || (uintptr_t)mem % 64 != 0)
        return ndshm__fail(NDSHM_EINVAL, 0, "ring memory %p is not 64-byte aligned", mem);
    if (bytes < k->hdr_bytes)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s of %llu bytes is smaller than its %u-byte header", k->ring,
                           (unsigned long long)bytes, k->hdr_bytes);
    uint64_t magic = 0;
    for (int i = 0; i < 1000; i++) { /* the creator may still be writing the ring */
        magic = atomic_load_explicit(&h->magic, memory_order_acquire);
        if (magic != 0) break;
        usleep(1000);
    }
    if (magic == 0) return ndshm__fail(NDSHM_EBUSY, 0, "%s ring is still being initialised after 1 s", k->name);
    if (magic != k->magic)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "ring magic 0x%llx is not an ndshm %s's", (unsigned long long)magic,
                           k->name);
    uint32_t version = h->version;
    if (version < k->version)
        return ndshm__fail(NDSHM_ECORRUPT, 0,
                           "%s version %u was made by an older ndshm; this one reads version %u only (its process "
                           "records hold across PID namespaces): recreate the %s with this version",
                           k->ring, version, k->version, k->name);
    if (version != k->version)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s version %u is not %u: it was made by a newer ndshm", k->ring,
                           version, k->version);
    uint64_t slots = h->slots, slot_bytes = h->slot_bytes, need; /* read once: another process may write */
    if (ndshm__ring_bytes(k, slots, slot_bytes, &need) != 0)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s geometry is corrupt: slots %llu, slot_bytes %llu", k->ring,
                           (unsigned long long)slots, (unsigned long long)slot_bytes);
    uint64_t stride = ndshm__ring_stride(slot_bytes);
    uint64_t hstride = h->slot_stride, hbytes = h->ring_bytes, hoffset = h->slots_offset;
    if (h->hdr_bytes != k->hdr_bytes || hoffset != k->hdr_bytes || hstride != stride || hbytes != need)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s header is inconsistent (stride %llu, ring_bytes %llu, offset %llu)",
                           k->ring, (unsigned long long)hstride, (unsigned long long)hbytes,
                           (unsigned long long)hoffset);
    if (need > bytes)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s needs %llu bytes but its memory has %llu", k->ring,
                           (unsigned long long)need, (unsigned long long)bytes);
    g->slots = slots;
    g->slot_bytes = slot_bytes;
    g->stride = stride;
    g->ring_bytes = need;
    return 0;
}

void ndshm__ring_populate(const void *ring, uint64_t ring_bytes, uint32_t ring_flags, _Atomic uint64_t *populated) {
    atomic_store_explicit(populated, ndshm__self_key(), memory_order_relaxed);
    if (!(ring_flags & NDSHM__RING_POPULATE)) return;
    size_t page = ndshm__page_size();
    uintptr_t start = (uintptr_t)ring & ~(uintptr_t)(page - 1);
    size_t len = (size_t)((uintptr_t)ring + ring_bytes - start);
    if (madvise((void *)start, len, MADV_POPULATE_WRITE) != 0) /* kernels before 5.14: read each page */
        for (size_t i = 0; i < ring_bytes; i += page) (void)((volatile const char *)ring)[i];
}

/* The segment's information, into this thread's storage (the struct is large). */
static int segment_info(ndshm_segment_t **seg, const ndshm_segment_info_t **info) {
    static _Thread_local ndshm_segment_info_t storage;
    int rc = ndshm_segment_info(*seg, &storage);
    if (rc) {
        ndshm_segment_close(*seg);
        *seg = NULL;
        return rc;
    }
    *info = &storage;
    return 0;
}

static const char *holds(unsigned flags) {
    return (flags & NDSHM_SEG_QUEUE)       ? "a queue"
           : (flags & NDSHM_SEG_BROADCAST) ? "a broadcast"
           : (flags & NDSHM_SEG_SYNC)      ? "a sync object"
           : (flags & NDSHM_SEG_POOL)      ? "a pool"
                                           : "an array";
}

int ndshm__ring_named(const ndshm__ring_kind_t *k, const char *name, const char *dir, const ndshm__ring_params_t *p,
                      ndshm_segment_t **seg, const ndshm_segment_info_t **info) {
    *seg = NULL;
    if (name == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "%s_%s: name is NULL", k->api, p ? "create" : "attach");
    if (p == NULL) {
        int rc = ndshm_segment_attach(NDSHM_KIND_NAMED, name, dir, 0, seg);
        if (rc == 0) rc = segment_info(seg, info);
        if (rc == 0 && !((*info)->flags & k->seg_flag)) {
            rc = ndshm__fail(NDSHM_EINVAL, 0, "segment '%s' holds %s, not a %s", name, holds((*info)->flags), k->name);
            ndshm_segment_close(*seg);
            *seg = NULL;
        }
        return rc;
    }
    const unsigned known = NDSHM_SEG_PERSIST | NDSHM_SEG_POPULATE;
    if (p->flags & ~known) return ndshm__fail(NDSHM_EINVAL, 0, "unknown %s flags 0x%x", k->name, p->flags & ~known);
    uint64_t bytes;
    int rc = ndshm__ring_bytes(k, p->slots, p->slot_bytes, &bytes); /* at most NDSHM__RING_MAX_BYTES */
    if (rc) return rc;
    return ndshm__named_bytes_create(name, dir, p->mode, p->flags | k->seg_flag, bytes, seg, info);
}

void ndshm__ring_named_done(const ndshm__ring_kind_t *k, const char *name, int created, const void *ring,
                            uint64_t ring_bytes, uint32_t ring_flags, _Atomic uint64_t *populated, char *name_out) {
    ndshm__ring_populate(ring, ring_bytes, created ? 0 : ring_flags, populated);
    snprintf(name_out, NDSHM_NAME_MAX + 1, "%s", name);
    atomic_fetch_add_explicit(k->live, 1, memory_order_relaxed);
}

int ndshm__ring_named_fail(ndshm_segment_t *seg, void *handle, int rc) {
    if (seg) ndshm_segment_close(seg);
    free(handle);
    return rc;
}

void ndshm__ring_close(const ndshm__ring_kind_t *k, ndshm_segment_t *seg, void *handle) {
    atomic_fetch_sub_explicit(k->live, 1, memory_order_relaxed);
    if (seg) ndshm_segment_close(seg);
    free(handle);
}

int ndshm__named_bytes_create(const char *name, const char *dir, unsigned mode, unsigned flags, uint64_t bytes,
                              ndshm_segment_t **seg, const ndshm_segment_info_t **info) {
    if (bytes > (uint64_t)INT64_MAX) /* the layout's shape is an int64 */
        return ndshm__fail(NDSHM_EINVAL, 0, "segment '%s': %llu bytes do not fit a layout", name,
                           (unsigned long long)bytes);
    ndshm_segment_params_t sp;
    memset(&sp, 0, sizeof sp);
    sp.kind = NDSHM_KIND_NAMED;
    sp.name = name;
    sp.dir = dir;
    sp.mode = mode;
    sp.flags = flags;
    sp.alignment = 64;
    memcpy(sp.layout.typestr, "|u1", 4);
    sp.layout.itemsize = 1;
    sp.layout.ndim = 1;
    sp.layout.shape[0] = (int64_t)bytes;
    sp.layout.strides[0] = 1;
    int rc = ndshm_segment_create(&sp, seg);
    return rc ? rc : segment_info(seg, info);
}

/* ---- reading a ring's header from a file --------------------------------------------- */

int ndshm_ring_read_header(int fd, uint64_t offset, uint64_t size, ndshm_ring_header_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_ring_read_header: out is NULL");
    memset(out, 0, sizeof *out);
    if (fd < 0) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_ring_read_header: fd %d is not a descriptor", fd);
    if (offset > (uint64_t)INT64_MAX - sizeof(ndshm__ring_hdr_t))
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_ring_read_header: offset %llu is too large",
                           (unsigned long long)offset);
    ndshm__ring_hdr_t h;
    size_t got = 0;
    while (got < sizeof h) {
        ssize_t n = pread(fd, (char *)&h + got, sizeof h - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ndshm__fail(NDSHM_ESYS, errno, "cannot read the ring header at offset %llu",
                                      (unsigned long long)offset);
        if (n == 0) break;
        got += (size_t)n;
    }
    if (got < sizeof h || size < sizeof h)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "the %llu bytes at offset %llu are too few for a ring header",
                           (unsigned long long)(size < got ? size : got), (unsigned long long)offset);
    uint64_t magic = atomic_load_explicit(&h.magic, memory_order_relaxed);
    const ndshm__ring_kind_t *k = magic == ndshm__queue_kind.magic   ? &ndshm__queue_kind
                                  : magic == ndshm__bcast_kind.magic ? &ndshm__bcast_kind
                                                                     : NULL;
    if (k == NULL)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "ring magic 0x%llx is neither a queue's nor a broadcast's",
                           (unsigned long long)magic);
    if (h.version < k->oldest || h.version > k->version)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s version %u is not one of %u to %u", k->ring, h.version, k->oldest,
                           k->version);
    uint64_t need;
    if (ndshm__ring_bytes(k, h.slots, h.slot_bytes, &need) != 0)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s geometry is corrupt: slots %llu, slot_bytes %llu", k->ring,
                           (unsigned long long)h.slots, (unsigned long long)h.slot_bytes);
    if (need > size)
        return ndshm__fail(NDSHM_ECORRUPT, 0, "%s needs %llu bytes but its segment holds %llu", k->ring,
                           (unsigned long long)need, (unsigned long long)size);
    out->kind = (int)k->seg_flag;
    out->version = h.version;
    out->slots = h.slots;
    out->slot_bytes = h.slot_bytes;
    out->ring_bytes = need;
    return 0;
}

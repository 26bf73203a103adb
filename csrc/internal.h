/*
 * internal.h -- declarations shared by the library's source files, never installed.
 *
 * Everything here is hidden (the library is built with -fvisibility=hidden) and named
 * ndshm__* so it can never be mistaken for the public ndshm_* API.
 */
#ifndef NDSHM_INTERNAL_H
#define NDSHM_INTERNAL_H

#include "ndshm.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NDSHM_HIDDEN __attribute__((visibility("hidden")))
#define NDSHM_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- errors (error.c) ------------------------------------------------------------- */

/* Records `code`, `err` (an errno or 0) and a formatted detail for this thread; returns `code`. */
NDSHM_HIDDEN int ndshm__fail(int code, int err, const char *fmt, ...) NDSHM_PRINTF(3, 4);

/* Maps errno `err` to the closest NDSHM_E* code, records it with the detail; returns the code. */
NDSHM_HIDDEN int ndshm__fail_errno(int err, const char *fmt, ...) NDSHM_PRINTF(2, 3);

/* ---- sizes ------------------------------------------------------------------------ */

static inline bool ndshm__is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* *out = a + b, or true on overflow. */
static inline bool ndshm__add_overflow(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

/* *out = a * b, or true on overflow. */
static inline bool ndshm__mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }

/* *out = x rounded up to a multiple of the power of two `align`, or true on overflow. */
static inline bool ndshm__round_up(size_t x, size_t align, size_t *out) {
    size_t t;
    if (ndshm__add_overflow(x, align - 1, &t)) return true;
    *out = t & ~(align - 1);
    return false;
}

/* The system page size, cached. */
NDSHM_HIDDEN size_t ndshm__page_size(void);

/* ---- statistics (alloc.c) ---------------------------------------------------------- */

typedef struct ndshm__counters {
    _Atomic uint64_t live_buffers, live_bytes, total_buffers;
    _Atomic uint64_t live_segments, live_mappings, mapped_bytes;
    _Atomic uint64_t live_queues;
} ndshm__counters_t;

NDSHM_HIDDEN extern ndshm__counters_t ndshm__counters;

#define NDSHM__COUNT(field, delta) \
    atomic_fetch_add_explicit(&ndshm__counters.field, (uint64_t)(delta), memory_order_relaxed)

#endif /* NDSHM_INTERNAL_H */

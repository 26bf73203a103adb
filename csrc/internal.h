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

/* The segment flags a header records (create accepts them; attach refuses a header with others). */
#define NDSHM__SEG_STORED_FLAGS \
    (NDSHM_SEG_PERSIST | NDSHM_SEG_POPULATE | NDSHM_SEG_HUGEPAGES | NDSHM_SEG_FORTRAN | NDSHM_SEG_QUEUE | NDSHM_SEG_SYNC | \
     NDSHM_SEG_BROADCAST | NDSHM_SEG_POOL)

/* ---- errors (error.c) ------------------------------------------------------------- */

/* Records `code`, `err` (an errno or 0) and a formatted detail for this thread; returns `code`. */
NDSHM_HIDDEN int ndshm__fail(int code, int err, const char *fmt, ...) NDSHM_PRINTF(3, 4);

/* Maps errno `err` to the closest NDSHM_E* code, records it with the detail; returns the code. */
NDSHM_HIDDEN int ndshm__fail_errno(int err, const char *fmt, ...) NDSHM_PRINTF(2, 3);

/* This thread's failure detail and errno, kept across calls whose own failures must not
 * replace them (a fallback that was tried and failed too). */
typedef struct ndshm__error_state {
    char detail[512];
    int err;
} ndshm__error_state_t;
NDSHM_HIDDEN void ndshm__error_save(ndshm__error_state_t *s);
NDSHM_HIDDEN void ndshm__error_restore(const ndshm__error_state_t *s);

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

/* ---- pre-faulting (alloc.c) ---------------------------------------------------------- */

enum {
    NDSHM__POPULATE_READ,      /* map the pages for reading (a read-only or disk-file mapping) */
    NDSHM__POPULATE_WRITE,     /* map them writable; the contents are kept */
    NDSHM__POPULATE_ZERO_FILL  /* the same, on fresh private memory that may be written with zeros */
};

/* Pre-faults [addr, addr + len) with MADV_POPULATE_READ/WRITE, split over up to 8 threads (the
 * CPUs this process may use, 32 MiB or more each); kernels before 5.14 touch every page.
 * Advisory: a range the kernel cannot populate is left to fault later. */
NDSHM_HIDDEN void ndshm__populate(void *addr, size_t len, int how);

/* ---- statistics (alloc.c) ---------------------------------------------------------- */

typedef struct ndshm__counters {
    _Atomic uint64_t live_buffers, live_bytes, total_buffers;
    _Atomic uint64_t live_segments, live_mappings, mapped_bytes;
    _Atomic uint64_t live_queues, live_broadcasts; /* ring handles (live_broadcasts is not in ndshm_stats_t) */
} ndshm__counters_t;

NDSHM_HIDDEN extern ndshm__counters_t ndshm__counters;

#define NDSHM__COUNT(field, delta) \
    atomic_fetch_add_explicit(&ndshm__counters.field, (uint64_t)(delta), memory_order_relaxed)


/* ---- segments ---- */

/* The on-segment header (header.c documents the format). */
enum {
    NDSHM__HDR_FIXED = 896,                                         /* bytes before descr and meta */
    NDSHM__HDR_MAX = 896 + NDSHM_DESCR_MAX + NDSHM_META_MAX,       /* the largest valid header */
    NDSHM__HDR_SYNC_OFFSET = 640,                                   /* first sync slot, 64-aligned */
    NDSHM__FORMAT_VERSION = 2 /* 2: owner words hold process ids (identity.c), not pid and start time */
};

/* *extent = bytes the layout's elements reach from the data start (0 if any dimension is 0).
 * Refuses ndim > NDSHM_MAXDIM, negative shapes, negative strides and overflow (naming the value). */
NDSHM_HIDDEN int ndshm__layout_extent(const ndshm_layout_t *layout, uint64_t *extent);

/* 0 if `typestr` is NUL-terminated within NDSHM_TYPESTR_MAX, non-empty and printable. */
NDSHM_HIDDEN int ndshm__check_typestr(const char *typestr);

/* Writes a complete header (state INITIALIZING) into `dst` (header_size bytes, zeroed). */
NDSHM_HIDDEN void ndshm__header_write(void *dst, const ndshm_segment_params_t *p, uint64_t data_offset,
                                      uint64_t data_size, uint64_t alignment, int64_t pid, int64_t created_ns);

/* Publishes a written header: stores READY with release semantics. */
NDSHM_HIDDEN void ndshm__header_publish(void *dst);

/* Validates the `len` header bytes at `bytes` (a private copy) of a segment whose file is
 * `file_size` bytes, and fills *out (kind, flags, format_version, sizes, layout, descr, meta,
 * creator). @return : 0; NDSHM_EBUSY if the header is not published yet (zero or INITIALIZING);
 * NDSHM_ECORRUPT naming the first bad field. Never reads outside [bytes, bytes + len). */
NDSHM_HIDDEN int ndshm__header_validate(const void *bytes, size_t len, uint64_t file_size,
                                        ndshm_segment_info_t *out);

/* Set / test the hand-over marker in `sync`, a header's NDSHM_SYNC_OWNER slot (header.c owns
 * where it lies and its value). */
NDSHM_HIDDEN void ndshm__handover_set(void *sync);
NDSHM_HIDDEN bool ndshm__handover_is_set(const void *sync);

/* Recomputes the checksum of the header in `bytes` if its header_size fits in `len` (for the
 * fuzzer and tests, so mutations reach the checks behind the checksum). */
NDSHM_HIDDEN void ndshm__header_reseal(void *bytes, size_t len);


/* ---- process identity (identity.c) ---- */

/* A random non-zero 64-bit value (getrandom through syscall(): glibc 2.17 lacks its wrapper;
 * /dev/urandom, else the clock and pid mixed). */
NDSHM_HIDDEN uint64_t ndshm__random_id(void);
NDSHM_HIDDEN extern _Atomic uint64_t ndshm__self_id;
NDSHM_HIDDEN uint64_t ndshm__self_key_slow(void);

/* This process's identity: a random non-zero 64-bit id, registered in the process table of
 * every directory this process registered in (at least the default one), made anew in a
 * fork()ed child. One relaxed load once made: the queue's hot path may call it. */
static inline uint64_t ndshm__self_key(void) {
    uint64_t id = atomic_load_explicit(&ndshm__self_id, memory_order_acquire);
    return __builtin_expect(id != 0, 1) ? id : ndshm__self_key_slow();
}

/* 1 if the process behind `key` runs (its table entry's record lock is held), 0 if it is dead
 * or 0. Looks in every process table this process has open (identity.c). */
NDSHM_HIDDEN int ndshm__key_alive(uint64_t key);

/* Registers this process in the table of directory `dir` (NULL: $NDSHM_DIR, else /dev/shm),
 * or of the directory holding file `path`; 0 or a negative NDSHM_E* with the detail. A process
 * registers in a directory before it writes its id into any segment there. */
NDSHM_HIDDEN int ndshm__register(const char *dir);
NDSHM_HIDDEN int ndshm__register_path(const char *path);

/* Opens the tables of `dir` (of the directory holding `path`) to test ids found there. */
NDSHM_HIDDEN int ndshm__open_dir(const char *dir);
NDSHM_HIDDEN int ndshm__open_dir_of(const char *path);

/* The pid `key`'s process has in its own PID namespace and whether that is ours: 0, or
 * NDSHM_ENOENT (in no table open; no detail recorded). */
NDSHM_HIDDEN int ndshm__key_pid(uint64_t key, int64_t *pid, int *same_ns);

/* "pid N", "pid N (in another PID namespace)" or what is known of an id found in no table. */
NDSHM_HIDDEN void ndshm__key_describe(uint64_t key, char *buf, size_t len);

/* For tests: drops this process's id and closes its tables as a fork()ed child does. */
NDSHM_HIDDEN void ndshm__identity_renew(void);

/* ---- queue and sync ---- */

/* A deadline in CLOCK_MONOTONIC nanoseconds for `timeout` seconds (< 0, +inf or beyond ~31
 * years: none, INT64_MAX). NaN also gives INT64_MAX, but every public function taking a timeout
 * refuses NaN first (ndshm__check_timeout). */
NDSHM_HIDDEN int64_t ndshm__deadline(double timeout);

/* 0, or NDSHM_EINVAL naming the timeout if it is NaN (which no comparison can order: it would
 * wait for ever). One compare: cheap enough for the queue's hot path. */
static inline int ndshm__check_timeout(double timeout, const char *fn) {
    if (__builtin_expect(__builtin_isnan(timeout), 0))
        return ndshm__fail(NDSHM_EINVAL, 0, "%s: timeout nan is not a number", fn);
    return 0;
}
NDSHM_HIDDEN int64_t ndshm__now_ns(void);

/* Sleeps on the shared 32-bit futex `word` while it holds `expected`, at most until `deadline`
 * and at most `slice_ns` (0: no slice). Returns 0 when woken or the value differs, ETIMEDOUT at
 * the deadline, EINTR / EAGAIN as the kernel says (callers re-check their condition anyway). */
NDSHM_HIDDEN int ndshm__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline, int64_t slice_ns);
NDSHM_HIDDEN void ndshm__futex_wake(_Atomic uint32_t *word, int count);

/* One pause of a spin loop. */
static inline void ndshm__pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif /* NDSHM_INTERNAL_H */

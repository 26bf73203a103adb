/*
 * alloc.c -- aligned allocations, and the process-wide statistics.
 *
 * Two strategies:
 *   - heap: one posix_memalign block holding the handle, then the data at the next multiple of
 *     the alignment. Used for small and mid-sized requests with sub-page alignment and no
 *     page-level options, where the allocator's reuse of freed memory beats fresh page faults.
 *   - map: an anonymous private mapping, over-reserved by (alignment - page) and trimmed at both
 *     ends so exactly the rounded-up size stays mapped. Used for page-or-larger alignments, large
 *     sizes (like glibc's own mmap threshold) and the huge-page, populate and lock options.
 * Both advise transparent huge pages from NDSHM_THP_THRESHOLD bytes up, as NumPy does.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Populating at least this many bytes per thread is worth a thread (a create costs ~30 us). */
#define NDSHM_POPULATE_CHUNK ((size_t)32 << 20)
#define NDSHM_POPULATE_THREADS 8

/* Requests of at least this many bytes are mapped rather than taken from the heap. */
#define NDSHM_MAP_THRESHOLD ((size_t)32 << 20)

struct ndshm_buffer_s {
    void *data;
    size_t nbytes;
    void *map_base; /* the mapping, or NULL for a heap block (which starts at this struct) */
    size_t map_len;
};

ndshm__counters_t ndshm__counters;

size_t ndshm__page_size(void) {
    static _Atomic size_t cached;
    size_t p = atomic_load_explicit(&cached, memory_order_relaxed);
    if (p == 0) {
        long v = sysconf(_SC_PAGESIZE);
        p = v > 0 ? (size_t)v : 4096;
        atomic_store_explicit(&cached, p, memory_order_relaxed);
    }
    return p;
}

int ndshm_get_stats(ndshm_stats_t *out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_get_stats: out is NULL");
#define LOAD(f) atomic_load_explicit(&ndshm__counters.f, memory_order_relaxed)
    out->live_buffers = LOAD(live_buffers);
    out->live_bytes = LOAD(live_bytes);
    out->total_buffers = LOAD(total_buffers);
    out->live_segments = LOAD(live_segments);
    out->live_mappings = LOAD(live_mappings);
    out->mapped_bytes = LOAD(mapped_bytes);
    out->live_queues = LOAD(live_queues);
#undef LOAD
    return 0;
}

static void count_alloc(size_t nbytes) {
    NDSHM__COUNT(live_buffers, 1);
    NDSHM__COUNT(total_buffers, 1);
    NDSHM__COUNT(live_bytes, nbytes);
}

/* Whether to advise transparent huge pages for a buffer of `nbytes` with `flags`. */
static bool want_thp(size_t nbytes, unsigned flags) {
    if (flags & NDSHM_ALLOC_NO_HUGEPAGES) return false;
    return (flags & NDSHM_ALLOC_HUGEPAGES) || nbytes >= NDSHM_THP_THRESHOLD;
}

static int alloc_heap(size_t nbytes, size_t alignment, unsigned flags, ndshm_buffer_t **out) {
    size_t head, total;
    if (ndshm__round_up(sizeof(ndshm_buffer_t), alignment, &head) || ndshm__add_overflow(head, nbytes, &total))
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "nbytes %zu with alignment %zu overflows", nbytes, alignment);
    void *block = NULL;
    int err = posix_memalign(&block, alignment, total);
    if (err != 0)
        return ndshm__fail(NDSHM_ENOMEM, err, "cannot allocate %zu bytes aligned to %zu", nbytes, alignment);
    ndshm_buffer_t *buf = block;
    buf->data = (char *)block + head;
    buf->nbytes = nbytes;
    buf->map_base = NULL;
    buf->map_len = 0;
    if (want_thp(nbytes, flags)) { /* advise the whole pages inside the block, as NumPy does */
        size_t page = ndshm__page_size();
        uintptr_t lo = ((uintptr_t)buf->data + page - 1) & ~(uintptr_t)(page - 1);
        uintptr_t hi = ((uintptr_t)buf->data + nbytes) & ~(uintptr_t)(page - 1);
        if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
    if (flags & NDSHM_ALLOC_ZERO) memset(buf->data, 0, nbytes);
    else if (flags & NDSHM_ALLOC_POPULATE) {
        size_t page = ndshm__page_size();
        for (size_t i = 0; i < nbytes; i += page) ((volatile char *)buf->data)[i] = 0;
    }
    *out = buf;
    return 0;
}

/* ---- pre-faulting ---------------------------------------------------------------------- */

typedef struct {
    char *addr;
    size_t len;
    int how;
} populate_job_t;

static void *populate_range(void *arg) {
    const populate_job_t *j = arg;
    int advice = j->how == NDSHM__POPULATE_READ ? MADV_POPULATE_READ : MADV_POPULATE_WRITE;
    if (madvise(j->addr, j->len, advice) == 0 || errno != EINVAL) return NULL; /* advisory: EFAULT etc. ignored */
    /* kernels before 5.14: fault each page in by hand; only fresh private memory may be written */
    size_t page = ndshm__page_size();
    volatile char *p = (volatile char *)j->addr;
    for (size_t i = 0; i < j->len; i += page) {
        if (j->how == NDSHM__POPULATE_ZERO_FILL) p[i] = 0;
        else (void)p[i];
    }
    return NULL;
}

void ndshm__populate(void *addr, size_t len, int how) {
    populate_job_t jobs[NDSHM_POPULATE_THREADS];
    pthread_t threads[NDSHM_POPULATE_THREADS];
    bool started[NDSHM_POPULATE_THREADS] = {false};
    cpu_set_t cpus;
    size_t n = len / NDSHM_POPULATE_CHUNK;
    if (n > 1 && sched_getaffinity(0, sizeof cpus, &cpus) == 0 && (size_t)CPU_COUNT(&cpus) < n)
        n = (size_t)CPU_COUNT(&cpus);
    if (n > NDSHM_POPULATE_THREADS) n = NDSHM_POPULATE_THREADS;
    if (n < 2) {
        populate_job_t one = {addr, len, how};
        populate_range(&one);
        return;
    }
    /* n ranges of whole 2 MiB extents (huge pages are never split), the last one takes the rest */
    size_t step = (len / n) & ~((size_t)NDSHM_HUGE_ALIGNMENT - 1);
    pthread_attr_t attr;
    bool attr_ok = pthread_attr_init(&attr) == 0;
    if (attr_ok) (void)pthread_attr_setstacksize(&attr, 64 * 1024);
    for (size_t i = 0; i < n; i++) {
        jobs[i].addr = (char *)addr + i * step;
        jobs[i].len = i + 1 < n ? step : len - i * step;
        jobs[i].how = how;
        if (i > 0) started[i] = pthread_create(&threads[i], attr_ok ? &attr : NULL, populate_range, &jobs[i]) == 0;
    }
    if (attr_ok) pthread_attr_destroy(&attr);
    populate_range(&jobs[0]);
    for (size_t i = 1; i < n; i++) {
        if (started[i]) pthread_join(threads[i], NULL);
        else populate_range(&jobs[i]); /* no thread: do its share here */
    }
}

static int lock_error(size_t len, int err) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        return ndshm__fail(NDSHM_ESYS, err,
                           "mlock of %zu bytes refused; RLIMIT_MEMLOCK is %llu bytes (raise it with ulimit -l)",
                           len, (unsigned long long)rl.rlim_cur);
    return ndshm__fail(NDSHM_ESYS, err, "mlock of %zu bytes refused", len);
}

static int alloc_map(size_t nbytes, size_t alignment, unsigned flags, ndshm_buffer_t **out) {
    size_t page = ndshm__page_size();
    if (alignment < page) alignment = page;
    bool thp = want_thp(nbytes, flags);
    /* Huge pages cover the 2 MiB-aligned extents inside a mapping. By default (as NumPy does) the
     * interior is enough and costs no extra system calls; asked for explicitly, the whole buffer
     * gets them: over-reserve and trim to a 2 MiB-aligned start. */
    if ((flags & NDSHM_ALLOC_HUGEPAGES) && alignment < NDSHM_HUGE_ALIGNMENT && nbytes >= NDSHM_HUGE_ALIGNMENT)
        alignment = NDSHM_HUGE_ALIGNMENT;
    size_t len, reserve;
    if (ndshm__round_up(nbytes == 0 ? 1 : nbytes, page, &len) || ndshm__add_overflow(len, alignment - page, &reserve))
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "nbytes %zu with alignment %zu overflows", nbytes, alignment);

    ndshm_buffer_t *buf = malloc(sizeof *buf);
    if (buf == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a buffer handle");

    char *base = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        free(buf);
        return ndshm__fail(NDSHM_ENOMEM, err, "cannot map %zu bytes aligned to %zu", nbytes, alignment);
    }
    uintptr_t start = ((uintptr_t)base + alignment - 1) & ~(uintptr_t)(alignment - 1);
    char *data = (char *)start;
    size_t lead = (size_t)(data - base), tail = reserve - lead - len;
    if (lead) munmap(base, lead);
    if (tail) munmap(data + len, tail);

    if (thp) (void)madvise(data, len, MADV_HUGEPAGE); /* advisory: THP may be off */
    if (flags & NDSHM_ALLOC_LOCK) {
        if (mlock(data, len) != 0) {
            int rc = lock_error(len, errno);
            munmap(data, len);
            free(buf);
            return rc;
        }
    } else if (flags & NDSHM_ALLOC_POPULATE) {
        ndshm__populate(data, len, NDSHM__POPULATE_ZERO_FILL);
    }
    buf->data = data;
    buf->nbytes = nbytes;
    buf->map_base = data;
    buf->map_len = len;
    *out = buf;
    return 0;
}

int ndshm_alloc(size_t nbytes, size_t alignment, unsigned flags, ndshm_buffer_t **out, uintptr_t *address) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_alloc: out is NULL");
    *out = NULL;
    if (!ndshm__is_pow2(alignment) || alignment > NDSHM_MAX_ALIGNMENT)
        return ndshm__fail(NDSHM_EINVAL, 0, "alignment %zu is not a power of two between 1 and %d", alignment,
                           NDSHM_MAX_ALIGNMENT);
    const unsigned known = NDSHM_ALLOC_ZERO | NDSHM_ALLOC_HUGEPAGES | NDSHM_ALLOC_POPULATE | NDSHM_ALLOC_LOCK |
                           NDSHM_ALLOC_NO_HUGEPAGES;
    if (flags & ~known) return ndshm__fail(NDSHM_EINVAL, 0, "unknown allocation flags 0x%x", flags & ~known);
    if ((flags & NDSHM_ALLOC_HUGEPAGES) && (flags & NDSHM_ALLOC_NO_HUGEPAGES))
        return ndshm__fail(NDSHM_EINVAL, 0, "flags 0x%x ask for huge pages and for none", flags);
    if (nbytes > (size_t)PTRDIFF_MAX)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "nbytes %zu exceeds the largest object size %td", nbytes, PTRDIFF_MAX);
    if (alignment < sizeof(void *)) alignment = sizeof(void *);

    /* locked pages are mapped whole; huge pages need a mapping only where one fits (below 2 MiB
     * no huge page can back the buffer, and the heap's recycled pages are the cheaper ones) */
    bool page_level = (flags & NDSHM_ALLOC_LOCK) || ((flags & NDSHM_ALLOC_HUGEPAGES) && nbytes >= NDSHM_HUGE_ALIGNMENT);
    bool map = alignment >= ndshm__page_size() || nbytes >= NDSHM_MAP_THRESHOLD || page_level;
    int rc = map ? alloc_map(nbytes, alignment, flags, out) : alloc_heap(nbytes, alignment, flags, out);
    if (rc != 0) return rc;
    count_alloc(nbytes);
    if (address != NULL) *address = (uintptr_t)(*out)->data;
    return 0;
}

void *ndshm_buffer_data(const ndshm_buffer_t *buf) { return buf ? buf->data : NULL; }

size_t ndshm_buffer_size(const ndshm_buffer_t *buf) { return buf ? buf->nbytes : 0; }

void ndshm_buffer_free(ndshm_buffer_t *buf) {
    if (buf == NULL) return;
    atomic_fetch_sub_explicit(&ndshm__counters.live_buffers, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&ndshm__counters.live_bytes, buf->nbytes, memory_order_relaxed);
    if (buf->map_base != NULL) munmap(buf->map_base, buf->map_len);
    free(buf); /* a heap block begins with its handle; a mapped buffer's handle is malloc'd */
}

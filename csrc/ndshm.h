/*
 * ndshm.h -- aligned allocations and shared-memory segments for zero-copy NumPy arrays.
 *
 * This is the one public header of libndshm. The Python layer (pybind/ndshm) reads its
 * declarations from this very file through cffi in ABI mode, so everything outside
 * preprocessor lines must stay plain C that cffi's parser accepts: no macros in
 * declarations except NDSHM_API, constants as enums, no inline functions.
 *
 * Conventions (every section):
 *   - Functions return 0 on success or a negative NDSHM_E* code; results go to out-parameters.
 *   - On failure, ndshm_last_detail() gives a thread-local message naming the bad value.
 *   - Handles are opaque; every *_close / *_free accepts NULL.
 *   - Sizes come before alignments in every signature.
 *   - Every function is thread safe unless its section says otherwise.
 */
#ifndef NDSHM_H
#define NDSHM_H

#include <stddef.h>
#include <stdint.h>

#define NDSHM_VERSION_MAJOR 0
#define NDSHM_VERSION_MINOR 1
#define NDSHM_VERSION_PATCH 0
#define NDSHM_VERSION_NUMBER (NDSHM_VERSION_MAJOR * 10000 + NDSHM_VERSION_MINOR * 100 + NDSHM_VERSION_PATCH)
/* Bumped whenever a declaration below changes incompatibly; the Python layer refuses a mismatch. */
#define NDSHM_ABI_VERSION 1

#if defined(__GNUC__)
#define NDSHM_API __attribute__((visibility("default")))
#else
#define NDSHM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================================
 * Version
 * ====================================================================================== */

/*! ndshm_version() :
 *  @return : the library's NDSHM_VERSION_NUMBER (major*10000 + minor*100 + patch). */
NDSHM_API int ndshm_version(void);

/*! ndshm_abi_version() :
 *  @return : the library's NDSHM_ABI_VERSION; a binding built against another value must refuse it. */
NDSHM_API int ndshm_abi_version(void);

/* ======================================================================================
 * Errors
 * Codes are pinned: they never change meaning. Thread rule: the detail string is per thread.
 * ====================================================================================== */

typedef enum ndshm_error {
    NDSHM_OK = 0,
    NDSHM_EINVAL = -1,      /* an argument is out of range (the detail names it) */
    NDSHM_ENOMEM = -2,      /* out of memory or address space */
    NDSHM_EOVERFLOW = -3,   /* a size computation overflows */
    NDSHM_EEXIST = -4,      /* a segment of that name exists already */
    NDSHM_ENOENT = -5,      /* no segment of that name */
    NDSHM_EACCES = -6,      /* permission denied */
    NDSHM_ENOSPC = -7,      /* the file system holding a segment is full */
    NDSHM_ECORRUPT = -8,    /* a segment's contents fail validation */
    NDSHM_ETIMEDOUT = -9,   /* a wait ran out of time */
    NDSHM_EBUSY = -10,      /* a segment is still being initialised, or a try-operation would block */
    NDSHM_EEMPTY = -11,     /* queue: nothing to take */
    NDSHM_EFULL = -12,      /* queue: no free slot */
    NDSHM_ETOOBIG = -13,    /* a message is larger than a queue slot */
    NDSHM_EOWNERDEAD = -14, /* lock: acquired, but its previous owner died holding it */
    NDSHM_ECLOSED = -15,    /* the handle or object was closed */
    NDSHM_ENOTSUP = -16,    /* not supported here (e.g. no huge pages reserved) */
    NDSHM_EPERM = -17,      /* operation not permitted (e.g. releasing a lock one does not hold) */
    NDSHM_ESYS = -18,       /* another operating-system error: see ndshm_last_errno() */
    NDSHM_EBROKEN = -19,    /* barrier: broken by a timeout or a dead party */
    NDSHM_ERROR_MIN_ = -19  /* the most negative code; not an error itself */
} ndshm_error_t;

/*! ndshm_strerror() :
 *  @return : a static, human-readable description of `code` ("unknown error" if it is none). */
NDSHM_API const char *ndshm_strerror(int code);

/*! ndshm_errname() :
 *  @return : the static name of `code`, e.g. "NDSHM_EINVAL" ("NDSHM_E?" if it is none). */
NDSHM_API const char *ndshm_errname(int code);

/*! ndshm_last_detail() :
 *  @return : this thread's message for its most recent failure, naming the offending value;
 *            "" if the thread has not failed yet. Valid until this thread's next ndshm call. */
NDSHM_API const char *ndshm_last_detail(void);

/*! ndshm_last_errno() :
 *  @return : the errno behind this thread's most recent failure, 0 if it had none. */
NDSHM_API int ndshm_last_errno(void);

/* ======================================================================================
 * Aligned allocation
 * Any power-of-two alignment from sizeof(void *) up to NDSHM_MAX_ALIGNMENT. Small requests
 * come from posix_memalign; large or page-aligned ones from mmap, with the over-allocation
 * trimmed so no memory is wasted. Zero-byte buffers are valid (their data pointer is aligned
 * and not NULL, but must not be dereferenced).
 * ====================================================================================== */

typedef struct ndshm_buffer_s ndshm_buffer_t;

enum ndshm_alloc_flags {
    NDSHM_ALLOC_ZERO = 1,      /* zero-fill (free for mmap'd memory) */
    NDSHM_ALLOC_HUGEPAGES = 2, /* madvise(MADV_HUGEPAGE) where the kernel allows it */
    NDSHM_ALLOC_POPULATE = 4,  /* pre-fault every page now */
    NDSHM_ALLOC_LOCK = 8       /* mlock in RAM; ESYS with errno from mlock when RLIMIT_MEMLOCK refuses */
};

enum ndshm_alloc_limits {
    NDSHM_MAX_ALIGNMENT = 1073741824, /* 1 GiB */
    NDSHM_HUGE_ALIGNMENT = 2097152    /* the alignment behind align='huge' */
};

/*! ndshm_alloc() :
 *  Allocates `nbytes` aligned to `alignment` (a power of two; values below sizeof(void *) are
 *  raised to it) and stores the new buffer in *out and, unless `address` is NULL, its data
 *  address in *address (saving bindings a call to ndshm_buffer_data()).
 *  @return : 0, or NDSHM_EINVAL (alignment not a power of two in range, unknown flag),
 *            NDSHM_EOVERFLOW, NDSHM_ENOMEM, NDSHM_ESYS (mlock refused). *out is NULL on failure. */
NDSHM_API int ndshm_alloc(size_t nbytes, size_t alignment, unsigned flags, ndshm_buffer_t **out,
                          uintptr_t *address);

/*! ndshm_buffer_data() : @return : the buffer's first byte, aligned as requested. */
NDSHM_API void *ndshm_buffer_data(const ndshm_buffer_t *buf);

/*! ndshm_buffer_size() : @return : the usable size in bytes, as requested. */
NDSHM_API size_t ndshm_buffer_size(const ndshm_buffer_t *buf);

/*! ndshm_buffer_free() : releases the buffer; NULL is accepted and ignored. */
NDSHM_API void ndshm_buffer_free(ndshm_buffer_t *buf);

/* ======================================================================================
 * Statistics
 * Process-wide counters, updated atomically, so tests can prove nothing leaks.
 * ====================================================================================== */

typedef struct ndshm_stats {
    uint64_t live_buffers;   /* ndshm_alloc'd and not yet freed */
    uint64_t live_bytes;     /* their requested sizes, summed */
    uint64_t total_buffers;  /* allocated since the library was loaded */
    uint64_t live_segments;  /* segment handles open in this process */
    uint64_t live_mappings;  /* segment mappings alive in this process */
    uint64_t mapped_bytes;   /* bytes those mappings span */
    uint64_t live_queues;    /* queue handles open in this process */
} ndshm_stats_t;

/*! ndshm_get_stats() : fills *out with the current counters. @return : 0, or NDSHM_EINVAL for NULL. */
NDSHM_API int ndshm_get_stats(ndshm_stats_t *out);

/* ======================================================================================
 * Segments
 * (declared in the shared-segments change)
 * ====================================================================================== */

/* ======================================================================================
 * Queue
 * (declared in the queue change)
 * ====================================================================================== */

/* ======================================================================================
 * Sync
 * (declared in the queue change)
 * ====================================================================================== */

#ifdef __cplusplus
}
#endif

#endif /* NDSHM_H */

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
    NDSHM_ESHUTDOWN = -20,  /* the queue or broadcast was shut down (and, for readers, drained) */
    NDSHM_ELAGGED = -21,    /* broadcast: the subscriber fell behind and messages were overwritten */
    NDSHM_ERROR_MIN_ = -21  /* the most negative code; not an error itself */
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

/* Transparent huge pages: like NumPy, buffers of NDSHM_THP_THRESHOLD bytes or more are advised
 * (madvise MADV_HUGEPAGE) and their mappings 2 MiB-aligned by default; NDSHM_ALLOC_HUGEPAGES
 * advises any mapped buffer, NDSHM_ALLOC_NO_HUGEPAGES none. */
enum ndshm_alloc_flags {
    NDSHM_ALLOC_ZERO = 1,          /* zero-fill (free for mmap'd memory) */
    NDSHM_ALLOC_HUGEPAGES = 2,     /* transparent huge pages whatever the size (implies a mapping) */
    NDSHM_ALLOC_POPULATE = 4,      /* pre-fault every page now */
    NDSHM_ALLOC_LOCK = 8,          /* mlock in RAM; ESYS with errno from mlock when RLIMIT_MEMLOCK refuses */
    NDSHM_ALLOC_NO_HUGEPAGES = 16  /* never advise huge pages */
};

enum ndshm_alloc_limits {
    NDSHM_MAX_ALIGNMENT = 1073741824, /* 1 GiB */
    NDSHM_HUGE_ALIGNMENT = 2097152,   /* the alignment behind align='huge' */
    NDSHM_THP_THRESHOLD = 4194304     /* 4 MiB: the size from which huge pages are advised by default */
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
 * A segment is shared memory that begins with a self-describing header (its format is
 * versioned and documented in header.c) followed by the data, which starts at a multiple of
 * the requested alignment and at least of the page size. The creator writes the header, then
 * publishes READY; attach validates everything in the header against the mapping before use.
 * Every handle holds a shared flock on its file while mapped, so "is anyone attached?" has a
 * true answer even after kill -9. Handles are thread safe to share; close exactly once.
 * ====================================================================================== */

typedef struct ndshm_segment_s ndshm_segment_t;

enum ndshm_segment_kind {
    NDSHM_KIND_NAMED = 0,     /* a file "ndshm.<name>" in the shared-memory directory */
    NDSHM_KIND_ANONYMOUS = 1, /* MAP_SHARED | MAP_ANONYMOUS: shared with fork()ed children */
    NDSHM_KIND_MEMFD = 2,     /* memfd_create: shared by passing its descriptor (SCM_RIGHTS) */
    NDSHM_KIND_FILE = 3       /* a file at any path: persists like numpy.memmap, self-describing */
};

enum ndshm_segment_flags {
    NDSHM_SEG_PERSIST = 1,   /* create: the creator's close does not unlink the name */
    NDSHM_SEG_POPULATE = 2,  /* create, attach: pre-fault every page */
    NDSHM_SEG_HUGEPAGES = 4, /* create: hugetlb pages (memfd MFD_HUGETLB, or a hugetlbfs directory) */
    NDSHM_SEG_READONLY = 8,  /* attach: map PROT_READ */
    NDSHM_SEG_FORTRAN = 16,  /* layout: Fortran order (recorded; strides are authoritative) */
    NDSHM_SEG_QUEUE = 32,    /* the data holds an ndshm queue, not an array */
    NDSHM_SEG_SYNC = 64,     /* a standalone Lock, Event or Barrier: its sync slots are the content */
    NDSHM_SEG_KEEP_NAME = 128, /* create: this handle's close never removes the name (the binding decides
                                  when it goes, e.g. after a hand-over); held by the handle, not stored */
    NDSHM_SEG_BROADCAST = 256, /* the data holds an ndshm broadcast ring, not an array */
    NDSHM_SEG_POOL = 512       /* the data holds an ndshm pool (see Pool), not an array */
};

enum ndshm_segment_limits {
    NDSHM_MAXDIM = 32,        /* dimensions of an array */
    NDSHM_NAME_MAX = 200,     /* characters of a segment name, [A-Za-z0-9._-] */
    NDSHM_TYPESTR_MAX = 32,   /* bytes of a NumPy typestr, NUL included */
    NDSHM_DESCR_MAX = 4096,   /* bytes of a structured-dtype description (opaque to C) */
    NDSHM_META_MAX = 4096,    /* bytes of user metadata */
    NDSHM_SYNC_SIZE = 64,     /* bytes of one lock, event or barrier (see Sync) */
    NDSHM_SEG_SYNC_SLOTS = 4, /* zero-initialised sync objects in every segment header */
    NDSHM_SYNC_OWNER = 3      /* the sync slot of the owner lock (who removes the name; see
                                 ndshm_segment_mark_handover), never handed out as Lock/Event/Barrier */
};

/* How the data is laid out: one NumPy array. */
typedef struct ndshm_layout {
    char typestr[NDSHM_TYPESTR_MAX]; /* of one element, e.g. "<f4", "|V16"; NUL-terminated */
    uint64_t itemsize;               /* bytes of one element (matches typestr) */
    uint32_t ndim;                   /* 0 .. NDSHM_MAXDIM */
    int64_t shape[NDSHM_MAXDIM];     /* each >= 0 */
    int64_t strides[NDSHM_MAXDIM];   /* bytes; every element reachable lies inside the data */
} ndshm_layout_t;

/* Everything ndshm_segment_create needs. Zero-initialise, then fill what applies. */
typedef struct ndshm_segment_params {
    int kind;                /* enum ndshm_segment_kind */
    const char *name;        /* NAMED: the name; FILE: the path; NULL for the other kinds */
    const char *dir;         /* NAMED: the directory; NULL means $NDSHM_DIR, else /dev/shm */
    unsigned mode;           /* permission bits of NAMED and FILE segments; 0 means 0600 */
    unsigned flags;          /* NDSHM_SEG_* */
    size_t alignment;        /* of the data: a power of two; raised to the page size */
    ndshm_layout_t layout;   /* the array; data size = the extent its strides reach */
    const char *descr;       /* structured-dtype description, stored verbatim, or NULL */
    size_t descr_len;        /* <= NDSHM_DESCR_MAX */
    const void *meta;        /* user metadata, stored verbatim, or NULL */
    size_t meta_len;         /* <= NDSHM_META_MAX */
} ndshm_segment_params_t;

/* What a segment handle knows; filled by ndshm_segment_info and ndshm_segment_probe. */
typedef struct ndshm_segment_info {
    int kind;
    unsigned flags;           /* as created, plus NDSHM_SEG_READONLY for a read-only mapping */
    uint32_t format_version;  /* of the header */
    uint64_t data_offset;     /* from the start of the segment */
    uint64_t data_size;       /* bytes of data */
    uint64_t segment_size;    /* bytes of the whole segment (header + data) */
    uint64_t alignment;
    uintptr_t data;           /* address of the data in this process (0 from probe) */
    ndshm_layout_t layout;
    char descr[NDSHM_DESCR_MAX];
    size_t descr_len;
    unsigned char meta[NDSHM_META_MAX];
    size_t meta_len;
    int64_t creator_pid;
    int64_t created_ns;       /* CLOCK_REALTIME at creation, nanoseconds */
    int creator;              /* 1 if this handle created the segment */
    int fd;                   /* the handle's descriptor (memfd: send it), -1 if none */
    uint64_t dev, ino;        /* identity of the backing file, 0 for anonymous memory */
    char name[NDSHM_NAME_MAX + 1]; /* NAMED: the name without prefix; "" otherwise */
} ndshm_segment_info_t;

/*! ndshm_segment_create() :
 *  Creates a segment (exclusively, for NAMED and FILE), reserves its space (so a full file
 *  system fails here with NDSHM_ENOSPC, never later with SIGBUS), writes the header and
 *  publishes it. The data is zero-filled.
 *  @return : 0, or NDSHM_EINVAL (bad name, kind, flags, layout), NDSHM_EOVERFLOW, NDSHM_EEXIST,
 *            NDSHM_EACCES, NDSHM_ENOSPC, NDSHM_ENOTSUP (no huge pages), NDSHM_ENOMEM, NDSHM_ESYS. */
NDSHM_API int ndshm_segment_create(const ndshm_segment_params_t *params, ndshm_segment_t **out);

/*! ndshm_segment_attach() :
 *  Maps an existing NAMED segment (`name` in `dir`) or FILE segment (`name` is the path).
 *  `flags`: NDSHM_SEG_READONLY, NDSHM_SEG_POPULATE. Waits a bounded time (2 s) for a segment
 *  still being initialised, and for its shared lock while another process holds the file's
 *  exclusive flock; a signal ends that wait (NDSHM_ESYS, last errno EINTR: call again once the
 *  handlers ran). On tmpfs a file with holes (fewer blocks than its size) is refused: ndshm
 *  reserves every page it creates, and a hole would raise SIGBUS once the file system is full.
 *  @return : 0, or NDSHM_ENOENT, NDSHM_EACCES, NDSHM_ECORRUPT (also: holes), NDSHM_EBUSY (still
 *            initialising, or locked exclusively), NDSHM_EINVAL, NDSHM_ESYS. */
NDSHM_API int ndshm_segment_attach(int kind, const char *name, const char *dir, unsigned flags,
                                   ndshm_segment_t **out);

/*! ndshm_segment_attach_fd() :
 *  Maps the segment behind descriptor `fd` (a memfd received from another process). The
 *  handle keeps its own duplicate; the caller still owns `fd`.
 *  @return : as ndshm_segment_attach. */
NDSHM_API int ndshm_segment_attach_fd(int fd, unsigned flags, ndshm_segment_t **out);

/*! ndshm_segment_attach_raw() :
 *  Maps a headerless file or NAMED-style path made by another tool: the data is the whole
 *  file; the caller bounds-checks its own view against info.data_size. Never blocks on opening
 *  (a FIFO is refused: not a regular file); the lock wait is as for ndshm_segment_attach. A file
 *  with holes on tmpfs (the standard library's blocks are sparse) has them reserved, as
 *  ndshm_segment_create reserves its own (through a writable reopen when `flags` say READONLY).
 *  @return : 0, or NDSHM_ENOENT, NDSHM_EACCES, NDSHM_EINVAL (empty, not a regular file),
 *            NDSHM_EBUSY (locked exclusively), NDSHM_ENOSPC (no room for its holes),
 *            NDSHM_ECORRUPT (holes this process may not reserve), NDSHM_ESYS. */
NDSHM_API int ndshm_segment_attach_raw(const char *path, unsigned flags, ndshm_segment_t **out);

/*! ndshm_segment_info() : fills *out from the handle. @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_segment_info(const ndshm_segment_t *seg, ndshm_segment_info_t *out);

/* Slots of ndshm_segment_summary's output, then shape[ndim] and strides[ndim]. */
enum ndshm_segment_summary_slots {
    NDSHM_SUM_DATA = 0,       /* address of the data in this process */
    NDSHM_SUM_DATA_SIZE = 1,  /* bytes of data */
    NDSHM_SUM_FLAGS = 2,      /* info.flags */
    NDSHM_SUM_CREATOR = 3,    /* 1 if this handle created the segment */
    NDSHM_SUM_FD = 4,         /* the handle's descriptor, -1 if none */
    NDSHM_SUM_DEV = 5,        /* identity of the backing file */
    NDSHM_SUM_INO = 6,
    NDSHM_SUM_ITEMSIZE = 7,   /* layout */
    NDSHM_SUM_NDIM = 8,
    NDSHM_SUM_DESCR_LEN = 9,  /* bytes of descr and meta (read them with ndshm_segment_info) */
    NDSHM_SUM_META_LEN = 10,
    NDSHM_SUM_FIXED = 11,     /* shape starts here */
    NDSHM_SUM_MAX = 75        /* NDSHM_SUM_FIXED + 2 * NDSHM_MAXDIM */
};

/*! ndshm_segment_summary() :
 *  What a binding needs to view the segment, in one call and without the 9 KB info struct:
 *  writes the NDSHM_SUM_* values, then shape[ndim] and strides[ndim], into out[0 .. n) (values
 *  that do not fit in int64_t, such as addresses or inode numbers above 2^63, wrap around; read
 *  them back as unsigned), and the NUL-terminated typestr into typestr[NDSHM_TYPESTR_MAX].
 *  @return : the count of values written (NDSHM_SUM_FIXED + 2 * ndim), or NDSHM_EINVAL (a NULL
 *            argument, or `n` below that count). */
NDSHM_API int ndshm_segment_summary(const ndshm_segment_t *seg, int64_t *out, size_t n, char *typestr);

/*! ndshm_segment_sync() :
 *  Stores in *out the address of sync object `index` (0 .. NDSHM_SEG_SYNC_SLOTS-1) in the
 *  segment's header: NDSHM_SYNC_SIZE bytes, zeroed at creation, outside the checksum.
 *  @return : 0, or NDSHM_EINVAL, NDSHM_EPERM (read-only mapping). */
NDSHM_API int ndshm_segment_sync(const ndshm_segment_t *seg, unsigned index, void **out);

/*! ndshm_segment_unlink() : removes the segment's name now (mappings stay valid).
 *  @return : 0, or NDSHM_ENOENT (already gone), NDSHM_EINVAL (anonymous, memfd), NDSHM_ESYS. */
NDSHM_API int ndshm_segment_unlink(ndshm_segment_t *seg);

/*! ndshm_unlink() : removes the NAMED segment `name` in `dir` (NULL: the default directory).
 *  @return : 0, or NDSHM_EINVAL (bad name), NDSHM_ENOENT, NDSHM_EACCES, NDSHM_ESYS. */
NDSHM_API int ndshm_unlink(const char *name, const char *dir);

/*! ndshm_segment_probe() :
 *  Reads and validates the header of NAMED segment `name` (or FILE segment at path `name` with
 *  kind NDSHM_KIND_FILE) without keeping a mapping, and tells whether any process maps it.
 *  @return : as ndshm_segment_attach. */
NDSHM_API int ndshm_segment_probe(int kind, const char *name, const char *dir, ndshm_segment_info_t *out,
                                  int *in_use);

/* What ndshm_segment_probe_fd() found at the start of a file (see there). */
enum ndshm_fd_probe_magic {
    NDSHM_PROBE_FOREIGN = 0, /* not a segment of ours */
    NDSHM_PROBE_OURS = 1,    /* starts with the segment magic */
    NDSHM_PROBE_BLANK = 2    /* empty, or zero where the magic goes: a creator that died before writing it */
};

typedef struct ndshm_fd_probe {
    int magic;        /* NDSHM_PROBE_* */
    uint32_t flags;   /* NDSHM_SEG_* from the header as written (0 if the file is shorter, or not ours) */
    int owner_state;  /* the owner lock, as ndshm_lock_state() says (0 free, 1 this process, 2 another
                         live one, 3 a dead one); -1 if the file is too short to hold it, or not ours */
    int handover;     /* 1 if the hand-over marker is set (see ndshm_segment_mark_handover), else 0 */
} ndshm_fd_probe_t;

/*! ndshm_segment_probe_fd() :
 *  Reads the fixed header at the start of open file `fd` (pread: the file offset is left alone;
 *  nothing is mapped, locked or validated beyond the fields read) and fills *out: whether it is
 *  ours, its flags, the state of its owner lock and its hand-over marker. For reclaimers (gc,
 *  the sweep at create) that must decide without attaching. Nothing read is trusted further:
 *  the owner lock is tested on a private copy. Call ndshm_key_alive() on the file's directory
 *  first for owner_state to see holders in other PID namespaces.
 *  @return : 0, or NDSHM_EINVAL (fd < 0, out NULL), NDSHM_ESYS (the read failed). */
NDSHM_API int ndshm_segment_probe_fd(int fd, ndshm_fd_probe_t *out);

/*! ndshm_segment_mark_handover() :
 *  Sets the hand-over marker in the owner slot of a writable mapping (a creator with
 *  owner="receiver" does, before anyone can attach): the first receiver that takes the owner
 *  lock (ndshm_lock_acquire on sync slot NDSHM_SYNC_OWNER) becomes the name's owner.
 *  @return : 0, or NDSHM_EINVAL (NULL, a raw segment), NDSHM_EPERM (read-only mapping). */
NDSHM_API int ndshm_segment_mark_handover(ndshm_segment_t *seg);

/*! ndshm_segment_handover_marked() :
 *  @return : 1 if the segment's hand-over marker is set, 0 if not, or NDSHM_EINVAL (NULL, a raw
 *  segment). Read-only mappings may ask. */
NDSHM_API int ndshm_segment_handover_marked(const ndshm_segment_t *seg);

/*! ndshm_segment_close() :
 *  Unmaps and releases the handle; a creator's non-persistent NAMED or FILE segment is
 *  unlinked first. NULL is accepted and ignored. */
NDSHM_API void ndshm_segment_close(ndshm_segment_t *seg);

/*! ndshm_send_fd() / ndshm_recv_fd() : pass a descriptor over a connected Unix socket
 *  (SCM_RIGHTS). @return : 0, or NDSHM_EINVAL, NDSHM_ESYS. */
NDSHM_API int ndshm_send_fd(int sock, int fd);
NDSHM_API int ndshm_recv_fd(int sock, int *fd);

/* ======================================================================================
 * Queue
 * A bounded multi-producer multi-consumer ring of aligned slots inside one NAMED segment
 * (flag NDSHM_SEG_QUEUE), with per-slot sequence numbers (Vyukov) and C11 atomics on the
 * shared memory. Every message carries its own typestr, ndim and shape. Blocking calls spin
 * briefly, then sleep on a process-shared futex. Timeouts are seconds: < 0 waits forever,
 * 0 tries once (NDSHM_EEMPTY / NDSHM_EFULL), > 0 gives NDSHM_ETIMEDOUT when it runs out.
 * A process killed at any point never blocks the others: a slot it claimed is reclaimed
 * (a producer's is skipped, a consumer's is freed); fully published messages are never lost.
 * Shutdown (from any process): put and loan then fail with NDSHM_ESHUTDOWN; consumers take what
 * was claimed before it, then get NDSHM_ESHUTDOWN (immediate: at once, the rest is discarded).
 * A queue with registered producers shuts down by itself once every one of them has exited or
 * unregistered (noticed by a consumer that finds it empty, within ~40 ms).
 * A handle is thread safe; a message (ndshm_qmsg_t) belongs to the thread that got it.
 * ====================================================================================== */

typedef struct ndshm_queue_s ndshm_queue_t;

enum ndshm_queue_limits {
    NDSHM_QUEUE_MAX_SLOTS = 1048576,      /* slots of one ring (a power of two) */
    NDSHM_QUEUE_SLOT_ALIGN = 64,          /* every slot's data is aligned to this */
    NDSHM_QUEUE_PARTICIPANTS = 256,       /* processes' claims in flight at one time */
    NDSHM_QUEUE_MAX_PRODUCERS = 64        /* registered producer processes at one time */
};

/* One message: filled by loan/take, described by the caller before publish. */
typedef struct ndshm_qmsg {
    void *data;                      /* the slot's data, NDSHM_QUEUE_SLOT_ALIGN-aligned */
    uint64_t capacity;               /* bytes the slot holds */
    uint64_t nbytes;                 /* bytes of the message */
    char typestr[NDSHM_TYPESTR_MAX]; /* of one element; NUL-terminated */
    uint32_t ndim;                   /* 0 .. NDSHM_MAXDIM */
    int64_t shape[NDSHM_MAXDIM];
    uint64_t pos_;                   /* private */
    uint32_t part_;                  /* private */
    uint32_t state_;                 /* private: 0 none, 1 loaned, 2 taken */
} ndshm_qmsg_t;

/* What a queue handle knows. */
typedef struct ndshm_queue_info {
    uint64_t slots;
    uint64_t slot_bytes;
    uint64_t slot_stride;
    uintptr_t ring;                  /* first byte of the ring in this process */
    uint64_t ring_bytes;
    char name[NDSHM_NAME_MAX + 1];
} ndshm_queue_info_t;

/*! ndshm_queue_create() :
 *  Creates NAMED segment `name` in `dir` (NULL: default) holding a ring of `slots` (a power of
 *  two, 2 .. NDSHM_QUEUE_MAX_SLOTS) slots of `slot_bytes` each. `mode` 0 means 0600; `flags`:
 *  NDSHM_SEG_PERSIST, NDSHM_SEG_POPULATE (pre-fault the ring here and in every attaching process).
 *  @return : 0, or NDSHM_EINVAL, NDSHM_EOVERFLOW, NDSHM_EEXIST and the errors of segment_create. */
NDSHM_API int ndshm_queue_create(const char *name, const char *dir, uint64_t slots, uint64_t slot_bytes,
                                 unsigned mode, unsigned flags, ndshm_queue_t **out);

/*! ndshm_queue_attach() : attaches the queue `name` in `dir`, validating its ring header.
 *  @return : 0, or NDSHM_ENOENT, NDSHM_EINVAL (not a queue), NDSHM_ECORRUPT (a damaged ring), and
 *            the errors of segment_attach. */
NDSHM_API int ndshm_queue_attach(const char *name, const char *dir, ndshm_queue_t **out);

/*! ndshm_queue_close() : releases the handle (the creator's non-persistent name is unlinked);
 *  NULL is accepted. Messages still loaned or taken through it must be finished first. */
NDSHM_API void ndshm_queue_close(ndshm_queue_t *q);

/*! ndshm_queue_info() : @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_info(const ndshm_queue_t *q, ndshm_queue_info_t *out);

/*! ndshm_queue_loan() : claims a free slot for a message of `nbytes` (<= slot_bytes) and fills
 *  msg->data and msg->capacity. Describe it (typestr, ndim, shape; nbytes may shrink) and call
 *  publish, or discard. @return : 0, NDSHM_ETOOBIG, NDSHM_EFULL, NDSHM_ETIMEDOUT, NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_loan(ndshm_queue_t *q, uint64_t nbytes, double timeout, ndshm_qmsg_t *msg);

/*! ndshm_queue_publish() : makes a loaned message visible to consumers.
 *  @return : 0, or NDSHM_EINVAL (not loaned, bad description, nbytes > capacity). */
NDSHM_API int ndshm_queue_publish(ndshm_queue_t *q, ndshm_qmsg_t *msg);

/*! ndshm_queue_pin() : pins the slot of a loaned message, which is then published or discarded
 *  as usual: no producer reuses the slot (they wait as for a full queue) until
 *  ndshm_queue_unpin(q, pos), with pos the message's msg->pos_, or until this process dies. For a
 *  loan whose memory the publisher still references after the loan ends. A producer of this
 *  process that needs the slot while it is still pinned gets NDSHM_EBUSY at once (it would wait
 *  for ever). @return : 0, or NDSHM_EINVAL (not loaned). */
NDSHM_API int ndshm_queue_pin(ndshm_queue_t *q, ndshm_qmsg_t *msg);

/*! ndshm_queue_unpin() : ends the pin of ndshm_queue_pin() on the slot of position
 *  `pos`. @return : 0, or NDSHM_EINVAL if this process does not pin that slot. */
NDSHM_API int ndshm_queue_unpin(ndshm_queue_t *q, uint64_t pos);

/*! ndshm_queue_discard() : returns a loaned slot unpublished (consumers skip it). */
NDSHM_API int ndshm_queue_discard(ndshm_queue_t *q, ndshm_qmsg_t *msg);

/*! ndshm_queue_put() : loan + copy `nbytes` from `data` + publish, in one call.
 *  @return : as loan and publish. */
NDSHM_API int ndshm_queue_put(ndshm_queue_t *q, const void *data, uint64_t nbytes, const char *typestr,
                              uint32_t ndim, const int64_t *shape, double timeout);

/*! ndshm_queue_take() : claims the oldest published message; msg->data is read-only for the
 *  caller until ndshm_queue_release. @return : 0, NDSHM_EEMPTY, NDSHM_ETIMEDOUT, NDSHM_ESHUTDOWN,
 *  NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_take(ndshm_queue_t *q, double timeout, ndshm_qmsg_t *msg);

/*! ndshm_queue_release() : frees a taken slot for producers. */
NDSHM_API int ndshm_queue_release(ndshm_queue_t *q, ndshm_qmsg_t *msg);

/*! ndshm_queue_release_copy() : copies the taken message's nbytes to `dst`, then releases. */
NDSHM_API int ndshm_queue_release_copy(ndshm_queue_t *q, ndshm_qmsg_t *msg, void *dst);

/*! ndshm_queue_take_copy() : take + release_copy in one call when the message fits `dst_bytes`
 *  (msg keeps its description; its state is "none"). @return : 0; NDSHM_ETOOBIG with msg taken
 *  (state 2: call release_copy or release) when it does not fit; or as take. */
NDSHM_API int ndshm_queue_take_copy(ndshm_queue_t *q, double timeout, ndshm_qmsg_t *msg, void *dst,
                                    uint64_t dst_bytes);

/*! ndshm_queue_put_many() : puts `count` messages, message i being bytes [offsets[i],
 *  offsets[i+1]) of `data` with one shared typestr, ndim 1 and shape {nbytes_i / itemsize}.
 *  Waits (timeout) only for the first; stores how many were put in *done.
 *  @return : 0 if any were put, else as put. */
NDSHM_API int ndshm_queue_put_many(ndshm_queue_t *q, const void *data, const uint64_t *offsets, uint64_t count,
                                   const char *typestr, uint64_t itemsize, double timeout, uint64_t *done);

/*! ndshm_queue_get_many() : takes up to `max` messages, copying them back to back into `dst`
 *  (`dst_bytes` long) and storing message i's byte offset in offsets[i] (offsets[count] = end);
 *  stops early at a message that does not fit, is not 1-D, or whose typestr differs from the
 *  first, which it leaves queued (NDSHM_ETOOBIG if that is the very first). The first typestr goes to `typestr` (NDSHM_TYPESTR_MAX bytes). Waits
 *  (timeout) only for the first. @return : 0 with *count >= 1, or as take. */
NDSHM_API int ndshm_queue_get_many(ndshm_queue_t *q, void *dst, uint64_t dst_bytes, uint64_t *offsets,
                                   uint64_t max, char *typestr, double timeout, uint64_t *count);

/*! ndshm_queue_size() : messages published or in flight (approximate under concurrency); 0 once
 *  shut down immediately. */
NDSHM_API uint64_t ndshm_queue_size(const ndshm_queue_t *q);

/*! ndshm_queue_shutdown() : from any process; wakes every waiter. Then loan, put and put_many
 *  fail with NDSHM_ESHUTDOWN; take and get_many return what was claimed before the shutdown
 *  (waiting for loans in flight), then NDSHM_ESHUTDOWN; `immediate`: take fails at once and
 *  what is queued is never read. Idempotent (immediate may follow a plain shutdown).
 *  @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_shutdown(ndshm_queue_t *q, int immediate);

/*! ndshm_queue_is_shutdown() : @return : 0 running, 1 shut down, 2 shut down immediately,
 *  3 shut down because every registered producer exited (or unregistered). */
NDSHM_API int ndshm_queue_is_shutdown(const ndshm_queue_t *q);

/*! ndshm_queue_register_producer() : records this process (its process id) as a producer;
 *  once every registered producer has exited or unregistered, the queue shuts down (drain, then
 *  NDSHM_ESHUTDOWN). Registering twice is a no-op. @return : 0, NDSHM_ESHUTDOWN, NDSHM_EBUSY
 *  (NDSHM_QUEUE_MAX_PRODUCERS live producers hold every record), NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_register_producer(ndshm_queue_t *q);

/*! ndshm_queue_expect_producers() : the queue shuts down by its producers exiting only once `n`
 *  registrations (counted since creation) have happened: set it before starting producers that
 *  may not all have registered when the first one exits. @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_expect_producers(ndshm_queue_t *q, uint32_t n);

/*! ndshm_queue_unregister_producer() : this process is done producing.
 *  @return : 0, or NDSHM_EINVAL (it is not registered). */
NDSHM_API int ndshm_queue_unregister_producer(ndshm_queue_t *q);

/*! ndshm_queue_producers() : @return : registered producers still running (>= 0), or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_producers(const ndshm_queue_t *q);

/*! ndshm_queue_register_consumer() : records this process (pid and start time) as a consumer;
 *  once every registered consumer has exited (even killed) or unregistered, a producer that finds
 *  the queue full shuts it down (within ~40 ms), and loan, put and put_many raise NDSHM_ESHUTDOWN
 *  naming the reason instead of waiting for ever. Registering twice is a no-op.
 *  @return : 0, NDSHM_ESHUTDOWN, NDSHM_EBUSY (NDSHM_QUEUE_MAX_PRODUCERS live consumers hold every
 *  record), NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_register_consumer(ndshm_queue_t *q);

/*! ndshm_queue_expect_consumers() : producers give up on dead consumers only once `n`
 *  registrations (counted since creation) have happened. @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_expect_consumers(ndshm_queue_t *q, uint32_t n);

/*! ndshm_queue_unregister_consumer() : this process is done consuming.
 *  @return : 0, or NDSHM_EINVAL (it is not registered). */
NDSHM_API int ndshm_queue_unregister_consumer(ndshm_queue_t *q);

/*! ndshm_queue_consumers() : @return : registered consumers still running (>= 0), or NDSHM_EINVAL. */
NDSHM_API int ndshm_queue_consumers(const ndshm_queue_t *q);

/*! ndshm_queue_interrupt() : ends every wait of this handle (in any thread of this process):
 *  they return NDSHM_ECLOSED instead of waiting on, and so do later waits on it. Other handles
 *  of the queue (in this process or others) are not affected. NULL ok; thread-safe. */
NDSHM_API void ndshm_queue_interrupt(ndshm_queue_t *q);

/*! ndshm_queue_epoch() / ndshm_queue_wait_epoch() : waiting without claiming (event loops).
 *  epoch reads the counter that consumers (`producer` 0: a message was published) or producers
 *  (`producer` 1: a slot was freed) wait on; read it, try the call with timeout 0, and if that
 *  found nothing, wait_epoch sleeps until the counter differs from `seen` (or a spurious
 *  wake-up), then try again. A caller that only retries non-blocking calls still recovers dead
 *  claimers and notices dead producers or consumers (the clocks of those checks are per thread).
 *  epoch of NULL is 0. @return (wait_epoch) : 0, NDSHM_ETIMEDOUT, NDSHM_ECLOSED (this handle was
 *  interrupted), NDSHM_EINVAL. */
NDSHM_API uint32_t ndshm_queue_epoch(const ndshm_queue_t *q, int producer);
NDSHM_API int ndshm_queue_wait_epoch(ndshm_queue_t *q, int producer, uint32_t seen, double timeout);

/*! ndshm_queue_init_raw() / ndshm_queue_open_raw() : a ring in caller-provided shared memory
 *  (for tests and embedding): init writes the ring header into `mem` (`bytes` long, 64-aligned);
 *  open validates it. ndshm_queue_ring_bytes() gives the size a ring needs. The handle does not
 *  own `mem`. */
NDSHM_API int ndshm_queue_ring_bytes(uint64_t slots, uint64_t slot_bytes, uint64_t *out);
NDSHM_API int ndshm_queue_init_raw(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes);
NDSHM_API int ndshm_queue_open_raw(void *mem, uint64_t bytes, ndshm_queue_t **out);

/* ======================================================================================
 * Process identity
 * Whatever records a process in shared memory (lock owners, queue and broadcast claims,
 * producer and subscriber records) records its id: a random non-zero 64-bit number, made at
 * first use, shared by its threads, new in a fork()ed child, never reused. A process
 * registers in the process table of every directory whose segments it opens (a file
 * ".ndshm-procs-<uid>" there: an entry holding its id, under a record lock the kernel drops
 * when the process ends, however it ends). Another process tests the id by testing that lock:
 * the answer holds across PID namespaces (containers sharing the directory) and through pid
 * reuse, with no /proc. Segments of every kind register: named and file segments in their
 * directory, anonymous and memfd ones in the default directory ($NDSHM_DIR, else /dev/shm).
 * Raw memory (ndshm_lock_acquire on any area, ndshm_queue_init_raw and the like) records the
 * id as is, the process being registered in the default directory at least: memory shared
 * across PID namespaces must live in a segment of a directory both sides use.
 * Thread rule: every function is thread safe.
 * ====================================================================================== */

/*! ndshm_process_key() :
 *  Registers this process in the process table of `dir` (NULL: $NDSHM_DIR, else /dev/shm) if
 *  it is not registered there yet, and stores its id in *key (never 0). A directory that
 *  cannot hold this user's table (hugetlbfs, full, not writable) has the default directory's
 *  stand in (testers look there too); the error is the directory's if that fails as well.
 *  @return : 0, or NDSHM_EINVAL (key NULL), NDSHM_ENOENT (no such directory), NDSHM_EACCES
 *            (the directory's table cannot be made or written), NDSHM_EBUSY (every entry of the
 *            table is held by a live process), NDSHM_ENOSPC, NDSHM_ESYS. */
NDSHM_API int ndshm_process_key(const char *dir, uint64_t *key);

/*! ndshm_key_alive() :
 *  Tests the id `key` found in a segment of `dir` (NULL: the default directory), opening that
 *  directory's process tables if this process has not (testing needs no registration; the
 *  ids in the directory's segments can then be tested with ndshm_lock_state too: `key` 0 only
 *  opens them).
 *  @return : 1 if its process runs (this process included), 0 if it ended or `key` is 0 or in
 *            no table; NDSHM_ENOENT (no such directory), NDSHM_ESYS. A process that ended a
 *            moment ago may still be reported alive once; a running one is never reported dead. */
NDSHM_API int ndshm_key_alive(const char *dir, uint64_t key);

/*! ndshm_key_pid() :
 *  Stores in *pid the pid that the process of id `key` has in its own PID namespace, and in
 *  *same_ns 1 if that namespace is the caller's (the pid names a process the caller can
 *  see), else 0. The entry outlives its process until reused: test ndshm_key_alive first.
 *  @return : 0, or NDSHM_ENOENT (`key` is in no process table of `dir`), NDSHM_EINVAL. */
NDSHM_API int ndshm_key_pid(const char *dir, uint64_t key, int64_t *pid, int *same_ns);

/* ======================================================================================
 * Sync
 * Process-shared lock, event and barrier, each living in NDSHM_SYNC_SIZE bytes of shared
 * memory (8-aligned) whose all-zero state is valid: unlocked, unset, uninitialised barrier.
 * Owners are processes, identified by their process id (see Process identity), so an owner
 * in another PID namespace is respected and a reused pid is not mistaken for a dead owner.
 * Timeouts as for the queue (< 0 forever, 0 try once).
 * ====================================================================================== */

/*! ndshm_lock_acquire() :
 *  @return : 0; NDSHM_EOWNERDEAD: acquired, but the previous owner died holding it (the
 *            protected data may be inconsistent); NDSHM_EBUSY (timeout 0); NDSHM_ETIMEDOUT. */
NDSHM_API int ndshm_lock_acquire(void *area, double timeout);

/*! ndshm_lock_release() : @return : 0, or NDSHM_EPERM (not held by this process). */
NDSHM_API int ndshm_lock_release(void *area);

/*! ndshm_lock_state() : @return : 0 unlocked, 1 held by this process, 2 by another live
 *  process, 3 by a dead one. */
NDSHM_API int ndshm_lock_state(void *area);

NDSHM_API int ndshm_event_set(void *area);
NDSHM_API int ndshm_event_clear(void *area);
/*! ndshm_event_is_set() : @return : 1 or 0. */
NDSHM_API int ndshm_event_is_set(void *area);
/*! ndshm_event_wait() : @return : 0 once set, or NDSHM_ETIMEDOUT. */
NDSHM_API int ndshm_event_wait(void *area, double timeout);

/*! ndshm_barrier_wait() :
 *  Waits until `parties` (1 .. 2^20, the same in every caller) have arrived; stores this
 *  caller's arrival index (0 .. parties-1) in *index. A timeout breaks the barrier for all.
 *  @return : 0, or NDSHM_EBROKEN, NDSHM_EINVAL (parties differs from the first caller's). */
NDSHM_API int ndshm_barrier_wait(void *area, uint32_t parties, double timeout, uint32_t *index);

/*! ndshm_barrier_wait_sliced() :
 *  ndshm_barrier_wait for a caller that must regain control while it waits (to run signal
 *  handlers): with *ticket 0 it arrives; with a ticket it stored, it resumes that arrival's
 *  wait. After `slice` seconds (0 < slice <= 1e9) it returns NDSHM_ETIMEDOUT with *ticket set
 *  and the barrier untouched: call again with the time that remains of the timeout. `timeout`
 *  running out breaks the barrier, as in ndshm_barrier_wait. *ticket is 0 after any other
 *  return. A caller that stops waiting holding a ticket calls ndshm_barrier_leave().
 *  @return : 0, NDSHM_ETIMEDOUT (the slice ran out), NDSHM_EBROKEN or NDSHM_EINVAL. */
NDSHM_API int ndshm_barrier_wait_sliced(void *area, uint32_t parties, double timeout, double slice,
                                        uint64_t *ticket, uint32_t *index);

/*! ndshm_barrier_leave() : gives up the wait of `ticket` (from ndshm_barrier_wait_sliced; 0
 *  does nothing): breaks the barrier unless it tripped since that arrival, so the other
 *  parties are not left waiting for one that went away.
 *  @return : 0 (nothing to do: it had tripped), NDSHM_EBROKEN (the barrier is broken). */
NDSHM_API int ndshm_barrier_leave(void *area, uint64_t ticket);

/*! ndshm_barrier_abort() / ndshm_barrier_reset() : break the barrier (waiters get NDSHM_EBROKEN);
 *  reset makes it usable again (and releases waiters still inside as if it had tripped). */
NDSHM_API int ndshm_barrier_abort(void *area);
NDSHM_API int ndshm_barrier_reset(void *area);
/*! ndshm_barrier_state() : stores parties, waiting count and broken flag. */
NDSHM_API int ndshm_barrier_state(void *area, uint32_t *parties, uint32_t *waiting, int *broken);

/*! ndshm_process_alive() : @return : 1 if process `pid` runs and started at `start_time`
 *  (clock ticks since boot, /proc/<pid>/stat field 22; 0 = do not compare), else 0. Reads
 *  /proc, so it knows the caller's PID namespace only: ndshm_key_alive is the test that
 *  holds across namespaces. Kept for compatibility. */
NDSHM_API int ndshm_process_alive(int64_t pid, uint64_t start_time);

/* ======================================================================================
 * Broadcast
 * A publish-subscribe ring of aligned slots inside one NAMED segment (flag
 * NDSHM_SEG_BROADCAST): any number of publishers; up to NDSHM_BCAST_MAX_SUBSCRIBERS
 * subscriptions, from any process, joining and leaving at any time; each receives every
 * message claimed after it joined, in order. Messages are described as in the queue
 * (ndshm_qmsg_t). The policy is fixed at creation: NDSHM_BCAST_BLOCK (a publisher waits until
 * every subscriber has read the message its slot holds) or NDSHM_BCAST_OVERWRITE (publishers
 * overwrite the oldest message; a subscriber that fell behind gets NDSHM_ELAGGED with the
 * count it missed and resumes at the oldest message retained; a message being read in place
 * is never overwritten under its reader: its publisher waits for the release).
 * Shutdown: put and loan then fail with NDSHM_ESHUTDOWN; subscribers drain what was claimed
 * before it, then get NDSHM_ESHUTDOWN (immediate: at once). Faults: a subscriber killed at any
 * point never blocks publishers for longer than a liveness check (~20 ms); a publisher killed
 * inside loan leaves its position SKIPPED (no subscriber sees it; the others go on).
 * Timeouts as for the queue. A ring handle is thread safe; a subscription (ndshm_bsub_t) and
 * the message it took belong to one thread at a time.
 * ====================================================================================== */

typedef struct ndshm_bcast_s ndshm_bcast_t;
typedef struct ndshm_bsub_s ndshm_bsub_t;

enum ndshm_bcast_policy {
    NDSHM_BCAST_BLOCK = 0,     /* publishers wait for the slowest subscriber (backpressure) */
    NDSHM_BCAST_OVERWRITE = 1  /* the oldest messages are overwritten; laggards get NDSHM_ELAGGED */
};

enum ndshm_bcast_limits {
    NDSHM_BCAST_MAX_SLOTS = 1048576,     /* slots of one ring (a power of two) */
    NDSHM_BCAST_MAX_SUBSCRIBERS = 128    /* subscriptions at one time */
};

/* What a broadcast handle knows. */
typedef struct ndshm_bcast_info {
    uint64_t slots;
    uint64_t slot_bytes;
    uint64_t slot_stride;
    uintptr_t ring;                  /* first byte of the ring in this process */
    uint64_t ring_bytes;
    int policy;                      /* enum ndshm_bcast_policy */
    int max_subscribers;
    char name[NDSHM_NAME_MAX + 1];
} ndshm_bcast_info_t;

/*! ndshm_bcast_create() :
 *  Creates NAMED segment `name` in `dir` (NULL: default) holding a broadcast ring of `slots` (a
 *  power of two, 2 .. NDSHM_BCAST_MAX_SLOTS) slots of `slot_bytes`, with `policy`. `mode` 0
 *  means 0600; `flags`: NDSHM_SEG_PERSIST, NDSHM_SEG_POPULATE.
 *  @return : 0, or NDSHM_EINVAL, NDSHM_EOVERFLOW, NDSHM_EEXIST and the errors of segment_create. */
NDSHM_API int ndshm_bcast_create(const char *name, const char *dir, uint64_t slots, uint64_t slot_bytes,
                                 int policy, unsigned mode, unsigned flags, ndshm_bcast_t **out);

/*! ndshm_bcast_attach() : attaches the broadcast `name` in `dir`, validating its ring header.
 *  @return : 0, or NDSHM_ENOENT, NDSHM_EINVAL (not a broadcast), NDSHM_ECORRUPT, and the errors
 *            of segment_attach. */
NDSHM_API int ndshm_bcast_attach(const char *name, const char *dir, ndshm_bcast_t **out);

/*! ndshm_bcast_close() : releases the handle (the creator's non-persistent name is unlinked);
 *  NULL is accepted. Its subscriptions must be unsubscribed first. */
NDSHM_API void ndshm_bcast_close(ndshm_bcast_t *b);

/*! ndshm_bcast_info() : @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_bcast_info(const ndshm_bcast_t *b, ndshm_bcast_info_t *out);

/*! ndshm_bcast_loan() / ndshm_bcast_publish() / ndshm_bcast_discard() / ndshm_bcast_put() :
 *  as for the queue. @return : 0, or NDSHM_ETOOBIG, NDSHM_EFULL (timeout 0), NDSHM_ETIMEDOUT,
 *  NDSHM_ESHUTDOWN, NDSHM_EINVAL, NDSHM_ECORRUPT. */
NDSHM_API int ndshm_bcast_loan(ndshm_bcast_t *b, uint64_t nbytes, double timeout, ndshm_qmsg_t *msg);
NDSHM_API int ndshm_bcast_publish(ndshm_bcast_t *b, ndshm_qmsg_t *msg);
NDSHM_API int ndshm_bcast_discard(ndshm_bcast_t *b, ndshm_qmsg_t *msg);
NDSHM_API int ndshm_bcast_put(ndshm_bcast_t *b, const void *data, uint64_t nbytes, const char *typestr,
                              uint32_t ndim, const int64_t *shape, double timeout);

/*! ndshm_bcast_pin() / ndshm_bcast_unpin() : as for the queue (publishers wait for a pinned slot
 *  under either policy). */
NDSHM_API int ndshm_bcast_pin(ndshm_bcast_t *b, ndshm_qmsg_t *msg);
NDSHM_API int ndshm_bcast_unpin(ndshm_bcast_t *b, uint64_t pos);

/*! ndshm_bcast_shutdown() : from any process; `immediate` also ends subscribers' reads at once.
 *  @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_bcast_shutdown(ndshm_bcast_t *b, int immediate);

/*! ndshm_bcast_is_shutdown() : @return : 0 running, 1 shut down, 2 shut down immediately. */
NDSHM_API int ndshm_bcast_is_shutdown(const ndshm_bcast_t *b);

/*! ndshm_bcast_published() : @return : positions claimed so far (messages put or in flight). */
NDSHM_API uint64_t ndshm_bcast_published(const ndshm_bcast_t *b);

/*! ndshm_bcast_subscribers() : @return : live subscriptions (approximate under concurrency). */
NDSHM_API int ndshm_bcast_subscribers(const ndshm_bcast_t *b);

/*! ndshm_bcast_subscribe() : a new subscription that receives every message claimed from now on.
 *  @return : 0, or NDSHM_EBUSY (every record is in use by live processes), NDSHM_ENOMEM. */
NDSHM_API int ndshm_bcast_subscribe(ndshm_bcast_t *b, ndshm_bsub_t **out);

/*! ndshm_bcast_epoch() / ndshm_bcast_wait_epoch() : as ndshm_queue_epoch / _wait_epoch:
 *  `publisher` 1 reads the counter publishers wait on (a slot was freed), 0 the one subscribers
 *  wait on (a message was published). wait_epoch with `sub` NULL waits as a publisher of `b`
 *  (ends with NDSHM_ECLOSED once `b` is interrupted), with a subscription of `b` as that
 *  subscriber (ends once `sub` is interrupted). @return (wait_epoch) : 0, NDSHM_ETIMEDOUT,
 *  NDSHM_ECLOSED, NDSHM_EINVAL. */
NDSHM_API uint32_t ndshm_bcast_epoch(const ndshm_bcast_t *b, int publisher);
NDSHM_API int ndshm_bcast_wait_epoch(ndshm_bcast_t *b, ndshm_bsub_t *sub, uint32_t seen, double timeout);

/*! ndshm_bcast_interrupt() / ndshm_bsub_interrupt() : end every wait of this broadcast handle
 *  (loan, put) or of this subscription (take), in any thread of this process: they return
 *  NDSHM_ECLOSED, as do later waits on it. Other handles are not affected. NULL ok; thread-safe.
 *  The subscription stays valid until ndshm_bcast_unsubscribe (call that once no take runs). */
NDSHM_API void ndshm_bcast_interrupt(ndshm_bcast_t *b);
NDSHM_API void ndshm_bsub_interrupt(ndshm_bsub_t *sub);

/*! ndshm_bcast_unsubscribe() : ends the subscription (a taken message is released); NULL ok. */
NDSHM_API void ndshm_bcast_unsubscribe(ndshm_bsub_t *sub);

/*! ndshm_bcast_pending() : @return : messages claimed that this subscription has not read. */
NDSHM_API uint64_t ndshm_bcast_pending(const ndshm_bsub_t *sub);

/*! ndshm_bcast_take() : the subscription's next message, in place (read-only until release).
 *  @return : 0; NDSHM_EEMPTY (timeout 0), NDSHM_ETIMEDOUT; NDSHM_ELAGGED with *missed set (the
 *            subscription moved to the oldest message retained: take again); NDSHM_ESHUTDOWN;
 *            NDSHM_ECORRUPT (the ring is damaged, or the message's descriptor is impossible: it
 *            was passed over);
 *            NDSHM_ECLOSED (the record was taken over), NDSHM_EINVAL. */
NDSHM_API int ndshm_bcast_take(ndshm_bsub_t *sub, double timeout, ndshm_qmsg_t *msg, uint64_t *missed);

/*! ndshm_bcast_release() / ndshm_bcast_release_copy() : end the read of a taken message (copying
 *  its nbytes to `dst` first). @return : 0, or NDSHM_EINVAL. */
NDSHM_API int ndshm_bcast_release(ndshm_bsub_t *sub, ndshm_qmsg_t *msg);
NDSHM_API int ndshm_bcast_release_copy(ndshm_bsub_t *sub, ndshm_qmsg_t *msg, void *dst);

/*! ndshm_bcast_ring_bytes() / ndshm_bcast_init_raw() / ndshm_bcast_open_raw() : a ring in
 *  caller-provided shared memory (tests, embedding), as for the queue. */
NDSHM_API int ndshm_bcast_ring_bytes(uint64_t slots, uint64_t slot_bytes, uint64_t *out);
NDSHM_API int ndshm_bcast_init_raw(void *mem, uint64_t bytes, uint64_t slots, uint64_t slot_bytes, int policy);
NDSHM_API int ndshm_bcast_open_raw(void *mem, uint64_t bytes, ndshm_bcast_t **out);

/* ======================================================================================
 * Ring headers
 * What a ring's header says, read from its segment's file without mapping it (listings): the
 * binding never decodes a ring's bytes itself. Thread-safe.
 * ====================================================================================== */

/* A ring's header fields, by name. */
typedef struct ndshm_ring_header {
    int kind;                        /* NDSHM_SEG_QUEUE or NDSHM_SEG_BROADCAST: what its magic names */
    uint32_t version;                /* its format version (queue 1 to 3, broadcast 2) */
    uint64_t slots;
    uint64_t slot_bytes;
    uint64_t ring_bytes;             /* what slots and slot_bytes need (ndshm_queue_ring_bytes) */
} ndshm_ring_header_t;

/*! ndshm_ring_read_header() :
 *  Reads the header of the ring at byte `offset` of the open file `fd` (a segment's data_offset;
 *  `size`: its data_size) with pread, never mapping it (a file truncated meanwhile cannot kill
 *  the caller with SIGBUS), and fills *out. Trusts nothing it reads: the magic must be a
 *  queue's or a broadcast's, the version one whose header this library knows, the geometry
 *  valid and the ring no larger than `size`.
 *  @return : 0, or NDSHM_EINVAL (out NULL, fd negative, offset too large), NDSHM_ECORRUPT (not a
 *            ring this library can read, naming the first bad field), NDSHM_ESYS (the read). */
NDSHM_API int ndshm_ring_read_header(int fd, uint64_t offset, uint64_t size, ndshm_ring_header_t *out);

/* ======================================================================================
 * Pool
 * A pool is one NAMED segment (NDSHM_SEG_POOL), created once and pre-faulted (populated on
 * several threads, in huge pages where asked), that blocks are carved from: carving, pinning
 * and freeing a block touch only the pool's own shared metadata (a robust lock, a block
 * table, TLSF-style segregated free lists), never a system call or a fresh page.
 * A block is named by (index, generation, offset): generations come from one 64-bit counter
 * per pool and never repeat, so a reference to a block freed since is refused (NDSHM_ENOENT),
 * never read. Every process that uses a pool holds one of its NDSHM_POOL_MAX_PROCS process
 * slots (by process id, see Process identity); a block lives while any process pins it or a
 * hand-over (ndshm_pool_send) is outstanding. A dead process's slot, its pins and its
 * outstanding hand-overs are released by ndshm_pool_reclaim (which a full pool runs by itself).
 * Everything read from the pool is validated before use: NDSHM_ECORRUPT, never a crash.
 * Thread rule: a handle is thread safe; a fork()ed child re-pins, under its own process slot,
 * the blocks its parent's handle pinned, at its first pool call.
 * ====================================================================================== */

typedef struct ndshm_pool_s ndshm_pool_t;

enum ndshm_pool_limits {
    NDSHM_POOL_GRANULE = 64,        /* block sizes and offsets are multiples of this */
    NDSHM_POOL_MAX_PROCS = 64,      /* processes using one pool at once */
    NDSHM_POOL_MAX_BLOCKS = 16777216 /* records of the block table */
};

/* One block in this process: where it is and what names it. */
typedef struct ndshm_pool_block {
    uint32_t index;        /* in the block table */
    uint64_t generation;   /* unique in the pool's life */
    uint64_t offset;       /* from the start of the pool's data */
    uint64_t size;         /* bytes reserved (the request rounded up to NDSHM_POOL_GRANULE) */
    uintptr_t data;        /* address in this process */
} ndshm_pool_block_t;

typedef struct ndshm_pool_stats {
    uint64_t pool_id;      /* random at creation: a pool made again under the same name differs */
    uint64_t capacity;     /* bytes blocks can be carved from */
    uint64_t used;         /* bytes in live blocks */
    uint64_t high_water;   /* the most `used` ever was */
    uint64_t high_end;     /* the highest end offset of a block ever carved: the pages ever touched */
    uint64_t live_blocks;
    uint64_t max_blocks;
    uint64_t free_extents; /* free ranges (fragmentation: 1 is none) */
    uint64_t largest_free; /* bytes of the largest free range */
    uint64_t in_transit;   /* live blocks with an outstanding hand-over */
    uint64_t procs;        /* process slots in use */
    uint64_t carves, frees, reclaimed; /* counts since creation */
} ndshm_pool_stats_t;

/*! ndshm_pool_bytes() : stores in *out the bytes a pool of `capacity` data bytes and
 *  `max_blocks` block records needs (header, table, data). @return : 0, or NDSHM_EINVAL, NDSHM_EOVERFLOW. */
NDSHM_API int ndshm_pool_bytes(uint64_t capacity, uint32_t max_blocks, uint64_t *out);

/*! ndshm_pool_create() :
 *  Creates NAMED segment `name` in `dir` holding a pool of `capacity` bytes (rounded up to
 *  NDSHM_POOL_GRANULE) and `max_blocks` records (0: one per 2 KiB of capacity, 256 .. 2^20;
 *  live blocks and free ranges each take one).
 *  `flags`: NDSHM_SEG_PERSIST, NDSHM_SEG_POPULATE (pre-fault every page, on several threads),
 *  NDSHM_SEG_HUGEPAGES (`dir` must be a hugetlbfs mount).
 *  @return : 0, or as ndshm_segment_create. */
NDSHM_API int ndshm_pool_create(const char *name, const char *dir, uint64_t capacity, uint32_t max_blocks,
                                unsigned mode, unsigned flags, ndshm_pool_t **out);

/*! ndshm_pool_attach() : maps pool `name` in `dir` and validates it (every record).
 *  `flags`: NDSHM_SEG_POPULATE pre-faults this process's page tables now.
 *  @return : 0, or as ndshm_segment_attach; NDSHM_EINVAL (the segment is no pool), NDSHM_ECORRUPT,
 *            NDSHM_EBUSY (every process slot is held by a live process). */
NDSHM_API int ndshm_pool_attach(const char *name, const char *dir, unsigned flags, ndshm_pool_t **out);

/*! ndshm_pool_init_raw() / ndshm_pool_open_raw() : a pool in memory the caller shares (at least
 *  ndshm_pool_bytes() bytes, 64-aligned); open validates it as attach does. */
NDSHM_API int ndshm_pool_init_raw(void *mem, uint64_t bytes, uint64_t capacity, uint32_t max_blocks);
NDSHM_API int ndshm_pool_open_raw(void *mem, uint64_t bytes, ndshm_pool_t **out);

/*! ndshm_pool_close() : drops this handle's pins and process slot, unmaps. NULL is ignored. */
NDSHM_API void ndshm_pool_close(ndshm_pool_t *p);

/*! ndshm_pool_unlink() : removes the pool's name now (mappings stay valid).
 *  @return : as ndshm_segment_unlink; NDSHM_EINVAL for a raw pool. */
NDSHM_API int ndshm_pool_unlink(ndshm_pool_t *p);

/*! ndshm_pool_carve() :
 *  Carves a block of at least `nbytes` (0 is taken as 1) bytes, NDSHM_POOL_GRANULE-aligned,
 *  pinned by this process, into *out. A full pool first reclaims dead processes' blocks.
 *  @return : 0, or NDSHM_ENOSPC (no free range that large, or no record left to split one: the
 *            detail names the pool, its size and the request), NDSHM_ECORRUPT, NDSHM_ETIMEDOUT
 *            (the lock stayed held 5 s). */
NDSHM_API int ndshm_pool_carve(ndshm_pool_t *p, uint64_t nbytes, ndshm_pool_block_t *out);

/*! ndshm_pool_pin() :
 *  Pins block (`index`, `generation`) for this process, checking that it is live and reaches
 *  `offset` + `nbytes`, and fills *out. `received` 1 also ends one hand-over of the block
 *  (ndshm_pool_send), as a receiver does once it holds its pin.
 *  @return : 0, or NDSHM_ENOENT (freed since, or never carved), NDSHM_EINVAL, NDSHM_ECORRUPT. */
NDSHM_API int ndshm_pool_pin(ndshm_pool_t *p, uint32_t index, uint64_t generation, uint64_t offset,
                             uint64_t nbytes, int received, ndshm_pool_block_t *out);

/*! ndshm_pool_unpin() :
 *  Drops one of this process's pins of the block; with the last pin of the last process and no
 *  hand-over outstanding, the block is free again. @return : 0, or NDSHM_ENOENT (not pinned
 *  here), NDSHM_ECORRUPT. */
NDSHM_API int ndshm_pool_unpin(ndshm_pool_t *p, uint32_t index, uint64_t generation);

/*! ndshm_pool_send() :
 *  Records a hand-over of a block this process pins (a reference on its way to another
 *  process): the block stays live until a receiver's ndshm_pool_pin(received=1), or until this
 *  process dies and ndshm_pool_reclaim runs. @return : 0, or NDSHM_ENOENT (not pinned here). */
NDSHM_API int ndshm_pool_send(ndshm_pool_t *p, uint32_t index, uint64_t generation);

/*! ndshm_pool_reclaim() :
 *  Releases the process slots of dead processes, their pins and their hand-overs, freeing the
 *  blocks nobody else holds; stores in *released (NULL: not stored) how many processes it released.
 *  @return : 0, or NDSHM_ECORRUPT, NDSHM_ETIMEDOUT. */
NDSHM_API int ndshm_pool_reclaim(ndshm_pool_t *p, uint32_t *released);

/*! ndshm_pool_stats() : fills *out. @return : 0, or NDSHM_ECORRUPT, NDSHM_ETIMEDOUT. */
NDSHM_API int ndshm_pool_stats(ndshm_pool_t *p, ndshm_pool_stats_t *out);

/*! ndshm_pool_peek() :
 *  Reads the counters of the pool whose header is at `offset` of descriptor `fd` (a listing's
 *  look, without mapping, locking or registering; a snapshot that may be torn by a writer):
 *  capacity, used, high_water, high_end, live_blocks, in_transit, procs, counts (free_extents and
 *  largest_free stay 0). @return : 0, or NDSHM_ECORRUPT, NDSHM_EBUSY (not initialised yet), NDSHM_ESYS. */
NDSHM_API int ndshm_pool_peek(int fd, uint64_t offset, ndshm_pool_stats_t *out);

/*! ndshm_pool_check() : validates every record and free list (what attach does).
 *  @return : 0, or NDSHM_ECORRUPT naming the first bad value. */
NDSHM_API int ndshm_pool_check(ndshm_pool_t *p);

#ifdef __cplusplus
}
#endif

#endif /* NDSHM_H */

/*
 * segment.c -- shared-memory segments: named, anonymous, memfd and file-backed.
 *
 * Creation: O_CREAT|O_EXCL (named, file) with the mode forced by fchmod, a shared flock taken at
 * once, the whole size reserved with posix_fallocate (ENOSPC here, never SIGBUS later), a
 * MAP_SHARED mapping, the header written with state INITIALIZING and then published READY with a
 * release store. Attach: open (O_NONBLOCK), flock(LOCK_SH) (a bounded wait that a signal ends:
 * anyone who may read the file can hold LOCK_EX), fstat, read the header with one pread into a
 * private copy (a truncating peer cannot SIGBUS us there; the mapping is never read before the
 * copy is validated), wait a bounded time while it is unpublished and someone else still holds
 * the file, validate it (header.c), refuse a file with holes on tmpfs (ndshm reserved every
 * page: holes mean another writer, and SIGBUS once the file system is full), then map
 * data_offset + data_size: seven system calls, and munmap + close at the end.
 * Every handle keeps its descriptor, and so its shared flock, until ndshm_segment_close: a
 * successful flock(LOCK_EX|LOCK_NB) by anyone else means no process maps the segment.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

/* memfd_create through syscall(): glibc has the wrapper only from 2.27, and the manylinux2014
 * wheel links against glibc 2.17 (the kernel call exists since Linux 3.17). */
static int memfd_create_(const char *name, unsigned flags) { return (int)syscall(SYS_memfd_create, name, flags); }

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 4U
#endif

#define ATTACH_WAIT_NS 2000000000LL
#define LOCK_WAIT_NS 2000000000LL /* for a shared flock at attach */


struct ndshm_segment_s {
    int kind;
    unsigned flags;
    int fd;
    int creator;
    int unlinked;
    pid_t creator_pid;
    void *base;
    size_t map_len;
    char *path; /* NAMED, FILE */
    ndshm_segment_info_t info;
};

static int64_t now_ns(int clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int check_name(const char *name) {
    if (name == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "segment name is NULL");
    size_t n = strnlen(name, NDSHM_NAME_MAX + 1);
    if (n == 0) return ndshm__fail(NDSHM_EINVAL, 0, "segment name '' is empty");
    if (n > NDSHM_NAME_MAX)
        return ndshm__fail(NDSHM_EINVAL, 0, "segment name '%.40s...' is longer than %d characters", name,
                           NDSHM_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return ndshm__fail(NDSHM_EINVAL, 0,
                               "segment name '%s' has character 0x%02x at %zu; only [A-Za-z0-9._-] are allowed", name,
                               (unsigned char)c, i);
    }
    return 0;
}

static const char *default_dir(const char *dir) {
    if (dir != NULL && dir[0] != 0) return dir;
    const char *env = getenv("NDSHM_DIR");
    return env != NULL && env[0] != 0 ? env : "/dev/shm";
}

/* *out = malloc'd "<dir>/ndshm.<name>" (NAMED) or a copy of the path (FILE). */
static int make_path(int kind, const char *name, const char *dir, char **out) {
    *out = NULL;
    if (kind == NDSHM_KIND_NAMED) {
        int rc = check_name(name);
        if (rc) return rc;
        dir = default_dir(dir);
        size_t nd = strlen(dir), nn = strlen(name), n = nd + nn + 8; /* "/ndshm." and the NUL */
        if (n > PATH_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "directory '%.60s...' makes a path too long", dir);
        char *p = malloc(n);
        if (p == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a path");
        memcpy(p, dir, nd);
        memcpy(p + nd, "/ndshm.", 7);
        memcpy(p + nd + 7, name, nn + 1);
        *out = p;
        return 0;
    }
    if (kind == NDSHM_KIND_FILE) {
        if (name == NULL || name[0] == 0) return ndshm__fail(NDSHM_EINVAL, 0, "file segment path is empty");
        if (strlen(name) >= PATH_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "path '%.60s...' is too long", name);
        *out = strdup(name);
        if (*out == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a path");
        return 0;
    }
    return ndshm__fail(NDSHM_EINVAL, 0, "kind %d is not NDSHM_KIND_NAMED or NDSHM_KIND_FILE", kind);
}

/* Takes fd's shared flock. Only an exclusive holder makes us wait (ndshm takes LOCK_EX for
 * microseconds, to probe or remove a segment nobody maps), and anyone who may read the file can
 * take one and keep it: so the wait is bounded (LOCK_WAIT_NS) and polls with LOCK_NB in short
 * sleeps, and a signal ends it (EINTR, never retried here: a Python caller's Ctrl-C must reach
 * Python). Signals are blocked between the sleeps and let in only by ppoll, atomically: one that
 * comes while we poll the lock (or while a loaded machine has not yet run us after a sleep, when
 * a handler would run unseen) is pending, and ends the next sleep at once. Returns 0, EBUSY at
 * the deadline, EINTR, or flock's errno. */
static int lock_shared(int fd) {
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) return 0;
    if (errno != EWOULDBLOCK && errno != EINTR) return errno;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + LOCK_WAIT_NS;
    long pause = 50000; /* 50 us, doubling up to 5 ms */
    int err;
    for (;;) {
        struct timespec ts = {0, pause};
        if (ppoll(NULL, 0, &ts, &old) < 0 && errno == EINTR) {
            err = EINTR;
            break;
        }
        if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
            err = 0;
            break;
        }
        if (errno != EWOULDBLOCK && errno != EINTR) {
            err = errno;
            break;
        }
        if (now_ns(CLOCK_MONOTONIC) >= deadline) {
            err = EBUSY;
            break;
        }
        if (pause < 5000000) pause *= 2;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return err;
}

/* The failure of lock_shared(fd) with `err`, for the file `what`. */
static int lock_error(int err, const char *what) {
    if (err == EBUSY)
        return ndshm__fail(NDSHM_EBUSY, EBUSY, "%s is locked exclusively by another process (no shared lock within %lld ms)",
                           what, LOCK_WAIT_NS / 1000000);
    if (err == EINTR) return ndshm__fail_errno(EINTR, "interrupted by a signal while waiting to lock %s", what);
    return ndshm__fail_errno(err, "cannot lock %s", what);
}

/* 1 if another open file description holds a lock on fd's file, 0 if not; we hold LOCK_SH, and
 * still do on return 0 or 1: a failed conversion to LOCK_EX drops the lock on Linux, so it is
 * retaken. A negative NDSHM_E* (detail set) if it cannot be retaken. */
static int others_hold(int fd, const char *what) {
    int free_ = flock(fd, LOCK_EX | LOCK_NB) == 0;
    int err = lock_shared(fd);
    if (err) return lock_error(err, what);
    return !free_;
}

/* Memory file systems allocate a page when it is first touched, also to read it, and raise
 * SIGBUS when they cannot. ndshm reserves every page of what it creates (posix_fallocate), so on
 * them a file holding fewer blocks than its size (holes) was not made, or was since changed, by
 * ndshm. Disk file systems are left alone: a hole there reads as zeros, and compression makes
 * st_blocks smaller than the size of files that have no hole at all. */
static bool has_holes(int fd, const struct stat *st) {
    struct statfs fs;
    if (st->st_size <= 0 || fstatfs(fd, &fs) != 0 || fs.f_type != 0x01021994 /* TMPFS_MAGIC */) return false;
    return (uint64_t)st->st_blocks * 512u < (uint64_t)st->st_size;
}

static int holes_error(const struct stat *st, const char *what) {
    return ndshm__fail(NDSHM_ECORRUPT, 0,
                       "%s has holes (%llu of its %lld bytes are allocated): ndshm reserves every page it creates, "
                       "so it was not made by ndshm, and its holes would raise SIGBUS once the file system is full",
                       what, (unsigned long long)st->st_blocks * 512u, (long long)st->st_size);
}

static int check_hugepages(void) {
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r");
    long n = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld", &n) != 1) n = 0;
        fclose(f);
    }
    if (n <= 0)
        return ndshm__fail(NDSHM_ENOTSUP, 0,
                           "huge pages requested but none are reserved: /proc/sys/vm/nr_hugepages is %ld "
                           "(as root: echo 512 > /proc/sys/vm/nr_hugepages)",
                           n);
    return 0;
}

static void count_map(size_t len, int delta) {
    if (delta > 0) {
        NDSHM__COUNT(live_mappings, 1);
        NDSHM__COUNT(mapped_bytes, len);
    } else {
        atomic_fetch_sub_explicit(&ndshm__counters.live_mappings, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&ndshm__counters.mapped_bytes, len, memory_order_relaxed);
    }
}

static ndshm_segment_t *new_handle(int kind) {
    ndshm_segment_t *seg = calloc(1, sizeof *seg);
    if (seg == NULL) return NULL;
    seg->kind = kind;
    seg->fd = -1;
    NDSHM__COUNT(live_segments, 1);
    return seg;
}

/* Unlinks seg->path only if it still names the very file this handle maps. */
static int unlink_if_same(ndshm_segment_t *seg) {
    struct stat st;
    if (stat(seg->path, &st) != 0)
        return ndshm__fail_errno(errno, "cannot remove segment %s", seg->path);
    if ((uint64_t)st.st_dev != seg->info.dev || (uint64_t)st.st_ino != seg->info.ino)
        return ndshm__fail(NDSHM_ENOENT, 0, "%s now names another segment; it was not removed", seg->path);
    if (unlink(seg->path) != 0) return ndshm__fail_errno(errno, "cannot remove segment %s", seg->path);
    seg->unlinked = 1;
    return 0;
}

static void release(ndshm_segment_t *seg) {
    if (seg->base != NULL) {
        munmap(seg->base, seg->map_len);
        count_map(seg->map_len, -1);
    }
    if (seg->fd >= 0) close(seg->fd);
    free(seg->path);
    atomic_fetch_sub_explicit(&ndshm__counters.live_segments, 1, memory_order_relaxed);
    free(seg);
}

void ndshm_segment_close(ndshm_segment_t *seg) {
    if (seg == NULL) return;
    if (seg->creator && !(seg->flags & (NDSHM_SEG_PERSIST | NDSHM_SEG_KEEP_NAME)) && !seg->unlinked && seg->path != NULL &&
        getpid() == seg->creator_pid) {
        int saved = errno;
        (void)unlink_if_same(seg);
        errno = saved;
    }
    release(seg);
}

static int open_error(int err, const char *path, const char *what) {
    if (err == ENOENT) return ndshm__fail(NDSHM_ENOENT, err, "no segment %s", path);
    if (err == EACCES || err == EPERM) return ndshm__fail(NDSHM_EACCES, err, "cannot open %s %s", path, what);
    if (err == EEXIST) return ndshm__fail(NDSHM_EEXIST, err, "segment %s exists already", path);
    return ndshm__fail_errno(err, "cannot open %s %s", path, what);
}

/* mmap with the mapping's start aligned to `alignment` (so that data at an offset that is a
 * multiple of it is aligned too): reserve address space, then map the file over it, MAP_FIXED. */
/* Pre-faults a new mapping for `populate=True`: writable pages of memory file systems (tmpfs,
 * hugetlbfs, memfd, anonymous) are mapped writable; read-only mappings and files on disks are
 * mapped for reading (writing would dirty every page of a disk file for nothing). */
static void populate_mapping(void *base, size_t len, int fd, bool writable) {
    int how = NDSHM__POPULATE_READ;
    struct statfs fs;
    if (writable && (fd < 0 || (fstatfs(fd, &fs) == 0 && (fs.f_type == 0x01021994 /* TMPFS_MAGIC */ ||
                                                           fs.f_type == 0x958458f6 /* HUGETLBFS_MAGIC */))))
        how = NDSHM__POPULATE_WRITE;
    ndshm__populate(base, len, how);
}

static void *map_aligned(size_t len, int prot, int flags, int fd, size_t alignment) {
    size_t page = ndshm__page_size();
    if (alignment <= page) return mmap(NULL, len, prot, flags, fd, 0);
    size_t reserve;
    if (ndshm__add_overflow(len, alignment - page, &reserve)) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    char *area = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) return MAP_FAILED;
    char *start = (char *)(((uintptr_t)area + alignment - 1) & ~(uintptr_t)(alignment - 1));
    void *got = mmap(start, len, prot, flags | MAP_FIXED, fd, 0);
    if (got == MAP_FAILED) {
        int err = errno;
        munmap(area, reserve);
        errno = err;
        return MAP_FAILED;
    }
    size_t lead = (size_t)(start - area), mapped;
    if (ndshm__round_up(len, page, &mapped)) mapped = len;
    if (lead) munmap(area, lead);
    if (reserve > lead + mapped) munmap(start + mapped, reserve - lead - mapped);
    return got;
}

/* ---- create --------------------------------------------------------------------------- */

int ndshm_segment_create(const ndshm_segment_params_t *p, ndshm_segment_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_create: out is NULL");
    *out = NULL;
    if (p == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_create: params is NULL");
    if (p->kind < NDSHM_KIND_NAMED || p->kind > NDSHM_KIND_FILE)
        return ndshm__fail(NDSHM_EINVAL, 0, "segment kind %d is unknown", p->kind);
    const unsigned known = NDSHM__SEG_STORED_FLAGS | NDSHM_SEG_KEEP_NAME;
    if (p->flags & ~known) return ndshm__fail(NDSHM_EINVAL, 0, "segment flags 0x%x are unknown for create",
                                              p->flags & ~known);
    size_t alignment = p->alignment;
    if (alignment == 0) alignment = 64;
    if (!ndshm__is_pow2(alignment) || alignment > NDSHM_MAX_ALIGNMENT)
        return ndshm__fail(NDSHM_EINVAL, 0, "alignment %zu is not a power of two up to %d", p->alignment,
                           NDSHM_MAX_ALIGNMENT);
    if (p->descr_len > NDSHM_DESCR_MAX || (p->descr_len && p->descr == NULL))
        return ndshm__fail(NDSHM_EINVAL, 0, "descr_len %zu exceeds %d or descr is NULL", p->descr_len,
                           NDSHM_DESCR_MAX);
    if (p->meta_len > NDSHM_META_MAX || (p->meta_len && p->meta == NULL))
        return ndshm__fail(NDSHM_EINVAL, 0, "meta_len %zu exceeds %d bytes or meta is NULL", p->meta_len,
                           NDSHM_META_MAX);
    if (p->mode & ~07777u) return ndshm__fail(NDSHM_EINVAL, 0, "mode 0%o has bits beyond 07777", p->mode);
    int rc = ndshm__check_typestr(p->layout.typestr);
    if (rc) return rc;
    uint64_t data_size;
    rc = ndshm__layout_extent(&p->layout, &data_size);
    if (rc) return rc;
    int huge = (p->flags & NDSHM_SEG_HUGEPAGES) != 0;
    if (huge && p->kind == NDSHM_KIND_FILE)
        return ndshm__fail(NDSHM_EINVAL, 0, "hugepages apply to named (hugetlbfs dir), anonymous and memfd segments");

    size_t page = ndshm__page_size(), unit = alignment > page ? alignment : page;
    if (huge && unit < NDSHM_HUGE_ALIGNMENT) unit = NDSHM_HUGE_ALIGNMENT;
    size_t header_size = (size_t)NDSHM__HDR_FIXED + p->descr_len + p->meta_len, data_offset, seg_size, file_size;
    if (ndshm__round_up(header_size, unit, &data_offset) ||
        ndshm__add_overflow(data_offset, (size_t)data_size, &seg_size) ||
        ndshm__round_up(seg_size, huge ? (size_t)NDSHM_HUGE_ALIGNMENT : 1, &file_size) ||
        file_size > (size_t)INT64_MAX / 2)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "data of %llu bytes with alignment %zu overflows the segment size",
                           (unsigned long long)data_size, alignment);
    if (huge && (rc = check_hugepages()) != 0) return rc;

    char *path = NULL;
    if (p->kind == NDSHM_KIND_NAMED || p->kind == NDSHM_KIND_FILE) {
        rc = make_path(p->kind, p->name, p->dir, &path);
        if (rc) return rc;
    }
    /* this process's id goes into the segment (its owner lock, rings' records): register it in
     * the directory's process table first; anonymous and memfd segments use the default one */
    rc = p->kind == NDSHM_KIND_FILE ? ndshm__register_path(path)
                                    : ndshm__register(p->kind == NDSHM_KIND_NAMED ? p->dir : NULL);
    if (rc) {
        free(path);
        return rc;
    }
    ndshm_segment_t *seg = new_handle(p->kind);
    if (seg == NULL) {
        free(path);
        return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a segment handle");
    }
    seg->path = path;
    seg->creator = 1;
    seg->creator_pid = getpid();
    seg->flags = p->flags;
    unsigned mode = p->mode ? p->mode : 0600;
    int created_file = 0, err;

    if (path != NULL) {
        seg->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (seg->fd < 0) {
            if (errno == ENOENT)
                rc = ndshm__fail(NDSHM_ENOENT, errno, "cannot create %s: its directory does not exist", path);
            else
                rc = open_error(errno, path, "for creation");
            goto fail;
        }
        created_file = 1;
        if (fchmod(seg->fd, mode) != 0) {
            rc = ndshm__fail_errno(errno, "cannot set mode 0%o on %s", mode, path);
            goto fail;
        }
    } else if (p->kind == NDSHM_KIND_MEMFD) {
        seg->fd = memfd_create_("ndshm", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
        if (seg->fd < 0) {
            rc = ndshm__fail_errno(errno, "memfd_create%s failed", huge ? " with MFD_HUGETLB" : "");
            goto fail;
        }
    }
    if (seg->fd >= 0) {
        if ((err = lock_shared(seg->fd)) != 0) {
            rc = lock_error(err, path ? path : "memfd");
            goto fail;
        }
        if (huge) {
            if (ftruncate(seg->fd, (off_t)file_size) != 0) {
                rc = ndshm__fail_errno(errno, "cannot size the huge-page segment to %zu bytes", file_size);
                goto fail;
            }
        } else {
            err = posix_fallocate(seg->fd, 0, (off_t)file_size);
            if (err == EOPNOTSUPP || err == EINVAL) /* file systems without fallocate */
                err = ftruncate(seg->fd, (off_t)file_size) == 0 ? 0 : errno;
            if (err == ENOSPC) {
                const char *where = p->kind == NDSHM_KIND_NAMED ? default_dir(p->dir) : path ? path : "memfd";
                rc = ndshm__fail(NDSHM_ENOSPC, ENOSPC, "no space in %s for a segment of %zu bytes", where, file_size);
                goto fail;
            }
            if (err != 0) {
                rc = ndshm__fail_errno(err, "cannot reserve %zu bytes for %s", file_size, path ? path : "memfd");
                goto fail;
            }
        }
        struct stat st;
        if (fstat(seg->fd, &st) != 0) {
            rc = ndshm__fail_errno(errno, "cannot stat %s", path ? path : "memfd");
            goto fail;
        }
        seg->info.dev = (uint64_t)st.st_dev;
        seg->info.ino = (uint64_t)st.st_ino;
    }

    int mflags = MAP_SHARED;
    if (p->kind == NDSHM_KIND_ANONYMOUS) mflags |= MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0);
    size_t map_align = huge && alignment < NDSHM_HUGE_ALIGNMENT ? (size_t)NDSHM_HUGE_ALIGNMENT : alignment;
    void *base = map_aligned(file_size, PROT_READ | PROT_WRITE, mflags, seg->fd, map_align);
    if (base == MAP_FAILED) {
        rc = ndshm__fail(NDSHM_ENOMEM, errno, "cannot map a segment of %zu bytes", file_size);
        goto fail;
    }
    seg->base = base;
    seg->map_len = file_size;
    count_map(file_size, 1);
    if (p->flags & NDSHM_SEG_POPULATE) populate_mapping(base, file_size, seg->fd, true);

    ndshm_segment_params_t stored = *p; /* the header records what every mapper must know, not KEEP_NAME */
    stored.flags &= ~(unsigned)NDSHM_SEG_KEEP_NAME;
    ndshm__header_write(base, &stored, data_offset, data_size, alignment, (int64_t)getpid(), now_ns(CLOCK_REALTIME));
    ndshm__header_publish(base);
    rc = ndshm__header_validate(base, header_size, file_size, &seg->info);
    if (rc) goto fail; /* cannot happen: our own header */
    seg->info.kind = p->kind;
    seg->info.data = (uintptr_t)base + data_offset;
    seg->info.creator = 1;
    seg->info.fd = seg->fd;
    if (p->kind == NDSHM_KIND_NAMED) snprintf(seg->info.name, sizeof seg->info.name, "%s", p->name);
    *out = seg;
    return 0;

fail:
    if (created_file) unlink(path);
    release(seg);
    return rc;
}

/* ---- attach --------------------------------------------------------------------------- */

/* Registers this process in the process table of the directory of an attached segment (`dir`,
 * or the directory holding file `path`), so that the ids it writes there can be tested by
 * every process that maps it. Best effort: a directory this user cannot write (a read-only
 * attach of another user's segment) falls back to the default directory, and its tables are
 * still opened so that the ids found in its segments can be tested. */
static void attach_register(const char *dir, const char *path) {
    int saved = errno;
    int rc = path != NULL ? ndshm__register_path(path) : ndshm__register(dir);
    if (rc) {
        (void)(path != NULL ? ndshm__open_dir_of(path) : ndshm__open_dir(dir));
        (void)ndshm__register(NULL);
    }
    errno = saved;
}

/* Reads up to `want` header bytes of fd into buf: the first page, and the rest only when the
 * header_size found there asks for more (most headers fit in a page). Returns the bytes read. */
static size_t read_header(int fd, unsigned char *buf, size_t want) {
    size_t len = 0, need = want < 4096 ? want : 4096;
    for (;;) {
        while (len < need) {
            ssize_t n = pread(fd, buf + len, need - len, (off_t)len);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return len;
            len += (size_t)n;
        }
        if (need == want) return len;
        uint32_t header_size;
        memcpy(&header_size, buf + 12, sizeof header_size); /* need >= 4096 here */
        if (header_size <= len) return len;
        need = header_size < want ? header_size : want;
    }
}

/* seg->fd is open and share-locked: read, wait for and validate the header, then map. */
static int attach_open(ndshm_segment_t *seg, unsigned flags, const char *what) {
    int ro = (flags & NDSHM_SEG_READONLY) != 0;
    unsigned char buf[NDSHM__HDR_MAX]; /* the private copy: 9 KB */
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + ATTACH_WAIT_NS;
    struct stat st;
    int rc, ordered = 0;
    for (;;) {
        if (fstat(seg->fd, &st) != 0) {
            rc = ndshm__fail_errno(errno, "cannot stat %s", what);
            goto out;
        }
        if (!S_ISREG(st.st_mode)) {
            rc = ndshm__fail(NDSHM_ECORRUPT, 0, "%s is not a regular file (mode 0%o)", what, (unsigned)st.st_mode);
            goto out;
        }
        if (st.st_nlink == 0 && seg->path != NULL) {
            rc = ndshm__fail(NDSHM_ENOENT, 0, "segment %s was removed", what);
            goto out;
        }
        size_t want = st.st_size < NDSHM__HDR_MAX ? (size_t)st.st_size : NDSHM__HDR_MAX;
        if (ordered) { /* the state first, then (acquire) everything it publishes */
            uint32_t state = 0;
            if (want >= 20 && pread(seg->fd, &state, sizeof state, 16) == (ssize_t)sizeof state)
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
        }
        size_t len = read_header(seg->fd, buf, want);
        rc = ndshm__header_validate(buf, len, (uint64_t)st.st_size, &seg->info);
        /* One pread (the fast path) may tear against a creator publishing right now; a header
         * that passes validation, checksum included, is whole. Anything else is judged only
         * after an ordered re-read. */
        if (rc == 0) break;
        if (!ordered) {
            ordered = 1;
            continue;
        }
        if (rc != NDSHM_EBUSY) break;
        /* Nobody holds the file: its creator died, unless it is so young that the creator may be
         * between open(O_CREAT) and its flock (a window of microseconds; allow a second). */
        int64_t age = now_ns(CLOCK_REALTIME) - ((int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec);
        int held = others_hold(seg->fd, what);
        if (held < 0) {
            rc = held;
            break;
        }
        if (!held && age > 1000000000LL) {
            rc = ndshm__fail(NDSHM_ECORRUPT, 0, "segment %s was never fully initialised (its creator died?)", what);
            break;
        }
        if (now_ns(CLOCK_MONOTONIC) > deadline) {
            rc = ndshm__fail(NDSHM_EBUSY, 0, "segment %s is still being initialised after %lld ms", what,
                             ATTACH_WAIT_NS / 1000000);
            break;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (rc) goto out;
    if (!(seg->info.flags & NDSHM_SEG_HUGEPAGES) && has_holes(seg->fd, &st)) { /* after the header: it is */
        rc = holes_error(&st, what);                                       /* written after fallocate */
        goto out;
    }
    seg->info.dev = (uint64_t)st.st_dev;
    seg->info.ino = (uint64_t)st.st_ino;
    size_t map_len = (size_t)(seg->info.data_offset + seg->info.data_size);
    if (seg->info.flags & NDSHM_SEG_HUGEPAGES) map_len = (size_t)st.st_size;
    void *base = map_aligned(map_len, PROT_READ | (ro ? 0 : PROT_WRITE), MAP_SHARED, seg->fd,
                             (size_t)seg->info.alignment);
    if (base == MAP_FAILED) {
        rc = ndshm__fail(errno == EACCES ? NDSHM_EACCES : NDSHM_ENOMEM, errno, "cannot map %zu bytes of %s", map_len,
                         what);
        goto out;
    }
    seg->base = base;
    seg->map_len = map_len;
    count_map(map_len, 1);
    if (flags & NDSHM_SEG_POPULATE) populate_mapping(base, map_len, seg->fd, !ro);
    seg->flags = seg->info.flags | (ro ? NDSHM_SEG_READONLY : 0);
    seg->info.flags = seg->flags;
    seg->info.kind = seg->kind;
    seg->info.data = (uintptr_t)base + seg->info.data_offset;
    seg->info.creator = 0;
    seg->info.fd = seg->fd;
out:
    return rc;
}

int ndshm_segment_attach(int kind, const char *name, const char *dir, unsigned flags, ndshm_segment_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_attach: out is NULL");
    *out = NULL;
    if (flags & ~(unsigned)(NDSHM_SEG_READONLY | NDSHM_SEG_POPULATE))
        return ndshm__fail(NDSHM_EINVAL, 0, "attach flags 0x%x are not READONLY or POPULATE", flags);
    char *path;
    int rc = make_path(kind, name, dir, &path);
    if (rc) return rc;
    ndshm_segment_t *seg = new_handle(kind);
    if (seg == NULL) {
        free(path);
        return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a segment handle");
    }
    seg->path = path;
    int ro = (flags & NDSHM_SEG_READONLY) != 0;
    /* O_NONBLOCK: a FIFO planted under a segment's name must not hang us (no effect on files);
     * O_NOFOLLOW: nor may a symlink there redirect us to another file. */
    int oflags = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK | (kind == NDSHM_KIND_NAMED ? O_NOFOLLOW : 0);
    seg->fd = open(path, oflags);
    if (seg->fd < 0) {
        if (errno == ELOOP) rc = ndshm__fail(NDSHM_ECORRUPT, errno, "%s is a symbolic link, not a segment", path);
        else rc = open_error(errno, path, ro ? "for reading" : "for reading and writing");
        goto fail;
    }
    int err = lock_shared(seg->fd);
    if (err) {
        rc = lock_error(err, path);
        goto fail;
    }
    rc = attach_open(seg, flags, path);
    if (rc) goto fail;
    attach_register(kind == NDSHM_KIND_FILE ? NULL : dir, kind == NDSHM_KIND_FILE ? path : NULL);
    if (kind == NDSHM_KIND_NAMED) memcpy(seg->info.name, name, strlen(name) + 1); /* checked: <= NDSHM_NAME_MAX */
    *out = seg;
    return 0;
fail:
    release(seg);
    return rc;
}

int ndshm_segment_attach_fd(int fd, unsigned flags, ndshm_segment_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_attach_fd: out is NULL");
    *out = NULL;
    if (flags & ~(unsigned)(NDSHM_SEG_READONLY | NDSHM_SEG_POPULATE))
        return ndshm__fail(NDSHM_EINVAL, 0, "attach flags 0x%x are not READONLY or POPULATE", flags);
    if (fd < 0) return ndshm__fail(NDSHM_EINVAL, 0, "descriptor %d is invalid", fd);
    ndshm_segment_t *seg = new_handle(NDSHM_KIND_MEMFD);
    if (seg == NULL) return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a segment handle");
    int rc;
    seg->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (seg->fd < 0) {
        rc = ndshm__fail_errno(errno, "cannot duplicate descriptor %d", fd);
        goto fail;
    }
    char what[48];
    snprintf(what, sizeof what, "descriptor %d", fd);
    int err = lock_shared(seg->fd);
    if (err) {
        rc = lock_error(err, what);
        goto fail;
    }
    rc = attach_open(seg, flags, what);
    if (rc) goto fail;
    attach_register(NULL, NULL);
    *out = seg;
    return 0;
fail:
    release(seg);
    return rc;
}

/* A raw file with holes on a memory file system (see has_holes): the standard library's
 * SharedMemory and the SharedArray package make theirs with ftruncate, so they are sparse. Their
 * pages are reserved here, as ndshm reserves its own at creation: ENOSPC now rather than SIGBUS
 * later (FALLOC_FL_KEEP_SIZE: a file someone truncates meanwhile is never grown back). A
 * read-only attacher reserves them through a writable descriptor of the same file if it may
 * open one, and is refused otherwise. */
static int reserve_holes(int fd, const struct stat *st, int ro, const char *path) {
    int wfd = fd;
    if (ro) {
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
        wfd = open(self, O_RDWR | O_CLOEXEC | O_NONBLOCK);
        struct stat again;
        if (wfd >= 0 && (fstat(wfd, &again) != 0 || again.st_dev != st->st_dev || again.st_ino != st->st_ino)) {
            close(wfd);
            wfd = -1;
        }
        if (wfd < 0)
            return ndshm__fail(NDSHM_ECORRUPT, 0,
                               "%s has holes (%llu of its %lld bytes are allocated) and this process may not write "
                               "it to reserve them: reading them would raise SIGBUS once the file system is full",
                               path, (unsigned long long)st->st_blocks * 512u, (long long)st->st_size);
    }
    int rc = 0;
    if (fallocate(wfd, FALLOC_FL_KEEP_SIZE, 0, st->st_size) != 0) {
        if (errno == ENOSPC)
            rc = ndshm__fail(NDSHM_ENOSPC, ENOSPC, "no space to reserve the %lld bytes of %s (it has holes)",
                             (long long)st->st_size, path);
        else if (errno == EINTR) /* tmpfs undoes a partial reservation: the caller may try again */
            rc = ndshm__fail_errno(EINTR, "interrupted by a signal while reserving the %lld bytes of %s",
                                   (long long)st->st_size, path);
        else
            rc = ndshm__fail_errno(errno, "cannot reserve the %lld bytes of %s (it has holes)", (long long)st->st_size,
                                   path);
    }
    if (wfd != fd) close(wfd);
    return rc;
}

int ndshm_segment_attach_raw(const char *path, unsigned flags, ndshm_segment_t **out) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_attach_raw: out is NULL");
    *out = NULL;
    if (flags & ~(unsigned)(NDSHM_SEG_READONLY | NDSHM_SEG_POPULATE))
        return ndshm__fail(NDSHM_EINVAL, 0, "attach flags 0x%x are not READONLY or POPULATE", flags);
    char *copy;
    int rc = make_path(NDSHM_KIND_FILE, path, NULL, &copy);
    if (rc) return rc;
    ndshm_segment_t *seg = new_handle(NDSHM_KIND_FILE);
    if (seg == NULL) {
        free(copy);
        return ndshm__fail(NDSHM_ENOMEM, errno, "cannot allocate a segment handle");
    }
    seg->path = copy;
    int ro = (flags & NDSHM_SEG_READONLY) != 0;
    /* O_NONBLOCK: opening a FIFO planted there must not hang us (no effect on a regular file) */
    seg->fd = open(path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (seg->fd < 0) {
        rc = open_error(errno, path, ro ? "for reading" : "for reading and writing");
        goto fail;
    }
    if (fstat(seg->fd, &st) != 0) {
        rc = ndshm__fail_errno(errno, "cannot stat %s", path);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ndshm__fail(NDSHM_EINVAL, 0, "%s is not a regular file (mode 0%o): there is nothing to map", path,
                         (unsigned)st.st_mode);
        goto fail;
    }
    int err = lock_shared(seg->fd);
    if (err) {
        rc = lock_error(err, path);
        goto fail;
    }
    if (fstat(seg->fd, &st) != 0) { /* again, now that nobody may be truncating it under LOCK_EX */
        rc = ndshm__fail_errno(errno, "cannot stat %s", path);
        goto fail;
    }
    if (st.st_size <= 0) {
        rc = ndshm__fail(NDSHM_EINVAL, 0, "%s is empty: there is nothing to map", path);
        goto fail;
    }
    if (has_holes(seg->fd, &st) && (rc = reserve_holes(seg->fd, &st, ro, path)) != 0) goto fail;
    size_t len = (size_t)st.st_size;
    void *base = mmap(NULL, len, PROT_READ | (ro ? 0 : PROT_WRITE), MAP_SHARED, seg->fd, 0);
    if (base == MAP_FAILED) {
        rc = ndshm__fail(errno == EACCES ? NDSHM_EACCES : NDSHM_ENOMEM, errno, "cannot map %zu bytes of %s", len, path);
        goto fail;
    }
    seg->base = base;
    seg->map_len = len;
    count_map(len, 1);
    if (flags & NDSHM_SEG_POPULATE) populate_mapping(base, len, seg->fd, !ro);
    seg->flags = ro ? NDSHM_SEG_READONLY : 0;
    ndshm_segment_info_t *i = &seg->info;
    i->kind = NDSHM_KIND_FILE;
    i->flags = seg->flags | NDSHM_SEG_PERSIST;
    i->data_size = i->segment_size = len;
    i->alignment = ndshm__page_size();
    i->data = (uintptr_t)base;
    snprintf(i->layout.typestr, sizeof i->layout.typestr, "|u1");
    i->layout.itemsize = 1;
    i->layout.ndim = 1;
    i->layout.shape[0] = (int64_t)len;
    i->layout.strides[0] = 1;
    i->fd = seg->fd;
    i->dev = (uint64_t)st.st_dev;
    i->ino = (uint64_t)st.st_ino;
    attach_register(NULL, path);
    *out = seg;
    return 0;
fail:
    release(seg);
    return rc;
}

/* ---- queries and names ------------------------------------------------------------------- */

int ndshm_segment_info(const ndshm_segment_t *seg, ndshm_segment_info_t *out) {
    if (seg == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_info: NULL argument");
    *out = seg->info;
    return 0;
}

_Static_assert(NDSHM_SUM_MAX == NDSHM_SUM_FIXED + 2 * NDSHM_MAXDIM, "summary size");

int ndshm_segment_summary(const ndshm_segment_t *seg, int64_t *out, size_t n, char *typestr) {
    if (seg == NULL || out == NULL || typestr == NULL)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_summary: NULL argument");
    const ndshm_segment_info_t *i = &seg->info;
    uint32_t ndim = i->layout.ndim; /* validated: <= NDSHM_MAXDIM */
    size_t count = (size_t)NDSHM_SUM_FIXED + 2 * (size_t)ndim;
    if (n < count)
        return ndshm__fail(NDSHM_EINVAL, 0, "summary buffer of %zu values is below the %zu needed", n, count);
    out[NDSHM_SUM_DATA] = (int64_t)i->data;
    out[NDSHM_SUM_DATA_SIZE] = (int64_t)i->data_size;
    out[NDSHM_SUM_FLAGS] = (int64_t)i->flags;
    out[NDSHM_SUM_CREATOR] = i->creator;
    out[NDSHM_SUM_FD] = i->fd;
    out[NDSHM_SUM_DEV] = (int64_t)i->dev;
    out[NDSHM_SUM_INO] = (int64_t)i->ino;
    out[NDSHM_SUM_ITEMSIZE] = (int64_t)i->layout.itemsize;
    out[NDSHM_SUM_NDIM] = (int64_t)ndim;
    out[NDSHM_SUM_DESCR_LEN] = (int64_t)i->descr_len;
    out[NDSHM_SUM_META_LEN] = (int64_t)i->meta_len;
    for (uint32_t d = 0; d < ndim; d++) {
        out[NDSHM_SUM_FIXED + d] = i->layout.shape[d];
        out[NDSHM_SUM_FIXED + ndim + d] = i->layout.strides[d];
    }
    memcpy(typestr, i->layout.typestr, NDSHM_TYPESTR_MAX);
    typestr[NDSHM_TYPESTR_MAX - 1] = 0;
    return (int)count;
}

int ndshm_segment_sync(const ndshm_segment_t *seg, unsigned index, void **out) {
    if (seg == NULL || out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_sync: NULL argument");
    *out = NULL;
    if (index >= NDSHM_SEG_SYNC_SLOTS)
        return ndshm__fail(NDSHM_EINVAL, 0, "sync index %u is not below %d", index, NDSHM_SEG_SYNC_SLOTS);
    if (seg->info.format_version == 0)
        return ndshm__fail(NDSHM_EINVAL, 0, "a raw segment (%s) has no header and no sync slots",
                           seg->path ? seg->path : "?");
    if (seg->flags & NDSHM_SEG_READONLY)
        return ndshm__fail(NDSHM_EPERM, 0, "sync slot %u of a read-only mapping cannot be used", index);
    *out = (char *)seg->base + NDSHM__HDR_SYNC_OFFSET + (size_t)index * NDSHM_SYNC_SIZE;
    return 0;
}

/* The header's owner slot of `seg`, or NULL after failing (a raw segment has none). */
static unsigned char *owner_slot(const ndshm_segment_t *seg, const char *fn) {
    if (seg == NULL) {
        ndshm__fail(NDSHM_EINVAL, 0, "%s: segment is NULL", fn);
        return NULL;
    }
    if (seg->info.format_version == 0) {
        ndshm__fail(NDSHM_EINVAL, 0, "%s: a raw segment (%s) has no header and no owner slot", fn,
                    seg->path ? seg->path : "?");
        return NULL;
    }
    return (unsigned char *)seg->base + NDSHM__HDR_SYNC_OFFSET + (size_t)NDSHM_SYNC_OWNER * NDSHM_SYNC_SIZE;
}

int ndshm_segment_mark_handover(ndshm_segment_t *seg) {
    unsigned char *slot = owner_slot(seg, "ndshm_segment_mark_handover");
    if (slot == NULL) return NDSHM_EINVAL;
    if (seg->flags & NDSHM_SEG_READONLY)
        return ndshm__fail(NDSHM_EPERM, 0, "the hand-over marker of a read-only mapping (%s) cannot be set",
                           seg->path ? seg->path : "?");
    ndshm__handover_set(slot);
    return 0;
}

int ndshm_segment_handover_marked(const ndshm_segment_t *seg) {
    const unsigned char *slot = owner_slot(seg, "ndshm_segment_handover_marked");
    if (slot == NULL) return NDSHM_EINVAL;
    return ndshm__handover_is_set(slot) ? 1 : 0;
}

int ndshm_segment_unlink(ndshm_segment_t *seg) {
    if (seg == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_unlink: segment is NULL");
    if (seg->path == NULL)
        return ndshm__fail(NDSHM_EINVAL, 0, "a segment of kind %d has no name to remove", seg->kind);
    if (seg->unlinked) return ndshm__fail(NDSHM_ENOENT, 0, "segment %s was removed already", seg->path);
    return unlink_if_same(seg);
}

int ndshm_unlink(const char *name, const char *dir) {
    char *path;
    int rc = make_path(NDSHM_KIND_NAMED, name, dir, &path);
    if (rc) return rc;
    if (unlink(path) != 0) rc = open_error(errno, path, "for removal");
    free(path);
    return rc;
}

int ndshm_segment_probe(int kind, const char *name, const char *dir, ndshm_segment_info_t *out, int *in_use) {
    if (out == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_probe: out is NULL");
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (in_use) *in_use = 0;
    char *path;
    int rc = make_path(kind, name, dir, &path);
    if (rc) return rc;
    unsigned char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (kind == NDSHM_KIND_NAMED ? O_NOFOLLOW : 0));
    if (fd < 0) {
        rc = open_error(errno, path, "for reading");
        goto out;
    }
    int used = 1;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        used = 0;
        flock(fd, LOCK_UN);
    }
    if (in_use) *in_use = used;
    struct stat st;
    buf = malloc(NDSHM__HDR_MAX);
    if (buf == NULL || fstat(fd, &st) != 0) {
        rc = ndshm__fail_errno(buf == NULL ? ENOMEM : errno, "cannot read %s", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ndshm__fail(NDSHM_ECORRUPT, 0, "%s is not a regular file", path);
        goto out;
    }
    size_t want = st.st_size < NDSHM__HDR_MAX ? (size_t)st.st_size : NDSHM__HDR_MAX, len = 0;
    while (len < want) {
        ssize_t n = pread(fd, buf + len, want - len, (off_t)len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    { /* the caller may test the ids in its sync slots (the owner lock): open the directory's
       * tables (before the validation: a failure here must not overwrite its detail) */
        int saved = errno;
        (void)(kind == NDSHM_KIND_FILE ? ndshm__open_dir_of(path) : ndshm__open_dir(dir));
        errno = saved;
    }
    rc = ndshm__header_validate(buf, len, (uint64_t)st.st_size, out);
    if (rc == NDSHM_EBUSY && !used)
        rc = ndshm__fail(NDSHM_ECORRUPT, 0, "segment %s was never fully initialised (its creator died?)", path);
    out->kind = kind;
    out->dev = (uint64_t)st.st_dev;
    out->ino = (uint64_t)st.st_ino;
    out->segment_size = (uint64_t)st.st_size;
    if (kind == NDSHM_KIND_NAMED) snprintf(out->name, sizeof out->name, "%s", name);
out:
    if (fd >= 0) close(fd);
    free(buf);
    free(path);
    return rc;
}

/*
 * identity.c -- process identity and a liveness test the kernel vouches for, in any PID namespace.
 *
 * Identity. A process's key is a random non-zero 64-bit id (getrandom), made at first use and
 * made anew in a fork()ed child (pthread_atfork). Threads share it. A dead id never comes back
 * (64 random bits), and two live processes never hold the same one (their table entries would
 * collide: see "registering").
 *
 * Process tables. Every directory that holds segments holds one table per user, a file
 * "<dir>/.ndshm-procs-<uid>" (a dot file: never a segment name, and never listed or collected as
 * one) of TABLE_BYTES bytes, reserved with posix_fallocate (no holes):
 *
 *   offset  size  field
 *        0     8  magic       "NDSHMPRC"
 *        8     4  version     1
 *       12     4  entries     4096
 *       16     4  entry_size  16
 *       20     4  max_probe   entries a search looks at from an id's home (only grows)
 *       24    40  reserved    0
 *       64 65536  entries[4096]: { id u64, pid i32 (in the registrant's own PID namespace),
 *                                  ns u32 (low 32 bits of its PID namespace's inode) }
 *
 * A new table is written completely under no name (O_TMPFILE, or a temporary name) and then
 * linked into place, so a table found under its name is always whole.
 *
 * Registering. Before a process writes its id into a segment of a directory, it takes an entry
 * of its own table there: from home = hash(id) % 4096 on, the first entry it can lock with an
 * open-file-description record lock (F_OFD_SETLK, write lock on the entry's 16 bytes,
 * non-blocking); it raises max_probe to cover that entry, then writes pid, ns and id. The lock
 * is held until the process ends (the kernel drops it at exit, whatever the exit), so an entry
 * whose lock is free belongs to the dead and is reused. Entries are never cleared.
 *
 * Liveness. key_alive(id): our own id is alive; otherwise look for id in the max_probe entries
 * from its home in each table this process has open (one per directory it registered in or
 * tested, and the other users' tables of those directories). Found: alive iff its entry's lock
 * is held (F_OFD_GETLK: one system call). Not found: dead. Before answering "not found", the
 * directories are looked at again for tables of other users created since the last look (a
 * directory whose modification time is unchanged and older than 100 ms has none new).
 * False "alive" can happen for an instant (an entry reused by a process that has not written
 * its id yet); callers re-check. False "dead" cannot happen for a process registered in a
 * directory whose tables we have open: record locks are the kernel's, not a pid's, so PID
 * namespaces and pid reuse do not matter.
 *
 * fork. OFD locks belong to the open file description, which a child shares: the child's
 * copies of the tables' descriptors are closed in the atfork child hook, so a parent killed
 * later is not kept alive by its child. The child makes a new id and registers it, at its first
 * use, in every directory its parent had registered in. exec closes them (O_CLOEXEC).
 *
 * Users. Each user has its own table (0644: others open it read-only to test ids, which
 * F_OFD_GETLK allows), so one user's table never stops another from using a shared directory
 * such as /dev/shm, and nobody can write the entries behind another user's ids. A name taken by
 * another owner (a user namespace's uid seen as another, a planted file or link) is passed
 * over for "<name>.1" .. "<name>.7". A directory that cannot hold a table (hugetlbfs, full, not
 * writable) has the default directory's stand in; testers always look there too.
 *
 * Limits. Removing a table while processes use the directory makes them look dead to processes
 * that open the directory afterwards. A child made without fork()'s atfork handlers (a raw
 * clone) shares its parent's id until it execs. Another user can make dead ids look alive (by
 * copying them into a table of its own and holding its locks), never live ones dead.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef F_OFD_GETLK
#define F_OFD_GETLK 36
#define F_OFD_SETLK 37
#endif
#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif

#define TABLE_MAGIC 0x4352504d4853444eull /* "NDSHMPRC" */
#define TABLE_VERSION 1u
#define TABLE_ENTRIES 4096u
#define TABLE_HDR 64u
#define ENTRY_BYTES 16u
#define TABLE_BYTES (TABLE_HDR + TABLE_ENTRIES * ENTRY_BYTES)
#define TABLE_PREFIX ".ndshm-procs-"
#define MAX_TABLES 512
#define MAX_DIRS 256
#define SETTLED_NS 100000000LL /* a directory unchanged for this long has no table we missed */

typedef struct table_hdr {
    _Atomic uint64_t magic;
    uint32_t version, entries, entry_size;
    _Atomic uint32_t max_probe;
    char reserved[40];
} table_hdr_t;

typedef struct entry {
    _Atomic uint64_t id;
    _Atomic int32_t pid;
    _Atomic uint32_t ns;
} entry_t;

_Static_assert(sizeof(table_hdr_t) == TABLE_HDR, "table header is not 64 bytes");
_Static_assert(sizeof(entry_t) == ENTRY_BYTES, "table entry is not 16 bytes");

typedef struct table {
    int fd;
    int own;            /* this process's own table in its directory (we may register here) */
    uint64_t dev, ino;  /* of the table file */
    unsigned char *map; /* TABLE_BYTES, never unmapped while the process runs (fork: see child_hook) */
} table_t;

typedef struct dir {
    char *path;                 /* absolute (realpath) */
    char *given;                /* the string first asked for, if absolute (fast lookup), else NULL */
    uint64_t dev, ino;          /* of the directory */
    _Atomic int registered;     /* 1: this id holds an entry in our own table here */
    _Atomic int fallback;       /* it cannot hold our table: the default directory's stands in */
    int want_register;          /* registered before a fork: register the child's id too */
    int own;                    /* index of our own table here, -1 if none is open */
    int32_t entry;              /* our entry there */
    int snap_valid;             /* the last look for tables: */
    struct timespec snap_mtime; /* the directory's mtime then */
    int64_t snap_nlink, snap_size;
} dir_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
_Atomic uint64_t ndshm__self_id; /* 0 until made (and in a fork()ed child until remade) */
static uint32_t self_ns;               /* low 32 bits of our PID namespace's inode, 0 if unknown */
static table_t tables[MAX_TABLES];
static _Atomic unsigned ntables;       /* tables[0, ntables) are complete */
static dir_t dirs[MAX_DIRS];
static _Atomic unsigned ndirs;

static inline entry_t *entry_at(const table_t *t, uint32_t i) {
    return (entry_t *)(t->map + TABLE_HDR + (size_t)i * ENTRY_BYTES);
}
static inline table_hdr_t *hdr_of(const table_t *t) { return (table_hdr_t *)t->map; }

static inline uint32_t home_of(uint64_t id) { /* splitmix64's finaliser: test ids may be regular */
    id ^= id >> 30;
    id *= 0xbf58476d1ce4e5b9ull;
    id ^= id >> 27;
    id *= 0x94d049bb133111ebull;
    id ^= id >> 31;
    return (uint32_t)(id % TABLE_ENTRIES);
}

static int lock_entry(int fd, uint32_t i, int cmd, short type) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)(TABLE_HDR + (size_t)i * ENTRY_BYTES);
    fl.l_len = ENTRY_BYTES;
    if (fcntl(fd, cmd, &fl) != 0) return -errno;
    return cmd == F_OFD_GETLK ? fl.l_type != F_UNLCK : 0;
}

/* ---- fork ------------------------------------------------------------------------------ */

static void prepare_hook(void) { pthread_mutex_lock(&mu); }
static void parent_hook(void) { pthread_mutex_unlock(&mu); }

/* In the child, alone: closes every table (so that only the parent's descriptors hold its
 * entries' locks), forgets the parent's id and marks the directories to register again. */
static void child_hook(void) {
    unsigned n = atomic_load(&ntables);
    for (unsigned i = 0; i < n; i++) {
        if (tables[i].fd >= 0) close(tables[i].fd);
        munmap(tables[i].map, TABLE_BYTES);
        memset(&tables[i], 0, sizeof tables[i]);
        tables[i].fd = -1;
    }
    atomic_store(&ntables, 0);
    unsigned nd = atomic_load(&ndirs);
    for (unsigned d = 0; d < nd; d++) {
        if (atomic_load(&dirs[d].registered)) dirs[d].want_register = 1;
        atomic_store(&dirs[d].registered, 0);
        dirs[d].own = -1;
        dirs[d].snap_valid = 0;
    }
    atomic_store(&ndshm__self_id, 0);
    pthread_mutex_unlock(&mu);
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
static void install_hooks(void) { pthread_atfork(prepare_hook, parent_hook, child_hook); }

/* ---- tables ---------------------------------------------------------------------------- */

static uint32_t read_ns(void) {
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint32_t)st.st_ino : 0;
}

uint64_t ndshm__random_id(void) {
    uint64_t id = 0;
    while (id == 0) {
#ifdef SYS_getrandom
        long n = syscall(SYS_getrandom, &id, sizeof id, 0);
        if (n == (long)sizeof id) continue;
        if (n < 0 && errno == EINTR) continue;
#endif
        /* no getrandom (kernels before 3.17): /dev/urandom, else the clock and pid mixed */
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (read(fd, &id, sizeof id) != (ssize_t)sizeof id) id = 0;
            close(fd);
        }
        if (id == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            id = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 40);
            id ^= (uint64_t)(uintptr_t)&id;
        }
    }
    return id;
}

/* Maps and checks table file `fd` (a regular file of TABLE_BYTES: the caller checked). */
static unsigned char *map_table(int fd, int writable) {
    void *m = mmap(NULL, TABLE_BYTES, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return NULL;
    table_hdr_t *h = m;
    if (atomic_load(&h->magic) != TABLE_MAGIC || h->version != TABLE_VERSION || h->entries != TABLE_ENTRIES ||
        h->entry_size != ENTRY_BYTES) {
        munmap(m, TABLE_BYTES);
        return NULL;
    }
    return m;
}

/* Adds an open, checked table to the list (under mu). Returns its index, or -1 if full. */
static int add_table(int fd, int own, const struct stat *st, unsigned char *map) {
    unsigned n = atomic_load(&ntables);
    if (n >= MAX_TABLES) return -1;
    tables[n].fd = fd;
    tables[n].own = own;
    tables[n].dev = (uint64_t)st->st_dev;
    tables[n].ino = (uint64_t)st->st_ino;
    tables[n].map = map;
    atomic_store_explicit(&ntables, n + 1, memory_order_release);
    return (int)n;
}

static int find_table(uint64_t dev, uint64_t ino) {
    unsigned n = atomic_load(&ntables);
    for (unsigned i = 0; i < n; i++)
        if (tables[i].dev == dev && tables[i].ino == ino) return (int)i;
    return -1;
}

/* Writes a whole new table into `fd` (empty, just created). 0 or an errno. */
static int init_table_file(int fd) {
    int err = posix_fallocate(fd, 0, TABLE_BYTES);
    if (err == EOPNOTSUPP || err == EINVAL) err = ftruncate(fd, TABLE_BYTES) == 0 ? 0 : errno;
    if (err) return err;
    if (fchmod(fd, 0644) != 0) return errno; /* readable by other users: they may test our ids */
    table_hdr_t h;
    memset(&h, 0, sizeof h);
    h.version = TABLE_VERSION;
    h.entries = TABLE_ENTRIES;
    h.entry_size = ENTRY_BYTES;
    atomic_store_explicit(&h.magic, TABLE_MAGIC, memory_order_relaxed);
    if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) return errno ? errno : EIO;
    return 0;
}

/* Creates table `path` in `dir` whole (see the top comment). 0, EEXIST if the name is taken, or an errno. */
static int create_table(const char *dir, const char *path) {
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
    if (fd >= 0) {
        int err = init_table_file(fd);
        if (err == 0) {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) != 0) err = errno;
        }
        close(fd);
        if (err == 0 || err == EEXIST || err == ENOSPC) return err;
        /* no /proc or no O_TMPFILE link: fall back to a temporary name */
    }
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s/.ndshm-tmp-%d-%016llx", dir, (int)getpid(), (unsigned long long)ndshm__random_id());
    if (n < 0 || (size_t)n >= sizeof tmp) return ENAMETOOLONG;
    fd = open(tmp, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return errno;
    int err = init_table_file(fd);
    if (err == 0 && link(tmp, path) != 0) err = errno;
    unlink(tmp);
    close(fd);
    return err;
}

/* Opens (creating it if need be) this user's table in directory `d` for registering. 0, or a
 * negative NDSHM_E* with the detail. */
static int open_own_table(dir_t *d) {
    uid_t uid = geteuid();
    char path[PATH_MAX];
    int last = 0;
    for (int k = 0; k < 8; k++) { /* a name taken by another owner (user namespaces): the next */
        int n = k == 0 ? snprintf(path, sizeof path, "%s/" TABLE_PREFIX "%u", d->path, (unsigned)uid)
                       : snprintf(path, sizeof path, "%s/" TABLE_PREFIX "%u.%d", d->path, (unsigned)uid, k);
        if (n < 0 || (size_t)n >= sizeof path)
            return ndshm__fail(NDSHM_EINVAL, 0, "directory '%.60s...' makes a process table path too long", d->path);
        for (int attempt = 0; attempt < 2; attempt++) {
            int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
            if (fd < 0 && errno == ENOENT && attempt == 0) {
                int err = create_table(d->path, path);
                if (err == 0 || err == EEXIST) continue; /* open it now (ours or a racer's) */
                if (err == ENOSPC)
                    return ndshm__fail(NDSHM_ENOSPC, err, "no space in %s for this process table (%u bytes)", d->path,
                                       TABLE_BYTES);
                return ndshm__fail_errno(err, "cannot create process table %s", path);
            }
            if (fd < 0) {
                last = errno;
                break; /* not ours (EACCES), a symbolic link (ELOOP): the next name */
            }
            struct stat st;
            unsigned char *map = NULL;
            if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == uid && st.st_size == TABLE_BYTES)
                map = map_table(fd, 1);
            if (map == NULL) { /* someone else's, or not a table: the next name */
                close(fd);
                last = EEXIST;
                break;
            }
            int have = find_table((uint64_t)st.st_dev, (uint64_t)st.st_ino);
            if (have >= 0 && tables[have].own) { /* open already (another path to the same directory) */
                munmap(map, TABLE_BYTES);
                close(fd);
                return have;
            }
            int idx = add_table(fd, 1, &st, map);
            if (idx < 0) {
                munmap(map, TABLE_BYTES);
                close(fd);
                return ndshm__fail(NDSHM_ENOMEM, 0, "this process has %d process tables open: no room for %s",
                                   MAX_TABLES, path);
            }
            return idx;
        }
    }
    return ndshm__fail(last == EACCES ? NDSHM_EACCES : NDSHM_ESYS, last,
                       "no usable process table for uid %u in %s: the names " TABLE_PREFIX
                       "%u[.1-7] belong to others or are not tables",
                       (unsigned)uid, d->path, (unsigned)uid);
}

/* Takes an entry for `id` in own table `t`. Its index, or a negative NDSHM_E*. */
static int take_entry(table_t *t, uint64_t id, const char *dir) {
    uint32_t home = home_of(id);
    table_hdr_t *h = hdr_of(t);
    for (uint32_t k = 0; k < TABLE_ENTRIES; k++) {
        uint32_t i = (home + k) % TABLE_ENTRIES;
        int rc = lock_entry(t->fd, i, F_OFD_SETLK, F_WRLCK);
        if (rc == -EAGAIN || rc == -EACCES) continue; /* held: a live process's */
        if (rc < 0) return ndshm__fail_errno(-rc, "cannot lock an entry of the process table in %s", dir);
        uint32_t mp = atomic_load(&h->max_probe);
        while (mp < k + 1 && !atomic_compare_exchange_weak(&h->max_probe, &mp, k + 1)) {
        }
        entry_t *e = entry_at(t, i);
        atomic_store(&e->pid, (int32_t)getpid());
        atomic_store(&e->ns, self_ns);
        atomic_store(&e->id, id);
        return (int)i;
    }
    return ndshm__fail(NDSHM_EBUSY, 0, "the process table in %s is full: %u live processes hold its entries", dir,
                       TABLE_ENTRIES);
}

/* Registers `id` in directory `d` (under mu). 0 or a negative NDSHM_E*. */
static int register_in(dir_t *d, uint64_t id) {
    if (atomic_load(&d->registered)) return 0;
    int t = d->own >= 0 ? d->own : open_own_table(d);
    if (t < 0) return t;
    d->own = t;
    int e = take_entry(&tables[t], id, d->path);
    if (e < 0) return e;
    d->entry = e;
    d->want_register = 0;
    atomic_store(&d->registered, 1);
    return 0;
}

static const char *default_dir(void) {
    const char *env = getenv("NDSHM_DIR");
    return env != NULL && env[0] != 0 ? env : "/dev/shm";
}

/* The directory entry for `dir` (NULL or "": the default), added if new (under mu). */
static int find_dir(const char *dir, dir_t **out) {
    if (dir == NULL || dir[0] == 0) dir = default_dir();
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) return ndshm__fail(NDSHM_ENOENT, errno, "cannot use %s: the directory does not exist", dir);
        return ndshm__fail_errno(errno, "cannot use directory %s", dir);
    }
    if (!S_ISDIR(st.st_mode)) return ndshm__fail(NDSHM_EINVAL, 0, "%s is not a directory", dir);
    unsigned n = atomic_load(&ndirs);
    for (unsigned i = 0; i < n; i++)
        if (dirs[i].dev == (uint64_t)st.st_dev && dirs[i].ino == (uint64_t)st.st_ino) {
            struct stat was;
            if (stat(dirs[i].path, &was) != 0 || was.st_dev != st.st_dev || was.st_ino != st.st_ino) {
                /* a directory that went away (an unmounted tmpfs) and a new one mounted with its
                 * numbers: the entry is the new directory's from now on */
                char *real = realpath(dir, NULL);
                if (real == NULL) return ndshm__fail_errno(errno, "cannot resolve directory %s", dir);
                atomic_store(&dirs[i].registered, 0);
                atomic_store(&dirs[i].fallback, 0);
                dirs[i].path = real; /* the old strings are not freed: the fast path may read them */
                dirs[i].given = dir[0] == '/' ? strdup(dir) : NULL;
                dirs[i].own = -1;
                dirs[i].want_register = 0;
                dirs[i].snap_valid = 0;
            }
            *out = &dirs[i];
            return 0;
        }
    if (n >= MAX_DIRS)
        return ndshm__fail(NDSHM_ENOMEM, 0, "this process uses segments in %d directories already: no room for %s",
                           MAX_DIRS, dir);
    char *real = realpath(dir, NULL);
    if (real == NULL) return ndshm__fail_errno(errno, "cannot resolve directory %s", dir);
    dir_t *d = &dirs[n];
    memset(d, 0, sizeof *d);
    d->path = real;
    d->given = dir[0] == '/' ? strdup(dir) : NULL;
    d->dev = (uint64_t)st.st_dev;
    d->ino = (uint64_t)st.st_ino;
    d->own = -1;
    atomic_store_explicit(&ndirs, n + 1, memory_order_release);
    *out = d;
    return 0;
}

/* Our id (under mu): made if need be, and registered again in every directory a fork()ed
 * child's parent had registered in. Registration failures there are retried at the next
 * ndshm__register of that directory. */
static uint64_t id_locked(void) {
    uint64_t id = atomic_load(&ndshm__self_id);
    if (id != 0) return id;
    pthread_once(&hooks_once, install_hooks);
    id = ndshm__random_id();
    self_ns = read_ns();
    unsigned n = atomic_load(&ndirs);
    int saved = errno;
    for (unsigned i = 0; i < n; i++)
        if (dirs[i].want_register) (void)register_in(&dirs[i], id);
    errno = saved;
    atomic_store(&ndshm__self_id, id);
    return id;
}

int ndshm__register(const char *dir) {
    /* fast path: this very (absolute) string was registered already */
    const char *want = dir != NULL && dir[0] != 0 ? dir : default_dir();
    if (atomic_load_explicit(&ndshm__self_id, memory_order_acquire) != 0 && want[0] == '/') {
        unsigned n = atomic_load_explicit(&ndirs, memory_order_acquire);
        for (unsigned i = 0; i < n; i++)
            if ((atomic_load(&dirs[i].registered) || dirs[i].fallback) && dirs[i].given != NULL &&
                strcmp(dirs[i].given, want) == 0)
                return 0;
    }
    pthread_mutex_lock(&mu);
    uint64_t id = id_locked();
    dir_t *d = NULL;
    int rc = find_dir(want, &d);
    if (rc == 0) rc = register_in(d, id);
    if (rc != 0 && rc != NDSHM_ENOENT) {
        /* a directory that cannot hold our table (hugetlbfs, full, another user's): the default
         * directory's stands in, which testers always look at too; the error stays if it fails */
        int saved_errno = errno;
        ndshm__error_state_t saved;
        ndshm__error_save(&saved);
        dir_t *fallback;
        if (find_dir(NULL, &fallback) == 0 && register_in(fallback, id) == 0) {
            if (d != NULL) d->fallback = 1;
            rc = 0;
        } else {
            ndshm__error_restore(&saved);
        }
        errno = saved_errno;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

int ndshm__register_path(const char *path) {
    const char *slash = path != NULL ? strrchr(path, '/') : NULL;
    if (slash == NULL) return ndshm__register(".");
    if (slash == path) return ndshm__register("/");
    size_t n = (size_t)(slash - path);
    if (n >= PATH_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "path '%.60s...' is too long", path);
    char dir[PATH_MAX];
    memcpy(dir, path, n);
    dir[n] = 0;
    return ndshm__register(dir);
}

uint64_t ndshm__self_key_slow(void) {
    pthread_mutex_lock(&mu);
    uint64_t id = id_locked();
    int any = 0;
    unsigned n = atomic_load(&ndirs);
    for (unsigned i = 0; i < n; i++) any |= atomic_load(&dirs[i].registered);
    if (!any) { /* raw memory before any segment: the default directory (best effort) */
        int saved = errno;
        dir_t *d;
        if (find_dir(NULL, &d) == 0) (void)register_in(d, id);
        errno = saved;
    }
    pthread_mutex_unlock(&mu);
    return id;
}

/* ---- looking ids up -------------------------------------------------------------------- */

/* Looks for `id` in table t: its entry index, or -1. */
static int find_entry(const table_t *t, uint64_t id) {
    uint32_t probe = atomic_load_explicit(&hdr_of(t)->max_probe, memory_order_acquire);
    if (probe > TABLE_ENTRIES) probe = TABLE_ENTRIES; /* never trust shared memory */
    uint32_t home = home_of(id);
    for (uint32_t k = 0; k < probe; k++) {
        uint32_t i = (home + k) % TABLE_ENTRIES;
        if (atomic_load_explicit(&entry_at(t, i)->id, memory_order_acquire) == id) return (int)i;
    }
    return -1;
}

/* Looks for `id` in tables [from, ntables): 1 alive, 0 dead (found, lock free), -1 not found.
 * With `where`, the table and entry found. */
static int lookup(uint64_t id, unsigned from, int *where_t, int *where_e) {
    unsigned n = atomic_load_explicit(&ntables, memory_order_acquire);
    for (unsigned t = from; t < n; t++) {
        int e = find_entry(&tables[t], id);
        if (e < 0) continue;
        if (where_t) *where_t = (int)t;
        if (where_e) *where_e = e;
        int held = lock_entry(tables[t].fd, (uint32_t)e, F_OFD_GETLK, F_WRLCK);
        if (held < 0) return 1; /* cannot tell: alive is the safe answer */
        if (held) return 1;
        /* free: dead, unless the entry was just reused for another id (then look on) */
        if (atomic_load(&entry_at(&tables[t], (uint32_t)e)->id) == id) return 0;
    }
    return -1;
}

/* Opens every table in directory `d` not open yet (under mu), if the directory may have new
 * ones since the last look. */
static void discover(dir_t *d) {
    struct stat st;
    if (stat(d->path, &st) != 0) return;
    if (d->snap_valid && st.st_mtim.tv_sec == d->snap_mtime.tv_sec && st.st_mtim.tv_nsec == d->snap_mtime.tv_nsec &&
        (int64_t)st.st_nlink == d->snap_nlink && (int64_t)st.st_size == d->snap_size)
        return;
    DIR *dp = opendir(d->path);
    if (dp == NULL) return;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (strncmp(de->d_name, TABLE_PREFIX, sizeof TABLE_PREFIX - 1) != 0) continue;
        int fd = openat(dirfd(dp), de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0) continue;
        struct stat ts;
        unsigned char *map = NULL;
        if (fstat(fd, &ts) == 0 && S_ISREG(ts.st_mode) && ts.st_size == TABLE_BYTES &&
            find_table((uint64_t)ts.st_dev, (uint64_t)ts.st_ino) < 0)
            map = map_table(fd, 0);
        if (map == NULL || add_table(fd, 0, &ts, map) < 0) {
            if (map) munmap(map, TABLE_BYTES);
            close(fd);
        }
    }
    closedir(dp);
    /* trusted next time only if no change can share this timestamp (coarse file-system clocks) */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t age = ((int64_t)now.tv_sec - st.st_mtim.tv_sec) * 1000000000LL + (now.tv_nsec - st.st_mtim.tv_nsec);
    d->snap_valid = age > SETTLED_NS;
    d->snap_mtime = st.st_mtim;
    d->snap_nlink = (int64_t)st.st_nlink;
    d->snap_size = (int64_t)st.st_size;
}

int ndshm__key_alive(uint64_t key) {
    if (key == 0) return 0;
    if (key == ndshm__self_key()) return 1;
    int r = lookup(key, 0, NULL, NULL);
    if (r >= 0) return r;
    /* not in any table open: look for tables that appeared since, then in them */
    pthread_mutex_lock(&mu);
    unsigned before = atomic_load(&ntables);
    dir_t *dflt;
    int saved = errno;
    (void)find_dir(NULL, &dflt); /* the default directory stands in for those that cannot hold a table */
    errno = saved;
    unsigned n = atomic_load(&ndirs);
    for (unsigned i = 0; i < n; i++) discover(&dirs[i]);
    pthread_mutex_unlock(&mu);
    r = lookup(key, before, NULL, NULL);
    return r > 0;
}

/* Opens the tables of directory `dir` for tests of ids found in its segments. */
int ndshm__open_dir(const char *dir) {
    /* fast path: known already by this very (absolute) string (new tables are looked for at a miss) */
    const char *want = dir != NULL && dir[0] != 0 ? dir : default_dir();
    if (want[0] == '/') {
        unsigned n = atomic_load_explicit(&ndirs, memory_order_acquire);
        for (unsigned i = 0; i < n; i++)
            if (dirs[i].given != NULL && strcmp(dirs[i].given, want) == 0) return 0;
    }
    pthread_mutex_lock(&mu);
    dir_t *d;
    int rc = find_dir(dir, &d);
    if (rc == 0) discover(d);
    pthread_mutex_unlock(&mu);
    return rc;
}

int ndshm__open_dir_of(const char *path) {
    const char *slash = path != NULL ? strrchr(path, '/') : NULL;
    if (slash == NULL) return ndshm__open_dir(".");
    if (slash == path) return ndshm__open_dir("/");
    size_t n = (size_t)(slash - path);
    if (n >= PATH_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "path '%.60s...' is too long", path);
    char dir[PATH_MAX];
    memcpy(dir, path, n);
    dir[n] = 0;
    return ndshm__open_dir(dir);
}

int ndshm__key_pid(uint64_t key, int64_t *pid, int *same_ns) {
    if (key == ndshm__self_key()) {
        *pid = getpid();
        *same_ns = 1;
        return 0;
    }
    int t = -1, e = -1;
    if (lookup(key, 0, &t, &e) < 0) {
        (void)ndshm__key_alive(key); /* looks for new tables */
        if (lookup(key, 0, &t, &e) < 0) return NDSHM_ENOENT;
    }
    entry_t *en = entry_at(&tables[t], (uint32_t)e);
    int32_t p = atomic_load(&en->pid);
    uint32_t ns = atomic_load(&en->ns);
    if (atomic_load(&en->id) != key) return NDSHM_ENOENT; /* reused meanwhile */
    *pid = p;
    *same_ns = ns == self_ns;
    return 0;
}

void ndshm__key_describe(uint64_t key, char *buf, size_t len) {
    int64_t pid;
    int same;
    if (ndshm__key_pid(key, &pid, &same) != 0)
        snprintf(buf, len, "process id %016llx (no longer in a process table)", (unsigned long long)key);
    else
        snprintf(buf, len, "pid %lld%s", (long long)pid, same ? "" : " (in another PID namespace)");
}

/* For tests: forgets this process's id as a fork()ed child does (closing every table), so the
 * next use makes a new one and registers it where the old one was. */
void ndshm__identity_renew(void) {
    pthread_mutex_lock(&mu);
    child_hook(); /* unlocks mu */
}

/* ---- public API -------------------------------------------------------------------------- */

int ndshm_process_key(const char *dir, uint64_t *key) {
    if (key == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_process_key: key is NULL");
    *key = 0;
    int rc = ndshm__register(dir);
    if (rc) return rc;
    *key = ndshm__self_key();
    return 0;
}

int ndshm_key_alive(const char *dir, uint64_t key) {
    if (key != 0 && key == ndshm__self_key()) return 1;
    int rc = ndshm__open_dir(dir);
    if (rc) return rc;
    return key == 0 ? 0 : ndshm__key_alive(key);
}

int ndshm_key_pid(const char *dir, uint64_t key, int64_t *pid, int *same_ns) {
    if (pid == NULL || same_ns == NULL) return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_key_pid: NULL argument");
    *pid = 0;
    *same_ns = 0;
    if (key == 0) return ndshm__fail(NDSHM_ENOENT, 0, "process id 0 is nobody's");
    int rc = ndshm__open_dir(dir);
    if (rc) return rc;
    if (ndshm__key_pid(key, pid, same_ns) != 0)
        return ndshm__fail(NDSHM_ENOENT, 0, "process id %016llx is in no process table of %s", (unsigned long long)key,
                           dir != NULL && dir[0] != 0 ? dir : default_dir());
    return 0;
}

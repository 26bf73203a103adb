/*
 * test_identity.c -- process ids and their liveness (csrc/identity.c): fork, threads, pid
 * reuse, 10,000 ids made and dropped, a holder in another PID namespace, the public API and the
 * refusal of segments and rings of the older formats.
 */
#include "testhelper.h"

#include "../../csrc/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>

static char dir[64];
static const char *not_run;

static void table_path(const char *d, char *out, size_t len) {
    snprintf(out, len, "%s/.ndshm-procs-%u", d, (unsigned)geteuid());
}

/* A child's key, sent over a pipe. The child then waits for a byte on `hold` (or exits at once
 * if hold is -1) before it exits. */
static pid_t child_key(int hold, uint64_t *key) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t k = 0;
        if (ndshm_process_key(dir, &k) != 0) k = 0;
        ssize_t n = write(fds[1], &k, sizeof k);
        char c;
        if (hold >= 0) n = read(hold, &c, 1);
        _exit(n >= 0 ? 0 : 1);
    }
    close(fds[1]); /* a child that dies before writing gives EOF, not a hang */
    *key = 0;
    if (read(fds[0], key, sizeof *key) != (ssize_t)sizeof *key) *key = 0;
    close(fds[0]);
    return pid;
}

TEST(self_key_registers_and_the_api_answers) {
    uint64_t k = 0, k2 = 0;
    CHECK_RC(ndshm_process_key(dir, &k), 0);
    CHECK(k != 0 && k == ndshm__self_key());
    CHECK_RC(ndshm_process_key(NULL, &k2), 0); /* the default directory too: the same id */
    CHECK(k2 == k);
    CHECK_RC(ndshm_process_key(dir, NULL), NDSHM_EINVAL);
    char path[128];
    table_path(dir, path, sizeof path);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0644 && st.st_size == 64 + 4096 * 16);
    CHECK(st.st_blocks * 512 >= st.st_size); /* reserved, no holes */
    CHECK(ndshm_key_alive(dir, k) == 1);
    CHECK(ndshm_key_alive(dir, 0) == 0);
    CHECK(ndshm_key_alive(dir, 0x123456789abcdefull) == 0); /* in no table */
    int64_t pid = 0;
    int same = -1;
    CHECK_RC(ndshm_key_pid(dir, k, &pid, &same), 0);
    CHECK(pid == getpid() && same == 1);
    CHECK_RC(ndshm_key_pid(dir, 0x123456789abcdefull, &pid, &same), NDSHM_ENOENT);
    CHECK_DETAIL("0123456789abcdef is in no process table");
    CHECK_RC(ndshm_key_pid(dir, k, NULL, &same), NDSHM_EINVAL);
    CHECK_RC(ndshm_process_key("/nonexistent-ndshm-dir", &k2), NDSHM_ENOENT);
    CHECK_DETAIL("/nonexistent-ndshm-dir: the directory does not exist");
    CHECK(ndshm_key_alive("/nonexistent-ndshm-dir", 0x1234) == NDSHM_ENOENT);
}

TEST(a_segment_registers_in_its_directory) {
    char sub[128], path[160];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(sub, 0700) == 0);
    table_path(sub, path, sizeof path);
    CHECK(access(path, F_OK) != 0);
    ndshm_queue_t *q = NULL;
    CHECK_RC(ndshm_queue_create("q", sub, 4, 64, 0, 0, &q), 0);
    CHECK(access(path, F_OK) == 0);
    ndshm_queue_close(q);
    CHECK(rmdir_tables(sub) == 0);
}

static void *thread_key(void *arg) {
    *(uint64_t *)arg = ndshm__self_key();
    return NULL;
}

TEST(threads_share_the_id) {
    enum { N = 8 };
    pthread_t t[N];
    uint64_t keys[N];
    for (int i = 0; i < N; i++) CHECK(pthread_create(&t[i], NULL, thread_key, &keys[i]) == 0);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CHECK(keys[i] == ndshm__self_key());
    }
}

TEST(a_fork_child_has_its_own_id_and_sees_its_parent_alive) {
    uint64_t me = ndshm__self_key();
    int hold[2], res[2];
    CHECK(pipe(hold) == 0 && pipe(res) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t k = ndshm__self_key();
        int ok = k != 0 && k != me && ndshm__key_alive(me) == 1 && ndshm__key_alive(k) == 1;
        ssize_t n = write(res[1], &k, sizeof k);
        n = write(res[1], &ok, sizeof ok);
        char c;
        n = read(hold[0], &c, 1);
        _exit(n == 1 ? 0 : 1);
    }
    close(res[1]);
    uint64_t k = 0;
    int ok = 0;
    CHECK(read(res[0], &k, sizeof k) == (ssize_t)sizeof k && read(res[0], &ok, sizeof ok) == (ssize_t)sizeof ok);
    CHECK(ok);
    CHECK(k != 0 && k != me);
    CHECK(ndshm__key_alive(k) == 1); /* the child runs */
    int64_t cpid;
    int same;
    CHECK(ndshm__key_pid(k, &cpid, &same) == 0 && cpid == pid && same == 1);
    CHECK(write(hold[1], "x", 1) == 1);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(ndshm__key_alive(k) == 0); /* exited and reaped */
    CHECK(ndshm__self_key() == me);  /* the parent's id did not change */
    close(hold[0]);
    close(hold[1]);
    close(res[0]);
}

/* A holder killed with kill -9 is dead at once, its lock recovered; and a child it forked that
 * never used ndshm does not keep it alive (the atfork hook closed the child's table descriptors). */
TEST(a_killed_holder_is_dead_even_with_a_child_left) {
    void *mem = shared_mem(4096);
    CHECK(mem != NULL);
    if (mem == NULL) return;
    volatile uint64_t *shared = mem;
    void *area = (char *)mem + 64;
    pid_t pid = fork();
    if (pid == 0) {
        if (ndshm_lock_acquire(area, 0) != 0) _exit(1);
        if (fork() == 0) { /* a grandchild that outlives its parent and never calls ndshm */
            shared[1] = 1; /* running: fork()'s atfork hook has closed its table descriptors */
            sleep(5);
            _exit(0);
        }
        /* until the grandchild has run (a loaded machine may not have scheduled it yet: till then it
         * holds its parent's descriptors, as fork() made them) */
        for (int i = 0; i < 5000 && shared[1] == 0; i++) usleep(1000);
        shared[0] = ndshm__self_key();
        for (;;) pause();
    }
    double t0 = now_s();
    while (shared[0] == 0 && now_s() - t0 < 5) usleep(1000);
    uint64_t k = shared[0];
    CHECK(k != 0 && ndshm__key_alive(k) == 1);
    CHECK_RC(ndshm_lock_acquire(area, 0), NDSHM_EBUSY);
    char want[64];
    snprintf(want, sizeof want, "is held by pid %d", (int)pid);
    CHECK_DETAIL(want);
    CHECK(strstr(ndshm_last_detail(), "namespace") == NULL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    CHECK(ndshm__key_alive(k) == 0);
    CHECK_RC(ndshm_lock_acquire(area, 0), NDSHM_EOWNERDEAD);
    CHECK_DETAIL(want + strlen("is held by "));
    CHECK_DETAIL("died holding it");
    CHECK_RC(ndshm_lock_release(area), 0);
    munmap(mem, 4096);
}

/* pid reuse: a reaped child's pid given to a new child (as root, through ns_last_pid; else as
 * many forks as it takes, bounded) leaves the first child's id dead and the second's alive. */
TEST(pid_reuse_never_revives_a_dead_id) {
    uint64_t k1 = 0, k2 = 0;
    pid_t p1 = child_key(-1, &k1);
    CHECK(p1 > 0 && k1 != 0);
    waitpid(p1, NULL, 0);
    CHECK(ndshm__key_alive(k1) == 0);
    int hold[2];
    CHECK(pipe(hold) == 0);
    pid_t p2 = -1;
    for (int attempt = 0; attempt < 200 && p2 != p1; attempt++) {
        if (p2 > 0) {
            CHECK(write(hold[1], "x", 1) == 1);
            waitpid(p2, NULL, 0);
        }
        int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%d", (int)p1 - 1);
            if (write(fd, buf, (size_t)n) != n) { /* not root: plain forks */
            }
            close(fd);
        }
        p2 = child_key(hold[0], &k2);
    }
    if (p2 != p1) not_run = "no child got the reaped child's pid in 200 forks (ns_last_pid not writable?)";
    else printf("  pid %d reused\n", (int)p1);
    CHECK(k2 != 0 && k2 != k1);
    CHECK(ndshm__key_alive(k2) == 1);
    CHECK(ndshm__key_alive(k1) == 0); /* same pid, other process: the dead id stays dead */
    CHECK(write(hold[1], "x", 1) == 1);
    waitpid(p2, NULL, 0);
    CHECK(ndshm__key_alive(k2) == 0);
    close(hold[0]);
    close(hold[1]);
}

/* 10,000 ids made and dropped (as a fork()ed child drops its parent's): every dropped one is
 * dead at once, every new one alive, and the table never fills up with the dead. */
TEST(ten_thousand_ids_claimed_and_released) {
    int res[2];
    CHECK(pipe(res) == 0);
    pid_t pid = fork();
    if (pid == 0) { /* in a child, so the tests' own id is kept */
        int bad = 0;
        uint64_t k = 0;
        if (ndshm_process_key(dir, &k) != 0) bad++;
        for (int i = 0; i < 10000; i++) {
            ndshm__identity_renew();
            uint64_t n = 0;
            if (ndshm_process_key(dir, &n) != 0) {
                bad++;
                break;
            }
            if (n == k || n == 0 || ndshm__key_alive(k) != 0 || ndshm__key_alive(n) != 1) bad++;
            if (i % 1000 == 999) { /* and as another process sees them (we cannot see our own locks) */
                pid_t g = fork();
                if (g == 0) _exit(ndshm_key_alive(dir, n) == 1 && ndshm_key_alive(dir, k) == 0 ? 0 : 1);
                int st;
                if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
            }
            k = n;
        }
        ssize_t w = write(res[1], &bad, sizeof bad);
        _exit(w == (ssize_t)sizeof bad ? 0 : 1);
    }
    close(res[1]);
    int bad = -1;
    CHECK(read(res[0], &bad, sizeof bad) == (ssize_t)sizeof bad);
    CHECK(bad == 0);
    waitpid(pid, NULL, 0);
    char path[128];
    table_path(dir, path, sizeof path);
    int fd = open(path, O_RDONLY);
    uint32_t max_probe = UINT32_MAX;
    CHECK(fd >= 0 && pread(fd, &max_probe, 4, 20) == 4);
    printf("  10000 ids: the longest search in the table is %u entries\n", max_probe);
    CHECK(max_probe < 64); /* dead entries were reused: no cluster grew */
    close(fd);
    close(res[0]);
}

/* A lock held by a live process in another PID namespace is not taken (its pid there is 1, as
 * for every container's first process); once it is killed, the lock is recovered. */
TEST(a_holder_in_another_pid_namespace) {
    void *mem = shared_mem(4096);
    CHECK(mem != NULL);
    if (mem == NULL) return;
    volatile int64_t *shared = mem; /* [0] outer pid of the holder, [1] its id, [2] its pid inside, [3] failure */
    ndshm_segment_params_t p;
    memset(&p, 0, sizeof p);
    p.kind = NDSHM_KIND_NAMED;
    p.name = "ns-lock";
    p.dir = dir;
    memcpy(p.layout.typestr, "|u1", 4);
    p.layout.itemsize = 1;
    p.layout.ndim = 1;
    p.layout.shape[0] = 64;
    p.layout.strides[0] = 1;
    ndshm_segment_t *seg = NULL;
    CHECK_RC(ndshm_segment_create(&p, &seg), 0);
    void *area = NULL;
    CHECK_RC(ndshm_segment_sync(seg, 0, &area), 0);
    pid_t mid = fork();
    if (mid == 0) {
        if (unshare(CLONE_NEWPID) != 0) {
            shared[3] = errno;
            _exit(0);
        }
        pid_t inner = fork();
        if (inner == 0) { /* pid 1 of a new PID namespace */
            ndshm_segment_t *s = NULL;
            void *a = NULL;
            if (ndshm_segment_attach(NDSHM_KIND_NAMED, "ns-lock", dir, 0, &s) != 0 || ndshm_segment_sync(s, 0, &a) != 0 ||
                ndshm_lock_acquire(a, 0) != 0)
                _exit(2);
            shared[2] = getpid();
            shared[1] = (int64_t)ndshm__self_key();
            for (;;) pause();
        }
        shared[0] = inner;
        int st;
        waitpid(inner, &st, 0);
        _exit(0);
    }
    double t0 = now_s();
    while (shared[1] == 0 && shared[3] == 0 && now_s() - t0 < 5) usleep(1000);
    if (shared[3] != 0) {
        not_run = "unshare(CLONE_NEWPID) is refused here (needs root or CAP_SYS_ADMIN)";
        waitpid(mid, NULL, 0);
    } else {
        uint64_t k = (uint64_t)shared[1];
        CHECK(k != 0 && shared[2] == 1);
        CHECK(ndshm_key_alive(dir, k) == 1);
        int64_t pid = 0;
        int same = 1;
        CHECK_RC(ndshm_key_pid(dir, k, &pid, &same), 0);
        CHECK(pid == 1 && same == 0);
        CHECK_RC(ndshm_lock_acquire(area, 0), NDSHM_EBUSY);
        CHECK_DETAIL("is held by pid 1 (in another PID namespace)");
        CHECK_RC(ndshm_lock_acquire(area, 0.1), NDSHM_ETIMEDOUT);
        CHECK(ndshm_lock_state(area) == 2);
        kill((pid_t)shared[0], SIGKILL);
        wait_or_kill(mid, 5);
        CHECK(ndshm_key_alive(dir, k) == 0);
        CHECK(ndshm_lock_state(area) == 3);
        CHECK_RC(ndshm_lock_acquire(area, 0), NDSHM_EOWNERDEAD);
        CHECK_DETAIL("pid 1 (in another PID namespace) died holding it");
        CHECK_RC(ndshm_lock_release(area), 0);
    }
    ndshm_segment_close(seg);
    munmap(mem, 4096);
}

/* Segments and rings of the formats before process ids are refused, naming their version. */
TEST(older_formats_are_refused_by_version) {
    ndshm_segment_params_t p;
    memset(&p, 0, sizeof p);
    p.kind = NDSHM_KIND_NAMED;
    memcpy(p.layout.typestr, "|u1", 4);
    p.layout.itemsize = 1;
    p.layout.ndim = 1;
    p.layout.shape[0] = 64;
    p.layout.strides[0] = 1;
    unsigned char *buf = calloc(1, 8192);
    CHECK(buf != NULL);
    if (buf == NULL) return;
    ndshm__header_write(buf, &p, 4096, 64, 64, getpid(), 0);
    ndshm__header_publish(buf);
    ndshm_segment_info_t *info = calloc(1, sizeof *info);
    CHECK_RC(ndshm__header_validate(buf, 896, 8192, info), 0);
    CHECK(info->format_version == 2);
    uint32_t v1 = 1;
    memcpy(buf + 8, &v1, 4);
    ndshm__header_reseal(buf, 896);
    CHECK_RC(ndshm__header_validate(buf, 896, 8192, info), NDSHM_ECORRUPT);
    CHECK_DETAIL("header format version 1 was written by an older ndshm; this one reads version 2 only");
    CHECK_DETAIL("recreate the segment with this version");
    free(info);
    free(buf);

    uint64_t need;
    CHECK_RC(ndshm_queue_ring_bytes(4, 64, &need), 0);
    void *mem = NULL;
    CHECK(posix_memalign(&mem, 64, need) == 0);
    CHECK_RC(ndshm_queue_init_raw(mem, need, 4, 64), 0);
    uint32_t *version = (uint32_t *)((char *)mem + 8);
    CHECK(*version == 3);
    *version = 2;
    ndshm_queue_t *q = NULL;
    CHECK_RC(ndshm_queue_open_raw(mem, need, &q), NDSHM_ECORRUPT);
    CHECK_DETAIL("ring version 2 was made by an older ndshm; this one reads version 3 only");
    CHECK_DETAIL("recreate the queue with this version");
    free(mem);
    CHECK_RC(ndshm_bcast_ring_bytes(4, 64, &need), 0);
    CHECK(posix_memalign(&mem, 64, need) == 0);
    CHECK_RC(ndshm_bcast_init_raw(mem, need, 4, 64, NDSHM_BCAST_BLOCK), 0);
    version = (uint32_t *)((char *)mem + 8);
    CHECK(*version == 2);
    *version = 1;
    ndshm_bcast_t *b = NULL;
    CHECK_RC(ndshm_bcast_open_raw(mem, need, &b), NDSHM_ECORRUPT);
    CHECK_DETAIL("broadcast ring version 1 was made by an older ndshm; this one reads version 2 only");
    free(mem);
}

/* A table under our name that is not ours (planted by another user, or a symbolic link) is
 * never used: the next name is. */
TEST(a_foreign_file_under_the_table_name_is_passed_over) {
    char sub[128], path[160], alt[170];
    snprintf(sub, sizeof sub, "%s/planted", dir);
    CHECK(mkdir(sub, 0777) == 0);
    table_path(sub, path, sizeof path);
    CHECK(symlink("/etc/passwd", path) == 0);
    uint64_t k = 0;
    CHECK_RC(ndshm_process_key(sub, &k), 0);
    snprintf(alt, sizeof alt, "%s.1", path);
    struct stat st;
    CHECK(lstat(alt, &st) == 0 && S_ISREG(st.st_mode));
    CHECK(ndshm_key_alive(sub, k) == 1);
    unlink(path);
    unlink(alt);
    CHECK(rmdir(sub) == 0);
}

/* Processes of two users in one directory: each registers in its own table (".ndshm-procs-<uid>",
 * writable by its owner only), and each tests the other's ids through the other's table, which
 * it opens read-only. */
TEST(another_users_process_is_tested_through_its_table) {
    if (geteuid() != 0) {
        not_run = "switching to another user needs root";
        return;
    }
    char sub[128];
    snprintf(sub, sizeof sub, "%s/shared", dir);
    CHECK(mkdir(sub, 0777) == 0 && chmod(sub, 01777) == 0 && chmod(dir, 0711) == 0); /* reachable for nobody */
    uint64_t me = 0;
    CHECK_RC(ndshm_process_key(sub, &me), 0);
    int res[2], hold[2];
    CHECK(pipe(res) == 0 && pipe(hold) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t k = 0;
        int ok = setgid(65534) == 0 && setuid(65534) == 0 && ndshm_process_key(sub, &k) == 0 &&
                 ndshm_key_alive(sub, me) == 1; /* root's id, through root's table */
        if (!ok) k = 0;
        ssize_t w = write(res[1], &k, sizeof k);
        char c;
        w = read(hold[0], &c, 1);
        _exit(w == 1 ? 0 : 1);
    }
    close(res[1]);
    uint64_t k = 0;
    CHECK(read(res[0], &k, sizeof k) == (ssize_t)sizeof k);
    CHECK(k != 0);
    char path[160];
    snprintf(path, sizeof path, "%s/.ndshm-procs-65534", sub);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_uid == 65534 && (st.st_mode & 0777) == 0644);
    CHECK(ndshm_key_alive(sub, k) == 1);
    int64_t p = 0;
    int same = 0;
    CHECK_RC(ndshm_key_pid(sub, k, &p, &same), 0);
    CHECK(p == pid && same == 1);
    CHECK(write(hold[1], "x", 1) == 1);
    waitpid(pid, NULL, 0);
    CHECK(ndshm_key_alive(sub, k) == 0);
    close(res[0]);
    close(hold[0]);
    close(hold[1]);
    CHECK(chmod(dir, 0700) == 0);
    CHECK(rmdir_tables(sub) == 0);
}

/* Threads testing a live process's id while others register in new directories (tables added
 * to the list that the tests read without a lock) and others look for ids in no table (new
 * tables looked for): a live process is never reported dead. */
static uint64_t stress_live;
static _Atomic int stress_false_dead, stress_errors;

static void *stress_tester(void *arg) {
    (void)arg;
    for (int i = 0; i < 3000; i++)
        if (ndshm__key_alive(stress_live) != 1) atomic_fetch_add(&stress_false_dead, 1);
    return NULL;
}

static void *stress_registrar(void *arg) {
    int base = *(int *)arg;
    for (int i = 0; i < 20; i++) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s/stress-%d-%d", dir, base, i);
        uint64_t k;
        if (mkdir(sub, 0700) != 0 || ndshm_process_key(sub, &k) != 0) atomic_fetch_add(&stress_errors, 1);
        if (ndshm__key_alive(0x0badc0de00000000ull + (uint64_t)i) != 0) atomic_fetch_add(&stress_errors, 1);
    }
    return NULL;
}

TEST(concurrent_tests_and_registrations_never_report_the_living_dead) {
    int hold[2];
    CHECK(pipe(hold) == 0);
    pid_t pid = child_key(hold[0], &stress_live);
    CHECK(pid > 0 && stress_live != 0);
    pthread_t t[6];
    int bases[2] = {0, 1};
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, stress_tester, NULL) == 0);
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[4 + i], NULL, stress_registrar, &bases[i]) == 0);
    for (int i = 0; i < 6; i++) pthread_join(t[i], NULL);
    CHECK(atomic_load(&stress_false_dead) == 0);
    CHECK(atomic_load(&stress_errors) == 0);
    CHECK(write(hold[1], "x", 1) == 1);
    waitpid(pid, NULL, 0);
    CHECK(ndshm__key_alive(stress_live) == 0);
    close(hold[0]);
    close(hold[1]);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 20; i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s/stress-%d-%d", dir, b, i);
            CHECK(rmdir_tables(sub) == 0);
        }
}

static void not_run_check(const char *name) {
    if (not_run == NULL) return;
    th_passed--;
    fprintf(stderr, "NOT RUN %s: %s\n", name, not_run);
    if (getenv("CI") != NULL && *getenv("CI") != '\0') {
        th_failed++;
        fprintf(stderr, "FAIL %s: CI must be able to run it\n", name);
    }
    not_run = NULL;
}

int main(void) {
    snprintf(dir, sizeof dir, "/dev/shm/ndshm-idtest-%d", (int)getpid());
    if (mkdir(dir, 0700) != 0) {
        perror(dir);
        return 1;
    }
    RUN(self_key_registers_and_the_api_answers);
    RUN(a_segment_registers_in_its_directory);
    RUN(threads_share_the_id);
    RUN(a_fork_child_has_its_own_id_and_sees_its_parent_alive);
    RUN(concurrent_tests_and_registrations_never_report_the_living_dead);
    RUN(a_killed_holder_is_dead_even_with_a_child_left);
    RUN(pid_reuse_never_revives_a_dead_id);
    not_run_check("pid_reuse_never_revives_a_dead_id");
    RUN(ten_thousand_ids_claimed_and_released);
    RUN(a_holder_in_another_pid_namespace);
    not_run_check("a_holder_in_another_pid_namespace");
    RUN(older_formats_are_refused_by_version);
    RUN(a_foreign_file_under_the_table_name_is_passed_over);
    RUN(another_users_process_is_tested_through_its_table);
    not_run_check("another_users_process_is_tested_through_its_table");
    if (rmdir_tables(dir) != 0) {
        perror(dir);
        th_failed++;
    }
    return SUMMARY();
}

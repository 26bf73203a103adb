/*
 * test_pool.c -- the shared-memory pool: carving, freeing, coalescing, generations, a full pool,
 * hand-overs, dead processes' pins and blocks, a lock holder that dies mid-update, and random
 * carve/free sequences in several processes checked for overlap.
 */
#include <stdint.h>

#include "testhelper.h"

#define CAP (1u << 20)
#define NREC 256u

/* A raw pool in MAP_SHARED anonymous memory (shared with fork()ed children). */
static void *raw_pool(uint64_t cap, uint32_t nrec, uint64_t *bytes) {
    CHECK_RC(ndshm_pool_bytes(cap, nrec, bytes), 0);
    void *mem = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED);
    CHECK_RC(ndshm_pool_init_raw(mem, *bytes, cap, nrec), 0);
    return mem;
}

static ndshm_pool_stats_t pstats(ndshm_pool_t *p) {
    ndshm_pool_stats_t s;
    memset(&s, 0, sizeof s);
    CHECK_RC(ndshm_pool_stats(p, &s), 0);
    return s;
}

TEST(bad_arguments) {
    uint64_t b;
    CHECK_RC(ndshm_pool_bytes(0, 16, &b), NDSHM_EINVAL);
    CHECK_RC(ndshm_pool_bytes(100, 16, &b), NDSHM_EINVAL);
    CHECK_RC(ndshm_pool_bytes(64, 1, &b), NDSHM_EINVAL);
    CHECK_RC(ndshm_pool_bytes(UINT64_MAX & ~63ull, 16, &b), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_pool_bytes(64, 16, NULL), NDSHM_EINVAL);
    unsigned char *mem = aligned_alloc(64, 65536);
    CHECK_RC(ndshm_pool_init_raw(mem, 100, 4096, 16), NDSHM_EINVAL);
    CHECK_RC(ndshm_pool_init_raw(mem + 8, 65536, 4096, 16), NDSHM_EINVAL);
    ndshm_pool_t *p = NULL;
    memset(mem, 0, 65536);
    CHECK_RC(ndshm_pool_open_raw(mem, 65536, &p), NDSHM_EBUSY); /* no magic yet */
    memset(mem, 0xAB, 65536);
    CHECK_RC(ndshm_pool_open_raw(mem, 65536, &p), NDSHM_ECORRUPT);
    CHECK(p == NULL);
    CHECK_RC(ndshm_pool_carve(NULL, 1, NULL), NDSHM_EINVAL);
    ndshm_pool_close(NULL);
    free(mem);
}

TEST(carve_free_coalesce) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t b[10];
    for (int i = 0; i < 10; i++) {
        CHECK_RC(ndshm_pool_carve(p, (uint64_t)(i * 1000 + 1), &b[i]), 0);
        CHECK(b[i].size >= (uint64_t)(i * 1000 + 1) && b[i].size % 64 == 0 && b[i].data % 64 == 0);
        memset((void *)b[i].data, i, b[i].size);
    }
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 10; j++)
            if (i != j) CHECK(b[i].offset + b[i].size <= b[j].offset || b[j].offset + b[j].size <= b[i].offset);
    ndshm_pool_stats_t s = pstats(p);
    CHECK(s.live_blocks == 10 && s.capacity == CAP && s.used > 45000 && s.high_water == s.used);
    CHECK_RC(ndshm_pool_check(p), 0);
    for (int i = 0; i < 10; i += 2) CHECK_RC(ndshm_pool_unpin(p, b[i].index, b[i].generation), 0);
    CHECK_RC(ndshm_pool_check(p), 0);
    CHECK(pstats(p).free_extents >= 5);
    for (int i = 1; i < 10; i += 2) CHECK_RC(ndshm_pool_unpin(p, b[i].index, b[i].generation), 0);
    s = pstats(p);
    CHECK(s.live_blocks == 0 && s.used == 0 && s.free_extents == 1 && s.largest_free == CAP);
    CHECK(s.carves == 10 && s.frees == 10);
    CHECK_RC(ndshm_pool_check(p), 0);
    /* unpinning again: not pinned here */
    CHECK_RC(ndshm_pool_unpin(p, b[0].index, b[0].generation), NDSHM_ENOENT);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(generations_refuse_freed_blocks) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t a, b, c;
    CHECK_RC(ndshm_pool_carve(p, 4096, &a), 0);
    CHECK_RC(ndshm_pool_pin(p, a.index, a.generation, a.offset, 4096, 0, &b), 0);
    CHECK(b.data == a.data && b.generation == a.generation);
    CHECK_RC(ndshm_pool_unpin(p, a.index, a.generation), 0);
    CHECK(pstats(p).live_blocks == 1); /* one pin left */
    CHECK_RC(ndshm_pool_unpin(p, a.index, a.generation), 0);
    CHECK(pstats(p).live_blocks == 0);
    CHECK_RC(ndshm_pool_pin(p, a.index, a.generation, a.offset, 4096, 0, &b), NDSHM_ENOENT);
    CHECK_DETAIL("freed since");
    CHECK_RC(ndshm_pool_carve(p, 4096, &c), 0); /* the same place, a new generation */
    CHECK(c.offset == a.offset && c.generation != a.generation);
    CHECK_RC(ndshm_pool_pin(p, a.index, a.generation, a.offset, 4096, 0, &b), NDSHM_ENOENT);
    CHECK_RC(ndshm_pool_pin(p, c.index, c.generation, c.offset + 64, 64, 0, &b), NDSHM_ENOENT);
    CHECK_RC(ndshm_pool_pin(p, c.index, c.generation, c.offset, c.size + 1, 0, &b), NDSHM_ENOENT);
    CHECK_RC(ndshm_pool_pin(p, 1u << 30, 1, 0, 1, 0, &b), NDSHM_ENOENT);
    CHECK_RC(ndshm_pool_unpin(p, c.index, c.generation), 0);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(full_pool) {
    uint64_t bytes;
    void *mem = raw_pool(64 * 1024, 8, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t b[8];
    CHECK_RC(ndshm_pool_carve(p, 65 * 1024, &b[0]), NDSHM_ENOSPC);
    CHECK_DETAIL("65536 bytes");
    int n = 0;
    while (n < 8 && ndshm_pool_carve(p, 10000, &b[n]) == 0) n++;
    CHECK(n == 6); /* 6 x 10048 fit in 65536 */
    CHECK_RC(ndshm_pool_carve(p, 10000, &b[7]), NDSHM_ENOSPC);
    CHECK_DETAIL("no free range for a block of 10000 bytes");
    for (int i = 0; i < n; i++) CHECK_RC(ndshm_pool_unpin(p, b[i].index, b[i].generation), 0);
    /* more blocks than records: 7 blocks and the free rest take all 8 records; an 8th block may
     * not swallow the rest (more than a quarter of its request), one that nearly fills it may */
    n = 0;
    while (n < 8 && ndshm_pool_carve(p, 64, &b[n]) == 0) n++;
    CHECK(n == 7);
    CHECK_RC(ndshm_pool_carve(p, 64, &b[7]), NDSHM_ENOSPC);
    CHECK_DETAIL("no block record left");
    CHECK_RC(ndshm_pool_carve(p, 64 * 1024 - 7 * 64 - 64, &b[7]), 0);
    CHECK(b[7].size == 64 * 1024 - 7 * 64);
    n = 8;
    CHECK_RC(ndshm_pool_check(p), 0);
    for (int i = 0; i < n; i++) CHECK_RC(ndshm_pool_unpin(p, b[i].index, b[i].generation), 0);
    CHECK(pstats(p).free_extents == 1);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(dead_process_blocks_and_pins_come_back) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t mine, got;
    CHECK_RC(ndshm_pool_carve(p, 1000, &mine), 0);
    int fd[2];
    CHECK(pipe(fd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_pool_t *q = NULL;
        ndshm_pool_block_t b;
        if (ndshm_pool_open_raw(mem, bytes, &q)) _exit(1);
        if (ndshm_pool_carve(q, 5000, &b)) _exit(2);      /* its own */
        if (ndshm_pool_pin(q, mine.index, mine.generation, mine.offset, 1000, 0, &got)) _exit(3); /* the parent's */
        if (write(fd[1], &b, sizeof b) != (ssize_t)sizeof b) _exit(4);
        pause(); /* killed with SIGKILL: no close */
        _exit(0);
    }
    ndshm_pool_block_t theirs;
    CHECK(read(fd[0], &theirs, sizeof theirs) == (ssize_t)sizeof theirs);
    CHECK(pstats(p).live_blocks == 2 && pstats(p).procs == 2);
    /* the parent lets go of its block: the child's pin keeps it */
    CHECK_RC(ndshm_pool_unpin(p, mine.index, mine.generation), 0);
    CHECK(pstats(p).live_blocks == 2);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    uint32_t released = 0;
    CHECK_RC(ndshm_pool_reclaim(p, &released), 0);
    CHECK(released == 1);
    ndshm_pool_stats_t s = pstats(p);
    CHECK(s.live_blocks == 0 && s.procs == 1 && s.free_extents == 1 && s.reclaimed == 1);
    CHECK_RC(ndshm_pool_pin(p, theirs.index, theirs.generation, theirs.offset, 1, 0, &got), NDSHM_ENOENT);
    CHECK_RC(ndshm_pool_check(p), 0);
    close(fd[0]);
    close(fd[1]);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(hand_over_keeps_a_block_until_received) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t b, got;
    CHECK_RC(ndshm_pool_carve(p, 100, &b), 0);
    memcpy((void *)b.data, "hello", 6);
    CHECK_RC(ndshm_pool_send(p, b.index, b.generation), 0);
    CHECK_RC(ndshm_pool_unpin(p, b.index, b.generation), 0); /* the sender is done */
    CHECK(pstats(p).live_blocks == 1 && pstats(p).in_transit == 1);
    CHECK_RC(ndshm_pool_send(p, b.index, b.generation), NDSHM_ENOENT); /* not pinned here any more */
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_pool_t *q = NULL;
        if (ndshm_pool_open_raw(mem, bytes, &q)) _exit(1);
        if (ndshm_pool_pin(q, b.index, b.generation, b.offset, 100, 1, &got)) _exit(2);
        if (strcmp((char *)got.data, "hello") != 0) _exit(3);
        ndshm_pool_close(q); /* its pin goes: the block is free */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ndshm_pool_stats_t s = pstats(p);
    CHECK(s.live_blocks == 0 && s.in_transit == 0);
    /* a dead sender's outstanding hand-over is dropped by reclaim */
    pid = fork();
    if (pid == 0) {
        ndshm_pool_t *q = NULL;
        ndshm_pool_block_t c;
        if (ndshm_pool_open_raw(mem, bytes, &q) || ndshm_pool_carve(q, 100, &c) || ndshm_pool_send(q, c.index, c.generation) ||
            ndshm_pool_unpin(q, c.index, c.generation))
            _exit(1);
        _exit(0); /* no close */
    }
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(pstats(p).live_blocks == 1);
    CHECK_RC(ndshm_pool_reclaim(p, NULL), 0);
    CHECK(pstats(p).live_blocks == 0);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(lock_holder_dies_mid_update) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_block_t b[4];
    for (int i = 0; i < 4; i++) CHECK_RC(ndshm_pool_carve(p, 3000, &b[i]), 0);
    CHECK_RC(ndshm_pool_unpin(p, b[1].index, b[1].generation), 0);
    pid_t pid = fork();
    if (pid == 0) {
        /* the lock (64 bytes at offset 64 of the header) taken, then bins and links trampled */
        if (ndshm_lock_acquire((char *)mem + 64, 1.0)) _exit(1);
        memset((char *)mem + 192, 0x5A, 1000 - 192); /* counters, bins, unused list */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ndshm_pool_block_t c;
    CHECK_RC(ndshm_pool_carve(p, 3000, &c), 0); /* rebuilt from the USED records */
    CHECK_RC(ndshm_pool_check(p), 0);
    ndshm_pool_stats_t s = pstats(p);
    CHECK(s.live_blocks == 4 && s.used == 4 * 3008);
    CHECK(c.offset + c.size <= b[0].offset || c.offset >= b[0].offset + b[0].size);
    for (int i = 0; i < 4; i++)
        if (i != 1) CHECK_RC(ndshm_pool_unpin(p, b[i].index, b[i].generation), 0);
    CHECK_RC(ndshm_pool_unpin(p, c.index, c.generation), 0);
    CHECK(pstats(p).free_extents == 1);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

/* Four processes carve and free at random, each block filled with its owner's pattern and checked
 * before it is freed: any overlap between live blocks shows as a wrong byte. */
TEST(concurrent_random_carve_free) {
    uint64_t bytes;
    void *mem = raw_pool(4u << 20, 4096, &bytes);
    pid_t pids[4];
    for (int w = 0; w < 4; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            ndshm_pool_t *q = NULL;
            if (ndshm_pool_open_raw(mem, bytes, &q)) _exit(1);
            ndshm_pool_block_t live[64];
            unsigned char tag[64];
            int n = 0;
            unsigned seed = (unsigned)(w * 7919 + 1);
            for (int it = 0; it < 20000; it++) {
                if (n < 64 && (n == 0 || rand_r(&seed) % 2)) {
                    uint64_t size = 1 + rand_r(&seed) % (rand_r(&seed) % 8 ? 2000 : 60000);
                    int rc = ndshm_pool_carve(q, size, &live[n]);
                    if (rc == NDSHM_ENOSPC) continue;
                    if (rc) _exit(2);
                    tag[n] = (unsigned char)(w * 64 + it % 61 + 1);
                    memset((void *)live[n].data, tag[n], live[n].size);
                    n++;
                } else {
                    int k = (int)(rand_r(&seed) % (unsigned)n);
                    const unsigned char *d = (const unsigned char *)live[k].data;
                    for (uint64_t i = 0; i < live[k].size; i++)
                        if (d[i] != tag[k]) _exit(3);
                    if (ndshm_pool_unpin(q, live[k].index, live[k].generation)) _exit(4);
                    live[k] = live[n - 1];
                    tag[k] = tag[n - 1];
                    n--;
                }
            }
            if (ndshm_pool_check(q)) _exit(5);
            ndshm_pool_close(q);
            _exit(0);
        }
    }
    for (int w = 0; w < 4; w++) {
        int st;
        waitpid(pids[w], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    ndshm_pool_stats_t s = pstats(p);
    CHECK(s.live_blocks == 0 && s.free_extents == 1 && s.carves == s.frees && s.carves > 10000);
    ndshm_pool_close(p);
    munmap(mem, bytes);
}

TEST(named_pool) {
    char name[64];
    snprintf(name, sizeof name, "ctest-pool-%d", (int)getpid());
    ndshm_pool_t *p = NULL, *q = NULL;
    CHECK_RC(ndshm_pool_create(name, NULL, 100000, 0, 0600, NDSHM_SEG_POPULATE, &p), 0);
    CHECK_RC(ndshm_pool_create(name, NULL, 100000, 0, 0600, 0, &q), NDSHM_EEXIST);
    CHECK_RC(ndshm_pool_attach(name, NULL, 0, &q), 0);
    ndshm_pool_stats_t a = pstats(p), b = pstats(q);
    CHECK(a.pool_id == b.pool_id && a.capacity == 100032 && a.max_blocks == 256);
    ndshm_pool_block_t x, y;
    CHECK_RC(ndshm_pool_carve(p, 10, &x), 0);
    CHECK_RC(ndshm_pool_pin(q, x.index, x.generation, x.offset, 10, 0, &y), 0);
    CHECK_RC(ndshm_pool_unpin(q, y.index, y.generation), 0);
    CHECK_RC(ndshm_pool_unpin(p, x.index, x.generation), 0);
    ndshm_pool_close(q);
    /* an array segment is no pool */
    ndshm_pool_close(p);
    CHECK_RC(ndshm_pool_attach(name, NULL, 0, &q), NDSHM_ENOENT); /* the creator's close unlinked it */
    CHECK_RC(ndshm_pool_create(name, NULL, 100000, 0, 0600, 0xFFFF, &q), NDSHM_EINVAL);
}

TEST(two_handles_of_one_process_pin_apart) {
    uint64_t bytes;
    void *mem = raw_pool(CAP, NREC, &bytes);
    ndshm_pool_t *p = NULL, *q = NULL;
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &p), 0);
    CHECK_RC(ndshm_pool_open_raw(mem, bytes, &q), 0);
    ndshm_pool_block_t a, b;
    CHECK_RC(ndshm_pool_carve(p, 100, &a), 0);
    CHECK_RC(ndshm_pool_pin(q, a.index, a.generation, a.offset, 100, 0, &b), 0);
    CHECK(pstats(p).procs == 2);
    ndshm_pool_close(p); /* drops p's pin and slot only */
    CHECK(pstats(q).live_blocks == 1 && pstats(q).procs == 1);
    CHECK_RC(ndshm_pool_unpin(q, b.index, b.generation), 0);
    CHECK(pstats(q).live_blocks == 0);
    ndshm_pool_close(q);
    munmap(mem, bytes);
}

int main(void) {
    RUN(bad_arguments);
    RUN(carve_free_coalesce);
    RUN(generations_refuse_freed_blocks);
    RUN(full_pool);
    RUN(dead_process_blocks_and_pins_come_back);
    RUN(hand_over_keeps_a_block_until_received);
    RUN(lock_holder_dies_mid_update);
    RUN(concurrent_random_carve_free);
    RUN(named_pool);
    RUN(two_handles_of_one_process_pin_apart);
    return SUMMARY();
}

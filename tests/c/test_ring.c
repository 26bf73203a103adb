/*
 * test_ring.c -- the pieces the queue and broadcast rings share (csrc/ring.h, ring.c), tested
 * directly: the waiter's deadline, spinning and sleeping, wake(); the claim records and their
 * liveness checks; the message descriptor's checks, writing and (untrusted) reading; a ring
 * header's initialisation and validation for a kind of ring; the named segment of either ring
 * (one create/attach with the same checks and details for both); a ring header read from a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring.h"
#include "testhelper.h"

/* ---- waiting ------------------------------------------------------------------------- */

TEST(retry_expired_looks_at_the_clock_every_1024th_retry) {
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, 0); /* timeout 0: the first look at the clock gives up */
    int expired_at = -1;
    for (int i = 1; i <= 4096 && expired_at < 0; i++)
        if (ndshm__ring_retry_expired(&w)) expired_at = i;
    CHECK(expired_at == 1024);
    ndshm__ring_waiter_init(&w, -1); /* no deadline: never */
    bool any = false;
    for (int i = 0; i < 10000; i++) any |= ndshm__ring_retry_expired(&w);
    CHECK(!any);
    ndshm__ring_waiter_init(&w, 60); /* far away: not yet */
    any = false;
    for (int i = 0; i < 10000; i++) any |= ndshm__ring_retry_expired(&w);
    CHECK(!any);
    CHECK(w.deadline > ndshm__now_ns()); /* fixed at the first look */
}

TEST(wait_times_out_at_the_deadline_after_spinning_then_sleeping) {
    _Atomic uint32_t word = 7, waiters = 0;
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, 0.05);
    double t0 = now_s();
    long rounds = 0;
    int rc;
    while ((rc = ndshm__ring_wait(&w, &word, &waiters, 7)) == 0) rounds++;
    double took = now_s() - t0;
    CHECK(rc == ETIMEDOUT);
    CHECK(took >= 0.049 && took < 2.0);
    CHECK(w.spin_until == 0); /* it got past spinning to the futex */
    CHECK(rounds > 8);        /* it spun first */
    CHECK(atomic_load(&waiters) == 0);
}

TEST(wait_shares_one_deadline_with_retry_expired) {
    _Atomic uint32_t word = 0, waiters = 0;
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, 0.05);
    for (int i = 0; i < 1024; i++) CHECK(!ndshm__ring_retry_expired(&w)); /* fixes the deadline now */
    int64_t deadline = w.deadline;
    CHECK(deadline > 0 && deadline != INT64_MAX);
    while (ndshm__ring_wait(&w, &word, &waiters, 0) == 0) {
    }
    CHECK(w.deadline == deadline);
    CHECK(ndshm__now_ns() >= deadline);
}

typedef struct {
    _Atomic uint32_t word, waiters;
} wake_pair_t;

static void *wake_later(void *arg) {
    wake_pair_t *p = arg;
    struct timespec ts = {0, 30 * 1000 * 1000};
    nanosleep(&ts, NULL); /* past the 100 us of spinning: the waiter sleeps on the futex */
    ndshm__ring_wake(&p->word, &p->waiters);
    return NULL;
}

TEST(wake_ends_a_sleeping_wait) {
    wake_pair_t p = {0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wake_later, &p) == 0);
    ndshm__ring_waiter_t w;
    ndshm__ring_waiter_init(&w, 10);
    double t0 = now_s();
    int rc = 0;
    while (atomic_load(&p.word) == 0 && rc == 0) rc = ndshm__ring_wait(&w, &p.word, &p.waiters, 0);
    double took = now_s() - t0;
    pthread_join(t, NULL);
    CHECK(rc == 0);
    CHECK(atomic_load(&p.word) == 1);
    CHECK(took < 5.0); /* woken, not timed out */
    CHECK(atomic_load(&p.waiters) == 0);
    ndshm__ring_wake(&p.word, &p.waiters); /* nobody sleeps: just counts */
    CHECK(atomic_load(&p.word) == 2);
}

/* ---- claim records ------------------------------------------------------------------- */

/* The key of a process that has exited and been reaped. */
static uint64_t dead_key(void) {
    int fds[2];
    if (pipe(fds) != 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t k = ndshm__self_key();
        ssize_t n = write(fds[1], &k, sizeof k);
        _exit(n == (ssize_t)sizeof k ? 0 : 1);
    }
    uint64_t k = 0;
    if (read(fds[0], &k, sizeof k) != (ssize_t)sizeof k) k = 0;
    waitpid(pid, NULL, 0);
    close(fds[0]);
    close(fds[1]);
    return k;
}

TEST(claim_records_free_taken_and_reclaimed_from_the_dead) {
    enum { N = 8 };
    ndshm__ring_part_t parts[N];
    memset(parts, 0, sizeof parts);
    uint64_t me = ndshm__self_key(), dead = dead_key();
    CHECK(dead != 0 && dead != me && !ndshm__key_alive(dead));
    uint32_t idx = 99;
    CHECK(ndshm__ring_part_take_free(parts, N, 6, me, &idx) && idx == 6); /* from the start index */
    CHECK(ndshm__ring_part_take_free(parts, N, 6, me, &idx) && idx == 7);
    CHECK(ndshm__ring_part_take_free(parts, N, 6, me, &idx) && idx == 0); /* wraps */
    for (unsigned i = 0; i < N; i++) atomic_store(&parts[i].owner, me);
    CHECK(!ndshm__ring_part_take_free(parts, N, 0, me, &idx));
    CHECK(!ndshm__ring_part_take_dead(parts, N, me, &idx)); /* every owner runs (this process) */
    atomic_store(&parts[3].owner, dead);
    atomic_store(&parts[3].intent, 42);
    CHECK(!ndshm__ring_intent_alive(parts, N, 42)); /* held by a dead process only */
    CHECK(ndshm__ring_part_take_dead(parts, N, me, &idx) && idx == 3);
    CHECK(atomic_load(&parts[3].owner) == me && atomic_load(&parts[3].intent) == 0);
    atomic_store(&parts[5].intent, 43);
    CHECK(ndshm__ring_intent_alive(parts, N, 43));
    CHECK(!ndshm__ring_intent_alive(parts, N, 44));
    ndshm__ring_part_release(parts, 5);
    CHECK(atomic_load(&parts[5].owner) == 0 && atomic_load(&parts[5].intent) == 0);
    CHECK(!ndshm__ring_intent_alive(parts, N, 43));
    CHECK(ndshm__ring_part_take_free(parts, N, 0, me, &idx) && idx == 5);
}

/* ---- messages ------------------------------------------------------------------------ */

TEST(check_desc_names_the_ring_and_the_bad_value) {
    char ts[NDSHM_TYPESTR_MAX];
    memset(ts, 'a', sizeof ts); /* not NUL-terminated */
    CHECK_RC(ndshm__ring_check_desc(64, "queue", 64, "<f8", NDSHM_MAXDIM), 0);
    CHECK_RC(ndshm__ring_check_desc(64, "queue", 0, NULL, 0), 0);
    CHECK_RC(ndshm__ring_check_desc(64, "queue", 65, "<f8", 1), NDSHM_ETOOBIG);
    CHECK(strcmp(ndshm_last_detail(), "message of 65 bytes is larger than the queue's 64-byte slots") == 0);
    CHECK_RC(ndshm__ring_check_desc(64, "broadcast", 65, NULL, 0), NDSHM_ETOOBIG);
    CHECK_DETAIL("the broadcast's 64-byte slots");
    CHECK_RC(ndshm__ring_check_desc(64, "queue", 8, "<f8", NDSHM_MAXDIM + 1), NDSHM_EINVAL);
    CHECK_DETAIL("ndim 33");
    CHECK_RC(ndshm__ring_check_desc(64, "queue", 8, ts, 1), NDSHM_EINVAL);
    CHECK_DETAIL("NUL-terminated");
}

TEST(write_desc_zero_pads_the_typestr_and_copies_the_shape) {
    ndshm__ring_desc_t d;
    memset(&d, 0xff, sizeof d);
    int64_t shape[2] = {3, 5};
    ndshm__ring_write_desc(&d, 120, "<f8", 2, shape);
    CHECK(d.nbytes == 120 && d.ndim == 2 && d.shape[0] == 3 && d.shape[1] == 5);
    CHECK(strcmp(d.typestr, "<f8") == 0);
    for (int i = 3; i < NDSHM_TYPESTR_MAX; i++) CHECK(d.typestr[i] == 0);
    ndshm__ring_write_desc(&d, 0, NULL, 0, NULL);
    CHECK(d.nbytes == 0 && d.ndim == 0);
    for (int i = 0; i < NDSHM_TYPESTR_MAX; i++) CHECK(d.typestr[i] == 0);
}

TEST(loan_publish_and_take_on_a_message) {
    char slot[64];
    ndshm__ring_desc_t d;
    memset(&d, 0, sizeof d);
    ndshm_qmsg_t m;
    memset(&m, 0x5a, sizeof m);
    m.state_ = 0;
    CHECK_RC(ndshm__ring_check_loaned(&m), NDSHM_EINVAL);
    CHECK_DETAIL("state 0 is not loaned");
    CHECK_RC(ndshm__ring_publish_desc(&m, &d, sizeof slot, "queue"), NDSHM_EINVAL);
    ndshm__ring_msg_loaned(&m, slot, sizeof slot, 16, 9, 4);
    CHECK(m.state_ == 1 && m.data == slot && m.capacity == sizeof slot && m.nbytes == 16 && m.ndim == 0);
    CHECK(m.pos_ == 9 && m.part_ == 4 && m.typestr[0] == 0);
    CHECK_RC(ndshm__ring_check_loaned(&m), 0);
    m.ndim = NDSHM_MAXDIM + 1;
    CHECK_RC(ndshm__ring_publish_desc(&m, &d, sizeof slot, "queue"), NDSHM_EINVAL);
    CHECK(m.state_ == 1); /* still loaned: the caller may fix the description */
    m.ndim = 1;
    m.shape[0] = 4;
    memset(m.typestr, 'i', sizeof m.typestr); /* the caller's field: cut at its end */
    CHECK_RC(ndshm__ring_publish_desc(&m, &d, sizeof slot, "queue"), 0);
    CHECK(m.state_ == 0 && d.nbytes == 16 && d.ndim == 1 && d.shape[0] == 4);
    CHECK(strlen(d.typestr) == NDSHM_TYPESTR_MAX - 1);
    ndshm_qmsg_t t;
    memset(&t, 0x5a, sizeof t);
    CHECK_RC(ndshm__ring_msg_taken(&t, slot, sizeof slot, 9, 4, d.nbytes, d.ndim, d.typestr, d.shape), 0);
    CHECK(t.state_ == 2 && t.data == slot && t.nbytes == 16 && t.ndim == 1 && t.shape[0] == 4 && t.pos_ == 9);
    CHECK(strcmp(t.typestr, d.typestr) == 0);
}

TEST(take_never_trusts_the_descriptor) {
    char slot[64];
    char ts[NDSHM_TYPESTR_MAX];
    memset(ts, 'x', sizeof ts); /* unterminated in the ring: cut */
    int64_t shape[NDSHM_MAXDIM] = {0};
    ndshm_qmsg_t t;
    memset(&t, 0x5a, sizeof t);
    CHECK_RC(ndshm__ring_msg_taken(&t, slot, sizeof slot, 12, 1, 65, 1, ts, shape), NDSHM_ECORRUPT);
    CHECK(strcmp(ndshm_last_detail(), "message at position 12 claims 65 bytes and 1 dimensions") == 0);
    CHECK(t.state_ == 2 && t.pos_ == 12 && t.part_ == 1); /* taken: the caller releases it */
    CHECK(t.nbytes == 0 && t.ndim == 0 && t.typestr[0] == 0);
    CHECK_RC(ndshm__ring_msg_taken(&t, slot, sizeof slot, 13, 1, 8, NDSHM_MAXDIM + 1, ts, shape), NDSHM_ECORRUPT);
    CHECK_DETAIL("33 dimensions");
    CHECK_RC(ndshm__ring_msg_taken(&t, slot, sizeof slot, 14, 1, 8, 1, ts, shape), 0);
    CHECK(strlen(t.typestr) == NDSHM_TYPESTR_MAX - 1);
}

/* ---- geometry ------------------------------------------------------------------------ */

typedef struct test_hdr {
    ndshm__ring_hdr_t h;
    uint32_t ring_flags, pad;
    char rest[128 - 64];
} test_hdr_t;

static const ndshm__ring_kind_t TEST_KIND = {.name = "tester", .ring = "tester ring", .api = "ndshm_tester",
                                             .magic = 0x1122334455667788ull, .version = 3, .oldest = 3,
                                             .hdr_bytes = sizeof(test_hdr_t), .seg_flag = 0, .max_slots = 16};

TEST(a_ring_header_is_initialised_and_validated_for_its_kind) {
    uint64_t need;
    CHECK_RC(ndshm__ring_bytes(&TEST_KIND, 32, 64, &need), NDSHM_EINVAL);
    CHECK_DETAIL("between 2 and 16");
    CHECK_RC(ndshm__ring_bytes(&TEST_KIND, 1u << 4, (uint64_t)1 << 62, &need), NDSHM_EOVERFLOW);
    CHECK_DETAIL("a tester ring of 16 slots");
    CHECK_RC(ndshm__ring_bytes(&TEST_KIND, 4, 100, &need), 0);
    CHECK(need == sizeof(test_hdr_t) + 4 * ndshm__ring_stride(100));
    CHECK(ndshm__ring_stride(100) == 448 && ndshm__ring_stride(0) == NDSHM__RING_SLOT_HDR);
    void *mem = NULL;
    CHECK(posix_memalign(&mem, 64, need) == 0);
    if (!mem) return;
    CHECK_RC(ndshm__ring_hdr_init(&TEST_KIND, (char *)mem + 8, need, 4, 100), NDSHM_EINVAL);
    CHECK_RC(ndshm__ring_hdr_init(&TEST_KIND, mem, need - 1, 4, 100), NDSHM_EINVAL);
    CHECK_DETAIL("smaller than the");
    memset(mem, 0xee, need);
    CHECK_RC(ndshm__ring_hdr_init(&TEST_KIND, mem, need, 4, 100), 0);
    test_hdr_t *r = mem;
    CHECK(atomic_load(&r->h.magic) == 0 && r->ring_flags == 0 && r->rest[0] == 0); /* zeroed, unpublished */
    CHECK(r->h.slots_offset == sizeof(test_hdr_t) && r->h.slot_stride == 448 && r->h.ring_bytes == need);
    ndshm__ring_geom_t g;
    atomic_store(&r->h.magic, 0x99);
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), NDSHM_ECORRUPT);
    CHECK(strcmp(ndshm_last_detail(), "ring magic 0x99 is not an ndshm tester's") == 0);
    atomic_store(&r->h.magic, TEST_KIND.magic);
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), 0);
    CHECK(g.slots == 4 && g.slot_bytes == 100 && g.stride == 448 && g.ring_bytes == need);
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need - 1, &g), NDSHM_ECORRUPT);
    CHECK_DETAIL("tester ring needs");
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, 64, &g), NDSHM_ECORRUPT);
    CHECK_DETAIL("smaller than its 128-byte header");
    r->h.version = 4;
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), NDSHM_ECORRUPT);
    CHECK(strcmp(ndshm_last_detail(), "tester ring version 4 is not 3: it was made by a newer ndshm") == 0);
    r->h.version = 2;
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), NDSHM_ECORRUPT);
    CHECK_DETAIL("tester ring version 2 was made by an older ndshm; this one reads version 3 only");
    CHECK_DETAIL("recreate the tester with this version");
    r->h.version = 3;
    r->h.slots = 5;
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), NDSHM_ECORRUPT);
    CHECK_DETAIL("geometry is corrupt: slots 5");
    r->h.slots = 4;
    r->h.slot_stride = 512;
    CHECK_RC(ndshm__ring_hdr_open(&TEST_KIND, mem, need, &g), NDSHM_ECORRUPT);
    CHECK_DETAIL("inconsistent (stride 512");
    free(mem);
}

/* ---- named rings --------------------------------------------------------------------- */

static void ring_name(char *out, size_t n, const char *what) {
    snprintf(out, n, "ctest-ring-%d-%s", (int)getpid(), what);
}

TEST(both_named_rings_make_the_same_checks_with_the_same_details) {
    char qn[64], bn[64];
    ring_name(qn, sizeof qn, "q");
    ring_name(bn, sizeof bn, "b");
    ndshm_queue_t *q = NULL, *qa = NULL;
    ndshm_bcast_t *b = NULL, *ba = NULL;
    CHECK_RC(ndshm_queue_create(qn, NULL, 4, 64, 0, 0x1000, &q), NDSHM_EINVAL);
    CHECK(strcmp(ndshm_last_detail(), "unknown queue flags 0x1000") == 0);
    CHECK_RC(ndshm_bcast_create(bn, NULL, 4, 64, NDSHM_BCAST_BLOCK, 0, 0x1000, &b), NDSHM_EINVAL);
    CHECK(strcmp(ndshm_last_detail(), "unknown broadcast flags 0x1000") == 0);
    CHECK_RC(ndshm_queue_create(NULL, NULL, 4, 64, 0, 0, &q), NDSHM_EINVAL);
    CHECK(strcmp(ndshm_last_detail(), "ndshm_queue_create: name is NULL") == 0);
    CHECK_RC(ndshm_bcast_attach(NULL, NULL, &b), NDSHM_EINVAL);
    CHECK(strcmp(ndshm_last_detail(), "ndshm_bcast_attach: name is NULL") == 0);
    CHECK_RC(ndshm_queue_create(qn, NULL, 4, (uint64_t)1 << 62, 0, 0, &q), NDSHM_EOVERFLOW);
    CHECK_DETAIL("a ring of 4 slots");
    CHECK_RC(ndshm_bcast_create(bn, NULL, 4, (uint64_t)1 << 62, NDSHM_BCAST_BLOCK, 0, 0, &b), NDSHM_EOVERFLOW);
    CHECK_DETAIL("a broadcast ring of 4 slots");
    uint64_t queues = atomic_load(&ndshm__counters.live_queues);
    uint64_t bcasts = atomic_load(&ndshm__counters.live_broadcasts);
    CHECK_RC(ndshm_queue_create(qn, NULL, 4, 64, 0, 0, &q), 0);
    CHECK_RC(ndshm_bcast_create(bn, NULL, 4, 64, NDSHM_BCAST_BLOCK, 0, 0, &b), 0);
    CHECK(atomic_load(&ndshm__counters.live_queues) == queues + 1); /* both counted alike */
    CHECK(atomic_load(&ndshm__counters.live_broadcasts) == bcasts + 1);
    /* each names what the other's segment holds */
    CHECK_RC(ndshm_queue_attach(bn, NULL, &qa), NDSHM_EINVAL);
    CHECK_DETAIL("holds a broadcast, not a queue");
    CHECK_RC(ndshm_bcast_attach(qn, NULL, &ba), NDSHM_EINVAL);
    CHECK_DETAIL("holds a queue, not a broadcast");
    CHECK(qa == NULL && ba == NULL);
    CHECK_RC(ndshm_queue_attach(qn, NULL, &qa), 0);
    CHECK_RC(ndshm_bcast_attach(bn, NULL, &ba), 0);
    CHECK(atomic_load(&ndshm__counters.live_queues) == queues + 2);
    CHECK(atomic_load(&ndshm__counters.live_broadcasts) == bcasts + 2);
    ndshm_queue_close(qa);
    ndshm_bcast_close(ba);
    ndshm_queue_close(q);
    ndshm_bcast_close(b);
    CHECK(atomic_load(&ndshm__counters.live_queues) == queues);
    CHECK(atomic_load(&ndshm__counters.live_broadcasts) == bcasts);
}

/* A descriptor of named segment `name` and its data's place, or -1. */
static int open_segment(const char *name, uint64_t *offset, uint64_t *size) {
    ndshm_segment_info_t info;
    int in_use = 0;
    if (ndshm_segment_probe(NDSHM_KIND_NAMED, name, NULL, &info, &in_use) != 0) return -1;
    *offset = info.data_offset;
    *size = info.data_size;
    const char *dir = getenv("NDSHM_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/ndshm.%s", dir && dir[0] ? dir : "/dev/shm", name);
    return open(path, O_RDWR | O_CLOEXEC);
}

TEST(a_ring_header_is_read_from_its_file_by_name_and_never_trusted) {
    char qn[64], bn[64];
    ring_name(qn, sizeof qn, "qh");
    ring_name(bn, sizeof bn, "bh");
    ndshm_queue_t *q = NULL;
    ndshm_bcast_t *b = NULL;
    CHECK_RC(ndshm_queue_create(qn, NULL, 8, 100, 0, 0, &q), 0);
    CHECK_RC(ndshm_bcast_create(bn, NULL, 4, 64, NDSHM_BCAST_OVERWRITE, 0, 0, &b), 0);
    if (q == NULL || b == NULL) return;
    ndshm_ring_header_t h;
    uint64_t off = 0, size = 0, need = 0;
    int fd = open_segment(qn, &off, &size);
    CHECK(fd >= 0);
    CHECK_RC(ndshm_ring_read_header(fd, off, size, &h), 0);
    CHECK_RC(ndshm_queue_ring_bytes(8, 100, &need), 0);
    CHECK(h.kind == NDSHM_SEG_QUEUE && h.version == 3 && h.slots == 8 && h.slot_bytes == 100 && h.ring_bytes == need);
    CHECK_RC(ndshm_ring_read_header(fd, off, need - 1, &h), NDSHM_ECORRUPT); /* a ring larger than its segment */
    CHECK_DETAIL("ring needs");
    CHECK(h.slots == 0); /* nothing is left in *out on failure */
    CHECK_RC(ndshm_ring_read_header(fd, off + 8, size, &h), NDSHM_ECORRUPT); /* not at a ring's start */
    CHECK_DETAIL("neither a queue's nor a broadcast's");
    CHECK_RC(ndshm_ring_read_header(fd, (uint64_t)1 << 40, size, &h), NDSHM_ECORRUPT); /* past the end */
    CHECK_DETAIL("too few for a ring header");
    uint32_t version = 9; /* a newer ring: refused, never guessed at */
    CHECK(pwrite(fd, &version, sizeof version, (off_t)(off + 8)) == (ssize_t)sizeof version);
    CHECK_RC(ndshm_ring_read_header(fd, off, size, &h), NDSHM_ECORRUPT);
    CHECK_DETAIL("ring version 9 is not one of 1 to 3");
    version = 3;
    uint64_t slots = 6; /* not a power of two */
    CHECK(pwrite(fd, &version, sizeof version, (off_t)(off + 8)) == (ssize_t)sizeof version);
    CHECK(pwrite(fd, &slots, sizeof slots, (off_t)(off + 16)) == (ssize_t)sizeof slots);
    CHECK_RC(ndshm_ring_read_header(fd, off, size, &h), NDSHM_ECORRUPT);
    CHECK_DETAIL("geometry is corrupt: slots 6");
    close(fd);
    fd = open_segment(bn, &off, &size);
    CHECK(fd >= 0);
    CHECK_RC(ndshm_ring_read_header(fd, off, size, &h), 0);
    CHECK(h.kind == NDSHM_SEG_BROADCAST && h.version == 2 && h.slots == 4 && h.slot_bytes == 64);
    close(fd);
    CHECK_RC(ndshm_ring_read_header(-1, 0, 100, &h), NDSHM_EINVAL);
    CHECK_RC(ndshm_ring_read_header(0, 0, 100, NULL), NDSHM_EINVAL);
    ndshm_queue_close(q);
    ndshm_bcast_close(b);
}

int main(void) {
    RUN(retry_expired_looks_at_the_clock_every_1024th_retry);
    RUN(wait_times_out_at_the_deadline_after_spinning_then_sleeping);
    RUN(wait_shares_one_deadline_with_retry_expired);
    RUN(wake_ends_a_sleeping_wait);
    RUN(claim_records_free_taken_and_reclaimed_from_the_dead);
    RUN(check_desc_names_the_ring_and_the_bad_value);
    RUN(write_desc_zero_pads_the_typestr_and_copies_the_shape);
    RUN(loan_publish_and_take_on_a_message);
    RUN(take_never_trusts_the_descriptor);
    RUN(a_ring_header_is_initialised_and_validated_for_its_kind);
    RUN(both_named_rings_make_the_same_checks_with_the_same_details);
    RUN(a_ring_header_is_read_from_its_file_by_name_and_never_trusted);
    return SUMMARY();
}

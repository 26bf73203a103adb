/*
 * test_broadcast.c -- the publish-subscribe ring: geometry and bad arguments, order and late
 * joiners, block backpressure, overwrite and lag counts, in-place reads never overwritten,
 * shutdown, kill -9 of subscribers and publishers, corrupt rings, and 2 publishers x 3
 * subscribers across fork().
 */
#include <stdatomic.h>
#include "testhelper.h"

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static ndshm_bcast_t *raw_bcast(uint64_t slots, uint64_t slot_bytes, int policy, void **mem) {
    uint64_t need = 0;
    if (ndshm_bcast_ring_bytes(slots, slot_bytes, &need) != 0) return NULL;
    *mem = shared_mem(need);
    if (*mem == NULL || ndshm_bcast_init_raw(*mem, need, slots, slot_bytes, policy) != 0) return NULL;
    ndshm_bcast_t *b = NULL;
    return ndshm_bcast_open_raw(*mem, need, &b) == 0 ? b : NULL;
}

/* The exit status of child `pid`, killed (and -1) if it runs longer than `limit` seconds. */
static int child_status(pid_t pid, double limit) {
    int st = 0;
    double t0 = now_s();
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (now_s() - t0 > limit) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(2000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define RAW_OR_RETURN(b, mem, slots, slot_bytes, policy)          \
    void *mem = NULL;                                              \
    ndshm_bcast_t *b = raw_bcast((slots), (slot_bytes), (policy), &mem); \
    CHECK(b != NULL);                                              \
    if (!b) return

static int put_i64(ndshm_bcast_t *b, int64_t v, double timeout) {
    int64_t one = 1;
    return ndshm_bcast_put(b, &v, sizeof v, "<i8", 1, &one, timeout);
}

/* Takes one message and returns its int64 value (or the negative code, or -100 - missed for lag). */
static int64_t take_i64(ndshm_bsub_t *s, double timeout, uint64_t *missed) {
    ndshm_qmsg_t m;
    uint64_t miss = 0;
    int rc = ndshm_bcast_take(s, timeout, &m, &miss);
    if (missed) *missed = miss;
    if (rc) return rc;
    int64_t v;
    memcpy(&v, m.data, sizeof v);
    if (ndshm_bcast_release(s, &m) != 0) return -99;
    return v;
}

TEST(geometry_and_bad_arguments) {
    uint64_t n = 0;
    CHECK_RC(ndshm_bcast_ring_bytes(3, 64, &n), NDSHM_EINVAL);
    CHECK_DETAIL("slots 3");
    CHECK_RC(ndshm_bcast_ring_bytes(1, 64, &n), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_ring_bytes((uint64_t)NDSHM_BCAST_MAX_SLOTS * 2, 64, &n), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_ring_bytes(1024, UINT64_MAX / 2, &n), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_bcast_ring_bytes(1u << 20, (uint64_t)1 << 50, &n), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_bcast_ring_bytes(4, 64, NULL), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_ring_bytes(4, 64, &n), 0);
    void *mem = shared_mem(n);
    CHECK(mem != NULL);
    if (!mem) return;
    CHECK_RC(ndshm_bcast_init_raw(mem, n, 4, 64, 7), NDSHM_EINVAL);
    CHECK_DETAIL("policy 7");
    CHECK_RC(ndshm_bcast_init_raw(mem, n - 1, 4, 64, 0), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_init_raw((char *)mem + 8, n - 8, 4, 64, 0), NDSHM_EINVAL);
    ndshm_bcast_t *b = NULL;
    CHECK_RC(ndshm_bcast_open_raw(mem, n, &b), NDSHM_EBUSY); /* never initialised: magic 0 */
    CHECK_RC(ndshm_bcast_init_raw(mem, n, 4, 64, NDSHM_BCAST_BLOCK), 0);
    CHECK_RC(ndshm_bcast_open_raw(mem, n - 64, &b), NDSHM_ECORRUPT);
    CHECK_RC(ndshm_bcast_open_raw(mem, n, &b), 0);
    ndshm_bcast_info_t info;
    CHECK_RC(ndshm_bcast_info(b, &info), 0);
    CHECK(info.slots == 4 && info.slot_bytes == 64 && info.policy == NDSHM_BCAST_BLOCK);
    CHECK(info.max_subscribers == NDSHM_BCAST_MAX_SUBSCRIBERS);
    int64_t v = 1, one = 1;
    CHECK_RC(ndshm_bcast_put(b, &v, 65, "<i8", 1, &one, 0), NDSHM_ETOOBIG);
    CHECK_RC(ndshm_bcast_put(b, &v, 8, "<i8", 1, &one, NAN), NDSHM_EINVAL);
    CHECK_DETAIL("nan");
    CHECK_RC(ndshm_bcast_put(b, &v, 8, "<i8", NDSHM_MAXDIM + 1, &one, 0), NDSHM_EINVAL);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    ndshm_qmsg_t m;
    uint64_t missed;
    CHECK_RC(ndshm_bcast_take(s, NAN, &m, &missed), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_take(s, 0, &m, NULL), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_release(s, &m), NDSHM_EINVAL);
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(b);
    /* a corrupt header */
    ((uint64_t *)mem)[2] = 3; /* slots */
    CHECK_RC(ndshm_bcast_open_raw(mem, n, &b), NDSHM_ECORRUPT);
    ((uint64_t *)mem)[0] = 0x1234;
    CHECK_RC(ndshm_bcast_open_raw(mem, n, &b), NDSHM_ECORRUPT);
    CHECK_DETAIL("magic");
    munmap(mem, n);
}

TEST(order_and_late_subscriber) {
    RAW_OR_RETURN(b, mem, 8, 64, NDSHM_BCAST_BLOCK);
    CHECK_RC(put_i64(b, 100, 0), 0); /* nobody subscribed: dropped, never blocks */
    ndshm_bsub_t *a = NULL, *late = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &a), 0);
    CHECK(ndshm_bcast_subscribers(b) == 1);
    CHECK_RC(put_i64(b, 1, 0), 0);
    CHECK_RC(put_i64(b, 2, 0), 0);
    CHECK_RC(ndshm_bcast_subscribe(b, &late), 0);
    CHECK(ndshm_bcast_subscribers(b) == 2);
    CHECK_RC(put_i64(b, 3, 0), 0);
    CHECK(ndshm_bcast_pending(a) == 3 && ndshm_bcast_pending(late) == 1);
    CHECK(take_i64(a, 0, NULL) == 1);
    CHECK(take_i64(a, 0, NULL) == 2);
    CHECK(take_i64(a, 0, NULL) == 3);
    CHECK(take_i64(a, 0, NULL) == NDSHM_EEMPTY);
    CHECK(take_i64(late, 0, NULL) == 3);
    double t0 = now_s();
    CHECK(take_i64(late, 0.05, NULL) == NDSHM_ETIMEDOUT);
    CHECK(now_s() - t0 >= 0.04);
    /* a discarded loan is skipped by everyone */
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_bcast_loan(b, 8, 0, &m), 0);
    CHECK_RC(ndshm_bcast_discard(b, &m), 0);
    CHECK_RC(ndshm_bcast_loan(b, 8, 0, &m), 0);
    int64_t v = 4;
    memcpy(m.data, &v, 8);
    memcpy(m.typestr, "<i8", 4);
    m.ndim = 1;
    m.shape[0] = 1;
    CHECK_RC(ndshm_bcast_publish(b, &m), 0);
    CHECK_RC(ndshm_bcast_publish(b, &m), NDSHM_EINVAL); /* not loaned any more */
    CHECK(take_i64(a, 0, NULL) == 4);
    CHECK(take_i64(late, 0, NULL) == 4);
    ndshm_bcast_unsubscribe(late);
    CHECK(ndshm_bcast_subscribers(b) == 1);
    ndshm_bcast_unsubscribe(a);
    ndshm_bcast_unsubscribe(NULL);
    ndshm_bcast_close(b);
}

TEST(block_backpressure) {
    RAW_OR_RETURN(b, mem, 4, 64, NDSHM_BCAST_BLOCK);
    ndshm_bsub_t *fast = NULL, *slow = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &fast), 0);
    CHECK_RC(ndshm_bcast_subscribe(b, &slow), 0);
    for (int i = 0; i < 4; i++) CHECK_RC(put_i64(b, i, 0), 0);
    CHECK_RC(put_i64(b, 4, 0), NDSHM_EFULL);
    for (int i = 0; i < 4; i++) CHECK(take_i64(fast, 0, NULL) == i);
    CHECK_RC(put_i64(b, 4, 0), NDSHM_EFULL); /* the slow one has read nothing */
    double t0 = now_s();
    CHECK_RC(put_i64(b, 4, 0.05), NDSHM_ETIMEDOUT);
    CHECK(now_s() - t0 >= 0.04);
    CHECK(take_i64(slow, 0, NULL) == 0);
    CHECK_RC(put_i64(b, 4, 0), 0);
    CHECK_RC(put_i64(b, 5, 0), NDSHM_EFULL);
    ndshm_bcast_unsubscribe(slow); /* leaving releases the publishers */
    CHECK_RC(put_i64(b, 5, 0), 0);
    CHECK(take_i64(fast, 0, NULL) == 4);
    CHECK(take_i64(fast, 0, NULL) == 5);
    ndshm_bcast_unsubscribe(fast);
    ndshm_bcast_close(b);
}

TEST(overwrite_counts_what_was_lost) {
    RAW_OR_RETURN(b, mem, 4, 64, NDSHM_BCAST_OVERWRITE);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    for (int i = 0; i < 11; i++) CHECK_RC(put_i64(b, i, 0), 0); /* never blocks */
    uint64_t missed = 0;
    CHECK(take_i64(s, 0, &missed) == NDSHM_ELAGGED);
    CHECK(missed == 7); /* 0..6 lost, 7..10 retained */
    for (int i = 7; i < 11; i++) CHECK(take_i64(s, 0, NULL) == i);
    CHECK(take_i64(s, 0, NULL) == NDSHM_EEMPTY);
    /* a message read in place is not overwritten under its reader */
    CHECK_RC(put_i64(b, 11, 0), 0);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_bcast_take(s, 0, &m, &missed), 0);
    for (int i = 12; i < 15; i++) CHECK_RC(put_i64(b, i, 0), 0);
    CHECK_RC(put_i64(b, 15, 0.05), NDSHM_ETIMEDOUT); /* its slot is held */
    CHECK_RC(put_i64(b, 16, 0), 0);
    CHECK_RC(put_i64(b, 17, 0), 0);
    CHECK_RC(put_i64(b, 18, 0), 0);
    CHECK_RC(put_i64(b, 19, 0.05), NDSHM_ETIMEDOUT); /* the held slot again, one lap later */
    int64_t v;
    memcpy(&v, m.data, 8);
    CHECK(v == 11);
    CHECK_RC(ndshm_bcast_release(s, &m), 0);
    CHECK(take_i64(s, 0, &missed) == NDSHM_ELAGGED);
    CHECK(missed == 4); /* 12..15, to the oldest retained (20 - 4 = 16) */
    CHECK(take_i64(s, 0, NULL) == 16);
    CHECK(take_i64(s, 0, NULL) == 17);
    CHECK(take_i64(s, 0, NULL) == 18);
    CHECK(take_i64(s, 0, NULL) == NDSHM_EEMPTY); /* 19 was given up (skipped) */
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(b);
}

TEST(shutdown_drains_then_ends) {
    RAW_OR_RETURN(b, mem, 4, 64, NDSHM_BCAST_BLOCK);
    ndshm_bsub_t *s = NULL, *t = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    CHECK_RC(ndshm_bcast_subscribe(b, &t), 0);
    CHECK_RC(put_i64(b, 1, 0), 0);
    CHECK_RC(put_i64(b, 2, 0), 0);
    CHECK(ndshm_bcast_is_shutdown(b) == 0);
    CHECK_RC(ndshm_bcast_shutdown(b, 0), 0);
    CHECK(ndshm_bcast_is_shutdown(b) == 1);
    CHECK_RC(put_i64(b, 3, 0), NDSHM_ESHUTDOWN);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_bcast_loan(b, 8, 1, &m), NDSHM_ESHUTDOWN);
    CHECK(take_i64(s, 5, NULL) == 1);
    CHECK(take_i64(s, 5, NULL) == 2);
    double t0 = now_s();
    CHECK(take_i64(s, 5, NULL) == NDSHM_ESHUTDOWN);
    CHECK(now_s() - t0 < 1);
    CHECK(take_i64(t, 5, NULL) == 1);
    CHECK_RC(ndshm_bcast_shutdown(b, 1), 0);
    CHECK(ndshm_bcast_is_shutdown(b) == 2);
    CHECK(take_i64(t, 5, NULL) == NDSHM_ESHUTDOWN); /* immediate: message 2 is not delivered */
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_unsubscribe(t);
    ndshm_bcast_close(b);
}

TEST(shutdown_wakes_a_blocked_publisher_and_a_waiting_subscriber) {
    RAW_OR_RETURN(b, mem, 2, 64, NDSHM_BCAST_BLOCK);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    CHECK_RC(put_i64(b, 1, 0), 0);
    CHECK_RC(put_i64(b, 2, 0), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = put_i64(b, 3, 10);
        _exit(rc == NDSHM_ESHUTDOWN ? 0 : 1);
    }
    usleep(50000);
    double t0 = now_s();
    CHECK_RC(ndshm_bcast_shutdown(b, 0), 0);
    CHECK(child_status(pid, 5) == 0);
    CHECK(now_s() - t0 < 2);
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(b);
}

/* A child subscribes, takes a message and dies holding it (kill -9): publishers go on. */
static void dead_subscriber(int policy) {
    RAW_OR_RETURN(b, mem, 4, 64, policy);
    ndshm_bsub_t *live = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &live), 0);
    _Atomic int *flag = shared_mem(sizeof *flag);
    CHECK(flag != NULL);
    if (!flag) return;
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_bsub_t *s = NULL;
        if (ndshm_bcast_subscribe(b, &s) != 0) _exit(1);
        atomic_store(flag, 1);
        ndshm_qmsg_t m;
        uint64_t missed;
        if (ndshm_bcast_take(s, 10, &m, &missed) != 0) _exit(2);
        atomic_store(flag, 2);
        pause(); /* inside "receive" */
        _exit(0);
    }
    while (atomic_load(flag) == 0) usleep(1000);
    CHECK(ndshm_bcast_subscribers(b) == 2);
    CHECK_RC(put_i64(b, 0, 0), 0);
    while (atomic_load(flag) == 1) usleep(1000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    double t0 = now_s();
    for (int i = 1; i < 12; i++) {
        CHECK_RC(put_i64(b, i, 2), 0);
        CHECK(take_i64(live, 2, NULL) == i - 1);
    }
    CHECK(now_s() - t0 < 2);
    CHECK(ndshm_bcast_subscribers(b) == 1);
    ndshm_bcast_unsubscribe(live);
    ndshm_bcast_close(b);
}

TEST(dead_subscriber_block) { dead_subscriber(NDSHM_BCAST_BLOCK); }
TEST(dead_subscriber_overwrite) { dead_subscriber(NDSHM_BCAST_OVERWRITE); }

/* A child publisher dies inside loan: its position is skipped, later messages arrive. */
static void dead_publisher(int policy) {
    RAW_OR_RETURN(b, mem, 4, 64, policy);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    CHECK_RC(put_i64(b, 1, 0), 0);
    _Atomic int *flag = shared_mem(sizeof *flag);
    CHECK(flag != NULL);
    if (!flag) return;
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_qmsg_t m;
        if (ndshm_bcast_loan(b, 8, 1, &m) != 0) _exit(1);
        atomic_store(flag, 1);
        pause();
        _exit(0);
    }
    while (atomic_load(flag) == 0) usleep(1000);
    CHECK_RC(put_i64(b, 2, 0), 0); /* claimed after the dead one's position */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    double t0 = now_s();
    CHECK(take_i64(s, 2, NULL) == 1);
    CHECK(take_i64(s, 2, NULL) == 2);
    CHECK(now_s() - t0 < 1);
    /* publishers lap the ring past the skipped slot */
    for (int i = 3; i < 12; i++) {
        CHECK_RC(put_i64(b, i, 2), 0);
        CHECK(take_i64(s, 2, NULL) == i);
    }
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(b);
}

TEST(dead_publisher_block) { dead_publisher(NDSHM_BCAST_BLOCK); }
TEST(dead_publisher_overwrite) { dead_publisher(NDSHM_BCAST_OVERWRITE); }

TEST(corrupt_ring_never_spins) {
    RAW_OR_RETURN(b, mem, 4, 64, NDSHM_BCAST_BLOCK);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(b, &s), 0);
    CHECK_RC(put_i64(b, 1, 0), 0);
    ndshm_bcast_info_t info;
    ndshm_bcast_info(b, &info);
    _Atomic uint64_t *state0 = (_Atomic uint64_t *)((char *)mem + (info.ring_bytes - 4 * info.slot_stride));
    uint64_t good = atomic_load(state0);
    atomic_store(state0, good + 4 * 1000); /* a position far in the future */
    double t0 = now_s();
    CHECK(take_i64(s, -1, NULL) == NDSHM_ECORRUPT);
    CHECK(now_s() - t0 < 1);
    atomic_store(state0, 0x7fff0000); /* state 0 */
    CHECK(take_i64(s, -1, NULL) == NDSHM_ECORRUPT);
    atomic_store(state0, good);
    /* an impossible descriptor is refused, and the message released */
    uint64_t *nbytes = (uint64_t *)((char *)state0 + 8);
    *nbytes = 1 << 20;
    CHECK(take_i64(s, 0, NULL) == NDSHM_ECORRUPT);
    CHECK_DETAIL("claims 1048576 bytes");
    CHECK(take_i64(s, 0, NULL) == NDSHM_EEMPTY); /* it was passed over */
    /* a corrupt tail and a corrupt subscriber high-water mark */
    _Atomic uint64_t *tail = (_Atomic uint64_t *)((char *)mem + 64);
    uint64_t t = atomic_load(tail);
    atomic_store(tail, (((uint64_t)1 << 62) - 3));
    CHECK_RC(put_i64(b, 2, -1), NDSHM_ECORRUPT);
    atomic_store(tail, t);
    _Atomic uint32_t *hw = (_Atomic uint32_t *)((char *)mem + 256);
    atomic_store(hw, 0xffffffffu);
    CHECK_RC(put_i64(b, 2, 0), 0);
    CHECK(take_i64(s, 0, NULL) == 2);
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(b);
}

TEST(named_segment) {
    char dir[] = "/tmp/ndshm-bcast-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    ndshm_bcast_t *b = NULL, *a = NULL;
    CHECK_RC(ndshm_bcast_create("bc", dir, 4, 64, 5, 0, 0, &b), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_create("bc", dir, 4, 64, 0, 0, 1u << 10, &b), NDSHM_EINVAL);
    CHECK_RC(ndshm_bcast_create("bc", dir, 4, 64, NDSHM_BCAST_OVERWRITE, 0, 0, &b), 0);
    CHECK_RC(ndshm_bcast_create("bc", dir, 4, 64, NDSHM_BCAST_OVERWRITE, 0, 0, &a), NDSHM_EEXIST);
    CHECK_RC(ndshm_bcast_attach("bc", dir, &a), 0);
    ndshm_bcast_info_t info;
    CHECK_RC(ndshm_bcast_info(a, &info), 0);
    CHECK(info.policy == NDSHM_BCAST_OVERWRITE && info.slots == 4 && strcmp(info.name, "bc") == 0);
    ndshm_bsub_t *s = NULL;
    CHECK_RC(ndshm_bcast_subscribe(a, &s), 0);
    CHECK_RC(put_i64(b, 42, 0), 0);
    CHECK(take_i64(s, 0, NULL) == 42);
    ndshm_bcast_unsubscribe(s);
    ndshm_bcast_close(a);
    ndshm_queue_t *q = NULL;
    CHECK_RC(ndshm_queue_create("q", dir, 4, 64, 0, 0, &q), 0);
    CHECK_RC(ndshm_bcast_attach("q", dir, &a), NDSHM_EINVAL);
    CHECK_DETAIL("a queue");
    ndshm_queue_t *q2 = NULL;
    CHECK_RC(ndshm_queue_attach("bc", dir, &q2), NDSHM_EINVAL); /* and the queue refuses a broadcast */
    ndshm_queue_close(q);
    CHECK_RC(ndshm_bcast_attach("none", dir, &a), NDSHM_ENOENT);
    ndshm_bcast_close(a);
    ndshm_bcast_close(b);
    CHECK_RC(ndshm_bcast_attach("bc", dir, &a), NDSHM_ENOENT); /* the creator unlinked it */
    CHECK(rmdir_tables(dir) == 0);
}

/* 2 publishers x 3 subscribers (child processes), block: every subscriber gets every message
 * of each publisher, in that publisher's order. */
TEST(many_publishers_many_subscribers) {
    enum { PER = 20000, NPUB = 2, NSUBS = 3 };
    RAW_OR_RETURN(b, mem, 8, 64, NDSHM_BCAST_BLOCK);
    _Atomic int *ready = shared_mem(sizeof *ready);
    CHECK(ready != NULL);
    if (!ready) return;
    pid_t subs[NSUBS], pubs[NPUB];
    for (int k = 0; k < NSUBS; k++) {
        subs[k] = fork();
        if (subs[k] == 0) {
            ndshm_bsub_t *s = NULL;
            if (ndshm_bcast_subscribe(b, &s) != 0) _exit(10);
            atomic_fetch_add(ready, 1);
            int64_t next[NPUB] = {0, 0};
            for (int got = 0; got < NPUB * PER; got++) {
                int64_t v = take_i64(s, 20, NULL);
                if (v < 0) _exit(11);
                int p = (int)(v >> 32);
                if (p < 0 || p >= NPUB || (v & 0xffffffff) != next[p]) _exit(12);
                next[p]++;
                if (k == 0 && got % 1000 == 0) usleep(100); /* a slow one */
            }
            _exit(take_i64(s, 0, NULL) == NDSHM_EEMPTY ? 0 : 13);
        }
    }
    while (atomic_load(ready) < NSUBS) usleep(1000);
    for (int p = 0; p < NPUB; p++) {
        pubs[p] = fork();
        if (pubs[p] == 0) {
            for (int64_t i = 0; i < PER; i++)
                if (put_i64(b, (int64_t)p << 32 | i, 20) != 0) _exit(20);
            _exit(0);
        }
    }
    for (int p = 0; p < NPUB; p++) CHECK(child_status(pubs[p], 60) == 0);
    for (int k = 0; k < NSUBS; k++) {
        int st = child_status(subs[k], 60);
        CHECK(st == 0);
        if (st != 0) fprintf(stderr, "  subscriber %d: status %d\n", k, st);
    }
    ndshm_bcast_close(b);
}

int main(void) {
    RUN(geometry_and_bad_arguments);
    RUN(order_and_late_subscriber);
    RUN(block_backpressure);
    RUN(overwrite_counts_what_was_lost);
    RUN(shutdown_drains_then_ends);
    RUN(shutdown_wakes_a_blocked_publisher_and_a_waiting_subscriber);
    RUN(dead_subscriber_block);
    RUN(dead_subscriber_overwrite);
    RUN(dead_publisher_block);
    RUN(dead_publisher_overwrite);
    RUN(corrupt_ring_never_spins);
    RUN(named_segment);
    RUN(many_publishers_many_subscribers);
    return SUMMARY();
}

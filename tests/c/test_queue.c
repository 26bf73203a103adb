/*
 * test_queue.c -- the shared MPMC queue: descriptors, errors, timeouts, loan/discard, segments,
 * 4 producers x 4 consumers x 100k messages across fork(), and kill -9 of producers and
 * consumers at precise points and at random ones.
 */
#include <stdatomic.h>
#include "testhelper.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static ndshm_queue_t *raw_queue(uint64_t slots, uint64_t slot_bytes, void **mem, size_t *len) {
    uint64_t need = 0;
    if (ndshm_queue_ring_bytes(slots, slot_bytes, &need) != 0) return NULL;
    *len = need;
    *mem = shared_mem(need);
    if (*mem == NULL || ndshm_queue_init_raw(*mem, need, slots, slot_bytes) != 0) return NULL;
    ndshm_queue_t *q = NULL;
    return ndshm_queue_open_raw(*mem, need, &q) == 0 ? q : NULL;
}

/* Declares `q` on a raw queue of (slots, slot_bytes) in `mem` (`len` bytes); a test that cannot
 * make one fails and returns. */
#define RAW_QUEUE_OR_RETURN(q, mem, len, slots, slot_bytes) \
    void *mem;                                               \
    size_t len;                                              \
    ndshm_queue_t *q = raw_queue((slots), (slot_bytes), &mem, &len); \
    CHECK(q != NULL);                                        \
    if (!q) return

/* ---- calls that must not hang ------------------------------------------------------- */

enum { OP_TAKE, OP_PUT, OP_LOAN, OP_PUT_MANY, OP_GET_MANY };

typedef struct outcome {
    int rc;         /* the call's return code; 1 if it was killed still running */
    double dt;      /* seconds it took */
    char detail[240];
} outcome_t;

/* Runs `op` on q with `timeout` in a fork()ed child, so that a call that never returns (the
 * bug this guards against) is killed after `limit` s and fails the test instead of hanging it. */
static outcome_t bounded(ndshm_queue_t *q, int op, double timeout, double limit) {
    outcome_t res = {1, -1, "killed: still running"};
    outcome_t *o = shared_mem(sizeof *o);
    if (o == NULL) return res;
    o->dt = -1;
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_qmsg_t m;
        int32_t v = 7, got[8];
        int64_t one = 1;
        uint64_t offs[2] = {0, 4}, goff[3], n = 0;
        char ts[NDSHM_TYPESTR_MAX];
        double t0 = now_s();
        int rc;
        switch (op) {
        case OP_TAKE:
            rc = ndshm_queue_take(q, timeout, &m);
            if (rc == 0) ndshm_queue_release(q, &m);
            break;
        case OP_PUT: rc = ndshm_queue_put(q, &v, 4, "<i4", 1, &one, timeout); break;
        case OP_LOAN:
            rc = ndshm_queue_loan(q, 4, timeout, &m);
            if (rc == 0) ndshm_queue_discard(q, &m);
            break;
        case OP_PUT_MANY: rc = ndshm_queue_put_many(q, &v, offs, 1, "<i4", 4, timeout, &n); break;
        default: rc = ndshm_queue_get_many(q, got, sizeof got, goff, 2, ts, timeout, &n); break;
        }
        o->dt = now_s() - t0;
        snprintf(o->detail, sizeof o->detail, "%s", ndshm_last_detail());
        o->rc = rc;
        _exit(0);
    }
    wait_or_kill(pid, limit);
    if (o->dt >= 0) res = *o;
    munmap(o, sizeof *o);
    return res;
}

static const char *const op_names[] = {"take", "put", "loan", "put_many", "get_many"};

/* CHECKs that `op` with `timeout` returns `want` (whose detail holds `needle`) within 1 s. */
#define CHECK_BOUNDED(q, op, timeout, want, needle)                                                         \
    do {                                                                                                    \
        outcome_t o_ = bounded((q), (op), (timeout), 1.0);                                                  \
        if (o_.rc != (want) || o_.dt > 1.0 || strstr(o_.detail, (needle)) == NULL) {                        \
            fprintf(stderr, "  %s:%d: %s(timeout %g) returned %s after %.3f s (%s), wanted %s with '%s'\n",  \
                    __FILE__, __LINE__, op_names[op], (double)(timeout), o_.rc == 1 ? "nothing" : ndshm_errname(o_.rc), \
                    o_.dt, o_.detail, ndshm_errname(want), (needle));                                       \
            th_current_ok = 0;                                                                              \
        }                                                                                                   \
    } while (0)

/* The ring's header words (queue.c's ring_hdr_t): tail at 64, head at 128, claim records
 * {owner, intent} from 320; slot i's sequence number opens its slot. */
typedef struct ring_view {
    char *ring;
    size_t bytes;
    _Atomic uint64_t *tail, *head;
    uint64_t slots, slots_offset, stride;
} ring_view_t;

static ring_view_t view_of(ndshm_queue_t *q) {
    ndshm_queue_info_t info;
    ndshm_queue_info(q, &info);
    ring_view_t v;
    v.ring = (char *)info.ring;
    v.bytes = info.ring_bytes;
    v.tail = (_Atomic uint64_t *)(v.ring + 64);
    v.head = (_Atomic uint64_t *)(v.ring + 128);
    v.slots = info.slots;
    v.stride = info.slot_stride;
    v.slots_offset = info.ring_bytes - info.slots * info.slot_stride;
    return v;
}

static _Atomic uint64_t *seq_of(const ring_view_t *v, uint64_t slot) {
    return (_Atomic uint64_t *)(v->ring + v->slots_offset + slot * v->stride);
}

static int claim_records_free(const ring_view_t *v) {
    for (int i = 0; i < NDSHM_QUEUE_PARTICIPANTS; i++) {
        _Atomic uint64_t *rec = (_Atomic uint64_t *)(v->ring + 320 + 16 * i);
        if (atomic_load(&rec[0]) != 0 || atomic_load(&rec[1]) != 0) return 0;
    }
    return 1;
}

TEST(corrupt_ring_never_spins) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 128);
    ring_view_t v = view_of(q);
    char *snap = malloc(v.bytes);
    CHECK(atomic_load(seq_of(&v, 0)) == 0 && atomic_load(seq_of(&v, 3)) == 3); /* the layout is as assumed */
    for (int32_t i = 0; i < 2; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    CHECK(atomic_load(v.tail) == 2 && atomic_load(seq_of(&v, 1)) == 2);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0.05, &m), 0);
    CHECK(*(int32_t *)m.data == 0);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    CHECK(atomic_load(v.head) == 1 && atomic_load(seq_of(&v, 0)) == 4);
    const double timeouts[] = {0.05, 0, -1}; /* with a deadline, try once, for ever */

    /* a published slot's sequence number pushed far ahead (the Python repro: + 1 << 40) */
    atomic_fetch_add(seq_of(&v, 1), (uint64_t)1 << 40);
    memcpy(snap, v.ring, v.bytes);
    for (int t = 0; t < 3; t++) {
        CHECK_BOUNDED(q, OP_TAKE, timeouts[t], NDSHM_ECORRUPT, "corrupt");
        CHECK_BOUNDED(q, OP_GET_MANY, timeouts[t], NDSHM_ECORRUPT, "corrupt");
    }
    CHECK(memcmp(snap, v.ring, v.bytes) == 0); /* the failed calls wrote nothing */
    /* in this process too (if it cannot hang): the claim record of every failed take is given back */
    if (bounded(q, OP_TAKE, 0.05, 1.0).rc == NDSHM_ECORRUPT) {
        for (int i = 0; i < NDSHM_QUEUE_PARTICIPANTS + 4; i++) CHECK_RC(ndshm_queue_take(q, 0.05, &m), NDSHM_ECORRUPT);
        CHECK_DETAIL("impossible at head 1");
    }
    CHECK(claim_records_free(&v));
    atomic_fetch_sub(seq_of(&v, 1), (uint64_t)1 << 40);

    /* tail behind a published slot, and tail wrapped round (to the largest position: the top
     * bits are the shutdown flags, tested in shutdown_* and hostile_shutdown_bits) */
    uint64_t tail = atomic_load(v.tail), head = atomic_load(v.head);
    const uint64_t bad_tails[] = {tail - 1, UINT64_MAX >> 2};
    for (int b = 0; b < 2; b++) {
        atomic_store(v.tail, bad_tails[b]);
        memcpy(snap, v.ring, v.bytes);
        for (int t = 0; t < 3; t++) {
            CHECK_BOUNDED(q, OP_PUT, timeouts[t], NDSHM_ECORRUPT, "impossible at tail");
            CHECK_BOUNDED(q, OP_LOAN, timeouts[t], NDSHM_ECORRUPT, "corrupt");
            CHECK_BOUNDED(q, OP_PUT_MANY, timeouts[t], NDSHM_ECORRUPT, "corrupt");
        }
        CHECK(memcmp(snap, v.ring, v.bytes) == 0);
    }
    atomic_store(v.tail, tail);

    /* head behind a released slot, and head wrapped round */
    const uint64_t bad_heads[] = {head - 1, UINT64_MAX >> 1};
    for (int b = 0; b < 2; b++) {
        atomic_store(v.head, bad_heads[b]);
        memcpy(snap, v.ring, v.bytes);
        for (int t = 0; t < 3; t++) {
            CHECK_BOUNDED(q, OP_TAKE, timeouts[t], NDSHM_ECORRUPT, "impossible at head");
            CHECK_BOUNDED(q, OP_GET_MANY, timeouts[t], NDSHM_ECORRUPT, "corrupt");
        }
        CHECK(memcmp(snap, v.ring, v.bytes) == 0);
    }
    atomic_store(v.head, head);

    /* a free slot's sequence number further behind than a ring of 4 slots can explain */
    uint64_t seq2 = atomic_load(seq_of(&v, 2));
    atomic_store(seq_of(&v, 2), UINT64_MAX - 100);
    CHECK_BOUNDED(q, OP_PUT, 0.05, NDSHM_ECORRUPT, "corrupt");
    CHECK_BOUNDED(q, OP_PUT, 0, NDSHM_ECORRUPT, "corrupt");
    atomic_store(seq_of(&v, 2), seq2);

    /* repaired, the ring works on: message 1 is still there, then whole laps */
    CHECK(claim_records_free(&v));
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(*(int32_t *)m.data == 1);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    for (int32_t i = 0; i < 10; i++) {
        CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0.05), 0);
        CHECK_RC(ndshm_queue_take(q, 0.05, &m), 0);
        CHECK(*(int32_t *)m.data == i);
        CHECK_RC(ndshm_queue_release(q, &m), 0);
    }
    /* an empty and a full ring still time out as before */
    CHECK_BOUNDED(q, OP_TAKE, 0, NDSHM_EEMPTY, "empty");
    CHECK_BOUNDED(q, OP_TAKE, 0.05, NDSHM_ETIMEDOUT, "empty");
    for (int32_t i = 0; i < 4; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    CHECK_BOUNDED(q, OP_PUT, 0, NDSHM_EFULL, "full");
    CHECK_BOUNDED(q, OP_PUT, 0.05, NDSHM_ETIMEDOUT, "full");
    ndshm_queue_close(q);
    munmap(mem, len);

    /* get_many meeting an impossible slot after two good messages returns those two; the next
     * call reports the ring */
    q = raw_queue(4, 128, &mem, &len);
    CHECK(q != NULL);
    if (!q) return;
    v = view_of(q);
    int64_t one = 1;
    for (int32_t i = 0; i < 3; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 1, &one, 0), 0);
    atomic_fetch_add(seq_of(&v, 2), (uint64_t)1 << 40);
    int32_t got[8];
    uint64_t goff[5], count = 9;
    char ts[NDSHM_TYPESTR_MAX];
    if (bounded(q, OP_TAKE, 0, 1.0).rc == 0) { /* it cannot hang (and took message 0) */
        CHECK_RC(ndshm_queue_get_many(q, got, sizeof got, goff, 4, ts, 0.05, &count), 0);
        CHECK(count == 1 && got[0] == 1);
        CHECK_RC(ndshm_queue_get_many(q, got, sizeof got, goff, 4, ts, 0.05, &count), NDSHM_ECORRUPT);
        CHECK(count == 0);
        CHECK_DETAIL("impossible at head 2");
    } else
        CHECK(0);
    CHECK(claim_records_free(&v));
    free(snap);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A process that keeps rewriting tail with impossible values: a put with a deadline still
 * returns (ECORRUPT when it catches tail standing still, else ETIMEDOUT at its deadline). */
TEST(hostile_writer_cannot_pin_a_waiter) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 128);
    ring_view_t v = view_of(q);
    for (int32_t i = 0; i < 2; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    /* the puts below start only once the writer is rewriting tail: before that, a put on this
     * ring (2 of 4 slots used) simply succeeds */
    _Atomic int *started = shared_mem(sizeof *started);
    CHECK(started != NULL);
    if (started == NULL) return;
    atomic_store(started, 0);
    pid_t pid = fork();
    if (pid == 0)
        for (uint64_t k = 0;; k++) {
            atomic_store(v.tail, (k & 1) ? 1 : (UINT64_MAX >> 2) - (k & 0xff) * 4);
            if (k == 1) atomic_store(started, 1);
        }
    double t0 = now_s();
    while (!atomic_load(started) && now_s() - t0 < 10) usleep(100);
    CHECK(atomic_load(started));
    for (int t = 0; t < 2; t++) {
        outcome_t o = bounded(q, OP_PUT, t ? 0.05 : 0, 2.0);
        if (!(o.rc == NDSHM_ECORRUPT || o.rc == NDSHM_ETIMEDOUT || o.rc == NDSHM_EFULL))
            fprintf(stderr, "  put with a hostile writer returned %d (%s)\n", o.rc, o.detail);
        CHECK(o.rc == NDSHM_ECORRUPT || o.rc == NDSHM_ETIMEDOUT || o.rc == NDSHM_EFULL);
        CHECK(o.dt >= 0 && o.dt < 1.0);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    munmap((void *)started, sizeof *started);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* NaN is refused by every call that takes a timeout (it would wait for ever); +inf and
 * negative timeouts wait for ever. */
TEST(nan_and_infinite_timeouts) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    for (int op = OP_TAKE; op <= OP_GET_MANY; op++) CHECK_BOUNDED(q, op, NAN, NDSHM_EINVAL, "timeout nan is not a number");
    CHECK(ndshm_queue_size(q) == 0); /* no NaN put got through */
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, -NAN, &m), NDSHM_EINVAL);
    CHECK_DETAIL("ndshm_queue_take: timeout nan");
    int32_t v = 5;
    for (int i = 0; i < 4; i++) CHECK_RC(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, 0), 0);
    for (int op = OP_TAKE; op <= OP_GET_MANY; op++) CHECK_BOUNDED(q, op, NAN, NDSHM_EINVAL, "timeout nan");
    CHECK(ndshm_queue_size(q) == 4); /* no NaN take got through */
    /* +inf and -inf on a full queue: wait until a consumer makes room */
    const double forever[] = {INFINITY, -INFINITY, -1};
    for (int k = 0; k < 3; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            usleep(50000);
            ndshm_qmsg_t cm;
            _exit(ndshm_queue_take(q, 1, &cm) == 0 && ndshm_queue_release(q, &cm) == 0 ? 0 : 1);
        }
        double t0 = now_s();
        CHECK_RC(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, forever[k]), 0);
        double dt = now_s() - t0;
        CHECK(dt >= 0.03 && dt < 5);
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    for (int i = 0; i < 4; i++) {
        CHECK_RC(ndshm_queue_take(q, INFINITY, &m), 0);
        CHECK_RC(ndshm_queue_release(q, &m), 0);
    }
    /* ... and on an empty one until a producer comes */
    for (int k = 0; k < 3; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            usleep(50000);
            _exit(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, 1) == 0 ? 0 : 1);
        }
        double t0 = now_s();
        CHECK_RC(ndshm_queue_take(q, forever[k], &m), 0);
        double dt = now_s() - t0;
        CHECK(dt >= 0.03 && dt < 5);
        CHECK_RC(ndshm_queue_release(q, &m), 0);
        int st;
        CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(geometry_and_errors) {
    uint64_t n;
    CHECK_RC(ndshm_queue_ring_bytes(3, 10, &n), NDSHM_EINVAL);
    CHECK_DETAIL("slots 3");
    CHECK_RC(ndshm_queue_ring_bytes(0, 10, &n), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_ring_bytes(1, 10, &n), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_ring_bytes(1u << 21, 10, &n), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_ring_bytes(1024, UINT64_MAX / 4, &n), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_queue_ring_bytes(1u << 20, (uint64_t)1 << 62, &n), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_queue_ring_bytes(4, 100, &n), 0);
    CHECK(n > 4 * 100);
    char buf[64];
    ndshm_queue_t *q = NULL;
    CHECK_RC(ndshm_queue_open_raw(buf + 1, 100, &q), NDSHM_EINVAL);
    void *mem = shared_mem(1 << 16);
    CHECK_RC(ndshm_queue_init_raw(mem, 100, 4, 100), NDSHM_EINVAL);
    CHECK_DETAIL("smaller");
    CHECK_RC(ndshm_queue_init_raw(mem, 1 << 16, 4, 100), 0);
    /* a corrupted header is refused, naming what is wrong */
    uint64_t *slots_field = (uint64_t *)((char *)mem + 16);
    *slots_field = 3;
    CHECK_RC(ndshm_queue_open_raw(mem, 1 << 16, &q), NDSHM_ECORRUPT);
    *slots_field = 1u << 12;
    CHECK_RC(ndshm_queue_open_raw(mem, 1 << 16, &q), NDSHM_ECORRUPT);
    *slots_field = 4;
    CHECK_RC(ndshm_queue_open_raw(mem, 1 << 16, &q), 0);
    ndshm_queue_close(q);
    memset(mem, 0x5a, 64);
    CHECK_RC(ndshm_queue_open_raw(mem, 1 << 16, &q), NDSHM_ECORRUPT);
    CHECK_DETAIL("magic");
    munmap(mem, 1 << 16);
    ndshm_queue_close(NULL);
}

TEST(put_take_descriptors) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 256);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    double t0 = now_s();
    CHECK_RC(ndshm_queue_take(q, 0.05, &m), NDSHM_ETIMEDOUT);
    double dt = now_s() - t0;
    CHECK(dt >= 0.045 && dt < 0.5);
    int64_t shape[32];
    for (int i = 0; i < 32; i++) shape[i] = 1;
    shape[0] = 8;
    float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK_RC(ndshm_queue_put(q, data, sizeof data, "<f4", 32, shape, 0), 0);
    char big[300] = {0};
    CHECK_RC(ndshm_queue_put(q, big, sizeof big, "|u1", 1, shape, 0), NDSHM_ETOOBIG);
    CHECK_DETAIL("300");
    CHECK_DETAIL("256");
    CHECK_RC(ndshm_queue_put(q, data, 4, "<f4", 33, shape, 0), NDSHM_EINVAL);
    CHECK(ndshm_queue_size(q) == 1);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(m.nbytes == sizeof data && m.ndim == 32 && m.shape[0] == 8 && m.shape[31] == 1);
    CHECK(strcmp(m.typestr, "<f4") == 0);
    CHECK(memcmp(m.data, data, sizeof data) == 0);
    CHECK((uintptr_t)m.data % 64 == 0);
    CHECK((char *)m.data > (char *)mem && (char *)m.data + 256 <= (char *)mem + len);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    CHECK_RC(ndshm_queue_release(q, &m), NDSHM_EINVAL);
    /* full */
    for (int i = 0; i < 4; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    CHECK_RC(ndshm_queue_put(q, data, 4, "<i4", 0, NULL, 0), NDSHM_EFULL);
    CHECK_RC(ndshm_queue_put(q, data, 4, "<i4", 0, NULL, 0.03), NDSHM_ETIMEDOUT);
    for (int i = 0; i < 4; i++) {
        CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
        CHECK(*(int *)m.data == i && m.ndim == 0);
        CHECK_RC(ndshm_queue_release(q, &m), 0);
    }
    /* loan, discard, publish: a discarded slot is passed over */
    CHECK_RC(ndshm_queue_loan(q, 1000, 0, &m), NDSHM_ETOOBIG);
    CHECK_RC(ndshm_queue_loan(q, 8, 0, &m), 0);
    CHECK_RC(ndshm_queue_discard(q, &m), 0);
    CHECK_RC(ndshm_queue_loan(q, 8, 0, &m), 0);
    memcpy(m.data, "abcdefgh", 8);
    strcpy(m.typestr, "|S8");
    m.ndim = 0;
    CHECK_RC(ndshm_queue_publish(q, &m), 0);
    CHECK_RC(ndshm_queue_publish(q, &m), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(memcmp(m.data, "abcdefgh", 8) == 0 && strcmp(m.typestr, "|S8") == 0);
    char out[8];
    CHECK_RC(ndshm_queue_release_copy(q, &m, out), 0);
    CHECK(memcmp(out, "abcdefgh", 8) == 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    /* typestrs are zero-padded to the end of the field, whatever the slot held before */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 4; i++) {
            const char *ts = round ? "<f4" : "<m8[10us]";
            CHECK_RC(ndshm_queue_put(q, data, 4, ts, 0, NULL, 0), 0);
            CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
            CHECK(strcmp(m.typestr, ts) == 0);
            for (size_t j = strlen(ts); j < NDSHM_TYPESTR_MAX; j++) CHECK(m.typestr[j] == '\0');
            CHECK_RC(ndshm_queue_release(q, &m), 0);
        }
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(batches) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 8, 64);
    int32_t data[30];
    for (int i = 0; i < 30; i++) data[i] = i;
    uint64_t offs[11], done = 0;
    for (int i = 0; i <= 10; i++) offs[i] = (uint64_t)i * 12;
    CHECK_RC(ndshm_queue_put_many(q, data, offs, 10, "<i4", 4, 0, &done), 0);
    CHECK(done == 8); /* 8 slots */
    int32_t got[30];
    uint64_t goff[9], count = 0;
    char ts[32];
    CHECK_RC(ndshm_queue_get_many(q, got, 40, goff, 8, ts, 0, &count), 0);
    CHECK(count == 3 && goff[3] == 36 && strcmp(ts, "<i4") == 0);
    CHECK(got[0] == 0 && got[8] == 8);
    CHECK_RC(ndshm_queue_get_many(q, got, sizeof got, goff, 8, ts, 0, &count), 0);
    CHECK(count == 5 && got[0] == 9 && got[14] == 23);
    CHECK_RC(ndshm_queue_get_many(q, got, sizeof got, goff, 8, ts, 0, &count), NDSHM_EEMPTY);
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(segment_create_attach) {
    char name[64];
    snprintf(name, sizeof name, "ctest-q-%d", (int)getpid());
    ndshm_queue_t *q = NULL, *a = NULL;
    CHECK_RC(ndshm_queue_create(name, NULL, 3, 64, 0, 0, &q), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_create(name, NULL, 8, 1 << 16, 0, 0, &q), 0);
    if (!q) return;
    CHECK_RC(ndshm_queue_create(name, NULL, 8, 64, 0, 0, &a), NDSHM_EEXIST);
    ndshm_queue_info_t info;
    CHECK_RC(ndshm_queue_info(q, &info), 0);
    CHECK(info.slots == 8 && info.slot_bytes == 1 << 16 && strcmp(info.name, name) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_queue_t *c = NULL;
        if (ndshm_queue_attach(name, NULL, &c) != 0) _exit(2);
        int64_t shape = 3;
        for (int i = 0; i < 100; i++) {
            double v[3] = {i, i + 1, i + 2};
            if (ndshm_queue_put(c, v, sizeof v, "<f8", 1, &shape, 5) != 0) _exit(3);
        }
        ndshm_queue_close(c);
        _exit(0);
    }
    int ok = 1;
    for (int i = 0; i < 100; i++) {
        ndshm_qmsg_t m;
        if (ndshm_queue_take(q, 5, &m) != 0) { ok = 0; break; }
        double *v = m.data;
        if (v[0] != i || v[2] != i + 2 || m.shape[0] != 3 || strcmp(m.typestr, "<f8")) ok = 0;
        ndshm_queue_release(q, &m);
    }
    CHECK(ok);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* an array segment is not a queue */
    char aname[80];
    snprintf(aname, sizeof aname, "%s-arr", name);
    ndshm_segment_params_t p;
    memset(&p, 0, sizeof p);
    p.kind = NDSHM_KIND_NAMED;
    p.name = aname;
    strcpy(p.layout.typestr, "<f8");
    p.layout.itemsize = 8;
    p.layout.ndim = 1;
    p.layout.shape[0] = 10;
    p.layout.strides[0] = 8;
    ndshm_segment_t *seg = NULL;
    CHECK_RC(ndshm_segment_create(&p, &seg), 0);
    CHECK_RC(ndshm_queue_attach(aname, NULL, &a), NDSHM_EINVAL);
    CHECK_DETAIL("not a queue");
    ndshm_segment_close(seg);
    CHECK_RC(ndshm_queue_attach("ctest-q-no-such", NULL, &a), NDSHM_ENOENT);
    ndshm_queue_close(q);
    CHECK_RC(ndshm_queue_attach(name, NULL, &a), NDSHM_ENOENT);
}

/* ---- 4 x 4 x 100k ---------------------------------------------------------------------- */

enum { NP = 4, NC = 4, PER = 100000 };

typedef struct msg16 {
    uint32_t producer, pad;
    uint64_t seq;
} msg16_t;

TEST(mpmc_4x4x100k) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 256, 64);
    uint8_t *seen = shared_mem((size_t)NP * PER);
    _Atomic uint64_t *remaining = shared_mem(4096);
    atomic_store(remaining, (uint64_t)NP * PER);
    pid_t pids[NP + NC];
    double t0 = now_s();
    for (int c = 0; c < NC; c++) {
        pids[NP + c] = fork();
        if (pids[NP + c] == 0) {
            uint64_t last[NP];
            for (int p = 0; p < NP; p++) last[p] = UINT64_MAX;
            int bad = 0;
            while (atomic_load(remaining) > 0) {
                ndshm_qmsg_t m;
                int rc = ndshm_queue_take(q, 0.02, &m);
                if (rc == NDSHM_ETIMEDOUT) continue;
                if (rc != 0) _exit(10);
                msg16_t v;
                memcpy(&v, m.data, sizeof v);
                ndshm_queue_release(q, &m);
                if (v.producer >= NP || v.seq >= PER) { bad = 1; continue; }
                if (last[v.producer] != UINT64_MAX && v.seq <= last[v.producer]) bad = 1; /* order per producer */
                last[v.producer] = v.seq;
                seen[v.producer * PER + v.seq]++;
                atomic_fetch_sub(remaining, 1);
            }
            _exit(bad ? 11 : 0);
        }
    }
    for (int p = 0; p < NP; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            for (uint64_t i = 0; i < PER; i++) {
                msg16_t v = {(uint32_t)p, 0, i};
                if (ndshm_queue_put(q, &v, sizeof v, "|V16", 0, NULL, -1) != 0) _exit(12);
            }
            _exit(0);
        }
    }
    int ok = 1;
    for (int i = 0; i < NP + NC; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "  child %d status %d\n", i, st);
            ok = 0;
        }
    }
    double dt = now_s() - t0;
    size_t dup = 0, lost = 0;
    for (size_t i = 0; i < (size_t)NP * PER; i++) {
        if (seen[i] == 0) lost++;
        if (seen[i] > 1) dup++;
    }
    printf("  mpmc 4x4x100k: %.2f s (%.0f msgs/s), lost %zu, duplicated %zu\n", dt, NP * PER / dt, lost, dup);
    CHECK(ok && lost == 0 && dup == 0);
    ndshm_queue_close(q);
    munmap(seen, (size_t)NP * PER);
    munmap(mem, len);
}

/* ---- kill -9 at precise points ------------------------------------------------------- */

/* A child that does `step` on q (0: done), says so through a pipe and waits to be killed: its pid
 * once the step is done, or -1 (the child failed the step, and is reaped). */
static pid_t child_after(ndshm_queue_t *q, int (*step)(ndshm_queue_t *q)) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (step(q) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(3);
        pause();
        _exit(0);
    }
    close(fds[1]); /* a child that exits early ends the read */
    char c;
    ssize_t got = pid > 0 ? read(fds[0], &c, 1) : -1;
    close(fds[0]);
    if (got != 1) {
        if (pid > 0) waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

static int loan_half_written(ndshm_queue_t *q) {
    ndshm_qmsg_t m;
    if (ndshm_queue_loan(q, 8, 0, &m) != 0) return -1;
    memcpy(m.data, "half", 4); /* mid-message */
    return 0;
}

static int take_one(ndshm_queue_t *q) {
    ndshm_qmsg_t m;
    return ndshm_queue_take(q, 0, &m);
}

static int loan_unpublished(ndshm_queue_t *q) {
    ndshm_qmsg_t m;
    return ndshm_queue_loan(q, 4, 0, &m); /* never published */
}

TEST(kill_producer_holding_loan) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    pid_t pid = child_after(q, loan_half_written);
    CHECK(pid > 0);
    if (pid <= 0) return; /* never kill(-1) */
    /* another producer publishes behind the dead one's claim */
    int v = 42;
    CHECK_RC(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, 0), 0);
    kill(pid, SIGKILL); /* not reaped yet: a zombie counts as dead */
    ndshm_qmsg_t m;
    double t0 = now_s();
    int rc;
    while ((rc = ndshm_queue_take(q, 0, &m)) == NDSHM_EEMPTY && now_s() - t0 < 2) { /* polling recovers too */
    }
    CHECK_RC(rc, 0);
    CHECK(now_s() - t0 < 1.0);
    CHECK(m.nbytes == 4 && *(int *)m.data == 42);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    waitpid(pid, NULL, 0);
    /* the ring is whole again: fill it and drain it */
    for (int i = 0; i < 4; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    for (int i = 0; i < 4; i++) {
        CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
        CHECK(*(int *)m.data == i);
        ndshm_queue_release(q, &m);
    }
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(kill_consumer_holding_message) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 2, 64);
    for (int i = 0; i < 2; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    pid_t pid = child_after(q, take_one);
    CHECK(pid > 0);
    if (pid <= 0) return; /* never kill(-1) */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    int v = 7;
    double t0 = now_s();
    CHECK_RC(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, 2), 0); /* the dead consumer's slot comes back */
    CHECK(now_s() - t0 < 1.0);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0); /* the published message 1 was not lost */
    CHECK(*(int *)m.data == 1);
    ndshm_queue_release(q, &m);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(*(int *)m.data == 7);
    ndshm_queue_release(q, &m);
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* ---- a slow but live claimer is never taken for a dead one --------------------------- */

/* A live child holds a loan 25x the recovery delay (DEAD_CHECK_NS, 20 ms) while the parent
 * publishes behind it and waits to take: the child's message arrives first, whole, and nothing
 * is skipped. Treating a live claimer as dead would skip its slot and lose the message. */
TEST(slow_live_producer_is_not_skipped) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_qmsg_t m;
        if (ndshm_queue_loan(q, 8, 0, &m) != 0) _exit(2);
        memcpy(m.data, "slow", 4);
        if (write(fds[1], "x", 1) != 1) _exit(3);
        usleep(500000);
        memcpy((char *)m.data + 4, "live", 4);
        snprintf(m.typestr, sizeof m.typestr, "|V8");
        _exit(ndshm_queue_publish(q, &m) == 0 ? 0 : 4);
    }
    char c;
    CHECK(read(fds[0], &c, 1) == 1);
    int v = 42;
    CHECK_RC(ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, 0), 0); /* behind the child's claim */
    double t0 = now_s();
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 5, &m), 0);
    double waited = now_s() - t0;
    CHECK(waited > 0.35);
    CHECK(m.nbytes == 8 && memcmp(m.data, "slowlive", 8) == 0 && strcmp(m.typestr, "|V8") == 0);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(m.nbytes == 4 && *(int *)m.data == 42);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY); /* nothing skipped, nothing extra */
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fds[0]);
    close(fds[1]);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A live child holds a received message 25x the recovery delay while the parent, with the ring
 * full, waits to put into that very slot: the put waits for the release, the child's view of its
 * message never changes under it, and the slot is not recycled early. */
TEST(slow_live_consumer_is_not_recycled) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 2, 64);
    for (int i = 0; i < 2; i++) {
        int64_t words[8];
        for (int k = 0; k < 8; k++) words[k] = 1000 * i + k;
        CHECK_RC(ndshm_queue_put(q, words, sizeof words, "<i8", 0, NULL, 0), 0);
    }
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ndshm_qmsg_t m;
        if (ndshm_queue_take(q, 0, &m) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(3);
        int bad = 0;
        for (int round = 0; round < 50; round++) { /* 0.5 s, reading its message all along */
            usleep(10000);
            for (int k = 0; k < 8; k++) bad |= ((const int64_t *)m.data)[k] != k;
        }
        ndshm_queue_release(q, &m);
        _exit(bad ? 4 : 0);
    }
    char c;
    CHECK(read(fds[0], &c, 1) == 1);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0); /* message 1, from the other slot */
    CHECK(*(const int64_t *)m.data == 1000);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    int64_t next[8] = {7, 7, 7, 7, 7, 7, 7, 7};
    double t0 = now_s();
    CHECK_RC(ndshm_queue_put(q, next, sizeof next, "<i8", 0, NULL, 5), 0); /* needs the child's slot */
    CHECK(now_s() - t0 > 0.35);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(m.nbytes == sizeof next && ((const int64_t *)m.data)[7] == 7);
    CHECK_RC(ndshm_queue_release(q, &m), 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    close(fds[0]);
    close(fds[1]);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A producer that lost the race for a position (its CAS on tail failed: another producer claimed
 * it) and then waits for a full ring leaves no intent behind. Should the winner die before it
 * publishes, consumers would take that stale intent for a live claim of the position and never
 * pass it, while every producer waits for its slot: for ever (kill_random_points hung so). The
 * race is lost on purpose here: tail holds T_GONE (bit 62) without T_SHUTDOWN over the dead
 * claim's position, so the racer reads that position, finds its slot free and fails its CAS, as
 * if the winner had just claimed it; then tail gets its true value back (the ring is full). */
TEST(lost_claim_race_leaves_no_intent) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    ring_view_t v = view_of(q);
    pid_t winner = child_after(q, loan_unpublished); /* position 0 */
    CHECK(winner > 0);
    if (winner <= 0) return; /* never kill(-1) */
    kill(winner, SIGKILL);
    waitpid(winner, NULL, 0);
    for (int i = 1; i < 4; i++) CHECK_RC(ndshm_queue_put(q, &i, 4, "<i4", 0, NULL, 0), 0);
    CHECK(atomic_load(v.tail) == 4);
    atomic_store(v.tail, (uint64_t)1 << 62); /* position 0, and a CAS from 0 fails */
    pid_t racer = fork();
    if (racer == 0) {
        int x = 9;
        _exit(ndshm_queue_put(q, &x, 4, "<i4", 0, NULL, 5) == 0 ? 0 : 1);
    }
    /* the racer has lost the race once its record shows the dead winner's intent too */
    double t0 = now_s();
    int losing = 0;
    while (!losing && now_s() - t0 < 5) {
        int k = 0;
        for (int i = 0; i < NDSHM_QUEUE_PARTICIPANTS; i++)
            k += atomic_load((_Atomic uint64_t *)(v.ring + 320 + 16 * i + 8)) == 1; /* (0 << 1 | producer) + 1 */
        losing = k >= 2;
    }
    CHECK(losing);
    atomic_store(v.tail, 4); /* its next look finds the ring full: it waits for slot 0 */
    usleep(50000);
    ndshm_qmsg_t m;
    t0 = now_s();
    int rc = ndshm_queue_take(q, 2, &m); /* the dead winner's position is passed over */
    CHECK_RC(rc, 0);
    CHECK(now_s() - t0 < 1.0);
    if (rc == 0) {
        CHECK(m.nbytes == 4 && *(int *)m.data == 1);
        CHECK_RC(ndshm_queue_release(q, &m), 0);
        int st;
        CHECK(waitpid(racer, &st, 0) == racer && WIFEXITED(st) && WEXITSTATUS(st) == 0); /* its put got slot 0 */
        for (int want = 2; want <= 4; want++) {
            CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
            CHECK(m.state_ == 2 && *(int *)m.data == (want == 4 ? 9 : want));
            ndshm_queue_release(q, &m);
        }
        CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    } else {
        kill(racer, SIGKILL);
        waitpid(racer, NULL, 0);
    }
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* ---- kill -9 at random points -------------------------------------------------------- */

/* One round: P producers and C+1 consumers; after `delay_us` the last producer and the last
 * consumer are killed wherever they are. Returns 1 if the survivors finished correctly. */
static int kill_round(long delay_us, double *took) {
    enum { P = 3, C = 2, N = 20000 };
    void *mem;
    size_t len;
    ndshm_queue_t *q = raw_queue(16, 64, &mem, &len);
    if (!q) return 0;
    uint8_t *seen = shared_mem((size_t)P * N);
    _Atomic uint64_t *stop = shared_mem(4096);
    pid_t prod[P], cons[C + 1];
    for (int c = 0; c < C + 1; c++) { /* consumer C is the victim */
        cons[c] = fork();
        if (cons[c] == 0) {
            while (!atomic_load(stop)) {
                ndshm_qmsg_t m;
                if (ndshm_queue_take(q, 0.02, &m) != 0) continue;
                msg16_t v;
                memcpy(&v, m.data, sizeof v);
                if (v.producer < P && v.seq < N) seen[v.producer * N + v.seq]++;
                ndshm_queue_release(q, &m);
            }
            _exit(0);
        }
    }
    for (int p = 0; p < P; p++) { /* producer P-1 is the victim */
        prod[p] = fork();
        if (prod[p] == 0) {
            for (uint64_t i = 0; i < N; i++) {
                msg16_t v = {(uint32_t)p, 0, i};
                if (ndshm_queue_put(q, &v, sizeof v, "|V16", 0, NULL, -1) != 0) _exit(12);
            }
            _exit(0);
        }
    }
    struct timespec ts = {0, delay_us * 1000};
    nanosleep(&ts, NULL);
    kill(prod[P - 1], SIGKILL);
    kill(cons[C], SIGKILL);
    int ok = 1;
    double t0 = now_s();
    for (int p = 0; p < P; p++) { /* a hang is a failure, not a test that never ends */
        int st = 0;
        while (waitpid(prod[p], &st, WNOHANG) == 0) {
            if (now_s() - t0 > 20) {
                fprintf(stderr, "  round with delay %ld us: producer %d still running 20 s after the kill\n", delay_us, p);
                kill(prod[p], SIGKILL);
                waitpid(prod[p], &st, 0);
                break;
            }
            usleep(1000);
        }
        if (p < P - 1 && (!WIFEXITED(st) || WEXITSTATUS(st))) ok = 0;
    }
    size_t lost = 0, dup = 0;
    struct timespec nap = {0, 2000000};
    for (;;) { /* every survivor's message arrives, bar at most one the dead consumer held */
        lost = 0;
        for (size_t i = 0; i < (size_t)(P - 1) * N; i++) lost += seen[i] == 0;
        if (lost <= 1 || now_s() - t0 > 20) break;
        nanosleep(&nap, NULL);
    }
    /* and nothing stays stuck: the victim producer's published messages drain too */
    while (ndshm_queue_size(q) != 0 && now_s() - t0 < 20) nanosleep(&nap, NULL);
    atomic_store(stop, 1);
    for (int c = 0; c < C + 1; c++) waitpid(cons[c], NULL, 0);
    /* The count above only paces the wait: its one missing message may be the last one still
     * in a live consumer's hands (taken, not yet in seen[]) or still queued, while the dead
     * consumer held one of the victim's (a hole below). Every live consumer counts the message
     * it took before it looks at `stop`, so only now is seen[] final. */
    lost = 0;
    for (size_t i = 0; i < (size_t)(P - 1) * N; i++) {
        if (seen[i] == 0) lost++;
        if (seen[i] > 1) dup++;
    }
    /* the victim producer put 0, 1, 2, ... one at a time: what it published is a prefix of that,
     * and the one message the dead consumer may have held is the only hole (in all producers) */
    const uint8_t *vseen = seen + (size_t)(P - 1) * N;
    size_t vend = 0, holes = 0;
    for (size_t i = 0; i < N; i++) {
        if (vseen[i] > 1) dup++;
        if (vseen[i]) vend = i + 1;
    }
    for (size_t i = 0; i < vend; i++) holes += vseen[i] == 0;
    *took = now_s() - t0;
    int good = ok && lost + holes <= 1 && dup == 0 && ndshm_queue_size(q) == 0;
    if (!good)
        fprintf(stderr, "  round with delay %ld us: ok %d lost %zu dup %zu victim holes %zu (of %zu) size %llu\n",
                delay_us, ok, lost, dup, holes, vend, (unsigned long long)ndshm_queue_size(q));
    ndshm_queue_close(q);
    munmap(seen, (size_t)P * N);
    munmap(stop, 4096);
    munmap(mem, len);
    return good;
}

TEST(kill_random_points) {
    double worst = 0;
    srand((unsigned)getpid());
    for (int round = 0; round < 12; round++) {
        double took = 0;
        long delay = 200 + rand() % 8000;
        CHECK(kill_round(delay, &took));
        if (took > worst) worst = took;
    }
    printf("  kill -9 at random points, 12 rounds: survivors always finished, worst %.2f s after the kill\n", worst);
}

/* ---- shutdown ------------------------------------------------------------------------ */

static int put_i(ndshm_queue_t *q, int v, double timeout) { return ndshm_queue_put(q, &v, 4, "<i4", 0, NULL, timeout); }

TEST(shutdown_drains_then_ends) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    CHECK_RC(ndshm_queue_is_shutdown(q), 0);
    CHECK_RC(put_i(q, 1, 0), 0);
    CHECK_RC(put_i(q, 2, 0), 0);
    ndshm_qmsg_t loan;
    CHECK_RC(ndshm_queue_loan(q, 4, 0, &loan), 0); /* in flight across the shutdown */
    CHECK_RC(ndshm_queue_shutdown(q, 0), 0);
    CHECK_RC(ndshm_queue_is_shutdown(q), 1);
    CHECK_RC(put_i(q, 3, 0), NDSHM_ESHUTDOWN);
    CHECK_DETAIL("shut down");
    CHECK_RC(put_i(q, 3, -1), NDSHM_ESHUTDOWN); /* never waits */
    ndshm_qmsg_t m2;
    CHECK_RC(ndshm_queue_loan(q, 4, 1, &m2), NDSHM_ESHUTDOWN);
    uint64_t offs[2] = {0, 4}, done = 9;
    int v = 5;
    CHECK_RC(ndshm_queue_put_many(q, &v, offs, 1, "<i4", 4, 0, &done), NDSHM_ESHUTDOWN);
    CHECK(done == 0);
    CHECK_RC(ndshm_queue_register_producer(q), NDSHM_ESHUTDOWN);
    ndshm_qmsg_t m;
    for (int i = 1; i <= 2; i++) {
        CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
        CHECK(*(int *)m.data == i);
        ndshm_queue_release(q, &m);
    }
    /* the loan made before the shutdown is still waited for, then delivered */
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_EEMPTY);
    *(int *)loan.data = 77;
    loan.typestr[0] = '\0';
    CHECK_RC(ndshm_queue_publish(q, &loan), 0);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    CHECK(*(int *)m.data == 77);
    ndshm_queue_release(q, &m);
    double t0 = now_s();
    CHECK_RC(ndshm_queue_take(q, -1, &m), NDSHM_ESHUTDOWN); /* drained: at once, even waiting for ever */
    CHECK(now_s() - t0 < 0.5);
    char ts[NDSHM_TYPESTR_MAX];
    int got[4];
    uint64_t goff[3], n = 7;
    CHECK_RC(ndshm_queue_get_many(q, got, sizeof got, goff, 2, ts, -1, &n), NDSHM_ESHUTDOWN);
    CHECK(n == 0);
    CHECK(ndshm_queue_size(q) == 0);
    CHECK_RC(ndshm_queue_shutdown(q, 1), 0); /* immediate after plain */
    CHECK_RC(ndshm_queue_is_shutdown(q), 2);
    CHECK_RC(ndshm_queue_shutdown(NULL, 0), NDSHM_EINVAL);
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(shutdown_immediate_discards) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    CHECK_RC(put_i(q, 1, 0), 0);
    CHECK_RC(put_i(q, 2, 0), 0);
    ndshm_qmsg_t held;
    CHECK_RC(ndshm_queue_take(q, 0, &held), 0); /* a message being read survives */
    CHECK_RC(ndshm_queue_shutdown(q, 1), 0);
    CHECK_RC(ndshm_queue_is_shutdown(q), 2);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0, &m), NDSHM_ESHUTDOWN);
    CHECK(*(int *)held.data == 1);
    CHECK_RC(ndshm_queue_release(q, &held), 0);
    CHECK_RC(put_i(q, 3, 0), NDSHM_ESHUTDOWN);
    CHECK(ndshm_queue_size(q) == 0); /* discarded, as Python 3.13's queue empties itself */
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A producer blocked on a full queue and a consumer asleep on an empty one both wake at once. */
TEST(shutdown_wakes_sleepers) {
    RAW_QUEUE_OR_RETURN(full, mem, len, 2, 64);
    RAW_QUEUE_OR_RETURN(empty, mem2, len2, 2, 64);
    CHECK_RC(put_i(full, 1, 0), 0);
    CHECK_RC(put_i(full, 2, 0), 0);
    double *dt = shared_mem(2 * sizeof(double));
    int *rcs = shared_mem(2 * sizeof(int));
    CHECK(dt != NULL && rcs != NULL);
    if (!dt || !rcs) return;
    pid_t pids[2];
    for (int k = 0; k < 2; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            double t0 = now_s();
            ndshm_qmsg_t m;
            rcs[k] = k == 0 ? put_i(full, 3, -1) : ndshm_queue_take(empty, -1, &m);
            dt[k] = now_s() - t0;
            _exit(0);
        }
    }
    usleep(300000); /* both are asleep on their futex by now (they spin 100 us) */
    double t0 = now_s();
    CHECK_RC(ndshm_queue_shutdown(full, 0), 0);
    CHECK_RC(ndshm_queue_shutdown(empty, 0), 0);
    for (int k = 0; k < 2; k++) wait_or_kill(pids[k], 5);
    double woke = now_s() - t0;
    CHECK(rcs[0] == NDSHM_ESHUTDOWN && rcs[1] == NDSHM_ESHUTDOWN);
    CHECK(dt[0] > 0.25 && dt[1] > 0.25); /* they really slept */
    CHECK(woke < 0.5);
    ndshm_queue_close(full);
    ndshm_queue_close(empty);
    munmap(mem, len);
    munmap(mem2, len2);
}

/* Registered producers: the queue shuts down (after the drain) once every one has exited. */
TEST(registered_producers_end_the_stream) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 8, 64);
    CHECK_RC(ndshm_queue_producers(q), 0);
    CHECK_RC(ndshm_queue_expect_producers(q, 2), 0);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pids[2];
    for (int k = 0; k < 2; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            if (ndshm_queue_register_producer(q) != 0 || ndshm_queue_register_producer(q) != 0) _exit(2);
            if (put_i(q, 10 + k, 0) != 0) _exit(3);
            if (write(fds[1], "x", 1) != 1) _exit(4);
            if (k == 1) pause(); /* killed */
            _exit(0);            /* exits normally */
        }
    }
    char c;
    CHECK(read(fds[0], &c, 1) == 1 && read(fds[0], &c, 1) == 1);
    CHECK_RC(ndshm_queue_producers(q), 1 + (waitpid(pids[0], NULL, WNOHANG) == 0));
    ndshm_qmsg_t m;
    int sum = 0;
    for (int i = 0; i < 2; i++) {
        CHECK_RC(ndshm_queue_take(q, 1, &m), 0);
        sum += *(int *)m.data;
        ndshm_queue_release(q, &m);
    }
    CHECK(sum == 21);
    CHECK_RC(ndshm_queue_take(q, 0.2, &m), NDSHM_ETIMEDOUT); /* producer 1 still runs */
    CHECK_RC(ndshm_queue_is_shutdown(q), 0);
    kill(pids[1], SIGKILL);
    double t0 = now_s();
    CHECK_RC(ndshm_queue_take(q, 5, &m), NDSHM_ESHUTDOWN);
    CHECK_DETAIL("every registered producer has exited");
    CHECK(now_s() - t0 < 1.0);
    CHECK_RC(ndshm_queue_is_shutdown(q), 3);
    CHECK_RC(ndshm_queue_producers(q), 0);
    CHECK_RC(put_i(q, 1, 0), NDSHM_ESHUTDOWN);
    waitpid(pids[0], NULL, 0);
    waitpid(pids[1], NULL, 0);
    close(fds[0]);
    close(fds[1]);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* Shutdown bits written by a hostile process are a shutdown: every call returns at once and
 * writes nothing to the ring. */
TEST(hostile_shutdown_bits) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    ring_view_t v = view_of(q);
    CHECK_RC(put_i(q, 1, 0), 0);
    atomic_store(v.tail, UINT64_MAX);
    atomic_store(v.head, UINT64_MAX);
    char *snap = malloc(v.bytes);
    CHECK(snap != NULL);
    if (!snap) return;
    memcpy(snap, v.ring, v.bytes);
    CHECK_BOUNDED(q, OP_PUT, -1, NDSHM_ESHUTDOWN, "shut down");
    CHECK_BOUNDED(q, OP_LOAN, -1, NDSHM_ESHUTDOWN, "shut down");
    CHECK_BOUNDED(q, OP_TAKE, -1, NDSHM_ESHUTDOWN, "shut down");
    CHECK_BOUNDED(q, OP_GET_MANY, -1, NDSHM_ESHUTDOWN, "shut down");
    CHECK(memcmp(snap, v.ring, v.bytes) == 0);
    CHECK(ndshm_queue_size(q) <= 4);
    free(snap);
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(unregister_is_the_end_of_a_producer) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    CHECK_RC(ndshm_queue_unregister_producer(q), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_expect_producers(q, 2), 0);
    CHECK_RC(ndshm_queue_register_producer(q), 0);
    CHECK_RC(ndshm_queue_unregister_producer(q), 0);
    ndshm_qmsg_t m0;
    CHECK_RC(ndshm_queue_take(q, 0.1, &m0), NDSHM_ETIMEDOUT); /* 1 of 2 expected registered: no end yet */
    CHECK_RC(ndshm_queue_is_shutdown(q), 0);
    CHECK_RC(ndshm_queue_expect_producers(q, 0), 0);
    CHECK_RC(ndshm_queue_register_producer(q), 0);
    CHECK_RC(ndshm_queue_producers(q), 1);
    CHECK_RC(put_i(q, 5, 0), 0);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0);
    ndshm_queue_release(q, &m);
    CHECK_RC(ndshm_queue_take(q, 0.1, &m), NDSHM_ETIMEDOUT); /* a live producer: no end */
    CHECK_RC(put_i(q, 6, 0), 0);
    CHECK_RC(ndshm_queue_unregister_producer(q), 0);
    CHECK_RC(ndshm_queue_producers(q), 0);
    CHECK_RC(ndshm_queue_take(q, 1, &m), 0); /* drained first */
    CHECK(*(int *)m.data == 6);
    ndshm_queue_release(q, &m);
    CHECK_RC(ndshm_queue_take(q, 1, &m), NDSHM_ESHUTDOWN);
    ndshm_queue_close(q);
    munmap(mem, len);
}

TEST(take_copy_fits_or_stays_taken) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 4, 64);
    int64_t shape = 2;
    int32_t v[2] = {5, 6}, dst[4] = {0};
    CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), 0);
    CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), 0);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take_copy(q, 0, &m, dst, sizeof dst), 0);
    CHECK(dst[0] == 5 && dst[1] == 6 && m.nbytes == 8 && m.ndim == 1 && m.shape[0] == 2 && m.state_ == 0);
    CHECK(strcmp(m.typestr, "<i4") == 0);
    CHECK_RC(ndshm_queue_take_copy(q, 0, &m, dst, 4), NDSHM_ETOOBIG); /* does not fit: stays taken */
    CHECK_DETAIL("stays taken");
    CHECK(m.state_ == 2);
    CHECK_RC(ndshm_queue_release_copy(q, &m, dst), 0);
    CHECK_RC(ndshm_queue_take_copy(q, 0, &m, NULL, 0), NDSHM_EEMPTY);
    CHECK_RC(ndshm_queue_take_copy(NULL, 0, &m, NULL, 0), NDSHM_EINVAL);
    CHECK(ndshm_queue_size(q) == 0);
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A pinned slot (a loan whose memory the publisher still references) is never reused: the pinning
 * process is told at once, another process waits as for a full queue, and the pin ends with
 * unpin or with the pinner's death. */
TEST(pinned_slot_is_not_reused) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 2, 64);
    int64_t shape = 2;
    int32_t v[2] = {1, 2};
    ndshm_qmsg_t m, t;
    CHECK_RC(ndshm_queue_loan(q, 8, 0, &m), 0);
    uint64_t pos = m.pos_;
    CHECK_RC(ndshm_queue_pin(q, &m), 0);
    m.ndim = 1, m.shape[0] = 2;
    strcpy(m.typestr, "<i4");
    CHECK_RC(ndshm_queue_publish(q, &m), 0);
    CHECK_RC(ndshm_queue_pin(q, &m), NDSHM_EINVAL); /* no longer loaned */
    CHECK_RC(ndshm_queue_take(q, 0, &t), 0);
    CHECK_RC(ndshm_queue_release(q, &t), 0);
    CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), 0); /* the other slot */
    CHECK_RC(ndshm_queue_take(q, 0, &t), 0);
    CHECK_RC(ndshm_queue_release(q, &t), 0);
    CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), NDSHM_EBUSY); /* our own pin */
    CHECK_DETAIL("queue slot 0 is pinned by this process");
    pid_t pid = fork();
    if (pid == 0) { /* another process waits for the pin, as for a full queue */
        int rc = ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0);
        int rc2 = ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0.05);
        _exit(rc == NDSHM_EFULL && rc2 == NDSHM_ETIMEDOUT ? 0 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_RC(ndshm_queue_unpin(q, pos + 1), NDSHM_EINVAL); /* not pinned */
    CHECK_RC(ndshm_queue_unpin(q, pos), 0);
    CHECK_RC(ndshm_queue_unpin(q, pos), NDSHM_EINVAL);
    CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), 0);
    CHECK_RC(ndshm_queue_take(q, 0, &t), 0);
    CHECK_RC(ndshm_queue_release(q, &t), 0);
    /* a pinner that dies keeps nothing: its pin is cleared by the next producer */
    pid = fork();
    if (pid == 0) {
        ndshm_qmsg_t c;
        if (ndshm_queue_loan(q, 8, 0, &c) || ndshm_queue_pin(q, &c)) _exit(1);
        c.ndim = 1, c.shape[0] = 2;
        strcpy(c.typestr, "<i4");
        _exit(ndshm_queue_publish(q, &c) ? 1 : 0);
    }
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 4; i++) { /* every slot, the dead pinner's included */
        CHECK_RC(ndshm_queue_take(q, 0, &t), 0);
        CHECK_RC(ndshm_queue_release(q, &t), 0);
        CHECK_RC(ndshm_queue_put(q, v, 8, "<i4", 1, &shape, 0), 0);
    }
    ndshm_queue_close(q);
    munmap(mem, len);
}

/* A consumer killed with kill -9 while the queue is full: the blocked put returns
 * NDSHM_ESHUTDOWN naming the dead consumers, within a liveness check or two. */
TEST(dead_consumers_end_the_stream) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 2, 64);
    CHECK_RC(ndshm_queue_consumers(q), 0);
    CHECK_RC(ndshm_queue_expect_consumers(q, 1), 0);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        if (ndshm_queue_register_consumer(q) != 0 || ndshm_queue_register_consumer(q) != 0) _exit(2);
        if (write(fds[1], "x", 1) != 1) _exit(4);
        pause(); /* killed */
        _exit(0);
    }
    char c;
    CHECK(read(fds[0], &c, 1) == 1);
    CHECK_RC(ndshm_queue_consumers(q), 1);
    CHECK_RC(put_i(q, 1, 0), 0);
    CHECK_RC(put_i(q, 2, 0), 0);
    CHECK_RC(put_i(q, 3, 0.2), NDSHM_ETIMEDOUT); /* full, the consumer lives */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    double t0 = now_s();
    CHECK_RC(put_i(q, 3, 5), NDSHM_ESHUTDOWN);
    CHECK_DETAIL("every registered consumer has exited");
    CHECK(now_s() - t0 < 1.0);
    CHECK_RC(ndshm_queue_consumers(q), 0);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_loan(q, 4, 0, &m), NDSHM_ESHUTDOWN);
    CHECK_RC(ndshm_queue_take(q, 0, &m), 0); /* a later consumer still drains */
    ndshm_queue_release(q, &m);
    CHECK_RC(ndshm_queue_unregister_consumer(q), NDSHM_EINVAL);
    close(fds[0]);
    close(fds[1]);
    ndshm_queue_close(q);
    munmap(mem, len);
}

typedef struct interrupt_arg {
    ndshm_queue_t *q;
    int rc;
    double dt;
} interrupt_arg_t;

static void *take_forever(void *p) {
    interrupt_arg_t *a = p;
    ndshm_qmsg_t m;
    double t0 = now_s();
    a->rc = ndshm_queue_take(a->q, -1, &m);
    a->dt = now_s() - t0;
    return NULL;
}

/* ndshm_queue_interrupt ends this handle's waits at once (NDSHM_ECLOSED) and no other handle's;
 * the epoch counter moves when a message is published. */
TEST(interrupt_and_epoch) {
    RAW_QUEUE_OR_RETURN(q, mem, len, 2, 64);
    ndshm_queue_t *other = NULL;
    CHECK_RC(ndshm_queue_open_raw(mem, len, &other), 0);
    interrupt_arg_t a = {q, 1, 0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, take_forever, &a) == 0);
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    double t0 = now_s();
    ndshm_queue_interrupt(q);
    pthread_join(th, NULL);
    CHECK_RC(a.rc, NDSHM_ECLOSED);
    CHECK(now_s() - t0 < 0.05);
    ndshm_qmsg_t m;
    CHECK_RC(ndshm_queue_take(q, 0.5, &m), NDSHM_ECLOSED);
    CHECK_RC(ndshm_queue_take(other, 0.05, &m), NDSHM_ETIMEDOUT); /* the other handle waits on */
    uint32_t e = ndshm_queue_epoch(other, 0);
    CHECK_RC(ndshm_queue_wait_epoch(other, 0, e, 0.05), NDSHM_ETIMEDOUT);
    CHECK_RC(put_i(other, 5, 0), 0);
    CHECK(ndshm_queue_epoch(other, 0) != e);
    CHECK_RC(ndshm_queue_wait_epoch(other, 0, e, 1), 0);
    CHECK_RC(ndshm_queue_wait_epoch(q, 1, ndshm_queue_epoch(q, 1), 1), NDSHM_ECLOSED);
    CHECK_RC(ndshm_queue_wait_epoch(NULL, 0, 0, 0), NDSHM_EINVAL);
    ndshm_queue_close(other);
    ndshm_queue_close(q);
    munmap(mem, len);
}

int main(void) {
    RUN(geometry_and_errors);
    RUN(put_take_descriptors);
    RUN(batches);
    RUN(segment_create_attach);
    RUN(kill_producer_holding_loan);
    RUN(kill_consumer_holding_message);
    RUN(slow_live_producer_is_not_skipped);
    RUN(slow_live_consumer_is_not_recycled);
    RUN(lost_claim_race_leaves_no_intent);
    RUN(mpmc_4x4x100k);
    RUN(kill_random_points);
    RUN(corrupt_ring_never_spins);
    RUN(hostile_writer_cannot_pin_a_waiter);
    RUN(nan_and_infinite_timeouts);
    RUN(shutdown_drains_then_ends);
    RUN(shutdown_immediate_discards);
    RUN(shutdown_wakes_sleepers);
    RUN(registered_producers_end_the_stream);
    RUN(unregister_is_the_end_of_a_producer);
    RUN(hostile_shutdown_bits);
    RUN(take_copy_fits_or_stays_taken);
    RUN(pinned_slot_is_not_reused);
    RUN(dead_consumers_end_the_stream);
    RUN(interrupt_and_epoch);
    return SUMMARY();
}

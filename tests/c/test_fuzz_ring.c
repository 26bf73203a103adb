/*
 * test_fuzz_ring.c -- fuzzing the queue and broadcast rings: header, slot state words, message
 * descriptors, claim records and subscriber records rewritten by a hostile writer.
 *
 * With libFuzzer:
 *   clang -std=c11 -D_GNU_SOURCE -DNDSHM_LIBFUZZER -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *       tests/c/test_fuzz_ring.c csrc/[a-z]*.c -o build/fuzz_ring -pthread && build/fuzz_ring -max_total_time=60
 * The input's first byte picks the ring (queue or broadcast, its geometry and the messages put
 * in it), the rest is a list of patches: 2 bytes of offset into the ring, 1 byte of length
 * (1..8), then the bytes to store.
 *
 * Without libFuzzer (the Makefile's C test rule, under ASan+UBSan) main() runs a bounded number
 * of random mutations of valid rings: bit flips, byte stores, interesting integers at aligned
 * offsets (biased towards the header, the slots' state words and descriptors), and whole
 * descriptors rewritten. Every ring is then opened and used through the public API (take and
 * release, take_copy, get_many, put; subscribe, take, release, put): nothing may crash, hang or
 * read outside the ring's memory (ASan sees the exact allocation), every return code must be
 * one the API documents, and every message taken must lie inside the ring.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ring.h"
#include "testhelper.h"

static const uint64_t interesting[] = {0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 65, 255, 256, 320, 4095, 4096,
                                       0x7fffffff, 0x80000000u, 0xffffffffu, 0x100000000ull,
                                       0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull};
#define N_INTERESTING (sizeof interesting / sizeof *interesting)

/* A valid ring in exactly `len` bytes of its own allocation (64-aligned, so ASan sees any access
 * past its end), with messages put and, for a broadcast, one subscriber left behind. */
typedef struct {
    int bcast;
    uint64_t slots, slot_bytes;
    unsigned char *mem;
    uint64_t len;
    ndshm_bcast_t *maker; /* broadcast: the handle that put the messages, and its subscriber, */
    ndshm_bsub_t *sub;    /* ended after the mutation (unsubscribe writes into the record) */
} ring_t;

static void end_ring(ring_t *r) {
    ndshm_bcast_unsubscribe(r->sub);
    ndshm_bcast_close(r->maker);
    free(r->mem);
}

static int fail_code(int rc) {
    return rc != 0 && rc != NDSHM_ECORRUPT && rc != NDSHM_EEMPTY && rc != NDSHM_EFULL && rc != NDSHM_ETIMEDOUT &&
           rc != NDSHM_EBUSY && rc != NDSHM_ESHUTDOWN && rc != NDSHM_ELAGGED && rc != NDSHM_ETOOBIG &&
           rc != NDSHM_EINVAL;
}

static void expect_code(int rc, const char *what) {
    if (fail_code(rc)) {
        fprintf(stderr, "%s returned %d (%s): %s\n", what, rc, ndshm_errname(rc), ndshm_last_detail());
        abort();
    }
}

/* A message a take handed out must lie in the ring's memory and describe itself sanely. */
static void check_msg(const ring_t *r, const ndshm_qmsg_t *m) {
    const unsigned char *d = m->data;
    if (d < r->mem || d > r->mem + r->len || m->capacity > (uint64_t)(r->mem + r->len - d) ||
        m->nbytes > m->capacity || m->ndim > NDSHM_MAXDIM || memchr(m->typestr, 0, NDSHM_TYPESTR_MAX) == NULL) {
        fprintf(stderr, "a taken message lies outside its ring or is not checked: data %p (ring %p + %llu), "
                        "capacity %llu, nbytes %llu, ndim %u\n",
                (const void *)d, (void *)r->mem, (unsigned long long)r->len, (unsigned long long)m->capacity,
                (unsigned long long)m->nbytes, m->ndim);
        abort();
    }
}

static int make_ring(ring_t *r, unsigned pick) {
    memset(r, 0, sizeof *r);
    r->bcast = pick & 1;
    r->slots = 2u << ((pick >> 1) % 3);          /* 2, 4, 8 */
    r->slot_bytes = 32u << ((pick >> 3) % 3);    /* 32, 64, 128 */
    int rc = r->bcast ? ndshm_bcast_ring_bytes(r->slots, r->slot_bytes, &r->len)
                      : ndshm_queue_ring_bytes(r->slots, r->slot_bytes, &r->len);
    if (rc) return rc;
    r->mem = aligned_alloc(64, (r->len + 63) & ~(uint64_t)63);
    if (r->mem == NULL) return NDSHM_ENOMEM;
    memset(r->mem, 0, r->len);
    int64_t shape[2] = {2, 3};
    double data[6] = {1, 2, 3, 4, 5, 6};
    unsigned puts = (pick >> 5) % (unsigned)(r->slots + 1);
    if (r->bcast) {
        if ((rc = ndshm_bcast_init_raw(r->mem, r->len, r->slots, r->slot_bytes, (pick >> 4) & 1)) != 0) return rc;
        if ((rc = ndshm_bcast_open_raw(r->mem, r->len, &r->maker)) != 0) return rc;
        if ((rc = ndshm_bcast_subscribe(r->maker, &r->sub)) != 0) return rc; /* a live record while mutated */
        for (unsigned i = 0; i < puts; i++) ndshm_bcast_put(r->maker, data, 8 * (i % 7), "<f8", 1, shape, 0);
    } else {
        ndshm_queue_t *q = NULL;
        if ((rc = ndshm_queue_init_raw(r->mem, r->len, r->slots, r->slot_bytes)) != 0) return rc;
        if ((rc = ndshm_queue_open_raw(r->mem, r->len, &q)) != 0) return rc;
        for (unsigned i = 0; i < puts; i++) ndshm_queue_put(q, data, 48, "<f8", 2, shape, 0);
        ndshm_qmsg_t m;
        if (puts && (pick >> 7) & 1) ndshm_queue_take(q, 0, &m); /* left taken: a claim in the ring */
        if ((pick >> 8) & 1) ndshm_queue_loan(q, 16, 0, &m);     /* left loaned */
        ndshm_queue_close(q);
    }
    return 0;
}

/* Opens the (mutated) ring and uses it; returns 1 if it opened. */
static int exercise(ring_t *r) {
    unsigned char dst[4096];
    ndshm_qmsg_t m;
    uint64_t missed = 0;
    int rc;
    /* a ring whose magic is 0 is "being initialised": open waits for it, so give it one */
    uint64_t magic;
    memcpy(&magic, r->mem, 8);
    if (magic == 0) memset(r->mem, 0x5a, 8);
    if (r->bcast) {
        ndshm_bcast_t *b = NULL;
        rc = ndshm_bcast_open_raw(r->mem, r->len, &b);
        expect_code(rc, "ndshm_bcast_open_raw");
        if (rc) return 0;
        ndshm_bsub_t *sub = NULL;
        rc = ndshm_bcast_subscribe(b, &sub);
        expect_code(rc, "ndshm_bcast_subscribe");
        for (int i = 0; sub && i < 12; i++) {
            rc = ndshm_bcast_take(sub, 0, &m, &missed);
            expect_code(rc, "ndshm_bcast_take");
            if (rc == 0) {
                check_msg(r, &m);
                if (i & 1) expect_code(ndshm_bcast_release_copy(sub, &m, dst), "ndshm_bcast_release_copy");
                else expect_code(ndshm_bcast_release(sub, &m), "ndshm_bcast_release");
            } else if (rc != NDSHM_ELAGGED && rc != NDSHM_ECORRUPT) {
                break;
            }
        }
        int64_t shape[1] = {4};
        expect_code(ndshm_bcast_put(b, dst, 32, "<f8", 1, shape, 0), "ndshm_bcast_put");
        ndshm_bcast_unsubscribe(sub);
        ndshm_bcast_close(b);
        return 1;
    }
    ndshm_queue_t *q = NULL;
    rc = ndshm_queue_open_raw(r->mem, r->len, &q);
    expect_code(rc, "ndshm_queue_open_raw");
    if (rc) return 0;
    for (int i = 0; i < 12; i++) {
        rc = ndshm_queue_take(q, 0, &m);
        expect_code(rc, "ndshm_queue_take");
        if (rc == 0) {
            check_msg(r, &m);
            expect_code(ndshm_queue_release(q, &m), "ndshm_queue_release");
        } else if (rc != NDSHM_ECORRUPT) {
            break;
        }
    }
    rc = ndshm_queue_take_copy(q, 0, &m, dst, sizeof dst);
    expect_code(rc, "ndshm_queue_take_copy");
    uint64_t offsets[9], count = 0;
    char ts[NDSHM_TYPESTR_MAX];
    expect_code(ndshm_queue_get_many(q, dst, sizeof dst, offsets, 8, ts, 0, &count), "ndshm_queue_get_many");
    if (count > 8 || offsets[count] > sizeof dst) {
        fprintf(stderr, "get_many reported %llu messages ending at %llu\n", (unsigned long long)count,
                (unsigned long long)offsets[count < 9 ? count : 8]);
        abort();
    }
    int64_t shape[1] = {4};
    expect_code(ndshm_queue_put(q, dst, 32, "<f8", 1, shape, 0), "ndshm_queue_put");
    ndshm_queue_close(q);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    ring_t r;
    if (make_ring(&r, data[0]) != 0) {
        end_ring(&r);
        return 0;
    }
    for (size_t i = 1; i + 3 <= size;) {
        uint64_t off = ((uint64_t)data[i] | (uint64_t)data[i + 1] << 8) % r.len;
        size_t n = 1 + data[i + 2] % 8;
        i += 3;
        for (size_t k = 0; k < n && i < size && off + k < r.len; k++, i++) r.mem[off + k] = data[i];
    }
    exercise(&r);
    end_ring(&r);
    return 0;
}

#ifndef NDSHM_LIBFUZZER

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* An offset worth hitting: anywhere, the ring header, or a slot's header (state, descriptor). */
static uint64_t target(const ring_t *r) {
    uint64_t stride = ndshm__ring_stride(r->slot_bytes);
    uint64_t slots_at = r->len - r->slots * stride;
    switch (next() % 4) {
    case 0: return next() % r->len;
    case 1: return next() % slots_at;
    default: return slots_at + (next() % r->slots) * stride + next() % NDSHM__RING_SLOT_HDR;
    }
}

static void mutate(ring_t *r) {
    int ops = 1 + (int)(next() % 4);
    for (int o = 0; o < ops; o++) {
        uint64_t off = target(r);
        switch (next() % 5) {
        case 0: r->mem[off] ^= (uint8_t)(1u << (next() % 8)); break;
        case 1: r->mem[off] = (uint8_t)next(); break;
        case 2: case 3: { /* an interesting integer at an aligned offset */
            size_t w = (next() & 1) ? 8 : 4;
            off &= ~(uint64_t)(w - 1);
            if (off + w > r->len) break;
            uint64_t v = interesting[next() % N_INTERESTING];
            if (next() % 4 == 0) v = 0 - v; /* its negative, two's complement */
            memcpy(r->mem + off, &v, w);
            break;
        }
        default: { /* a whole descriptor: nbytes, typestr, ndim, shape as a hostile producer writes it */
            uint64_t stride = ndshm__ring_stride(r->slot_bytes);
            unsigned char *slot = r->mem + r->len - r->slots * stride + (next() % r->slots) * stride;
            for (size_t k = 0; k < NDSHM__RING_SLOT_HDR; k += 8) {
                uint64_t v = next() % 3 ? interesting[next() % N_INTERESTING] : next();
                memcpy(slot + k, &v, 8);
            }
            break;
        }
        }
    }
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 300000;
    long opened = 0, ran = 0;
    th_current_ok = 1;
    /* the pristine rings open and work */
    for (unsigned pick = 0; pick < 512; pick++) {
        ring_t r;
        CHECK_RC(make_ring(&r, pick), 0);
        CHECK(exercise(&r));
        end_ring(&r);
    }
    for (long it = 0; it < iterations; it++) {
        ring_t r;
        if (make_ring(&r, (unsigned)next()) != 0) {
            fprintf(stderr, "cannot make a ring: %s\n", ndshm_last_detail());
            abort();
        }
        mutate(&r);
        opened += exercise(&r);
        end_ring(&r);
        ran++;
    }
    if (!th_current_ok) th_failed++;
    fprintf(stderr, "fuzz_ring: %ld mutated rings used, %ld opened\n", ran, opened);
    th_passed += (int)ran; /* exercise() aborts on any failure, so every ring that ran passed */
    return SUMMARY();
}

#endif

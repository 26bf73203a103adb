/*
 * test_fuzz_pool.c -- fuzzing the pool's metadata: header, bins, process slots and block records
 * rewritten by a hostile writer, before the pool is opened and while it is in use.
 *
 * With libFuzzer:
 *   clang -std=c11 -D_GNU_SOURCE -DNDSHM_LIBFUZZER -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *       tests/c/test_fuzz_pool.c csrc/[a-z]*.c -o build/fuzz_pool -pthread && build/fuzz_pool -max_total_time=60
 * The input is a list of patches (2 bytes of offset into the metadata, 1 byte of length 1..8, the
 * bytes), applied to a pool holding a few blocks.
 *
 * Without libFuzzer (make ctest, under ASan+UBSan) main() runs a bounded number of random
 * mutations: bit flips, byte stores and interesting integers at aligned offsets of the header and
 * the table. Every pool is then opened and used through the public API (carve, pin, unpin, send,
 * reclaim, stats, check), and a second round mutates a pool already open: nothing may crash, hang
 * or touch memory outside the pool (ASan sees the exact allocation), every return code must be one
 * the API documents, and every block handed out must lie inside the pool's data.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "testhelper.h"

#define CAP (64u * 1024u)
#define NREC 32u
#define META (1792u + 64u * NREC) /* header and table: what the fuzzer rewrites */
#define LOCK_OFF 64u              /* the pool lock: left alone (its owner word is the Sync lock's) */

static const uint64_t interesting[] = {0, 1, 2, 31, 32, 33, 63, 64, 65, 4096, 65536, 65535, 0x7fffffff, 0x80000000u,
                                       0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull, 0xffffffffffffffffull};
#define N_INTERESTING (sizeof interesting / sizeof *interesting)

static int ok_code(int rc) {
    return rc == 0 || rc == NDSHM_ECORRUPT || rc == NDSHM_ENOENT || rc == NDSHM_ENOSPC || rc == NDSHM_EBUSY ||
           rc == NDSHM_EINVAL || rc == NDSHM_EOVERFLOW || rc == NDSHM_ETIMEDOUT;
}

static void expect(int rc, const char *what) {
    if (!ok_code(rc)) {
        fprintf(stderr, "%s returned %d (%s): %s\n", what, rc, ndshm_errname(rc), ndshm_last_detail());
        abort();
    }
}

typedef struct {
    unsigned char *mem;
    uint64_t len;
    ndshm_pool_block_t b[6];
} fpool_t;

static void make(fpool_t *f) {
    CHECK_RC(ndshm_pool_bytes(CAP, NREC, &f->len), 0);
    f->mem = aligned_alloc(64, f->len);
    CHECK_RC(ndshm_pool_init_raw(f->mem, f->len, CAP, NREC), 0);
    ndshm_pool_t *p = NULL;
    CHECK_RC(ndshm_pool_open_raw(f->mem, f->len, &p), 0);
    for (int i = 0; i < 6; i++) CHECK_RC(ndshm_pool_carve(p, (uint64_t)(100 + 3000 * i), &f->b[i]), 0);
    for (int i = 1; i < 6; i += 2) CHECK_RC(ndshm_pool_send(p, f->b[i].index, f->b[i].generation), 0);
    for (int i = 0; i < 6; i += 2) CHECK_RC(ndshm_pool_unpin(p, f->b[i].index, f->b[i].generation), 0);
    ndshm_pool_close(p); /* blocks 1, 3 and 5 stay, handed over */
}

static void in_pool(const fpool_t *f, const ndshm_pool_block_t *b) {
    uintptr_t lo = (uintptr_t)f->mem, hi = lo + f->len;
    if (b->data < lo || b->size > hi - b->data || b->data + b->size > hi) {
        fprintf(stderr, "block at %#lx of %llu bytes outside the pool [%#lx, %#lx)\n", (unsigned long)b->data,
                (unsigned long long)b->size, (unsigned long)lo, (unsigned long)hi);
        abort();
    }
}

static void mutate(unsigned char *meta, unsigned *seed) {
    unsigned n = 1 + rand_r(seed) % 4;
    for (unsigned k = 0; k < n; k++) {
        unsigned off = (unsigned)rand_r(seed) % META;
        if (off >= LOCK_OFF && off < LOCK_OFF + 64) continue;
        switch (rand_r(seed) % 3) {
        case 0: meta[off] ^= (unsigned char)(1u << (rand_r(seed) % 8)); break;
        case 1: meta[off] = (unsigned char)rand_r(seed); break;
        default: {
            off &= ~7u;
            if (off >= LOCK_OFF && off < LOCK_OFF + 64) break;
            uint64_t v = interesting[(unsigned)rand_r(seed) % N_INTERESTING];
            if (rand_r(seed) % 2) memcpy(meta + off, &v, 8);
            else memcpy(meta + off + 4 * (rand_r(seed) % 2), &v, 4);
        }
        }
    }
}

static void use(fpool_t *f, ndshm_pool_t *p, unsigned *seed, int mutate_while_open) {
    ndshm_pool_block_t got[8];
    int n = 0;
    ndshm_pool_stats_t st;
    for (int op = 0; op < 40; op++) {
        if (mutate_while_open && op % 10 == 5) mutate(f->mem, seed);
        int rc;
        switch (rand_r(seed) % 7) {
        case 0:
        case 1:
            if (n < 8) {
                rc = ndshm_pool_carve(p, 1 + (uint64_t)(rand_r(seed) % 20000), &got[n]);
                expect(rc, "carve");
                if (rc == 0) in_pool(f, &got[n++]);
            }
            break;
        case 2:
            if (n > 0) {
                n--;
                expect(ndshm_pool_unpin(p, got[n].index, got[n].generation), "unpin");
            }
            break;
        case 3: {
            const ndshm_pool_block_t *b = &f->b[rand_r(seed) % 6];
            ndshm_pool_block_t x;
            rc = ndshm_pool_pin(p, b->index, b->generation, b->offset, 50, rand_r(seed) % 2, &x);
            expect(rc, "pin");
            if (rc == 0) {
                in_pool(f, &x);
                expect(ndshm_pool_unpin(p, x.index, x.generation), "unpin pinned");
            }
            break;
        }
        case 4:
            expect(ndshm_pool_pin(p, (uint32_t)rand_r(seed), (uint64_t)rand_r(seed), (uint64_t)rand_r(seed) * 64, 1, 1,
                                  &got[7]), "pin garbage");
            break;
        case 5:
            expect(ndshm_pool_reclaim(p, NULL), "reclaim");
            expect(ndshm_pool_stats(p, &st), "stats");
            break;
        default:
            expect(ndshm_pool_check(p), "check");
            if (n > 0) expect(ndshm_pool_send(p, got[0].index, got[0].generation), "send");
        }
    }
    while (n > 0) {
        n--;
        expect(ndshm_pool_unpin(p, got[n].index, got[n].generation), "unpin at the end");
    }
}

static int one(fpool_t *f, unsigned seed, int while_open) {
    unsigned s = seed;
    if (!while_open) mutate(f->mem, &s);
    ndshm_pool_t *p = NULL;
    int rc = ndshm_pool_open_raw(f->mem, f->len, &p);
    expect(rc, "open");
    if (rc == 0) {
        use(f, p, &s, while_open);
        ndshm_pool_close(p);
    }
    return rc == 0;
}

#ifdef NDSHM_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fpool_t f;
    make(&f);
    for (size_t i = 0; i + 3 <= size;) {
        unsigned off = ((unsigned)data[i] | (unsigned)data[i + 1] << 8) % META, len = 1 + data[i + 2] % 8;
        i += 3;
        for (unsigned k = 0; k < len && i < size && off + k < META; k++, i++)
            if (off + k < LOCK_OFF || off + k >= LOCK_OFF + 64) f.mem[off + k] = data[i];
    }
    ndshm_pool_t *p = NULL;
    unsigned seed = (unsigned)size;
    if (ndshm_pool_open_raw(f.mem, f.len, &p) == 0) {
        use(&f, p, &seed, 0);
        ndshm_pool_close(p);
    }
    free(f.mem);
    return 0;
}
#else
TEST(mutated_before_open) {
    int opened = 0;
    for (unsigned seed = 1; seed <= 3000; seed++) {
        fpool_t f;
        make(&f);
        opened += one(&f, seed, 0);
        free(f.mem);
    }
    fprintf(stderr, "  mutated before open: %d of 3000 opened and used\n", opened);
    CHECK(opened > 0 && opened < 3000);
}

TEST(mutated_while_open) {
    for (unsigned seed = 1; seed <= 1500; seed++) {
        fpool_t f;
        make(&f);
        (void)one(&f, seed * 7919u, 1);
        free(f.mem);
    }
}

int main(void) {
    RUN(mutated_before_open);
    RUN(mutated_while_open);
    return SUMMARY();
}
#endif

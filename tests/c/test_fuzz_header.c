/*
 * test_fuzz_header.c -- fuzzing the segment header validation (header.c).
 *
 * With libFuzzer:
 *   clang -std=c11 -D_GNU_SOURCE -DNDSHM_LIBFUZZER -g -O1 -fsanitize=fuzzer,address,undefined -Icsrc \
 *       tests/c/test_fuzz_header.c csrc/[a-z]*.c -o build/fuzz_header -pthread && build/fuzz_header -max_total_time=60
 * The input's first 8 bytes give the file size the header must fit in; the rest is the header.
 * Half the inputs (low bit of byte 0) have their checksum recomputed, so mutations reach the
 * checks behind it.
 *
 * Without libFuzzer (the Makefile's C test rule, under ASan+UBSan) main() runs a few hundred
 * thousand mutations of valid headers of random layouts: bit flips, byte stores, interesting
 * integers in random fields, truncations, with and without a recomputed checksum. Every input
 * must be judged without a crash, and every accepted one must satisfy the invariants attach
 * relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testhelper.h"

static int invariants_hold(const ndshm_segment_info_t *i, uint64_t file_size) {
    uint64_t extent;
    if (i->data_offset + i->data_size < i->data_offset) return 0;
    if (i->data_offset + i->data_size > file_size) return 0;
    if (i->data_offset < NDSHM__HDR_FIXED + i->descr_len + i->meta_len) return 0;
    if (i->layout.ndim > NDSHM_MAXDIM || i->descr_len > NDSHM_DESCR_MAX || i->meta_len > NDSHM_META_MAX) return 0;
    if (memchr(i->layout.typestr, 0, NDSHM_TYPESTR_MAX) == NULL) return 0;
    if (ndshm__layout_extent(&i->layout, &extent) != 0 || extent > i->data_size) return 0;
    return 1;
}

static ndshm_segment_info_t info;

/* Judges one input; returns 1 if it was accepted. Aborts if an accepted one breaks an invariant. */
static int judge(const uint8_t *bytes, size_t len, uint64_t file_size) {
    int rc = ndshm__header_validate(bytes, len, file_size, &info);
    if (rc == 0 && !invariants_hold(&info, file_size)) {
        fprintf(stderr, "accepted a header that breaks an invariant\n");
        abort();
    }
    if (rc != 0 && rc != NDSHM_ECORRUPT && rc != NDSHM_EBUSY) {
        fprintf(stderr, "unexpected code %d\n", rc);
        abort();
    }
    return rc == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    uint64_t file_size;
    memcpy(&file_size, data, 8);
    size_t len = size - 8;
    uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan sees any overread */
    memcpy(copy, data + 8, len);
    if (data[0] & 1) ndshm__header_reseal(copy, len);
    judge(copy, len, file_size);
    free(copy);
    return 0;
}

#ifndef NDSHM_LIBFUZZER

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A valid header of a random layout, written by the library itself, in buf; returns its file size. */
static size_t make_valid(uint8_t *buf, size_t cap, size_t *hsize) {
    ndshm_segment_params_t p;
    memset(&p, 0, sizeof p);
    p.kind = (int)(next() % 4);
    p.flags = (unsigned)(next() & (NDSHM_SEG_PERSIST | NDSHM_SEG_FORTRAN));
    static const char *types[] = {"<f8", "|u1", "<i4", "|V16", "<c16", "<U3"};
    static const uint64_t sizes[] = {8, 1, 4, 16, 16, 12};
    int t = (int)(next() % 6);
    snprintf(p.layout.typestr, sizeof p.layout.typestr, "%s", types[t]);
    p.layout.itemsize = sizes[t];
    p.layout.ndim = (uint32_t)(next() % 5);
    int64_t stride = (int64_t)sizes[t];
    for (int d = (int)p.layout.ndim - 1; d >= 0; d--) {
        p.layout.shape[d] = (int64_t)(next() % 5);
        p.layout.strides[d] = stride;
        stride *= p.layout.shape[d] ? p.layout.shape[d] : 1;
    }
    static char descr[64], meta[64];
    p.descr_len = next() % 40;
    p.meta_len = next() % 40;
    memset(descr, 'd', sizeof descr);
    memset(meta, 'm', sizeof meta);
    p.descr = descr;
    p.meta = meta;
    uint64_t extent = 0;
    ndshm__layout_extent(&p.layout, &extent);
    size_t page = ndshm__page_size();
    *hsize = NDSHM__HDR_FIXED + p.descr_len + p.meta_len;
    size_t data_offset = page;
    memset(buf, 0, cap);
    ndshm__header_write(buf, &p, data_offset, extent, 64, 1234, 5678);
    ndshm__header_publish(buf);
    return data_offset + (size_t)extent;
}

static const uint64_t interesting[] = {0, 1, 2, 7, 8, 63, 64, 4095, 4096, 4097, 0x7fffffff, 0x80000000u,
                                       0xffffffffu, 0x7fffffffffffffffull, 0x8000000000000000ull,
                                       0xffffffffffffffffull, 896, 897, 4096 + 896};

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 300000;
    size_t cap = NDSHM__HDR_MAX + 64;
    uint8_t *buf = malloc(cap);
    long accepted = 0, ran = 0;
    th_current_ok = 1;
    /* the pristine headers are accepted */
    for (int k = 0; k < 1000; k++) {
        size_t hsize, fsize = make_valid(buf, cap, &hsize);
        CHECK(judge(buf, hsize, fsize));
    }
    for (long it = 0; it < iterations; it++) {
        size_t hsize, fsize = make_valid(buf, cap, &hsize);
        size_t len = hsize;
        int ops = 1 + (int)(next() % 4);
        for (int o = 0; o < ops; o++) {
            switch (next() % 5) {
            case 0: buf[next() % hsize] ^= (uint8_t)(1u << (next() % 8)); break;
            case 1: buf[next() % hsize] = (uint8_t)next(); break;
            case 2: { /* an interesting integer in an aligned field of the fixed part */
                size_t off = (next() % (NDSHM__HDR_FIXED / 4)) * 4;
                uint64_t v = interesting[next() % (sizeof interesting / sizeof *interesting)];
                size_t w = (next() & 1) && off + 8 <= NDSHM__HDR_FIXED ? 8 : 4;
                memcpy(buf + off, &v, w);
                break;
            }
            case 3: len = next() % (hsize + 1); break;
            default: fsize = (size_t)interesting[next() % (sizeof interesting / sizeof *interesting)]; break;
            }
        }
        if (next() & 1) ndshm__header_reseal(buf, len);
        /* judge an exactly-sized copy so ASan catches any read past len */
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, buf, len);
        accepted += judge(copy, len, fsize);
        free(copy);
        ran++;
    }
    free(buf);
    if (!th_current_ok) th_failed++;
    fprintf(stderr, "fuzz_header: %ld mutated headers judged, %ld accepted\n", ran, accepted);
    th_passed += (int)ran; /* judge() aborts on any failure, so every input that ran passed */
    return SUMMARY();
}

#endif

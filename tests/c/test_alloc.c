/* test_alloc.c -- the aligned allocator, errors and statistics, at their edges. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "testhelper.h"

TEST(every_power_of_two_alignment) {
    for (size_t align = 1; align <= (size_t)NDSHM_MAX_ALIGNMENT; align <<= 1) {
        size_t sizes[] = {0, 1, 100, 4096, 65537};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            ndshm_buffer_t *b = NULL;
            uintptr_t addr = 0;
            CHECK_RC(ndshm_alloc(sizes[i], align, 0, &b, &addr), 0);
            CHECK(b != NULL);
            CHECK(addr == (uintptr_t)ndshm_buffer_data(b));
            CHECK(addr != 0 && addr % align == 0);
            CHECK(ndshm_buffer_size(b) == sizes[i]);
            if (sizes[i]) memset(ndshm_buffer_data(b), 0xab, sizes[i]); /* ASan checks the extent */
            ndshm_buffer_free(b);
        }
    }
}

TEST(bad_alignments_are_refused_by_value) {
    size_t bad[] = {0, 3, 6, 24, 100, (size_t)NDSHM_MAX_ALIGNMENT * 2, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ndshm_buffer_t *b = (ndshm_buffer_t *)1;
        char want[64];
        snprintf(want, sizeof want, "alignment %zu", bad[i]);
        CHECK_RC(ndshm_alloc(16, bad[i], 0, &b, NULL), NDSHM_EINVAL);
        CHECK_DETAIL(want);
        CHECK(b == NULL);
    }
}

TEST(overflowing_sizes) {
    ndshm_buffer_t *b = NULL;
    CHECK_RC(ndshm_alloc(SIZE_MAX, 64, 0, &b, NULL), NDSHM_EOVERFLOW);
    CHECK_DETAIL("18446744073709551615");
    CHECK_RC(ndshm_alloc(SIZE_MAX - 10, 4096, 0, &b, NULL), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_alloc((size_t)PTRDIFF_MAX + 1, 4096, 0, &b, NULL), NDSHM_EOVERFLOW);
    CHECK_RC(ndshm_alloc((size_t)PTRDIFF_MAX, 4096, 0, &b, NULL), NDSHM_ENOMEM); /* legal, unmappable */
    CHECK(b == NULL);
}

TEST(unknown_flags_and_null_out) {
    ndshm_buffer_t *b = NULL;
    CHECK_RC(ndshm_alloc(16, 64, 0x100, &b, NULL), NDSHM_EINVAL);
    CHECK_DETAIL("0x100");
    CHECK_RC(ndshm_alloc(16, 64, NDSHM_ALLOC_HUGEPAGES | NDSHM_ALLOC_NO_HUGEPAGES, &b, NULL), NDSHM_EINVAL);
    CHECK_DETAIL("0x12");
    CHECK_RC(ndshm_alloc(16, 64, 0, NULL, NULL), NDSHM_EINVAL);
}

TEST(address_space_exhaustion_is_enomem) {
    ndshm_buffer_t *b = NULL;
    /* 2^62 bytes: valid as a size, impossible to map. */
    CHECK_RC(ndshm_alloc((size_t)1 << 62, 64, 0, &b, NULL), NDSHM_ENOMEM);
    CHECK(b == NULL);
}

TEST(zero_fill_on_both_paths) {
    size_t sizes[] = {1000, (size_t)40 << 20}; /* heap, and mapped (above the threshold) */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < 2; i++) {
            ndshm_buffer_t *b = NULL;
            CHECK_RC(ndshm_alloc(sizes[i], 64, NDSHM_ALLOC_ZERO, &b, NULL), 0);
            unsigned char *p = ndshm_buffer_data(b);
            size_t nonzero = 0;
            for (size_t j = 0; j < sizes[i]; j += 997) nonzero += p[j] != 0;
            CHECK(nonzero == 0);
            memset(p, 0xff, sizes[i]); /* dirty the memory so a reuse would show */
            ndshm_buffer_free(b);
        }
    }
}

TEST(options_populate_hugepages_lock) {
    ndshm_buffer_t *b = NULL;
    CHECK_RC(ndshm_alloc((size_t)4 << 20, 4096, NDSHM_ALLOC_POPULATE | NDSHM_ALLOC_HUGEPAGES, &b, NULL), 0);
    unsigned char vec[1024];
    CHECK(mincore(ndshm_buffer_data(b), (size_t)4 << 20, vec) == 0);
    size_t resident = 0;
    for (size_t i = 0; i < ((size_t)4 << 20) / 4096; i++) resident += vec[i] & 1;
    CHECK(resident == ((size_t)4 << 20) / 4096); /* populate pre-faulted every page */
    ndshm_buffer_free(b);

    b = NULL;
    int rc = ndshm_alloc(1 << 16, 64, NDSHM_ALLOC_LOCK, &b, NULL);
    CHECK(rc == 0 || rc == NDSHM_ESYS); /* RLIMIT_MEMLOCK may refuse */
    if (rc == NDSHM_ESYS) CHECK_DETAIL("mlock");
    ndshm_buffer_free(b);
}

TEST(populate_in_parallel_prefaults_every_page) {
    /* 100 MiB + one page, in 4 KiB pages: split over the CPUs in ranges of whole 2 MiB extents,
     * the last one taking the rest */
    size_t n = ((size_t)100 << 20) + 4096, pages = n / 4096;
    ndshm_buffer_t *b = NULL;
    CHECK_RC(ndshm_alloc(n, 4096, NDSHM_ALLOC_POPULATE | NDSHM_ALLOC_ZERO | NDSHM_ALLOC_NO_HUGEPAGES, &b, NULL), 0);
    unsigned char *vec = malloc(pages);
    if (!b || !vec) return;
    unsigned char *p = ndshm_buffer_data(b);
    CHECK(mincore(p, n, vec) == 0);
    size_t resident = 0, nonzero = 0;
    for (size_t i = 0; i < pages; i++) resident += vec[i] & 1;
    CHECK(resident == pages); /* every page, the last one included */
    for (size_t i = 0; i < n; i += 511) nonzero += p[i] != 0;
    CHECK(nonzero == 0 && p[n - 1] == 0);
    free(vec);
    ndshm_buffer_free(b);
}

TEST(free_accepts_null) {
    ndshm_buffer_free(NULL);
    CHECK(ndshm_buffer_data(NULL) == NULL);
    CHECK(ndshm_buffer_size(NULL) == 0);
}

TEST(stats_count_live_buffers) {
    ndshm_stats_t before = stats();
    ndshm_buffer_t *a = NULL, *b = NULL;
    CHECK_RC(ndshm_alloc(100, 64, 0, &a, NULL), 0);
    CHECK_RC(ndshm_alloc(1 << 20, 1 << 20, 0, &b, NULL), 0);
    ndshm_stats_t during = stats();
    CHECK(during.live_buffers == before.live_buffers + 2);
    CHECK(during.live_bytes == before.live_bytes + 100 + (1 << 20));
    CHECK(during.total_buffers == before.total_buffers + 2);
    ndshm_buffer_free(a);
    ndshm_buffer_free(b);
    ndshm_stats_t after = stats();
    CHECK(after.live_buffers == before.live_buffers);
    CHECK(after.live_bytes == before.live_bytes);
    CHECK_RC(ndshm_get_stats(NULL), NDSHM_EINVAL);
}

TEST(every_code_has_a_name_and_message) {
    for (int code = 0; code >= NDSHM_ERROR_MIN_; code--) {
        CHECK(strncmp(ndshm_errname(code), "NDSHM_", 6) == 0);
        CHECK(strcmp(ndshm_errname(code), "NDSHM_E?") != 0);
        CHECK(strcmp(ndshm_strerror(code), "unknown error") != 0);
    }
    CHECK(strcmp(ndshm_errname(NDSHM_ECORRUPT), "NDSHM_ECORRUPT") == 0);
    CHECK(strcmp(ndshm_strerror(1), "unknown error") == 0);
    CHECK(strcmp(ndshm_strerror(NDSHM_ERROR_MIN_ - 1), "unknown error") == 0);
    CHECK(strcmp(ndshm_errname(-1000), "NDSHM_E?") == 0);
}

TEST(version_matches_header) {
    CHECK(ndshm_version() == NDSHM_VERSION_NUMBER);
    CHECK(ndshm_abi_version() == NDSHM_ABI_VERSION);
}

static void *fail_in_thread(void *arg) {
    ndshm_buffer_t *b = NULL;
    ndshm_alloc(8, (size_t)(uintptr_t)arg, 0, &b, NULL);
    return (void *)strstr(ndshm_last_detail(), "alignment 3");
}

TEST(detail_is_thread_local) {
    ndshm_buffer_t *b = NULL;
    CHECK_RC(ndshm_alloc(8, 5, 0, &b, NULL), NDSHM_EINVAL);
    pthread_t t;
    void *found = NULL;
    CHECK(pthread_create(&t, NULL, fail_in_thread, (void *)(uintptr_t)3) == 0);
    CHECK(pthread_join(t, &found) == 0);
    CHECK(found != NULL);        /* the other thread saw its own detail */
    CHECK_DETAIL("alignment 5"); /* and ours is untouched */
}

static void *alloc_churn(void *arg) {
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        ndshm_buffer_t *b = NULL;
        if (ndshm_alloc((size_t)(i % 7) * 1000, (size_t)1 << (i % 14), 0, &b, NULL) != 0) return (void *)1;
        ndshm_buffer_free(b);
    }
    return NULL;
}

TEST(threads_allocate_concurrently) {
    ndshm_stats_t before = stats();
    pthread_t t[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, alloc_churn, NULL) == 0);
    for (int i = 0; i < 4; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        CHECK(r == NULL);
    }
    ndshm_stats_t after = stats();
    CHECK(after.live_buffers == before.live_buffers);
    CHECK(after.total_buffers == before.total_buffers + 8000);
}

int main(void) {
    RUN(every_power_of_two_alignment);
    RUN(bad_alignments_are_refused_by_value);
    RUN(overflowing_sizes);
    RUN(unknown_flags_and_null_out);
    RUN(address_space_exhaustion_is_enomem);
    RUN(zero_fill_on_both_paths);
    RUN(options_populate_hugepages_lock);
    RUN(populate_in_parallel_prefaults_every_page);
    RUN(free_accepts_null);
    RUN(stats_count_live_buffers);
    RUN(every_code_has_a_name_and_message);
    RUN(version_matches_header);
    RUN(detail_is_thread_local);
    RUN(threads_allocate_concurrently);
    return SUMMARY();
}

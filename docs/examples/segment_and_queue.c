/* A segment and a queue through the C API: create a named float32 array, attach it as another
 * process would, check that both handles see the same memory, then send one message through a
 * queue. Build (as tests/test_docs_examples.py does):
 *     cc -std=c11 -D_GNU_SOURCE -pthread -Icsrc docs/examples/segment_and_queue.c csrc/[a-z]*.c
 * or link against the built library: cc -Icsrc example.c -Lpybind/ndshm -lndshm. */
#include <stdio.h>
#include <string.h>

#include "ndshm.h"

/* Print the failed call, its error name and this thread's detail, and fail. */
static int check(int rc, const char *what) {
    if (rc < 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, ndshm_errname(rc), ndshm_last_detail());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : NULL; /* NULL: $NDSHM_DIR, else /dev/shm */
    ndshm_segment_params_t p;
    memset(&p, 0, sizeof p);
    p.kind = NDSHM_KIND_NAMED;
    p.name = "c-example";
    p.dir = dir;
    strcpy(p.layout.typestr, "<f4");
    p.layout.itemsize = 4;
    p.layout.ndim = 1;
    p.layout.shape[0] = 1000;
    p.layout.strides[0] = 4;

    ndshm_segment_t *seg = NULL, *other = NULL;
    if (check(ndshm_segment_create(&p, &seg), "ndshm_segment_create")) return 1;
    if (check(ndshm_segment_attach(NDSHM_KIND_NAMED, "c-example", dir, 0, &other), "ndshm_segment_attach"))
        return 1;
    ndshm_segment_info_t a, b;
    if (check(ndshm_segment_info(seg, &a), "info") || check(ndshm_segment_info(other, &b), "info")) return 1;
    ((float *)a.data)[999] = 42.0f;           /* written through the creator's mapping */
    float seen = ((const float *)b.data)[999]; /* read through the other one */
    printf("segment %s: %llu bytes of %s, last element %.1f\n", b.name, (unsigned long long)b.data_size,
           b.layout.typestr, seen);
    ndshm_segment_close(other);
    ndshm_segment_close(seg); /* the creator's close removes the name */

    ndshm_queue_t *q = NULL;
    if (check(ndshm_queue_create("c-example-q", dir, 4, 4096, 0600, 0, &q), "ndshm_queue_create")) return 1;
    double payload[3] = {1.0, 2.0, 3.0};
    int64_t shape[1] = {3};
    if (check(ndshm_queue_put(q, payload, sizeof payload, "<f8", 1, shape, -1.0), "ndshm_queue_put")) return 1;
    printf("queue holds %llu message(s)\n", (unsigned long long)ndshm_queue_size(q));
    ndshm_queue_close(q);
    ndshm_queue_close(NULL); /* every close accepts NULL */
    return seen == 42.0f ? 0 : 1;
}

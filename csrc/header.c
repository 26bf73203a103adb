/*
 * header.c -- the self-describing header at the start of every segment, and its validation.
 *
 * Format version 2 (1 recorded owners as pid and start time; 2 records process ids, see
 * identity.c: a version 1 segment is refused, naming its version). Integers are in the creator's native byte order (a reader of the other
 * order fails the version check, which is what it should do: the data would be foreign too).
 *
 *   offset  size  field
 *        0     8  magic         "NDSHMSEG"
 *        8     4  version       2
 *       12     4  header_size   896 + descr_len + meta_len
 *       16     4  state         0 or 'INIT' while the creator writes; 'REDY' once published
 *                               (a release store after everything else; not checksummed)
 *       20     4  kind          enum ndshm_segment_kind of the creator
 *       24     4  flags         NDSHM_SEG_* as created (never READONLY)
 *       28     4  ndim          0 .. 32
 *       32     8  data_offset   >= header_size; a multiple of alignment (the creator also makes it
 *                               a multiple of its page size; readers do not insist: pages differ)
 *       40     8  data_size     bytes of data; data_offset + data_size <= the file's size
 *       48     8  alignment     power of two, <= NDSHM_MAX_ALIGNMENT
 *       56     8  itemsize      bytes of one element
 *       64     8  creator_pid
 *       72     8  created_ns    CLOCK_REALTIME
 *       80    32  typestr       NumPy typestr, NUL-terminated, printable ASCII
 *      112   256  shape[32]     int64, >= 0 (entries past ndim are 0); itemsize (1 if 0) times
 *                               the product of the non-zero entries <= INT64_MAX, as NumPy insists
 *      368   256  strides[32]   int64 bytes, >= 0; itemsize + sum((shape-1)*stride) <= data_size
 *      624     4  descr_len     <= 4096
 *      628     4  meta_len      <= 4096
 *      632     8  checksum      FNV-1a 64 of bytes [0,16), [20,632) and [896, header_size)
 *      640   256  sync[4][64]   lock/event/barrier areas: zero at creation, never checksummed
 *      896     -  descr         descr_len bytes (a structured dtype's description, opaque to C)
 *        -     -  meta          meta_len bytes (user metadata, opaque)
 *
 * Validation reads only a private copy of the bytes, checks every field before it is used,
 * and does all size arithmetic with overflow checks; any failure is NDSHM_ECORRUPT naming the
 * field and its value (NDSHM_EBUSY for a header that is not published yet).
 */
#include "internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAGIC "NDSHMSEG"
#define STATE_INIT 0x54494E49u  /* "INIT" little-endian */
#define STATE_READY 0x59444552u /* "REDY" little-endian */

typedef struct header {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t state;
    uint32_t kind;
    uint32_t flags;
    uint32_t ndim;
    uint64_t data_offset;
    uint64_t data_size;
    uint64_t alignment;
    uint64_t itemsize;
    int64_t creator_pid;
    int64_t created_ns;
    char typestr[NDSHM_TYPESTR_MAX];
    int64_t shape[NDSHM_MAXDIM];
    int64_t strides[NDSHM_MAXDIM];
    uint32_t descr_len;
    uint32_t meta_len;
    uint64_t checksum;
    unsigned char sync[NDSHM_SEG_SYNC_SLOTS][NDSHM_SYNC_SIZE];
} header_t;

_Static_assert(offsetof(header_t, state) == 16, "state offset");
_Static_assert(offsetof(header_t, kind) == 20, "kind offset");
_Static_assert(offsetof(header_t, typestr) == 80, "typestr offset");
_Static_assert(offsetof(header_t, descr_len) == 624, "descr_len offset");
_Static_assert(offsetof(header_t, checksum) == 632, "checksum offset");
_Static_assert(offsetof(header_t, sync) == NDSHM__HDR_SYNC_OFFSET, "sync offset");
_Static_assert(NDSHM__HDR_SYNC_OFFSET % 64 == 0, "sync slots are 64-byte aligned");
_Static_assert(sizeof(header_t) == NDSHM__HDR_FIXED, "fixed header size");

/* The owner slot (sync[NDSHM_SYNC_OWNER]): the owner lock in its first 16 bytes, then the
 * hand-over marker, a uint32_t a creator with owner="receiver" sets (ndshm_segment_mark_handover). */
#define HANDOVER_OFFSET 16
#define HANDOVER_MARKER 0x48414E44u /* "DNAH" little-endian */
_Static_assert(HANDOVER_OFFSET + 4 <= NDSHM_SYNC_SIZE, "the marker lies in the owner slot");
_Static_assert(NDSHM_SYNC_OWNER < NDSHM_SEG_SYNC_SLOTS, "the owner slot is a header slot");

void ndshm__handover_set(void *sync) {
    uint32_t marker = HANDOVER_MARKER;
    memcpy((unsigned char *)sync + HANDOVER_OFFSET, &marker, sizeof marker);
}

bool ndshm__handover_is_set(const void *sync) {
    uint32_t marker;
    memcpy(&marker, (const unsigned char *)sync + HANDOVER_OFFSET, sizeof marker);
    return marker == HANDOVER_MARKER;
}

int ndshm_segment_probe_fd(int fd, ndshm_fd_probe_t *out) {
    if (out == NULL || fd < 0)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndshm_segment_probe_fd: descriptor %d or out is invalid", fd);
    out->magic = NDSHM_PROBE_FOREIGN;
    out->flags = 0;
    out->owner_state = -1;
    out->handover = 0;
    header_t h;
    memset(&h, 0, sizeof h);
    size_t got = 0;
    while (got < sizeof h) {
        ssize_t n = pread(fd, (unsigned char *)&h + got, sizeof h - got, (off_t)got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ndshm__fail_errno(errno, "cannot read the header of descriptor %d", fd);
        if (n == 0) break;
        got += (size_t)n;
    }
    static const char zeros[sizeof h.magic];
    size_t head = got < sizeof h.magic ? got : sizeof h.magic;
    if (got >= sizeof h.magic && memcmp(h.magic, MAGIC, sizeof h.magic) == 0) out->magic = NDSHM_PROBE_OURS;
    else if (memcmp(h.magic, zeros, head) == 0) out->magic = NDSHM_PROBE_BLANK;
    else return 0;
    if (got >= offsetof(header_t, flags) + sizeof h.flags) out->flags = h.flags;
    if (got >= offsetof(header_t, sync) + (NDSHM_SYNC_OWNER + 1) * (size_t)NDSHM_SYNC_SIZE) {
        /* the lock and the marker are tested in the private copy `h`: nothing in the file is trusted */
        uint64_t slot[NDSHM_SYNC_SIZE / 8];
        memcpy(slot, h.sync[NDSHM_SYNC_OWNER], sizeof slot);
        int state = ndshm_lock_state(slot);
        if (state < 0) return state;
        out->owner_state = state;
        out->handover = ndshm__handover_is_set(slot);
    }
    return 0;
}

#define FNV_PRIME 0x100000001b3ull
/* FNV_PRIME^8 (mod 2^64): FNV-1a of a zero byte is one multiplication by the prime. */
#define FNV_PRIME8 (FNV_PRIME * FNV_PRIME * FNV_PRIME * FNV_PRIME * FNV_PRIME * FNV_PRIME * FNV_PRIME * FNV_PRIME)

/* FNV-1a 64, exactly; eight zero bytes in a row (most of a header's shape and strides) cost
 * one multiplication instead of eight dependent ones. */
static uint64_t fnv1a(uint64_t h, const unsigned char *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        if (w == 0) {
            h *= FNV_PRIME8;
            continue;
        }
        for (size_t k = i; k < i + 8; k++) {
            h ^= p[k];
            h *= FNV_PRIME;
        }
    }
    for (; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* `bytes` holds at least header_size bytes (checked by the caller). */
static uint64_t checksum_of(const unsigned char *bytes, size_t header_size) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a(h, bytes, offsetof(header_t, state));
    h = fnv1a(h, bytes + offsetof(header_t, kind), offsetof(header_t, checksum) - offsetof(header_t, kind));
    h = fnv1a(h, bytes + NDSHM__HDR_FIXED, header_size - NDSHM__HDR_FIXED);
    return h;
}

int ndshm__check_typestr(const char *typestr) {
    size_t n = strnlen(typestr, NDSHM_TYPESTR_MAX);
    if (n == NDSHM_TYPESTR_MAX) return ndshm__fail(NDSHM_EINVAL, 0, "typestr is not NUL-terminated within %d bytes",
                                                   NDSHM_TYPESTR_MAX);
    if (n < 2) return ndshm__fail(NDSHM_EINVAL, 0, "typestr '%s' is too short", typestr);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)typestr[i];
        if (c < 0x21 || c > 0x7e)
            return ndshm__fail(NDSHM_EINVAL, 0, "typestr has a non-printable byte 0x%02x at %zu", c, i);
    }
    return 0;
}

int ndshm__layout_extent(const ndshm_layout_t *l, uint64_t *extent) {
    if (l->ndim > NDSHM_MAXDIM)
        return ndshm__fail(NDSHM_EINVAL, 0, "ndim %u exceeds the maximum %d", l->ndim, NDSHM_MAXDIM);
    if (l->itemsize > (uint64_t)PTRDIFF_MAX)
        return ndshm__fail(NDSHM_EOVERFLOW, 0, "itemsize %llu is too large", (unsigned long long)l->itemsize);
    /* NumPy refuses an array whose itemsize times the product of its non-zero dimensions
     * exceeds npy_intp (even if another dimension is 0), and a zero itemsize would let the
     * element count wrap (a V0 array of shape (2**62, 2**62) has size 0): both must fit. */
    int empty = 0;
    uint64_t bytes = l->itemsize ? l->itemsize : 1;
    for (uint32_t i = 0; i < l->ndim; i++) {
        if (l->shape[i] < 0)
            return ndshm__fail(NDSHM_EINVAL, 0, "shape[%u] = %lld is negative", i, (long long)l->shape[i]);
        if (l->shape[i] == 0) {
            empty = 1;
            continue;
        }
        if (__builtin_mul_overflow(bytes, (uint64_t)l->shape[i], &bytes) || bytes > (uint64_t)PTRDIFF_MAX)
            return ndshm__fail(NDSHM_EOVERFLOW, 0, "shape[%u] = %lld makes the array too big: its %s exceed %lld%s",
                               i, (long long)l->shape[i], l->itemsize ? "elements times the itemsize" : "elements",
                               (long long)PTRDIFF_MAX, l->itemsize ? " bytes" : "");
    }
    if (empty) {
        *extent = 0;
        return 0;
    }
    uint64_t ext = l->itemsize;
    for (uint32_t i = 0; i < l->ndim; i++) {
        if (l->shape[i] == 1) continue;
        if (l->strides[i] < 0)
            return ndshm__fail(NDSHM_EINVAL, 0, "strides[%u] = %lld is negative", i, (long long)l->strides[i]);
        uint64_t span;
        if (__builtin_mul_overflow((uint64_t)(l->shape[i] - 1), (uint64_t)l->strides[i], &span) ||
            __builtin_add_overflow(ext, span, &ext) || ext > (uint64_t)PTRDIFF_MAX)
            return ndshm__fail(NDSHM_EOVERFLOW, 0, "shape[%u] = %lld with stride %lld overflows the addressable size",
                               i, (long long)l->shape[i], (long long)l->strides[i]);
    }
    *extent = ext;
    return 0;
}

void ndshm__header_write(void *dst, const ndshm_segment_params_t *p, uint64_t data_offset, uint64_t data_size,
                         uint64_t alignment, int64_t pid, int64_t created_ns) {
    header_t *h = dst;
    __atomic_store_n(&h->state, STATE_INIT, __ATOMIC_RELAXED);
    memcpy(h->magic, MAGIC, 8);
    h->version = NDSHM__FORMAT_VERSION;
    h->header_size = (uint32_t)(NDSHM__HDR_FIXED + p->descr_len + p->meta_len);
    h->kind = (uint32_t)p->kind;
    h->flags = p->flags & ~(unsigned)NDSHM_SEG_READONLY;
    h->ndim = p->layout.ndim;
    h->data_offset = data_offset;
    h->data_size = data_size;
    h->alignment = alignment;
    h->itemsize = p->layout.itemsize;
    h->creator_pid = pid;
    h->created_ns = created_ns;
    memset(h->typestr, 0, sizeof h->typestr);
    memcpy(h->typestr, p->layout.typestr, strnlen(p->layout.typestr, sizeof h->typestr - 1));
    memset(h->shape, 0, sizeof h->shape);
    memset(h->strides, 0, sizeof h->strides);
    for (uint32_t i = 0; i < p->layout.ndim; i++) {
        h->shape[i] = p->layout.shape[i];
        h->strides[i] = p->layout.strides[i];
    }
    h->descr_len = (uint32_t)p->descr_len;
    h->meta_len = (uint32_t)p->meta_len;
    memset(h->sync, 0, sizeof h->sync);
    unsigned char *tail = (unsigned char *)dst + NDSHM__HDR_FIXED;
    if (p->descr_len) memcpy(tail, p->descr, p->descr_len);
    if (p->meta_len) memcpy(tail + p->descr_len, p->meta, p->meta_len);
    h->checksum = checksum_of(dst, h->header_size);
}

void ndshm__header_publish(void *dst) { __atomic_store_n(&((header_t *)dst)->state, STATE_READY, __ATOMIC_RELEASE); }

void ndshm__header_reseal(void *bytes, size_t len) {
    if (len < NDSHM__HDR_FIXED) return;
    header_t *h = bytes;
    if (h->header_size < NDSHM__HDR_FIXED || h->header_size > len) return;
    h->checksum = checksum_of(bytes, h->header_size);
}

#define CORRUPT(...) ndshm__fail(NDSHM_ECORRUPT, 0, __VA_ARGS__)

int ndshm__header_validate(const void *bytes, size_t len, uint64_t file_size, ndshm_segment_info_t *out) {
    const unsigned char *b = bytes;
    header_t h;
    if (len < NDSHM__HDR_FIXED) {
        for (size_t i = 0; i < len; i++)
            if (b[i] != 0) return CORRUPT("segment is %zu bytes, shorter than the %d-byte header", len, NDSHM__HDR_FIXED);
        return ndshm__fail(NDSHM_EBUSY, 0, "segment is %zu bytes and blank: not initialised yet", len);
    }
    memcpy(&h, b, sizeof h);
    static const char zero8[8];
    if (memcmp(h.magic, zero8, 8) == 0 && h.state == 0)
        return ndshm__fail(NDSHM_EBUSY, 0, "segment header is blank: not initialised yet");
    if (memcmp(h.magic, MAGIC, 8) != 0) return CORRUPT("bad magic: not an ndshm segment");
    if (h.version != 0 && h.version < NDSHM__FORMAT_VERSION)
        return CORRUPT("header format version %u was written by an older ndshm; this one reads version %d only "
                       "(its owner records hold across PID namespaces): recreate the segment with this version",
                       h.version, NDSHM__FORMAT_VERSION);
    if (h.version != NDSHM__FORMAT_VERSION)
        return CORRUPT("header format version %u is not the supported %d", h.version, NDSHM__FORMAT_VERSION);
    if (h.state == STATE_INIT) return ndshm__fail(NDSHM_EBUSY, 0, "segment is still being initialised");
    if (h.state != STATE_READY) return CORRUPT("header state 0x%08x is neither INIT nor READY", h.state);
    if (h.descr_len > NDSHM_DESCR_MAX) return CORRUPT("descr_len %u exceeds %d", h.descr_len, NDSHM_DESCR_MAX);
    if (h.meta_len > NDSHM_META_MAX) return CORRUPT("meta_len %u exceeds %d", h.meta_len, NDSHM_META_MAX);
    size_t want = (size_t)NDSHM__HDR_FIXED + h.descr_len + h.meta_len; /* <= HDR_MAX: no overflow */
    if (h.header_size != want)
        return CORRUPT("header_size %u disagrees with descr_len %u and meta_len %u", h.header_size, h.descr_len,
                       h.meta_len);
    if (want > len || want > file_size)
        return CORRUPT("header_size %u exceeds the segment's %llu bytes", h.header_size,
                       (unsigned long long)(len < file_size ? len : file_size));
    uint64_t sum = checksum_of(b, want);
    if (sum != h.checksum)
        return CORRUPT("header checksum 0x%016llx does not match its contents (0x%016llx)",
                       (unsigned long long)h.checksum, (unsigned long long)sum);
    if (h.kind > NDSHM_KIND_FILE) return CORRUPT("kind %u is unknown", h.kind);
    const unsigned known = NDSHM__SEG_STORED_FLAGS;
    if (h.flags & ~known) return CORRUPT("flags 0x%x has unknown bits", h.flags);
    if (h.alignment == 0 || (h.alignment & (h.alignment - 1)) || h.alignment > NDSHM_MAX_ALIGNMENT)
        return CORRUPT("alignment %llu is not a power of two up to %d", (unsigned long long)h.alignment,
                       NDSHM_MAX_ALIGNMENT);
    if (h.data_offset < want || h.data_offset % h.alignment)
        return CORRUPT("data_offset %llu is below the header or not a multiple of the alignment %llu",
                       (unsigned long long)h.data_offset, (unsigned long long)h.alignment);
    uint64_t end;
    if (__builtin_add_overflow(h.data_offset, h.data_size, &end) || end > file_size || end > (uint64_t)PTRDIFF_MAX)
        return CORRUPT("data_offset %llu + data_size %llu exceeds the segment's %llu bytes",
                       (unsigned long long)h.data_offset, (unsigned long long)h.data_size,
                       (unsigned long long)file_size);
    if (h.typestr[NDSHM_TYPESTR_MAX - 1] != 0 || ndshm__check_typestr(h.typestr) != 0)
        return CORRUPT("typestr is not a NUL-terminated printable string");
    ndshm_layout_t l;
    memset(&l, 0, sizeof l);
    memcpy(l.typestr, h.typestr, sizeof l.typestr);
    l.itemsize = h.itemsize;
    l.ndim = h.ndim;
    if (h.ndim > NDSHM_MAXDIM) return CORRUPT("ndim %u exceeds %d", h.ndim, NDSHM_MAXDIM);
    for (uint32_t i = 0; i < NDSHM_MAXDIM; i++) {
        if (i >= h.ndim && (h.shape[i] != 0 || h.strides[i] != 0))
            return CORRUPT("shape/strides entry %u beyond ndim %u is not zero", i, h.ndim);
        l.shape[i] = h.shape[i];
        l.strides[i] = h.strides[i];
    }
    uint64_t extent;
    if (ndshm__layout_extent(&l, &extent) != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", ndshm_last_detail());
        return CORRUPT("layout is invalid: %s", why);
    }
    if (extent > h.data_size)
        return CORRUPT("the array reaches %llu bytes but data_size is %llu", (unsigned long long)extent,
                       (unsigned long long)h.data_size);
    if (out != NULL) {
        out->kind = (int)h.kind;
        out->flags = h.flags;
        out->format_version = h.version;
        out->data_offset = h.data_offset;
        out->data_size = h.data_size;
        out->segment_size = file_size;
        out->alignment = h.alignment;
        out->layout = l;
        memcpy(out->descr, b + NDSHM__HDR_FIXED, h.descr_len);
        out->descr_len = h.descr_len;
        memcpy(out->meta, b + NDSHM__HDR_FIXED + h.descr_len, h.meta_len);
        out->meta_len = h.meta_len;
        out->creator_pid = h.creator_pid;
        out->created_ns = h.created_ns;
    }
    return 0;
}

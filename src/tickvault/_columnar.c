/* tickvault._columnar: one msgpack market-data frame -> PostgreSQL binary COPY tuple data for its
 * trades and quotes, without a Python object per message.
 *
 * Called only through tickvault.alpaca.columnar (stocks) and tickvault.alpaca.crypto (crypto; the
 * contract, the fallbacks and the tests live there). decode(frame) (stocks: tables.TRADES/QUOTES
 * rows) and decode_crypto(frame) (tables.CRYPTO_TRADES/CRYPTO_QUOTES rows: a fractional size as the
 * numeric of its shortest repr, the taker side) return None when this code will not judge the frame
 * at all, else
 *   (trade_n, trade_copy, trade_min_ns, trade_max_ns, trade_last_ns, trade_latest,
 *    quote_n, quote_copy, quote_min_ns, quote_max_ns, quote_last_ns, quote_latest,
 *    deferred)
 * where deferred is None or a list of (start, end) byte ranges of the messages left to Python.
 *
 * What it must never do: read outside the input buffer (every read is bounds-checked: the frame
 * comes from the network), crash or leak on any input, or accept a message that
 * protocol.decode_frame would treat differently. The rule that keeps the last promise: C accepts a
 * trade/quote only in the one well-typed shape whose row it can compute exactly; everything else
 * is deferred to Python (a byte range) and Python decides. And C returns None (Python then decodes
 * the whole frame) for anything that makes msgpack.unpackb of the whole frame fail or that C does
 * not model: invalid UTF-8 in any string, a bad Timestamp ext or another negative ext type, an
 * array or map used as a map key (unhashable in Python), trailing bytes, truncation, the reserved
 * byte 0xc1, nesting deeper than MAX_DEPTH, a top level that is not an array, a frame over
 * MAX_FRAME bytes.
 *
 * Bounds: memory is O(frame size): the copy buffers hold at most ~12 bytes per input byte (a 1-byte
 * msgpack int becomes an 8-byte int8 with its 4-byte length), the parsed rows ~6 (sizeof(Row) per
 * accepted message of at least 28 bytes), the latest-per-symbol tables one entry per distinct
 * symbol; all of it is freed before decode() returns (the copy bytes are handed over as one bytes
 * object per type). No state survives a call. The GIL is held throughout.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define FORMAT_VERSION 2 /* 2: decode_crypto */
/* Deeper nesting is legal msgpack (msgpack-python allows 1024 levels) but never market data; past
 * this, Python decodes the frame. Keeps the recursive skip's stack small and fixed. */
#define MAX_DEPTH 32
/* Every int32 length in the copy stays far below 2^31 (a field is at most 4x its input bytes). */
#define MAX_FRAME (64u * 1024u * 1024u)
#define PG_EPOCH_US INT64_C(946684800000000) /* 2000-01-01 in Unix microseconds */
#define NUMERIC_MAX_BYTES 64 /* a size's numeric: 8-byte head + base-10000 digits of <= 20 decimal digits */
#define TEXT_OID 25

/* ------------------------------------------------------------------------------------------ */
/* msgpack reading */

enum { V_NIL, V_BOOL, V_INT, V_UINT, V_F32, V_F64, V_STR, V_BIN, V_ARRAY, V_MAP, V_EXT };

typedef struct {
    uint8_t kind;
    int8_t ext_type;
    uint32_t len;       /* str/bin/ext: data bytes; array: elements; map: pairs */
    const uint8_t *ptr; /* str/bin/ext: data; array/map: first element */
    union {
        int64_t i;      /* V_INT, V_BOOL (every int that fits int64) */
        uint64_t u;     /* V_UINT (above INT64_MAX) */
        double f;       /* V_F32 (converted), V_F64 */
    };
} Val;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Rd;

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* Take n bytes of data: -1 if they are not all in the buffer. */
static inline int take(Rd *r, Val *v, size_t n) {
    if ((size_t)(r->end - r->p) < n) return -1;
    v->ptr = r->p;
    v->len = (uint32_t)n;
    r->p += n;
    return 0;
}

/* Fixed-width payload following a type byte. */
#define NEED(n) do { if ((size_t)(r->end - r->p) < (size_t)(n)) return -1; } while (0)

/* Everything but the fix* forms (read_header inlines those: they are nearly all of market data). */
static int read_header_slow(Rd *r, Val *v, uint8_t b) {
    size_t n;
    switch (b) {
    case 0xc0: v->kind = V_NIL; return 0;
    case 0xc2: case 0xc3: v->kind = V_BOOL; v->i = b & 1; return 0;
    case 0xc4: NEED(1); n = r->p[0]; r->p += 1; v->kind = V_BIN; return take(r, v, n);
    case 0xc5: NEED(2); n = be16(r->p); r->p += 2; v->kind = V_BIN; return take(r, v, n);
    case 0xc6: NEED(4); n = be32(r->p); r->p += 4; v->kind = V_BIN; return take(r, v, n);
    case 0xc7: NEED(2); n = r->p[0]; v->ext_type = (int8_t)r->p[1]; r->p += 2; v->kind = V_EXT; return take(r, v, n);
    case 0xc8: NEED(3); n = be16(r->p); v->ext_type = (int8_t)r->p[2]; r->p += 3; v->kind = V_EXT; return take(r, v, n);
    case 0xc9: NEED(5); n = be32(r->p); v->ext_type = (int8_t)r->p[4]; r->p += 5; v->kind = V_EXT; return take(r, v, n);
    case 0xca: {
        NEED(4);
        uint32_t bits = be32(r->p);
        float f;
        memcpy(&f, &bits, 4);
        r->p += 4;
        v->kind = V_F32;
        v->f = (double)f;
        return 0;
    }
    case 0xcb: {
        NEED(8);
        uint64_t bits = be64(r->p);
        memcpy(&v->f, &bits, 8);
        r->p += 8;
        v->kind = V_F64;
        return 0;
    }
    case 0xcc: NEED(1); v->kind = V_INT; v->i = r->p[0]; r->p += 1; return 0;
    case 0xcd: NEED(2); v->kind = V_INT; v->i = be16(r->p); r->p += 2; return 0;
    case 0xce: NEED(4); v->kind = V_INT; v->i = be32(r->p); r->p += 4; return 0;
    case 0xcf: {
        NEED(8);
        uint64_t u = be64(r->p);
        r->p += 8;
        if (u > (uint64_t)INT64_MAX) { v->kind = V_UINT; v->u = u; }
        else { v->kind = V_INT; v->i = (int64_t)u; }
        return 0;
    }
    case 0xd0: NEED(1); v->kind = V_INT; v->i = (int8_t)r->p[0]; r->p += 1; return 0;
    case 0xd1: NEED(2); v->kind = V_INT; v->i = (int16_t)be16(r->p); r->p += 2; return 0;
    case 0xd2: NEED(4); v->kind = V_INT; v->i = (int32_t)be32(r->p); r->p += 4; return 0;
    case 0xd3: NEED(8); v->kind = V_INT; v->i = (int64_t)be64(r->p); r->p += 8; return 0;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        NEED(1);
        v->ext_type = (int8_t)r->p[0];
        r->p += 1;
        v->kind = V_EXT;
        return take(r, v, (size_t)1 << (b - 0xd4));
    case 0xd9: NEED(1); n = r->p[0]; r->p += 1; v->kind = V_STR; return take(r, v, n);
    case 0xda: NEED(2); n = be16(r->p); r->p += 2; v->kind = V_STR; return take(r, v, n);
    case 0xdb: NEED(4); n = be32(r->p); r->p += 4; v->kind = V_STR; return take(r, v, n);
    case 0xdc: NEED(2); v->kind = V_ARRAY; v->len = be16(r->p); r->p += 2; v->ptr = r->p; return 0;
    case 0xdd: NEED(4); v->kind = V_ARRAY; v->len = be32(r->p); r->p += 4; v->ptr = r->p; return 0;
    case 0xde: NEED(2); v->kind = V_MAP; v->len = be16(r->p); r->p += 2; v->ptr = r->p; return 0;
    case 0xdf: NEED(4); v->kind = V_MAP; v->len = be32(r->p); r->p += 4; v->ptr = r->p; return 0;
    default: return -1; /* 0xc1: never used */
    }
}

/* Read one value's header (and, for str/bin/ext, its data). Containers: ptr = first element. */
static inline int read_header(Rd *r, Val *v) {
    if (r->p >= r->end) return -1;
    uint8_t b = *r->p++;
    if (b <= 0x7f) { v->kind = V_INT; v->i = b; return 0; }
    if ((b & 0xe0) == 0xa0) { v->kind = V_STR; return take(r, v, b & 0x1f); }
    if ((b & 0xf0) == 0x80) { v->kind = V_MAP; v->len = b & 0x0f; v->ptr = r->p; return 0; }
    if ((b & 0xf0) == 0x90) { v->kind = V_ARRAY; v->len = b & 0x0f; v->ptr = r->p; return 0; }
    if (b >= 0xe0) { v->kind = V_INT; v->i = (int8_t)b; return 0; }
    return read_header_slow(r, v, b);
}

/* Strict UTF-8 exactly as Python's decoder: no overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & UINT64_C(0x8080808080808080))) { i += 8; continue; }
        }
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) {
            if (n - i < 2 || (s[i + 1] & 0xc0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (n - i < 3) return 0;
            uint8_t c1 = s[i + 1], c2 = s[i + 2];
            if ((c1 & 0xc0) != 0x80 || (c2 & 0xc0) != 0x80) return 0;
            if (c == 0xe0 && c1 < 0xa0) return 0; /* overlong */
            if (c == 0xed && c1 > 0x9f) return 0; /* UTF-16 surrogate */
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (n - i < 4) return 0;
            uint8_t c1 = s[i + 1], c2 = s[i + 2], c3 = s[i + 3];
            if ((c1 & 0xc0) != 0x80 || (c2 & 0xc0) != 0x80 || (c3 & 0xc0) != 0x80) return 0;
            if (c == 0xf0 && c1 < 0x90) return 0; /* overlong */
            if (c == 0xf4 && c1 > 0x8f) return 0; /* above U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* utf8_valid with the all-ASCII short string (nearly every one in market data) inline. */
static inline int utf8_ok(const uint8_t *s, uint32_t n) {
    if (n <= 16) {
        uint8_t acc = 0;
        for (uint32_t k = 0; k < n; k++) acc |= s[k];
        if (acc < 0x80) return 1;
    }
    return utf8_valid(s, n);
}

/* A msgpack Timestamp (ext -1) that msgpack-python accepts: 4, 8 or 12 data bytes, nanoseconds
 * not above 999999999 (msgpack >= 1.1 rejects more; older versions do not, and then Python's
 * whole-frame decode is still the judge because this returns -1). */
static int timestamp_valid(const Val *v) {
    if (v->len == 4) return 1;
    if (v->len == 8) return (be64(v->ptr) >> 34) <= 999999999u;
    if (v->len == 12) return be32(v->ptr) <= 999999999u;
    return 0;
}

/* Exact int ns of a valid Timestamp; -1 when it does not fit int64 (Python then holds a big int). */
static int timestamp_ns(const Val *v, int64_t *out) {
    int64_t sec, nsec, x;
    if (v->len == 4) {
        *out = (int64_t)be32(v->ptr) * 1000000000;
        return 0;
    }
    if (v->len == 8) {
        uint64_t w = be64(v->ptr);
        nsec = (int64_t)(w >> 34);
        sec = (int64_t)(w & UINT64_C(0x3ffffffff));
    } else {
        nsec = be32(v->ptr);
        sec = (int64_t)be64(v->ptr + 4);
    }
    if (__builtin_mul_overflow(sec, (int64_t)1000000000, &x) || __builtin_add_overflow(x, nsec, out)) return -1;
    return 0;
}

/* Validate what the header did not: string contents and Timestamp exts; walk containers. */
static int skip_rest(Rd *r, const Val *v, int depth);

static int skip_value(Rd *r, int depth) {
    Val v;
    if (read_header(r, &v)) return -1;
    return skip_rest(r, &v, depth);
}

static int skip_rest(Rd *r, const Val *v, int depth) {
    switch (v->kind) {
    case V_STR:
        return utf8_ok(v->ptr, v->len) ? 0 : -1;
    case V_EXT: /* msgpack-python: -1 is a Timestamp, other negative codes fail ExtType(0~127) */
        return v->ext_type >= 0 || (v->ext_type == -1 && timestamp_valid(v)) ? 0 : -1;
    case V_ARRAY:
        if (v->len && depth >= MAX_DEPTH) return -1;
        for (uint32_t k = 0; k < v->len; k++)
            if (skip_value(r, depth + 1)) return -1;
        return 0;
    case V_MAP:
        if (v->len && depth >= MAX_DEPTH) return -1;
        for (uint32_t k = 0; k < v->len; k++) {
            Val key;
            if (read_header(r, &key)) return -1;
            if (key.kind == V_ARRAY || key.kind == V_MAP) return -1; /* unhashable key in Python */
            if (skip_rest(r, &key, depth + 1)) return -1;
            if (skip_value(r, depth + 1)) return -1;
        }
        return 0;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Output buffers */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) cap *= 2;
    uint8_t *d = PyMem_Realloc(b->data, cap);
    if (!d) { PyErr_NoMemory(); return -1; }
    b->data = d;
    b->cap = cap;
    return 0;
}

/* Callers reserve first; these never check. */
static inline void put16(Buf *b, int16_t x) {
    uint8_t *p = b->data + b->len;
    p[0] = (uint8_t)((uint16_t)x >> 8); p[1] = (uint8_t)x;
    b->len += 2;
}
static inline void put32(Buf *b, int32_t x) {
    uint32_t u = __builtin_bswap32((uint32_t)x); /* big-endian; every target of ours is little-endian */
    memcpy(b->data + b->len, &u, 4);
    b->len += 4;
}
static inline void put64(Buf *b, uint64_t u) {
    u = __builtin_bswap64(u);
    memcpy(b->data + b->len, &u, 8);
    b->len += 8;
}
static inline void put_int8(Buf *b, int64_t x) { put32(b, 8); put64(b, (uint64_t)x); }
static inline void put_float8(Buf *b, double f) {
    uint64_t u;
    memcpy(&u, &f, 8);
    put32(b, 8);
    put64(b, u);
}
static inline void put_text(Buf *b, const uint8_t *s, uint32_t n) {
    put32(b, (int32_t)n);
    uint8_t *d = b->data + b->len;
    if (n <= 8) { /* symbols, exchanges, tapes, conditions: a libc call would cost more */
        for (uint32_t k = 0; k < n; k++) d[k] = s[k];
    } else {
        memcpy(d, s, n);
    }
    b->len += n;
}
static inline void put_timestamptz(Buf *b, int64_t ns) {
    int64_t us = ns / 1000;
    if (ns % 1000 < 0) us -= 1; /* floor, as Python's // (and the writer's dumper) */
    put_int8(b, us - PG_EPOCH_US);
}

/* ------------------------------------------------------------------------------------------ */
/* One accepted trade or quote, pointing into the input (valid for the call). */

typedef struct {
    int64_t t_ns;
    const uint8_t *sym; uint32_t slen;
    const uint8_t *x1; uint32_t x1len;  /* trade: exchange; quote: bid exchange */
    const uint8_t *x2; uint32_t x2len;  /* quote: ask exchange */
    double p1, p2;                      /* trade: price; quote: bid, ask price */
    int64_t i, s1, s2;                  /* trade: id, size; quote: bid, ask size */
    const uint8_t *c; uint32_t cn; uint32_t cbytes; int has_c; /* conditions: elements, count, sum of lengths */
    const uint8_t *z; uint32_t zlen; int has_z;
    /* crypto: trade size as the wire had it (an int, or a float whose numeric is in num), taker side
     * (0: none, else 'B' or 'S'); quote sizes */
    double sf; int s_float; uint8_t tks;
    uint8_t num[NUMERIC_MAX_BYTES]; uint32_t numlen;
    double f1, f2;
    size_t idx; /* its place in the frame's Rows */
} Row;

/* Every accepted row of the frame, parsed in place (latest entries refer to them by index). */
typedef struct {
    Row *rows;
    size_t n, cap;
} Rows;

static Row *rows_next(Rows *s) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        Row *rows = PyMem_Realloc(s->rows, cap * sizeof(Row));
        if (!rows) { PyErr_NoMemory(); return NULL; }
        s->rows = rows;
        s->cap = cap;
    }
    return &s->rows[s->n];
}

/* Newest row per symbol (greatest time, later wins a tie), in order of first appearance:
 * entries are dense, index is an open-addressing table of entry numbers (-1 empty). An entry
 * names its row; the tuple is made from it once, at the end. */
typedef struct {
    const uint8_t *sym;
    uint32_t slen;
    int64_t t_ns;
    size_t idx;
} Entry;

typedef struct {
    Entry *entries;
    size_t n, cap;
    int32_t *index;
    uint64_t *hashes;
    size_t mask; /* index size - 1 */
} Latest;

static uint64_t hash_bytes(const uint8_t *s, uint32_t n) {
    uint64_t h = UINT64_C(1469598103934665603);
    for (uint32_t k = 0; k < n; k++) { h ^= s[k]; h *= UINT64_C(1099511628211); }
    return h;
}

static int latest_grow(Latest *t) {
    size_t size = t->mask ? (t->mask + 1) * 2 : 64;
    int32_t *index = PyMem_Malloc(size * sizeof(int32_t));
    if (!index) { PyErr_NoMemory(); return -1; }
    memset(index, 0xff, size * sizeof(int32_t));
    for (size_t e = 0; e < t->n; e++) {
        size_t j = t->hashes[e] & (size - 1);
        while (index[j] >= 0) j = (j + 1) & (size - 1);
        index[j] = (int32_t)e;
    }
    PyMem_Free(t->index);
    t->index = index;
    t->mask = size - 1;
    size_t cap = size / 2; /* load factor <= 1/2 */
    Entry *entries = PyMem_Realloc(t->entries, cap * sizeof(Entry));
    if (!entries) { PyErr_NoMemory(); return -1; }
    t->entries = entries;
    uint64_t *hashes = PyMem_Realloc(t->hashes, cap * sizeof(uint64_t));
    if (!hashes) { PyErr_NoMemory(); return -1; }
    t->hashes = hashes;
    t->cap = cap;
    return 0;
}

static inline int same_bytes(const uint8_t *a, const uint8_t *b, uint32_t n) {
    if (n > 8) return memcmp(a, b, n) == 0;
    for (uint32_t k = 0; k < n; k++)
        if (a[k] != b[k]) return 0;
    return 1;
}

static int latest_update(Latest *t, const Row *row) {
    if (t->n >= t->cap && latest_grow(t)) return -1;
    uint64_t h = hash_bytes(row->sym, row->slen);
    size_t j = h & t->mask;
    for (;;) {
        int32_t e = t->index[j];
        if (e < 0) break;
        Entry *cur = &t->entries[e];
        if (t->hashes[e] == h && cur->slen == row->slen && same_bytes(cur->sym, row->sym, row->slen)) {
            if (row->t_ns >= cur->t_ns) {
                cur->t_ns = row->t_ns;
                cur->idx = row->idx;
            }
            return 0;
        }
        j = (j + 1) & t->mask;
    }
    t->index[j] = (int32_t)t->n;
    t->hashes[t->n] = h;
    Entry *add = &t->entries[t->n++];
    add->sym = row->sym;
    add->slen = row->slen;
    add->t_ns = row->t_ns;
    add->idx = row->idx;
    return 0;
}

static void latest_free(Latest *t) {
    PyMem_Free(t->entries);
    PyMem_Free(t->index);
    PyMem_Free(t->hashes);
}

typedef struct {
    Buf copy;
    Latest latest;
    size_t n;
    int64_t tmin, tmax, tlast;
} Columns;

/* ------------------------------------------------------------------------------------------ */
/* Messages */

enum { K_T, K_t, K_S, K_i, K_x, K_p, K_s, K_c, K_z, K_bx, K_bp, K_bs, K_ax, K_ap, K_as, K_tks, K_COUNT };

static int key_of(const Val *k) {
    if (k->kind != V_STR) return -1;
    const uint8_t *s = k->ptr;
    if (k->len == 1) {
        switch (s[0]) {
        case 'T': return K_T;
        case 't': return K_t;
        case 'S': return K_S;
        case 'i': return K_i;
        case 'x': return K_x;
        case 'p': return K_p;
        case 's': return K_s;
        case 'c': return K_c;
        case 'z': return K_z;
        default: return -1;
        }
    }
    if (k->len == 3 && s[0] == 't' && s[1] == 'k' && s[2] == 's') return K_tks;
    if (k->len == 2 && (s[0] == 'b' || s[0] == 'a')) {
        int bid = s[0] == 'b';
        switch (s[1]) {
        case 'x': return bid ? K_bx : K_ax;
        case 'p': return bid ? K_bp : K_ap;
        case 's': return bid ? K_bs : K_as;
        default: return -1;
        }
    }
    return -1;
}

/* Text PostgreSQL can store: a str without NUL (UTF-8 validity was checked while skipping). */
static inline int is_text(const Val *v) {
    if (v->kind != V_STR) return 0;
    if (v->len > 16) return !memchr(v->ptr, 0, v->len);
    for (uint32_t k = 0; k < v->len; k++)
        if (!v->ptr[k]) return 0;
    return 1;
}

/* Python's `p + 0.0` for an int or float wire value; NaN is left to Python (its bits may change). */
static int as_price(const Val *v, double *out) {
    double f;
    switch (v->kind) {
    case V_INT: f = (double)v->i; break;
    case V_UINT: f = (double)v->u; break;
    case V_F32: case V_F64: f = v->f; break;
    default: return -1;
    }
    if (isnan(f)) return -1;
    *out = f + 0.0; /* -0.0 + 0.0 is +0.0, exactly as in Python; not folded without -ffast-math */
    return 0;
}

/* Conditions: absent/nil (NULL) or an array of storable str; `end` bounds the re-read. */
static int as_conditions_in(const Val *v, int present, const uint8_t *end, Row *row) {
    row->has_c = 0;
    row->c = NULL;
    row->cn = row->cbytes = 0;
    if (!present || v->kind == V_NIL) return 0;
    if (v->kind != V_ARRAY) return -1;
    Rd r = {v->ptr, end};
    uint64_t total = 0;
    for (uint32_t k = 0; k < v->len; k++) {
        Val e;
        if (read_header(&r, &e)) return -1;
        if (!is_text(&e)) return -1;
        total += e.len;
    }
    row->has_c = 1;
    row->c = v->ptr;
    row->cn = v->len;
    row->cbytes = (uint32_t)total; /* <= frame size */
    return 0;
}

static int as_tape(const Val *v, int present, Row *row) {
    row->has_z = 0;
    row->z = NULL;
    row->zlen = 0;
    if (!present || v->kind == V_NIL) return 0;
    if (!is_text(v)) return -1;
    row->has_z = 1;
    row->z = v->ptr;
    row->zlen = v->len;
    return 0;
}

static size_t conditions_size(const Row *row) {
    if (!row->has_c) return 4;
    if (row->cn == 0) return 4 + 12;
    return 4 + 20 + (size_t)row->cn * 4 + row->cbytes;
}

static void put_conditions(Buf *b, const Row *row, const uint8_t *end) {
    if (!row->has_c) { put32(b, -1); return; }
    if (row->cn == 0) {
        put32(b, 12); put32(b, 0); put32(b, 0); put32(b, TEXT_OID);
        return;
    }
    put32(b, (int32_t)(20 + (size_t)row->cn * 4 + row->cbytes));
    put32(b, 1); put32(b, 0); put32(b, TEXT_OID); put32(b, (int32_t)row->cn); put32(b, 1);
    Rd r = {row->c, end};
    for (uint32_t k = 0; k < row->cn; k++) {
        Val e;
        read_header(&r, &e); /* validated by as_conditions_in */
        put_text(b, e.ptr, e.len);
    }
}

static void put_tape(Buf *b, const Row *row) {
    if (row->has_z) put_text(b, row->z, row->zlen);
    else put32(b, -1);
}

static int add_row(Columns *cols, const Row *row) {
    if (latest_update(&cols->latest, row)) return -1;
    if (cols->n == 0) {
        cols->tmin = cols->tmax = row->t_ns;
    } else {
        if (row->t_ns < cols->tmin) cols->tmin = row->t_ns;
        if (row->t_ns > cols->tmax) cols->tmax = row->t_ns;
    }
    cols->tlast = row->t_ns;
    cols->n++;
    return 0;
}

static int put_trade(Columns *cols, const Row *row, const uint8_t *end) {
    size_t need = 2 + 6 * 12 + 3 * 4 + row->slen + row->x1len + row->zlen + conditions_size(row);
    Buf *b = &cols->copy;
    if (buf_reserve(b, need)) return -1;
    put16(b, 9);
    put_timestamptz(b, row->t_ns);
    put_text(b, row->sym, row->slen);
    put_int8(b, row->i);
    put_text(b, row->x1, row->x1len);
    put_float8(b, row->p1);
    put_int8(b, row->s1);
    put_conditions(b, row, end);
    put_tape(b, row);
    put_int8(b, row->t_ns);
    return add_row(cols, row);
}

static int put_quote(Columns *cols, const Row *row, const uint8_t *end) {
    size_t need = 2 + 7 * 12 + 4 * 4 + row->slen + row->x1len + row->x2len + row->zlen + conditions_size(row);
    Buf *b = &cols->copy;
    if (buf_reserve(b, need)) return -1;
    put16(b, 11);
    put_timestamptz(b, row->t_ns);
    put_text(b, row->sym, row->slen);
    put_text(b, row->x1, row->x1len);
    put_float8(b, row->p1);
    put_int8(b, row->s1);
    put_text(b, row->x2, row->x2len);
    put_float8(b, row->p2);
    put_int8(b, row->s2);
    put_conditions(b, row, end);
    put_tape(b, row);
    put_int8(b, row->t_ns);
    return add_row(cols, row);
}

enum { MSG_FAIL = -1, MSG_DEFER = 0, MSG_TRADE = 1, MSG_QUOTE = 2 };

/* One message map's fields (header already read): the known keys' values in vals, which were seen
 * in *seen. MSG_FAIL: not msgpack Python reads; MSG_DEFER: Python decides (a repeated key, no T, a T
 * that is not 't' or 'q'); else the message's kind, its t and S not yet checked. */
static inline int read_fields(Rd *r, const Val *map, Val *vals, uint32_t *seen_out) {
    uint32_t seen = 0;
    int dup = 0;
    for (uint32_t k = 0; k < map->len; k++) {
        Val key, other;
        if (read_header(r, &key)) return MSG_FAIL;
        if (key.kind == V_ARRAY || key.kind == V_MAP) return MSG_FAIL;
        if (key.kind == V_STR ? !utf8_ok(key.ptr, key.len) : skip_rest(r, &key, 1)) return MSG_FAIL;
        int idx = key_of(&key);
        Val *v = &other;
        if (idx >= 0) {
            if (seen & (1u << idx)) dup = 1; /* Python keeps the last; let it decide */
            seen |= 1u << idx;
            v = &vals[idx]; /* read in place: copying a just-written Val stalls on store forwarding */
        }
        if (read_header(r, v)) return MSG_FAIL;
        if (v->kind >= V_STR && skip_rest(r, v, 1)) return MSG_FAIL; /* scalars need no more */
    }
    *seen_out = seen;
    if (dup || !(seen & (1u << K_T))) return MSG_DEFER;
    const Val *T = &vals[K_T];
    if (T->kind != V_STR || T->len != 1) return MSG_DEFER;
    return T->ptr[0] == 't' ? MSG_TRADE : T->ptr[0] == 'q' ? MSG_QUOTE : MSG_DEFER;
}

/* read_fields, then the kind of a trade or quote that has every field need[kind] names, a Timestamp
 * t that fits int64 ns and a storable S (both into row); else MSG_DEFER or MSG_FAIL. */
static inline int read_head(Rd *r, const Val *map, Val *vals, uint32_t *seen, Row *row, const uint32_t need[3]) {
    int kind = read_fields(r, map, vals, seen);
    if (kind <= MSG_DEFER) return kind;
    if ((*seen & need[kind]) != need[kind]) return MSG_DEFER;
    const Val *t = &vals[K_t];
    if (t->kind != V_EXT || t->ext_type != -1 || timestamp_ns(t, &row->t_ns)) return MSG_DEFER;
    if (!is_text(&vals[K_S])) return MSG_DEFER;
    row->sym = vals[K_S].ptr;
    row->slen = vals[K_S].len;
    return kind;
}

#define F(k) (1u << K_##k)
static const uint32_t STOCK_NEED[3] = {
    0, F(t) | F(S) | F(i) | F(x) | F(p) | F(s), F(t) | F(S) | F(bx) | F(bp) | F(bs) | F(ax) | F(ap) | F(as),
};
static const uint32_t CRYPTO_NEED[3] = {
    0, F(t) | F(S) | F(i) | F(p) | F(s), F(t) | F(S) | F(bp) | F(bs) | F(ap) | F(as),
};
#undef F

/* One stock message map (header already read). Fills row on MSG_TRADE/MSG_QUOTE. */
static int read_message(Rd *r, const Val *map, Row *row) {
    Val vals[K_COUNT];
    uint32_t seen;
    int kind = read_head(r, map, vals, &seen, row, STOCK_NEED);
    if (kind <= MSG_DEFER) return kind;
    if (kind == MSG_TRADE) {
        if (vals[K_i].kind != V_INT || !is_text(&vals[K_x]) || as_price(&vals[K_p], &row->p1)
            || vals[K_s].kind != V_INT)
            return MSG_DEFER;
        row->i = vals[K_i].i;
        row->x1 = vals[K_x].ptr;
        row->x1len = vals[K_x].len;
        row->s1 = vals[K_s].i;
        row->x2 = NULL;
        row->x2len = 0;
        row->p2 = 0.0;
        row->s2 = 0;
    } else {
        if (!is_text(&vals[K_bx]) || as_price(&vals[K_bp], &row->p1) || vals[K_bs].kind != V_INT
            || !is_text(&vals[K_ax]) || as_price(&vals[K_ap], &row->p2) || vals[K_as].kind != V_INT)
            return MSG_DEFER;
        row->x1 = vals[K_bx].ptr;
        row->x1len = vals[K_bx].len;
        row->s1 = vals[K_bs].i;
        row->x2 = vals[K_ax].ptr;
        row->x2len = vals[K_ax].len;
        row->s2 = vals[K_as].i;
    }
    if (as_conditions_in(&vals[K_c], (seen >> K_c) & 1, r->p, row)) return MSG_DEFER;
    if (as_tape(&vals[K_z], (seen >> K_z) & 1, row)) return MSG_DEFER;
    return kind;
}


/* ------------------------------------------------------------------------------------------ */
/* Crypto (tables.CRYPTO_TRADES / CRYPTO_QUOTES, alpaca/crypto.py): the rows crypto._trade_row and
 * _quote_row encode, for the one well-typed shape of each message; everything else is deferred. */

/* PostgreSQL binary numeric of the decimal coefficient d[0..nd) x 10^exp (non-negative), byte for
 * byte what psycopg's dump_decimal_to_numeric_binary writes for Decimal with that as_tuple(). Returns
 * the length, or 0 when it would not fit `out` (never for a double's or an int64's digits). */
static uint32_t numeric_of_digits(uint8_t *out, const uint8_t *d, int nd, int exp) {
    static const int weights[4] = {1000, 100, 10, 1};
    int ndigits = nd, nzdigits = nd, dscale, wi = 0;
    while (nzdigits > 0 && d[nzdigits - 1] == 0) nzdigits--;
    if (exp <= 0) {
        dscale = -exp;
    } else {
        dscale = 0;
        ndigits += exp % 4;
    }
    if (dscale > 16383) return 0; /* psycopg refuses it; Python rejects the message */
    int count = 0, weight = 0;
    if (nzdigits) {
        int mod = ((ndigits - dscale) % 4 + 4) % 4; /* Python's % */
        if (mod) {
            wi = 4 - mod;
            ndigits += wi;
        }
        int q = ndigits + exp; /* Python's // */
        weight = (q >= 0 ? q / 4 : -((-q + 3) / 4)) - 1;
        if (weight > 32767) return 0;
        int tmp = nzdigits + wi;
        count = tmp / 4 + (tmp % 4 ? 1 : 0);
    }
    uint32_t len = 8 + 2 * (uint32_t)count;
    if (len > NUMERIC_MAX_BYTES) return 0;
    out[0] = (uint8_t)(count >> 8); out[1] = (uint8_t)count;
    out[2] = (uint8_t)((uint16_t)weight >> 8); out[3] = (uint8_t)weight;
    out[4] = 0; out[5] = 0; /* NUMERIC_POS */
    out[6] = (uint8_t)(dscale >> 8); out[7] = (uint8_t)dscale;
    uint8_t *o = out + 8;
    int pg = 0;
    for (int k = 0; k < nzdigits; k++) {
        pg += weights[wi] * d[k];
        if (++wi >= 4) {
            *o++ = (uint8_t)(pg >> 8); *o++ = (uint8_t)pg;
            pg = wi = 0;
        }
    }
    if (pg) { *o++ = (uint8_t)(pg >> 8); *o++ = (uint8_t)pg; }
    return len;
}

/* The numeric of a non-negative int: Decimal(int). */
static uint32_t numeric_of_int(uint8_t *out, int64_t x) {
    uint8_t d[20];
    int nd = 0;
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)(x % 10); x /= 10; } while (x);
    while (n) d[nd++] = (uint8_t)tmp[--n];
    return numeric_of_digits(out, d, nd, 0);
}

/* The numeric of a finite, non-negative double as the shortest decimal that reads back as it:
 * Decimal(repr(f)), repr being CPython's own (PyOS_double_to_string 'r' with the ".0"). Returns 0
 * with no Python error when it cannot, -1 on MemoryError, else the length. */
static int numeric_of_double(uint8_t *out, double f) {
    char *text = PyOS_double_to_string(f, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!text) return -1;
    uint8_t d[32];
    int nd = 0, frac = 0, in_frac = 0, exp = 0, ok = 1;
    const char *c = text;
    for (; *c && *c != 'e'; c++) {
        if (*c == '.') { in_frac = 1; continue; }
        if (*c < '0' || *c > '9' || nd >= (int)sizeof d) { ok = 0; break; }
        if (nd == 0 && *c == '0') { /* a leading zero: Decimal's coefficient drops it */
            if (in_frac) frac++;
            continue;
        }
        d[nd++] = (uint8_t)(*c - '0');
        if (in_frac) frac++;
    }
    if (ok && *c == 'e') {
        int sign = 1;
        c++;
        if (*c == '-' || *c == '+') sign = *c++ == '-' ? -1 : 1;
        for (; *c >= '0' && *c <= '9'; c++) exp = exp * 10 + (*c - '0');
        exp *= sign;
        if (*c) ok = 0;
    }
    PyMem_Free(text);
    if (!ok) return 0;
    if (nd == 0) d[nd++] = 0; /* zero: the coefficient is 0 */
    return (int)numeric_of_digits(out, d, nd, exp - frac);
}

/* Python's `x + 0.0` for an int or float wire value that is not NaN, into *out; -1 otherwise. */
#define as_float8 as_price

/* One crypto message map (header already read). Fills row on MSG_TRADE/MSG_QUOTE; -2 on a Python
 * error (MemoryError). */
static int read_crypto_message(Rd *r, const Val *map, Row *row) {
    Val vals[K_COUNT];
    uint32_t seen;
    int kind = read_head(r, map, vals, &seen, row, CRYPTO_NEED);
    if (kind <= MSG_DEFER) return kind;
    if (kind == MSG_QUOTE) {
        if (as_float8(&vals[K_bp], &row->p1) || as_float8(&vals[K_bs], &row->f1)
            || as_float8(&vals[K_ap], &row->p2) || as_float8(&vals[K_as], &row->f2))
            return MSG_DEFER;
        return kind;
    }
    if (vals[K_i].kind != V_INT || as_price(&vals[K_p], &row->p1)) return MSG_DEFER;
    row->i = vals[K_i].i;
    const Val *sz = &vals[K_s];
    if (sz->kind == V_INT) {
        if (sz->i < 0) return MSG_DEFER; /* Python rejects it, with its reason */
        row->s_float = 0;
        row->s1 = sz->i;
        row->numlen = numeric_of_int(row->num, sz->i);
    } else if (sz->kind == V_F64 || sz->kind == V_F32) {
        /* NaN, infinities, negatives and -0.0 (stored as "-0.0"'s numeric by Python) are Python's */
        if (!isfinite(sz->f) || sz->f < 0 || signbit(sz->f)) return MSG_DEFER;
        row->s_float = 1;
        row->sf = sz->f;
        int n = numeric_of_double(row->num, sz->f);
        if (n < 0) return -2;
        row->numlen = (uint32_t)n;
    } else {
        return MSG_DEFER;
    }
    if (row->numlen == 0) return MSG_DEFER;
    row->tks = 0;
    if ((seen >> K_tks) & 1) {
        const Val *k = &vals[K_tks];
        if (k->kind == V_STR && k->len == 1 && (k->ptr[0] == 'B' || k->ptr[0] == 'S')) row->tks = k->ptr[0];
        else if (k->kind != V_NIL) return MSG_DEFER;
    }
    return kind;
}

static int put_crypto_trade(Columns *cols, const Row *row) {
    size_t need = 2 + 4 * 12 + 3 * 4 + row->slen + 1 + row->numlen;
    Buf *b = &cols->copy;
    if (buf_reserve(b, need)) return -1;
    put16(b, 7);
    put_timestamptz(b, row->t_ns);
    put_text(b, row->sym, row->slen);
    put_int8(b, row->i);
    put_float8(b, row->p1);
    put32(b, (int32_t)row->numlen);
    memcpy(b->data + b->len, row->num, row->numlen);
    b->len += row->numlen;
    if (row->tks) put_text(b, &row->tks, 1);
    else put32(b, -1);
    put_int8(b, row->t_ns);
    return add_row(cols, row);
}

static int put_crypto_quote(Columns *cols, const Row *row) {
    Buf *b = &cols->copy;
    if (buf_reserve(b, 2 + 6 * 12 + 4 + row->slen)) return -1;
    put16(b, 7);
    put_timestamptz(b, row->t_ns);
    put_text(b, row->sym, row->slen);
    put_float8(b, row->p1);
    put_float8(b, row->f1);
    put_float8(b, row->p2);
    put_float8(b, row->f2);
    put_int8(b, row->t_ns);
    return add_row(cols, row);
}

/* ------------------------------------------------------------------------------------------ */
/* Python results */

static PyObject *str_of(const uint8_t *s, uint32_t n) {
    return PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, "strict");
}

static PyObject *conditions_of(const Row *row, const uint8_t *end) {
    if (!row->has_c) Py_RETURN_NONE;
    PyObject *list = PyList_New(row->cn);
    if (!list) return NULL;
    Rd r = {row->c, end};
    for (uint32_t k = 0; k < row->cn; k++) {
        Val e;
        read_header(&r, &e);
        PyObject *s = str_of(e.ptr, e.len);
        if (!s) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, k, s);
    }
    return list;
}

static PyObject *opt_str(int present, const uint8_t *s, uint32_t n) {
    if (!present) Py_RETURN_NONE;
    return str_of(s, n);
}

/* The TRADE_FIELDS / QUOTE_FIELDS tuple of an accepted row (built directly: Py_BuildValue's
 * format parsing cost as much as the objects). */
static PyObject *row_tuple(const Row *row, int is_trade, int crypto, const uint8_t *end, PyObject *sym) {
    PyObject *tup = PyTuple_New(crypto ? 6 : is_trade ? 8 : 10);
    if (!tup) return NULL;
    Py_ssize_t k = 0;
#define SET(expr) do { PyObject *o_ = (expr); if (!o_) { Py_DECREF(tup); return NULL; } PyTuple_SET_ITEM(tup, k++, o_); } while (0)
    SET(PyLong_FromLongLong(row->t_ns));
    SET(Py_NewRef(sym));
    if (crypto) { /* CRYPTO_TRADE_FIELDS / CRYPTO_QUOTE_FIELDS */
        if (is_trade) {
            SET(PyLong_FromLongLong(row->i));
            SET(PyFloat_FromDouble(row->p1));
            SET(row->s_float ? PyFloat_FromDouble(row->sf) : PyLong_FromLongLong(row->s1));
            SET(row->tks ? PyUnicode_FromStringAndSize((const char *)&row->tks, 1) : Py_NewRef(Py_None));
        } else {
            SET(PyFloat_FromDouble(row->p1));
            SET(PyFloat_FromDouble(row->f1));
            SET(PyFloat_FromDouble(row->p2));
            SET(PyFloat_FromDouble(row->f2));
        }
        return tup;
    }
    if (is_trade) {
        SET(PyLong_FromLongLong(row->i));
        SET(str_of(row->x1, row->x1len));
        SET(PyFloat_FromDouble(row->p1));
        SET(PyLong_FromLongLong(row->s1));
    } else {
        SET(str_of(row->x1, row->x1len));
        SET(PyFloat_FromDouble(row->p1));
        SET(PyLong_FromLongLong(row->s1));
        SET(str_of(row->x2, row->x2len));
        SET(PyFloat_FromDouble(row->p2));
        SET(PyLong_FromLongLong(row->s2));
    }
    SET(conditions_of(row, end));
    SET(opt_str(row->has_z, row->z, row->zlen));
#undef SET
    return tup;
}

/* symbol -> its newest row's tuple, in order of first appearance. */
static PyObject *latest_dict(const Latest *t, const Rows *rows, int is_trade, int crypto, const uint8_t *end) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (size_t e = 0; e < t->n; e++) {
        const Row *row = &rows->rows[t->entries[e].idx];
        PyObject *sym = str_of(row->sym, row->slen);
        if (!sym) goto fail;
        PyObject *tup = row_tuple(row, is_trade, crypto, end, sym);
        int rc = tup ? PyDict_SetItem(d, sym, tup) : -1;
        Py_DECREF(sym);
        Py_XDECREF(tup);
        if (rc) goto fail;
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *columns_result(Columns *c, const Rows *rows, int is_trade, int crypto, const uint8_t *end,
                                PyObject **copy, PyObject **latest) {
    *copy = PyBytes_FromStringAndSize((const char *)c->copy.data, (Py_ssize_t)c->copy.len);
    if (!*copy) return NULL;
    *latest = latest_dict(&c->latest, rows, is_trade, crypto, end);
    if (!*latest) { Py_CLEAR(*copy); return NULL; }
    return *copy;
}

typedef struct {
    size_t *pairs;
    size_t n, cap; /* n counts ranges */
} Ranges;

static int ranges_add(Ranges *d, size_t start, size_t end) {
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        size_t *p = PyMem_Realloc(d->pairs, cap * 2 * sizeof(size_t));
        if (!p) { PyErr_NoMemory(); return -1; }
        d->pairs = p;
        d->cap = cap;
    }
    d->pairs[2 * d->n] = start;
    d->pairs[2 * d->n + 1] = end;
    d->n++;
    return 0;
}

static PyObject *decode_any(PyObject *arg, int crypto) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE)) return NULL;
    const uint8_t *base = view.buf;
    Rd r = {base, base + view.len};
    Columns trades = {0}, quotes = {0};
    Ranges deferred = {0};
    Rows rows = {0};
    PyObject *result = NULL;
    int failed = 0; /* 1: Python error set; 2: not judged here (return None) */

    Val frame;
    static_assert(V_STR > V_F64 && V_BIN > V_STR && V_ARRAY > V_BIN && V_MAP > V_ARRAY && V_EXT > V_MAP,
                  "read_message skips only str, bin, containers and ext");
    if ((size_t)view.len > MAX_FRAME || read_header(&r, &frame) || frame.kind != V_ARRAY) {
        failed = 2;
        goto done;
    }
    for (uint32_t k = 0; k < frame.len; k++) {
        const uint8_t *start = r.p;
        Val v;
        Row *row = rows_next(&rows);
        int kind;
        if (!row) { failed = 1; goto done; }
        if (read_header(&r, &v)) { failed = 2; goto done; }
        if (v.kind == V_MAP) {
            kind = crypto ? read_crypto_message(&r, &v, row) : read_message(&r, &v, row);
            row->idx = rows.n;
        } else {
            kind = skip_rest(&r, &v, 1) ? MSG_FAIL : MSG_DEFER;
        }
        if (kind == -2) { failed = 1; goto done; }
        if (kind == MSG_FAIL) { failed = 2; goto done; }
        if (kind == MSG_TRADE) {
            if (crypto ? put_crypto_trade(&trades, row) : put_trade(&trades, row, r.p)) { failed = 1; goto done; }
            rows.n++;
        } else if (kind == MSG_QUOTE) {
            if (crypto ? put_crypto_quote(&quotes, row) : put_quote(&quotes, row, r.p)) { failed = 1; goto done; }
            rows.n++;
        } else if (ranges_add(&deferred, (size_t)(start - base), (size_t)(r.p - base))) {
            failed = 1;
            goto done;
        }
    }
    if (r.p != r.end) { failed = 2; goto done; } /* trailing bytes: unpackb raises ExtraData */

    PyObject *tcopy = NULL, *tlatest = NULL, *qcopy = NULL, *qlatest = NULL, *ranges = NULL;
    if (!columns_result(&trades, &rows, 1, crypto, r.end, &tcopy, &tlatest)) { failed = 1; goto done; }
    if (!columns_result(&quotes, &rows, 0, crypto, r.end, &qcopy, &qlatest)) {
        Py_DECREF(tcopy); Py_DECREF(tlatest);
        failed = 1;
        goto done;
    }
    if (deferred.n) {
        ranges = PyList_New((Py_ssize_t)deferred.n);
        for (size_t j = 0; ranges && j < deferred.n; j++) {
            PyObject *pair = Py_BuildValue("(nn)", (Py_ssize_t)deferred.pairs[2 * j],
                                           (Py_ssize_t)deferred.pairs[2 * j + 1]);
            if (!pair) Py_CLEAR(ranges);
            else PyList_SET_ITEM(ranges, (Py_ssize_t)j, pair);
        }
        if (!ranges) {
            Py_DECREF(tcopy); Py_DECREF(tlatest); Py_DECREF(qcopy); Py_DECREF(qlatest);
            failed = 1;
            goto done;
        }
    } else {
        ranges = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(nNLLLNnNLLLNN)",
                           (Py_ssize_t)trades.n, tcopy, (long long)trades.tmin, (long long)trades.tmax,
                           (long long)trades.tlast, tlatest,
                           (Py_ssize_t)quotes.n, qcopy, (long long)quotes.tmin, (long long)quotes.tmax,
                           (long long)quotes.tlast, qlatest, ranges);
    if (!result) failed = 1;
done:
    PyMem_Free(trades.copy.data);
    latest_free(&trades.latest);
    PyMem_Free(quotes.copy.data);
    latest_free(&quotes.latest);
    PyMem_Free(deferred.pairs);
    PyMem_Free(rows.rows);
    PyBuffer_Release(&view);
    if (failed == 2) Py_RETURN_NONE;
    return failed ? NULL : result;
}

static PyObject *decode(PyObject *self, PyObject *arg) {
    (void)self;
    return decode_any(arg, 0);
}

static PyObject *decode_crypto(PyObject *self, PyObject *arg) {
    (void)self;
    return decode_any(arg, 1);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_O,
     "decode(frame: bytes) -> tuple | None: a msgpack frame's trades and quotes as binary COPY tuple "
     "data, the byte ranges of every other message, or None when the frame is left to Python."},
    {"decode_crypto", decode_crypto, METH_O,
     "decode_crypto(frame: bytes) -> tuple | None: decode() for the crypto stream (tables.CRYPTO_TRADES "
     "and CRYPTO_QUOTES rows)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tickvault._columnar",
    "Compiled columnar decoding of Alpaca msgpack frames; use tickvault.alpaca.columnar.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__columnar(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "FORMAT_VERSION", FORMAT_VERSION)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* The float-activation matmul (LADLE_QUANT_MATMUL=float): y = x @ dequantize(W).T for W in GGML block
 * formats, the activations left in float32, so the result equals dequantize(W) @ x up to the order of float
 * additions. It is not what llama.cpp computes (ggml quantizes the activations to 8 bits first: see
 * ggml_matmul.c, the default); it is kept as an activation-rounding-free comparison point.
 *
 * Each format has one decoder (decode_*) that turns a 32-value block into 32 signed 8-bit integers, one or
 * two float scales and an offset; each weight block is decoded once for up to FTILE activation rows.
 * Every kernel has a plain C version beside the AVX2 one. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ggml_common.h"
#include "thread_pool.h"
/* ------------------------------------------------------------------------------------------------ */
/* Float-activation path: each 32-value weight block is decoded to signed integers and one or two scales
 * (plus an offset), converted to float and multiplied with the float activations, so the result equals
 * dequantize(W) @ x up to the order of float additions: no activation rounding at all. At batch 1 decoding
 * is memory-bound and this costs no more than the integer path; with many rows the integer path wins.     */

typedef struct {
#ifdef LADLE_AVX2
    __m256i q;
#else
    int8_t q[32];
#endif
    float d0, d1; /* scale of values 0..15 and of 16..31 (equal except for Q6_K) */
    float m;      /* added to every value (Q4_1/Q5_1 min, minus the K-quant min) */
} wblock;

#ifdef LADLE_AVX2
#define WQ_SET(dst, v) ((dst)->q = (v))
#else
#define WQ_SET(dst, v) memcpy((dst)->q, &(v), 32)
#endif

#ifndef LADLE_AVX2
/* Plain C stand-ins for the two unpackers, producing the same byte order. */
typedef struct { int8_t b[32]; } bytes32;
static inline bytes32 c_nibbles16(const uint8_t *p) {
    bytes32 r;
    for (int i = 0; i < 16; i++) {
        r.b[i] = (int8_t)(p[i] & 0x0f);
        r.b[i + 16] = (int8_t)(p[i] >> 4);
    }
    return r;
}
static inline void c_add_fifth(bytes32 *r, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    for (int i = 0; i < 32; i++) r->b[i] = (int8_t)(r->b[i] | (((bits >> i) & 1) << 4));
}
static inline void c_offset(bytes32 *r, int off) {
    for (int i = 0; i < 32; i++) r->b[i] = (int8_t)(r->b[i] - off);
}
#endif

static inline void decode_q8_0(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + b * 34;
    o->d0 = o->d1 = half_to_float(blk);
    o->m = 0.0f;
#ifdef LADLE_AVX2
    o->q = _mm256_loadu_si256((const __m256i *)(blk + 2));
#else
    memcpy(o->q, blk + 2, 32);
#endif
}

static inline void decode_q4_0(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + b * 18;
    o->d0 = o->d1 = half_to_float(blk);
    o->m = 0.0f;
#ifdef LADLE_AVX2
    o->q = _mm256_sub_epi8(unpack_nibbles16(blk + 2), _mm256_set1_epi8(8));
#else
    bytes32 r = c_nibbles16(blk + 2);
    c_offset(&r, 8);
    WQ_SET(o, r);
#endif
}

static inline void decode_q4_1(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + b * 20;
    o->d0 = o->d1 = half_to_float(blk);
    o->m = half_to_float(blk + 2);
#ifdef LADLE_AVX2
    o->q = unpack_nibbles16(blk + 4);
#else
    bytes32 r = c_nibbles16(blk + 4);
    WQ_SET(o, r);
#endif
}

static inline void decode_q5_0(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + b * 22;
    o->d0 = o->d1 = half_to_float(blk);
    o->m = 0.0f;
#ifdef LADLE_AVX2
    o->q = _mm256_sub_epi8(_mm256_or_si256(unpack_nibbles16(blk + 6), fifth_bits(blk + 2)), _mm256_set1_epi8(16));
#else
    bytes32 r = c_nibbles16(blk + 6);
    c_add_fifth(&r, blk + 2);
    c_offset(&r, 16);
    WQ_SET(o, r);
#endif
}

static inline void decode_q5_1(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + b * 24;
    o->d0 = o->d1 = half_to_float(blk);
    o->m = half_to_float(blk + 2);
#ifdef LADLE_AVX2
    o->q = _mm256_or_si256(unpack_nibbles16(blk + 8), fifth_bits(blk + 4));
#else
    bytes32 r = c_nibbles16(blk + 8);
    c_add_fifth(&r, blk + 4);
    WQ_SET(o, r);
#endif
}

/* K-quants: block b is sub-block j = b % 8 of super-block b / 8. Q4_K and Q5_K super-blocks open alike:
 * f16 d, f16 dmin, then 12 bytes of 6-bit sub-block scales and mins. */
static inline void k_sub_block_scales(const uint8_t *blk, int j, wblock *o) {
    int sc, mn;
    k_scale_min(blk + 4, j, &sc, &mn);
    o->d0 = o->d1 = half_to_float(blk) * (float)sc;
    o->m = -(half_to_float(blk + 2) * (float)mn);
}

static inline void decode_q4_k(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + (b / 8) * 144;
    const int j = (int)(b % 8);
    k_sub_block_scales(blk, j, o);
    const uint8_t *qs = blk + 16 + 32 * (j / 2);
#ifdef LADLE_AVX2
    const __m256i raw = _mm256_loadu_si256((const __m256i *)qs);
    o->q = _mm256_and_si256((j & 1) ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0f));
#else
    for (int i = 0; i < 32; i++) o->q[i] = (int8_t)((j & 1) ? (qs[i] >> 4) : (qs[i] & 0x0f));
#endif
}

static inline void decode_q5_k(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + (b / 8) * 176;
    const int j = (int)(b % 8);
    k_sub_block_scales(blk, j, o);
    const uint8_t *qh = blk + 16, *qs = blk + 48 + 32 * (j / 2);
#ifdef LADLE_AVX2
    const __m256i raw = _mm256_loadu_si256((const __m256i *)qs);
    const __m256i lo = _mm256_and_si256((j & 1) ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qh), j), _mm256_set1_epi8(1)), 4);
    o->q = _mm256_or_si256(lo, hi);
#else
    for (int i = 0; i < 32; i++)
        o->q[i] = (int8_t)(((j & 1) ? (qs[i] >> 4) : (qs[i] & 0x0f)) | (((qh[i] >> j) & 1) << 4));
#endif
}

static inline void decode_q6_k(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + (b / 8) * 210;
    const int sub = (int)(b % 8), h = sub / 4, s = sub % 4;
    const int8_t *scales = (const int8_t *)(blk + 192);
    const float d = half_to_float(blk + 208);
    o->d0 = d * (float)scales[2 * sub];
    o->d1 = d * (float)scales[2 * sub + 1];
    o->m = 0.0f;
    const uint8_t *ql = blk + 64 * h + 32 * (s & 1), *qh = blk + 128 + 32 * h;
#ifdef LADLE_AVX2
    const __m256i l = _mm256_loadu_si256((const __m256i *)ql);
    const __m256i lo = _mm256_and_si256(s < 2 ? l : _mm256_srli_epi16(l, 4), _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qh), 2 * s), _mm256_set1_epi8(3)), 4);
    o->q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
#else
    for (int i = 0; i < 32; i++) {
        const int lo = s < 2 ? (ql[i] & 0x0f) : (ql[i] >> 4);
        o->q[i] = (int8_t)((lo | (((qh[i] >> (2 * s)) & 3) << 4)) - 32);
    }
#endif
}

/* Rows per register tile: 4 x 8-float accumulators plus the decoded block and temporaries fit in 16 ymm. */
#define FTILE 4

/* y[r, n] for one weight row and up to FTILE activation rows. xsum[r * nb + b]: sum of block b of row r. */
#define DEFINE_FLOAT_ROW(NAME, DECODE)                                                                      \
    static void NAME(const uint8_t *w, const float *x, const float *xsum, int64_t k, int64_t rows,          \
                     float *out) {                                                                            \
        const int64_t nb = k / 32;                                                                            \
        FLOAT_ROW_BODY(DECODE)                                                                                \
    }

#ifdef LADLE_AVX2
#define FLOAT_ROW_BODY(DECODE)                                                                                \
    __m256 acc[FTILE];                                                                                        \
    float offset[FTILE];                                                                                      \
    for (int r = 0; r < FTILE; r++) {                                                                         \
        acc[r] = _mm256_setzero_ps();                                                                         \
        offset[r] = 0.0f;                                                                                     \
    }                                                                                                         \
    for (int64_t b = 0; b < nb; b++) {                                                                        \
        wblock blk = {0};                                                                                     \
        DECODE(w, b, &blk);                                                                                   \
        const __m128i q_lo = _mm256_castsi256_si128(blk.q), q_hi = _mm256_extracti128_si256(blk.q, 1);       \
        const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q_lo));                                     \
        const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q_lo, 8)));                  \
        const __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q_hi));                                     \
        const __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q_hi, 8)));                  \
        const __m256 d0 = _mm256_set1_ps(blk.d0), d1 = _mm256_set1_ps(blk.d1);                               \
        for (int64_t r = 0; r < rows; r++) {                                                                  \
            const float *xb = x + r * k + b * 32;                                                             \
            const __m256 t = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xb + 8), _mm256_mul_ps(f0, _mm256_loadu_ps(xb)));  \
            const __m256 u = _mm256_fmadd_ps(f3, _mm256_loadu_ps(xb + 24), _mm256_mul_ps(f2, _mm256_loadu_ps(xb + 16))); \
            acc[r] = _mm256_fmadd_ps(d1, u, _mm256_fmadd_ps(d0, t, acc[r]));                                  \
            offset[r] += blk.m * xsum[r * nb + b];                                                            \
        }                                                                                                     \
    }                                                                                                         \
    for (int64_t r = 0; r < rows; r++) out[r] = hsum_ps(acc[r]) + offset[r];
#else
#define FLOAT_ROW_BODY(DECODE)                                                                                \
    float acc[FTILE] = {0}, offset[FTILE] = {0};                                                              \
    for (int64_t b = 0; b < nb; b++) {                                                                        \
        wblock blk = {0};                                                                                     \
        DECODE(w, b, &blk);                                                                                   \
        for (int64_t r = 0; r < rows; r++) {                                                                  \
            const float *xb = x + r * k + b * 32;                                                             \
            float t = 0.0f, u = 0.0f;                                                                         \
            for (int i = 0; i < 16; i++) t += (float)blk.q[i] * xb[i];                                       \
            for (int i = 16; i < 32; i++) u += (float)blk.q[i] * xb[i];                                      \
            acc[r] += blk.d0 * t + blk.d1 * u;                                                                \
            offset[r] += blk.m * xsum[r * nb + b];                                                            \
        }                                                                                                     \
    }                                                                                                         \
    for (int64_t r = 0; r < rows; r++) out[r] = acc[r] + offset[r];
#endif

DEFINE_FLOAT_ROW(frow_q8_0, decode_q8_0)
DEFINE_FLOAT_ROW(frow_q4_0, decode_q4_0)
DEFINE_FLOAT_ROW(frow_q4_1, decode_q4_1)
DEFINE_FLOAT_ROW(frow_q5_0, decode_q5_0)
DEFINE_FLOAT_ROW(frow_q5_1, decode_q5_1)
DEFINE_FLOAT_ROW(frow_q4_k, decode_q4_k)
DEFINE_FLOAT_ROW(frow_q5_k, decode_q5_k)
DEFINE_FLOAT_ROW(frow_q6_k, decode_q6_k)


typedef void (*frow_fn)(const uint8_t *, const float *, const float *, int64_t, int64_t, float *);

static frow_fn frow_for_type(int qtype) {
    switch (qtype) {
        case T_Q8_0: return frow_q8_0;
        case T_Q4_0: return frow_q4_0;
        case T_Q4_1: return frow_q4_1;
        case T_Q5_0: return frow_q5_0;
        case T_Q5_1: return frow_q5_1;
        case T_Q4_K: return frow_q4_k;
        case T_Q5_K: return frow_q5_k;
        case T_Q6_K: return frow_q6_k;
        default: return NULL;
    }
}

/* Work splitting: a second thread pays off once a product reads a few hundred KB of weights (the wake-up
 * costs tens of microseconds); chunks of rows are small enough to balance, large enough to stream. */
static int threads_for(int64_t weight_bytes, int64_t m, int nthreads) {
    return weight_bytes * (m < 4 ? 1 : 4) < (256 << 10) ? 1 : nthreads;
}

static int64_t rows_per_chunk(int64_t n_rows, int64_t row_bytes, int64_t m, int nthreads) {
    (void)row_bytes;
    (void)m;
    const int64_t chunk = n_rows / (16 * (nthreads > 0 ? nthreads : 1));
    return chunk < 4 ? 4 : (chunk > 512 ? 512 : chunk);
}

typedef struct {
    frow_fn frow;
    const uint8_t *w;
    int64_t row_bytes, n_rows, k;
    const float *x;
    int64_t m;
    const float *xsum;
    float *y;
} float_job;

static void float_rows(void *ctx, int64_t begin, int64_t end) {
    const float_job *j = (const float_job *)ctx;
    const int64_t nb = j->k / 32;
    for (int64_t n = begin; n < end; n++) {
        float out[FTILE];
        for (int64_t r0 = 0; r0 < j->m; r0 += FTILE) {
            const int64_t rows = j->m - r0 < FTILE ? j->m - r0 : FTILE;
            j->frow(j->w + n * j->row_bytes, j->x + r0 * j->k, j->xsum + r0 * nb, j->k, rows, out);
            for (int64_t r = 0; r < rows; r++) j->y[(r0 + r) * j->n_rows + n] = out[r];
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Exported entry point (ctypes). */

/* The same product with float activations (the exact path; see "Float-activation path").
 * xsum: scratch of m * k/32 floats. */
int ladle_matmul_float(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                       const float *x, int64_t m, float *y, float *xsum, int nthreads) {
    const frow_fn frow = frow_for_type(qtype);
    if (frow == NULL || k % 32 != 0 || ((qtype == T_Q4_K || qtype == T_Q5_K || qtype == T_Q6_K) && k % 256)) return -1;
    const int64_t nb = k / 32;
    for (int64_t r = 0; r < m; r++)
        for (int64_t b = 0; b < nb; b++) {
            float s = 0.0f;
            for (int i = 0; i < 32; i++) s += x[r * k + b * 32 + i];
            xsum[r * nb + b] = s;
        }
    float_job job = {frow, w, row_bytes, n_rows, k, x, m, xsum, y};
    parallel_for(float_rows, &job, n_rows, rows_per_chunk(n_rows, row_bytes, m, nthreads), threads_for(n_rows * row_bytes, m, nthreads));
    return 0;
}

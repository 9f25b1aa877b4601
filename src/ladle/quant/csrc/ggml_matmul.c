/* y = x @ W.T for W kept in GGML block formats, on the CPU. Reading the weights in their packed form is what
 * makes batch-1 decode fast: a Q8_0 matrix is ~1.06 bytes per weight instead of 4.
 *
 * Each format has one decoder (decode_*) that turns a 32-value block into 32 signed 8-bit integers, one or
 * two float scales and an offset. Two paths consume it:
 * - int8 (ladle_matmul): the activations are quantized to 8 bits too, as ggml does, and multiplied with
 *   integer dot products (AVX2 vpmaddubsw, 32 products per instruction). Activations use ggml's Q8_0/Q8_1
 *   format, rounding included: 32 values per block, d = max|x|/127 rounded to f16, q = round-half-even(
 *   x * 127/max|x|), s = f16(d_unrounded * sum q) for the Q4_1/Q5_1 offsets. For Q8_0/Q4_0/Q5_0 weights
 *   the integer sums therefore equal llama.cpp's exactly. ggml gives K-quants 256-value activation blocks
 *   (Q8_K); ladle uses 32 for them too: Gemma's FFN inputs have outliers ~100x their RMS and a 256-value
 *   block rounds everything near an outlier to a few levels (2% error on Gemma 3's ffn_down against 0.7%).
 * - float (ladle_matmul_float): float activations times the decoded weights: dequantize(W) @ x up to the
 *   order of float additions. Slower per weight, but exact.
 * Both decode each weight block once for up to FTILE activation rows.
 *
 * Built on first use by ladle/quant/native.py (cc -O3 -march=native -pthread) and called through ctypes.
 * Every kernel has a plain C version beside the AVX2 one, used when the compiler targets no AVX2.
 * Tests compare both against gguf's numpy dequantizer (tests/test_quant_matmul.py).
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "thread_pool.h"
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LADLE_AVX2 1
#endif

/* GGML type ids (ggml.h). */
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };

/* x[i] ~= d * qs[i]; s ~= d * sum (both through f16, as ggml stores them); sum = sum(qs). */
typedef struct {
    float d;
    float s;
    int32_t sum;
    int8_t qs[32];
} act_block;

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef LADLE_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* float -> nearest f16 (ties to even) -> float: the value ggml keeps after storing a scale as f16. */
static inline float round_to_half(float f) {
#ifdef LADLE_AVX2
    return _cvtsh_ss(_cvtss_sh(f, 0));
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = x & 0x80000000u, ax = x & 0x7fffffffu;
    uint16_t h;
    if (ax >= 0x7f800000u) {
        h = (uint16_t)((sign >> 16) | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    } else if (ax >= 0x477ff000u) { /* rounds to >= 65520: overflow to inf */
        h = (uint16_t)((sign >> 16) | 0x7c00);
    } else if (ax < 0x38800000u) { /* below the smallest normal half: subnormal, steps of 2^-24 */
        float v;
        memcpy(&v, &ax, 4);
        const float q = nearbyintf(v * 16777216.0f); /* in units of 2^-24, ties to even */
        h = (uint16_t)((sign >> 16) | (uint32_t)q);
    } else {
        const uint32_t mant = ax & 0x7fffff, exp = (ax >> 23) - 127 + 15;
        uint32_t hv = (exp << 10) | (mant >> 13);
        const uint32_t rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (hv & 1))) hv++; /* may carry into the exponent: fine */
        h = (uint16_t)((sign >> 16) | hv);
    }
    uint8_t b[2] = {(uint8_t)(h & 0xff), (uint8_t)(h >> 8)};
    return half_to_float(b);
#endif
}

/* ------------------------------------------------------------------------------------------------ */
/* Activation quantization                                                                           */

static void quantize_row(const float *x, act_block *out, int64_t k) {
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        act_block *o = out + b;
#ifdef LADLE_AVX2
        __m256 v[4];
        const __m256 sign_bit = _mm256_set1_ps(-0.0f);
        __m256 amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float max_abs = _mm_cvtss_f32(m4);
        const float scale = max_abs > 0.0f ? 127.0f / max_abs : 0.0f;
        const float d = max_abs / 127.0f;
        o->d = round_to_half(d);
        const __m256 s = _mm256_set1_ps(scale);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], s));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], s));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], s));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], s));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
        o->sum = _mm_cvtsi128_si32(t);
        o->s = round_to_half(d * (float)o->sum);
        /* The packs work per 128-bit lane, leaving 4-byte groups in the order 0,2,4,6,1,3,5,7: undo that. */
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)o->qs, packed);
#else
        float max_abs = 0.0f;
        for (int i = 0; i < 32; i++) {
            const float a = fabsf(xb[i]);
            max_abs = a > max_abs ? a : max_abs;
        }
        const float scale = max_abs > 0.0f ? 127.0f / max_abs : 0.0f;
        const float d = max_abs / 127.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            const int q = (int)nearbyintf(xb[i] * scale);
            o->qs[i] = (int8_t)q;
            sum += q;
        }
        o->d = round_to_half(d);
        o->sum = sum;
        o->s = round_to_half(d * (float)sum);
#endif
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* AVX2 helpers                                                                                      */

#ifdef LADLE_AVX2
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 int32 partial sums of u[i]*s[i] over 32 bytes; u is read unsigned, s signed (no overflow for |u|<=128). */
static inline __m256i dot_us(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Same for two signed operands: move a's sign onto b so the unsigned operand is |a|. */
static inline __m256i dot_ss(__m256i a, __m256i b) {
    return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* 16 packed bytes -> 32 values: low nibbles (elements 0..15) then high nibbles (16..31). */
static inline __m256i unpack_nibbles16(const uint8_t *p) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)p);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

/* 32 bits (little-endian at p) -> 32 bytes, 0x10 where the bit is set. */
static inline __m256i fifth_bits(const uint8_t *p) {
    uint32_t bits;
    memcpy(&bits, p, 4);
    const __m256i byte_of_bit = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                                  0x0101010101010101LL, 0x0000000000000000LL);
    const __m256i bit_in_byte = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), byte_of_bit);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit_in_byte), bit_in_byte);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}
#endif

static inline void k_scale_min(const uint8_t *p, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = p[j] & 63;
        *mn = p[j + 4] & 63;
    } else {
        *sc = (p[j + 4] & 0x0f) | ((p[j - 4] >> 6) << 4);
        *mn = (p[j + 4] >> 4) | ((p[j] >> 6) << 4);
    }
}

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
    int m_via_s;  /* int8 path: apply m through ggml's f16 s = d*sum (Q4_1/Q5_1, as llama.cpp) */
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
    o->m_via_s = 1;
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
    o->m_via_s = 1;
#ifdef LADLE_AVX2
    o->q = _mm256_or_si256(unpack_nibbles16(blk + 8), fifth_bits(blk + 4));
#else
    bytes32 r = c_nibbles16(blk + 8);
    c_add_fifth(&r, blk + 4);
    WQ_SET(o, r);
#endif
}

/* K-quants: block b is sub-block j = b % 8 of super-block b / 8. */
static inline void decode_q4_k(const uint8_t *w, int64_t b, wblock *o) {
    const uint8_t *blk = w + (b / 8) * 144;
    const int j = (int)(b % 8);
    int sc, mn;
    k_scale_min(blk + 4, j, &sc, &mn);
    o->d0 = o->d1 = half_to_float(blk) * (float)sc;
    o->m = -(half_to_float(blk + 2) * (float)mn);
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
    int sc, mn;
    k_scale_min(blk + 4, j, &sc, &mn);
    o->d0 = o->d1 = half_to_float(blk) * (float)sc;
    o->m = -(half_to_float(blk + 2) * (float)mn);
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


/* Int8 path, the same decoders: each weight block is decoded once and multiplied, as 8-bit integers, with
 * the quantized blocks of up to FTILE activation rows (batches and prefill reuse the decode work).      */
#define DEFINE_INT8_ROW(NAME, DECODE)                                                                       \
    static void NAME(const uint8_t *w, const act_block *a, int64_t nb, int64_t rows, float *out) {         \
        INT8_ROW_BODY(DECODE)                                                                                 \
    }

#ifdef LADLE_AVX2
#define INT8_ROW_BODY(DECODE)                                                                                 \
    __m256 acc[FTILE];                                                                                        \
    float offset[FTILE];                                                                                      \
    for (int r = 0; r < FTILE; r++) {                                                                         \
        acc[r] = _mm256_setzero_ps();                                                                         \
        offset[r] = 0.0f;                                                                                     \
    }                                                                                                         \
    for (int64_t b = 0; b < nb; b++) {                                                                        \
        wblock blk = {0};                                                                                     \
        DECODE(w, b, &blk);                                                                                   \
        const __m256i qabs = _mm256_sign_epi8(blk.q, blk.q);                                                  \
        /* lanes 0..3 of the int32 sums come from values 0..15, lanes 4..7 from 16..31 */                      \
        const __m256 dw = _mm256_set_m128(_mm_set1_ps(blk.d1), _mm_set1_ps(blk.d0));                          \
        for (int64_t r = 0; r < rows; r++) {                                                                  \
            const act_block *ab = a + r * nb + b;                                                             \
            const __m256i x = _mm256_loadu_si256((const __m256i *)ab->qs);                                    \
            const __m256i p = dot_us(qabs, _mm256_sign_epi8(x, blk.q));                                       \
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(ab->d)), _mm256_cvtepi32_ps(p), acc[r]); \
            offset[r] += blk.m * (blk.m_via_s ? ab->s : ab->d * (float)ab->sum);                             \
        }                                                                                                     \
    }                                                                                                         \
    for (int64_t r = 0; r < rows; r++) out[r] = hsum_ps(acc[r]) + offset[r];
#else
#define INT8_ROW_BODY(DECODE)                                                                                 \
    float acc[FTILE] = {0}, offset[FTILE] = {0};                                                              \
    for (int64_t b = 0; b < nb; b++) {                                                                        \
        wblock blk = {0};                                                                                     \
        DECODE(w, b, &blk);                                                                                   \
        for (int64_t r = 0; r < rows; r++) {                                                                  \
            const act_block *ab = a + r * nb + b;                                                             \
            int32_t s0 = 0, s1 = 0;                                                                           \
            for (int i = 0; i < 16; i++) s0 += blk.q[i] * ab->qs[i];                                          \
            for (int i = 16; i < 32; i++) s1 += blk.q[i] * ab->qs[i];                                         \
            acc[r] += ab->d * (blk.d0 * (float)s0 + blk.d1 * (float)s1);                                      \
            offset[r] += blk.m * (blk.m_via_s ? ab->s : ab->d * (float)ab->sum);                             \
        }                                                                                                     \
    }                                                                                                         \
    for (int64_t r = 0; r < rows; r++) out[r] = acc[r] + offset[r];
#endif

DEFINE_INT8_ROW(irow_q8_0, decode_q8_0)
DEFINE_INT8_ROW(irow_q4_0, decode_q4_0)
DEFINE_INT8_ROW(irow_q4_1, decode_q4_1)
DEFINE_INT8_ROW(irow_q5_0, decode_q5_0)
DEFINE_INT8_ROW(irow_q5_1, decode_q5_1)
DEFINE_INT8_ROW(irow_q4_k, decode_q4_k)
DEFINE_INT8_ROW(irow_q5_k, decode_q5_k)
DEFINE_INT8_ROW(irow_q6_k, decode_q6_k)

typedef void (*irow_fn)(const uint8_t *, const act_block *, int64_t, int64_t, float *);

static irow_fn irow_for_type(int qtype) {
    switch (qtype) {
        case T_Q8_0: return irow_q8_0;
        case T_Q4_0: return irow_q4_0;
        case T_Q4_1: return irow_q4_1;
        case T_Q5_0: return irow_q5_0;
        case T_Q5_1: return irow_q5_1;
        case T_Q4_K: return irow_q4_k;
        case T_Q5_K: return irow_q5_k;
        case T_Q6_K: return irow_q6_k;
        default: return NULL;
    }
}

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
    irow_fn irow;
    const uint8_t *w;
    int64_t row_bytes, n_rows, nb, m;
    const act_block *act;
    float *y;
} int8_job;

static void int8_rows(void *ctx, int64_t begin, int64_t end) {
    const int8_job *j = (const int8_job *)ctx;
    for (int64_t n = begin; n < end; n++) {
        float out[FTILE];
        for (int64_t r0 = 0; r0 < j->m; r0 += FTILE) {
            const int64_t rows = j->m - r0 < FTILE ? j->m - r0 : FTILE;
            j->irow(j->w + n * j->row_bytes, j->act + r0 * j->nb, j->nb, rows, out);
            for (int64_t r = 0; r < rows; r++) j->y[(r0 + r) * j->n_rows + n] = out[r];
        }
    }
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
/* Exported entry points (ctypes).                                                                   */

int ladle_supports(int qtype) { return irow_for_type(qtype) != NULL; }

int ladle_has_avx2(void) {
#ifdef LADLE_AVX2
    return 1;
#else
    return 0;
#endif
}

/* Bytes of quantized activations for one row of k values (the same format for every qtype). */
int64_t ladle_act_row_bytes(int qtype, int64_t k) {
    (void)qtype;
    return (k / 32) * (int64_t)sizeof(act_block);
}

/* Quantize m rows of k floats into the activation format qtype's kernel reads. */
void ladle_quantize_activations(int qtype, const float *x, int64_t m, int64_t k, void *out, int nthreads) {
    (void)nthreads; /* cheap next to the matmul: one pass over m*k floats */
    const int64_t row_bytes = ladle_act_row_bytes(qtype, k);
    for (int64_t r = 0; r < m; r++) quantize_row(x + r * k, (act_block *)((uint8_t *)out + r * row_bytes), k);
}

/* y[r, n] = sum_i W[n, i] * x[r, i] for r < m, n < n_rows, with W's rows row_bytes apart.
 * act: scratch of m * ladle_act_row_bytes(qtype, k) bytes. Returns 0, or -1 for an unsupported type/size. */
int ladle_matmul(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k, const float *x,
                 int64_t m, float *y, void *act, int nthreads) {
    const irow_fn irow = irow_for_type(qtype);
    if (irow == NULL || k % 32 != 0 || ((qtype == T_Q4_K || qtype == T_Q5_K || qtype == T_Q6_K) && k % 256)) return -1;
    const int64_t nb = k / 32;
    ladle_quantize_activations(qtype, x, m, k, act, nthreads);
    int8_job job = {irow, w, row_bytes, n_rows, nb, m, (const act_block *)act, y};
    parallel_for(int8_rows, &job, n_rows, rows_per_chunk(n_rows, row_bytes, m, nthreads), threads_for(n_rows * row_bytes, m, nthreads));
    return 0;
}

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

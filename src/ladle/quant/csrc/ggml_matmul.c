/* y = x @ W.T for W kept in GGML block formats, on the CPU.
 *
 * Like ggml's own CPU path, the activations are first quantized to 8 bits per 32-value block (a float scale
 * and the block's integer sum), so every weight format reduces to integer dot products of 32 values, which
 * AVX2 does 32 at a time (vpmaddubsw). Reading the weights in their packed form is what makes batch-1 decode
 * fast: a Q8_0 matrix is ~1.06 bytes per weight instead of 4.
 *
 * Built on first use by ladle/quant/native.py (cc -O3 -march=native -fopenmp) and called through ctypes.
 * Every kernel has a plain C version below the AVX2 one, used when the compiler targets no AVX2.
 * Tests compare both against gguf's numpy dequantizer (tests/test_quant_matmul.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LADLE_AVX2 1
#endif

/* GGML type ids (ggml.h). */
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };

/* One 32-value block of quantized activations: x[i] ~= d * qs[i]; sum = sum(qs). */
typedef struct {
    float d;
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
        o->d = max_abs / 127.0f;
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
        o->d = max_abs / 127.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            const int q = (int)nearbyintf(xb[i] * scale);
            o->qs[i] = (int8_t)q;
            sum += q;
        }
        o->sum = sum;
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
/* Row dot products: one weight row (nb32 blocks of 32 values) with one quantized activation row.     */

static float dot_q8_0(const uint8_t *w, const act_block *a, int64_t nb) {
#ifdef LADLE_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const uint8_t *w0 = w + b * 34, *w1 = w0 + 34;
        const __m256i p0 = dot_ss(_mm256_loadu_si256((const __m256i *)(w0 + 2)), _mm256_loadu_si256((const __m256i *)a[b].qs));
        const __m256i p1 = dot_ss(_mm256_loadu_si256((const __m256i *)(w1 + 2)), _mm256_loadu_si256((const __m256i *)a[b + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w0) * a[b].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w1) * a[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; b < nb; b++) {
        const uint8_t *w0 = w + b * 34;
        const __m256i p0 = dot_ss(_mm256_loadu_si256((const __m256i *)(w0 + 2)), _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w0) * a[b].d), _mm256_cvtepi32_ps(p0), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 34;
        const int8_t *q = (const int8_t *)(blk + 2);
        int32_t s = 0;
        for (int i = 0; i < 32; i++) s += q[i] * a[b].qs[i];
        acc += half_to_float(blk) * a[b].d * (float)s;
    }
    return acc;
#endif
}

static float dot_q4_0(const uint8_t *w, const act_block *a, int64_t nb) {
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 18;
        const __m256i q = _mm256_sub_epi8(unpack_nibbles16(blk + 2), _mm256_set1_epi8(8));
        const __m256i p = dot_ss(q, _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(blk) * a[b].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 18;
        int32_t s = 0;
        for (int i = 0; i < 16; i++) {
            s += ((blk[2 + i] & 0x0f) - 8) * a[b].qs[i];
            s += ((blk[2 + i] >> 4) - 8) * a[b].qs[i + 16];
        }
        acc += half_to_float(blk) * a[b].d * (float)s;
    }
    return acc;
#endif
}

static float dot_q4_1(const uint8_t *w, const act_block *a, int64_t nb) {
    float offset = 0.0f; /* sum over blocks of m * sum(x) */
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 20;
        const __m256i p = dot_us(unpack_nibbles16(blk + 4), _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(blk) * a[b].d), _mm256_cvtepi32_ps(p), acc);
        offset += half_to_float(blk + 2) * a[b].d * (float)a[b].sum;
    }
    return hsum_ps(acc) + offset;
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 20;
        int32_t s = 0;
        for (int i = 0; i < 16; i++) {
            s += (blk[4 + i] & 0x0f) * a[b].qs[i];
            s += (blk[4 + i] >> 4) * a[b].qs[i + 16];
        }
        acc += half_to_float(blk) * a[b].d * (float)s;
        offset += half_to_float(blk + 2) * a[b].d * (float)a[b].sum;
    }
    return acc + offset;
#endif
}

static float dot_q5_0(const uint8_t *w, const act_block *a, int64_t nb) {
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 22;
        __m256i q = _mm256_or_si256(unpack_nibbles16(blk + 6), fifth_bits(blk + 2));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        const __m256i p = dot_ss(q, _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(blk) * a[b].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 22;
        uint32_t qh;
        memcpy(&qh, blk + 2, 4);
        int32_t s = 0;
        for (int i = 0; i < 16; i++) {
            const int lo = (blk[6 + i] & 0x0f) | (((qh >> i) & 1) << 4);
            const int hi = (blk[6 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            s += (lo - 16) * a[b].qs[i] + (hi - 16) * a[b].qs[i + 16];
        }
        acc += half_to_float(blk) * a[b].d * (float)s;
    }
    return acc;
#endif
}

static float dot_q5_1(const uint8_t *w, const act_block *a, int64_t nb) {
    float offset = 0.0f;
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 24;
        const __m256i q = _mm256_or_si256(unpack_nibbles16(blk + 8), fifth_bits(blk + 4));
        const __m256i p = dot_us(q, _mm256_loadu_si256((const __m256i *)a[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(blk) * a[b].d), _mm256_cvtepi32_ps(p), acc);
        offset += half_to_float(blk + 2) * a[b].d * (float)a[b].sum;
    }
    return hsum_ps(acc) + offset;
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * 24;
        uint32_t qh;
        memcpy(&qh, blk + 4, 4);
        int32_t s = 0;
        for (int i = 0; i < 16; i++) {
            const int lo = (blk[8 + i] & 0x0f) | (((qh >> i) & 1) << 4);
            const int hi = (blk[8 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            s += lo * a[b].qs[i] + hi * a[b].qs[i + 16];
        }
        acc += half_to_float(blk) * a[b].d * (float)s;
        offset += half_to_float(blk + 2) * a[b].d * (float)a[b].sum;
    }
    return acc + offset;
#endif
}

/* Q4_K: 256-value super-blocks of 8 sub-blocks; sub-block j is d*sc[j]*q - dmin*m[j], q in 0..15. */
static float dot_q4_k(const uint8_t *w, const act_block *a, int64_t nb) {
    float mins = 0.0f;
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
#else
    float acc = 0.0f;
#endif
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        const uint8_t *blk = w + sb * 144;
        const act_block *ab = a + sb * 8;
        const float d = half_to_float(blk), dmin = half_to_float(blk + 2);
        const uint8_t *qs = blk + 16;
        for (int j = 0; j < 8; j += 2) {
            int sc0, m0, sc1, m1;
            k_scale_min(blk + 4, j, &sc0, &m0);
            k_scale_min(blk + 4, j + 1, &sc1, &m1);
            mins += dmin * (float)m0 * ab[j].d * (float)ab[j].sum + dmin * (float)m1 * ab[j + 1].d * (float)ab[j + 1].sum;
#ifdef LADLE_AVX2
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 16 * j));
            const __m256i p0 = dot_us(_mm256_and_si256(raw, m4), _mm256_loadu_si256((const __m256i *)ab[j].qs));
            const __m256i p1 = dot_us(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), _mm256_loadu_si256((const __m256i *)ab[j + 1].qs));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc0 * ab[j].d), _mm256_cvtepi32_ps(p0), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc1 * ab[j + 1].d), _mm256_cvtepi32_ps(p1), acc);
#else
            int32_t s0 = 0, s1 = 0;
            for (int i = 0; i < 32; i++) {
                s0 += (qs[16 * j + i] & 0x0f) * ab[j].qs[i];
                s1 += (qs[16 * j + i] >> 4) * ab[j + 1].qs[i];
            }
            acc += d * (float)sc0 * ab[j].d * (float)s0 + d * (float)sc1 * ab[j + 1].d * (float)s1;
#endif
        }
    }
#ifdef LADLE_AVX2
    return hsum_ps(acc) - mins;
#else
    return acc - mins;
#endif
}

/* Q5_K: as Q4_K plus a 5th bit: bit j of qh[i] belongs to element i of sub-block j. */
static float dot_q5_k(const uint8_t *w, const act_block *a, int64_t nb) {
    float mins = 0.0f;
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
#else
    float acc = 0.0f;
#endif
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        const uint8_t *blk = w + sb * 176;
        const act_block *ab = a + sb * 8;
        const float d = half_to_float(blk), dmin = half_to_float(blk + 2);
        const uint8_t *qh = blk + 16, *qs = blk + 48;
#ifdef LADLE_AVX2
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)qh);
#endif
        for (int j = 0; j < 8; j += 2) {
            int sc0, m0, sc1, m1;
            k_scale_min(blk + 4, j, &sc0, &m0);
            k_scale_min(blk + 4, j + 1, &sc1, &m1);
            mins += dmin * (float)m0 * ab[j].d * (float)ab[j].sum + dmin * (float)m1 * ab[j + 1].d * (float)ab[j + 1].sum;
#ifdef LADLE_AVX2
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 16 * j));
            /* 16-bit shifts are fine here: bit 0 of each byte after a shift by j < 8 comes from that byte. */
            const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, j), one), 4);
            const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, j + 1), one), 4);
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(raw, m4), h0);
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), h1);
            const __m256i p0 = dot_us(q0, _mm256_loadu_si256((const __m256i *)ab[j].qs));
            const __m256i p1 = dot_us(q1, _mm256_loadu_si256((const __m256i *)ab[j + 1].qs));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc0 * ab[j].d), _mm256_cvtepi32_ps(p0), acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc1 * ab[j + 1].d), _mm256_cvtepi32_ps(p1), acc);
#else
            int32_t s0 = 0, s1 = 0;
            for (int i = 0; i < 32; i++) {
                s0 += ((qs[16 * j + i] & 0x0f) | (((qh[i] >> j) & 1) << 4)) * ab[j].qs[i];
                s1 += ((qs[16 * j + i] >> 4) | (((qh[i] >> (j + 1)) & 1) << 4)) * ab[j + 1].qs[i];
            }
            acc += d * (float)sc0 * ab[j].d * (float)s0 + d * (float)sc1 * ab[j + 1].d * (float)s1;
#endif
        }
    }
#ifdef LADLE_AVX2
    return hsum_ps(acc) - mins;
#else
    return acc - mins;
#endif
}

/* Q6_K: 16 sub-blocks of 16 values, each d*scale[i]*(q-32), q 6-bit: 4 low bits in ql, 2 high bits in qh.
 * Per 128-value half h: element 32*s+i (s = 0..3) takes ql[64h + 32*(s&1) + i] (low nibble for s<2, high
 * for s>=2) and bits 2s..2s+1 of qh[32h + i]. */
static float dot_q6_k(const uint8_t *w, const act_block *a, int64_t nb) {
#ifdef LADLE_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
#else
    float acc = 0.0f;
#endif
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        const uint8_t *blk = w + sb * 210;
        const uint8_t *ql = blk, *qh = blk + 128;
        const int8_t *scales = (const int8_t *)(blk + 192);
        const float d = half_to_float(blk + 208);
        for (int h = 0; h < 2; h++) {
#ifdef LADLE_AVX2
            const __m256i hbits = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
#endif
            for (int s = 0; s < 4; s++) {
                const int sub = 4 * h + s; /* 32-value sub-block index within the super-block */
                const act_block *ab = a + sb * 8 + sub;
                const int sc0 = scales[2 * sub], sc1 = scales[2 * sub + 1];
#ifdef LADLE_AVX2
                const __m256i lsrc = (s & 1) ? l1 : l0;
                const __m256i lo = (s < 2) ? _mm256_and_si256(lsrc, m4) : _mm256_and_si256(_mm256_srli_epi16(lsrc, 4), m4);
                const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * s), m2), 4);
                const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), off);
                const __m256i x = _mm256_loadu_si256((const __m256i *)ab->qs);
                const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
                /* The low 128 bits hold values 0..15 (scale sc0), the high 128 bits values 16..31 (sc1). */
                const __m256i scale = _mm256_set_m128i(_mm_set1_epi16((short)sc1), _mm_set1_epi16((short)sc0));
                const __m256i p = _mm256_madd_epi16(pairs, scale);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ab->d), _mm256_cvtepi32_ps(p), acc);
#else
                int32_t s0 = 0, s1 = 0;
                for (int i = 0; i < 32; i++) {
                    const uint8_t lb = ql[64 * h + 32 * (s & 1) + i];
                    const int lo = s < 2 ? (lb & 0x0f) : (lb >> 4);
                    const int q = (lo | (((qh[32 * h + i] >> (2 * s)) & 3) << 4)) - 32;
                    if (i < 16) s0 += q * ab->qs[i];
                    else s1 += q * ab->qs[i];
                }
                acc += d * ab->d * (float)(sc0 * s0 + sc1 * s1);
#endif
            }
        }
    }
#ifdef LADLE_AVX2
    return hsum_ps(acc);
#else
    return acc;
#endif
}

typedef float (*dot_fn)(const uint8_t *, const act_block *, int64_t);

static dot_fn dot_for_type(int qtype) {
    switch (qtype) {
        case T_Q8_0: return dot_q8_0;
        case T_Q4_0: return dot_q4_0;
        case T_Q4_1: return dot_q4_1;
        case T_Q5_0: return dot_q5_0;
        case T_Q5_1: return dot_q5_1;
        case T_Q4_K: return dot_q4_k;
        case T_Q5_K: return dot_q5_k;
        case T_Q6_K: return dot_q6_k;
        default: return NULL;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Exported entry points (ctypes).                                                                   */

int ladle_supports(int qtype) { return dot_for_type(qtype) != NULL; }

int ladle_has_avx2(void) {
#ifdef LADLE_AVX2
    return 1;
#else
    return 0;
#endif
}

int64_t ladle_act_block_bytes(void) { return (int64_t)sizeof(act_block); }

/* Quantize m rows of k floats (k a multiple of 32) into m * k/32 act_blocks. */
void ladle_quantize_activations(const float *x, int64_t m, int64_t k, void *out, int nthreads) {
    act_block *blocks = (act_block *)out;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (m > 1)
    for (int64_t r = 0; r < m; r++) quantize_row(x + r * k, blocks + r * (k / 32), k);
}

/* y[r, n] = sum_i W[n, i] * x[r, i] for r < m, n < n_rows, with W's rows row_bytes apart.
 * act: scratch of m * k/32 act_blocks. Returns 0, or -1 for an unsupported type. */
int ladle_matmul(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k, const float *x,
                 int64_t m, float *y, void *act, int nthreads) {
    const dot_fn dot = dot_for_type(qtype);
    if (dot == NULL || k % 32 != 0) return -1;
    const int64_t nb = k / 32;
    act_block *blocks = (act_block *)act;
    ladle_quantize_activations(x, m, k, blocks, nthreads);
    /* Threads split the weight rows, so each streams its own part of W once; all activations (small) are
     * reused from cache for every row. */
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t n = 0; n < n_rows; n++) {
        const uint8_t *row = w + n * row_bytes;
        for (int64_t r = 0; r < m; r++) y[r * n_rows + n] = dot(row, blocks + r * nb, nb);
    }
    return 0;
}

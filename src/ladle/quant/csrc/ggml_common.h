/* Helpers shared by ladle's GGML-format kernels: type ids, f16 conversions, the SIMD level compiled for. */
#ifndef LADLE_GGML_COMMON_H
#define LADLE_GGML_COMMON_H
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

static inline int is_k_quant(int qtype) { return qtype == T_Q4_K || qtype == T_Q5_K || qtype == T_Q6_K; }

/* Activations for the 32-value formats (ladle_quantize_activations; read by ggml_matmul.c and amx_matmul.c):
 * ggml's Q8_0 and Q8_1 fields, q stored as q + 128. */
typedef struct {
    float d;        /* f16(max|x| / 127), as a float */
    float s;        /* f16(unrounded d * sum q): Q8_1's s */
    uint8_t qs[32]; /* q + 128 */
} a32_block;

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
/* AVX2 helpers                                                                                      */

#ifdef LADLE_AVX2
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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

#endif

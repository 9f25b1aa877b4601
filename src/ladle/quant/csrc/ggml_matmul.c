/* y = x @ W.T for W kept in GGML block formats, computed the way ggml's CPU backend computes it on x86 with
 * AVX2, bit for bit: the same quantized activations, the same integer sums and the same float operations in
 * the same order.
 *
 * ggml first quantizes the activations to the weight type's vec_dot_type, then multiplies integers:
 * - Q4_0, Q5_0, Q8_0 weights: Q8_0 activations (32 values: d = f16(max|x|/127), q = round-half-even(x *
 *   127/max|x|)); Q4_1, Q5_1: Q8_1 (the same plus s = f16(d * sum q), which carries the weight's min).
 *   One internal block format, a32_block, holds both (ladle_quantize_activations).
 * - Q4_K, Q5_K, Q6_K: Q8_K (256 values: iscale = -127/x_m with x_m the first value of largest magnitude,
 *   q = min(127, nearest_int(iscale * x)), d = 1/iscale as a float, bsums = sums of 16 q). llama.cpp's
 *   repacked Q4_K route (Q4_Kx8 weights, Q8_Kx4 activations) quantizes the same way up to the sign
 *   convention when +max and -max tie, which flips q and d together and changes no product.
 * The float order is the route's that llama.cpp takes for the weight and the batch:
 * - 32-value formats (vec_dot, and llamafile's tinyBLAS for batches; the same order): per block a vector of
 *   8 exact lane sums (values 4l..4l+3), fma'd by the scale product into 8 accumulators, summed at the end
 *   ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)); Q4_1/Q5_1 add the mins as a running float.
 * - K-quants (k_order): below 8 rows vec_dot (lanes like the above; Q4_K and Q5_K keep the mins apart);
 *   from 8 rows ggml's tiled matmul (per super-block the exact total * d_w - dmin * mins, then fma'd by
 *   d_a); Q4_K weights of a multiple of 8 rows are repacked by llama.cpp instead (gemv: per super-block one
 *   exact total fma'd by d_w * d_a, mins apart; gemm, on each whole 4 activation rows: the same per 64
 *   values). Since that depends on the batch, the rows of separate sequences are told apart (groups in
 *   ladle_matmul_quantized) and each gets the order of its own sequence computed alone.
 * - Q4_0 weights of a multiple of 8 rows are repacked by llama.cpp (Q4_0x8): per block one exact total,
 *   fma'd by the scale product (a32_route).
 *
 * The kernels are 256-bit (Zen 4 runs 512-bit vectors as two halves anyway), of two kinds:
 * - tiles (tile32, tile_k) of R weight rows x C activation rows, each weight block decoded once per tile
 *   and each activation block loaded once: 4 x 1 at batch 1, up to 4 x 4 / 1 x 8 for small batches. With
 *   AVX512-VNNI a 32-value block is one vpdpbusd of unsigned weight bytes (value + a per-format offset)
 *   and signed activations, the offset's share taken off per lane; with AVX2 alone vpmaddubsw +
 *   vpmaddwd, the activations (stored + 128) being the unsigned side. K-quant weights are unsigned
 *   already: vpmaddubsw, then vpdpwssd by the sub-block scales; mins and Q6_K's -32 via bsums.
 * - outer products (outer32, outer_k; VNNI, 8+ activation rows): activations regrouped 8 rows at a time,
 *   weights decoded to bytes once per tile, each 4 weight bytes broadcast against 4 values of 8 rows, so
 *   each float operation serves 8 rows.
 * Without AVX2 a plain C version computes the same integers, one weight row and activation row at a time.
 *
 * Built on first use by ladle/quant/native.py (cc -O3 -march=native -pthread) and called through ctypes.
 * tests/test_quant_matmul.py compares everything against ggml's own library (tests/ggml_reference.py). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amx_matmul.h"
#include "ggml_common.h"
#include "thread_pool.h"

#if defined(LADLE_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#define LADLE_VNNI 1
#endif

/* Activations for K-quants: ggml's block_q8_K, same layout. */
typedef struct {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} q8k_block;

/* Q4_1 and Q5_1 carry a min per block, which ggml adds through the activations' s. */
static inline int has_min32(int qtype) { return qtype == T_Q4_1 || qtype == T_Q5_1; }

static inline int block_bytes(int qtype) {
    switch (qtype) {
        case T_Q4_0: return 18;
        case T_Q4_1: return 20;
        case T_Q5_0: return 22;
        case T_Q5_1: return 24;
        case T_Q8_0: return 34;
        case T_Q4_K: return 144;
        case T_Q5_K: return 176;
        case T_Q6_K: return 210;
        default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Activation quantization (bit-exact with ggml's x86 quantize_row_q8_0 / q8_1 / q8_K)                 */

static void quantize_a32_row(const float *x, a32_block *out, int64_t k) {
    for (int64_t b = 0; b < k / 32; b++) {
        const float *xb = x + b * 32;
        a32_block *o = out + b;
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
        const float d = max_abs / 127.0f;
        const __m256 scale = _mm256_set1_ps(max_abs != 0.0f ? 127.0f / max_abs : 0.0f);
        __m256i q[4];
        for (int i = 0; i < 4; i++) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], scale)); /* ties to even */
        const __m256i total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
        o->d = round_to_half(d);
        o->s = round_to_half(d * (float)_mm_cvtsi128_si32(t));
        /* The packs work per 128-bit lane, leaving 4-byte groups in the order 0,2,4,6,1,3,5,7: undo that. */
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)o->qs, _mm256_xor_si256(packed, _mm256_set1_epi8((char)0x80)));
#else
        float max_abs = 0.0f;
        for (int i = 0; i < 32; i++) max_abs = fmaxf(max_abs, fabsf(xb[i]));
        const float d = max_abs / 127.0f;
        const float scale = max_abs != 0.0f ? 127.0f / max_abs : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            const int q = (int)nearbyintf(xb[i] * scale);
            o->qs[i] = (uint8_t)(q + 128);
            sum += q;
        }
        o->d = round_to_half(d);
        o->s = round_to_half(d * (float)sum);
#endif
    }
}

/* The first value of largest magnitude in 256 (ggml's x_m), and that magnitude. */
static inline float q8k_extreme(const float *x, float *amax_out) {
#ifdef LADLE_AVX2
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 256; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(x + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    *amax_out = amax;
    const __m256 target = _mm256_set1_ps(amax);
    for (int i = 0; i < 256; i += 8) {
        const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign_bit, _mm256_loadu_ps(x + i)), target, _CMP_EQ_OQ));
        if (hits) return x[i + __builtin_ctz((unsigned)hits)];
    }
    return 0.0f;
#else
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < 256; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
#endif
}

/* ggml's x86 quantize_row_q8_K is its reference C code: q = min(127, nearest_int(iscale * x)), nearest_int
 * rounding ties to even like nearbyintf and vcvtps2dq. */
static void quantize_q8k_row(const float *x, q8k_block *out, int64_t k) {
    for (int64_t b = 0; b < k / 256; b++) {
        const float *xb = x + b * 256;
        q8k_block *o = out + b;
        float amax;
        const float max = q8k_extreme(xb, &amax);
        memset(o->bsums, 0, sizeof o->bsums);
        if (amax == 0.0f) {
            o->d = 0.0f;
            memset(o->qs, 0, sizeof o->qs);
            continue;
        }
        const float iscale = -127.0f / max;
#ifdef LADLE_AVX2
        /* |iscale * x| <= 127 (+ rounding), so the saturating packs are ggml's min(127, .) */
        const __m256 sv = _mm256_set1_ps(iscale);
        for (int i = 0; i < 256; i += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8 * j), sv));
            for (int g = 0; g < 2; g++) {
                const __m256i sum = _mm256_add_epi32(q[2 * g], q[2 * g + 1]);
                __m128i t = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
                t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
                o->bsums[i / 16 + g] = (int16_t)_mm_cvtsi128_si32(t);
            }
            __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(o->qs + i), packed);
        }
#else
        for (int i = 0; i < 256; i++) {
            const int q = (int)nearbyintf(iscale * xb[i]);
            o->qs[i] = (int8_t)(q < 127 ? q : 127);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += o->qs[16 * g + i];
            o->bsums[g] = (int16_t)sum;
        }
#endif
        o->d = 1.0f / iscale;
    }
}

/* Bytes of quantized activations (the internal format) for one row of k values. */
int64_t ladle_act_row_bytes(int qtype, int64_t k) {
    return is_k_quant(qtype) ? (k / 256) * (int64_t)sizeof(q8k_block) : (k / 32) * (int64_t)sizeof(a32_block);
}

/* 0: a32 (Q8_0/Q8_1 activations), 1: Q8_K. Weights of one format can share quantized inputs. */
int ladle_act_format(int qtype) { return is_k_quant(qtype); }

typedef struct {
    int qtype;
    const float *x;
    int64_t k;
    uint8_t *out;
} quant_job;

static void quantize_rows(void *ctx, int64_t begin, int64_t end) {
    const quant_job *j = (const quant_job *)ctx;
    const int64_t row_bytes = ladle_act_row_bytes(j->qtype, j->k);
    for (int64_t r = begin; r < end; r++) {
        if (is_k_quant(j->qtype))
            quantize_q8k_row(j->x + r * j->k, (q8k_block *)(j->out + r * row_bytes), j->k);
        else
            quantize_a32_row(j->x + r * j->k, (a32_block *)(j->out + r * row_bytes), j->k);
    }
}

/* Quantize m rows of k floats into the internal activation format of qtype's kernels. */
void ladle_quantize_activations(int qtype, const float *x, int64_t m, int64_t k, void *out, int nthreads) {
    quant_job job = {qtype, x, k, (uint8_t *)out};
    parallel_for(quantize_rows, &job, m, 8, m * k >= (1 << 16) ? nthreads : 1);
}

static void store_half(uint8_t *p, float f) {
#ifdef LADLE_AVX2
    const uint16_t h = (uint16_t)_cvtss_sh(f, 0);
#else
    /* f is already an f16 value: its bits are exponent and top mantissa bits of the float. */
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    uint16_t h;
    if (ax == 0) {
        h = (uint16_t)sign;
    } else if (ax < 0x38800000u) { /* subnormal half: steps of 2^-24 */
        float v;
        memcpy(&v, &ax, 4);
        h = (uint16_t)(sign | (uint32_t)(v * 16777216.0f));
    } else {
        h = (uint16_t)(sign | (((ax >> 23) - 112) << 10) | ((ax >> 13) & 0x3ff));
    }
#endif
    memcpy(p, &h, 2);
}

/* The internal activations in ggml's own layout (block_q8_0, block_q8_1 or block_q8_K, by qtype's
 * vec_dot_type), to compare with ggml's quantize_row bytes. */
void ladle_activations_to_ggml(int qtype, const void *act, int64_t m, int64_t k, uint8_t *out) {
    if (is_k_quant(qtype)) {
        memcpy(out, act, (size_t)(m * ladle_act_row_bytes(qtype, k)));
        return;
    }
    const int with_s = has_min32(qtype);
    const int64_t size = with_s ? 36 : 34, nb = m * (k / 32);
    const a32_block *a = (const a32_block *)act;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = out + b * size;
        store_half(o, a[b].d);
        if (with_s) store_half(o + 2, a[b].s);
        for (int i = 0; i < 32; i++) o[size - 32 + i] = (uint8_t)(a[b].qs[i] ^ 0x80);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Weight decoding                                                                                    */

/* A K-quant super-block's scales: Q4_K/Q5_K's eight 6-bit scales and mins (unpacked from their 12 bytes
 * with word operations: bytes 0-3 hold scales 0-3 and, in their top 2 bits, the high bits of scales 4-7;
 * bytes 4-7 the same for the mins; bytes 8-11 the low nibbles of scales 4-7 and mins 4-7), or Q6_K's
 * sixteen int8 scales. */
typedef struct {
    float d, dmin;
    int16_t sc[16];
    uint8_t mn[8];
} kscales;

/* The 12 scale bytes -> 4 words: scales 0-3, scales 4-7, mins 0-3, mins 4-7, a byte each. */
static inline void unpack_k_scales(const uint8_t *p, uint32_t out[4]) {
    uint32_t w[3];
    memcpy(w, p, 12);
    const uint32_t low6 = 0x3f3f3f3fu, nib = 0x0f0f0f0fu, top2 = 0xc0c0c0c0u;
    out[0] = w[0] & low6;
    out[1] = (w[2] & nib) | ((w[0] & top2) >> 2);
    out[2] = w[1] & low6;
    out[3] = ((w[2] >> 4) & nib) | ((w[1] & top2) >> 2);
}

static inline void k_scales(int qtype, const uint8_t *sb, kscales *o) {
    if (qtype == T_Q6_K) {
        const int8_t *sc = (const int8_t *)(sb + 192);
        o->d = half_to_float(sb + 208);
        o->dmin = 0.0f;
        for (int i = 0; i < 16; i++) o->sc[i] = sc[i];
        return;
    }
    o->d = half_to_float(sb);
    o->dmin = half_to_float(sb + 2);
    uint32_t words[4];
    unpack_k_scales(sb + 4, words);
    uint8_t sc[8];
    memcpy(sc, words, 8);
    memcpy(o->mn, words + 2, 8);
    for (int i = 0; i < 8; i++) o->sc[i] = sc[i];
}

/* The 32 unsigned values t (0..7) of a K-quant super-block, in activation order, as plain bytes. */
static inline void k_values_c(int qtype, const uint8_t *sb, int t, uint8_t *q) {
    for (int l = 0; l < 32; l++) {
        if (qtype == T_Q6_K) {
            const int h = t / 4, s = t % 4;
            const uint8_t ql = sb[64 * h + 32 * (s & 1) + l], qh = sb[128 + 32 * h + l];
            q[l] = (uint8_t)((s < 2 ? ql & 0x0f : ql >> 4) | (((qh >> (2 * s)) & 3) << 4));
        } else {
            const uint8_t *qs = sb + (qtype == T_Q4_K ? 16 : 48) + 32 * (t / 2);
            q[l] = (uint8_t)((t & 1) ? qs[l] >> 4 : qs[l] & 0x0f);
            if (qtype == T_Q5_K) q[l] |= (uint8_t)(((sb[16 + l] >> t) & 1) << 4);
        }
    }
}

/* A 32-value block as signed values (what ggml's kernels multiply), its scale d and min m (Q4_1/Q5_1). */
static inline void a32_values_c(int qtype, const uint8_t *blk, int8_t *q, float *d, float *m) {
    *d = half_to_float(blk);
    *m = has_min32(qtype) ? half_to_float(blk + 2) : 0.0f;
    if (qtype == T_Q8_0) {
        memcpy(q, blk + 2, 32);
        return;
    }
    const int has_min = has_min32(qtype), five = qtype == T_Q5_0 || qtype == T_Q5_1;
    const uint8_t *qs = blk + 2 + 2 * has_min + 4 * five;
    uint32_t qh = 0;
    if (five) memcpy(&qh, blk + 2 + 2 * has_min, 4);
    const int offset = has_min ? 0 : (five ? 16 : 8);
    for (int i = 0; i < 16; i++) {
        q[i] = (int8_t)(((qs[i] & 0x0f) | (((qh >> i) & 1) << 4)) - offset);
        q[i + 16] = (int8_t)(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - offset);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Plain C: one weight row times one activation row, the same integers and scale products as ggml.   */

#ifndef LADLE_AVX2
static float dot_a32_c(int qtype, const uint8_t *w, const a32_block *a, int64_t nb) {
    const int bs = block_bytes(qtype);
    float sum = 0.0f, mins = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8_t q[32];
        float d, m;
        a32_values_c(qtype, w + b * bs, q, &d, &m);
        int32_t isum = 0;
        for (int i = 0; i < 32; i++) isum += q[i] * ((int)a[b].qs[i] - 128);
        sum += d * a[b].d * (float)isum;
        mins += m * a[b].s;
    }
    return sum + mins;
}

static float dot_k_c(int qtype, const uint8_t *w, const q8k_block *a, int64_t nsb) {
    const int bs = block_bytes(qtype), q6 = qtype == T_Q6_K;
    float sum = 0.0f;
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *sb = w + b * bs;
        kscales ks;
        k_scales(qtype, sb, &ks);
        int32_t isum = 0, msum = 0;
        for (int t = 0; t < 8; t++) {
            uint8_t q[32];
            k_values_c(qtype, sb, t, q);
            for (int i = 0; i < 32; i++) isum += ks.sc[q6 ? 2 * t + i / 16 : t] * q[i] * a[b].qs[32 * t + i];
        }
        /* Q6_K's values are q - 32; Q4_K/Q5_K's are d * sc * q - dmin * mn */
        for (int g = 0; g < 16; g++) msum += (q6 ? 32 * ks.sc[g] : ks.mn[g / 2]) * a[b].bsums[g];
        if (q6)
            sum += ks.d * a[b].d * (float)(isum - msum);
        else
            sum += ks.d * a[b].d * (float)isum - ks.dmin * a[b].d * (float)msum;
    }
    return sum;
}
#endif

/* ------------------------------------------------------------------------------------------------ */
/* SIMD tiles: R weight rows x C activation rows per call, both compile-time constants.              */

#ifdef LADLE_AVX2
#define MAXR 4
#define MAXC 8
/* Tile shapes, R x C: at batch 1 several weight rows share each activation load; with more activation
 * rows, each weight row decoded is used for as many of them as the registers allow (32 ymm with
 * AVX-512VL, 16 with AVX2 alone). */
#ifdef LADLE_VNNI
#define R32 4 /* batches of 8+ rows take the outer-product kernels */
#define C32 4
#define CK 8
#else
#define R32 2
#define C32 4
#define CK 4
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* How far ahead (bytes) the weights are prefetched. A tile reads R short rows in lockstep (a Gemma row
 * is 680 bytes), which the hardware prefetcher does not follow well; the rows are contiguous, so fetching
 * a fixed distance ahead of each row covers the tiles to come. */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 16384
#endif

/* sum over lanes-of-4 of u[i] * s[i] (u unsigned, s signed), added to acc. Without VNNI the int16 pair sums
 * must not overflow: callers keep |u * s| pairs below 2^15. */
ALWAYS_INLINE __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#ifdef LADLE_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* acc + sum of pairs of (int16 a * int16 b). */
ALWAYS_INLINE __m256i dot_i16(__m256i acc, __m256i a, __m256i b) {
#ifdef LADLE_VNNI
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

/* One 32-value weight block: signed values, -128*sum(values) spread over lanes, scale, min. */
typedef struct {
    __m256i q, corr;
    __m256 d;
    float m;
} wblk32;

ALWAYS_INLINE void decode32(int qtype, const uint8_t *blk, wblk32 *o) {
    o->d = _mm256_set1_ps(half_to_float(blk));
    o->m = 0.0f;
    switch (qtype) {
        case T_Q8_0: o->q = _mm256_loadu_si256((const __m256i *)(blk + 2)); break;
        case T_Q4_0: o->q = _mm256_sub_epi8(unpack_nibbles16(blk + 2), _mm256_set1_epi8(8)); break;
        case T_Q4_1:
            o->m = half_to_float(blk + 2);
            o->q = unpack_nibbles16(blk + 4);
            break;
        case T_Q5_0:
            o->q = _mm256_sub_epi8(_mm256_or_si256(unpack_nibbles16(blk + 6), fifth_bits(blk + 2)),
                                   _mm256_set1_epi8(16));
            break;
        default: /* T_Q5_1 */
            o->m = half_to_float(blk + 2);
            o->q = _mm256_or_si256(unpack_nibbles16(blk + 8), fifth_bits(blk + 4));
            break;
    }
    /* The activations are q + 128: their products carry 128 * sum(w) too, taken off via corr. */
    const __m256i s128 = dot_u8s8(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), o->q);
#ifdef LADLE_VNNI
    o->corr = _mm256_sub_epi32(_mm256_setzero_si256(), s128);
#else
    o->corr = s128;
#endif
}

/* Exact int32 lanes summing to sum(w * a) for one block pair. Without VNNI, Q8_0's |w| up to 128 times
 * a + 128 up to 255 would overflow vpmaddubsw's pairs, so it takes ggml's sign trick on the signed a. */
ALWAYS_INLINE __m256i dot32(int qtype, const wblk32 *w, __m256i a_u) {
#ifdef LADLE_VNNI
    (void)qtype;
    return _mm256_dpbusd_epi32(w->corr, a_u, w->q);
#else
    if (qtype == T_Q8_0) {
        const __m256i a = _mm256_xor_si256(a_u, _mm256_set1_epi8((char)0x80));
        return dot_u8s8(_mm256_setzero_si256(), _mm256_sign_epi8(w->q, w->q), _mm256_sign_epi8(a, w->q));
    }
    return _mm256_sub_epi32(dot_u8s8(_mm256_setzero_si256(), a_u, w->q), w->corr);
#endif
}

#ifdef LADLE_VNNI
/* 16 packed bytes -> 32 nibbles (low nibbles, then high): one 128-bit broadcast, shifted per half. */
ALWAYS_INLINE __m256i nibbles32(const uint8_t *p) {
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}

/* q | 0x10 where the 32 bits at qh are set (AVX-512 byte masking). */
ALWAYS_INLINE __m256i with_fifth_bits(__m256i q, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    return _mm256_mask_add_epi8(q, _cvtu32_mask32(bits), q, _mm256_set1_epi8(0x10)); /* bit 4 is clear: add = or */
}

/* A block's values as unsigned bytes u = value + value_offset(qtype). */
ALWAYS_INLINE __m256i decode_unsigned32(int qtype, const uint8_t *blk) {
    switch (qtype) {
        case T_Q8_0: return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)), _mm256_set1_epi8((char)0x80));
        case T_Q4_0: return nibbles32(blk + 2);
        case T_Q4_1: return nibbles32(blk + 4);
        case T_Q5_0: return with_fifth_bits(nibbles32(blk + 6), blk + 2);
        default: return with_fifth_bits(nibbles32(blk + 8), blk + 4);
    }
}

static inline int value_offset(int qtype) {
    switch (qtype) {
        case T_Q8_0: return 128;
        case T_Q4_0: return 8;
        case T_Q5_0: return 16;
        default: return 0;
    }
}

/* What the weight offset adds to each lane of vpdpbusd(value + offset, a): offset times the sum of the lane's 4
 * activations, negated. Taken off per lane (not as one total) so that every lane holds ggml's partial sum. */
ALWAYS_INLINE __m256i offset_lanes(int qtype, __m256i a_signed) {
    const int off = value_offset(qtype);
    if (off == 0) return _mm256_setzero_si256();
    const __m256i scaled = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)off), a_signed);
    return _mm256_sub_epi32(_mm256_setzero_si256(), scaled);
}
#endif

/* Lane i of the result = the sum of v[i]'s 8 int32 lanes (exact). */
ALWAYS_INLINE __m256i lane_totals8(const __m256i *v) {
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

/* llama.cpp repacks Q4_0 weights of a multiple of 8 rows (Q4_0x8) and sums each block to one exact total
 * before its fma, instead of 8 lanes: `qtype` T_Q4_0X8 asks for that order (the values are Q4_0's). */
#define T_Q4_0X8 100

static inline int a32_route(int qtype, int64_t n_rows) { return qtype == T_Q4_0 && n_rows % 8 == 0 ? T_Q4_0X8 : qtype; }

/* out[c * R + r] = row r of w times activation row c. With VNNI the weights are taken unsigned (value +
 * offset) against the signed activations, the offset's share (offset * sum a) starting the sums; without,
 * the activations are the unsigned side (see decode32 / dot32). */
ALWAYS_INLINE void tile32(int route, int R, int C, const uint8_t *const *w, const a32_block *const *a, int64_t nb,
                          float *out) {
    const int totals = route == T_Q4_0X8, qtype = totals ? T_Q4_0 : route;
    const int bs = block_bytes(qtype), has_min = has_min32(qtype);
    __m256 acc[MAXR][MAXC], tot[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}; /* totals: lane c * R + r */
    __m256i flat[16];
    float dd[16];
    if (totals)
        for (int i = 0; i < 16; i++) flat[i] = _mm256_setzero_si256(), dd[i] = 0.0f;
    float mins[MAXR][MAXC];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            mins[r][c] = 0.0f;
        }
    for (int64_t b = 0; b < nb; b++) {
#ifdef LADLE_VNNI
        __m256i wu[MAXR];
        __m256 wd[MAXR];
        float wm[MAXR];
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = w[r] + b * bs;
            _mm_prefetch((const char *)(blk + PREFETCH_BYTES), _MM_HINT_T0);
            wu[r] = decode_unsigned32(qtype, blk);
            wd[r] = _mm256_set1_ps(half_to_float(blk));
            wm[r] = has_min ? half_to_float(blk + 2) : 0.0f;
        }
        for (int c = 0; c < C; c++) {
            const a32_block *ab = a[c] + b;
            const __m256i as = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)ab->qs), _mm256_set1_epi8((char)0x80));
            const __m256i init = offset_lanes(qtype, as);
            const __m256 ad = _mm256_set1_ps(ab->d);
            for (int r = 0; r < R; r++) {
                const __m256i lanes = _mm256_dpbusd_epi32(init, wu[r], as);
                if (totals) {
                    flat[c * R + r] = lanes;
                    dd[c * R + r] = _mm256_cvtss_f32(_mm256_mul_ps(wd[r], ad));
                    continue;
                }
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(wd[r], ad), _mm256_cvtepi32_ps(lanes), acc[r][c]);
                if (has_min) mins[r][c] += wm[r] * ab->s;
            }
        }
#else
        wblk32 wb[MAXR];
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)(w[r] + b * bs + PREFETCH_BYTES), _MM_HINT_T0);
            decode32(qtype, w[r] + b * bs, &wb[r]);
        }
        for (int c = 0; c < C; c++) {
            const a32_block *ab = a[c] + b;
            const __m256i a_u = _mm256_loadu_si256((const __m256i *)ab->qs);
            const __m256 ad = _mm256_set1_ps(ab->d);
            for (int r = 0; r < R; r++) {
                const __m256i lanes = dot32(qtype, &wb[r], a_u);
                if (totals) {
                    flat[c * R + r] = lanes;
                    dd[c * R + r] = _mm256_cvtss_f32(_mm256_mul_ps(wb[r].d, ad));
                    continue;
                }
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(wb[r].d, ad), _mm256_cvtepi32_ps(lanes), acc[r][c]);
                if (has_min) mins[r][c] += wb[r].m * ab->s;
            }
        }
#endif
        if (totals)
            for (int h = 0; h * 8 < R * C; h++)
                tot[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lane_totals8(flat + 8 * h)), _mm256_loadu_ps(dd + 8 * h), tot[h]);
    }
    if (totals) {
        float res[16];
        _mm256_storeu_ps(res, tot[0]);
        _mm256_storeu_ps(res + 8, tot[1]);
        for (int i = 0; i < R * C; i++) out[i] = res[i];
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) out[c * R + r] = hsum_ps(acc[r][c]) + mins[r][c];
}

/* The 32 unsigned values t of a K-quant super-block (see k_values_c). */
ALWAYS_INLINE __m256i k_values(int qtype, const uint8_t *sb, int t) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    if (qtype == T_Q6_K) {
        const int h = t / 4, s = t % 4;
        const __m256i l = _mm256_loadu_si256((const __m256i *)(sb + 64 * h + 32 * (s & 1)));
        const __m256i lo = _mm256_and_si256(s < 2 ? l : _mm256_srli_epi16(l, 4), m4);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(sb + 128 + 32 * h));
        const __m256i hi = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * s), 4),
                                            _mm256_set1_epi8(0x30));
        return _mm256_or_si256(lo, hi);
    }
    const __m256i raw = _mm256_loadu_si256((const __m256i *)(sb + (qtype == T_Q4_K ? 16 : 48) + 32 * (t / 2)));
    __m256i q = _mm256_and_si256((t & 1) ? _mm256_srli_epi16(raw, 4) : raw, m4);
    if (qtype == T_Q5_K) {
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(sb + 16));
        const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(qh, t), _mm256_set1_epi8(1));
        q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
    }
    return q;
}

/* A super-block's scales for the tiles: one int16 vector (Q4_K/Q5_K: the 8 scales, then the 8 mins; Q6_K:
 * the 16 scales), unpacked without going through memory. */
typedef struct {
    __m256i v;
    float d, dmin;
} kscales_v;

ALWAYS_INLINE void k_scales_v(int qtype, const uint8_t *sb, kscales_v *o) {
    if (qtype == T_Q6_K) {
        o->v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sb + 192)));
        o->d = half_to_float(sb + 208);
        o->dmin = 0.0f;
        return;
    }
    uint32_t words[4];
    unpack_k_scales(sb + 4, words);
    o->v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)words));
    o->d = half_to_float(sb);
    o->dmin = half_to_float(sb + 2);
}

/* Lanes of v picked by idx (int16 lane numbers). */
ALWAYS_INLINE __m256i pick_i16(__m256i v, __m256i idx) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_permutexvar_epi16(idx, v);
#else
    int16_t lanes[16], index[16], outv[16];
    _mm256_storeu_si256((__m256i *)lanes, v);
    _mm256_storeu_si256((__m256i *)index, idx);
    for (int i = 0; i < 16; i++) outv[i] = lanes[index[i]];
    return _mm256_loadu_si256((const __m256i *)outv);
#endif
}

/* Per 32 values t, the int16 multiplier of each vpmaddubsw lane: Q4_K/Q5_K one scale, Q6_K two (16 values each). */
ALWAYS_INLINE __m256i k_lane_scales(int qtype, const kscales_v *ks, int t) {
    if (qtype != T_Q6_K) return pick_i16(ks->v, _mm256_set1_epi16((short)t));
    return pick_i16(ks->v, _mm256_set_m128i(_mm_set1_epi16((short)(2 * t + 1)), _mm_set1_epi16((short)(2 * t))));
}

/* What bsums are multiplied by: Q6_K 32 * each scale (its -32 offset), Q4_K/Q5_K each min, twice. */
ALWAYS_INLINE __m256i k_bsum_factors(int qtype, const kscales_v *ks) {
    if (qtype == T_Q6_K) return _mm256_slli_epi16(ks->v, 5);
    return pick_i16(ks->v, _mm256_setr_epi16(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15));
}

/* The order in which ggml adds up a K-quant product's super-blocks; which one applies depends on the route
 * llama.cpp takes for the weight and batch (see k_order), and each gives other float roundings. */
enum {
    K_LANES,      /* vec_dot_q6_K (batches of 1-7): 8 lanes of exact partial sums, fma'd by d, then summed */
    K_Q4K_VECDOT, /* vec_dot_q4_K: the same, the mins in a 4-lane accumulator of their own */
    K_Q5K_VECDOT, /* vec_dot_q5_K: the same, the mins as one running float */
    K_REPACK,     /* the repacked Q4_Kx8 gemv: per super-block one exact total, fma'd; mins apart */
    K_REPACK_GEMM, /* its gemm (each whole 4 activation rows): the same per 64 values (two sub-blocks) */
    K_TILED,      /* ggml's tiled K-quant matmul (8+ rows): per super-block total * d_w (- dmin * mins), * d_a */
};

/* Lane i of out[s] = lanes 2s and 2s+1 of v[i] added (s < 4): the pair sums of 8 vectors, transposed. */
ALWAYS_INLINE void pair_totals8(const __m256i *v, __m256i out[4]) {
    /* hadd: [v0 s0, v0 s1, v1 s0, v1 s1 | v0 s2, v0 s3, v1 s2, v1 s3] */
    const __m256 h01 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[0], v[1]));
    const __m256 h23 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[2], v[3]));
    const __m256 h45 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[4], v[5]));
    const __m256 h67 = _mm256_castsi256_ps(_mm256_hadd_epi32(v[6], v[7]));
    const __m256 e0 = _mm256_shuffle_ps(h01, h23, 0x88), o0 = _mm256_shuffle_ps(h01, h23, 0xdd); /* v0-3 */
    const __m256 e1 = _mm256_shuffle_ps(h45, h67, 0x88), o1 = _mm256_shuffle_ps(h45, h67, 0xdd); /* v4-7 */
    out[0] = _mm256_castps_si256(_mm256_permute2f128_ps(e0, e1, 0x20));
    out[1] = _mm256_castps_si256(_mm256_permute2f128_ps(o0, o1, 0x20));
    out[2] = _mm256_castps_si256(_mm256_permute2f128_ps(e0, e1, 0x31));
    out[3] = _mm256_castps_si256(_mm256_permute2f128_ps(o0, o1, 0x31));
}

/* K-quant tile, R x C (R * C <= 8), super-block by super-block, summed in `order`. */
ALWAYS_INLINE void tile_k(int qtype, int order, int R, int C, const uint8_t *const *w, const q8k_block *const *a,
                          int64_t nsb, float *out) {
    const int bs = block_bytes(qtype), q6 = qtype == T_Q6_K, gemm = order == K_REPACK_GEMM;
    const int totals = order == K_REPACK || gemm || order == K_TILED;
    __m256 acc[MAXR][MAXC];
    __m128 acc_m[MAXR][MAXC];
    float summs[MAXR][MAXC];
    __m256 tot = _mm256_setzero_ps(), tot_m = _mm256_setzero_ps(); /* lane c * R + r */
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            acc_m[r][c] = _mm_setzero_ps();
            summs[r][c] = 0.0f;
        }
    for (int64_t b = 0; b < nsb; b++) {
        kscales_v ks[MAXR];
        for (int r = 0; r < R; r++) {
            for (int line = 0; line < bs; line += 64)
                _mm_prefetch((const char *)(w[r] + b * bs + PREFETCH_BYTES + line), _MM_HINT_T0);
            k_scales_v(qtype, w[r] + b * bs, &ks[r]);
        }
        float wd[8] = {0}, wm[8] = {0}, ad[8] = {0}; /* lane c * R + r */
        const int packed = order == K_REPACK && R == 4 && C == 1; /* batch 1: one vector, set directly */
        __m256 vwd = _mm256_setzero_ps(), vwm = vwd, vad = vwd;
        if (packed) {
            vwd = _mm256_setr_ps(ks[0].d, ks[1].d, ks[2].d, ks[3].d, ks[0].dmin, ks[1].dmin, ks[2].dmin, ks[3].dmin);
            vad = _mm256_set1_ps(a[0][b].d);
        } else {
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) {
                    wd[c * R + r] = ks[r].d;
                    wm[c * R + r] = ks[r].dmin;
                    ad[c * R + r] = a[c][b].d;
                }
            vwd = _mm256_loadu_ps(wd), vwm = _mm256_loadu_ps(wm), vad = _mm256_loadu_ps(ad);
        }
        __m256i isum[MAXR][MAXC];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) isum[r][c] = _mm256_setzero_si256();
#pragma GCC unroll 8 /* constant shifts and shared loads per 32 values */
        for (int t = 0; t < 8; t++) {
            __m256i q[MAXR], sc[MAXR];
            for (int r = 0; r < R; r++) {
                q[r] = k_values(qtype, w[r] + b * bs, t);
                sc[r] = k_lane_scales(qtype, &ks[r], t);
            }
            for (int c = 0; c < C; c++) {
                const __m256i av = _mm256_loadu_si256((const __m256i *)(a[c][b].qs + 32 * t));
                for (int r = 0; r < R; r++)
                    isum[r][c] = dot_i16(isum[r][c], _mm256_maddubs_epi16(q[r], av), sc[r]);
            }
            if (gemm && (t & 1)) { /* two sub-blocks done: their exact totals, scaled and added */
                __m256i flat[8];
                for (int i = 0; i < 8; i++) flat[i] = _mm256_setzero_si256();
                for (int r = 0; r < R; r++)
                    for (int c = 0; c < C; c++) {
                        flat[c * R + r] = isum[r][c];
                        isum[r][c] = _mm256_setzero_si256();
                    }
                tot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lane_totals8(flat)), _mm256_mul_ps(vwd, vad), tot);
            }
        }
        /* the lanes' exact sums with Q6_K's -32 taken off (sums) and the mins' terms (mins) */
        __m256i sums[8], mins[8];
        for (int i = 0; i < 8; i++) sums[i] = mins[i] = _mm256_setzero_si256();
        for (int r = 0; r < R; r++) {
            const __m256i factors = k_bsum_factors(qtype, &ks[r]);
            for (int c = 0; c < C; c++) {
                const int i = c * R + r;
                const __m256i bsum_terms = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a[c][b].bsums), factors);
                sums[i] = q6 ? _mm256_sub_epi32(isum[r][c], bsum_terms) : isum[r][c];
                mins[i] = q6 ? _mm256_setzero_si256() : bsum_terms;
            }
        }
        if (gemm) { /* the mins' terms, also per two sub-blocks */
            __m256i per_pair[4];
            pair_totals8(mins, per_pair);
            for (int p = 0; p < 4; p++)
                tot_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(per_pair[p]), _mm256_mul_ps(vwm, vad), tot_m);
            continue;
        }
        if (totals) {
            if (packed) { /* the 4 totals and the 4 mins' totals in one vector, scaled by one product */
                for (int i = 0; i < 4; i++) sums[4 + i] = mins[i];
                tot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lane_totals8(sums)), _mm256_mul_ps(vwd, vad), tot);
                continue;
            }
            const __m256 fs = _mm256_cvtepi32_ps(lane_totals8(sums)), fm = _mm256_cvtepi32_ps(lane_totals8(mins));
            if (order == K_REPACK) {
                tot = _mm256_fmadd_ps(fs, _mm256_mul_ps(vwd, vad), tot);
                tot_m = _mm256_fmadd_ps(fm, _mm256_mul_ps(vwm, vad), tot_m);
            } else {
                __m256 part = _mm256_mul_ps(fs, vwd);
                if (!q6) part = _mm256_fnmadd_ps(vwm, fm, part);
                tot = _mm256_fmadd_ps(part, vad, tot);
            }
            continue;
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const int i = c * R + r;
                const float dmin = -ad[i] * wm[i];
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(ad[i] * wd[i]), _mm256_cvtepi32_ps(sums[i]), acc[r][c]);
                if (order == K_Q4K_VECDOT) {
                    /* ggml pairs the 8 mins' terms into 4 lanes */
                    const __m128i m8 = _mm_hadd_epi32(_mm256_castsi256_si128(mins[i]), _mm256_extracti128_si256(mins[i], 1));
                    acc_m[r][c] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(m8), acc_m[r][c]);
                } else if (order == K_Q5K_VECDOT) {
                    const __m128i m4 = _mm_add_epi32(_mm256_castsi256_si128(mins[i]), _mm256_extracti128_si256(mins[i], 1));
                    const __m128i m2 = _mm_add_epi32(m4, _mm_unpackhi_epi64(m4, m4));
                    const int total = _mm_cvtsi128_si32(_mm_add_epi32(m2, _mm_shuffle_epi32(m2, 1)));
                    summs[r][c] = fmaf(dmin, (float)total, summs[r][c]);
                }
            }
    }
    if (totals) {
        float res[8];
        if (order == K_REPACK && R == 4 && C == 1) /* lanes 4..7 hold the mins' sums */
            tot_m = _mm256_permute2f128_ps(tot, tot, 0x01);
        _mm256_storeu_ps(res, order == K_TILED ? tot : _mm256_sub_ps(tot, tot_m));
        for (int i = 0; i < R * C; i++) out[i] = res[i];
        return;
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float y = hsum_ps(acc[r][c]);
            if (order == K_Q4K_VECDOT) {
                __m128 m = _mm_add_ps(acc_m[r][c], _mm_movehl_ps(acc_m[r][c], acc_m[r][c]));
                y += _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
            } else if (order == K_Q5K_VECDOT) {
                y += summs[r][c];
            }
            out[c * R + r] = y;
        }
}

/* Each (type, shape) gets its own fully unrolled copy of a tile; `shape` is R * 16 + C. */
#define SHAPE(R, C) ((R) * 16 + (C))
#define TILE32_CASE(QT, R, C) \
    case SHAPE(R, C): tile32(QT, R, C, w, (const a32_block *const *)a, nb, out); return;
#define TILE32_SHAPES(QT)                                                                       \
    switch (shape) {                                                                            \
        TILE32_CASE(QT, 4, 1) TILE32_CASE(QT, 4, 2) TILE32_CASE(QT, 4, 3) TILE32_CASE(QT, 4, 4)  \
        TILE32_CASE(QT, 2, 1) TILE32_CASE(QT, 2, 2) TILE32_CASE(QT, 2, 3)                         \
        default: tile32(QT, 2, 4, w, (const a32_block *const *)a, nb, out); return;             \
    }

static void run_tile32(int qtype, int shape, const uint8_t *const *w, const void *const *a, int64_t nb, float *out) {
    switch (qtype) {
        case T_Q8_0: TILE32_SHAPES(T_Q8_0)
        case T_Q4_0: TILE32_SHAPES(T_Q4_0)
        case T_Q4_0X8: TILE32_SHAPES(T_Q4_0X8)
        case T_Q4_1: TILE32_SHAPES(T_Q4_1)
        case T_Q5_0: TILE32_SHAPES(T_Q5_0)
        default: TILE32_SHAPES(T_Q5_1)
    }
}

#define TILEK_CASE(QT, ORD, R, C) \
    case SHAPE(R, C): tile_k(QT, ORD, R, C, w, (const q8k_block *const *)a, nsb, out); return;
#define TILEK_SHAPES(QT, ORD)                                                                \
    switch (shape) {                                                                         \
        TILEK_CASE(QT, ORD, 4, 1) TILEK_CASE(QT, ORD, 1, 1) TILEK_CASE(QT, ORD, 1, 2)          \
        TILEK_CASE(QT, ORD, 1, 4)                                                            \
        default: tile_k(QT, ORD, 1, CK, w, (const q8k_block *const *)a, nsb, out); return;    \
    }

static void run_tile_k(int qtype, int order, int shape, const uint8_t *const *w, const void *const *a, int64_t nsb,
                       float *out) {
    switch (qtype * 8 + order) {
        case T_Q4_K * 8 + K_REPACK: TILEK_SHAPES(T_Q4_K, K_REPACK)
        case T_Q4_K * 8 + K_REPACK_GEMM: TILEK_SHAPES(T_Q4_K, K_REPACK_GEMM)
        case T_Q4_K * 8 + K_Q4K_VECDOT: TILEK_SHAPES(T_Q4_K, K_Q4K_VECDOT)
        case T_Q4_K * 8 + K_TILED: TILEK_SHAPES(T_Q4_K, K_TILED)
        case T_Q5_K * 8 + K_Q5K_VECDOT: TILEK_SHAPES(T_Q5_K, K_Q5K_VECDOT)
        case T_Q5_K * 8 + K_TILED: TILEK_SHAPES(T_Q5_K, K_TILED)
        case T_Q6_K * 8 + K_TILED: TILEK_SHAPES(T_Q6_K, K_TILED)
        default: TILEK_SHAPES(T_Q6_K, K_LANES)
    }
}

/* The summation order llama.cpp's CPU backend uses for activation row c of a K-quant weight of n_rows rows at
 * batch m (x86, AVX2 or better): Q4_K weights of a multiple of 8 rows are repacked (CPU_REPACK buffer), whole
 * groups of 4 activation rows taking its gemm and the rest its gemv; otherwise 8+ rows take ggml's tiled
 * matmul and fewer the format's vec_dot. */
static int k_order(int qtype, int64_t n_rows, int64_t m, int64_t c) {
    if (qtype == T_Q4_K && n_rows % 8 == 0) return c < m - m % 4 ? K_REPACK_GEMM : K_REPACK;
    if (m >= 8) return K_TILED;
    return qtype == T_Q4_K ? K_Q4K_VECDOT : (qtype == T_Q5_K ? K_Q5K_VECDOT : K_LANES);
}

#ifdef LADLE_VNNI
/* Batched path for the 32-value formats (8+ activation rows, VNNI only): an outer product. Activations are
 * regrouped 8 rows at a time so that one register holds 4 values of each of the 8 rows; each 4 weight
 * values are broadcast against it (vpdpbusd: weights signed, activations + 128 unsigned), giving those 4
 * values' sum for the 8 rows in the 8 lanes. That is lane v of ggml's per-block vector (values 4v..4v+3),
 * so each of the 8 groups v keeps its own accumulator, scaled and summed in ggml's order (fma per block, then
 * its horizontal sum), and the results are ggml's bit for bit. */
#define GROUP 8
#define OUTER_R 2 /* weight rows per tile: 2 x 8 accumulators */

typedef struct {
    uint8_t q[32 * GROUP]; /* [4-value group v][row][4], q + 128 */
    float d[GROUP];
    float s[GROUP];
} a32x8_block;

/* out[v * 32 + r * 4 + i] = rows[r][4 * v + i] for 8 rows of 32 bytes: an 8 x 8 transpose of 4-byte words. */
static inline void interleave8x32(const uint8_t *const *rows, uint8_t *out) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)rows[i]));
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int v = 0; v < 4; v++) {
        _mm256_storeu_ps((float *)(out + 32 * v), _mm256_permute2f128_ps(u[v], u[v + 4], 0x20));
        _mm256_storeu_ps((float *)(out + 32 * (v + 4)), _mm256_permute2f128_ps(u[v], u[v + 4], 0x31));
    }
}

/* Rows [r0, r0 + 8) of a32 activations (missing rows as zeros) -> nb regrouped blocks. */
static void regroup_a32(const a32_block *act, int64_t nb, int64_t rows, a32x8_block *out) {
    static const uint8_t zero_row[32] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                         0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                         0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    for (int64_t b = 0; b < nb; b++) {
        a32x8_block *o = out + b;
        const uint8_t *src[GROUP];
        for (int r = 0; r < GROUP; r++) {
            const a32_block *a = r < rows ? act + r * nb + b : NULL;
            src[r] = a ? a->qs : zero_row;
            o->d[r] = a ? a->d : 0.0f;
            o->s[r] = a ? a->s : 0.0f;
        }
        interleave8x32(src, o->q);
    }
}

/* A tile's weight blocks decoded once for all activation groups: signed values, per 4-value group the
 * -128 * sum(values) that the +128 activations add, and the scales. Index [r * nb + b]. */
typedef struct {
    int8_t (*q)[32];
    int32_t (*offset)[8];
    int32_t *offset_all; /* the 8 offsets summed: for the orders that add whole blocks */
    float *d, *m;
} decoded32;

#define DECODED32_BYTES (32 + 9 * sizeof(int32_t) + 2 * sizeof(float))
#define OUTER_R_TOTALS 8 /* weight rows per tile when a block is one sum: 8 accumulators */

/* The weight rows per tile: whole-block sums need one accumulator per row, lanes eight. */
static inline int outer32_rows(int block_totals) { return block_totals ? OUTER_R_TOTALS : OUTER_R; }

/* The decoded-weight arrays of a tile of R rows, in one buffer of DECODED32_BYTES * R * nb bytes. */
static decoded32 decoded32_in(uint8_t *buf, int R, int64_t nb) {
    const int64_t n = R * nb;
    decoded32 o = {(int8_t(*)[32])buf, (int32_t(*)[8])(buf + 32 * n), (int32_t *)(buf + 64 * n),
                   (float *)(buf + 68 * n), (float *)(buf + 72 * n)};
    return o;
}

static void decode_tile32(int qtype, const uint8_t *const *w, int R, int64_t nb, decoded32 *o) {
    const int bs = block_bytes(qtype);
    for (int r = 0; r < R; r++)
        for (int64_t b = 0; b < nb; b++) {
            wblk32 blk;
            _mm_prefetch((const char *)(w[r] + b * bs + PREFETCH_BYTES), _MM_HINT_T0);
            decode32(qtype, w[r] + b * bs, &blk);
            const int64_t i = r * nb + b;
            _mm256_storeu_si256((__m256i *)o->q[i], blk.q);
            _mm256_storeu_si256((__m256i *)o->offset[i], blk.corr); /* -128 * sum per lane (VNNI build) */
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(blk.corr), _mm256_extracti128_si256(blk.corr, 1));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
            o->offset_all[i] = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1)));
            o->d[i] = _mm_cvtss_f32(_mm256_castps256_ps128(blk.d));
            o->m[i] = blk.m;
        }
}

ALWAYS_INLINE __m256i broadcast4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Whole-block order (Q4_0x8's, and any-order products): one exact total per block, so the 8 groups' sums
 * go into one accumulator per row; 8 weight rows share each activation load.
 * out[r * GROUP + c] = weight row r times activation row c of the group. */
ALWAYS_INLINE void outer32_totals(const decoded32 *wd, const a32x8_block *a, int64_t nb, float *out) {
    __m256 acc[OUTER_R_TOTALS];
    for (int r = 0; r < OUTER_R_TOTALS; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const a32x8_block *ab = a + b;
        __m256i av[8];
        for (int v = 0; v < 8; v++) av[v] = _mm256_loadu_si256((const __m256i *)(ab->q + 32 * v));
        const __m256 ad = _mm256_loadu_ps(ab->d);
        for (int r = 0; r < OUTER_R_TOTALS; r++) {
            const int64_t i = r * nb + b;
            __m256i p = _mm256_set1_epi32(wd->offset_all[i]);
            for (int v = 0; v < 8; v++) p = _mm256_dpbusd_epi32(p, av[v], broadcast4(wd->q[i] + 4 * v));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(_mm256_set1_ps(wd->d[i]), ad), acc[r]);
        }
    }
    for (int r = 0; r < OUTER_R_TOTALS; r++) _mm256_storeu_ps(out + r * GROUP, acc[r]);
}

/* out[r * GROUP + c] = weight row r times activation row c of the group. */
ALWAYS_INLINE void outer32(int qtype, const decoded32 *wd, const a32x8_block *a, int64_t nb, float *out) {
    const int has_min = has_min32(qtype);
    __m256 acc[OUTER_R][8], mins[OUTER_R];
    for (int r = 0; r < OUTER_R; r++) {
        mins[r] = _mm256_setzero_ps();
        for (int v = 0; v < 8; v++) acc[r][v] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const a32x8_block *ab = a + b;
        const __m256 ad = _mm256_loadu_ps(ab->d);
        __m256 dd[OUTER_R];
        __m256i offsets[OUTER_R]; /* spread to all lanes by a permute: cheaper here than a broadcast load */
        for (int r = 0; r < OUTER_R; r++) {
            dd[r] = _mm256_mul_ps(_mm256_set1_ps(wd->d[r * nb + b]), ad);
            offsets[r] = _mm256_loadu_si256((const __m256i *)wd->offset[r * nb + b]);
        }
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(ab->q + 32 * v));
            for (int r = 0; r < OUTER_R; r++) {
                const int64_t i = r * nb + b;
                const __m256i init = _mm256_permutevar8x32_epi32(offsets[r], _mm256_set1_epi32(v));
                const __m256i p = _mm256_dpbusd_epi32(init, av, broadcast4(wd->q[i] + 4 * v));
                acc[r][v] = _mm256_fmadd_ps(dd[r], _mm256_cvtepi32_ps(p), acc[r][v]);
            }
        }
        if (has_min)
            for (int r = 0; r < OUTER_R; r++)
                mins[r] = _mm256_fmadd_ps(_mm256_set1_ps(wd->m[r * nb + b]), _mm256_loadu_ps(ab->s), mins[r]);
    }
    /* ggml's hsum of lanes 0..7: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), for 8 rows at once */
    for (int r = 0; r < OUTER_R; r++) {
        const __m256 *l = acc[r];
        const __m256 even = _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6]));
        const __m256 odd = _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7]));
        __m256 total = _mm256_add_ps(even, odd);
        if (has_min) total = _mm256_add_ps(total, mins[r]);
        _mm256_storeu_ps(out + r * GROUP, total);
    }
}

static void run_outer32(int qtype, int block_totals, const decoded32 *wd, const a32x8_block *a, int64_t nb,
                        float *out) {
    if (block_totals) outer32_totals(wd, a, nb, out);
    else if (has_min32(qtype)) outer32(T_Q4_1, wd, a, nb, out);
    else outer32(T_Q8_0, wd, a, nb, out); /* the formats differ only in decoding, done already */
}

/* The outer product for K-quants (8+ rows in the tiled or repacked-gemm order, whose float work is per
 * super-block or per 64 values of each (weight row, activation row): exact integer totals first, as here).
 * Weight super-blocks are first decoded to plain bytes (kdecoded, once per tile of weight rows, reused by
 * every group of 8 activation rows); each 4 weight bytes are then broadcast against 4 values of 8
 * activation rows, and each 32 (Q6_K: 16) values' sums are scaled in int32, giving the 8 rows' exact
 * totals. Activation groups carry their bsums paired per 32 values, so one vpdpwssd applies a sub-block's
 * min (or Q6_K's -32 offset) to all 8 rows. */
#define OUTER_RK 8

typedef struct {
    int8_t q[256 * GROUP]; /* [4-value group v][row][4] */
    float d[GROUP];
    int16_t bs[8][GROUP][2]; /* [32 values t][row]: bsums 2t and 2t+1 */
} q8kx8_block;

typedef struct {
    uint8_t q[256];     /* the unsigned values, in order */
    int32_t sc[16];     /* Q4_K/Q5_K: scale of each 32 values (8 used); Q6_K: of each 16 */
    int32_t factors[8]; /* per 32 values t: the int16 pair multiplying bsums 2t and 2t+1 */
    float d, dmin;
} kdecoded;

static void regroup_q8k(const q8k_block *act, int64_t nsb, int64_t rows, q8kx8_block *out) {
    static const uint8_t zero_row[32] = {0};
    for (int64_t b = 0; b < nsb; b++) {
        q8kx8_block *o = out + b;
        for (int r = 0; r < GROUP; r++) {
            const q8k_block *a = r < rows ? act + r * nsb + b : NULL;
            for (int g = 0; g < 16; g++) o->bs[g / 2][r][g % 2] = a ? a->bsums[g] : 0;
            o->d[r] = a ? a->d : 0.0f;
        }
        for (int t = 0; t < 8; t++) {
            const uint8_t *src[GROUP];
            for (int r = 0; r < GROUP; r++) src[r] = r < rows ? (const uint8_t *)act[r * nsb + b].qs + 32 * t : zero_row;
            interleave8x32(src, (uint8_t *)o->q + 256 * t);
        }
    }
}

static inline int32_t int16_pair(int lo, int hi) { return (int32_t)(((uint32_t)(uint16_t)hi << 16) | (uint16_t)lo); }

static void decode_k_superblock(int qtype, const uint8_t *sb, kdecoded *o) {
    kscales ks;
    k_scales(qtype, sb, &ks);
    for (int t = 0; t < 8; t++) _mm256_storeu_si256((__m256i *)(o->q + 32 * t), k_values(qtype, sb, t));
    const int q6 = qtype == T_Q6_K;
    for (int i = 0; i < (q6 ? 16 : 8); i++) o->sc[i] = ks.sc[i];
    for (int t = 0; t < 8; t++)
        o->factors[t] = q6 ? int16_pair(32 * ks.sc[2 * t], 32 * ks.sc[2 * t + 1]) : int16_pair(ks.mn[t], ks.mn[t]);
    o->d = ks.d;
    o->dmin = ks.dmin;
}

/* The repacked Q4_K gemm's order (whole groups of 4 activation rows of one sequence), for weight rows
 * [r0, r0 + 4) of the tile: per two sub-blocks their exact total and their mins' terms, each fma'd by its scale
 * product, the result their difference. Four rows at a time: the two accumulators per row and the running
 * sums fit the registers. */
ALWAYS_INLINE void outer_k_gemm4(const kdecoded *wd, int r0, int64_t nsb, const q8kx8_block *a, float *out) {
    __m256 acc[4], acc_m[4];
    for (int r = 0; r < 4; r++) acc[r] = acc_m[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const q8kx8_block *ab = a + b;
        const __m256 ad = _mm256_loadu_ps(ab->d);
        __m256 dd[4], dm[4];
        for (int r = 0; r < 4; r++) {
            dd[r] = _mm256_mul_ps(_mm256_set1_ps(wd[(r0 + r) * nsb + b].d), ad);
            dm[r] = _mm256_mul_ps(_mm256_set1_ps(wd[(r0 + r) * nsb + b].dmin), ad);
        }
#pragma GCC unroll 4
        for (int t = 0; t < 8; t += 2) {
            __m256i isum[4];
            for (int r = 0; r < 4; r++) isum[r] = _mm256_setzero_si256();
            for (int u = t; u < t + 2; u++) {
                __m256i p[4];
                for (int r = 0; r < 4; r++) p[r] = _mm256_setzero_si256();
                for (int v = 0; v < 8; v++) {
                    const __m256i codes = _mm256_loadu_si256((const __m256i *)(ab->q + 256 * u + 32 * v));
                    for (int r = 0; r < 4; r++)
                        p[r] = _mm256_dpbusd_epi32(p[r], broadcast4(wd[(r0 + r) * nsb + b].q + 32 * u + 4 * v), codes);
                }
                for (int r = 0; r < 4; r++)
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(p[r], _mm256_set1_epi32(wd[(r0 + r) * nsb + b].sc[u])));
            }
            const __m256i bs0 = _mm256_loadu_si256((const __m256i *)ab->bs[t]);
            const __m256i bs1 = _mm256_loadu_si256((const __m256i *)ab->bs[t + 1]);
            for (int r = 0; r < 4; r++) {
                const kdecoded *k = &wd[(r0 + r) * nsb + b];
                const __m256i mins = _mm256_dpwssd_epi32(_mm256_madd_epi16(bs0, _mm256_set1_epi32(k->factors[t])), bs1,
                                                         _mm256_set1_epi32(k->factors[t + 1]));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), dd[r], acc[r]);
                acc_m[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), dm[r], acc_m[r]);
            }
        }
    }
    for (int r = 0; r < 4; r++) _mm256_storeu_ps(out + (r0 + r) * GROUP, _mm256_sub_ps(acc[r], acc_m[r]));
}

/* Per super-block orders, `order`: ggml's tiled one (the exact total * d_w (- dmin * the mins' total), then
 * * d_a, added) or the repacked Q4_K gemv's (total and mins' total each fma'd by its scale product).
 * out[r * GROUP + c]; wd[r * nsb + b] is super-block b of weight row r, decoded. */
ALWAYS_INLINE void outer_k(int qtype, int order, const kdecoded *wd, int64_t nsb, const q8kx8_block *a, float *out) {
    const int q6 = qtype == T_Q6_K, parts = q6 ? 2 : 1, nv = 8 / parts, gemv = order == K_REPACK;
    __m256 acc[OUTER_RK], acc_m[OUTER_RK]; /* acc_m: the repacked gemv's mins (read once a super-block) */
    for (int r = 0; r < OUTER_RK; r++) acc[r] = acc_m[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; b++) {
        const q8kx8_block *ab = a + b;
        __m256i isum[OUTER_RK];
        for (int r = 0; r < OUTER_RK; r++) isum[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) {
            for (int part = 0; part < parts; part++) {
                __m256i p[OUTER_RK];
                for (int r = 0; r < OUTER_RK; r++) p[r] = _mm256_setzero_si256();
                for (int v = part * nv; v < (part + 1) * nv; v++) {
                    const __m256i codes = _mm256_loadu_si256((const __m256i *)(ab->q + 256 * t + 32 * v));
                    for (int r = 0; r < OUTER_RK; r++)
                        p[r] = _mm256_dpbusd_epi32(p[r], broadcast4(wd[r * nsb + b].q + 32 * t + 4 * v), codes);
                }
                for (int r = 0; r < OUTER_RK; r++) {
                    const __m256i sc = _mm256_set1_epi32(wd[r * nsb + b].sc[q6 ? 2 * t + part : t]);
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(p[r], sc));
                }
            }
        }
        const __m256 ad = _mm256_loadu_ps(ab->d);
        for (int r = 0; r < OUTER_RK; r++) {
            const kdecoded *k = &wd[r * nsb + b];
            __m256i bterms = _mm256_setzero_si256();
            for (int t = 0; t < 8; t++)
                bterms = _mm256_dpwssd_epi32(bterms, _mm256_loadu_si256((const __m256i *)ab->bs[t]), _mm256_set1_epi32(k->factors[t]));
            if (gemv) { /* the repacked gemv: total and mins' total each fma'd by its scale product */
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(_mm256_set1_ps(k->d), ad), acc[r]);
                acc_m[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bterms), _mm256_mul_ps(_mm256_set1_ps(k->dmin), ad), acc_m[r]);
                continue;
            }
            __m256 part;
            if (q6) {
                part = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[r], bterms)), _mm256_set1_ps(k->d));
            } else {
                part = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(k->d));
                part = _mm256_fnmadd_ps(_mm256_set1_ps(k->dmin), _mm256_cvtepi32_ps(bterms), part);
            }
            acc[r] = _mm256_fmadd_ps(part, ad, acc[r]);
        }
    }
    for (int r = 0; r < OUTER_RK; r++) _mm256_storeu_ps(out + r * GROUP, gemv ? _mm256_sub_ps(acc[r], acc_m[r]) : acc[r]);
}

static void run_outer_k(int qtype, int order, const kdecoded *wd, int64_t nsb, const q8kx8_block *a, float *out) {
    if (order == K_REPACK_GEMM) {
        for (int r0 = 0; r0 < OUTER_RK; r0 += 4) outer_k_gemm4(wd, r0, nsb, a, out);
    } else if (order == K_REPACK) {
        outer_k(T_Q4_K, K_REPACK, wd, nsb, a, out);
    } else if (qtype == T_Q6_K) {
        outer_k(T_Q6_K, K_TILED, wd, nsb, a, out);
    } else {
        outer_k(T_Q4_K, K_TILED, wd, nsb, a, out); /* Q4_K and Q5_K differ only in decoding, done already */
    }
}
#endif /* LADLE_VNNI */
#endif /* LADLE_AVX2 */

/* ------------------------------------------------------------------------------------------------ */
/* Work splitting                                                                                     */

typedef struct {
    int qtype;
    const uint8_t *w;
    int64_t row_bytes, n_rows, k, m, act_row_bytes;
    const uint8_t *act;
    float *y;
    const void *grouped; /* the activations regrouped for the outer-product path, or NULL */
    int any_order; /* the caller needs the values, not ggml's last bits: the fastest order for 8+ rows */
    const int8_t *order; /* K-quants: per activation row, its summation order (k_order) */
    const int32_t *run_end; /* ... and the end of the run of rows sharing it */
} mm_job;

/* Activation rows per pass over a chunk of weight rows: the chunk and the pass's activations stay in L2. */
#define ACT_BLOCK 64

#ifdef LADLE_AVX2
/* The tile width for `rows` remaining activation rows: all of them up to max_c; K-quant tiles come in
 * widths 1, 2, 4 and max_c only. */
static int tile_width(int64_t rows, int max_c, int k_quant) {
    if (rows >= max_c) return max_c;
    if (!k_quant) return (int)rows;
    return rows >= 4 ? 4 : (rows >= 2 ? 2 : 1);
}

/* Rows [n0, n0 + R) of the weight (clamped to the last row) against activation rows [c0, c1). */
static void mm_weight_tile(const mm_job *j, int R, int64_t n0, int64_t n_end, int64_t c0, int64_t c1) {
    const uint8_t *w[MAXR];
    for (int r = 0; r < R; r++) w[r] = j->w + (n0 + r < n_end ? n0 + r : n_end - 1) * j->row_bytes;
    const int kq = is_k_quant(j->qtype);
    for (int64_t c = c0; c < c1;) {
        const int order = kq ? j->order[c] : 0;
        const int64_t limit = kq && j->run_end[c] < c1 ? j->run_end[c] : c1; /* one order per tile */
        const int C = j->m == 1 ? 1 : tile_width(limit - c, kq ? CK : C32, kq);
        const void *a[MAXC];
        for (int i = 0; i < C; i++) a[i] = j->act + (c + i) * j->act_row_bytes;
        float out[MAXR * MAXC];
        if (kq)
            run_tile_k(j->qtype, order, SHAPE(R, C), w, a, j->k / 256, out);
        else
            run_tile32(a32_route(j->qtype, j->n_rows), SHAPE(R, C), w, a, j->k / 32, out);
        for (int i = 0; i < C; i++)
            for (int r = 0; r < R && n0 + r < n_end; r++) j->y[(c + i) * j->n_rows + n0 + r] = out[i * R + r];
        c += C;
    }
}

#ifdef LADLE_VNNI
/* Stores a tile's outputs: out[r * GROUP + c] for weight rows n0.. and activation rows g * GROUP.. */
static void store_outer(const mm_job *j, const float *out, int R, int64_t n0, int64_t end, int64_t g) {
    for (int r = 0; r < R && n0 + r < end; r++)
        for (int c = 0; c < GROUP && g * GROUP + c < j->m; c++) j->y[(g * GROUP + c) * j->n_rows + n0 + r] = out[r * GROUP + c];
}

/* The order the outer-product kernels compute activation-row group g in, or -1 where the group is left to
 * the tiles: the 32-value formats have one order at every batch size; a K-quant group needs all its rows in
 * one order the outer kernel knows (K_TILED, K_REPACK_GEMM, K_REPACK; vec_dot's lanes take the tiles). */
static int outer_order(const mm_job *j, int64_t g) {
    if (!is_k_quant(j->qtype)) return 0;
    const int64_t c0 = g * GROUP, c1 = c0 + GROUP < j->m ? c0 + GROUP : j->m;
    const int order = j->order[c0];
    if (order != K_TILED && order != K_REPACK_GEMM && order != K_REPACK) return -1;
    return j->run_end[c0] >= c1 ? order : -1;
}

/* The outer-product path over weight rows [begin, end), a pass per ACT_BLOCK activation rows; the groups
 * it leaves are done by the tiles. */
static void mm_rows_outer(const mm_job *j, int64_t begin, int64_t end) {
    const int kq = is_k_quant(j->qtype);
    /* whole-block sums: the repacked Q4_0's order, and the fastest where any order will do (no mins) */
    const int block_totals =
        a32_route(j->qtype, j->n_rows) == T_Q4_0X8 || (j->any_order && !has_min32(j->qtype));
    const int R = kq ? OUTER_RK : outer32_rows(block_totals);
    const int64_t nb = kq ? j->k / 256 : j->k / 32, groups = (j->m + GROUP - 1) / GROUP;
    const size_t group_bytes = (size_t)nb * (kq ? sizeof(q8kx8_block) : sizeof(a32x8_block));
    uint8_t *buf = malloc((kq ? sizeof(kdecoded) : DECODED32_BYTES) * (size_t)(R * nb)); /* decoded weights */
    if (buf == NULL) return; /* out of memory: y stays unset rather than crash */
    kdecoded *wd = (kdecoded *)buf;
    decoded32 d32 = decoded32_in(buf, R, nb);
    for (int64_t g0 = 0; g0 < groups; g0 += ACT_BLOCK / GROUP) {
        const int64_t g1 = g0 + ACT_BLOCK / GROUP < groups ? g0 + ACT_BLOCK / GROUP : groups;
        for (int64_t n0 = begin; n0 < end; n0 += R) {
            const uint8_t *w[OUTER_RK];
            for (int r = 0; r < R; r++) w[r] = j->w + (n0 + r < end ? n0 + r : end - 1) * j->row_bytes;
            if (kq) {
                for (int r = 0; r < R; r++)
                    for (int64_t b = 0; b < nb; b++) decode_k_superblock(j->qtype, w[r] + b * block_bytes(j->qtype), &wd[r * nb + b]);
            } else {
                decode_tile32(j->qtype, w, R, nb, &d32);
            }
            for (int64_t g = g0; g < g1; g++) {
                const int order = outer_order(j, g);
                if (order < 0) continue;
                float out[OUTER_RK * GROUP];
                const void *act = (const uint8_t *)j->grouped + g * group_bytes;
                if (kq)
                    run_outer_k(j->qtype, order, wd, nb, (const q8kx8_block *)act, out);
                else
                    run_outer32(j->qtype, block_totals, &d32, (const a32x8_block *)act, nb, out);
                store_outer(j, out, R, n0, end, g);
            }
        }
    }
    free(buf);
    const int tile_r = kq ? 1 : R32;
    for (int64_t g = 0; g < groups; g++) {
        if (outer_order(j, g) >= 0) continue;
        const int64_t c0 = g * GROUP, c1 = c0 + GROUP < j->m ? c0 + GROUP : j->m;
        for (int64_t n0 = begin; n0 < end; n0 += tile_r) mm_weight_tile(j, tile_r, n0, end, c0, c1);
    }
}

/* The activations regrouped for the outer-product kernels (malloc'ed), or NULL where they do not apply
 * (fewer than 8 rows, or no group of 8 that they would take). */
static void *regroup_activations(const mm_job *j) {
    if (j->m < GROUP) return NULL;
    const int kq = is_k_quant(j->qtype);
    const int64_t nb = kq ? j->k / 256 : j->k / 32, groups = (j->m + GROUP - 1) / GROUP;
    int any = 0;
    for (int64_t g = 0; g < groups && !any; g++) any = outer_order(j, g) >= 0;
    if (!any) return NULL;
    const size_t block = kq ? sizeof(q8kx8_block) : sizeof(a32x8_block);
    uint8_t *out = malloc(block * (size_t)(groups * nb));
    if (out == NULL) return NULL;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t rows = j->m - g * GROUP < GROUP ? j->m - g * GROUP : GROUP;
        if (kq)
            regroup_q8k((const q8k_block *)j->act + g * GROUP * nb, nb, rows, (q8kx8_block *)(out + g * nb * block));
        else
            regroup_a32((const a32_block *)j->act + g * GROUP * nb, nb, rows, (a32x8_block *)(out + g * nb * block));
    }
    return out;
}
#endif

static void mm_rows(void *ctx, int64_t begin, int64_t end) {
    const mm_job *j = (const mm_job *)ctx;
#ifdef LADLE_VNNI
    if (j->grouped != NULL) {
        mm_rows_outer(j, begin, end);
        return;
    }
#endif
    /* Batch 1: 4 weight rows per activation load; else the R x C shapes above. */
    const int R = j->m == 1 ? 4 : (is_k_quant(j->qtype) ? 1 : R32);
    for (int64_t c0 = 0; c0 < j->m; c0 += ACT_BLOCK) {
        const int64_t c1 = c0 + ACT_BLOCK < j->m ? c0 + ACT_BLOCK : j->m;
        for (int64_t n0 = begin; n0 < end; n0 += R) mm_weight_tile(j, R, n0, end, c0, c1);
    }
}
#else
static void mm_rows(void *ctx, int64_t begin, int64_t end) {
    const mm_job *j = (const mm_job *)ctx;
    for (int64_t c = 0; c < j->m; c++) {
        const uint8_t *a = j->act + c * j->act_row_bytes;
        for (int64_t n = begin; n < end; n++) {
            const uint8_t *w = j->w + n * j->row_bytes;
            j->y[c * j->n_rows + n] = is_k_quant(j->qtype)
                                          ? dot_k_c(j->qtype, w, (const q8k_block *)a, j->k / 256)
                                          : dot_a32_c(j->qtype, w, (const a32_block *)a, j->k / 32);
        }
    }
}
#endif

/* A second thread pays off once a product reads some tens of KB of weights; chunks of rows are small
 * enough to balance between threads, large enough to stream. */
static int threads_for(int64_t weight_bytes, int64_t m, int nthreads) {
    return weight_bytes * (m < 4 ? 1 : 4) < (64 << 10) ? 1 : nthreads;
}

static int64_t rows_per_chunk(int64_t n_rows, int nthreads) {
    int64_t chunk = n_rows / (8 * (nthreads > 0 ? nthreads : 1));
    chunk = chunk < 16 ? 16 : (chunk > 256 ? 256 : chunk);
    return chunk & ~(int64_t)7; /* whole tiles */
}

/* ------------------------------------------------------------------------------------------------ */
/* Exported entry points (ctypes).                                                                   */

int ladle_supports(int qtype) { return block_bytes(qtype) != 0; }

int ladle_has_avx2(void) {
#ifdef LADLE_AVX2
    return 1;
#else
    return 0;
#endif
}

int ladle_has_vnni(void) {
#ifdef LADLE_VNNI
    return 1;
#else
    return 0;
#endif
}

static int shape_ok(int qtype, int64_t k) { return ladle_supports(qtype) && k % (is_k_quant(qtype) ? 256 : 32) == 0; }

#ifdef LADLE_AVX2
/* Each activation row's K-quant order, as llama.cpp would compute its sequence alone: the rows come in
 * groups (sequences: groups[i] rows each, or all m rows as one when groups is NULL), and the order of a row
 * depends on its group's size and its place in it. run_end[c]: where the run of rows of c's order ends. */
static void plan_k_orders(int qtype, int64_t n_rows, int64_t m, const int32_t *groups, int64_t n_groups,
                          int8_t *order, int32_t *run_end) {
    int64_t row = 0;
    for (int64_t g = 0; row < m; g++) {
        int64_t len = groups != NULL && g < n_groups ? groups[g] : m - row;
        if (len <= 0 || len > m - row) len = m - row; /* malformed groups: the rest as one */
        for (int64_t c = 0; c < len; c++) order[row + c] = (int8_t)k_order(qtype, n_rows, len, c);
        row += len;
    }
    for (int64_t c = m - 1; c >= 0; c--) run_end[c] = c + 1 < m && order[c + 1] == order[c] ? run_end[c + 1] : (int32_t)(c + 1);
}
#endif

/* From this many activation rows AMX tiles (16 rows, so mostly empty here) beat VNNI on Gemma's LM head:
 * measured even at 4 rows, 1.2x at 6. */
#define AMX_MIN_ROWS 5

/* y[r, n] = sum_i W[n, i] * x[r, i] for r < m, n < n_rows, from activations already quantized by
 * ladle_quantize_activations for a weight of the same format. `groups` (n_groups row counts, or NULL for
 * one group of m) says which rows are separate sequences: each row gets the float summation order that
 * llama.cpp gives its sequence computed alone, so a sequence's results do not depend on its batch.
 * Returns 0, -1 for an unsupported type/k, -2 when out of memory. */
static int matmul_quantized(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                            const void *act, int64_t m, const int32_t *groups, int64_t n_groups, float *y,
                            int nthreads, int any_order) {
    if (!shape_ok(qtype, k)) return -1;
    if (any_order && qtype == T_Q8_0 && m >= AMX_MIN_ROWS &&
        ladle_amx_matmul_q8_0(w, row_bytes, n_rows, k, (const uint8_t *)act, ladle_act_row_bytes(qtype, k), m, y,
                              nthreads) == 0)
        return 0;
    mm_job job = {qtype, w, row_bytes, n_rows, k, m, ladle_act_row_bytes(qtype, k), (const uint8_t *)act, y, NULL,
                  any_order, NULL, NULL};
    void *grouped = NULL, *plan = NULL;
#ifdef LADLE_AVX2
    if (is_k_quant(qtype) && m > 0) {
        plan = malloc((size_t)m * (sizeof(int8_t) + sizeof(int32_t)));
        if (plan == NULL) return -2;
        job.run_end = (const int32_t *)plan;
        job.order = (const int8_t *)((int32_t *)plan + m);
        plan_k_orders(qtype, n_rows, m, groups, n_groups, (int8_t *)job.order, (int32_t *)job.run_end);
    }
#else
    (void)groups;
    (void)n_groups;
#endif
#ifdef LADLE_VNNI
    job.grouped = grouped = regroup_activations(&job);
#endif
    parallel_for(mm_rows, &job, n_rows, rows_per_chunk(n_rows, nthreads),
                 threads_for(n_rows * row_bytes, m, nthreads));
    free(grouped);
    free(plan);
    return 0;
}

int ladle_matmul_quantized(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                           const void *act, int64_t m, const int32_t *groups, int64_t n_groups, float *y,
                           int nthreads) {
    return matmul_quantized(qtype, w, row_bytes, n_rows, k, act, m, groups, n_groups, y, nthreads, 0);
}

/* The same product where only the values matter, not ggml's last bits (an LM head: its logits feed no later
 * layer): from 8 rows the Q8_0/Q5_0/Q4_0 blocks are summed whole before their fma, one float operation per
 * block instead of eight, ~1.4x faster; on CPUs with AMX, Q8_0 from 5 rows runs on tiles (amx_matmul.c),
 * ~2.7x faster at 32 rows. Results differ from ggml's by float rounding (~1e-7 relative). */
int ladle_matmul_quantized_any_order(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                                     const void *act, int64_t m, float *y, int nthreads) {
    return matmul_quantized(qtype, w, row_bytes, n_rows, k, act, m, NULL, 0, y, nthreads, 1);
}

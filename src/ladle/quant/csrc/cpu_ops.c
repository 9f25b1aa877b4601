/* The non-matmul half of a decoder layer on the CPU, computed the way ggml's CPU backend computes it, so
 * that a GGUF model run by ladle follows llama.cpp's numerics step by step:
 *   - RMSNorm: sum of squares in double, scale = 1/sqrtf(mean + eps), (x * scale) * w in float;
 *   - RoPE: per position, theta starts at the position and is multiplied by powf(base, -2/n_dims) once per
 *     dimension pair (float), optional per-pair frequency divisors (llama3's rope_freqs), cosf/sinf;
 *   - attention without flash attention: K/V stored in the cache type (f16 by default), q and the softmax
 *     probabilities rounded to that type before their dot products (ggml converts a matmul's f32 operand to
 *     the f16 weight's type), f32 accumulation, softmax with ggml's vector expf, a double sum per 16 lanes;
 *   - GeGLU: gelu read from a table indexed by f16(x) holding f16 results; SwiGLU: x / (1 + expf(-x)) with
 *     the same vector expf.
 * Summation order inside dot products is not ggml's (it depends on which of its kernels runs), so results
 * agree to float rounding there and exactly elsewhere. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define HAVE_AVX512 1
#elif defined(__F16C__)
#include <immintrin.h>
#endif

#include "cpu_ops.h"
#include "thread_pool.h"

/* No implicit a*b+c contraction: where ggml computes a product and a sum in separate ops, fusing them would
 * round differently. The FMAs ggml does use (its vector expf, dot products, the rotation below, as GCC
 * contracts it in ggml's own build) are written out explicitly. */
#pragma GCC optimize("fp-contract=off")

enum { CACHE_F16 = 0, CACHE_F32 = 1, CACHE_BF16 = 2 };

/* ---- scalar conversions ------------------------------------------------------------------------------ */

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        const float f = ldexpf((float)man, -24); /* zero or subnormal: exact */
        return sign ? -f : f;
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint16_t float_to_half(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u; /* NaN */
    if (x < 0x38800000u) {                      /* below the smallest normal half: a multiple of 2^-24 */
        float a;
        memcpy(&a, &x, 4);
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    }
    if (x >= 0x477ff000u) return sign | 0x7c00u; /* rounds to infinity */
    const uint32_t r = x + 0xfffu + ((x >> 13) & 1u); /* round to nearest even */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
#endif
}

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* The value a float becomes when stored in (or converted to) the cache type. */
static inline float round_to(int dtype, float f) {
    if (dtype == CACHE_F16) return half_to_float(float_to_half(f));
    if (dtype == CACHE_BF16) return bf16_to_float(float_to_bf16(f));
    return f;
}

static inline void store_row(int dtype, void *dst, const float *src, int n) {
    int i = 0;
    if (dtype == CACHE_F16) {
        uint16_t *d = (uint16_t *)dst;
#if defined(HAVE_AVX512)
        /* the same instruction as float_to_half's, 16 at a time */
        for (; i + 16 <= n; i += 16)
            _mm256_storeu_si256((__m256i *)(d + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) d[i] = float_to_half(src[i]);
    } else if (dtype == CACHE_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (; i < n; i++) d[i] = float_to_bf16(src[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

/* x[i] = round_to(dtype, x[i]) over a row. */
static inline void round_row(int dtype, float *x, int n) {
    int i = 0;
#if defined(HAVE_AVX512)
    if (dtype == CACHE_F16)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(x + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; i++) x[i] = round_to(dtype, x[i]);
}

static inline void load_row(int dtype, const void *src, float *dst, int n) {
    int i = 0;
    if (dtype == CACHE_F16) {
        const uint16_t *s = (const uint16_t *)src;
#if defined(HAVE_AVX512)
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
#endif
        for (; i < n; i++) dst[i] = half_to_float(s[i]);
    } else if (dtype == CACHE_BF16) {
        const uint16_t *s = (const uint16_t *)src;
        for (; i < n; i++) dst[i] = bf16_to_float(s[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

static inline int64_t cache_elem_bytes(int dtype) { return dtype == CACHE_F32 ? 4 : 2; }

/* ---- exp: ggml's vector expf (an Arm optimized-routines polynomial, < 2 ulp) ---------------------------- */

static inline float exp_poly(float x) {
    const float shift = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, shift);
    const float n = z - shift; /* round(x / ln 2) */
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n);
}

#if defined(HAVE_AVX512)
static inline __m512 exp_poly16(__m512 x) {
    const __m512 shift = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shift);
    const __m512 n = _mm512_sub_ps(z, shift);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __mmask16 huge = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192.0f), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 hi = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)),
                                      u,
                                      _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f)));
    const __m512 j = _mm512_fmadd_ps(hi, u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(j, n);
    if (!huge) return res;
    const __mmask16 nonpos = _mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ);
    const __m512 limit = _mm512_mask_blend_ps(nonpos, _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
    return _mm512_mask_blend_ps(huge, res, limit);
}
#endif

/* exp of 16 values, as ggml's softmax and silu compute a full vector of them. */
static inline void exp16(const float *x, float *y) {
#if defined(HAVE_AVX512)
    _mm512_storeu_ps(y, exp_poly16(_mm512_loadu_ps(x)));
#else
    for (int i = 0; i < 16; i++) y[i] = exp_poly(x[i]);
#endif
}

/* The pairwise tree a 16-lane horizontal add uses (halves, then quarters, then the last four). */
static inline float sum16_tree(const float *v) {
    float t[8], u[4];
    for (int i = 0; i < 8; i++) t[i] = v[i + 8] + v[i];
    for (int i = 0; i < 4; i++) u[i] = t[i + 4] + t[i];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

#if defined(HAVE_AVX512)
/* sum16_tree of a vector's lanes, in registers: the same additions in the same order. */
static inline float sum16_vec(__m512 v) {
    const __m256 t = _mm256_add_ps(_mm512_extractf32x8_ps(v, 1), _mm512_castps512_ps256(v)); /* v[i+8] + v[i] */
    const __m128 u = _mm_add_ps(_mm256_extractf128_ps(t, 1), _mm256_castps256_ps128(t));    /* t[i+4] + t[i] */
    const __m128 w = _mm_add_ps(u, _mm_movehl_ps(u, u)); /* u0 + u2, u1 + u3 */
    return _mm_cvtss_f32(_mm_add_ss(w, _mm_shuffle_ps(w, w, 1)));
}
#endif

/* ---- RMSNorm ------------------------------------------------------------------------------------------- */

static inline float rms_scale(const float *x, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

static inline float rms_finish(double sum, int64_t n, float eps) {
    const float mean = (float)(sum / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

/* rms_scale of several rows: each row's double sum in its own order, four chains interleaved so that their
 * add latencies overlap (one row's sum is n dependent double adds). */
static void rms_scales(float *const *x, int count, int64_t n, float eps, float *scale) {
    int r = 0;
    for (; r + 4 <= count; r += 4) {
        const float *a = x[r], *b = x[r + 1], *c = x[r + 2], *d = x[r + 3];
        double sa = 0.0, sb = 0.0, sc = 0.0, sd = 0.0;
        for (int64_t i = 0; i < n; i++) {
            sa += (double)(a[i] * a[i]);
            sb += (double)(b[i] * b[i]);
            sc += (double)(c[i] * c[i]);
            sd += (double)(d[i] * d[i]);
        }
        scale[r] = rms_finish(sa, n, eps);
        scale[r + 1] = rms_finish(sb, n, eps);
        scale[r + 2] = rms_finish(sc, n, eps);
        scale[r + 3] = rms_finish(sd, n, eps);
    }
    for (; r + 2 <= count; r += 2) {
        const float *a = x[r], *b = x[r + 1];
        double sa = 0.0, sb = 0.0;
        for (int64_t i = 0; i < n; i++) {
            sa += (double)(a[i] * a[i]);
            sb += (double)(b[i] * b[i]);
        }
        scale[r] = rms_finish(sa, n, eps);
        scale[r + 1] = rms_finish(sb, n, eps);
    }
    for (; r < count; r++) scale[r] = rms_scale(x[r], n, eps);
}

static inline void scale_row(const float *x, float scale, const float *w, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

static inline void rms_norm_row(const float *x, const float *w, float *y, int64_t n, float eps) {
    scale_row(x, rms_scale(x, n, eps), w, y, n);
}

typedef struct {
    float *x;
    const float *delta, *delta_w, *w;
    float *y;
    int64_t n;
    float eps;
} norm_job;

static void norm_rows(void *ctx, int64_t begin, int64_t end) {
    const norm_job *job = (const norm_job *)ctx;
    const int64_t n = job->n;
    for (int64_t r0 = begin; r0 < end; r0 += 4) {
        const int count = end - r0 < 4 ? (int)(end - r0) : 4;
        float *x[4], *d[4], scale[4];
        for (int j = 0; j < count; j++) {
            x[j] = job->x + (r0 + j) * n;
            d[j] = job->delta != NULL ? (float *)job->delta + (r0 + j) * n : NULL;
        }
        if (job->delta != NULL && job->delta_w != NULL) {
            /* x + rms_norm(d) * w_d: the sandwich norm (Gemma) before the residual add */
            rms_scales(d, count, n, job->eps, scale);
            for (int j = 0; j < count; j++)
                for (int64_t i = 0; i < n; i++) x[j][i] = x[j][i] + (d[j][i] * scale[j]) * job->delta_w[i];
        } else if (job->delta != NULL) {
            for (int j = 0; j < count; j++)
                for (int64_t i = 0; i < n; i++) x[j][i] = x[j][i] + d[j][i];
        }
        if (job->w != NULL) {
            rms_scales(x, count, n, job->eps, scale);
            for (int j = 0; j < count; j++) scale_row(x[j], scale[j], job->w, job->y + (r0 + j) * n, n);
        }
    }
}

static int64_t rows_per_chunk(int64_t n) { return n >= 4096 ? 1 : 4096 / (n > 0 ? n : 1); }

/* y = rms_norm(x) * w over `rows` rows of n floats. */
void ladle_rms_norm(const float *x, const float *w, float *y, int64_t rows, int64_t n, float eps, int nthreads) {
    norm_job job = {(float *)x, NULL, NULL, w, y, n, eps};
    parallel_for(norm_rows, &job, rows, rows_per_chunk(n), nthreads);
}

/* In place x += delta (or x += rms_norm(delta) * delta_w when delta_w is given), then, when w is given,
 * y = rms_norm(x) * w: a residual add and the next norm in one pass. */
void ladle_residual_rms_norm(float *x, const float *delta, const float *delta_w, const float *w, float *y,
                             int64_t rows, int64_t n, float eps, int nthreads) {
    norm_job job = {x, delta, delta_w, w, y, n, eps};
    parallel_for(norm_rows, &job, rows, rows_per_chunk(n), nthreads);
}

/* ---- gated activations --------------------------------------------------------------------------------- */

/* two entries more than the 65536 gelu values: the vector lookup reads 32 bits at each entry */
static uint16_t gelu_table[(1 << 16) + 2];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void build_gelu_table(void) {
    const float coef_a = 0.044715f;
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    for (int i = 0; i < (1 << 16); i++) {
        const float x = half_to_float((uint16_t)i);
        /* 1 + a*x*x with the last product fused, as GCC contracts ggml's ggml_gelu_f32 */
        const float inner = sqrt_2_over_pi * x * fmaf(coef_a * x, x, 1.0f);
        gelu_table[i] = float_to_half(0.5f * x * (1.0f + tanhf(inner)));
    }
}

typedef struct {
    const float *gate, *up;
    float *out;
    int64_t n;
    int kind; /* 0: gelu (tanh approximation), 1: silu */
} glu_job;

static void glu_rows(void *ctx, int64_t begin, int64_t end) {
    const glu_job *job = (const glu_job *)ctx;
    const int64_t n = job->n;
    for (int64_t r = begin; r < end; r++) {
        const float *x = job->gate + r * n, *g = job->up + r * n;
        float *y = job->out + r * n;
        if (job->kind == 0) {
            int64_t i = 0;
#if defined(HAVE_AVX512)
            /* the scalar loop below, 16 at a time: the same f16 rounding, table entries and products */
            const __m512 ten = _mm512_set1_ps(10.0f), minus_ten = _mm512_set1_ps(-10.0f);
            for (; i + 16 <= n; i += 16) {
                const __m512 xv = _mm512_loadu_ps(x + i), gv = _mm512_loadu_ps(g + i);
                const __m512i index = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(xv, _MM_FROUND_TO_NEAREST_INT));
                const __m512i entry = _mm512_i32gather_epi32(index, (const void *)gelu_table, 2);
                __m512 yv = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(entry)), gv);
                yv = _mm512_mask_mul_ps(yv, _mm512_cmp_ps_mask(xv, ten, _CMP_GE_OQ), xv, gv);
                yv = _mm512_mask_mov_ps(yv, _mm512_cmp_ps_mask(xv, minus_ten, _CMP_LE_OQ), _mm512_setzero_ps());
                _mm512_storeu_ps(y + i, yv);
            }
#endif
            for (; i < n; i++) {
                if (x[i] <= -10.0f) {
                    y[i] = 0.0f;
                } else if (x[i] >= 10.0f) {
                    y[i] = x[i] * g[i];
                } else {
                    y[i] = half_to_float(gelu_table[float_to_half(x[i])]) * g[i];
                }
            }
            continue;
        }
        int64_t i = 0;
        float neg[16], e[16];
        for (; i + 16 <= n; i += 16) { /* full vectors: ggml's vector expf */
            for (int l = 0; l < 16; l++) neg[l] = 0.0f - x[i + l];
            exp16(neg, e);
            for (int l = 0; l < 16; l++) y[i + l] = (x[i + l] / (1.0f + e[l])) * g[i + l];
        }
        for (; i < n; i++) y[i] = (x[i] / (1.0f + expf(-x[i]))) * g[i]; /* the tail: libm's expf */
    }
}

static void run_glu(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int kind,
                    int nthreads) {
    glu_job job = {gate, up, out, n, kind};
    parallel_for(glu_rows, &job, rows, rows_per_chunk(n), nthreads);
}

/* out = gelu(gate) * up (ggml_geglu_split with its f16 gelu table). */
void ladle_geglu(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int nthreads) {
    pthread_once(&gelu_once, build_gelu_table);
    run_glu(gate, up, out, rows, n, 0, nthreads);
}

/* out = silu(gate) * up (ggml_swiglu). */
void ladle_swiglu(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int nthreads) {
    run_glu(gate, up, out, rows, n, 1, nthreads);
}

/* The gelu table entry for f16 bits h, for tests. */
uint16_t ladle_gelu_table_entry(uint16_t h) {
    pthread_once(&gelu_once, build_gelu_table);
    return gelu_table[h];
}

/* ggml's expf for tests; and float -> cache type -> float. */
void ladle_exp_poly(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) exp16(x + i, y + i);
    for (; i < n; i++) y[i] = exp_poly(x[i]);
}

/* logits = tanhf(logits / cap) * cap, as ggml scales, takes tanh and scales back. */
void ladle_softcap(float *x, int64_t n, float cap) {
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; i++) x[i] = tanhf(x[i] * inv) * cap;
}

/* ---- rotary table -------------------------------------------------------------------------------------- */

/* out[p][2i], out[p][2i+1] = cos, sin of the angle ggml gives dimension pair i at position p. */
void ladle_rope_table(float base, float freq_scale, const float *freq_factors, int n_dims, int64_t n_pos,
                      float *out) {
    const float theta_scale = powf(base, -2.0f / (float)n_dims);
    for (int64_t p = 0; p < n_pos; p++) {
        float theta = (float)p;
        float *row = out + p * n_dims;
        for (int i0 = 0; i0 < n_dims; i0 += 2) {
            const float ff = freq_factors != NULL ? freq_factors[i0 / 2] : 1.0f;
            const float angle = freq_scale * (theta / ff);
            row[i0] = cosf(angle);
            row[i0 + 1] = sinf(angle);
            theta *= theta_scale;
        }
    }
}

/* ---- attention ----------------------------------------------------------------------------------------- */

typedef struct {
    /* inputs of this step */
    const float *q, *k, *v;
    int64_t num_tokens;
    int num_heads, num_kv_heads, head_dim;
    const float *q_norm_w, *k_norm_w;
    float eps;
    const float *rope; /* [positions][head_dim]: (cos, sin) per pair */
    const int64_t *positions, *slot_mapping;
    void *k_cache, *v_cache;
    int cache_dtype, block_size;
    const int32_t *block_tables;
    int64_t max_blocks;
    const int32_t *seq_lens, *query_start;
    int num_seqs;
    float q_scale, kq_scale;
    int sliding_window;
    float *out;
    /* derived */
    float *q_rounded;    /* [T][H][D]: q after norm, rope and scale, rounded to the cache type */
    int32_t *token_seq;  /* sequence of each token */
    int max_seq_len;
    int failed;      /* set by a worker whose scratch allocation failed */
    int group_parts; /* each item attends for groups / group_parts heads */
} attn_job;

/* Rope and scale one head's vector in place (after its norm, if any). */
static void rope_head(float *x, const float *cos_sin, int d, float scale) {
    const int half = d / 2;
    for (int i = 0; i < half; i++) {
        const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
        const float x0 = x[i], x1 = x[i + half];
        /* x0*c - x1*s and x0*s + x1*c with the first product fused, as GCC contracts ggml's expression */
        x[i] = fmaf(x0, c, -(x1 * s));
        x[i + half] = fmaf(x0, s, x1 * c);
    }
    if (scale != 1.0f)
        for (int i = 0; i < d; i++) x[i] = x[i] * scale;
}

/* The RMSNorm in place of `count` head vectors, head h with weight w[h], their sums interleaved. */
static void norm_heads(float *const *heads, const float *const *w, int count, float eps, int d) {
    float scales[64];
    for (int h0 = 0; h0 < count; h0 += 64) {
        const int c = count - h0 < 64 ? count - h0 : 64;
        rms_scales(heads + h0, c, d, eps, scales);
        for (int h = 0; h < c; h++) scale_row(heads[h0 + h], scales[h], w[h0 + h], heads[h0 + h], d);
    }
}

static void prepare_tokens(void *ctx, int64_t begin, int64_t end) {
    attn_job *job = (attn_job *)ctx;
    const int d = job->head_dim, H = job->num_heads, KVH = job->num_kv_heads;
    const int64_t eb = cache_elem_bytes(job->cache_dtype);
    float buf[1024];
    float *tmp = (int64_t)KVH * d <= 1024 ? buf : (float *)malloc((size_t)KVH * d * sizeof(float));
    /* the heads to norm (q's when there is a q norm, then k's likewise) and their weights */
    float **heads = (float **)malloc((size_t)(H + KVH) * (sizeof(float *) + sizeof(const float *)));
    if (tmp == NULL || heads == NULL) {
        job->failed = 1;
        if (tmp != buf) free(tmp);
        free(heads);
        return;
    }
    const float **weights = (const float **)(heads + H + KVH);
    for (int64_t t = begin; t < end; t++) {
        const float *cos_sin = job->rope + job->positions[t] * d;
        float *q = job->q_rounded + t * H * d;
        memcpy(q, job->q + t * H * d, (size_t)H * d * sizeof(float));
        memcpy(tmp, job->k + t * KVH * d, (size_t)KVH * d * sizeof(float));
        int normed = 0;
        for (int h = 0; h < H && job->q_norm_w != NULL; h++, normed++) {
            heads[normed] = q + h * d;
            weights[normed] = job->q_norm_w;
        }
        for (int h = 0; h < KVH && job->k_norm_w != NULL; h++, normed++) {
            heads[normed] = tmp + h * d;
            weights[normed] = job->k_norm_w;
        }
        norm_heads(heads, weights, normed, job->eps, d);
        for (int h = 0; h < H; h++) {
            rope_head(q + h * d, cos_sin, d, job->q_scale);
            round_row(job->cache_dtype, q + h * d, d);
        }
        const int64_t slot = job->slot_mapping[t];
        for (int h = 0; h < KVH; h++) {
            rope_head(tmp + h * d, cos_sin, d, 1.0f);
            const int64_t at = (slot * KVH + h) * d * eb;
            store_row(job->cache_dtype, (char *)job->k_cache + at, tmp + h * d, d);
            store_row(job->cache_dtype, (char *)job->v_cache + at, job->v + (t * KVH + h) * d, d);
        }
    }
    if (tmp != buf) free(tmp);
    free(heads);
}

/* The two summation orders of ggml's f16 matmuls. A batch of one token (decode) runs ggml_vec_dot_f16: four
 * 16-lane accumulators over steps of 64 values, folded (0+2, 1+3, then the two), a 16-lane tree, and the
 * leftover values added one by one in double. A batch of several tokens runs llamafile's tinyBLAS (when the
 * inner size is a multiple of 16): one 16-lane accumulator, then the tree. */
static inline float dot_vec_order(const float *a, const float *b, int n) {
    const int np = n & ~63;
    double sum;
#if defined(HAVE_AVX512)
    if (np > 0) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int i = 0; i < np; i += 64)
            for (int r = 0; r < 4; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * r), _mm512_loadu_ps(b + i + 16 * r), acc[r]);
        sum = (double)sum16_vec(_mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])));
    } else {
        sum = 0.0; /* the tree of sixteen zeros */
    }
#else
    float fold[16] = {0};
    if (np > 0) {
        float acc[4][16] = {{0}};
        for (int i = 0; i < np; i += 64)
            for (int r = 0; r < 4; r++)
                for (int l = 0; l < 16; l++) acc[r][l] = fmaf(a[i + 16 * r + l], b[i + 16 * r + l], acc[r][l]);
        for (int l = 0; l < 16; l++) fold[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    sum = (double)sum16_tree(fold);
#endif
    for (int i = np; i < n; i++) sum += (double)(a[i] * b[i]);
    return (float)sum;
}

static inline float dot_tiny_order(const float *a, const float *b, int n) {
#if defined(HAVE_AVX512)
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return sum16_vec(acc);
#else
    float lanes[16] = {0};
    for (int i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++) lanes[l] = fmaf(a[i + l], b[i + l], lanes[l]);
    return sum16_tree(lanes);
#endif
}

/* acc[0:n] = fma(p, v, acc) (or p * v for the slot's first value, the same as accumulating onto zero). */
static inline void axpy(float *acc, float p, const float *v, int n, int first) {
    int i = 0;
#if defined(HAVE_AVX512)
    const __m512 pv = _mm512_set1_ps(p);
    if (first)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(acc + i, _mm512_mul_ps(pv, _mm512_loadu_ps(v + i)));
    else
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(pv, _mm512_loadu_ps(v + i), _mm512_loadu_ps(acc + i)));
#endif
    if (first)
        for (; i < n; i++) acc[i] = p * v[i];
    else
        for (; i < n; i++) acc[i] = fmaf(p, v[i], acc[i]);
}

/* Lane l of ggml's final 16-lane tree, for 16 consecutive d at once: fold the 64 partial sums of
 * ggml_vec_dot_f16 ((r0 + r2) + (r1 + r3)) or take the 16 of tinyBLAS, then add pairwise as the tree does. */
static void reduce_lanes(const float *a, int slots, uint64_t touched, int d, float *dst) {
    /* a lane no key reached holds zero: adding it changes nothing, so it is read as zero, not stored */
#define LANE_HAS(l) ((touched >> (l)) & 1u)
    int i = 0;
#if defined(HAVE_AVX512)
    const __m512 zero = _mm512_setzero_ps();
#define LANE_VEC(l) (LANE_HAS(l) ? _mm512_loadu_ps(a + (int64_t)(l) * d + i) : zero)
    for (; i + 16 <= d; i += 16) {
        __m512 v[16];
        for (int l = 0; l < 16; l++) {
            if (slots == 16) {
                v[l] = LANE_VEC(l);
            } else {
                v[l] = _mm512_add_ps(_mm512_add_ps(LANE_VEC(l), LANE_VEC(32 + l)),
                                     _mm512_add_ps(LANE_VEC(16 + l), LANE_VEC(48 + l)));
            }
        }
        for (int l = 0; l < 8; l++) v[l] = _mm512_add_ps(v[l + 8], v[l]);
        for (int l = 0; l < 4; l++) v[l] = _mm512_add_ps(v[l + 4], v[l]);
        _mm512_storeu_ps(dst + i, _mm512_add_ps(_mm512_add_ps(v[0], v[2]), _mm512_add_ps(v[1], v[3])));
    }
#undef LANE_VEC
#endif
#define LANE_AT(l) (LANE_HAS(l) ? a[(int64_t)(l) * d + i] : 0.0f)
    for (; i < d; i++) {
        float lanes[16];
        for (int l = 0; l < 16; l++)
            lanes[l] = slots == 16 ? LANE_AT(l) : (LANE_AT(l) + LANE_AT(32 + l)) + (LANE_AT(16 + l) + LANE_AT(48 + l));
        dst[i] = sum16_tree(lanes);
    }
#undef LANE_AT
#undef LANE_HAS
}

/* One query row, one KV head and heads [g0, g1) of its group attend over the sequence's visible keys. The
 * probability-weighted sum of V keeps one partial sum per lane of ggml's order (cell index mod 64 for
 * decode, mod 16 for tinyBLAS), reduced in that order at the end. */
static void attend_row(const attn_job *job, int64_t t, int kvh, int g0, int g1, float *scores, float *krow,
                       float *acc) {
    const int d = job->head_dim, H = job->num_heads, KVH = job->num_kv_heads;
    const int groups = H / KVH, ng = g1 - g0;
    const int s = job->token_seq[t];
    const int64_t seq_len = job->seq_lens[s];
    const int64_t q_len = job->query_start[s + 1] - job->query_start[s];
    const int64_t pos = seq_len - q_len + (t - job->query_start[s]);
    const int tiny_kq = q_len > 1 && d % 16 == 0, tiny_kqv = q_len > 1 && d % 4 == 0;
    const int slots = tiny_kqv ? 16 : 64;
    int64_t lo = 0;
    if (job->sliding_window > 0 && pos - job->sliding_window + 1 > 0) lo = pos - job->sliding_window + 1;
    /* ggml's softmax runs over whole 16-lane vectors of cache cells from cell 0; masked cells add 0. */
    const int64_t lo_al = lo & ~(int64_t)15;
    const int64_t hi_al = (pos + 16) & ~(int64_t)15;
    const int64_t width = hi_al - lo_al;
    const int64_t eb = cache_elem_bytes(job->cache_dtype);
    const int32_t *table = job->block_tables + (int64_t)s * job->max_blocks;
    const int bs = job->block_size;
    const float *q0 = job->q_rounded + (t * H + kvh * groups + g0) * d;

    for (int g = 0; g < ng; g++)
        for (int64_t j = 0; j < width; j++) scores[g * width + j] = -INFINITY;
    for (int64_t j = lo; j <= pos; j++) {
        const int64_t slot = (int64_t)table[j / bs] * bs + j % bs;
        load_row(job->cache_dtype, (const char *)job->k_cache + (slot * KVH + kvh) * d * eb, krow, d);
        for (int g = 0; g < ng; g++) {
            const float kq = tiny_kq ? dot_tiny_order(krow, q0 + g * d, d) : dot_vec_order(krow, q0 + g * d, d);
            scores[g * width + (j - lo_al)] = kq * job->kq_scale;
        }
    }
    for (int g = 0; g < ng; g++) {
        float *sc = scores + g * width;
        float max = -INFINITY;
        for (int64_t j = 0; j < width; j++) max = sc[j] > max ? sc[j] : max;
        double sum = 0.0;
        float shifted[16];
        for (int64_t c = 0; c < width; c += 16) {
            for (int l = 0; l < 16; l++) shifted[l] = sc[c + l] - max;
            exp16(shifted, sc + c);
#if defined(HAVE_AVX512)
            sum += (double)sum16_vec(_mm512_loadu_ps(sc + c));
#else
            sum += (double)sum16_tree(sc + c);
#endif
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < width; j++) sc[j] = sc[j] * inv;
        round_row(job->cache_dtype, sc, (int)width);
    }
    const int64_t count = pos - lo + 1;
    for (int64_t j = lo; j <= pos; j++) {
        const int64_t slot = (int64_t)table[j / bs] * bs + j % bs;
        load_row(job->cache_dtype, (const char *)job->v_cache + (slot * KVH + kvh) * d * eb, krow, d);
        const int lane = (int)(j % slots);
        for (int g = 0; g < ng; g++)
            axpy(acc + ((int64_t)g * slots + lane) * d, scores[g * width + (j - lo_al)], krow, d, j - lo < slots);
    }
    uint64_t touched = slots == 64 ? ~(uint64_t)0 : 0xffffu;
    if (count < slots) {
        touched = 0;
        for (int64_t j = lo; j <= pos; j++) touched |= (uint64_t)1 << (j % slots);
    }
    for (int g = 0; g < ng; g++)
        reduce_lanes(acc + (int64_t)g * slots * d, slots, touched, d, job->out + (t * H + kvh * groups + g0 + g) * d);
}

/* Per-thread scratch, grown when a call needs more: no allocation in the steady state. */
static float *scratch(size_t floats) {
    static __thread float *buf = NULL;
    static __thread size_t cap = 0;
    if (floats > cap) {
        free(buf);
        cap = floats + floats / 2;
        buf = (float *)malloc(cap * sizeof(float));
        if (buf == NULL) cap = 0;
    }
    return buf;
}

/* Work items: (token, KV head, part of the group). A batch with fewer rows than threads (a decode) splits
 * each group's heads, so both threads work on a long context. */
static void attend_items(void *ctx, int64_t begin, int64_t end) {
    attn_job *job = (attn_job *)ctx;
    const int groups = job->num_heads / job->num_kv_heads, parts = job->group_parts;
    const int per = (groups + parts - 1) / parts;
    const int64_t width = (int64_t)job->max_seq_len + 32;
    float *scores = scratch((size_t)(per * width + job->head_dim + (int64_t)per * 64 * job->head_dim));
    if (scores == NULL) {
        job->failed = 1;
        return;
    }
    float *krow = scores + per * width, *acc = krow + job->head_dim;
    for (int64_t item = begin; item < end; item++) {
        const int part = (int)(item % parts);
        const int64_t row = item / parts;
        const int g0 = part * per, g1 = g0 + per < groups ? g0 + per : groups;
        if (g0 < g1)
            attend_row(job, row / job->num_kv_heads, (int)(row % job->num_kv_heads), g0, g1, scores, krow, acc);
    }
}

/* Paged attention for a flat batch (decodes, prefills, chunks after a prefix-cache hit): q/k get their
 * RMSNorm (q_norm_w/k_norm_w, optional) and rope, q is multiplied by q_scale, the new K/V are written to the
 * caches ([blocks][block_size][kv_heads][head_dim] in cache_dtype) at slot_mapping, then every query row
 * attends causally (and within sliding_window when > 0) over its sequence's first seq_lens[s] positions.
 * Returns 0, or -1 when memory ran out. */
int ladle_attention(const float *q, const float *k, const float *v, int64_t num_tokens, int num_heads,
                    int num_kv_heads, int head_dim, const float *q_norm_w, const float *k_norm_w, float eps,
                    const float *rope, const int64_t *positions, const int64_t *slot_mapping, void *k_cache,
                    void *v_cache, int cache_dtype, int block_size, const int32_t *block_tables,
                    int64_t max_blocks, const int32_t *seq_lens, const int32_t *query_start, int num_seqs,
                    float q_scale, float kq_scale, int sliding_window, float *out, int nthreads) {
    attn_job job = {q,         k,         v,           num_tokens,   num_heads,    num_kv_heads, head_dim,
                    q_norm_w,  k_norm_w,  eps,         rope,         positions,    slot_mapping, k_cache,
                    v_cache,   cache_dtype, block_size, block_tables, max_blocks,  seq_lens,     query_start,
                    num_seqs,  q_scale,   kq_scale,    sliding_window, out,        NULL,         NULL,
                    0,         0,         1};
    job.q_rounded = (float *)malloc((size_t)num_tokens * num_heads * head_dim * sizeof(float));
    job.token_seq = (int32_t *)malloc((size_t)num_tokens * sizeof(int32_t));
    if (job.q_rounded == NULL || job.token_seq == NULL) {
        free(job.q_rounded);
        free(job.token_seq);
        return -1;
    }
    for (int s = 0; s < num_seqs; s++) {
        for (int64_t t = query_start[s]; t < query_start[s + 1]; t++) job.token_seq[t] = s;
        if (seq_lens[s] > job.max_seq_len) job.max_seq_len = seq_lens[s];
    }
    /* Every new K/V is in the cache before any row reads it: a prefill's rows attend to each other. */
    parallel_for(prepare_tokens, &job, num_tokens, 8, nthreads);
    const int groups = num_heads / num_kv_heads;
    const int64_t rows = num_tokens * num_kv_heads;
    /* only for long contexts: waking a worker costs more than it saves on short ones */
    if (nthreads > 1 && rows < nthreads && job.max_seq_len >= 256) job.group_parts = groups < nthreads ? groups : nthreads;
    parallel_for(attend_items, &job, rows * job.group_parts, 1, nthreads);
    free(job.q_rounded);
    free(job.token_seq);
    return job.failed ? -1 : 0;
}

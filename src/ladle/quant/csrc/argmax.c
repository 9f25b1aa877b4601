/* Greedy sampling's argmax over rows of logits (262k of them for Gemma, 32 rows at 32 concurrent sequences:
 * torch's argmax reads them at well under a float a nanosecond). The answer is torch.argmax's: the first
 * index of the largest value, and the first NaN's index in a row holding one. */
#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "thread_pool.h"

static int64_t argmax_scalar(const float *x, int64_t begin, int64_t n, int64_t best) {
    for (int64_t i = begin; i < n; i++) {
        if (isnan(x[i])) return i;
        if (x[i] > x[best]) best = i;
    }
    return best;
}

static int64_t first_nan(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (isnan(x[i])) return i;
    return -1;
}

static int64_t argmax_row(const float *x, int64_t n) {
    if (n <= 0) return 0;
#if defined(__AVX512F__)
    if (n >= 16) {
        /* per lane the first index of its largest value; a NaN anywhere sends the row to the scalar scan */
        __m512 best = _mm512_loadu_ps(x);
        __m512i best_i = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512i idx = best_i;
        const __m512i step = _mm512_set1_epi32(16);
        __mmask16 nan = _mm512_cmp_ps_mask(best, best, _CMP_UNORD_Q);
        int64_t i = 16;
        for (; i + 16 <= n && i + 16 <= INT32_MAX; i += 16) {
            const __m512 v = _mm512_loadu_ps(x + i);
            idx = _mm512_add_epi32(idx, step);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
            best = _mm512_mask_blend_ps(gt, best, v);
            best_i = _mm512_mask_blend_epi32(gt, best_i, idx);
        }
        if (nan) return first_nan(x, n);
        float vals[16];
        int32_t ids[16];
        _mm512_storeu_ps(vals, best);
        _mm512_storeu_si512(ids, best_i);
        int64_t b = ids[0];
        for (int l = 1; l < 16; l++)
            if (vals[l] > x[b] || (vals[l] == x[b] && ids[l] < b)) b = ids[l];
        return argmax_scalar(x, i, n, b);
    }
#endif
    return argmax_scalar(x, 1, n, 0);
}

typedef struct {
    const float *x;
    int64_t n;
    int64_t *out;
} argmax_job;

static void argmax_rows(void *ctx, int64_t begin, int64_t end) {
    const argmax_job *job = (const argmax_job *)ctx;
    for (int64_t r = begin; r < end; r++) job->out[r] = argmax_row(job->x + r * job->n, job->n);
}

/* out[r] = argmax of row r of x [rows][n]. */
void ladle_argmax_rows(const float *x, int64_t rows, int64_t n, int64_t *out, int nthreads) {
    argmax_job job = {x, n, out};
    parallel_for(argmax_rows, &job, rows, 1, rows * n >= (1 << 16) ? nthreads : 1);
}

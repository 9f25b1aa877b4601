/* The layer ops of cpu_ops.c that other native code (ggml_forward.c) calls. */
#ifndef LADLE_CPU_OPS_H
#define LADLE_CPU_OPS_H
#include <stdint.h>

void ladle_rms_norm(const float *x, const float *w, float *y, int64_t rows, int64_t n, float eps, int nthreads);
void ladle_residual_rms_norm(float *x, const float *delta, const float *delta_w, const float *w, float *y,
                             int64_t rows, int64_t n, float eps, int nthreads);
void ladle_geglu(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int nthreads);
void ladle_swiglu(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int nthreads);
int ladle_attention(const float *q, const float *k, const float *v, int64_t num_tokens, int num_heads,
                    int num_kv_heads, int head_dim, const float *q_norm_w, const float *k_norm_w, float eps,
                    const float *rope, const int64_t *positions, const int64_t *slot_mapping, void *k_cache,
                    void *v_cache, int cache_dtype, int block_size, const int32_t *block_tables,
                    int64_t max_blocks, const int32_t *seq_lens, const int32_t *query_start, int num_seqs,
                    float q_scale, float kq_scale, int sliding_window, float *out, int nthreads);

#endif

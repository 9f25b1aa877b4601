/* A whole decoder stack of a GGUF model in one native call: per layer the same ops, in the same order and on
 * the same buffers as model/ggml_cpu.py's per-op Python loop (which stays as the reference and the fallback),
 * so the results are identical bit for bit; what goes away is ~15 ctypes calls and a dozen small tensor
 * allocations per layer (~1 ms of a 13 ms batch-1 step). The matmuls are ggml_matmul.c's public entry
 * points, each input quantized once per activation format and shared by the weights that read it (q/k/v,
 * gate/up), as ggml does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

/* ggml_matmul.c's entry points */
int64_t ladle_act_row_bytes(int qtype, int64_t k);
int ladle_act_format(int qtype);
void ladle_quantize_activations(int qtype, const float *x, int64_t m, int64_t k, void *out, int nthreads);
int ladle_matmul_quantized(int qtype, const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k,
                           const void *act, int64_t m, const int32_t *groups, int64_t n_groups, float *y,
                           int nthreads);

/* One packed GGML weight: n rows of k inputs, row_bytes apart. */
typedef struct {
    const uint8_t *data;
    int64_t row_bytes, n, k;
    int qtype;
} ladle_weight;

/* What a layer needs that does not change between steps, plus its K/V cache. Norm weights may be NULL
 * where the architecture has none (post_attn_norm, post_ffn_norm: Gemma's sandwich norms; q/k norms). */
typedef struct {
    ladle_weight q, k, v, o, gate, up, down;
    const float *input_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm, *q_norm, *k_norm;
    const float *rope;
    float q_scale, kq_scale;
    int sliding_window;
    void *k_cache, *v_cache;
} ladle_layer;

/* One step's batch: shapes, the attention metadata, the residual stream and where the result goes. */
typedef struct {
    int64_t num_tokens;
    int hidden, num_heads, num_kv_heads, head_dim, intermediate;
    float eps;
    int gelu; /* 1: GeGLU, 0: SwiGLU */
    int cache_dtype, block_size;
    const int64_t *positions, *slot_mapping;
    const int32_t *block_tables;
    int64_t max_blocks;
    const int32_t *seq_lens, *query_start;
    int num_seqs;
    /* rows whose output is needed, ascending (NULL: all): the last layer's MLP runs on those rows only, as
     * llama.cpp's ggml_get_rows on inp_out_ids; the other rows of `out` are left untouched */
    const int64_t *output_rows;
    int64_t num_output_rows;
    /* rows per sequence of the matmuls' inputs (quant/row_groups.py), for all rows and for the output rows
     * (NULL: one sequence), so that each sequence's sums follow llama.cpp's order for it alone */
    const int32_t *groups, *output_groups;
    int64_t num_groups, num_output_groups;
    const float *final_norm;
    float *x;   /* [num_tokens][hidden]: the embeddings in, the residual stream (overwritten) */
    float *out; /* [num_tokens][hidden]: the final norm of the output rows */
} ladle_step;

/* Activations quantized for each of the two activation formats at most once per input. */
typedef struct {
    uint8_t *buf[2];
    const float *of[2]; /* which input each buffer holds (NULL: none yet) */
} quant_cache;

typedef struct {
    const int32_t *sizes;
    int64_t count;
} row_groups;

static int matmul(const ladle_weight *w, const float *x, int64_t m, row_groups g, quant_cache *qc, float *y,
                  int nthreads) {
    const int fmt = ladle_act_format(w->qtype);
    if (qc->of[fmt] != x) {
        ladle_quantize_activations(w->qtype, x, m, w->k, qc->buf[fmt], nthreads);
        qc->of[fmt] = x;
    }
    const int rc = ladle_matmul_quantized(w->qtype, w->data, w->row_bytes, w->n, w->k, qc->buf[fmt], m, g.sizes,
                                          g.count, y, nthreads);
    return rc == -2 ? -1 : (rc != 0 ? -2 : 0); /* its -2 is out of memory, its -1 an unsupported weight */
}

static int64_t max_act_row_bytes(const ladle_layer *layers, int num_layers) {
    int64_t best = 0;
    for (int i = 0; i < num_layers; i++) {
        const ladle_weight *ws[7] = {&layers[i].q,  &layers[i].k,  &layers[i].v,   &layers[i].o,
                                     &layers[i].gate, &layers[i].up, &layers[i].down};
        for (int j = 0; j < 7; j++) {
            const int64_t b = ladle_act_row_bytes(ws[j]->qtype, ws[j]->k);
            if (b > best) best = b;
        }
    }
    return best;
}

/* Keeps rows `rows` (ascending) of a [*][n] matrix, moved to its front in place. */
static void compact_rows(float *a, int64_t n, const int64_t *rows, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (rows[i] != i) memcpy(a + i * n, a + rows[i] * n, (size_t)n * sizeof(float));
}

static int failure(int a, int b) { return a != 0 ? a : b; }

/* Returns 0; -1 when memory ran out; -2 when a matmul refused its weight (type or shape). */
int ladle_decoder_stack(const ladle_layer *layers, int num_layers, const ladle_step *s, int nthreads) {
    int64_t T = s->num_tokens;
    const int64_t hidden = s->hidden, qd = (int64_t)s->num_heads * s->head_dim;
    const int64_t kvd = (int64_t)s->num_kv_heads * s->head_dim, inter = s->intermediate;
    const int64_t act_bytes = T * max_act_row_bytes(layers, num_layers);
    /* h, q, k, v, attn, o/down, gate, up, act, then the two quantized-activation buffers, each 64-byte
     * aligned as the kernels' own tensors are */
    const int64_t sizes[11] = {T * hidden, T * qd, T * kvd, T * kvd, T * qd, T * hidden, T * inter, T * inter,
                               T * inter, 0, 0};
    int64_t offsets[11], total = 0;
    for (int j = 0; j < 11; j++) {
        const int64_t bytes = j < 9 ? sizes[j] * (int64_t)sizeof(float) : act_bytes;
        offsets[j] = total;
        total += (bytes + 63) & ~(int64_t)63;
    }
    uint8_t *mem = (uint8_t *)aligned_alloc(64, (size_t)(total > 0 ? total : 64));
    if (mem == NULL) return -1;
    float *h = (float *)(mem + offsets[0]), *q = (float *)(mem + offsets[1]), *k = (float *)(mem + offsets[2]);
    float *v = (float *)(mem + offsets[3]), *attn = (float *)(mem + offsets[4]);
    float *proj = (float *)(mem + offsets[5]), *gate = (float *)(mem + offsets[6]);
    float *up = (float *)(mem + offsets[7]), *act = (float *)(mem + offsets[8]);
    quant_cache qc = {{mem + offsets[9], mem + offsets[10]}, {NULL, NULL}};
    float *x = s->x;
    row_groups g = {s->groups, s->num_groups};
    int rc = 0;
    ladle_rms_norm(x, layers[0].input_norm, h, T, hidden, s->eps, nthreads);
    for (int i = 0; i < num_layers && rc == 0; i++) {
        const ladle_layer *L = &layers[i];
        const int last = i == num_layers - 1;
        qc.of[0] = qc.of[1] = NULL;
        rc = failure(rc, matmul(&L->q, h, T, g, &qc, q, nthreads));
        rc = failure(rc, matmul(&L->k, h, T, g, &qc, k, nthreads));
        rc = failure(rc, matmul(&L->v, h, T, g, &qc, v, nthreads));
        if (rc != 0) break;
        if (ladle_attention(q, k, v, T, s->num_heads, s->num_kv_heads, s->head_dim, L->q_norm, L->k_norm, s->eps,
                            L->rope, s->positions, s->slot_mapping, L->k_cache, L->v_cache, s->cache_dtype,
                            s->block_size, s->block_tables, s->max_blocks, s->seq_lens, s->query_start,
                            s->num_seqs, L->q_scale, L->kq_scale, L->sliding_window, attn, nthreads) != 0) {
            free(mem);
            return -1;
        }
        if ((rc = matmul(&L->o, attn, T, g, &qc, proj, nthreads)) != 0) break;
        if (last && s->output_rows != NULL) {
            compact_rows(x, hidden, s->output_rows, s->num_output_rows);
            compact_rows(proj, hidden, s->output_rows, s->num_output_rows);
            T = s->num_output_rows;
            g.sizes = s->output_groups;
            g.count = s->num_output_groups;
        }
        ladle_residual_rms_norm(x, proj, L->post_attn_norm, L->ffn_norm, h, T, hidden, s->eps, nthreads);
        qc.of[0] = qc.of[1] = NULL;
        rc = failure(rc, matmul(&L->gate, h, T, g, &qc, gate, nthreads));
        rc = failure(rc, matmul(&L->up, h, T, g, &qc, up, nthreads));
        if (rc != 0) break;
        (s->gelu ? ladle_geglu : ladle_swiglu)(gate, up, act, T, inter, nthreads);
        if ((rc = matmul(&L->down, act, T, g, &qc, proj, nthreads)) != 0) break;
        /* the last layer's result is the final norm: straight into `out`, or compact in h, scattered below */
        const float *next_norm = last ? s->final_norm : layers[i + 1].input_norm;
        float *dst = last && s->output_rows == NULL ? s->out : h;
        ladle_residual_rms_norm(x, proj, L->post_ffn_norm, next_norm, dst, T, hidden, s->eps, nthreads);
    }
    if (rc == 0 && s->output_rows != NULL)
        for (int64_t r = 0; r < s->num_output_rows; r++)
            memcpy(s->out + s->output_rows[r] * hidden, h + r * hidden, (size_t)hidden * sizeof(float));
    free(mem);
    return rc;
}

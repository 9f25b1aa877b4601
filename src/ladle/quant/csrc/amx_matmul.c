/* Q8_0 weights x Q8_0 activations on Intel AMX tiles, for products whose float order is free (an LM head:
 * its logits feed no later layer, see ladle_matmul_quantized_any_order).
 *
 * Why: at 32 decoding sequences Gemma 3's LM head (262144 x 640, Q8_0) is ~40% of a step, and AVX-512
 * VNNI is at its limit there (64 int8 products per instruction). One AMX tile product (tdpbssd) does
 * 16 x 16 x 32 = 8192 of them; what is left is the float work ggml does too, once per 32-value block and
 * (weight row, activation row) pair: int32 total -> float, times d_w * d_a, added up.
 *
 * Layout: the weight rows are the tiles' A side, read in place (a block's 32 quants at a fixed stride in
 * the GGUF rows: no repacking, no second copy); the activations, 16 rows at a time, are the B side,
 * packed per call into AMX's 4-byte-interleaved layout (K/4 rows of 16 x 4 bytes). The integer totals are
 * exact; only the float additions run in another order than ggml's (~1e-7 relative).
 *
 * Compiled only where the compiler targets AMX (-march=native on such a CPU); used only after the kernel
 * granted the process the tile state (arch_prctl), else the VNNI kernels run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amx_matmul.h"
#include "ggml_common.h"
#include "thread_pool.h"

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__linux__)
#define LADLE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifdef LADLE_AMX
enum { TILE_ROWS = 16, Q8_0_BYTES = 34, B_TILE_BYTES = 512 /* 8 rows x 64 bytes */ };

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Linux hands out the AMX tile state only on request, once per process. */
static int amx_granted(void) {
    static int state = -1; /* -1 not asked yet, 0 refused, 1 granted */
    if (state < 0) {
        const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
        state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
    return state;
}

typedef struct {
    const uint8_t *w;
    int64_t row_bytes, n_rows, nb, m;
    const int8_t *b_tiles; /* [group][block] 512-byte B tiles */
    const float *act_d;    /* [group][block][16] activation scales, 0 for padding rows */
    float *y;
} amx_job;

static void load_config(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = TILE_ROWS; /* tmm0: C, 16 weight rows x 16 int32 totals */
    cfg.colsb[0] = 64;
    cfg.rows[1] = TILE_ROWS; /* tmm1: A, 16 weight rows x one block's 32 quants */
    cfg.colsb[1] = 32;
    cfg.rows[2] = 8; /* tmm2: B, 32 values / 4 rows x 16 activation rows x 4 bytes */
    cfg.colsb[2] = 64;
    cfg.rows[3] = TILE_ROWS; /* tmm3, tmm4: C and B of a second block, so that its product runs while the */
    cfg.colsb[3] = 64;       /* first block's totals are scaled (AMX renames no tile registers) */
    cfg.rows[4] = 8;
    cfg.colsb[4] = 64;
    _tile_loadconfig(&cfg);
}

/* The float work of one block: acc[r] += float(total[r][0..15]) * d_w[r] * d_a[0..15]. */
static inline void scale_add(__m512 acc[TILE_ROWS], const int32_t *totals, const float *dw, __m512 da) {
    for (int r = 0; r < TILE_ROWS; r++) {
        const __m512 t = _mm512_cvtepi32_ps(_mm512_load_si512(totals + r * 16));
        acc[r] = _mm512_fmadd_ps(t, _mm512_mul_ps(_mm512_set1_ps(dw[r]), da), acc[r]);
    }
}

/* 16 weight rows starting at `rows` (row_stride apart) against every activation group; `valid` are real. */
static void amx_tile_rows(const amx_job *j, const uint8_t *rows, int64_t row_stride, int64_t n0, int valid) {
    const int64_t nb = j->nb;
    _Alignas(64) float dw_small[TILE_ROWS * 64]; /* [block][row] weight scales: on the stack to k = 2048 */
    float *dw = nb <= 64 ? dw_small : malloc(sizeof(float) * TILE_ROWS * (size_t)nb);
    if (dw == NULL) return; /* out of memory: y stays unset rather than crash, as in ggml_matmul.c */
    const __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                               _mm512_set1_epi32((int)row_stride));
    for (int64_t b = 0; b < nb; b++) {
        /* 4 bytes at each row's block start: the f16 scale, then two quants that the truncation drops */
        const __m512i raw = _mm512_i32gather_epi32(offsets, (const void *)(rows + b * Q8_0_BYTES), 1);
        _mm512_storeu_ps(dw + b * TILE_ROWS, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw)));
    }
    _Alignas(64) int32_t totals[2][TILE_ROWS * 16];
    const int64_t groups = (j->m + 15) / 16;
    for (int64_t g = 0; g < groups; g++) {
        __m512 acc[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; r++) acc[r] = _mm512_setzero_ps();
        const int8_t *bt = j->b_tiles + g * nb * B_TILE_BYTES;
        const float *ad = j->act_d + g * nb * 16;
        /* two blocks per step, one C tile each (the registers' accumulators stay put across blocks) */
        for (int64_t b = 0; b < nb; b += 2) {
            _tile_loadd(1, rows + b * Q8_0_BYTES + 2, row_stride);
            _tile_loadd(2, bt + b * B_TILE_BYTES, 64);
            _tile_zero(0);
            _tile_dpbssd(0, 1, 2);
            const int second = b + 1 < nb;
            if (second) {
                _tile_loadd(1, rows + (b + 1) * Q8_0_BYTES + 2, row_stride);
                _tile_loadd(4, bt + (b + 1) * B_TILE_BYTES, 64);
                _tile_zero(3);
                _tile_dpbssd(3, 1, 4);
            }
            _tile_stored(0, totals[0], 64);
            scale_add(acc, totals[0], dw + b * TILE_ROWS, _mm512_loadu_ps(ad + b * 16));
            if (second) {
                _tile_stored(3, totals[1], 64);
                scale_add(acc, totals[1], dw + (b + 1) * TILE_ROWS, _mm512_loadu_ps(ad + (b + 1) * 16));
            }
        }
        /* y is [activation row][weight row]: each acc[r] holds weight row r for 16 activation rows */
        _Alignas(64) float out[TILE_ROWS][16];
        for (int r = 0; r < TILE_ROWS; r++) _mm512_store_ps(out[r], acc[r]);
        const int64_t cols = j->m - g * 16 < 16 ? j->m - g * 16 : 16;
        for (int64_t c = 0; c < cols; c++) {
            float *dst = j->y + (g * 16 + c) * j->n_rows + n0;
            for (int r = 0; r < valid; r++) dst[r] = out[r][c];
        }
    }
    if (dw != dw_small) free(dw);
}

static void amx_rows(void *ctx, int64_t begin, int64_t end) {
    const amx_job *j = (const amx_job *)ctx;
    load_config();
    for (int64_t n0 = begin; n0 < end; n0 += TILE_ROWS) {
        if (n0 + TILE_ROWS <= j->n_rows) {
            amx_tile_rows(j, j->w + n0 * j->row_bytes, j->row_bytes, n0, TILE_ROWS);
        } else { /* the last rows, padded to a whole tile with zero rows */
            const int valid = (int)(j->n_rows - n0);
            uint8_t *pad = calloc(TILE_ROWS, (size_t)j->row_bytes);
            if (pad == NULL) break;
            memcpy(pad, j->w + n0 * j->row_bytes, (size_t)valid * j->row_bytes);
            amx_tile_rows(j, pad, j->row_bytes, n0, valid);
            free(pad);
        }
    }
    _tile_release();
}

int ladle_has_amx(void) { return amx_granted(); }

int ladle_amx_matmul_q8_0(const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k, const uint8_t *act,
                          int64_t act_row_bytes, int64_t m, float *y, int nthreads) {
    if (!amx_granted() || k % 32 != 0 || m <= 0) return -1;
    const int64_t nb = k / 32, groups = (m + 15) / 16;
    int8_t *b_tiles = calloc((size_t)(groups * nb), B_TILE_BYTES);
    float *act_d = calloc((size_t)(groups * nb * 16), sizeof(float));
    if (b_tiles == NULL || act_d == NULL) {
        free(b_tiles);
        free(act_d);
        return -2;
    }
    /* B[i / 4][c * 4 + i % 4] = quant i of activation row c, back to signed */
    for (int64_t c = 0; c < m; c++) {
        const int64_t g = c / 16, col = c % 16;
        for (int64_t b = 0; b < nb; b++) {
            const a32_block *blk = (const a32_block *)(act + c * act_row_bytes) + b;
            int8_t *tile = b_tiles + (g * nb + b) * B_TILE_BYTES;
            for (int i = 0; i < 32; i++) tile[(i / 4) * 64 + col * 4 + i % 4] = (int8_t)(blk->qs[i] ^ 0x80);
            act_d[(g * nb + b) * 16 + col] = blk->d;
        }
    }
    amx_job job = {w, row_bytes, n_rows, nb, m, b_tiles, act_d, y};
    /* chunks of whole tiles, small enough to balance two threads, large enough to stream */
    int64_t chunk = n_rows / (8 * (nthreads > 0 ? nthreads : 1));
    chunk = chunk < 64 ? 64 : (chunk > 1024 ? 1024 : chunk);
    chunk = (chunk + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
    parallel_for(amx_rows, &job, n_rows, chunk, nthreads);
    free(b_tiles);
    free(act_d);
    return 0;
}
#else
int ladle_has_amx(void) { return 0; }

int ladle_amx_matmul_q8_0(const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k, const uint8_t *act,
                          int64_t act_row_bytes, int64_t m, float *y, int nthreads) {
    (void)w, (void)row_bytes, (void)n_rows, (void)k, (void)act, (void)act_row_bytes, (void)m, (void)y,
        (void)nthreads;
    return -1;
}
#endif

/* Q8_0 products on Intel AMX tiles (amx_matmul.c), for products whose float order is free. */
#ifndef LADLE_AMX_MATMUL_H
#define LADLE_AMX_MATMUL_H
#include <stdint.h>

/* y[r, n] = sum_i W[n, i] x[r, i] for Q8_0 weights and a32_block activations (act_row_bytes apart).
 * Returns 0, -1 where this CPU or kernel has no AMX (the caller takes the VNNI kernels), -2 when out of
 * memory. */
int ladle_amx_matmul_q8_0(const uint8_t *w, int64_t row_bytes, int64_t n_rows, int64_t k, const uint8_t *act,
                          int64_t act_row_bytes, int64_t m, float *y, int nthreads);

/* 1 where the AMX kernel runs: compiled for AMX and the tile state granted to this process. */
int ladle_has_amx(void);

#endif

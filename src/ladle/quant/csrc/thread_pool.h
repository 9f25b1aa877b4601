/* The thread pool shared by ladle's native CPU kernels (one pool per process, whatever kernel calls it).
 *
 * Unlike an OpenMP parallel-for, the caller never waits for a worker that has not started: work is claimed
 * chunk by chunk from a shared counter and the caller claims too, so when the machine is busy and a worker
 * is not scheduled in time, the caller simply does the whole job. */
#ifndef LADLE_THREAD_POOL_H
#define LADLE_THREAD_POOL_H
#include <stdint.h>

typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);

/* fn(ctx, begin, end) over [0, n) in chunks of `chunk`, on up to nthreads threads (the caller included). */
void parallel_for(range_fn fn, void *ctx, int64_t n, int64_t chunk, int nthreads);

#endif

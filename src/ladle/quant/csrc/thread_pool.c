/* The thread pool (thread_pool.h says what it promises). An OpenMP barrier would wait for a descheduled
 * thread's time slice, several milliseconds per call on a loaded machine; this pool never does. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "thread_pool.h"

typedef struct {
    range_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next;   /* next unclaimed index */
    atomic_int active;   /* workers inside this job */
    long generation;     /* bumped (under the mutex) for each job */
    int wanted;          /* workers invited to this job */
} pool_job;

static pthread_mutex_t pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER; /* one job at a time; others run alone */
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static pool_job pool;
static int pool_workers = 0;

static void run_chunks(pool_job *job) {
    for (;;) {
        const int64_t begin = (int64_t)atomic_fetch_add(&job->next, job->chunk);
        if (begin >= job->n) return;
        const int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        job->fn(job->ctx, begin, end);
    }
}

static void *pool_worker(void *arg) {
    const int index = (int)(intptr_t)arg;
    long seen = 0;
    pthread_mutex_lock(&pool_mutex);
    for (;;) {
        while (pool.generation == seen || index >= pool.wanted) {
            seen = pool.generation;
            pthread_cond_wait(&pool_cond, &pool_mutex);
        }
        seen = pool.generation;
        atomic_fetch_add(&pool.active, 1); /* under the mutex: the job cannot change before we register */
        pthread_mutex_unlock(&pool_mutex);
        run_chunks(&pool);
        atomic_fetch_sub(&pool.active, 1);
        pthread_mutex_lock(&pool_mutex);
    }
    return NULL;
}

/* fn over [0, n) in chunks, on up to nthreads threads (the caller included). */
void parallel_for(range_fn fn, void *ctx, int64_t n, int64_t chunk, int nthreads) {
    if (nthreads <= 1 || n <= chunk || pthread_mutex_trylock(&pool_owner) != 0) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&pool_mutex);
    while (pool_workers < nthreads - 1 && pool_workers < 63) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, pool_worker, (void *)(intptr_t)pool_workers) != 0) break;
        pthread_detach(thread);
        pool_workers++;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = chunk;
    atomic_store(&pool.next, 0);
    pool.wanted = nthreads - 1;
    pool.generation++;
    pthread_cond_broadcast(&pool_cond);
    pthread_mutex_unlock(&pool_mutex);
    run_chunks(&pool);
    /* Only workers that joined can hold a chunk; they finish it without needing more CPU than it takes. */
    for (int spins = 0; atomic_load(&pool.active) > 0; spins++) {
        if (spins > 1000) sched_yield();
    }
    pthread_mutex_unlock(&pool_owner);
}


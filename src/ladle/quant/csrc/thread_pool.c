/* The thread pool (thread_pool.h says what it promises). An OpenMP barrier would wait for a descheduled
 * thread's time slice, several milliseconds per call on a loaded machine; this pool never does.
 *
 * A job is published through a generation counter: odd while the caller rewrites the job, even once it is
 * complete. Workers that just finished a job spin on the counter for a while (DEFAULT_SPIN_NS) before
 * sleeping on the condition variable, so back-to-back matmuls (a decode step is hundreds of them) start
 * without a futex wake-up; the caller only signals when some worker is really asleep. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "thread_pool.h"

/* How long an idle worker polls for the next job before sleeping: about the Python-side gap between two
 * matmuls of a decode step, short enough not to take a core from torch's own threads (the ops between
 * matmuls) for long. LADLE_POOL_SPIN_US overrides (0: always sleep). */
#define DEFAULT_SPIN_NS 100000
static int64_t spin_ns = -1;

static int64_t spin_budget(void) {
    if (spin_ns < 0) {
        const char *env = getenv("LADLE_POOL_SPIN_US");
        spin_ns = env != NULL ? (int64_t)atol(env) * 1000 : DEFAULT_SPIN_NS;
    }
    return spin_ns;
}

/* A job slot. Jobs alternate between two slots, so a worker that registered for a job and was then
 * descheduled delays nobody: the next job is written into the other slot, and the caller of a job waits
 * only for workers inside a chunk (busy), never for ones merely registered (active). */
typedef struct {
    range_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_llong next; /* next unclaimed index */
    atomic_int active; /* workers registered for this slot's job: it is not rewritten while > 0 */
    atomic_int busy;   /* workers claiming or running a chunk */
} pool_job;

static struct {
    pool_job slot[2];
    atomic_long generation; /* even: job generation/2 published in slot (generation/2) % 2; odd: being set */
    atomic_int wanted;      /* workers invited to the current job */
    atomic_int sleepers;    /* workers waiting on pool_cond */
} pool;

static pthread_mutex_t pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER; /* one job at a time; others run alone */
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static int pool_workers = 0;

static pool_job *slot_of(long gen) { return &pool.slot[(gen >> 1) & 1]; }

static void run_chunks(pool_job *job) {
    for (;;) {
        atomic_fetch_add(&job->busy, 1); /* before claiming: the caller sees a claimed chunk as busy */
        const int64_t begin = (int64_t)atomic_fetch_add(&job->next, job->chunk);
        if (begin >= job->n) {
            atomic_fetch_sub(&job->busy, 1);
            return;
        }
        const int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        job->fn(job->ctx, begin, end);
        atomic_fetch_sub(&job->busy, 1);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A generation this worker should join: published (even), new, and inviting it. */
static int joinable(long gen, long seen, int index) {
    return (gen & 1) == 0 && gen != seen && index < atomic_load(&pool.wanted);
}

/* Returns the next joinable generation, spinning first and then sleeping. */
static long wait_for_job(long seen, int index) {
    const int64_t deadline = now_ns() + spin_budget();
    for (int spins = 0;; spins++) {
        const long gen = atomic_load(&pool.generation);
        if (joinable(gen, seen, index)) return gen;
        if ((spins & 255) == 255 && now_ns() > deadline) break;
        cpu_relax();
    }
    pthread_mutex_lock(&pool_mutex);
    atomic_fetch_add(&pool.sleepers, 1);
    long gen;
    /* Rechecked under the mutex: a caller that published after our check sees sleepers > 0 and signals. */
    while (!joinable(gen = atomic_load(&pool.generation), seen, index)) pthread_cond_wait(&pool_cond, &pool_mutex);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool_mutex);
    return gen;
}

static void *pool_worker(void *arg) {
    const int index = (int)(intptr_t)arg;
    long seen = 0;
    for (;;) {
        const long gen = wait_for_job(seen, index);
        seen = gen;
        pool_job *job = slot_of(gen);
        atomic_fetch_add(&job->active, 1);
        /* Registered; the slot still holds this job only if no newer one was started meanwhile (a slot is
         * rewritten only after its active count drops to 0). */
        if (atomic_load(&pool.generation) == gen) run_chunks(job);
        atomic_fetch_sub(&job->active, 1);
    }
    return NULL;
}

static void start_workers(int wanted) {
    pthread_mutex_lock(&pool_mutex);
    while (pool_workers < wanted && pool_workers < 63) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, pool_worker, (void *)(intptr_t)pool_workers) != 0) break;
        pthread_detach(thread);
        pool_workers++;
    }
    pthread_mutex_unlock(&pool_mutex);
}

static void wait_zero(atomic_int *count) {
    for (int spins = 0; atomic_load(count) > 0; spins++) {
        if (spins > 1000) sched_yield();
        else cpu_relax();
    }
}

/* fn over [0, n) in chunks, on up to nthreads threads (the caller included). */
void parallel_for(range_fn fn, void *ctx, int64_t n, int64_t chunk, int nthreads) {
    if (nthreads <= 1 || n <= chunk || pthread_mutex_trylock(&pool_owner) != 0) {
        fn(ctx, 0, n);
        return;
    }
    if (pool_workers < nthreads - 1) start_workers(nthreads - 1);
    const long gen = atomic_load(&pool.generation) + 2;
    atomic_store(&pool.generation, gen - 1); /* odd: workers arriving late back out */
    pool_job *job = slot_of(gen);
    wait_zero(&job->active); /* stragglers from two jobs ago, in practice long gone */
    job->fn = fn;
    job->ctx = ctx;
    job->n = n;
    job->chunk = chunk;
    atomic_store(&job->next, 0);
    atomic_store(&pool.wanted, nthreads - 1);
    atomic_store(&pool.generation, gen);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool_mutex);
        pthread_cond_broadcast(&pool_cond);
        pthread_mutex_unlock(&pool_mutex);
    }
    run_chunks(job);
    /* Every index is claimed; only chunks still running matter (they need no more CPU than they take). */
    wait_zero(&job->busy);
    pthread_mutex_unlock(&pool_owner);
}

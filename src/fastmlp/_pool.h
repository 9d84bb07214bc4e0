/* fastmlp's fork-join thread pool: split one kernel call into chunks and run them on the cores.
 *
 * Why not OpenMP or OpenBLAS's own threads: both keep idle workers busy-spinning
 * for milliseconds after a call (libgomp ~300k pause loops, OpenBLAS up to 2^28
 * cycles), and a second pool in the same process (NumPy's OpenBLAS, PyTorch's
 * OpenMP) then waits a whole scheduler tick for the core a spinner holds. Here
 *   - the caller runs chunks itself and waits only for chunks a worker has
 *     already claimed, never for a worker to wake up, so a starved worker
 *     costs parallelism, not a stall;
 *   - idle workers spin for FM_SPIN_NS (back-to-back kernels of one training
 *     step stay hot), then sleep on a condition variable and cost nothing.
 *
 * One caller at a time uses the workers; a second concurrent caller (another
 * Python thread) runs its chunks serially. Chunks of one call are claimed in any
 * order, so a task must write disjoint outputs per chunk.
 *
 * Protocol: `state` packs (job id << 32 | next unclaimed chunk); a chunk is
 * claimed by a compare-and-swap on it, so a worker that wakes late for an old
 * job can never claim a chunk of a newer one. The caller publishes a job by
 * storing `state` (release) and then `job` (what sleeping workers wait on).
 *
 * The thread count (fm_threads_*) is OpenBLAS's own setting, so that threadpoolctl
 * reads and limits it; but while any kernel runs, on any thread, OpenBLAS is set
 * to one thread (its own pool must never wake inside a chunk). The setting is
 * held here meanwhile: kernels that overlap share one such period (the first to
 * begin saves the setting, the last to end puts it back), so a kernel, or a
 * caller asking for the count, sees the setting and never that 1, whatever other
 * threads are doing; chunk edges then depend on the setting alone.
 */
#ifndef FASTMLP_POOL_H
#define FASTMLP_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "cblas.h"

#define FM_MAX_THREADS 256
/* An idle worker busy-waits for FM_SPIN_NS, then yields the core between checks until
 * FM_YIELD_NS, then sleeps: longer than the gaps between the kernels of a training step
 * (tens of microseconds of Python), far shorter than a scheduler tick (~4 ms). */
#define FM_SPIN_NS 30000
#define FM_YIELD_NS 300000

typedef void (*fm_task)(void *ctx, int chunk);

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t state;
    _Atomic uint32_t job;
    _Atomic int done;       /* chunks of the current job finished */
    _Atomic int sleepers;   /* workers blocked on `wake` */
    _Atomic int active;     /* workers with an index below this take part in the current job */
    _Atomic(fm_task) fn;
    _Atomic(void *) ctx;
    _Atomic int n_chunks;
    atomic_flag busy;       /* held by the one caller that owns the workers */
    int n_workers;          /* started so far (only the caller holding `busy` changes it) */
    uint32_t last_job;
} fm_pool_t;

static fm_pool_t fm_pool = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL, 0, ATOMIC_FLAG_INIT, 0, 0};
static pthread_once_t fm_atfork_once = PTHREAD_ONCE_INIT;

static inline void fm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t fm_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Claim and run chunks of `job` until none is left (or a newer job replaced it). */
static void fm_run_chunks(uint32_t job) {
    for (;;) {
        uint64_t s = atomic_load_explicit(&fm_pool.state, memory_order_acquire);
        if ((uint32_t)(s >> 32) != job) return;
        uint32_t next = (uint32_t)s;
        if (next >= (uint32_t)atomic_load_explicit(&fm_pool.n_chunks, memory_order_relaxed)) return;
        if (atomic_compare_exchange_weak_explicit(&fm_pool.state, &s, s + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            /* Claimed: the caller cannot publish another job before `done` counts this chunk. */
            fm_task fn = atomic_load_explicit(&fm_pool.fn, memory_order_relaxed);
            fn(atomic_load_explicit(&fm_pool.ctx, memory_order_relaxed), (int)next);
            atomic_fetch_add_explicit(&fm_pool.done, 1, memory_order_release);
        }
    }
}

/* Wait for a job newer than `seen`: spin, then yield, then sleep. */
static uint32_t fm_wait_for_job(uint32_t seen) {
    int64_t start = fm_now_ns(), waited = 0;
    for (unsigned spins = 1;; spins++) {
        uint32_t job = atomic_load_explicit(&fm_pool.job, memory_order_acquire);
        if (job != seen) return job;
        if (waited < FM_SPIN_NS) {
            fm_cpu_relax();
        } else {
            sched_yield(); /* another thread that wants this core gets it */
        }
        if ((spins & 63) == 0 || waited >= FM_SPIN_NS) {
            waited = fm_now_ns() - start;
            if (waited > FM_YIELD_NS) break;
        }
    }
    pthread_mutex_lock(&fm_pool.lock);
    atomic_fetch_add(&fm_pool.sleepers, 1); /* seq_cst: pairs with the caller's job store + sleepers load */
    uint32_t job;
    while ((job = atomic_load(&fm_pool.job)) == seen) pthread_cond_wait(&fm_pool.wake, &fm_pool.lock);
    atomic_fetch_sub(&fm_pool.sleepers, 1);
    pthread_mutex_unlock(&fm_pool.lock);
    return job;
}

static void *fm_worker_main(void *arg) {
    int index = (int)(intptr_t)arg;
    uint32_t seen = atomic_load(&fm_pool.job);
    for (;;) {
        seen = fm_wait_for_job(seen);
        if (index < atomic_load_explicit(&fm_pool.active, memory_order_acquire)) fm_run_chunks(seen);
    }
    return NULL;
}

/* The thread count while kernels run (see the top of this file). */
typedef struct {
    pthread_mutex_t lock;
    int running;  /* kernels between fm_threads_begin and fm_threads_end, all threads together */
    int setting;  /* OpenBLAS's setting, saved while running > 0 */
    int restore;  /* in a child forked while kernels ran: the setting to give OpenBLAS back */
} fm_count_t;

static fm_count_t fm_count = {PTHREAD_MUTEX_INITIALIZER, 0, 1, 0};

/* Holding fm_count.lock across fork() means the child never inherits it mid-change. */
static void fm_before_fork(void) { pthread_mutex_lock(&fm_count.lock); }

static void fm_after_fork_parent(void) { pthread_mutex_unlock(&fm_count.lock); }

/* After fork() only the forking thread exists in the child: forget the workers and the
 * kernels other threads were running (their OpenBLAS setting of 1 is undone at the next
 * use, not here: OpenBLAS may not be called safely inside a fork handler). */
static void fm_after_fork_child(void) {
    pthread_mutex_init(&fm_pool.lock, NULL);
    pthread_cond_init(&fm_pool.wake, NULL);
    atomic_store(&fm_pool.sleepers, 0);
    atomic_store(&fm_pool.active, 0);
    atomic_flag_clear(&fm_pool.busy);
    fm_pool.n_workers = 0;
    pthread_mutex_init(&fm_count.lock, NULL);
    if (fm_count.running > 0) fm_count.restore = fm_count.setting;
    fm_count.running = 0;
}

static void fm_register_atfork(void) { pthread_atfork(fm_before_fork, fm_after_fork_parent, fm_after_fork_child); }

/* Lock fm_count; in a child forked mid-kernel, first give OpenBLAS its setting back. */
static void fm_count_lock(void) {
    pthread_once(&fm_atfork_once, fm_register_atfork);
    pthread_mutex_lock(&fm_count.lock);
    if (fm_count.restore > 0) {
        if (fm_count.restore > 1) scipy_openblas_set_num_threads(fm_count.restore);
        fm_count.restore = 0;
    }
}

/* A kernel starts: returns the thread count it must use; OpenBLAS runs single-threaded until fm_threads_end. */
static int fm_threads_begin(void) {
    fm_count_lock();
    if (fm_count.running++ == 0) {
        fm_count.setting = scipy_openblas_get_num_threads();
        if (fm_count.setting > 1) scipy_openblas_set_num_threads(1);
    }
    int n = fm_count.setting;
    pthread_mutex_unlock(&fm_count.lock);
    return n;
}

static void fm_threads_end(void) {
    fm_count_lock();
    if (--fm_count.running == 0 && fm_count.setting > 1) scipy_openblas_set_num_threads(fm_count.setting);
    pthread_mutex_unlock(&fm_count.lock);
}

static int fm_threads_get(void) {
    fm_count_lock();
    int n = fm_count.running > 0 ? fm_count.setting : scipy_openblas_get_num_threads();
    pthread_mutex_unlock(&fm_count.lock);
    return n;
}

/* While kernels run the new setting waits in fm_count (OpenBLAS gets it when the last one ends). */
static void fm_threads_set(int n) {
    fm_count_lock();
    if (fm_count.running > 0)
        fm_count.setting = n;
    else
        scipy_openblas_set_num_threads(n);
    pthread_mutex_unlock(&fm_count.lock);
}

/* Start workers until `n` exist; returns how many exist (fewer if the OS refused a thread). */
static int fm_ensure_workers(int n) {
    pthread_once(&fm_atfork_once, fm_register_atfork);
    while (fm_pool.n_workers < n) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int err = pthread_create(&thread, &attr, fm_worker_main, (void *)(intptr_t)fm_pool.n_workers);
        pthread_attr_destroy(&attr);
        if (err != 0) break;
        fm_pool.n_workers++;
    }
    return fm_pool.n_workers;
}

/* Run fn(ctx, c) for every c in [0, n_chunks) on up to n_threads threads, the caller being one.
 * Returns the number of threads that were offered chunks (1 when the call ran serially). */
static int fm_parallel_for(int n_chunks, int n_threads, fm_task fn, void *ctx) {
    if (n_threads > n_chunks) n_threads = n_chunks;
    if (n_threads > FM_MAX_THREADS) n_threads = FM_MAX_THREADS;
    if (n_threads <= 1 || atomic_flag_test_and_set_explicit(&fm_pool.busy, memory_order_acquire)) {
        for (int c = 0; c < n_chunks; c++) fn(ctx, c);
        return 1;
    }
    int workers = fm_ensure_workers(n_threads - 1);
    if (workers > n_threads - 1) workers = n_threads - 1;
    uint32_t job = fm_pool.last_job + 1;
    if (job == 0) job = 1; /* 0 is the pool's initial id: keep ids distinct from it */
    fm_pool.last_job = job;
    atomic_store_explicit(&fm_pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&fm_pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&fm_pool.n_chunks, n_chunks, memory_order_relaxed);
    atomic_store_explicit(&fm_pool.active, workers, memory_order_relaxed);
    atomic_store_explicit(&fm_pool.done, 0, memory_order_relaxed);
    atomic_store_explicit(&fm_pool.state, (uint64_t)job << 32, memory_order_release);
    atomic_store(&fm_pool.job, job); /* seq_cst: a worker about to sleep sees it, or is counted below */
    if (atomic_load(&fm_pool.sleepers) > 0) {
        pthread_mutex_lock(&fm_pool.lock);
        pthread_cond_broadcast(&fm_pool.wake);
        pthread_mutex_unlock(&fm_pool.lock);
    }
    fm_run_chunks(job);
    /* Every chunk is claimed; wait for the ones still running on workers. */
    while (atomic_load_explicit(&fm_pool.done, memory_order_acquire) < n_chunks) fm_cpu_relax();
    atomic_store_explicit(&fm_pool.active, 0, memory_order_relaxed);
    atomic_flag_clear_explicit(&fm_pool.busy, memory_order_release);
    return workers + 1;
}

#endif /* FASTMLP_POOL_H */

/*
 * Fused CPU kernels for the part of a dense layer whose cost grows quadratically with
 * depth: BatchNorm + ReLU over the block's concatenated feature maps, and its backward.
 *
 * Layout: NHWC, flattened to rows. X is the block's shared feature buffer: P = N*H*W rows
 * of `ldx` floats, of which a layer reads the first C (its inputs). a, b are the layer's
 * BatchNorm folded into one affine map per channel: BN(x) = a*x + b.
 *
 * Plain C, built at first use by densenets/models/cpu_kernels.py and loaded with ctypes;
 * every function has a pure-PyTorch twin there that it is tested against. Rows are split
 * over short-lived pthreads rather than OpenMP: a second OpenMP runtime beside PyTorch's
 * would leave its threads spinning while PyTorch's convolutions run.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
/* Starting a thread costs up to ~0.4 ms on a virtual machine (waking an idle vCPU), so a
 * thread is only added per this many floats of work. */
#define MIN_WORK_PER_THREAD (1 << 21)

typedef void (*row_fn)(const void* args, int64_t begin, int64_t end, int tid);

typedef struct {
    row_fn fn;
    const void* args;
    int64_t begin, end;
    int tid;
} task_t;

static void* run_task(void* p) {
    task_t* t = (task_t*)p;
    t->fn(t->args, t->begin, t->end, t->tid);
    return NULL;
}

/* Split rows [0, P) of C floats into contiguous ranges, one per thread; returns how many. */
static int parallel_rows(row_fn fn, const void* args, int64_t P, int64_t C, int nthreads) {
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if ((int64_t)nthreads * MIN_WORK_PER_THREAD > P * C) nthreads = (int)(P * C / MIN_WORK_PER_THREAD);
    if (nthreads < 1) nthreads = 1;
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    task_t tasks[MAX_THREADS];
    int64_t chunk = (P + nthreads - 1) / nthreads;
    for (int t = 0; t < nthreads; ++t) {
        int64_t begin = t * chunk, end = begin + chunk < P ? begin + chunk : P;
        tasks[t] = (task_t){fn, args, begin, end, t};
    }
    for (int t = 1; t < nthreads; ++t)
        started[t] = pthread_create(&threads[t], NULL, run_task, &tasks[t]) == 0;
    run_task(&tasks[0]);
    for (int t = 1; t < nthreads; ++t) {
        if (started[t]) pthread_join(threads[t], NULL);
        else run_task(&tasks[t]); /* could not start a thread: do its share here */
    }
    return nthreads;
}

/* ---- forward: T[p, c] = max(0, a[c] * X[p, c] + b[c]) ---------------------------------- */

typedef struct {
    const float *X, *a, *b;
    float* T;
    int64_t ldx, ldt, C;
} fwd_args;

/* Fields are copied into restrict-qualified locals so the compiler vectorises the rows. */
static void fwd_rows(const void* vp, int64_t begin, int64_t end, int tid) {
    const fwd_args* s = (const fwd_args*)vp;
    const float* restrict a = s->a;
    const float* restrict b = s->b;
    const int64_t C = s->C;
    (void)tid;
    for (int64_t p = begin; p < end; ++p) {
        const float* restrict x = s->X + p * s->ldx;
        float* restrict t = s->T + p * s->ldt;
        for (int64_t c = 0; c < C; ++c) {
            float u = a[c] * x[c] + b[c];
            t[c] = u > 0.f ? u : 0.f;
        }
    }
}

void bn_relu_forward(const float* X, int64_t ldx, int64_t P, int64_t C, const float* a, const float* b,
                     float* T, int64_t ldt, int nthreads) {
    fwd_args s = {X, a, b, T, ldx, ldt, C};
    parallel_rows(fwd_rows, &s, P, C, nthreads);
}

/* ---- backward, pass 1: with g = dT * [a x + b > 0] (the gradient before the ReLU),
 *      s1[c] = sum_p g[p, c],  s2[c] = sum_p g[p, c] * X[p, c] ------------------------- */

typedef struct {
    const float *dT, *X, *a, *b;
    int64_t ldd, ldx, C;
    double* partial; /* per thread: 2 * C doubles */
} reduce_args;

/* Moves float partial sums (acc[0:C], acc[C:2C]) into the double ones and clears them. */
static void flush_sums(float* acc, double* p1, double* p2, int64_t C) {
    for (int64_t c = 0; c < C; ++c) {
        p1[c] += acc[c];
        p2[c] += acc[C + c];
    }
    memset(acc, 0, (size_t)2 * C * sizeof(float));
}

static void reduce_rows(const void* vp, int64_t begin, int64_t end, int tid) {
    const reduce_args* s = (const reduce_args*)vp;
    const int64_t C = s->C;
    const float* restrict a = s->a;
    const float* restrict b = s->b;
    double* restrict p1 = s->partial + (size_t)tid * 2 * C;
    double* restrict p2 = p1 + C;
    float* acc = (float*)calloc((size_t)2 * C, sizeof(float));
    if (!acc) return;
    float* restrict acc1 = acc;
    float* restrict acc2 = acc + C;
    int rows = 0;
    for (int64_t p = begin; p < end; ++p) {
        const float* restrict d = s->dT + p * s->ldd;
        const float* restrict x = s->X + p * s->ldx;
        for (int64_t c = 0; c < C; ++c) {
            float g = (a[c] * x[c] + b[c] > 0.f) ? d[c] : 0.f;
            acc1[c] += g;
            acc2[c] += g * x[c];
        }
        if (++rows == 256) { /* move float partial sums into doubles to bound rounding error */
            flush_sums(acc, p1, p2, C);
            rows = 0;
        }
    }
    flush_sums(acc, p1, p2, C);
    free(acc);
}

/* Adds the per-thread column sums (thread t's s1 at partial[2Ct], s2 at partial[2Ct + C]). */
static void sum_partials(const double* partial, int used, int64_t C, double* s1, double* s2) {
    for (int64_t c = 0; c < C; ++c) {
        s1[c] = 0.0;
        s2[c] = 0.0;
    }
    for (int t = 0; t < used; ++t) {
        const double* q = partial + (size_t)t * 2 * C;
        for (int64_t c = 0; c < C; ++c) {
            s1[c] += q[c];
            s2[c] += q[C + c];
        }
    }
}

int bn_relu_backward_reduce(const float* dT, int64_t ldd, const float* X, int64_t ldx, int64_t P, int64_t C,
                            const float* a, const float* b, double* s1, double* s2, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    double* partial = (double*)calloc((size_t)nthreads * 2 * C, sizeof(double));
    if (!partial) return -1;
    reduce_args s = {dT, X, a, b, ldd, ldx, C, partial};
    int used = parallel_rows(reduce_rows, &s, P, C, nthreads);
    sum_partials(partial, used, C, s1, s2);
    free(partial);
    return 0;
}

/* ---- backward, pass 2: G[p, c] += a[c] * g + k1[c] + k2[c] * X[p, c], the BatchNorm
 *      input gradient (batch statistics enter through k1, k2), accumulated in place ---- */

typedef struct {
    const float *dT, *X, *a, *b, *k1, *k2;
    float* G;
    int64_t ldd, ldx, ldg, C;
} apply_args;

static void apply_rows(const void* vp, int64_t begin, int64_t end, int tid) {
    const apply_args* s = (const apply_args*)vp;
    const float* restrict a = s->a;
    const float* restrict b = s->b;
    const float* restrict k1 = s->k1;
    const float* restrict k2 = s->k2;
    const int64_t C = s->C;
    (void)tid;
    for (int64_t p = begin; p < end; ++p) {
        const float* restrict d = s->dT + p * s->ldd;
        const float* restrict x = s->X + p * s->ldx;
        float* restrict gr = s->G + p * s->ldg;
        for (int64_t c = 0; c < C; ++c) {
            float g = (a[c] * x[c] + b[c] > 0.f) ? d[c] : 0.f;
            gr[c] += a[c] * g + k1[c] + k2[c] * x[c];
        }
    }
}

void bn_relu_backward_apply(const float* dT, int64_t ldd, const float* X, int64_t ldx, int64_t P, int64_t C,
                            const float* a, const float* b, const float* k1, const float* k2, float* G,
                            int64_t ldg, int nthreads) {
    apply_args s = {dT, X, a, b, k1, k2, G, ldd, ldx, ldg, C};
    parallel_rows(apply_rows, &s, P, C, nthreads);
}

/* ---- per-channel statistics: s1[c] = sum_p X[p, c], s2[c] = sum_p X[p, c]^2 ------------ */

typedef struct {
    const float* X;
    int64_t ldx, C;
    double* partial;
} stats_args;

static void stats_rows(const void* vp, int64_t begin, int64_t end, int tid) {
    const stats_args* s = (const stats_args*)vp;
    const int64_t C = s->C;
    double* restrict p1 = s->partial + (size_t)tid * 2 * C;
    double* restrict p2 = p1 + C;
    float* acc = (float*)calloc((size_t)2 * C, sizeof(float));
    if (!acc) return;
    float* restrict acc1 = acc;
    float* restrict acc2 = acc + C;
    int rows = 0;
    for (int64_t p = begin; p < end; ++p) {
        const float* restrict x = s->X + p * s->ldx;
        for (int64_t c = 0; c < C; ++c) {
            acc1[c] += x[c];
            acc2[c] += x[c] * x[c];
        }
        if (++rows == 256) {
            flush_sums(acc, p1, p2, C);
            rows = 0;
        }
    }
    flush_sums(acc, p1, p2, C);
    free(acc);
}

int column_sums(const float* X, int64_t ldx, int64_t P, int64_t C, double* s1, double* s2, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    double* partial = (double*)calloc((size_t)nthreads * 2 * C, sizeof(double));
    if (!partial) return -1;
    stats_args s = {X, ldx, C, partial};
    int used = parallel_rows(stats_rows, &s, P, C, nthreads);
    sum_partials(partial, used, C, s1, s2);
    free(partial);
    return 0;
}

/* LQ-Net nearest-level encoding in one pass over the tensor (quant_det/quantizers/lqnet.py).

   Built on first use by quant_det/quantizers/native.py with the system C compiler (plain C, no
   torch headers, loaded with ctypes). Without a compiler lqnet.py computes the same numbers with
   torch.searchsorted + torch.gather, which is about 5x slower on CPU (branchy binary search).

   x is [rows, cols] (row r has thresholds thr[r*(L-1) ..] and sorted levels val[r*L ..]).
   q[i] = val[c] with c = #{l : !(thr[l] >= x[i])}, exactly the index torch.searchsorted(thr, x)
   (right=False) returns, NaN included. The thresholds are sorted, so q is computed as a chain of
   selects (q = x > t_l ? v_{l+1} : q), which vectorizes; no index is materialized.
   When sample_index is given, the columns 0, stride, 2*stride, ... of every row (the same
   columns as t[:, ::stride]) also get their level index (int64) and, if sample_x is given, a copy
   of x: the QEM statistics come from them, taken while the block is in cache. */
#include <stdint.h>
#include <pthread.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define BLOCK 2048
#define MAX_THREADS 64

typedef struct {
    const float *x;
    int64_t cols, start, end; /* this job's flat element range [start, end) */
    const float *thr, *val;
    int levels;
    float *q;
    int64_t stride, samples; /* sampled columns per row */
    int64_t *sample_index;
    float *sample_x;
} job_t;

CLONES
static void select_levels(const float *restrict x, int64_t n, const float *restrict t,
                          const float *restrict v, int T, float *restrict q) {
    const float v0 = v[0];
    for (int64_t i = 0; i < n; i++) q[i] = v0;
    for (int l = 0; l < T; l++) {
        const float tl = t[l], vl = v[l + 1];
        for (int64_t i = 0; i < n; i++) q[i] = (tl >= x[i]) ? q[i] : vl;
    }
}

/* select_levels that also counts, for every element, the thresholds below it (its level index) */
CLONES
static void select_and_count(const float *restrict x, int64_t n, const float *restrict t,
                             const float *restrict v, int T, float *restrict q, int32_t *restrict idx) {
    const float v0 = v[0];
    for (int64_t i = 0; i < n; i++) {
        q[i] = v0;
        idx[i] = 0;
    }
    for (int l = 0; l < T; l++) {
        const float tl = t[l], vl = v[l + 1];
        for (int64_t i = 0; i < n; i++) {
            const int below = !(tl >= x[i]);
            q[i] = below ? vl : q[i];
            idx[i] += below;
        }
    }
}

static int64_t level_index(float x, const float *t, int T) {
    int64_t c = 0;
    for (int l = 0; l < T; l++) c += !(t[l] >= x);
    return c;
}

static void run(const job_t *j) {
    const int T = j->levels - 1;
    int32_t idx[BLOCK];
    int64_t e = j->start;
    while (e < j->end) {
        const int64_t r = e / j->cols, row0 = r * j->cols;
        const int64_t stop = row0 + j->cols < j->end ? row0 + j->cols : j->end;
        const float *t = j->thr + r * T, *v = j->val + (int64_t)r * j->levels;
        for (int64_t b = e; b < stop; b += BLOCK) {
            const int64_t n = stop - b < BLOCK ? stop - b : BLOCK;
            /* dense samples: count for the whole block, vectorized; sparse: count the few alone */
            const int dense = j->sample_index && j->stride <= 8;
            if (dense) select_and_count(j->x + b, n, t, v, T, j->q + b, idx);
            else select_levels(j->x + b, n, t, v, T, j->q + b);
            if (!j->sample_index) continue;
            int64_t c = b - row0;
            c = (c + j->stride - 1) / j->stride * j->stride; /* first sampled column in the block */
            for (; c < b - row0 + n; c += j->stride) {
                const float xv = j->x[row0 + c];
                const int64_t s = r * j->samples + c / j->stride;
                j->sample_index[s] = dense ? idx[row0 + c - b] : level_index(xv, t, T);
                if (j->sample_x) j->sample_x[s] = xv;
            }
        }
        e = stop;
    }
}

static void *thread_main(void *arg) {
    run((const job_t *)arg);
    return 0;
}

/* Returns 0. threads <= 1 (or a small tensor) runs in the calling thread. */
int lqnet_encode(const float *x, int64_t rows, int64_t cols, const float *thr, const float *val,
                 int levels, float *q, int64_t stride, int64_t *sample_index, float *sample_x,
                 int threads) {
    const int64_t n = rows * cols;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1 || n < (1 << 16)) threads = 1;
    if (stride < 1) stride = 1;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 0; k < threads; k++) {
        job_t j = {x, cols, n * k / threads, n * (k + 1) / threads, thr, val, levels, q,
                   stride, (cols + stride - 1) / stride, sample_index, sample_x};
        jobs[k] = j;
    }
    for (int k = 1; k < threads; k++) started[k] = pthread_create(&ids[k], 0, thread_main, &jobs[k]) == 0;
    run(&jobs[0]);
    for (int k = 1; k < threads; k++) {
        if (started[k]) pthread_join(ids[k], 0);
        else run(&jobs[k]);
    }
    return 0;
}

/* Level counts and sums of the QEM sample ([rows, samples] level indices and values): per row, in
   sample order, in double, exactly as torch.bincount(index + row * levels, x.double()) adds them. */
int lqnet_level_stats(const int64_t *index, const float *x, int64_t rows, int64_t samples, int levels,
                      int64_t *count, double *total) {
    for (int64_t i = 0; i < rows * (int64_t)levels; i++) {
        count[i] = 0;
        total[i] = 0.0;
    }
    for (int64_t r = 0; r < rows; r++) {
        int64_t *c = count + r * levels;
        double *t = total + r * levels;
        const int64_t *ix = index + r * samples;
        const float *xs = x + r * samples;
        for (int64_t s = 0; s < samples; s++) {
            c[ix[s]] += 1;
            t[ix[s]] += (double)xs[s];
        }
    }
    return 0;
}

/*
 * The local backend's native training kernels, called through ctypes (backends/local/_kernel.py).
 * Each has a PyTorch twin giving the same result to float32 rounding (tested; RECSYS_NATIVE=off
 * uses the twins):
 * - fm_train_epoch: a whole FM epoch (fm.py, FMTrainer.torch_step: ~40 small ATen calls a batch);
 * - rank_gather / rank_softmax / rank_update: a sampled-softmax ranking step (ranking.py) but its
 *   three matrix products (PyTorch's BLAS); rank_targets: ranks for the per-epoch evaluation.
 *
 * The hot functions are compiled for baseline x86-64 and for AVX2, chosen at run time
 * (fm_kernel_isa); with -ffp-contract=off, no fast-math and fixed-order reductions both copies
 * give the same bits. No CPython API is used: the module init at the end only makes the library
 * a valid abi3 extension module, so that setuptools builds it.
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_native.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_COPY 1
#define AVX2_TARGET __attribute__((target("avx2")))
#else
#define HAVE_AVX2_COPY 0
#endif

/* Bumped whenever an exported function's arguments change: _kernel.py refuses older builds. */
API int fm_kernel_abi(void) { return 12; }

/* -1: not decided yet; 0: baseline; 1: AVX2. */
static int g_isa = -1;

static int cpu_has_avx2(void) {
#if HAVE_AVX2_COPY
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

/* The copy in use, returned: request -1 keeps it (the first call asks the CPU), 0 forces the
 * baseline copy, 1 the AVX2 copy if the CPU has AVX2. */
API int fm_kernel_isa(int request) {
    if (request >= 0) g_isa = request && cpu_has_avx2();
    else if (g_isa < 0) g_isa = cpu_has_avx2();
    return g_isa;
}

/* As torch computes them in FMTrainer._step: float32(0.9), float32(1 - 0.9) rounded from double. */
#define BETA1 0.9f
#define BETA2 0.999f
#define ONE_MINUS_BETA1 ((float)(1.0 - 0.9))
#define ONE_MINUS_BETA2 ((float)(1.0 - 0.999))

enum { OPT_SGD = 0, OPT_ADAGRAD = 1, OPT_ADAM = 2 };
enum { LOSS_SQUARED = 0, LOSS_LOGISTIC = 1 };

/* sum_f a[f] * b[f] with 8 running sums (no chain of dependent additions), in a fixed order. */
INLINE float dot(const float *RESTRICT a, const float *RESTRICT b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t f = 0;
    for (; f + 8 <= n; f += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[f + l] * b[f + l];
    float tot = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; f < n; f++) tot += a[f] * b[f];
    return tot;
}

/* y[f] += x[f] * a */
INLINE void axpy(float *RESTRICT y, const float *RESTRICT x, float a, int64_t n) {
    for (int64_t f = 0; f < n; f++) y[f] += x[f] * a;
}

/* exp(x) for x <= 0 (0 below -87), vectorisable without fast-math: Cephes' expf (range
 * reduction by ln 2, degree-6 polynomial, 2^n through the exponent bits), ~1 ulp from libm's. */
INLINE float exp_nonpos(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return x < -87.0f ? 0.0f : p * scale;
}

/* max(init, x[0], ..., x[n - 1]) (NaN entries skipped), 4 x 8 independent lanes where the
 * compiler has vector extensions. */
#if defined(__GNUC__) || defined(__clang__)
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

INLINE v8f max8(v8f m, const float *x) {
    v8f v;
    memcpy(&v, x, sizeof(v));
    v8i gt = v > m;
    return (v8f)((gt & (v8i)v) | (~gt & (v8i)m));
}
#endif

INLINE float row_max(const float *RESTRICT x, int64_t n, float init) {
    float out = init;
    int64_t c = 0;
#if defined(__GNUC__) || defined(__clang__)
    v8f m[4];
    for (int a = 0; a < 4; a++) m[a] = (v8f){init, init, init, init, init, init, init, init};
    for (; c + 32 <= n; c += 32)
        for (int a = 0; a < 4; a++) m[a] = max8(m[a], x + c + 8 * a);
    for (; c + 8 <= n; c += 8) m[0] = max8(m[0], x + c);
    for (int a = 0; a < 4; a++)
        for (int l = 0; l < 8; l++) out = m[a][l] > out ? m[a][l] : out;
#endif
    for (; c < n; c++) out = x[c] > out ? x[c] : out;
    return out;
}

/* Advances the optimizer's step count *step to t; returns Adam's bias correction for step t, as
 * FMTrainer._step computes it (in double, then float), or 1 for the other optimizers. */
static float next_step(int64_t *step, int optimizer) {
    const double t = (double)++*step;
    return optimizer == OPT_ADAM ? (float)(sqrt(1.0 - pow(0.999, t)) / (1.0 - pow(0.9, t))) : 1.0f;
}

/* The gradient g clipped to [-clip, clip] (clip = inf: none; NaN passes through, as
 * torch.clamp), plus the weight decay wd * w. */
INLINE float decayed(float g, float clip, float wd, float w) {
    float x = clip < g ? clip : g;
    x = x < -clip ? -clip : x;
    return x + wd * w;
}

/* One optimizer update of n weights with gradient g (clipped, weight decay added), one loop
 * per optimizer over restrict pointers, so that it vectorises. */
INLINE void update(float *RESTRICT wgt, const float *RESTRICT g, float *RESTRICT s0,
                   float *RESTRICT s1, int64_t n, const float *RESTRICT lr,
                   const float *RESTRICT wd, int optimizer, float clip, float eps,
                   float correction) {
    if (optimizer == OPT_SGD) {
        for (int64_t f = 0; f < n; f++)
            wgt[f] = wgt[f] - lr[f] * decayed(g[f], clip, wd[f], wgt[f]);
    } else if (optimizer == OPT_ADAGRAD) {
        for (int64_t f = 0; f < n; f++) {
            float x = decayed(g[f], clip, wd[f], wgt[f]);
            float h = s0[f] + x * x;
            s0[f] = h;
            wgt[f] = wgt[f] - lr[f] * x / (sqrtf(h) + eps);
        }
    } else {
        for (int64_t f = 0; f < n; f++) {
            float x = decayed(g[f], clip, wd[f], wgt[f]);
            float m = s0[f] * BETA1 + ONE_MINUS_BETA1 * x;
            float v = s1[f] * BETA2 + ONE_MINUS_BETA2 * x * x;
            s0[f] = m;
            s1[f] = v;
            wgt[f] = wgt[f] - (m / (sqrtf(v) + eps)) * (lr[f] * correction);
        }
    }
}

/* Table rows are read in an order no hardware prefetcher guesses: fetch a few ahead. */
#define PREFETCH_AHEAD 4
#if defined(__GNUC__) || defined(__clang__)
#define prefetch(p) __builtin_prefetch((p), 1, 3)
#else
#define prefetch(p) ((void)(p))
#endif

INLINE void prefetch_row(const float *p, int64_t n) {
    for (int64_t f = 0; f < n; f += 16) prefetch(p + f);
}

/* The rows of a (feature_dim, k1) table touched by a step, with their gradients: slot[i] is row
 * i's place in grows (feature_dim int32, all -1 between calls), uniq the rows by first touch. */
typedef struct {
    int32_t *slot;
    float *grows;
    int64_t *uniq;
    int64_t n;
    int64_t k1;
} touched;

/* The gradient row of table row i, zeroed on first touch. */
INLINE float *grad_row(touched *t, int64_t i) {
    int32_t u = t->slot[i];
    if (u < 0) {
        u = t->slot[i] = (int32_t)t->n;
        t->uniq[t->n++] = i;
        memset(t->grows + (int64_t)u * t->k1, 0, sizeof(float) * (size_t)t->k1);
    }
    return t->grows + (int64_t)u * t->k1;
}

/* The lazy optimizer step on every touched row (slot left all -1 again). */
INLINE void update_touched(touched *t, float *P, float *s0, float *s1, const float *lr,
                           const float *wd, int optimizer, float clip, float eps,
                           float correction) {
    const int64_t k1 = t->k1;
    for (int64_t u = 0; u < t->n; u++) {
        int64_t i = t->uniq[u];
        if (u + PREFETCH_AHEAD < t->n) { /* rows are scattered over the table: fetch ahead */
            int64_t ahead = t->uniq[u + PREFETCH_AHEAD] * k1;
            prefetch_row(P + ahead, k1);
            if (s0) prefetch_row(s0 + ahead, k1);
            if (s1) prefetch_row(s1 + ahead, k1);
        }
        t->slot[i] = -1;
        update(P + i * k1, t->grows + u * k1, s0 ? s0 + i * k1 : NULL, s1 ? s1 + i * k1 : NULL,
               k1, lr, wd, optimizer, clip, eps, correction);
    }
}

/* ------------------------------------------------------------------------------------------
 * The factorization machine (backends/local/fm.py)
 */

/*
 * A whole epoch: the rows of a (permuted) CSR matrix in batches of batch_size (each one
 * FMTrainer.torch_step). P: (feature_dim, k1) table [V | w]; s0, s1: optimizer state of that
 * shape (NULL if unused); w0, w0_s0, w0_s1: the global bias and its state. lr, wd: per column;
 * clip = inf: none; rescale <= 0: 1 / rows in the batch. *step (the optimizer's step count) is
 * advanced per batch. Scratch for the largest batch: fwork of (rows + entries) * k1 + rows
 * floats, iwork of 2 x entries int64; slot: feature_dim int32 all -1 (left so). Returns the
 * summed loss, NaN once it is not finite (the batches so far applied, as in the PyTorch loop),
 * or -1 (nothing changed) if an index is out of range.
 */
#define FM_EPOCH_PARAMS                                                                           \
    (float *P, float *s0, float *s1, int64_t feature_dim, int64_t k1, float *w0, float *w0_s0,    \
     float *w0_s1, const int64_t *indptr, const int64_t *idx, const float *val, int64_t n,        \
     const float *target, int64_t batch_size, int loss, double rescale, const float *lr,          \
     const float *wd, float bias_lr, float bias_wd, float clip, int optimizer, int64_t *step,     \
     float eps, int32_t *slot, float *fwork, int64_t *iwork)
#define FM_EPOCH_ARGS                                                                             \
    (P, s0, s1, feature_dim, k1, w0, w0_s0, w0_s1, indptr, idx, val, n, target, batch_size, loss, \
     rescale, lr, wd, bias_lr, bias_wd, clip, optimizer, step, eps, slot, fwork, iwork)

INLINE double fm_train_epoch_impl FM_EPOCH_PARAMS {
    const int64_t k = k1 - 1;
    for (int64_t j = indptr[0]; j < indptr[n]; j++)
        if (idx[j] < 0 || idx[j] >= feature_dim) return -1.0;
    double total = 0.0;
    for (int64_t r0 = 0; r0 < n; r0 += batch_size) {
        const int64_t n_rows = (r0 + batch_size < n ? r0 + batch_size : n) - r0;
        const int64_t e0 = indptr[r0], nnz = indptr[r0 + n_rows] - e0;
        const int64_t *bidx = idx + e0;
        const float *bval = val + e0;
        int64_t *row = iwork + nnz; /* the batch's entry j is x[row[j], bidx[j]] = bval[j] */
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t j = indptr[r0 + r]; j < indptr[r0 + r + 1]; j++) row[j - e0] = r;
        const float correction = next_step(step, optimizer);
        const float scale = (float)(rescale > 0 ? rescale : 1.0 / (double)n_rows);
        float *s = fwork;                   /* n_rows x k1: per-row sums of x_j P[idx_j] */
        float *grows = fwork + n_rows * k1; /* n_unique x k1: per-feature gradients */
        float *sq = grows + nnz * k1;       /* n_rows: sum of (x v)^2, then dLoss/dy * scale */
        double batch_loss = 0.0;

        /* forward */
        memset(s, 0, sizeof(float) * (size_t)(n_rows * k1));
        memset(sq, 0, sizeof(float) * (size_t)n_rows);
        for (int64_t j = 0; j < nnz; j++) {
            const float *p = P + bidx[j] * k1;
            const float x = bval[j];
            axpy(s + row[j] * k1, p, x, k1);
            sq[row[j]] += dot(p, p, k) * (x * x);
        }
        float g_w0 = 0.0f;
        for (int64_t r = 0; r < n_rows; r++) {
            const float *sr = s + r * k1;
            float y = (dot(sr, sr, k) - sq[r]) * 0.5f + sr[k] + w0[0];
            float d;
            if (loss == LOSS_SQUARED) {
                d = y - target[r0 + r];
                batch_loss += (double)d * (double)d;
            } else {
                /* binary cross-entropy on logits, stable form; gradient sigmoid(y) - t */
                float t = target[r0 + r];
                batch_loss += (double)(fmaxf(y, 0.0f) - y * t + log1pf(expf(-fabsf(y))));
                float sig = y >= 0.0f ? 1.0f / (1.0f + expf(-y)) : expf(y) / (1.0f + expf(y));
                d = sig - t;
            }
            sq[r] = d * scale;
            g_w0 += sq[r];
        }

        /* backward: each distinct feature's gradient, summed in entry order; dy/dv = x (s - v x) */
        touched t = {slot, grows, iwork, 0, k1};
        for (int64_t j = 0; j < nnz; j++) {
            float *gr = grad_row(&t, bidx[j]);
            const float *p = P + bidx[j] * k1;
            const float *sr = s + row[j] * k1;
            const float x = bval[j];
            const float gx = sq[row[j]] * x;
            for (int64_t f = 0; f < k; f++) gr[f] += (sr[f] - p[f] * x) * gx;
            gr[k] += gx;
        }

        /* lazy optimizer step: w0, then the touched rows */
        update(w0, &g_w0, w0_s0, w0_s1, 1, &bias_lr, &bias_wd, optimizer, clip, eps, correction);
        update_touched(&t, P, s0, s1, lr, wd, optimizer, clip, eps, correction);
        total += batch_loss;
        if (!isfinite(total)) return NAN;
    }
    return total;
}

/* ------------------------------------------------------------------------------------------
 * The sampled-softmax ranking FM (ranking.py, _softmax_step). A batch: B rows of the permuted
 * epoch, row r with user part up_indptr[r] .. up_indptr[r + 1] of up_idx / up_val, video
 * items[r], customer users[r]; S distinct sorted negatives neg; video i is table row
 * item_offset + i.
 */

/*
 * U (B x k1): each row's [sum_f x_f V_f | 1]; Pi (B x k1): its video's table row; Pn (S x k1):
 * the negatives' rows, linear weight minus log_q, so that U @ Pn^T is their log-Q corrected
 * scores. Returns 0, or -1 (nothing read) if an index is out of range.
 */
#define RANK_GATHER_PARAMS                                                                        \
    (const float *P, int64_t feature_dim, int64_t k1, const int64_t *up_indptr,                   \
     const int64_t *up_idx, const float *up_val, const int64_t *items, int64_t item_offset,       \
     int64_t B, const int64_t *neg, int64_t S, float log_q, float *U, float *Pi, float *Pn)
#define RANK_GATHER_ARGS                                                                          \
    (P, feature_dim, k1, up_indptr, up_idx, up_val, items, item_offset, B, neg, S, log_q, U, Pi,  \
     Pn)

INLINE int rank_gather_impl RANK_GATHER_PARAMS {
    const int64_t k = k1 - 1, e0 = up_indptr[0], e1 = up_indptr[B];
    for (int64_t r = 0; r < B; r++)
        if (item_offset + items[r] < 0 || item_offset + items[r] >= feature_dim) return -1;
    for (int64_t j = e0; j < e1; j++)
        if (up_idx[j] < 0 || up_idx[j] >= feature_dim) return -1;
    for (int64_t c = 0; c < S; c++)
        if (item_offset + neg[c] < 0 || item_offset + neg[c] >= feature_dim) return -1;
    for (int64_t r = 0; r < B; r++) {
        float *u = U + r * k1;
        memset(u, 0, sizeof(float) * (size_t)k);
        u[k] = 1.0f;
        for (int64_t j = up_indptr[r]; j < up_indptr[r + 1]; j++) {
            if (j + PREFETCH_AHEAD < e1) prefetch_row(P + up_idx[j + PREFETCH_AHEAD] * k1, k1);
            axpy(u, P + up_idx[j] * k1, up_val[j], k);
        }
        memcpy(Pi + r * k1, P + (item_offset + items[r]) * k1, sizeof(float) * (size_t)k1);
    }
    for (int64_t c = 0; c < S; c++) {
        memcpy(Pn + c * k1, P + (item_offset + neg[c]) * k1, sizeof(float) * (size_t)k1);
        Pn[c * k1 + k] -= log_q;
    }
    return 0;
}

/*
 * The sampled softmax of each row over [its video, the S negatives] but those its customer
 * rated (seen_*: CSR by customer); returns the summed loss. Sc (B x S) holds U @ Pn^T and gets
 * exp(s - max) (0 where left out), inv (B) scale / sum, so that inv_r * Sc[r, c] is the
 * gradient wrt a negative's score and the caller's Sc @ V_neg and Sc^T @ Uext need no scaling:
 * Uext (B x k1) = [inv_r U_r | inv_r]. g_pos (B): the gradient wrt the row's own score.
 * col_of: n_items int32, all -1 (left so).
 */
#define RANK_SOFTMAX_PARAMS                                                                       \
    (float *Sc, const float *U, const float *Pi, int64_t k1, const int64_t *users, int64_t B,     \
     const int64_t *neg, int64_t S, const int64_t *seen_indptr, const int64_t *seen_idx,          \
     int32_t *col_of, float scale, float *g_pos, float *inv, float *Uext)
#define RANK_SOFTMAX_ARGS                                                                         \
    (Sc, U, Pi, k1, users, B, neg, S, seen_indptr, seen_idx, col_of, scale, g_pos, inv, Uext)

/* x[c] = exp(x[c] - m) for c < n; returns their sum (eight running sums, a fixed order). */
INLINE float exp_shift_sum(float *RESTRICT x, int64_t n, float m) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        for (int l = 0; l < 8; l++) {
            float e = exp_nonpos(x[c + l] - m);
            x[c + l] = e;
            acc[l] += e;
        }
    float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; c < n; c++) {
        x[c] = exp_nonpos(x[c] - m);
        sum += x[c];
    }
    return sum;
}

INLINE double rank_softmax_impl RANK_SOFTMAX_PARAMS {
    const int64_t k = k1 - 1;
    double total = 0.0;
    /* the rated videos of every row's customer first: scattered reads alone, several in flight */
    for (int64_t c = 0; c < S; c++) col_of[neg[c]] = (int32_t)c;
    for (int64_t r = 0; r < B; r++) {
        if (r + 2 * PREFETCH_AHEAD < B) prefetch(seen_indptr + users[r + 2 * PREFETCH_AHEAD]);
        if (r + PREFETCH_AHEAD < B) {
            const int64_t *ip = seen_indptr + users[r + PREFETCH_AHEAD];
            for (int64_t j = ip[0]; j < ip[1]; j += 8) prefetch(seen_idx + j);
        }
        float *row = Sc + r * S, spare;
        for (int64_t j = seen_indptr[users[r]]; j < seen_indptr[users[r] + 1]; j++) {
            /* no branch (hits are unpredictable): a miss writes to spare */
            int64_t c = col_of[seen_idx[j]];
            uintptr_t hit = (uintptr_t)0 - (uintptr_t)(c >= 0);
            *(float *)((((uintptr_t)row + (uintptr_t)c * sizeof(float)) & hit) | ((uintptr_t)&spare & ~hit)) = -INFINITY;
        }
    }
    for (int64_t c = 0; c < S; c++) col_of[neg[c]] = -1;
    for (int64_t r = 0; r < B; r++) {
        float *row = Sc + r * S;
        const float *u = U + r * k1;
        const float s_pos = dot(u, Pi + r * k1, k) + Pi[r * k1 + k];
        const float m = row_max(row, S, s_pos);
        const float e_pos = exp_nonpos(s_pos - m);
        const float sum = exp_shift_sum(row, S, m) + e_pos;
        total += (double)logf(sum) - (double)(s_pos - m);
        const float f = scale / sum;
        float *ue = Uext + r * k1;
        for (int64_t c = 0; c < k; c++) ue[c] = u[c] * f;
        ue[k] = f;
        inv[r] = f;
        g_pos[r] = e_pos * f - scale;
    }
    return total;
}

/*
 * The lazy optimizer step of a softmax batch, given gU (B x k) = Sc @ V_neg, gN (S x k1) =
 * Sc^T @ Uext and the calls above. Gradients, summed per table row in this order: user-part
 * feature f of row r: x_f (inv_r gU_r + g_pos_r V_i) (linear weight: 0); the row's video:
 * [g_pos_r U_r | g_pos_r]; negative c: gN_c (w0 cancels in the loss). Advances *step; returns 0.
 * slot: feature_dim int32 all -1 (left so); grows: (user-part entries + B + S) x k1 floats;
 * uniq as many int64; gu: k floats.
 */
#define RANK_UPDATE_PARAMS                                                                        \
    (float *P, float *s0, float *s1, int64_t k1, const int64_t *up_indptr,                        \
     const int64_t *up_idx, const float *up_val, const int64_t *items, int64_t item_offset,       \
     int64_t B, const int64_t *neg, int64_t S, const float *U, const float *Pi, const float *gU,  \
     const float *g_pos, const float *inv, const float *gN, const float *lr, const float *wd,     \
     float clip, int optimizer, int64_t *step, float eps, int32_t *slot, float *grows,            \
     int64_t *uniq, float *gu)
#define RANK_UPDATE_ARGS                                                                          \
    (P, s0, s1, k1, up_indptr, up_idx, up_val, items, item_offset, B, neg, S, U, Pi, gU, g_pos,   \
     inv, gN, lr, wd, clip, optimizer, step, eps, slot, grows, uniq, gu)

INLINE int rank_update_impl RANK_UPDATE_PARAMS {
    const int64_t k = k1 - 1;
    touched t = {slot, grows, uniq, 0, k1};
    for (int64_t r = 0; r < B; r++) {
        const float *vi = Pi + r * k1;
        const float gp = g_pos[r], f_r = inv[r];
        for (int64_t f = 0; f < k; f++) gu[f] = gU[r * k + f] * f_r + vi[f] * gp;
        for (int64_t j = up_indptr[r]; j < up_indptr[r + 1]; j++)
            axpy(grad_row(&t, up_idx[j]), gu, up_val[j], k);
    }
    for (int64_t r = 0; r < B; r++) {
        float *gr = grad_row(&t, item_offset + items[r]);
        axpy(gr, U + r * k1, g_pos[r], k);
        gr[k] += g_pos[r];
    }
    for (int64_t c = 0; c < S; c++) axpy(grad_row(&t, item_offset + neg[c]), gN + c * k1, 1.0f, k1);
    update_touched(&t, P, s0, s1, lr, wd, optimizer, clip, eps, next_step(step, optimizer));
    return 0;
}

/*
 * Ranks by recsys.ranking.ranks_from_scores' rule: Sc (B x n_items) scores, row r's rank of
 * t = targets[r] is 1 + the videos j != t its customer did not rate (seen_*) with s_j > s_t,
 * or s_j == s_t and j < t. Returns 0, or -1 on a NaN target score or an index out of range.
 */
#define RANK_TARGETS_PARAMS                                                                       \
    (const float *Sc, int64_t B, int64_t n_items, const int64_t *targets, const int64_t *users,   \
     const int64_t *seen_indptr, const int64_t *seen_idx, int64_t *ranks)
#define RANK_TARGETS_ARGS (Sc, B, n_items, targets, users, seen_indptr, seen_idx, ranks)

INLINE int rank_targets_impl RANK_TARGETS_PARAMS {
    for (int64_t r = 0; r < B; r++) {
        const float *row = Sc + r * n_items;
        const int64_t t = targets[r];
        if (t < 0 || t >= n_items) return -1;
        const float st = row[t];
        if (st != st) return -1;
        int64_t before = 0, after = 0;
        for (int64_t j = 0; j < t; j++) before += row[j] >= st;
        for (int64_t j = t + 1; j < n_items; j++) after += row[j] > st;
        int64_t count = before + after;
        for (int64_t e = seen_indptr[users[r]]; e < seen_indptr[users[r] + 1]; e++) {
            int64_t j = seen_idx[e];
            if (j < 0 || j >= n_items) return -1;
            count -= j < t ? row[j] >= st : j > t ? row[j] > st : 0;
        }
        ranks[r] = count + 1;
    }
    return 0;
}

/* The exported functions: each body compiled for baseline x86-64 and for AVX2 (fm_kernel_isa). */
#if HAVE_AVX2_COPY
#define EXPORT(ret, name, params, args)                                                           \
    AVX2_TARGET static ret name##_avx2 params { return name##_impl args; }                       \
    static ret name##_base params { return name##_impl args; }                                    \
    API ret name params { return fm_kernel_isa(-1) ? name##_avx2 args : name##_base args; }
#else
#define EXPORT(ret, name, params, args)                                                           \
    API ret name params { return name##_impl args; }
#endif

EXPORT(double, fm_train_epoch, FM_EPOCH_PARAMS, FM_EPOCH_ARGS)
EXPORT(int, rank_gather, RANK_GATHER_PARAMS, RANK_GATHER_ARGS)
EXPORT(double, rank_softmax, RANK_SOFTMAX_PARAMS, RANK_SOFTMAX_ARGS)
EXPORT(int, rank_update, RANK_UPDATE_PARAMS, RANK_UPDATE_ARGS)
EXPORT(int, rank_targets, RANK_TARGETS_PARAMS, RANK_TARGETS_ARGS)

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fmkernel",
                                    "recsys native training kernels (used through ctypes).", -1,
                                    NULL, NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit__fmkernel(void) { return PyModule_Create(&module); }

/*
 * The local backend's native kernels: the factorization machine's fused training step and
 * epoch (backends/local/fm.py), and top-k with exclusion for exact inner-product k-NN
 * (backends/local/knn.py, at the end of this file).
 *
 * Training:
 * FMTrainer.train_step does the same work in ~40 small ATen calls; on small catalogues (a few
 * thousand features) their per-call overhead is most of a step, so this file does forward, loss,
 * closed-form gradients and the lazy optimizer update in one pass over the batch. The arithmetic
 * follows FMTrainer operation for operation in float32 (sums of squares are accumulated in
 * another order, so the two agree to rounding); the tests compare the paths over many steps.
 *
 * Called through ctypes (backends/local/_kernel.py); the module init below only makes the
 * shared library a valid (empty) Python extension module, so that setuptools builds it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* As torch computes them in FMTrainer._step: float32(0.9), float32(1 - 0.9) rounded from double. */
#define BETA1 0.9f
#define BETA2 0.999f
#define ONE_MINUS_BETA1 ((float)(1.0 - 0.9))
#define ONE_MINUS_BETA2 ((float)(1.0 - 0.999))


enum { OPT_SGD = 0, OPT_ADAGRAD = 1, OPT_ADAM = 2 };
enum { LOSS_SQUARED = 0, LOSS_LOGISTIC = 1 };

/* Bumped whenever an exported function's arguments change: backends/local/_kernel.py refuses a
 * library built from older sources (an editable install is not rebuilt by a git pull). */
int fm_kernel_abi(void) { return 7; }

/* sum_f a[f]^2 with 8 running sums: a single running sum is one long chain of dependent
 * additions (about 4 cycles each); the vectorised torch reduction does not keep that order
 * either, so the two paths agree to float rounding, not bit for bit. */
static inline float sumsq(const float *restrict a, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t f = 0;
    for (; f + 8 <= n; f += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[f + l] * a[f + l];
    float tot = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; f < n; f++) tot += a[f] * a[f];
    return tot;
}

/* One optimizer update of n weights with gradient g: clipped to [-clip, clip] (clip = inf:
 * none; NaN passes through, as torch.clamp), weight decay added, then the optimizer's rule.
 * One loop per optimizer over restrict pointers, so that gcc vectorises it. */
static void update(float *restrict wgt, const float *restrict g, float *restrict s0,
                   float *restrict s1, int64_t n, const float *restrict lr,
                   const float *restrict wd, int optimizer, float clip, float eps,
                   float correction) {
    const float lo = -clip;
    if (optimizer == OPT_SGD) {
        for (int64_t f = 0; f < n; f++) {
            float x = clip < g[f] ? clip : g[f];
            x = x < lo ? lo : x;
            x = x + wd[f] * wgt[f];
            wgt[f] = wgt[f] - lr[f] * x;
        }
    } else if (optimizer == OPT_ADAGRAD) {
        for (int64_t f = 0; f < n; f++) {
            float x = clip < g[f] ? clip : g[f];
            x = x < lo ? lo : x;
            x = x + wd[f] * wgt[f];
            float h = s0[f] + x * x;
            s0[f] = h;
            wgt[f] = wgt[f] - lr[f] * x / (sqrtf(h) + eps);
        }
    } else {
        for (int64_t f = 0; f < n; f++) {
            float x = clip < g[f] ? clip : g[f];
            x = x < lo ? lo : x;
            x = x + wd[f] * wgt[f];
            float m = s0[f] * BETA1 + ONE_MINUS_BETA1 * x;
            float v = s1[f] * BETA2 + ONE_MINUS_BETA2 * x * x;
            s0[f] = m;
            s1[f] = v;
            wgt[f] = wgt[f] - (m / (sqrtf(v) + eps)) * (lr[f] * correction);
        }
    }
}

/* y[f] += a * x[f] */
static inline void axpy(float *restrict y, const float *restrict x, float a, int64_t n) {
    for (int64_t f = 0; f < n; f++) y[f] += x[f] * a;
}

/* gr[f] += (sr[f] - p[f] * x) * gx: a feature's factor gradient from one entry */
static inline void factor_grad(float *restrict gr, const float *restrict sr,
                               const float *restrict p, float x, float gx, int64_t n) {
    for (int64_t f = 0; f < n; f++) gr[f] += (sr[f] - p[f] * x) * gx;
}

/*
 * P: (feature_dim, k1) table [V | w]; s0, s1: optimizer state of the same shape (unused ones
 * may be NULL). w0, w0_s0, w0_s1: the global bias and its state. The batch: n_rows rows, entry
 * j is x[row[j], idx[j]] = val[j], rows non-decreasing. target: n_rows. lr, wd: k1 per-column
 * values; bias_lr/bias_wd for w0. clip < 0: no clipping. correction: Adam's bias correction for
 * this step. slot: feature_dim int32 all -1 on entry (left so on return). Scratch: fwork of
 * n_rows * k1 + nnz * k1 + n_rows floats, iwork of nnz int64.
 * Returns the summed loss of the batch, or -1 (nothing changed) if an index is out of range.
 */
static double fm_train_step(float *P, float *s0, float *s1, int64_t feature_dim, int64_t k1,
                     float *w0, float *w0_s0, float *w0_s1,
                     const int64_t *row, const int64_t *idx, const float *val, int64_t nnz,
                     int64_t n_rows, const float *target, int loss, float scale,
                     const float *lr, const float *wd, float bias_lr, float bias_wd,
                     float clip, int optimizer, float correction, float eps,
                     int32_t *slot, float *fwork, int64_t *iwork) {
    const int64_t k = k1 - 1;
    float *s = fwork;                       /* n_rows x k1: per-row sums of x_j P[idx_j] */
    float *grows = fwork + n_rows * k1;     /* n_unique x k1: per-feature gradients */
    float *sq = grows + nnz * k1;           /* n_rows: sum of (x v)^2, then dLoss/dy * scale */
    int64_t *uniq = iwork;
    double total = 0.0;

    for (int64_t j = 0; j < nnz; j++)
        if (idx[j] < 0 || idx[j] >= feature_dim || row[j] < 0 || row[j] >= n_rows) return -1.0;

    /* forward */
    memset(s, 0, sizeof(float) * (size_t)(n_rows * k1));
    memset(sq, 0, sizeof(float) * (size_t)n_rows);
    for (int64_t j = 0; j < nnz; j++) {
        const float *p = P + idx[j] * k1;
        float *sr = s + row[j] * k1;
        const float x = val[j];
        axpy(sr, p, x, k1);
        sq[row[j]] += sumsq(p, k) * (x * x);
    }
    float g_w0 = 0.0f;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *sr = s + r * k1;
        float y = (sumsq(sr, k) - sq[r]) * 0.5f + sr[k] + w0[0];
        float d;
        if (loss == LOSS_SQUARED) {
            d = y - target[r];
            total += (double)d * (double)d;
        } else {
            /* binary cross-entropy on logits, stable form; gradient sigmoid(y) - t */
            float t = target[r];
            total += (double)(fmaxf(y, 0.0f) - y * t + log1pf(expf(-fabsf(y))));
            float sig = y >= 0.0f ? 1.0f / (1.0f + expf(-y)) : expf(y) / (1.0f + expf(y));
            d = sig - t;
        }
        sq[r] = d * scale;
        g_w0 += sq[r];
    }

    /* backward: gradient of each distinct feature, summed in entry order */
    int64_t n_uniq = 0;
    for (int64_t j = 0; j < nnz; j++) {
        int64_t i = idx[j];
        int32_t u = slot[i];
        if (u < 0) {
            u = slot[i] = (int32_t)n_uniq;
            uniq[n_uniq++] = i;
            memset(grows + (int64_t)u * k1, 0, sizeof(float) * (size_t)k1);
        }
        float *gr = grows + (int64_t)u * k1;
        const float *p = P + i * k1;
        const float *sr = s + row[j] * k1;
        const float x = val[j];
        const float gx = sq[row[j]] * x;
        factor_grad(gr, sr, p, x, gx, k);
        gr[k] += gx;
    }

    /* lazy optimizer step: w0, then the touched rows */
    if (!(clip >= 0.0f)) clip = INFINITY;
    update(w0, &g_w0, w0_s0, w0_s1, 1, &bias_lr, &bias_wd, optimizer, clip, eps, correction);
    for (int64_t u = 0; u < n_uniq; u++) {
        int64_t i = uniq[u];
        slot[i] = -1;
        update(P + i * k1, grows + u * k1, s0 ? s0 + i * k1 : NULL, s1 ? s1 + i * k1 : NULL, k1,
               lr, wd, optimizer, clip, eps, correction);
    }
    return total;
}

/*
 * A whole epoch: the rows of a (permuted) CSR matrix -- row r holds entries indptr[r] ..
 * indptr[r + 1] of idx/val -- in batches of batch_size, each one fm_train_step. rescale <= 0
 * means 1 / rows in the batch. *step is the optimizer's step count before the epoch and is
 * advanced by one per batch; Adam's bias correction is computed per step as FMTrainer does.
 * Returns the summed loss, NaN as soon as it stops being finite (the training has diverged;
 * the batches so far are applied, as in the PyTorch loop), or -1 (nothing changed) if an index
 * is out of range. iwork: 2 x the largest batch's entries.
 */
double fm_train_epoch(float *P, float *s0, float *s1, int64_t feature_dim, int64_t k1,
                      float *w0, float *w0_s0, float *w0_s1,
                      const int64_t *indptr, const int64_t *idx, const float *val, int64_t n,
                      const float *target, int64_t batch_size, int loss, double rescale,
                      const float *lr, const float *wd, float bias_lr, float bias_wd,
                      float clip, int optimizer, int64_t *step, float eps,
                      int32_t *slot, float *fwork, int64_t *iwork) {
    for (int64_t j = indptr[0]; j < indptr[n]; j++)
        if (idx[j] < 0 || idx[j] >= feature_dim) return -1.0;
    double total = 0.0;
    for (int64_t r0 = 0; r0 < n; r0 += batch_size) {
        int64_t r1 = r0 + batch_size < n ? r0 + batch_size : n;
        int64_t e0 = indptr[r0], nnz = indptr[r1] - e0;
        int64_t *rows = iwork + nnz;
        for (int64_t r = r0; r < r1; r++)
            for (int64_t j = indptr[r]; j < indptr[r + 1]; j++) rows[j - e0] = r - r0;
        int64_t t = ++*step;
        float correction = (float)(sqrt(1.0 - pow(0.999, (double)t)) / (1.0 - pow(0.9, (double)t)));
        float scale = (float)(rescale > 0 ? rescale : 1.0 / (double)(r1 - r0));
        total += fm_train_step(P, s0, s1, feature_dim, k1, w0, w0_s0, w0_s1, rows, idx + e0,
                               val + e0, nnz, r1 - r0, target + r0, loss, scale, lr, wd, bias_lr,
                               bias_wd, clip, optimizer, optimizer == OPT_ADAM ? correction : 1.0f,
                               eps, slot, fwork, iwork);
        if (!isfinite(total)) return NAN;
    }
    return total;
}

/* ------------------------------------------------------------------------------------------
 * Exact inner-product top-k with exclusion (backends/local/knn.py). Excluding during the
 * selection means the search never goes deeper than k, however many videos a customer has
 * already rated.
 */
/* A candidate as one integer whose ascending order is score descending, then column ascending:
 * the float's bits mapped to an order-preserving unsigned int, complemented, above the column.
 * -0 is turned into +0 first, so that the two zeros tie as they do as floats. */
static inline uint64_t key_of(float s, int64_t j) {
    uint32_t u;
    if (s == 0.0f) s = 0.0f;
    memcpy(&u, &s, sizeof(u));
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)(~u) << 32) | (uint64_t)j;
}

static inline float score_of(uint64_t key) {
    uint32_t u = ~(uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float s;
    memcpy(&s, &u, sizeof(s));
    return s;
}

static inline void swap64(uint64_t *a, uint64_t *b) {
    uint64_t t = *a;
    *a = *b;
    *b = t;
}

/* Reorder a[0 .. len) so that a[0 .. k) hold its k smallest keys (in no order): quickselect. */
static void keep_smallest(uint64_t *a, int64_t len, int64_t k) {
    int64_t lo = 0, hi = len - 1;
    while (lo < hi) {
        uint64_t pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (pivot < a[j]) j--;
            if (i <= j) swap64(&a[i++], &a[j--]);
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

static void sort_keys(uint64_t *a, int64_t len) {
    while (len > 16) {
        uint64_t pivot = a[len / 2];
        int64_t i = 0, j = len - 1;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (pivot < a[j]) j--;
            if (i <= j) swap64(&a[i++], &a[j--]);
        }
        /* recurse into the smaller part, loop on the larger */
        if (j + 1 < len - i) {
            sort_keys(a, j + 1);
            a += i;
            len -= i;
        } else {
            sort_keys(a + i, len - i);
            len = j + 1;
        }
    }
    for (int64_t i = 1; i < len; i++)
        for (int64_t j = i; j > 0 && a[j] < a[j - 1]; j--) swap64(&a[j], &a[j - 1]);
}

/* The k best columns of one row of scores into ids / sc (see topk_ip_excluding). Candidates go
 * into buf (cap keys, cap > k) while they beat the k-th best found so far; when buf is full it
 * is cut back to its k best. */
static void select_row(const float *row, int64_t n, const int64_t *excl, int64_t n_excl,
                       int64_t k, int64_t *ids, float *sc, uint8_t *mark, uint64_t *buf,
                       int64_t cap) {
    for (int64_t e = 0; e < n_excl; e++) mark[excl[e]] = 1;
    int64_t m = 0;
    float t = -INFINITY; /* columns come in increasing order: an equal score is never better */
    int full = 0;        /* once buf has been cut back, only scores > t can enter */
    for (int64_t j = 0; j < n; j++) {
        float s = row[j];
        if (full ? !(s > t) : !(s == s)) continue;
        if (mark[j]) continue;
        buf[m] = key_of(s, j);
        if (++m == cap) {
            keep_smallest(buf, m, k);
            m = k;
            uint64_t w = buf[0];
            for (int64_t i = 1; i < k; i++)
                if (buf[i] > w) w = buf[i];
            t = score_of(w);
            full = 1;
        }
    }
    for (int64_t e = 0; e < n_excl; e++) mark[excl[e]] = 0;
    if (m > k) {
        keep_smallest(buf, m, k);
        m = k;
    }
    sort_keys(buf, m);
    for (int64_t p = 0; p < m; p++) {
        ids[p] = (int64_t)(buf[p] & 0xffffffffu);
        sc[p] = score_of(buf[p]);
    }
    for (int64_t p = m; p < k; p++) {
        ids[p] = -1;
        sc[p] = -INFINITY;
    }
}

#define QB 4  /* queries scored together */
#define JB 16 /* items scored together */

/*
 * Scores of QB queries (qs, rows of d floats; fewer when nqb < QB) against every item, into
 * rows (QB x n_pad). itT is the items transposed and zero-padded: d x n_pad, n_pad a multiple of
 * JB. Every score is summed in the same order (f = 0, 1, ..., d - 1, starting from 0), so it does
 * not depend on which queries are scored together, on the threads, or on the build (SSE2 or
 * AVX2): a customer gets the same bits alone or in a batch.
 */
typedef float v8 __attribute__((vector_size(32))); /* GCC/Clang vectors: 1 AVX or 2 SSE registers */

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline v8 bcast(float x) { return (v8){x, x, x, x, x, x, x, x}; }

static void score_block(const float *qs, const float *itT, int64_t n_pad, int64_t d, int64_t nqb,
                        float *rows) {
    const float *q0 = qs, *q1 = qs + d, *q2 = qs + 2 * d, *q3 = qs + 3 * d;
    for (int64_t j0 = 0; j0 < n_pad; j0 += JB) {
        v8 a0 = bcast(0), b0 = bcast(0), a1 = bcast(0), b1 = bcast(0);
        v8 a2 = bcast(0), b2 = bcast(0), a3 = bcast(0), b3 = bcast(0);
        for (int64_t f = 0; f < d; f++) {
            const float *it = itT + f * n_pad + j0;
            v8 lo = load8(it), hi = load8(it + 8);
            v8 x0 = bcast(q0[f]), x1 = bcast(q1[f]), x2 = bcast(q2[f]), x3 = bcast(q3[f]);
            a0 += x0 * lo;
            b0 += x0 * hi;
            a1 += x1 * lo;
            b1 += x1 * hi;
            a2 += x2 * lo;
            b2 += x2 * hi;
            a3 += x3 * lo;
            b3 += x3 * hi;
        }
        v8 out[QB][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
        for (int64_t qq = 0; qq < nqb; qq++) memcpy(rows + qq * n_pad + j0, out[qq], sizeof(out[qq]));
    }
}

/*
 * queries: nq x d (row-major float32); itT: the n items transposed and zero-padded to n_pad
 * columns (see score_block). For each query: the k items with the largest inner product that
 * are not excluded, best first (score descending, then item ascending), padded with id -1 and
 * score -inf; NaN scores are never selected. excl_indptr[q] .. excl_indptr[q + 1] index the
 * excluded items of query q in excl_indices (absolute offsets), or excl_indptr is NULL. mark: n
 * zero bytes of scratch (left zero); rows: QB x n_pad floats of scratch. Returns 0, or -1 if an
 * excluded id is out of range or memory ran out.
 */
int topk_ip_excluding(const float *queries, int64_t nq, const float *itT, int64_t n, int64_t n_pad,
                      int64_t d, const int64_t *excl_indptr, const int64_t *excl_indices, int64_t k,
                      int64_t *out_ids, float *out_scores, uint8_t *mark, float *rows) {
    if (k <= 0) return 0;
    if (excl_indptr)
        for (int64_t e = excl_indptr[0]; e < excl_indptr[nq]; e++)
            if (excl_indices[e] < 0 || excl_indices[e] >= n) return -1;
    if (n > 0xffffffffLL) return -1; /* columns are kept in 32 bits */
    int64_t cap = 2 * k + 64;
    uint64_t *h = malloc(sizeof(uint64_t) * (size_t)cap);
    float *pad = calloc((size_t)(QB * d), sizeof(float)); /* the last, partial block of queries */
    if (!h || !pad) {
        free(h);
        free(pad);
        return -1;
    }
    for (int64_t q0 = 0; q0 < nq; q0 += QB) {
        int64_t nqb = nq - q0 < QB ? nq - q0 : QB;
        const float *qs = queries + q0 * d;
        if (nqb < QB) {
            memcpy(pad, qs, sizeof(float) * (size_t)(nqb * d));
            qs = pad;
        }
        score_block(qs, itT, n_pad, d, nqb, rows);
        for (int64_t qq = 0; qq < nqb; qq++) {
            int64_t q = q0 + qq;
            const int64_t *excl = excl_indptr ? excl_indices + excl_indptr[q] : NULL;
            int64_t n_excl = excl_indptr ? excl_indptr[q + 1] - excl_indptr[q] : 0;
            select_row(rows + qq * n_pad, n, excl, n_excl, k, out_ids + q * k, out_scores + q * k,
                       mark, h, cap);
        }
    }
    free(h);
    free(pad);
    return 0;
}

/* The same source is built as _fmkernel (any CPU) and, on x86-64, _fmkernel_avx2 (-mavx2). */
#ifdef FMKERNEL_AVX2
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fmkernel_avx2",
                                    "recsys native kernels, AVX2 build (used through ctypes).", -1, NULL};
PyMODINIT_FUNC PyInit__fmkernel_avx2(void) { return PyModule_Create(&module); }
#else
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fmkernel",
                                    "recsys native kernels (used through ctypes).", -1, NULL};
PyMODINIT_FUNC PyInit__fmkernel(void) { return PyModule_Create(&module); }
#endif

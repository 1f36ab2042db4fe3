/* Gibbs updates of a Bayesian factorization machine: the numpy updates of
 * backends/local/_gibbs.py (whose docstring gives the conditionals) in the same order, so both
 * paths give the same chain (to float64 rounding) from the same standard normals, drawn in
 * Python and passed in as `noise`: per feature a row of k + 1, [0] for w, [1 + f] for V[:, f].
 *
 * Layouts: e (n), w (d), V (d * k) row-major, Q_b (n_ent * k) row-major; int64 indices, doubles.
 */
#include <math.h>
#include <stdint.h>

#include "_native.h"

#define MCMC_KERNEL_ABI 3

/* On x86-64 GCC also builds an AVX2 copy of the updates, picked at load time (no FMA). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

API int64_t mcmc_kernel_abi(void) { return MCMC_KERNEL_ABI; }

static double draw(double prec, double lin, double z) {
    /* a normal with precision `prec` and mean lin / prec, from the standard normal z */
    return lin / prec + z / sqrt(prec);
}

/* The rows' design: X as CSR and the relation blocks (index into each block's Q). */
typedef struct {
    const int64_t *row_ptr, *row_col;
    const double *row_val;
    int64_t n_rel;
    const int64_t *const *rel_index;
    double *const *rel_Q;
} rows_t;

/* out[0..k) = sum over the entries of row i of x V plus every relation block's per-entity sum:
 * the row's factor sum q(x_i), or q(x_i) - x_j V_j when R lists the other entries of j's rows */
static inline void row_q(const rows_t *R, int64_t k, const double *V, int64_t i, double *RESTRICT out) {
    for (int64_t f = 0; f < k; f++) out[f] = 0.0;
    for (int64_t p = R->row_ptr[i]; p < R->row_ptr[i + 1]; p++) {
        const double x = R->row_val[p];
        const double *v = V + R->row_col[p] * k;
        for (int64_t f = 0; f < k; f++) out[f] += x * v[f];
    }
    for (int64_t b = 0; b < R->n_rel; b++) {
        const double *Q = R->rel_Q[b] + R->rel_index[b][i] * k;
        for (int64_t f = 0; f < k; f++) out[f] += Q[f];
    }
}

/* sum_r a[r] b[r] with four partial sums (they pipeline); numpy sums in another order, so the
 * paths agree to rounding, not bit for bit */
static inline double dot(const double *RESTRICT a, const double *RESTRICT b, int64_t m) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) {
        s0 += a[r] * b[r];
        s1 += a[r + 1] * b[r + 1];
        s2 += a[r + 2] * b[r + 2];
        s3 += a[r + 3] * b[r + 3];
    }
    for (; r < m; r++) s0 += a[r] * b[r];
    return (s0 + s1) + (s2 + s3);
}

/* el -= d h, then return sum_r el[r] hn[r] (the next factor's sum e h), in one pass */
static inline double axpy_dot(double *RESTRICT el, double d, const double *RESTRICT h, const double *RESTRICT hn, int64_t m) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) {
        el[r] -= d * h[r];
        el[r + 1] -= d * h[r + 1];
        el[r + 2] -= d * h[r + 2];
        el[r + 3] -= d * h[r + 3];
        s0 += el[r] * hn[r];
        s1 += el[r + 1] * hn[r + 1];
        s2 += el[r + 2] * hn[r + 2];
        s3 += el[r + 3] * hn[r + 3];
    }
    for (; r < m; r++) {
        el[r] -= d * h[r];
        s0 += el[r] * hn[r];
    }
    return (s0 + s1) + (s2 + s3);
}

/* Update the per-row features `feats` (all of prior group g) one after the other: w_j, then
 * V_j0 .. V_j,k-1, then write back the residuals of its rows (in a one-hot group, the same as all
 * at once). Feature t has entries ent_ptr[t] .. ent_ptr[t+1]: design row ent_row[p], value
 * ent_val[p]; row p of R holds the *other* entries of that design row, so h = x (sum of R's row
 * p), read sequentially. Scratch: el (longest column), H (longest column * k), s2v, qr (k each). */
API MULTIVERSION void mcmc_update_columns(
    int64_t k, double *RESTRICT e, double *RESTRICT w, double *RESTRICT V,
    const int64_t *row_ptr, const int64_t *row_col, const double *row_val,
    int64_t n_rel, const int64_t *const *rel_index, double *const *rel_Q,
    const int64_t *ent_ptr, const int64_t *ent_row, const double *ent_val,
    const int64_t *feats, int64_t n_feats, int64_t g,
    double alpha, const double *mu_w, const double *lam_w, const double *mu_v, const double *lam_v,
    const double *noise, double *RESTRICT el, double *RESTRICT H, double *RESTRICT s2v, double *RESTRICT qr)
{
    const rows_t R = {row_ptr, row_col, row_val, n_rel, rel_index, rel_Q};
    for (int64_t t = 0; t < n_feats; t++) {
        const int64_t j = feats[t];
        const int64_t p0 = ent_ptr[t], m = ent_ptr[t + 1] - p0;
        const int64_t *rows = ent_row + p0;
        const double *x = ent_val + p0;
        const double *z = noise + t * (k + 1);
        double *RESTRICT vj = V + j * k;
        for (int64_t r = 0; r < m; r++) el[r] = e[rows[r]];
        const double s2 = dot(x, x, m), se = dot(el, x, m);
        const double prec = lam_w[g] + alpha * s2;
        const double wn = draw(prec, alpha * (se + w[j] * s2) + lam_w[g] * mu_w[g], z[0]);
        double d = wn - w[j];
        w[j] = wn;
        /* h and sum h^2 of every factor (fixed while V_j changes); then one pass per factor
         * applies its update to the residuals and sums e h for the next */
        for (int64_t f = 0; f < k; f++) s2v[f] = 0.0;
        for (int64_t r = 0; r < m; r++) {
            el[r] -= d * x[r];
            row_q(&R, k, V, p0 + r, qr);
            const double xr = x[r];
            for (int64_t f = 0; f < k; f++) {
                const double h = xr * qr[f];
                H[f * m + r] = h;
                s2v[f] += h * h;
            }
        }
        double sef = k ? dot(el, H, m) : 0.0;
        for (int64_t f = 0; f < k; f++) {
            const double lam = lam_v[g * k + f];
            const double pv = lam + alpha * s2v[f];
            const double vn = draw(pv, alpha * (sef + vj[f] * s2v[f]) + lam * mu_v[g * k + f], z[1 + f]);
            d = vn - vj[f];
            vj[f] = vn;
            const double *h = H + f * m;
            if (f + 1 < k) {
                sef = axpy_dot(el, d, h, H + (f + 1) * m, m);
            } else {
                for (int64_t r = 0; r < m; r++) el[r] -= d * h[r];
            }
        }
        for (int64_t r = 0; r < m; r++) e[rows[r]] = el[r];
    }
}

/* Update the columns of relation block `self` (0-based): design row n carries row index[n] of
 * a table T (n_ent x width, CSC); sums over design rows are kept per entity, as in _gibbs.py's
 * update_relation (the caches follow myFM's). All w_j in column order, then for each factor f
 * all V_jf. w and V point at the block's first column; Vall is the whole V. cnt[m]: design rows
 * of entity m; Q (n_ent * k): the block's Q_mf = sum_j T_mj V_jf, recomputed here. Scratch: rec
 * (n_ent * 8: an entity's sums in one cache line), Qold, Dold (n_ent each), r (n). */
enum { R_Q, R_CNT, R_S1, R_S2, R_E, R_G, R_D, R_WIDTH = 8 };

API MULTIVERSION void mcmc_update_relation(
    int64_t n, int64_t k, double *e, const double *Vall,
    const int64_t *row_ptr, const int64_t *row_col, const double *row_val,
    int64_t n_rel, const int64_t *const *rel_index, double *const *rel_Q, int64_t self,
    int64_t n_ent, const double *cnt,
    int64_t width, const int64_t *tcol_ptr, const int64_t *tcol_ent, const double *tcol_val,
    double *w, double *V, const int64_t *col_group,
    double alpha, const double *mu_w, const double *lam_w, const double *mu_v, const double *lam_v,
    const double *noise, double *rec, double *Qold, double *Dold, double *r)
{
    const int64_t *index = rel_index[self];
    double *Q = rel_Q[self];

    /* ---- linear weights: E = sum of the residuals of the entity's rows, L = T_m . w (in R_Q) */
    for (int64_t m = 0; m < n_ent; m++) {
        double *a = rec + m * R_WIDTH;
        a[R_Q] = 0.0;
        a[R_E] = 0.0;
        a[R_CNT] = cnt[m];
    }
    for (int64_t i = 0; i < n; i++) rec[index[i] * R_WIDTH + R_E] += e[i];
    for (int64_t j = 0; j < width; j++)
        for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) rec[tcol_ent[p] * R_WIDTH + R_Q] += tcol_val[p] * w[j];
    for (int64_t m = 0; m < n_ent; m++) Qold[m] = rec[m * R_WIDTH + R_Q];
    for (int64_t j = 0; j < width; j++) {
        const int64_t g = col_group[j];
        double s2 = 0.0, se = 0.0;
        for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) {
            const double *a = rec + tcol_ent[p] * R_WIDTH;
            const double x = tcol_val[p];
            s2 += x * x * a[R_CNT];
            se += x * a[R_E];
        }
        const double prec = lam_w[g] + alpha * s2;
        const double wn = draw(prec, alpha * (se + w[j] * s2) + lam_w[g] * mu_w[g], noise[j * (k + 1)]);
        const double d = wn - w[j];
        w[j] = wn;
        for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) {
            double *a = rec + tcol_ent[p] * R_WIDTH;
            const double x = tcol_val[p];
            a[R_E] -= d * x * a[R_CNT];
            a[R_Q] += d * x;
        }
    }
    for (int64_t i = 0; i < n; i++) e[i] -= rec[index[i] * R_WIDTH + R_Q] - Qold[index[i]];

    /* ---- factors, one column f at a time */
    for (int64_t f = 0; f < k; f++) {
        for (int64_t m = 0; m < n_ent; m++) {
            double *a = rec + m * R_WIDTH;
            a[R_Q] = a[R_D] = a[R_E] = a[R_G] = a[R_S1] = a[R_S2] = 0.0;
        }
        for (int64_t j = 0; j < width; j++) {
            const double v = V[j * k + f];
            for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) {
                double *a = rec + tcol_ent[p] * R_WIDTH;
                const double x = tcol_val[p];
                a[R_Q] += x * v;
                a[R_D] += x * x * v * v;
            }
        }
        /* r_n: the row's factor sum without this block; entity sums of r, r^2, e, e r */
        for (int64_t i = 0; i < n; i++) {
            double *a = rec + index[i] * R_WIDTH;
            double ri = 0.0;
            for (int64_t p = row_ptr[i]; p < row_ptr[i + 1]; p++) ri += row_val[p] * Vall[row_col[p] * k + f];
            for (int64_t b = 0; b < n_rel; b++)
                if (b != self) ri += rel_Q[b][rel_index[b][i] * k + f];
            r[i] = ri;
            a[R_S1] += ri;
            a[R_S2] += ri * ri;
            a[R_E] += e[i];
            a[R_G] += e[i] * ri;
        }
        for (int64_t m = 0; m < n_ent; m++) {
            Qold[m] = rec[m * R_WIDTH + R_Q];
            Dold[m] = rec[m * R_WIDTH + R_D];
        }
        for (int64_t j = 0; j < width; j++) {
            const int64_t g = col_group[j];
            const double v = V[j * k + f];
            double s2 = 0.0, se = 0.0;
            for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) {
                const double *a = rec + tcol_ent[p] * R_WIDTH;
                const double x = tcol_val[p];
                const double c = a[R_Q] - x * v; /* the block's sum without this column */
                s2 += x * x * (a[R_CNT] * c * c + 2.0 * c * a[R_S1] + a[R_S2]);
                se += x * (c * a[R_E] + a[R_G]);
            }
            const double lam = lam_v[g * k + f];
            const double prec = lam + alpha * s2;
            const double vn = draw(prec, alpha * (se + v * s2) + lam * mu_v[g * k + f], noise[j * (k + 1) + 1 + f]);
            const double d = vn - v;
            V[j * k + f] = vn;
            for (int64_t p = tcol_ptr[j]; p < tcol_ptr[j + 1]; p++) {
                double *a = rec + tcol_ent[p] * R_WIDTH;
                const double x = tcol_val[p];
                const double c = a[R_Q] - x * v;
                a[R_E] -= d * x * (a[R_CNT] * c + a[R_S1]);
                a[R_G] -= d * x * (c * a[R_S1] + a[R_S2]);
                a[R_Q] += d * x;
                a[R_D] += x * x * (vn * vn - v * v);
            }
        }
        /* the block's part of y for factor f is 1/2 (Q^2 - D) + Q r: apply its change */
        for (int64_t m = 0; m < n_ent; m++) Q[m * k + f] = rec[m * R_WIDTH + R_Q];
        for (int64_t i = 0; i < n; i++) {
            const int64_t m = index[i];
            const double *a = rec + m * R_WIDTH;
            const double dq = a[R_Q] - Qold[m];
            const double da = 0.5 * (a[R_Q] * a[R_Q] - a[R_D]) - 0.5 * (Qold[m] * Qold[m] - Dold[m]);
            e[i] -= da + dq * r[i];
        }
    }
}

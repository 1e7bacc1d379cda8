/* CPU kernels for the TopK SAE step, compiled at first use by kernels.py (plain C, no
   Python or torch headers; called through ctypes). Each splits its work over `threads`
   OpenMP threads: loaded into a process where torch has loaded its libgomp.so.1, the
   kernels share torch's thread pool (whose idle workers spin for a while after each torch
   op, so threads of our own would fight them for the cores). Same results as the torch
   fallbacks in selection.py, topk.py and unit_norm.py. */

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else  /* built without OpenMP: one thread */
static int omp_get_num_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

/* Move the k largest of v[0..n) (with their ix) to the front: a Hoare quickselect. */
static void top_front(float *v, int64_t *ix, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[(lo + hi) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i <= j) {
                float t = v[i]; v[i] = v[j]; v[j] = t;
                int64_t u = ix[i]; ix[i] = ix[j]; ix[j] = u;
                i++; j--;
            }
        }
        if (want <= j) hi = j; else if (want >= i) lo = i; else break;
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    float part[16] = {0};   /* 16 partial sums: a vectorised reduction without -ffast-math */
    int64_t c = 0;
    for (; c + 16 <= d; c += 16)
        for (int u = 0; u < 16; u++) part[u] += a[c + u] * b[c + u];
    float acc = 0.0f;
    for (; c < d; c++) acc += a[c] * b[c];
    for (int u = 0; u < 16; u++) acc += part[u];
    return acc;
}

/* A t with at least k of the nb block maxima mx >= t, as high as 12 bisection steps find
   between their minimum and maximum: a lower bound of the k-th largest entry. */
static float block_bound(const float *mx, int64_t nb, int64_t k) {
    float lo = mx[0], hi = mx[0];
    for (int64_t c = 0; c < nb; c++) {
        lo = mx[c] < lo ? mx[c] : lo;
        hi = mx[c] > hi ? mx[c] : hi;
    }
    for (int step = 0; step < 12; step++) {
        float mid = 0.5f * (lo + hi);
        int64_t count = 0;
        for (int64_t c = 0; c < nb; c++) count += mx[c] >= mid;
        if (count >= k) lo = mid; else hi = mid;
    }
    return lo;
}

/* Top k of one row of d entries (unordered). Block c holds columns c, c + nb, c + 2 nb, ...,
   so the nb block maxima are an elementwise max of contiguous slices (vectorised). Any t
   with at least k block maxima >= t is a lower bound of the k-th largest entry (those
   blocks hold k distinct entries >= t), so every top-k entry is >= t and lies in a block
   whose maximum is >= t. t comes from a bisection on the maxima (count >= k kept); the
   entries >= t of those blocks (about k of them) are the candidates. Branch-free where
   most tests fail. */
static int topk_row(const float *restrict row, int64_t d, int64_t nb, int64_t k, float *out_v, int64_t *out_i,
                     float *restrict mx, int64_t *restrict blocks, float *cv, int64_t *ci) {
    int64_t per = d / nb;
    memcpy(mx, row, nb * sizeof(float));
    for (int64_t r = 1; r < per; r++) {
        const float *restrict p = row + r * nb;
        for (int64_t c = 0; c < nb; c++) mx[c] = (p[c] > mx[c] || p[c] != p[c]) ? p[c] : mx[c];  /* NaN sticks */
    }
    int nan = 0;
    for (int64_t c = 0; c < nb; c++) nan |= mx[c] != mx[c];
    if (nan) return 1;  /* torch.topk ranks NaN first: the caller falls back to it */
    float lo = block_bound(mx, nb, k);
    int64_t nblk = 0, n = 0;
    for (int64_t c = 0; c < nb; c++) { blocks[nblk] = c; nblk += mx[c] >= lo; }
    for (int64_t b = 0; b < nblk; b++) {
        int64_t c = blocks[b];
        for (int64_t r = 0; r < per; r++) {
            float x = row[r * nb + c];
            cv[n] = x; ci[n] = r * nb + c; n += x >= lo;
        }
    }
    if (n < k) return 1;  /* cannot happen (each kept block has an entry >= lo); a guard */
    top_front(cv, ci, n, k);
    memcpy(out_v, cv, k * sizeof(float));
    memcpy(out_i, ci, k * sizeof(int64_t));
    return 0;
}

/* pre [n, d] row-major float32; nb divides d, k <= nb; bias [d] or NULL. Adds bias to
   every row of pre in place, then selects: values [n, k], indices [n, k] int64. Returns the
   number of rows it could not select (NaN in them, or no memory): then values are void, pre
   holds pre + bias all the same, and the caller selects with torch. */
int64_t topk_rows(float *pre, const float *bias, int64_t n, int64_t d, int64_t nb, int64_t k, float *values,
                  int64_t *indices, int threads) {
    int64_t failed = 0;
    (void)threads;  /* unused without OpenMP */
    #pragma omp parallel num_threads(threads) reduction(+:failed)
    {
        float *mx = malloc((nb + d + 1) * sizeof(float)), *cv = mx + nb;
        int64_t *blocks = malloc((nb + d + 1) * sizeof(int64_t)), *ci = blocks + nb;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            float *restrict row = pre + r * d;
            if (bias)
                for (int64_t j = 0; j < d; j++) row[j] += bias[j];
            failed += (!mx || !blocks) ? 1 : topk_row(row, d, nb, k, values + r * k, indices + r * k, mx, blocks, cv, ci);
        }
        free(mx);
        free(blocks);
    }
    return failed;
}

/* One more tile of a row's top k: pre [n, d] (columns col0.. of the full width), bias [d]
   or NULL. values/indices [n, k] hold each row's top k of the tiles before, floor [n] their
   smallest value. Only entries above the floor can enter, and after the first few tiles a
   row has few: each chunk of MERGE_CHUNK entries is first tested as a whole (vectorised;
   16 and 256 measured no better), the entries of a chunk that passes join the row's k
   current ones and a quickselect keeps the top k. pre is not written. Returns the number of rows with NaN (torch ranks NaN
   first: the caller selects those with torch) or without memory; their state is void. */
#define MERGE_CHUNK 64
int64_t topk_merge_rows(const float *pre, const float *bias, int64_t n, int64_t d, int64_t col0, int64_t k,
                        float *values, int64_t *indices, float *floor, int threads) {
    int64_t failed = 0;
    (void)threads;
    #pragma omp parallel num_threads(threads) reduction(+:failed)
    {
        float *cv = malloc((k + d + 1) * sizeof(float));
        int64_t *ci = malloc((k + d + 1) * sizeof(int64_t));
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const float *restrict row = pre + r * d;
            float low = floor[r];
            int64_t m = 0;
            int nan = 0;
            for (int64_t c0 = 0; c0 < d; c0 += MERGE_CHUNK) {
                int64_t c1 = c0 + MERGE_CHUNK < d ? c0 + MERGE_CHUNK : d;
                int pass = 0;
                for (int64_t c = c0; c < c1; c++) pass |= !((bias ? row[c] + bias[c] : row[c]) <= low);  /* NaN passes */
                if (!pass || !cv || !ci) continue;
                for (int64_t c = c0; c < c1; c++) {
                    float x = bias ? row[c] + bias[c] : row[c];
                    nan |= x != x;
                    cv[k + m] = x; ci[k + m] = col0 + c; m += x > low;
                }
            }
            if (!cv || !ci || nan) { failed++; continue; }
            if (m == 0) continue;
            float *v = values + r * k;
            int64_t *ix = indices + r * k;
            memcpy(cv, v, k * sizeof(float));
            memcpy(ci, ix, k * sizeof(int64_t));
            top_front(cv, ci, k + m, k);
            memcpy(v, cv, k * sizeof(float));
            memcpy(ix, ci, k * sizeof(int64_t));
            low = cv[0];
            for (int64_t j = 1; j < k; j++) low = cv[j] < low ? cv[j] : low;
            floor[r] = low;
        }
        free(cv);
        free(ci);
    }
    return failed;
}

/* Rows lo..hi of G^T x into buf [hi - lo, d]: g[b, j] x[b] added at row idx[b, j]. The
   pairs are visited in batch order: x[b] stays in L1 for its k pairs, and a thread's rows
   of the output (half of 4 MB at width 4096, d 256, 2 threads) stay in its L2. (Bucketing
   the pairs by row instead reads x[b] at random: measured 4x slower.) */
static void scatter_range(float *restrict buf, int64_t lo, int64_t hi, const int64_t *idx, const float *g,
                          const float *x, int64_t n, int64_t k, int64_t d) {
    memset(buf, 0, (hi - lo) * d * sizeof(float));
    for (int64_t b = 0; b < n; b++) {
        const float *restrict xb = x + b * d;
        for (int64_t j = 0; j < k; j++) {
            int64_t row = idx[b * k + j];
            if (row < lo || row >= hi) continue;
            float gv = g[b * k + j];
            float *restrict o = buf + (row - lo) * d;
            for (int64_t c = 0; c < d; c++) o[c] += gv * xb[c];
        }
    }
}

/* x^T G [d, rows] for the sparse [n, rows] matrix G holding g [n, k] at columns idx [n, k],
   x [n, d]: column r of out is the sum of g[b, j] x[b] over the pairs with idx[b, j] = r
   (the gradient of W_enc [d_in, d_sae] in its own layout). Threads own disjoint column
   ranges; each sums its columns as rows of a buffer, then writes them down in blocks of 16
   (one cache line of each output row). `scratch`, when not NULL, holds those rows (rows x d
   floats). Returns 1 when out of memory (out is then void). */
int scatter_columns(float *out, float *scratch, int64_t rows, const int64_t *idx, const float *g, const float *x,
                    int64_t n, int64_t k, int64_t d, int threads) {
    int failed = 0;
    (void)threads;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = rows * me / parts, hi = rows * (me + 1) / parts;
        /* scratch (rows x d floats, the caller's, reused between steps) or a buffer of our own */
        float *buf = scratch ? scratch + lo * d : malloc(((hi - lo) * d + 1) * sizeof(float));
        if (!buf) {
            failed = 1;
        } else {
            scatter_range(buf, lo, hi, idx, g, x, n, k, d);
            for (int64_t r0 = lo; r0 < hi; r0 += 16) {
                int64_t r1 = r0 + 16 < hi ? r0 + 16 : hi;
                for (int64_t c = 0; c < d; c++)
                    for (int64_t r = r0; r < r1; r++) out[c * rows + r] = buf[(r - lo) * d + c];
            }
        }
        if (!scratch) free(buf);
    }
    return failed;
}

/* The decoder's backward, e the output gradient [n, d], w the decoder [rows, d]:
   grad_v[b, j] = e[b] . w[idx[b, j]] (the selected values' gradient) and grad_w[r] = sum of
   v[b, j] e[b] over the pairs with idx[b, j] = r (grad_w [rows, d], overwritten); either
   output may be NULL. Threads own row ranges of w and grad_w (see scatter_range) and make
   two passes in batch order, one per output: a thread's rows of w, then of grad_w, fit
   its L2 where both at once would not (measured 1.3x slower fused). */
void decode_backward(float *grad_v, float *grad_w, const int64_t *idx, const float *v, const float *e, const float *w,
                     int64_t n, int64_t k, int64_t d, int64_t rows, int threads) {
    (void)threads;
    #pragma omp parallel num_threads(threads)
    {
        int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = rows * me / parts, hi = rows * (me + 1) / parts;
        for (int64_t b = 0; grad_v && b < n; b++) {
            const float *restrict eb = e + b * d;
            for (int64_t j = 0; j < k; j++) {
                int64_t row = idx[b * k + j];
                if (row < lo || row >= hi) continue;
                grad_v[b * k + j] = dot(eb, w + row * d, d);
            }
        }
        if (grad_w)
            scatter_range(grad_w + lo * d, lo, hi, idx, v, e, n, k, d);
    }
}

/* W [d, s] (W_enc's layout) -> wt [s, d], its transpose, and norms [s], the norm of each
   column of W: what the exact dots of bf16_candidates and candidate_dots read. Tiles of 16 x 16. */
void transpose_norms(const float *w, float *wt, float *norms, int64_t d, int64_t s, int threads) {
    (void)threads;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c0 = 0; c0 < s; c0 += 16) {
        int64_t c1 = c0 + 16 < s ? c0 + 16 : s;
        for (int64_t r0 = 0; r0 < d; r0 += 16) {
            int64_t r1 = r0 + 16 < d ? r0 + 16 : d;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++) wt[c * d + r] = w[r * s + c];
        }
        for (int64_t c = c0; c < c1; c++) {
            float sq = 0.0f;
            for (int64_t r = 0; r < d; r++) sq += wt[c * d + r] * wt[c * d + r];
            norms[c] = sqrtf(sq);
        }
    }
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The exact top k of each row of x W + bias, from a bfloat16 GEMM (4x the fp32 rate on
   CPUs with AMX) and fp32 dots for a few candidates, in three passes (kernels.py,
   encode_topk_bf16, runs them):

   bf16_candidates, per row: pre [n, s] holds the bf16 products of the bf16-rounded x and
   W; each differs from the fp32 dot x_b . w_j by at most err = xnorm[b] cw[j] + cb[j] (cw:
   a multiple of |w_j| covering the roundings, by Cauchy-Schwarz; cb: the bias's rounding).
   With a = pre + bias, a t below the k-th largest lower bound a - err (block_bound
   on the block maxima of the lower bounds) is below the k-th largest exact value,
   so every entry of the exact top k has its upper bound a + err >= t: those are the row's
   candidates (about 2k), into cand [n, cap]. A row with more than cap gets its exact dots
   and selection at once (random reads of wt: slower, rare) and count -1.

   candidate_dots: the exact values x_b . wt[j] + bias[j] of all candidates, threads owning
   ranges of j so that each reads its part of wt [s, d] (W transposed) from its own L2.

   select_candidates, per row: the k largest exact values among the candidates: the top k
   of the fp32 values, whatever the bf16 rounding did. */
static int64_t candidates_of(const uint16_t *p, const float *bias, float xn, const float *cw, const float *cb,
                             int64_t s, int64_t nb, int64_t k, float *up, float *mx, float *mu,
                             int64_t *blocks, int64_t *out, int64_t cap, float *t) {
    int nan = xn != xn;
    int64_t per = s / nb;
    for (int64_t c = 0; c < nb; c++) mx[c] = mu[c] = -INFINITY;
    for (int64_t q = 0; q < per; q++) {   /* bounds and block maxima in one pass; only up is kept */
        const uint16_t *restrict pq = p + q * nb;
        const float *restrict bq = bias + q * nb, *restrict wq = cw + q * nb, *restrict cq = cb + q * nb;
        float *restrict uq = up + q * nb;
        for (int64_t c = 0; c < nb; c++) {
            float a = bf16_to_float(pq[c]) + bq[c], e = xn * wq[c] + cq[c], l = a - e, u = a + e;
            uq[c] = u;
            mx[c] = l > mx[c] ? l : mx[c];
            mu[c] = u > mu[c] ? u : mu[c];
            nan |= a != a;
        }
    }
    if (nan) return -2;
    float t_lo = block_bound(mx, nb, k);
    int64_t nblk = 0, m = 0;   /* only blocks whose largest upper bound reaches t hold candidates */
    for (int64_t c = 0; c < nb; c++) { blocks[nblk] = c; nblk += mu[c] >= t_lo; }
    for (int64_t i = 0; i < nblk; i++)
        for (int64_t q = 0; q < per; q++) {
            int64_t j = q * nb + blocks[i];
            if (m < cap) out[m] = j;   /* the count goes on past cap */
            m += up[j] >= t_lo;
        }
    *t = t_lo;
    return m;
}

int64_t bf16_candidates(const uint16_t *pre, const float *bias, const float *xnorm, const float *cw, const float *cb,
                        const float *x, const float *wt, int64_t n, int64_t s, int64_t d, int64_t nb, int64_t k,
                        int64_t cap, int64_t *cand, int64_t *count, float *values, int64_t *indices, int threads) {
    int64_t failed = 0;
    (void)threads;
    #pragma omp parallel num_threads(threads) reduction(+:failed)
    {
        float *buf = malloc((2 * s + 2 * nb + 2) * sizeof(float));  /* up, 2 x block maxima, exact values */
        int64_t *all = malloc((s + nb + 1) * sizeof(int64_t)), *blocks = all + s;
        #pragma omp for schedule(static)
        for (int64_t row = 0; row < n; row++) {
            if (!buf || !all) { failed++; continue; }
            float *up = buf, *mx = buf + s, *mu = mx + nb, *cv = mu + nb;
            float t;
            int64_t m = candidates_of(pre + row * s, bias, xnorm[row], cw, cb, s, nb, k, up, mx, mu, blocks,
                                      cand + row * cap, cap, &t);
            count[row] = m;
            if (m == -2 || (m >= 0 && m < k)) { failed++; continue; }   /* NaN (or, impossibly, too few) */
            if (m <= cap) continue;
            int64_t got = 0;                               /* more than cap: all of them, here */
            for (int64_t j = 0; j < s; j++) { all[got] = j; got += up[j] >= t; }
            const float *xb = x + row * d;
            for (int64_t q = 0; q < got; q++) cv[q] = dot(xb, wt + all[q] * d, d) + bias[all[q]];
            top_front(cv, all, got, k);
            memcpy(values + row * k, cv, k * sizeof(float));
            memcpy(indices + row * k, all, k * sizeof(int64_t));
            count[row] = -1;
        }
        free(buf);
        free(all);
    }
    return failed;
}

/* cv[b, q] = x_b . wt[cand[b, q]] + bias[...] for the count[b] candidates of each row (rows
   with count -1 are done already); threads own ranges of wt's rows (see bf16_candidates). */
void candidate_dots(const int64_t *cand, const int64_t *count, int64_t cap, const float *x, const float *wt,
                    const float *bias, int64_t n, int64_t d, int64_t s, float *cv, int threads) {
    (void)threads;
    #pragma omp parallel num_threads(threads)
    {
        int64_t parts = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = s * me / parts, hi = s * (me + 1) / parts;
        for (int64_t b = 0; b < n; b++) {
            const float *xb = x + b * d;
            for (int64_t q = 0; q < count[b]; q++) {
                int64_t j = cand[b * cap + q];
                if (j >= lo && j < hi) cv[b * cap + q] = dot(xb, wt + j * d, d) + bias[j];
            }
        }
    }
}

/* The k largest of each row's candidates (exact values cv, columns cand) into values and
   indices; rows with count -1 were written by bf16_candidates. */
void select_candidates(float *cv, int64_t *cand, const int64_t *count, int64_t cap, int64_t n, int64_t k, float *values,
                       int64_t *indices, int threads) {
    (void)threads;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        if (count[b] < 0) continue;
        top_front(cv + b * cap, cand + b * cap, count[b], k);
        memcpy(values + b * k, cv + b * cap, k * sizeof(float));
        memcpy(indices + b * k, cand + b * cap, k * sizeof(int64_t));
    }
}

/* Lazy Adam (lazy_adam.py): torch.optim.Adam's update at the latents `rows` only. The
   parameter is viewed as [outer, width, inner] with latents along `width` (W_dec: 1 x d_sae x
   d; W_enc: d_in x d_sae x 1; b_enc: 1 x d_sae x 1); gradient and moments share its layout.
   `rows` is sorted and unique (lazy_adam.touched_latents). W_dec's rows are contiguous;
   W_enc's latents are columns, walked as runs of consecutive latents when few, as whole rows
   with a blend when many (then the work is dense Adam's, never more). */
static inline void adam_span(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                             int64_t n, float a1, float b2, float a2, float eps, float step_size, float inv_bc2) {
    for (int64_t t = 0; t < n; t++) {
        const float gt = g[t];
        const float mt = m[t] + a1 * (gt - m[t]);
        const float vt = v[t] * b2 + a2 * gt * gt;
        m[t] = mt;
        v[t] = vt;
        p[t] -= step_size * mt / (sqrtf(vt) * inv_bc2 + eps);
    }
}

static inline float select_bits(uint32_t mask, float a, float b) {
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    x = (x & mask) | (y & ~mask);
    memcpy(&a, &x, 4);
    return a;
}

void adam_rows(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
               const int64_t *rows, int64_t nrows, int64_t outer, int64_t width, int64_t inner, float b1,
               float b2, float eps, float step_size, float bc2_sqrt, int threads) {
    const float a1 = 1.0f - b1, a2 = 1.0f - b2, inv_bc2 = 1.0f / bc2_sqrt;
    if (inner == 1 && nrows * 8 > width) {
        /* Many columns: nearly every cache line of a W_enc row holds one, so walk whole rows
           and keep the untouched entries by a bitwise select (it vectorises where a ?: does
           not): they are stored back bit for bit. */
        uint32_t *keep = calloc(width, sizeof(uint32_t));
        if (!keep) return;
        for (int64_t j = 0; j < nrows; j++) keep[rows[j]] = 0xffffffffu;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t o = 0; o < outer; o++) {
            float *restrict po = p + o * width, *restrict mo = m + o * width, *restrict vo = v + o * width;
            const float *restrict go = g + o * width;
            for (int64_t t = 0; t < width; t++) {
                const float gt = go[t], m0 = mo[t], v0 = vo[t], p0 = po[t];
                const float mt = m0 + a1 * (gt - m0);
                const float vt = v0 * b2 + a2 * gt * gt;
                const float pt = p0 - step_size * mt / (sqrtf(vt) * inv_bc2 + eps);
                mo[t] = select_bits(keep[t], mt, m0);
                vo[t] = select_bits(keep[t], vt, v0);
                po[t] = select_bits(keep[t], pt, p0);
            }
        }
        free(keep);
        return;
    }
    if (inner == 1) {
        /* Few columns: runs of consecutive latents, each one contiguous stretch of a row. */
        int64_t *start = malloc(2 * (nrows + 1) * sizeof(int64_t)), *len, nruns = 0;
        if (!start) return;
        len = start + nrows + 1;
        for (int64_t j = 0; j < nrows; j++) {
            if (nruns && rows[j] == start[nruns - 1] + len[nruns - 1]) {
                len[nruns - 1]++;
            } else {
                start[nruns] = rows[j];
                len[nruns++] = 1;
            }
        }
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t o = 0; o < outer; o++) {
            const int64_t off = o * width;
            for (int64_t r = 0; r < nruns; r++) {
                const int64_t s = off + start[r];
                adam_span(p + s, g + s, m + s, v + s, len[r], a1, b2, a2, eps, step_size, inv_bc2);
            }
        }
        free(start);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < nrows; j++) {
        const int64_t s = rows[j] * inner;
        adam_span(p + s, g + s, m + s, v + s, inner, a1, b2, a2, eps, step_size, inv_bc2);
    }
}

/* The unit-norm decoder's two row operations at the touched rows only (unit_norm.py):
   project_rows removes each gradient row's component along its decoder row
   (g -= (g.w / w.w) w), normalise_rows rescales each decoder row to unit norm. */
void project_rows(const float *restrict w, float *restrict g, const int64_t *rows, int64_t nrows, int64_t d,
                  int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < nrows; j++) {
        const float *wr = w + rows[j] * d;
        float *gr = g + rows[j] * d;
        float gw = 0.0f, ww = 0.0f;
#pragma omp simd reduction(+ : gw, ww)
        for (int64_t t = 0; t < d; t++) {
            gw += gr[t] * wr[t];
            ww += wr[t] * wr[t];
        }
        const float coef = gw / (ww > 1e-12f ? ww : 1e-12f);
        for (int64_t t = 0; t < d; t++) gr[t] -= coef * wr[t];
    }
}

void normalise_rows(float *restrict w, const int64_t *rows, int64_t nrows, int64_t d, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < nrows; j++) {
        float *wr = w + rows[j] * d;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t t = 0; t < d; t++) ss += wr[t] * wr[t];
        const float norm = sqrtf(ss);
        const float inv = norm > 1e-12f ? norm : 1e-12f;
        for (int64_t t = 0; t < d; t++) wr[t] /= inv;
    }
}

/* Fused CPU kernels for training (and evaluating) the Transformer: attention and LayerNorm/RMSNorm,
 * forward and backward.
 *
 * Why this exists: at lab sizes (width 128, 64-token windows) PyTorch's CPU kernels for these ops
 * cost far more than their arithmetic - attention runs through ~10 operator calls per layer
 * (dtype copies, split, transposes, flash attention, a concatenation in the backward), and a bf16
 * LayerNorm's backward is several passes. Each kernel here is
 * one pass over its data, in fp32 arithmetic on fp32 or bf16 tensors, parallel over PyTorch's own
 * OpenMP threads (the library links the libgomp PyTorch loaded, so no second thread pool fights it).
 *
 * Layouts (row-major, as PyTorch stores them):
 *   qkv (B, T, (H + 2*KV) * D): [q heads | k heads | v heads], head h at [h*D, (h+1)*D); query head h
 *       reads kv head h / (H / KV) (grouped-query attention).
 *   y, dy (B, T, H*D); lse (B, H, T) fp32: each attention row's log-sum-exp, saved by the forward so
 *       the backward recomputes the probabilities instead of storing a (B, H, T, T) matrix.
 * Element type of tensors is fp32 (bf = 0) or bf16 (bf = 1); bf16 results are rounded to nearest even.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));
typedef uint32_t v16u __attribute__((vector_size(64), aligned(4)));
typedef uint16_t v16h __attribute__((vector_size(32), aligned(2)));
#define V0 ((v16){0})

static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
#ifdef __AVX512F__
#include <immintrin.h>
static inline float hsum(v16 v) { return _mm512_reduce_add_ps((__m512)v); }
static inline float hmax(v16 v) { return _mm512_reduce_max_ps((__m512)v); }
#else
static inline float hsum(v16 v) {
    float s = 0.f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}
static inline float hmax(v16 v) {
    float m = v[0];
    for (int i = 1; i < 16; i++) m = v[i] > m ? v[i] : m;
    return m;
}
#endif

/* ---- loads and stores of fp32 or bf16 ---- */
static inline float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float get(const void *p, size_t i, int bf) {
    return bf ? bf2f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static inline void put(void *p, size_t i, float v, int bf) {
    if (bf) ((uint16_t *)p)[i] = f2bf(v);
    else ((float *)p)[i] = v;
}
static inline v16 get16(const void *p, size_t i, int bf) {
    if (!bf) return *(const v16 *)((const float *)p + i);
    v16h h = *(const v16h *)((const uint16_t *)p + i);
    return (v16)(__builtin_convertvector(h, v16u) << 16);
}
static inline void put16(void *p, size_t i, v16 v, int bf) {
    if (!bf) {
        *(v16 *)((float *)p + i) = v;
        return;
    }
    v16u u = (v16u)v;
    v16u r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    v16i nan = (v16i)(u & 0x7fffffffu) > 0x7f800000;
    r = (v16u)(((v16i)r & ~nan) | ((v16i)((u >> 16) | 0x40u) & nan));
    *(v16h *)((uint16_t *)p + i) = __builtin_convertvector(r, v16h);
}
/* n (< 16) elements, the rest of the vector zero. */
static inline v16 get_part(const void *p, size_t i, int n, int bf) {
    v16 v = V0;
    for (int k = 0; k < n; k++) v[k] = get(p, i + k, bf);
    return v;
}
static inline void put_part(void *p, size_t i, v16 v, int n, int bf) {
    for (int k = 0; k < n; k++) put(p, i + k, v[k], bf);
}

/* exp on sixteen lanes (Cephes' expf scheme: 2^n * e^r, |r| <= ln2/2, degree-6 polynomial; ~1 ulp);
 * below -87 it returns 0. */
static inline v16 vexp(v16 x) {
    const float hi = 88.3762626647949f;
    v16i under = x < -87.f;
    x = vsel(x > hi, V0 + hi, x);
    x = vsel(under, V0, x);
    v16 fx = x * 1.44269504088896341f;
    v16i n = __builtin_convertvector(fx + vsel(fx < 0, V0 - 0.5f, V0 + 0.5f), v16i);
    v16 nf = __builtin_convertvector(n, v16);
    v16 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    return vsel(under, V0, p * (v16)((n + 127) << 23));
}

/* ================================== LayerNorm and RMSNorm ================================== */

/* A row of C elements into fp32 (padded with zeros to a multiple of 16), and back. */
static inline void row_in(const void *src, size_t o, int C, int bf, float *dst) {
    int c = 0;
    for (; c + 16 <= C; c += 16) *(v16 *)(dst + c) = get16(src, o + c, bf);
    if (c < C) *(v16 *)(dst + c) = get_part(src, o + c, C - c, bf);
}
static inline void row_out(void *dst, size_t o, int C, int bf, const float *src) {
    int c = 0;
    for (; c + 16 <= C; c += 16) put16(dst, o + c, *(const v16 *)(src + c), bf);
    if (c < C) put_part(dst, o + c, *(const v16 *)(src + c), C - c, bf);
}

/* Rows of C: y = (x - mean) * rstd * w (+ b); RMSNorm (rms = 1): mean = 0, no bias.
 * mean and rstd (N each, fp32) are saved for the backward. w and b share x's element type. */
void lmlab_norm_fwd(const void *x, const void *w, const void *b, void *y, float *mean, float *rstd, int N, int C,
                    float eps, int rms, int bf, int nt) {
    int Cp = (C + 15) / 16 * 16;
#pragma omp parallel num_threads(nt)
    {
        float *m = aligned_alloc(64, sizeof(float) * 3 * Cp), *row = m, *wf = m + Cp, *bias = m + 2 * Cp;
        memset(m, 0, sizeof(float) * 3 * Cp);
        row_in(w, 0, C, bf, wf);
        if (b) row_in(b, 0, C, bf, bias);
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            size_t o = (size_t)r * C;
            row_in(x, o, C, bf, row);
            v16 s = V0;
            for (int c = 0; c < Cp; c += 16) s += *(v16 *)(row + c);
            float mu = rms ? 0.f : hsum(s) / C;
            v16 ss = V0;
            for (int c = 0; c < C / 16 * 16; c += 16) {
                v16 dv = *(v16 *)(row + c) - mu;
                ss += dv * dv;
            }
            float sq = hsum(ss);
            for (int c = C / 16 * 16; c < C; c++) sq += (row[c] - mu) * (row[c] - mu);
            float rs = 1.f / sqrtf(sq / C + eps);
            mean[r] = mu;
            rstd[r] = rs;
            for (int c = 0; c < Cp; c += 16)
                *(v16 *)(row + c) = (*(v16 *)(row + c) - mu) * rs * *(v16 *)(wf + c) + *(v16 *)(bias + c);
            row_out(y, o, C, bf, row);
        }
        free(m);
    }
}

/* gx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = gy * w (RMSNorm: no mean(g) term);
 * gw = sum over rows of gy * xhat, gb = sum of gy (fp32, C each; gb may be NULL). */
void lmlab_norm_bwd(const void *gy, const void *x, const float *mean, const float *rstd, const void *w, void *gx,
                    float *gw, float *gb, int N, int C, int rms, int bf, int nt) {
    int T = nt < 1 ? 1 : nt, Cp = (C + 15) / 16 * 16;
    float *part = aligned_alloc(64, sizeof(float) * (size_t)T * 2 * Cp);
    memset(part, 0, sizeof(float) * (size_t)T * 2 * Cp);
#pragma omp parallel num_threads(T)
    {
        int me = omp_get_thread_num();
        float *pw = part + (size_t)me * 2 * Cp, *pb = pw + Cp;
        float *m = aligned_alloc(64, sizeof(float) * 3 * Cp), *xr = m, *g = m + Cp, *wf = m + 2 * Cp;
        memset(m, 0, sizeof(float) * 3 * Cp);
        row_in(w, 0, C, bf, wf);
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            size_t o = (size_t)r * C;
            row_in(x, o, C, bf, xr);
            row_in(gy, o, C, bf, g);
            float mu = mean[r], rs = rstd[r];
            v16 sg = V0, sgx = V0;
            for (int c = 0; c < Cp; c += 16) {
                v16 gyc = *(v16 *)(g + c), xh = (*(v16 *)(xr + c) - mu) * rs;
                if (c + 16 > C) xh = vsel(__builtin_convertvector((v16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                                      14, 15}, v16i) < C - c, xh, V0);
                v16 gc = gyc * *(v16 *)(wf + c);
                *(v16 *)(pw + c) += gyc * xh;
                *(v16 *)(pb + c) += gyc;
                *(v16 *)(xr + c) = xh;
                *(v16 *)(g + c) = gc;
                sg += gc;
                sgx += gc * xh;
            }
            float mg = rms ? 0.f : hsum(sg) / C, mgx = hsum(sgx) / C;
            for (int c = 0; c < Cp; c += 16)
                *(v16 *)(g + c) = rs * (*(v16 *)(g + c) - mg - *(v16 *)(xr + c) * mgx);
            row_out(gx, o, C, bf, g);
        }
        free(m);
    }
    for (int c = 0; c < C; c++) {
        float sw = 0.f, sb = 0.f;
        for (int t = 0; t < T; t++) {
            sw += part[(size_t)t * 2 * Cp + c];
            sb += part[(size_t)t * 2 * Cp + Cp + c];
        }
        gw[c] = sw;
        if (gb) gb[c] = sb;
    }
    free(part);
}

/* ======================================== attention ======================================== */

/* The matrices of one head, fp32, padded with zeros to Tp rows (a multiple of 4) and Dp, Tp columns
 * (multiples of 16): everything the kernels below touch stays in the core's L1/L2 cache. */
enum { LIMIT_NONE, LIMIT_COLS_LE_ROW, LIMIT_INNER_LE_ROW, LIMIT_INNER_GE_ROW };

/* C (M x N) = A (M x K) B (K x N), all row-major with leading dimensions lda, ldb, ldc; M a multiple of
 * 4, N of 16. Causal structure skips the zero blocks: LIMIT_COLS_LE_ROW computes only columns j < i0 + 4
 * of each 4-row block at i0 (the rest is left untouched); LIMIT_INNER_LE_ROW sums k < i0 + 4 only (A is
 * zero above its diagonal); LIMIT_INNER_GE_ROW sums k >= i0 only (A is zero below its diagonal). */
static inline __attribute__((always_inline)) void gemm_impl(const float *A, int lda, const float *B, int ldb,
                                                            float *Cm, int ldc, int M, int N, int K, int limit,
                                                            int at, int acc) {
    for (int i0 = 0; i0 < M; i0 += 4) {
        int n = limit == LIMIT_COLS_LE_ROW ? (i0 + 4 + 15) / 16 * 16 : N;
        if (n > N) n = N;
        int k0 = limit == LIMIT_INNER_GE_ROW ? i0 : 0;
        int k1 = limit == LIMIT_INNER_LE_ROW && i0 + 4 < K ? i0 + 4 : K;
        /* row r of the block, element k: A[(i0 + r) * lda + k], or A[k * lda + i0 + r] when A is transposed */
        size_t rs = at ? 1 : (size_t)lda, ks = at ? (size_t)lda : 1;
        const float *a = A + (size_t)i0 * rs;
        int j = 0;
        for (; j + 32 <= n; j += 32) {
            v16 c00 = V0, c01 = V0, c10 = V0, c11 = V0, c20 = V0, c21 = V0, c30 = V0, c31 = V0;
            for (int k = k0; k < k1; k++) {
                const float *ak = a + k * ks;
                v16 b0 = *(const v16 *)(B + (size_t)k * ldb + j), b1 = *(const v16 *)(B + (size_t)k * ldb + j + 16);
                v16 x0 = V0 + ak[0], x1 = V0 + ak[rs], x2 = V0 + ak[2 * rs], x3 = V0 + ak[3 * rs];
                c00 += x0 * b0, c01 += x0 * b1, c10 += x1 * b0, c11 += x1 * b1;
                c20 += x2 * b0, c21 += x2 * b1, c30 += x3 * b0, c31 += x3 * b1;
            }
            float *c = Cm + (size_t)i0 * ldc + j;
            if (acc) {
                *(v16 *)c += c00, *(v16 *)(c + 16) += c01;
                *(v16 *)(c + ldc) += c10, *(v16 *)(c + ldc + 16) += c11;
                *(v16 *)(c + 2 * ldc) += c20, *(v16 *)(c + 2 * ldc + 16) += c21;
                *(v16 *)(c + 3 * ldc) += c30, *(v16 *)(c + 3 * ldc + 16) += c31;
            } else {
                *(v16 *)c = c00, *(v16 *)(c + 16) = c01;
                *(v16 *)(c + ldc) = c10, *(v16 *)(c + ldc + 16) = c11;
                *(v16 *)(c + 2 * ldc) = c20, *(v16 *)(c + 2 * ldc + 16) = c21;
                *(v16 *)(c + 3 * ldc) = c30, *(v16 *)(c + 3 * ldc + 16) = c31;
            }
        }
        for (; j < n; j += 16) {
            v16 c0 = V0, c1 = V0, c2 = V0, c3 = V0;
            for (int k = k0; k < k1; k++) {
                const float *ak = a + k * ks;
                v16 b0 = *(const v16 *)(B + (size_t)k * ldb + j);
                c0 += ak[0] * b0, c1 += ak[rs] * b0, c2 += ak[2 * rs] * b0, c3 += ak[3 * rs] * b0;
            }
            float *c = Cm + (size_t)i0 * ldc + j;
            if (acc) *(v16 *)c += c0, *(v16 *)(c + ldc) += c1, *(v16 *)(c + 2 * ldc) += c2, *(v16 *)(c + 3 * ldc) += c3;
            else *(v16 *)c = c0, *(v16 *)(c + ldc) = c1, *(v16 *)(c + 2 * ldc) = c2, *(v16 *)(c + 3 * ldc) = c3;
        }
    }
}

/* C = A B; C += A^T B (A stored as K x M, so row i of A^T is column i of A). */
static void gemm(const float *A, int lda, const float *B, int ldb, float *Cm, int ldc, int M, int N, int K, int limit) {
    gemm_impl(A, lda, B, ldb, Cm, ldc, M, N, K, limit, 0, 0);
}
static void gemm_tn_acc(const float *A, int lda, const float *B, int ldb, float *Cm, int ldc, int M, int N, int K,
                        int limit) {
    gemm_impl(A, lda, B, ldb, Cm, ldc, M, N, K, limit, 1, 1);
}

/* Rows [0, T) of a (T x D) slice starting at `base` of a matrix with row stride `stride`, into fp32:
 * rows of dst (leading dimension ld) or, transposed, its columns; scaled by `scale`. Padding stays 0. */
static void load_slice(const void *src, size_t base, size_t stride, int T, int D, float *dst, int ld, int transposed,
                       float scale, int bf) {
    for (int t = 0; t < T; t++) {
        size_t o = base + (size_t)t * stride;
        int d = 0;
        if (!transposed) {
            for (; d + 16 <= D; d += 16) *(v16 *)(dst + (size_t)t * ld + d) = get16(src, o + d, bf) * scale;
            if (d < D) *(v16 *)(dst + (size_t)t * ld + d) = get_part(src, o + d, D - d, bf) * scale;
        } else {
            for (; d < D; d += 16) {
                v16 r = (d + 16 <= D ? get16(src, o + d, bf) : get_part(src, o + d, D - d, bf)) * scale;
                for (int e = 0; e < 16 && d + e < D; e++) dst[(size_t)(d + e) * ld + t] = r[e];
            }
        }
    }
}

static void store_slice(void *dst, size_t base, size_t stride, int T, int D, const float *src, int ld, int bf) {
    for (int t = 0; t < T; t++) {
        size_t o = base + (size_t)t * stride;
        int d = 0;
        for (; d + 16 <= D; d += 16) put16(dst, o + d, *(const v16 *)(src + (size_t)t * ld + d), bf);
        if (d < D) put_part(dst, o + d, *(const v16 *)(src + (size_t)t * ld + d), D - d, bf);
    }
}

typedef struct {
    int T, D, Tp, Dp;  /* Tp: padded rows and score columns (multiple of 16), Dp: padded head dim (of 16) */
    float *q, *kt, *v, *s;             /* forward */
    float *k, *vt, *dout, *dp, *dq, *dk, *dv;  /* backward */
    float *mem;
} Head;

static int head_init(Head *h, int T, int D, int backward) {
    h->T = T, h->D = D, h->Tp = (T + 15) / 16 * 16, h->Dp = (D + 15) / 16 * 16;
    size_t td = (size_t)h->Tp * h->Dp, tt = (size_t)h->Tp * h->Tp;
    size_t n = backward ? 9 * td + 2 * tt : 3 * td + tt;
    float *m = aligned_alloc(64, n * sizeof(float));
    if (!m) return -1;
    memset(m, 0, n * sizeof(float));
    h->mem = m;
    h->q = m, h->kt = m + td, h->v = m + 2 * td, h->s = m + 3 * td;
    if (backward) {
        float *b = h->s + tt;
        h->k = b, h->vt = b + td, h->dout = b + 2 * td, h->dq = b + 3 * td, h->dk = b + 4 * td, h->dv = b + 5 * td;
        h->dp = b + 6 * td;
    }
    return 0;
}

/* Row i of scores s (ld Tp), its first n entries valid: softmax in place, zeros after n; returns the
 * log-sum-exp. */
static inline float softmax_row(float *s, int n, int Tp) {
    int n16 = (n + 15) / 16 * 16;
    v16 mx = V0 - INFINITY;
    for (int j = 0; j < n16; j += 16) {
        v16 x = *(v16 *)(s + j);
        if (j + 16 > n) x = vsel(__builtin_convertvector((v16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                                                         v16i) < n - j, x, V0 - INFINITY);
        mx = vsel(x > mx, x, mx);
        *(v16 *)(s + j) = x;
    }
    float m = hmax(mx);
    v16 acc = V0;
    for (int j = 0; j < n16; j += 16) {
        v16 e = vexp(*(v16 *)(s + j) - m);
        *(v16 *)(s + j) = e;
        acc += e;
    }
    float sum = hsum(acc), inv = 1.f / sum;
    for (int j = 0; j < n16; j += 16) *(v16 *)(s + j) *= inv;
    for (int j = n16; j < Tp; j += 16) *(v16 *)(s + j) = V0;
    return m + logf(sum);
}

/* y = softmax(scale q k^T (+ causal mask)) v for every (batch row, head); lse may be NULL (no backward). */
int lmlab_attn_fwd(const void *qkv, void *y, float *lse, int B, int T, int H, int KV, int D, float scale,
                   int causal, int bf, int nt) {
    int rep = H / KV, fail = 0;
    size_t stride = (size_t)(H + 2 * KV) * D;
#pragma omp parallel num_threads(nt) reduction(| : fail)
    {
        Head w;
        if (head_init(&w, T, D, 0)) fail = 1;
        else {
            int Tp = w.Tp, Dp = w.Dp;
#pragma omp for schedule(static)
            for (int task = 0; task < B * KV; task++) {
                int b = task / KV, g = task % KV;
                size_t base = (size_t)b * T * stride;
                load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.kt, Tp, 1, 1.f, bf);
                load_slice(qkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.v, Dp, 0, 1.f, bf);
                for (int h = g * rep; h < (g + 1) * rep; h++) {
                    load_slice(qkv, base + (size_t)h * D, stride, T, D, w.q, Dp, 0, scale, bf);
                    gemm(w.q, Dp, w.kt, Tp, w.s, Tp, Tp, Tp, Dp, causal ? LIMIT_COLS_LE_ROW : LIMIT_NONE);
                    for (int i = 0; i < T; i++) {
                        float l = softmax_row(w.s + (size_t)i * Tp, causal ? i + 1 : T, Tp);
                        if (lse) lse[((size_t)b * H + h) * T + i] = l;
                    }
                    /* o = p v into q's buffer (q is no longer needed) */
                    gemm(w.s, Tp, w.v, Dp, w.q, Dp, Tp, Dp, Tp, causal ? LIMIT_INNER_LE_ROW : LIMIT_NONE);
                    store_slice(y, (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, T, D, w.q, Dp, bf);
                }
            }
            free(w.mem);
        }
    }
    return fail ? -1 : 0;
}

/* Gradients of lmlab_attn_fwd: dqkv (same layout as qkv) from dy, recomputing the probabilities p from
 * lse. dp = do v^T, ds = p (dp - rowsum(p dp)) scale, dq = ds k, dk = ds^T q, dv = p^T do. */
int lmlab_attn_bwd(const void *qkv, const float *lse, const void *dy, void *dqkv, int B, int T, int H, int KV,
                   int D, float scale, int causal, int bf, int nt) {
    int rep = H / KV, fail = 0;
    size_t stride = (size_t)(H + 2 * KV) * D;
#pragma omp parallel num_threads(nt) reduction(| : fail)
    {
        Head w;
        if (head_init(&w, T, D, 1)) fail = 1;
        else {
            int Tp = w.Tp, Dp = w.Dp;
            int lower = causal ? LIMIT_COLS_LE_ROW : LIMIT_NONE;
#pragma omp for schedule(static)
            for (int task = 0; task < B * KV; task++) {
                int b = task / KV, g = task % KV;
                size_t base = (size_t)b * T * stride;
                load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.kt, Tp, 1, 1.f, bf);
                load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.k, Dp, 0, 1.f, bf);
                load_slice(qkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.vt, Tp, 1, 1.f, bf);
                memset(w.dk, 0, sizeof(float) * Tp * Dp);
                memset(w.dv, 0, sizeof(float) * Tp * Dp);
                for (int h = g * rep; h < (g + 1) * rep; h++) {
                    load_slice(qkv, base + (size_t)h * D, stride, T, D, w.q, Dp, 0, 1.f, bf);
                    load_slice(dy, (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, T, D, w.dout, Dp, 0, 1.f, bf);
                    gemm(w.q, Dp, w.kt, Tp, w.s, Tp, Tp, Tp, Dp, lower);
                    gemm(w.dout, Dp, w.vt, Tp, w.dp, Tp, Tp, Tp, Dp, lower);
                    const float *L = lse + ((size_t)b * H + h) * T;
                    for (int i = 0; i < Tp; i++) {
                        float *p = w.s + (size_t)i * Tp, *dp = w.dp + (size_t)i * Tp;
                        int n = i >= T ? 0 : causal ? i + 1 : T;
                        int n16 = (n + 15) / 16 * 16;
                        v16 acc = V0;
                        for (int j = 0; j < n16; j += 16) {
                            v16 e = vexp(*(v16 *)(p + j) * scale - L[i]);
                            if (j + 16 > n)
                                e = vsel(__builtin_convertvector((v16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                                       15}, v16i) < n - j, e, V0);
                            *(v16 *)(p + j) = e;
                            acc += e * *(v16 *)(dp + j);
                        }
                        float dsum = hsum(acc);
                        for (int j = 0; j < n16; j += 16)
                            *(v16 *)(dp + j) = *(v16 *)(p + j) * (*(v16 *)(dp + j) - dsum) * scale;
                        for (int j = n16; j < Tp; j += 16) *(v16 *)(p + j) = *(v16 *)(dp + j) = V0;
                    }
                    gemm(w.dp, Tp, w.k, Dp, w.dq, Dp, Tp, Dp, Tp, causal ? LIMIT_INNER_LE_ROW : LIMIT_NONE);
                    store_slice(dqkv, base + (size_t)h * D, stride, T, D, w.dq, Dp, bf);
                    /* dk += ds^T q, dv += p^T do (row j of ds^T sums over i >= j when causal) */
                    gemm_tn_acc(w.dp, Tp, w.q, Dp, w.dk, Dp, Tp, Dp, Tp, causal ? LIMIT_INNER_GE_ROW : LIMIT_NONE);
                    gemm_tn_acc(w.s, Tp, w.dout, Dp, w.dv, Dp, Tp, Dp, Tp, causal ? LIMIT_INNER_GE_ROW : LIMIT_NONE);
                }
                store_slice(dqkv, base + (size_t)(H + g) * D, stride, T, D, w.dk, Dp, bf);
                store_slice(dqkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.dv, Dp, bf);
            }
            free(w.mem);
        }
    }
    return fail ? -1 : 0;
}

/* Fused CPU kernels for training (and evaluating) the Transformer: attention, RMSNorm and bf16 linear
 * layers (on AMX tiles), forward and backward, and the optimizer step of bf16 weights with fp32 masters.
 *
 * Why this exists: at lab sizes (width 128, 64-token windows) PyTorch's CPU kernels for these ops
 * cost far more than their arithmetic - attention runs through ~10 operator calls per layer
 * (dtype copies, split, transposes, flash attention, a concatenation in the backward), RMSNorm six
 * elementwise ops, and the optimizer step several passes over the parameters. Each kernel here is
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
#ifdef _OPENMP
#include <omp.h>
#else /* a compiler without OpenMP (Apple clang): one thread, the pragmas ignored */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));
typedef uint32_t v16u __attribute__((vector_size(64), aligned(4)));
typedef uint16_t v16h __attribute__((vector_size(32), aligned(2)));
#define V0 ((v16){0})

static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
/* x in all sixteen lanes. Spelled out: on AVX2 (half-width registers) GCC builds `V0 + x` lane by lane
 * through the stack, which made the attention kernel's inner loop 17x slower than with AVX-512. */
static inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
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

/* exp(x) for the softmax's arguments, all <= 0 (scores minus their maximum or log-sum-exp): the same
 * 2^n * e^r scheme, with AVX-512's rounding and scalef (which flushes to 0 far below) where available. */
#ifdef __AVX512F__
static inline v16 vexp_neg(v16 x) {
    v16i tiny = x < -87.f;  /* -inf (masked) and below: exactly 0, never a (slow) denormal */
    x = (v16)_mm512_max_ps((__m512)x, _mm512_set1_ps(-87.f));
    __m512 t = _mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v16 n = (v16)t;
    v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    return vsel(tiny, V0, (v16)_mm512_scalef_ps((__m512)p, t));
}
#else
static inline v16 vexp_neg(v16 x) { return vexp(x); }
#endif

static const v16 IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
/* lanes k with j + k < n */
static inline v16i below(int j, int n) { return IOTA < (float)(n - j); }

/* Per-thread scratch, allocated before a parallel region (so a failed allocation is one early return,
 * never a thread missing from a worksharing loop): nt slices of n floats, 64-byte aligned. */
static float *scratch(int nt, size_t n) {
    size_t bytes = ((size_t)nt * n * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes);
}

/* ========================================= RMSNorm ========================================= */

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

/* Rows of C: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), saved (N, fp32) for the backward.
 * w shares x's element type. */
int lmlab_rmsnorm_fwd(const void *x, const void *w, void *y, float *rstd, int N, int C, float eps, int bf, int nt) {
    int Cp = (C + 15) / 16 * 16;
    float *mem = scratch(nt, 2 * (size_t)Cp);
    if (!mem) return -1;
#pragma omp parallel num_threads(nt)
    {
        float *row = mem + (size_t)omp_get_thread_num() * 2 * Cp, *wf = row + Cp;
        memset(row, 0, sizeof(float) * 2 * Cp);
        row_in(w, 0, C, bf, wf);
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            size_t o = (size_t)r * C;
            row_in(x, o, C, bf, row);
            v16 ss = V0;
            for (int c = 0; c < Cp; c += 16) ss += *(v16 *)(row + c) * *(v16 *)(row + c);
            float rs = 1.f / sqrtf(hsum(ss) / C + eps);
            rstd[r] = rs;
            for (int c = 0; c < Cp; c += 16) *(v16 *)(row + c) = *(v16 *)(row + c) * rs * *(v16 *)(wf + c);
            row_out(y, o, C, bf, row);
        }
    }
    free(mem);
    return 0;
}

/* gx = rstd * (g - xhat * mean(g * xhat)) with g = gy * w and xhat = x * rstd; gw = sum over rows of
 * gy * xhat (C, in x's element type, summed in fp32 per thread and then in thread order). */
int lmlab_rmsnorm_bwd(const void *gy, const void *x, const float *rstd, const void *w, void *gx, void *gw, int N,
                      int C, int bf, int nt) {
    int T = nt < 1 ? 1 : nt, Cp = (C + 15) / 16 * 16;
    float *mem = scratch(T, 4 * (size_t)Cp);  /* per thread: its partial gw, then x-hat, g and w rows */
    if (!mem) return -1;
#pragma omp parallel num_threads(T)
    {
        float *pw = mem + (size_t)omp_get_thread_num() * 4 * Cp, *xh = pw + Cp, *g = pw + 2 * Cp, *wf = pw + 3 * Cp;
        memset(pw, 0, sizeof(float) * 4 * Cp);
        row_in(w, 0, C, bf, wf);
#pragma omp for schedule(static)
        for (int r = 0; r < N; r++) {
            size_t o = (size_t)r * C;
            float rs = rstd[r];
            row_in(x, o, C, bf, xh);
            row_in(gy, o, C, bf, g);
            v16 sgx = V0;
            for (int c = 0; c < Cp; c += 16) {  /* padding lanes are 0 in x, gy and w */
                v16 gyc = *(v16 *)(g + c), xc = *(v16 *)(xh + c) * rs, gc = gyc * *(v16 *)(wf + c);
                *(v16 *)(pw + c) += gyc * xc;
                *(v16 *)(xh + c) = xc;
                *(v16 *)(g + c) = gc;
                sgx += gc * xc;
            }
            float mgx = hsum(sgx) / C;
            for (int c = 0; c < Cp; c += 16) *(v16 *)(g + c) = rs * (*(v16 *)(g + c) - *(v16 *)(xh + c) * mgx);
            row_out(gx, o, C, bf, g);
        }
    }
    for (int c = 0; c < C; c++) {  /* a thread that got no rows left its partial at 0 */
        float sw = 0.f;
        for (int t = 0; t < T; t++) sw += mem[(size_t)t * 4 * Cp + c];
        put(gw, c, sw, bf);
    }
    free(mem);
    return 0;
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
                v16 x0 = splat(ak[0]), x1 = splat(ak[rs]), x2 = splat(ak[2 * rs]), x3 = splat(ak[3 * rs]);
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
                c0 += splat(ak[0]) * b0, c1 += splat(ak[rs]) * b0, c2 += splat(ak[2 * rs]) * b0;
                c3 += splat(ak[3 * rs]) * b0;
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
    int ld, ls;        /* leading dimensions of row matrices (q, k, v, ...: ld) and of scores and kt, vt (ls),
                        * off powers of two so that rows do not alias each other in the L1 cache */
    float *q, *kt, *v, *s;                     /* forward */
    float *k, *vt, *dout, *dp, *dq, *dk, *dv;  /* backward */
} Head;

/* Floats of one thread's Head (backward: with the gradient buffers). */
static size_t head_floats(int T, int D, int backward) {
    size_t Tp = (T + 15) / 16 * 16, Dp = (D + 15) / 16 * 16;
    size_t rows = Tp * (Dp + 16) + 16, cols = Dp * (Tp + 16) + 16, scores = Tp * (Tp + 16) + 16;
    return backward ? 7 * rows + 2 * cols + 2 * scores : 2 * rows + cols + scores;
}

/* Lay a Head out over m (head_floats(T, D, backward) floats), zeroed: the padding must read as 0. */
static void head_init(Head *h, int T, int D, int backward, float *m) {
    h->T = T, h->D = D, h->Tp = (T + 15) / 16 * 16, h->Dp = (D + 15) / 16 * 16;
    h->ld = h->Dp + 16, h->ls = h->Tp + 16;
    size_t rows = (size_t)h->Tp * h->ld + 16, cols = (size_t)h->Dp * h->ls + 16, scores = (size_t)h->Tp * h->ls + 16;
    memset(m, 0, head_floats(T, D, backward) * sizeof(float));
    h->q = m, h->v = m + rows, h->kt = m + 2 * rows, h->s = h->kt + cols;
    if (backward) {
        float *b = h->s + scores;
        h->k = b, h->dout = b + rows, h->dq = b + 2 * rows, h->dk = b + 3 * rows, h->dv = b + 4 * rows;
        h->vt = b + 5 * rows, h->dp = h->vt + cols;
    }
}

/* Row i of scores s (ld Tp), its first n entries valid: softmax in place, zeros after n; returns the
 * log-sum-exp. */
static inline float softmax_row(float *s, int n, int Tp) {
    int n16 = (n + 15) / 16 * 16;
    v16 mx = V0 - INFINITY;
    for (int j = 0; j < n16; j += 16) {
        v16 x = *(v16 *)(s + j);
        if (j + 16 > n) x = vsel(below(j, n), x, V0 - INFINITY);
        mx = vsel(x > mx, x, mx);
        *(v16 *)(s + j) = x;
    }
    float m = hmax(mx);
    v16 acc = V0;
    for (int j = 0; j < n16; j += 16) {
        v16 e = vexp_neg(*(v16 *)(s + j) - m);
        if (j + 16 > n) e = vsel(below(j, n), e, V0);
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
    int rep = H / KV;
    size_t stride = (size_t)(H + 2 * KV) * D, per = head_floats(T, D, 0);
    float *mem = scratch(nt, per);
    if (!mem) return -1;
#pragma omp parallel num_threads(nt)
    {
        Head w;
        head_init(&w, T, D, 0, mem + (size_t)omp_get_thread_num() * per);
        int Tp = w.Tp, Dp = w.Dp, ld = w.ld, ls = w.ls;
#pragma omp for schedule(static)
        for (int task = 0; task < B * KV; task++) {
            int b = task / KV, g = task % KV;
            size_t base = (size_t)b * T * stride;
            load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.kt, ls, 1, 1.f, bf);
            load_slice(qkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.v, ld, 0, 1.f, bf);
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                load_slice(qkv, base + (size_t)h * D, stride, T, D, w.q, ld, 0, scale, bf);
                gemm(w.q, ld, w.kt, ls, w.s, ls, Tp, Tp, Dp, causal ? LIMIT_COLS_LE_ROW : LIMIT_NONE);
                for (int i = 0; i < T; i++) {
                    float l = softmax_row(w.s + (size_t)i * ls, causal ? i + 1 : T, Tp);
                    if (lse) lse[((size_t)b * H + h) * T + i] = l;
                }
                /* o = p v into q's buffer (q is no longer needed) */
                gemm(w.s, ls, w.v, ld, w.q, ld, Tp, Dp, Tp, causal ? LIMIT_INNER_LE_ROW : LIMIT_NONE);
                store_slice(y, (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, T, D, w.q, ld, bf);
            }
        }
    }
    free(mem);
    return 0;
}

/* Gradients of lmlab_attn_fwd: dqkv (same layout as qkv) from dy, recomputing the probabilities p from
 * lse. dp = do v^T, ds = p (dp - rowsum(p dp)) scale, dq = ds k, dk = ds^T q, dv = p^T do. */
int lmlab_attn_bwd(const void *qkv, const float *lse, const void *dy, void *dqkv, int B, int T, int H, int KV,
                   int D, float scale, int causal, int bf, int nt) {
    int rep = H / KV;
    size_t stride = (size_t)(H + 2 * KV) * D, per = head_floats(T, D, 1);
    float *mem = scratch(nt, per);
    if (!mem) return -1;
#pragma omp parallel num_threads(nt)
    {
        Head w;
        head_init(&w, T, D, 1, mem + (size_t)omp_get_thread_num() * per);
        int Tp = w.Tp, Dp = w.Dp, ld = w.ld, ls = w.ls;
        int lower = causal ? LIMIT_COLS_LE_ROW : LIMIT_NONE;
#pragma omp for schedule(static)
        for (int task = 0; task < B * KV; task++) {
            int b = task / KV, g = task % KV;
            size_t base = (size_t)b * T * stride;
            load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.kt, ls, 1, 1.f, bf);
            load_slice(qkv, base + (size_t)(H + g) * D, stride, T, D, w.k, ld, 0, 1.f, bf);
            load_slice(qkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.vt, ls, 1, 1.f, bf);
            memset(w.dk, 0, sizeof(float) * Tp * ld);
            memset(w.dv, 0, sizeof(float) * Tp * ld);
            for (int h = g * rep; h < (g + 1) * rep; h++) {
                load_slice(qkv, base + (size_t)h * D, stride, T, D, w.q, ld, 0, 1.f, bf);
                load_slice(dy, (size_t)b * T * H * D + (size_t)h * D, (size_t)H * D, T, D, w.dout, ld, 0, 1.f, bf);
                /* p = exp(scale s - lse), row by row while s is still in L1; masked entries 0 */
                gemm(w.q, ld, w.kt, ls, w.s, ls, Tp, Tp, Dp, lower);
                const float *L = lse + ((size_t)b * H + h) * T;
                for (int i = 0; i < T; i++) {
                    float *p = w.s + (size_t)i * ls;
                    int n = causal ? i + 1 : T;
                    for (int j = 0; j < n; j += 16) {
                        v16 e = vexp_neg(*(v16 *)(p + j) * scale - L[i]);
                        *(v16 *)(p + j) = j + 16 > n ? vsel(below(j, n), e, V0) : e;
                    }
                }
                /* ds = p (dp - rowsum(p dp)) scale, into dp's buffer */
                gemm(w.dout, ld, w.vt, ls, w.dp, ls, Tp, Tp, Dp, lower);
                for (int i = 0; i < T; i++) {
                    float *p = w.s + (size_t)i * ls, *dp = w.dp + (size_t)i * ls;
                    int n16 = ((causal ? i + 1 : T) + 15) / 16 * 16;
                    v16 acc = V0;
                    for (int j = 0; j < n16; j += 16) acc += *(v16 *)(p + j) * *(v16 *)(dp + j);
                    float dsum = hsum(acc);
                    for (int j = 0; j < n16; j += 16)
                        *(v16 *)(dp + j) = *(v16 *)(p + j) * (*(v16 *)(dp + j) - dsum) * scale;
                }
                gemm(w.dp, ls, w.k, ld, w.dq, ld, Tp, Dp, Tp, causal ? LIMIT_INNER_LE_ROW : LIMIT_NONE);
                store_slice(dqkv, base + (size_t)h * D, stride, T, D, w.dq, ld, bf);
                /* dk += ds^T q, dv += p^T do (row j of ds^T sums over i >= j when causal) */
                gemm_tn_acc(w.dp, ls, w.q, ld, w.dk, ld, Tp, Dp, Tp, causal ? LIMIT_INNER_GE_ROW : LIMIT_NONE);
                gemm_tn_acc(w.s, ls, w.dout, ld, w.dv, ld, Tp, Dp, Tp, causal ? LIMIT_INNER_GE_ROW : LIMIT_NONE);
            }
            store_slice(dqkv, base + (size_t)(H + g) * D, stride, T, D, w.dk, ld, bf);
            store_slice(dqkv, base + (size_t)(H + KV + g) * D, stride, T, D, w.dv, ld, bf);
        }
    }
    free(mem);
    return 0;
}

/* ================================ cross-entropy from the logits ================================ */

/* Per row of logits (N, V): lse = log-sum-exp; returns the sum over rows with target != ignore of lse - logit[target]
 * (fp64) and their count in *count. One pass each way instead of PyTorch's fp32 copy, log-softmax, nll and
 * their backward over (N, V). -1.0 when out of memory, -2.0 for a target outside [0, V) (and not ignore). */
double lmlab_xent_fwd(const void *logits, const int64_t *target, float *lse, int N, int V, int64_t ignore, int bf,
                      long *count, int nt) {
    int Vp = (V + 15) / 16 * 16;
    float *mem = scratch(nt, Vp);
    double *part = calloc(nt, sizeof(double));
    long *cnt = calloc(nt, sizeof(long));
    int bad = 0;
    if (!mem || !part || !cnt) return free(mem), free(part), free(cnt), -1.0;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num();
        float *row = mem + (size_t)tid * Vp;
#pragma omp for schedule(static)
        for (int i = 0; i < N; i++) {
            row_in(logits, (size_t)i * V, V, bf, row);
            v16 mx = V0 - INFINITY;
            for (int j = 0; j < Vp; j += 16) mx = vsel(below(j, V), vsel(*(v16 *)(row + j) > mx, *(v16 *)(row + j), mx), mx);
            float m = hmax(mx);
            v16 acc = V0;
            for (int j = 0; j < Vp; j += 16) acc += vsel(below(j, V), vexp_neg(*(v16 *)(row + j) - m), V0);
            lse[i] = m + logf(hsum(acc));
            if (target[i] == ignore) continue;
            if (target[i] < 0 || target[i] >= V) bad = 1;  /* (a benign race: any thread's 1 will do) */
            else part[tid] += (double)lse[i] - row[target[i]], cnt[tid]++;
        }
    }
    if (bad) return free(mem), free(part), free(cnt), -2.0;
    double sum = 0;
    *count = 0;
    for (int t = 0; t < nt; t++) sum += part[t], *count += cnt[t];
    free(mem), free(part), free(cnt);
    return sum;
}

/* dlogits = (softmax - onehot(target)) * scale, zero on ignored rows; in the logits' dtype (rounded once) */
int lmlab_xent_bwd(const void *logits, const int64_t *target, const float *lse, void *dlogits, float scale, int N,
                   int V, int64_t ignore, int bf, int nt) {
    int Vp = (V + 15) / 16 * 16;
    float *mem = scratch(nt, Vp);
    if (!mem) return -1;
#pragma omp parallel num_threads(nt)
    {
        float *row = mem + (size_t)omp_get_thread_num() * Vp;
#pragma omp for schedule(static)
        for (int i = 0; i < N; i++) {
            row_in(logits, (size_t)i * V, V, bf, row);
            int skip = target[i] == ignore;
            for (int j = 0; j < Vp; j += 16)
                *(v16 *)(row + j) = skip ? V0 : vexp_neg(*(v16 *)(row + j) - lse[i]) * scale;
            if (!skip) row[target[i]] -= scale;
            row_out(dlogits, (size_t)i * V, V, bf, row);
        }
    }
    free(mem);
    return 0;
}

/* ============================ the optimizer step (bf16 weights, fp32 masters) ============================ */

/* grad[off[i] : off[i] + size[i]] += g[i] (bf16) for each of n parameters: the fp32 master gradients
 * gather the model's bf16 gradients (and accumulate them over micro-batches). NULL g[i] is skipped. */
void lmlab_grads_to_master(int n, const uint16_t *const *g, const long *off, const long *size, float *grad, int nt) {
#pragma omp parallel num_threads(nt)
    for (int i = 0; i < n; i++) {
        if (!g[i]) continue;
        float *dst = grad + off[i];
        const uint16_t *src = g[i];
        long m16 = size[i] / 16 * 16;
#pragma omp for schedule(static) nowait
        for (long e = 0; e < m16; e += 16) *(v16 *)(dst + e) += get16(src, e, 1);
#pragma omp single nowait
        for (long e = m16; e < size[i]; e++) dst[e] += bf2f(src[e]);
    }
}

/* One AdamW step (PyTorch's decoupled form) over every parameter, fused with what surrounds it:
 * the global gradient norm (returned; fp64 partial sums in a fixed order, so runs are reproducible),
 * clipping to max_norm (> 0) folded into the update, zeroing the gradients, and refreshing the bf16
 * weights (may be NULL) from the updated fp32 masters. Parameter i lives at master[off[i]..] with its
 * gradient at grad[off[i]..] and bf16 copy at bf[off[i]..]; m[i], v[i] are its moment buffers and
 * step[i] its fp32 step counter (incremented here). lr and wd are per parameter (from its group). */
double lmlab_adamw_step(int n, const long *off, const long *size, float *master, float *grad, uint16_t *bf,
                        float *const *m, float *const *v, float *const *step, const float *lr, const float *wd,
                        float beta1, float beta2, float eps, float max_norm, int nt) {
    long total = off[n - 1] + size[n - 1];
    double parts[256] = {0};
    int T = nt < 1 ? 1 : nt > 256 ? 256 : nt;
#pragma omp parallel num_threads(T)
    {
        int me = omp_get_thread_num(), k = omp_get_num_threads();
        long lo = total * me / k, hi = total * (me + 1) / k;
        double s = 0.0;
        v16 acc = V0;
        long e = lo;
        for (; e + 16 <= hi; e += 16) {
            v16 x = *(v16 *)(grad + e);
            acc += x * x;
            if (((e - lo) & 1023) == 1008) s += hsum(acc), acc = V0;  /* fp64 every 64 vectors */
        }
        s += hsum(acc);
        for (; e < hi; e++) s += (double)grad[e] * grad[e];
        parts[me] = s;
    }
    double sq = 0.0;
    for (int t = 0; t < T; t++) sq += parts[t];
    double norm = sqrt(sq);
    float clip = max_norm > 0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.f;
    float *steps = malloc(sizeof(float) * n);
    if (!steps) return -1.0;
    for (int i = 0; i < n; i++) steps[i] = step[i][0] + 1.f;
#pragma omp parallel num_threads(T)
    for (int i = 0; i < n; i++) {
        float t = steps[i];
        float bc1 = 1.f - powf(beta1, t), bc2 = 1.f - powf(beta2, t);
        float step_size = lr[i] / bc1, decay = 1.f - lr[i] * wd[i], rbc2 = 1.f / sqrtf(bc2);
        float *p = master + off[i], *g = grad + off[i], *mi = m[i], *vi = v[i];
        long sz = size[i], s16 = sz / 16 * 16;
#pragma omp for schedule(static) nowait
        for (long e = 0; e < s16; e += 16) {
            v16 gg = *(v16 *)(g + e) * clip;
            v16 mm = *(v16 *)(mi + e) * beta1 + gg * (1.f - beta1);
            v16 vv = *(v16 *)(vi + e) * beta2 + gg * gg * (1.f - beta2);
            v16 den;
            for (int l = 0; l < 16; l++) den[l] = sqrtf(vv[l]);
            den = den * rbc2 + eps;
            v16 pp = *(v16 *)(p + e) * decay - step_size * mm / den;
            *(v16 *)(mi + e) = mm, *(v16 *)(vi + e) = vv, *(v16 *)(p + e) = pp, *(v16 *)(g + e) = V0;
            if (bf) put16(bf, off[i] + e, pp, 1);
        }
#pragma omp single nowait
        {
            for (long e = s16; e < sz; e++) {
                float gg = g[e] * clip;
                mi[e] = mi[e] * beta1 + gg * (1.f - beta1);
                vi[e] = vi[e] * beta2 + gg * gg * (1.f - beta2);
                p[e] = p[e] * decay - step_size * mi[e] / (sqrtf(vi[e]) * rbc2 + eps);
                g[e] = 0.f;
                if (bf) put(bf, off[i] + e, p[e], 1);
            }
        }
    }
    for (int i = 0; i < n; i++) step[i][0] = steps[i];
    free(steps);
    return norm;
}

/* ================================ bf16 linear layers on AMX ================================ *
 * y = x W^T (+ b), and its backward dx = dy W, dW = dy^T x, for bf16 row-major x (M, K), W (N, K),
 * dy (M, N), with M, N and K multiples of 32 (the caller checks; PyTorch's matmul does the rest).
 * Why: at these sizes PyTorch's bf16 matmul (oneDNN) spends ~30 us per call on set-up before any
 * arithmetic, 51 calls per training step of the Shakespeare model; the tile arithmetic itself is the
 * same (fp32 accumulation of bf16 products, so the forward's results are bitwise PyTorch's).
 * AMX multiplies a 16x32 bf16 tile A (rows = output rows, 32 consecutive k) by a 16x16-dword tile B
 * whose row j holds the k-pair (2j, 2j+1) of 16 output columns ("VNNI"); so W and x are repacked
 * into such tiles, and dy^T (for dW) into A tiles by a pair interleave and a 16x16 dword transpose. */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

/* 1 when this process may use AMX tiles (Linux grants them on request, once per process) */
int lmlab_amx_ready(void) {
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

static void tiles_configure(void) {
    struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
    _tile_loadconfig(&cfg);
}

/* rows[i][j] <- rows[j][i] for 16 rows of 16 dwords */
static inline void transpose16(__m512i r[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++)
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    for (int i = 0; i < 4; i++) {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]), b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int q = 0; q < 4; q++) {  /* b[4i+q], 128-bit lane L = column 4L+q of rows 4i..4i+3 */
        __m512i u = _mm512_shuffle_i32x4(b[q], b[4 + q], 0x44), v = _mm512_shuffle_i32x4(b[q], b[4 + q], 0xEE);
        __m512i w = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0x44), z = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0xEE);
        r[q] = _mm512_shuffle_i32x4(u, w, 0x88), r[4 + q] = _mm512_shuffle_i32x4(u, w, 0xDD);
        r[8 + q] = _mm512_shuffle_i32x4(v, z, 0x88), r[12 + q] = _mm512_shuffle_i32x4(v, z, 0xDD);
    }
}

/* Shapes off the tile grid are padded with zeros to multiples of 32 as they are packed (masked loads),
 * and results outside the real shape are never stored. */
static inline int up32(int n) { return (n + 31) / 32 * 32; }
static inline __mmask32 lanes(int n) { return n >= 32 ? 0xffffffffu : n <= 0 ? 0 : (1u << n) - 1; }

/* 16 bf16 of row `r` (of `rows`) of X (leading dimension ld) from column c, zeros past the shape */
static inline __m256i load16(const uint16_t *X, int r, int rows, size_t ld, int c, int cols) {
    if (r >= rows) return _mm256_setzero_si256();
    return _mm256_maskz_loadu_epi16((__mmask16)lanes(cols - c), X + (size_t)r * ld + c);
}
/* 16 dwords (a[i], b[i]): rows r and r+1 of X, element by element */
static inline __m512i pair_rows(const uint16_t *X, int r, int rows, size_t ld, int c, int cols) {
    __m512i x = _mm512_cvtepu16_epi32(load16(X, r, rows, ld, c, cols));
    __m512i y = _mm512_cvtepu16_epi32(load16(X, r + 1, rows, ld, c, cols));
    return _mm512_or_si512(x, _mm512_slli_epi32(y, 16));
}

/* Tiles of 16 rows x 16 dwords from X (rows x cols, row-major), in the order [block][KB], zero-padded:
 * - unpaired: tile (block, kb) row i = row block*16+i of X, columns kb*32 .. +32 (an A tile, K along columns);
 * - paired: tile (block, kb) row j = rows kb*32+2j and +1 of X interleaved over columns block*16 .. +16
 *   (a B tile, "VNNI", K along rows);
 * then, if `transposed`, each tile's 16x16 dwords transposed: an unpaired X (N, K) becomes the B tiles of
 * X^T, a paired X (K, M) the A tiles of X^T. */
static void pack(const uint16_t *X, int rows, int cols, int paired, int transposed, uint32_t *out) {
    int KB = up32(paired ? rows : cols) / 32, blocks = up32(paired ? cols : rows) / 16;
#pragma omp for schedule(static) nowait
    for (int t = 0; t < blocks * KB; t++) {
        int b0 = t / KB * 16, k0 = t % KB * 32;
        __m512i r[16];
        for (int i = 0; i < 16; i++)
            r[i] = paired ? pair_rows(X, k0 + 2 * i, rows, cols, b0, cols)
                 : b0 + i < rows ? _mm512_maskz_loadu_epi16(lanes(cols - k0), X + (size_t)(b0 + i) * cols + k0)
                                 : _mm512_setzero_si512();
        if (transposed) transpose16(r);
        for (int i = 0; i < 16; i++) _mm512_store_si512(out + (size_t)t * 256 + i * 16, r[i]);
    }
}
/* the four uses: A tiles of X (M, K) or of X^T for X (K, M); B tiles of X (K, N) or of X^T for X (N, K) */
#define pack_a(X, M, K, out) pack(X, M, K, 0, 0, out)
#define pack_a_transposed(X, K, M, out) pack(X, K, M, 1, 1, out)
#define pack_b(X, K, N, out) pack(X, K, N, 1, 0, out)
#define pack_b_transposed(X, N, K, out) pack(X, N, K, 0, 1, out)

static inline __m512 bf16_load(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m512 bf16_lo(__m512bh v) { return _mm512_cvtpbh_ps((__m256bh)_mm512_castsi512_si256((__m512i)v)); }
static inline __m512 bf16_hi(__m512bh v) { return _mm512_cvtpbh_ps((__m256bh)_mm512_extracti64x4_epi64((__m512i)v, 1)); }

/* The normal distribution's cdf Phi(x) and density phi(x): exact GELU is x Phi(x), its derivative
 * Phi(x) + x phi(x). erfc by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), taken on |x| so the
 * negative tail has no cancellation. */
static inline __m512 normal_cdf(__m512 x, __m512 *pdf) {
    __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
    __m512 d = _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.f));
    __m512 t = _mm512_rcp14_ps(d);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.f)));  /* one Newton step: ~1e-8 */
    __m512 poly = _mm512_fmadd_ps(t, _mm512_set1_ps(1.061405429f), _mm512_set1_ps(-1.453152027f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
    poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
    poly = _mm512_mul_ps(poly, t);
    __m512 e = (__m512)vexp_neg((v16)_mm512_mul_ps(_mm512_mul_ps(z, z), _mm512_set1_ps(-1.f)));  /* e^(-x^2/2) */
    *pdf = _mm512_mul_ps(e, _mm512_set1_ps(0.39894228040143268f));
    __m512 tail = _mm512_mul_ps(_mm512_mul_ps(poly, e), _mm512_set1_ps(0.5f));  /* Phi(-|x|) */
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.f), tail), tail);
}

/* What happens to each 32x32 block of results on its way out, besides rounding to bf16 and storing:
 * add a bias and a residual; for an MLP's up projection h, also store gelu(h) and gelu'(h) (so the backward needs no
 * erf); for the down projection's dx, multiply the rounded result by the stored gelu'(h) first. */
typedef struct {
    const uint16_t *bias;
    uint16_t *gelu_out, *gelu_grad_out;
    const uint16_t *times;
    const uint16_t *residual;  /* added before rounding (a residual connection), same layout as C */
} Epilogue;

/* gelu(x) = x Phi(x) and gelu'(x) = Phi(x) + x phi(x) of 32 values, rounded to bf16 */
static inline void gelu32(__m512bh v, uint16_t *g, uint16_t *d) {
    __m512 lo = bf16_lo(v), hi = bf16_hi(v), pdf_lo, pdf_hi;
    __m512 cdf_lo = normal_cdf(lo, &pdf_lo), cdf_hi = normal_cdf(hi, &pdf_hi);
    _mm512_storeu_si512(g, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, cdf_hi), _mm512_mul_ps(lo, cdf_lo)));
    if (d)  /* NULL when no gradient will be needed */
        _mm512_storeu_si512(d, (__m512i)_mm512_cvtne2ps_pbh(_mm512_fmadd_ps(hi, pdf_hi, cdf_hi),
                                                            _mm512_fmadd_ps(lo, pdf_lo, cdf_lo)));
}

/* C (M, N) bf16 = A B, blocks of 32x32 over the team. A tile (mb, kb) is at a + mb*a_m + kb*a_k with row
 * stride a_ld bytes; B tiles are packed [NB][KB]. */
static void tiles_gemm(const char *a, size_t a_m, size_t a_k, size_t a_ld, const uint32_t *Bp, int M, int N, int K,
                       uint16_t *C, Epilogue ep) {
    int KB = up32(K) / 32;
    float acc[2][16][32] __attribute__((aligned(64)));
#pragma omp for schedule(static) collapse(2) nowait
    for (int mb = 0; mb < up32(M) / 16; mb += 2)
        for (int nb = 0; nb < up32(N) / 16; nb += 2) {
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int kb = 0; kb < KB; kb++) {
                _tile_loadd(4, a + mb * a_m + kb * a_k, a_ld);
                _tile_loadd(5, a + (mb + 1) * a_m + kb * a_k, a_ld);
                _tile_loadd(6, Bp + ((size_t)nb * KB + kb) * 256, 64);
                _tile_loadd(7, Bp + ((size_t)(nb + 1) * KB + kb) * 256, 64);
                _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, &acc[0][0][0], 128); _tile_stored(1, &acc[0][0][16], 128);
            _tile_stored(2, &acc[1][0][0], 128); _tile_stored(3, &acc[1][0][16], 128);
            __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
            __mmask32 cols = lanes(N - nb * 16);
            if (ep.bias) {
                __m512i b = _mm512_maskz_loadu_epi16(cols, ep.bias + nb * 16);
                b0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)), 16));
                b1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1)), 16));
            }
            for (int h = 0; h < 2; h++)
                for (int r = 0; r < 16 && mb * 16 + h * 16 + r < M; r++) {
                    size_t o = (size_t)(mb * 16 + h * 16 + r) * N + nb * 16;
                    __m512 lo = _mm512_add_ps(_mm512_load_ps(&acc[h][r][0]), b0);
                    __m512 hi = _mm512_add_ps(_mm512_load_ps(&acc[h][r][16]), b1);
                    if (ep.residual) {
                        __m512i res = _mm512_maskz_loadu_epi16(cols, ep.residual + o);
                        lo = _mm512_add_ps(lo, _mm512_castsi512_ps(_mm512_slli_epi32(
                                                   _mm512_cvtepu16_epi32(_mm512_castsi512_si256(res)), 16)));
                        hi = _mm512_add_ps(hi, _mm512_castsi512_ps(_mm512_slli_epi32(
                                                   _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(res, 1)), 16)));
                    }
                    __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
                    if (ep.times)
                        v = _mm512_cvtne2ps_pbh(_mm512_mul_ps(bf16_hi(v), bf16_load(ep.times + o + 16)),
                                                _mm512_mul_ps(bf16_lo(v), bf16_load(ep.times + o)));
                    if (ep.gelu_out)
                        gelu32(v, ep.gelu_out + o, ep.gelu_grad_out ? ep.gelu_grad_out + o : NULL);
                    else
                        _mm512_mask_storeu_epi16(C + o, cols, (__m512i)v);
                }
        }
}

#define ROWS(X, ld) (const char *)(X), (size_t)16 * (ld) * 2, 64, (size_t)(ld) * 2  /* A tiles read in place */
#define PACKED(P, K) (const char *)(P), (size_t)(up32(K) / 32) * 1024, 1024, 64  /* A tiles packed [MB][KB] */

/* y (M, N) = x (M, K) W (N, K)^T (+ bias (N)) (+ residual (M, N)); 0, or -1 when out of memory */
int lmlab_linear_fwd(const uint16_t *x, const uint16_t *w, const uint16_t *bias, const uint16_t *residual, uint16_t *y,
                     int M, int N, int K, int nt) {
    int in_place = M % 32 == 0 && K % 32 == 0;
    size_t wb = (size_t)up32(N) * up32(K) * 2, xb = in_place ? 0 : (size_t)up32(M) * up32(K) * 2;
    char *mem = aligned_alloc(64, wb + xb + 64);
    if (!mem) return -1;
    uint32_t *wp = (uint32_t *)mem, *xp = (uint32_t *)(mem + wb);
#pragma omp parallel num_threads(nt)
    {
        pack_b_transposed(w, N, K, wp);
        if (!in_place) pack_a(x, M, K, xp);
        tiles_configure();
#pragma omp barrier
        if (in_place) tiles_gemm(ROWS(x, K), wp, M, N, K, y, (Epilogue){bias, NULL, NULL, NULL, residual});
        else tiles_gemm(PACKED(xp, K), wp, M, N, K, y, (Epilogue){bias, NULL, NULL, NULL, residual});
        _tile_release();
    }
    free(mem);
    return 0;
}

/* dx (M, K) = dy (M, N) W (N, K) and dw (N, K) = dy^T x, each skipped when its pointer is NULL */
int lmlab_linear_bwd(const uint16_t *dy, const uint16_t *x, const uint16_t *w, uint16_t *dx, uint16_t *dw, int M,
                     int N, int K, int nt) {
    int in_place = M % 32 == 0 && N % 32 == 0;
    size_t Mp = up32(M), Np = up32(N), Kp = up32(K);
    size_t wb = dx ? Np * Kp * 2 : 0, db = dx && !in_place ? Mp * Np * 2 : 0, xb = dw ? Mp * Kp * 2 : 0,
           gb = dw ? Mp * Np * 2 : 0;
    char *mem = aligned_alloc(64, wb + db + xb + gb + 64);
    if (!mem) return -1;
    uint32_t *wp = (uint32_t *)mem, *dp = (uint32_t *)(mem + wb), *xp = (uint32_t *)(mem + wb + db),
             *gp = (uint32_t *)(mem + wb + db + xb);
#pragma omp parallel num_threads(nt)
    {
        if (dx) pack_b(w, N, K, wp);
        if (dx && !in_place) pack_a(dy, M, N, dp);
        if (dw) pack_b(x, M, K, xp), pack_a_transposed(dy, M, N, gp);
        tiles_configure();
#pragma omp barrier
        if (dx && in_place) tiles_gemm(ROWS(dy, N), wp, M, K, N, dx, (Epilogue){0});
        if (dx && !in_place) tiles_gemm(PACKED(dp, N), wp, M, K, N, dx, (Epilogue){0});
        if (dw) tiles_gemm(PACKED(gp, M), xp, N, K, M, dw, (Epilogue){0});
        _tile_release();
    }
    free(mem);
    return 0;
}

/* A GELU MLP, y = gelu(x W_up^T + b_up) W_down^T + b_down (+ residual), for x (M, D), W_up (F, D), W_down (D, F):
 * the GELU runs in the up projection's epilogue, which keeps g = gelu(h) and d = gelu'(h) (h = x W_up^T + b_up,
 * rounded to bf16 as PyTorch's linear would) for the backward; d may be NULL (no backward). */
int lmlab_mlp_fwd(const uint16_t *x, const uint16_t *w_up, const uint16_t *b_up, const uint16_t *w_down,
                  const uint16_t *b_down, const uint16_t *residual, uint16_t *g, uint16_t *d, uint16_t *y, int M, int D,
                  int F, int nt) {
    uint32_t *wp = aligned_alloc(64, (size_t)4 * F * D);
    if (!wp) return -1;
    uint32_t *up = wp, *down = wp + (size_t)F * D / 2;
#pragma omp parallel num_threads(nt)
    {
        pack_b_transposed(w_up, F, D, up);
        pack_b_transposed(w_down, D, F, down);
        tiles_configure();
#pragma omp barrier
        tiles_gemm(ROWS(x, D), up, M, F, D, NULL, (Epilogue){b_up, g, d, NULL});
#pragma omp barrier
        tiles_gemm(ROWS(g, F), down, M, D, F, y, (Epilogue){b_down, NULL, NULL, NULL, residual});
        _tile_release();
    }
    free(wp);
    return 0;
}

/* Its backward from dy (M, D): dh = (dy W_down) * d (kept: the caller sums it for b_up's gradient),
 * dW_down = dy^T g, dx = dh W_up, dW_up = dh^T x; dx and the weight gradients skipped when NULL. */
int lmlab_mlp_bwd(const uint16_t *dy, const uint16_t *x, const uint16_t *d, const uint16_t *g, const uint16_t *w_up,
                  const uint16_t *w_down, uint16_t *dh, uint16_t *dx, uint16_t *dw_up, uint16_t *dw_down, int M, int D,
                  int F, int nt) {
    size_t fd = (size_t)F * D * 2, md = (size_t)M * D * 2, mf = (size_t)M * F * 2;
    char *mem = aligned_alloc(64, 2 * fd + 2 * md + 2 * mf);
    if (!mem) return -1;
    uint32_t *wd = (uint32_t *)mem, *wu = (uint32_t *)(mem + fd), *gp = (uint32_t *)(mem + 2 * fd),
             *xp = (uint32_t *)(mem + 2 * fd + mf), *dyt = (uint32_t *)(mem + 2 * fd + mf + md),
             *dht = (uint32_t *)(mem + 2 * fd + mf + 2 * md);
#pragma omp parallel num_threads(nt)
    {
        pack_b(w_down, D, F, wd);
        if (dw_down) pack_b(g, M, F, gp), pack_a_transposed(dy, M, D, dyt);
        if (dx) pack_b(w_up, F, D, wu);
        if (dw_up) pack_b(x, M, D, xp);
        tiles_configure();
#pragma omp barrier
        tiles_gemm(ROWS(dy, D), wd, M, F, D, dh, (Epilogue){NULL, NULL, NULL, d});
        if (dw_down) tiles_gemm(PACKED(dyt, M), gp, D, F, M, dw_down, (Epilogue){0});
#pragma omp barrier
        if (dw_up) pack_a_transposed(dh, M, F, dht);
#pragma omp barrier
        if (dx) tiles_gemm(ROWS(dh, F), wu, M, D, F, dx, (Epilogue){0});
        if (dw_up) tiles_gemm(PACKED(dht, M), xp, F, D, M, dw_up, (Epilogue){0});
        _tile_release();
    }
    free(mem);
    return 0;
}
#else
int lmlab_amx_ready(void) { return 0; }
int lmlab_linear_fwd(const uint16_t *x, const uint16_t *w, const uint16_t *bias, const uint16_t *residual, uint16_t *y,
                     int M, int N, int K, int nt) { return -2; }
int lmlab_linear_bwd(const uint16_t *dy, const uint16_t *x, const uint16_t *w, uint16_t *dx, uint16_t *dw, int M,
                     int N, int K, int nt) { return -2; }
int lmlab_mlp_fwd(const uint16_t *x, const uint16_t *w_up, const uint16_t *b_up, const uint16_t *w_down,
                  const uint16_t *b_down, const uint16_t *residual, uint16_t *g, uint16_t *d, uint16_t *y, int M, int D,
                  int F, int nt) { return -2; }
int lmlab_mlp_bwd(const uint16_t *dy, const uint16_t *x, const uint16_t *d, const uint16_t *g, const uint16_t *w_up,
                  const uint16_t *w_down, uint16_t *dh, uint16_t *dx, uint16_t *dw_up, uint16_t *dw_down, int M, int D,
                  int F, int nt) { return -2; }
#endif

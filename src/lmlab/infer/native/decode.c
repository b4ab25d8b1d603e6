/* One decode step of a dense decoder-only transformer, for the CPU.
 *
 * Why this exists: a 1M-parameter model does about 1M multiply-adds per token, a few
 * microseconds of arithmetic, but a PyTorch forward pass issues ~60 operator calls of
 * 3-10 us each, so decoding a lab-sized model token by token is all dispatch overhead;
 * and a larger model's decode step is bound by reading its weights, which one call that
 * streams them once (in bf16 if asked) over every core does as well as anything can.
 * This file does the whole step (embedding, every block, the head) in one call, reading
 * the model's own parameters and lmlab's KV cache in place: nothing is copied.
 *
 * Layouts (row-major, as PyTorch stores them): linear weight (out, in), fp32 or bf16 like
 * every parameter; KV cache fp32 (layers, batch, kv_heads, max_len, head_dim); the qkv
 * output is [q heads | k heads | v heads], head h at [h*D, (h+1)*D). Activations are fp32.
 * Semantics follow lmlab.model.transformer for pre-norm blocks: LayerNorm or RMSNorm,
 * learned or rotary (half-split) positions, GELU (exact or tanh) or SwiGLU, grouped-query
 * attention (query head h reads kv head h / (H / Hkv)), tied or separate output head.
 *
 * Threads: every phase of the step (norms, each linear's output columns, attention's
 * (row, head) pairs, the activation) is cut into one slice per thread, with a barrier
 * between phases; each thread so reads only its share of the weights.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_SWIGLU = 2 };
/* Integer config, in this order (the Python side builds it). */
enum { C_LAYERS, C_DMODEL, C_HEADS, C_KVHEADS, C_HEADDIM, C_FF, C_VOCAB, C_MAXLEN, C_NORM, C_ACT, C_ROPE, C_BF16,
       C_COUNT };
/* Float config. */
enum { F_EPS, F_ATTN_SCALE, F_INV_WIDTH, F_COUNT };
/* Global weights, then LAYER_W per layer. A missing one (e.g. a bias) is NULL. */
enum { W_TOK, W_POS, W_COS, W_SIN, W_NORMF_W, W_NORMF_B, W_HEAD, W_GLOBAL };
enum { L_N1W, L_N1B, L_QKVW, L_QKVB, L_PROJW, L_PROJB, L_N2W, L_N2B, L_UPW, L_UPB, L_DOWNW, L_DOWNB, LAYER_W };

/* ---- eight-lane vectors (GCC/Clang vector extensions: SSE/AVX/NEON as the target allows) ---- */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4)));

static inline float hsum(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* Eight fp32 weights (bf16 ones are read sixteen at a time by ld16). */
static inline v8 ld(const void *p, size_t i) { return *(const v8 *)((const float *)p + i); }

/* Sixteen bf16 weights as two fp32 vectors without a shuffle: as 32-bit words, the even-indexed
 * weight is the low half (shift it up) and the odd-indexed one the high half (mask it). The inputs
 * are laid out to match once per call (see `deinterleave`). */
static inline __attribute__((always_inline)) void ld16(const uint16_t *p, v8 *even, v8 *odd) {
    v8u u = *(const v8u *)p;
    *even = (v8)(u << 16);
    *odd = (v8)(u & 0xffff0000u);
}

/* x (B rows of n) -> per 16-element chunk, its 8 even- then its 8 odd-indexed elements (the tail of
 * n % 16 elements is copied as is). */
static void deinterleave(const float *x, int B, int n, float *out) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * n;
        float *ob = out + (size_t)b * n;
        int i = 0;
        for (; i + 16 <= n; i += 16)
            for (int k = 0; k < 8; k++) {
                ob[i + k] = xb[i + 2 * k];
                ob[i + 8 + k] = xb[i + 2 * k + 1];
            }
        for (; i < n; i++) ob[i] = xb[i];
    }
}

/* One weight from fp32 or bf16 storage (bf16 is the top half of an fp32). */
static inline __attribute__((always_inline)) float ld1(const void *p, size_t i, int bf) {
    if (!bf) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline v8 vsel(v8i m, v8 a, v8 b) { return (v8)(((v8i)a & m) | ((v8i)b & ~m)); }

/* exp on eight lanes (Cephes' expf scheme: 2^n * e^r with |r| <= ln2/2, degree-6 polynomial; ~1 ulp):
 * glibc's expf is scalar, and the softmax and the GELU call it hundreds of times per row per layer. */
static inline v8 vexp(v8 x) {
    const float hi = 88.3762626647949f;
    x = vsel(x > hi, (v8){0} + hi, x);
    x = vsel(x < -hi, (v8){0} - hi, x);
    v8 fx = x * 1.44269504088896341f;
    v8i n = __builtin_convertvector(fx + vsel(fx < 0, (v8){0} - 0.5f, (v8){0} + 0.5f), v8i);
    v8 nf = __builtin_convertvector(n, v8);
    v8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    return p * (v8)((n + 127) << 23);
}

/* Exact (erf) GELU on eight lanes: erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the same
 * approximation PyTorch's vectorised CPU kernel uses. */
static inline v8 vgelu(v8 x) {
    v8 z = x * 0.70710678118654752f;
    v8i neg = z < 0;
    v8 az = vsel(neg, -z, z);
    v8 t = 1.f / (1.f + 0.3275911f * az);
    v8 poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
    v8 e = 1.f - poly * vexp(-az * az);
    return 0.5f * x * (1.f + vsel(neg, -e, e));
}

static float dot(const float *a, const float *b, int n) {
    v8 acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) acc += *(const v8 *)(a + i) * *(const v8 *)(b + i);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void put(float *y, float v, int accumulate) { *y = accumulate ? *y + v : v; }

/* ---- the matrix kernels: y[b, o] = sum_i x[b, i] W[o, i] (+ bias[o]) (+ y[b, o] if accumulate) ---- */

/* Four rows of x against four weight rows: sixteen independent accumulators, eight loads per
 * sixteen multiply-adds. */
static inline __attribute__((always_inline)) void tile4x4(const float *x, int in, const void *W, size_t o,
                                                          const void *bias, int out, float *y, int acc, int bf) {
    v8 a[4][4] = {{{0}}};
    int i = 0;
    if (bf) { /* x is deinterleaved: see ld16 */
        for (; i + 16 <= in; i += 16) {
            v8 we[4], wo[4];
            for (int r = 0; r < 4; r++) ld16((const uint16_t *)W + (o + r) * in + i, &we[r], &wo[r]);
            for (int b = 0; b < 4; b++) {
                v8 xe = *(const v8 *)(x + (size_t)b * in + i), xo = *(const v8 *)(x + (size_t)b * in + i + 8);
                for (int r = 0; r < 4; r++) a[b][r] += we[r] * xe + wo[r] * xo;
            }
        }
    } else {
        for (; i + 8 <= in; i += 8) {
            v8 wv[4], xv[4];
            for (int r = 0; r < 4; r++) wv[r] = ld(W, (o + r) * in + i);
            for (int b = 0; b < 4; b++) xv[b] = *(const v8 *)(x + (size_t)b * in + i);
            for (int b = 0; b < 4; b++)
                for (int r = 0; r < 4; r++) a[b][r] += wv[r] * xv[b];
        }
    }
    for (int b = 0; b < 4; b++)
        for (int r = 0; r < 4; r++) {
            float s = hsum(a[b][r]);
            for (int k = i; k < in; k++) s += ld1(W, (o + r) * in + k, bf) * x[(size_t)b * in + k];
            put(y + (size_t)b * out + o + r, s + (bias ? ld1(bias, o + r, bf) : 0.f), acc);
        }
}

/* One row of x against eight weight rows: eight independent accumulators share each load of x. A
 * single row is bound by reading the weights from memory, so the next block's rows are prefetched
 * (measured on GPT-2 124M: 22 -> 13 ms per token in bf16 on two cores). */
static inline __attribute__((always_inline)) void tile1x8(const float *x, int in, const void *W, size_t o,
                                                          const void *bias, float *y, int acc, int bf) {
    v8 a[8] = {{0}};
    int i = 0;
    if (bf) { /* x is deinterleaved: see ld16 */
        for (; i + 16 <= in; i += 16) {
            v8 xe = *(const v8 *)(x + i), xo = *(const v8 *)(x + i + 8);
            for (int r = 0; r < 8; r++) {
                v8 we, wo;
                __builtin_prefetch((const uint16_t *)W + (o + 8 + r) * in + i); /* the next block's rows */
                ld16((const uint16_t *)W + (o + r) * in + i, &we, &wo);
                a[r] += we * xe + wo * xo;
            }
        }
    } else {
        for (; i + 8 <= in; i += 8) {
            v8 xv = *(const v8 *)(x + i);
            for (int r = 0; r < 8; r++) {
                __builtin_prefetch((const float *)W + (o + 8 + r) * in + i);
                a[r] += ld(W, (o + r) * in + i) * xv;
            }
        }
    }
    for (int r = 0; r < 8; r++) {
        float s = hsum(a[r]);
        for (int k = i; k < in; k++) s += ld1(W, (o + r) * in + k, bf) * x[k];
        put(y + o + r, s + (bias ? ld1(bias, o + r, bf) : 0.f), acc);
    }
}

/* Output columns [o0, o1) for all B rows. A block of weight rows is loaded once and used for every
 * row of the batch while it sits in the L1 cache. */
static inline __attribute__((always_inline)) void linear_impl(const float *x, int B, int in, const void *W,
                                                              const void *bias, int out, float *y, int acc,
                                                              int o0, int o1, int bf) {
    int o = o0;
    for (; o + 8 <= o1; o += 8) {
        int b = 0;
        for (; b + 4 <= B; b += 4) {
            tile4x4(x + (size_t)b * in, in, W, o, bias, out, y + (size_t)b * out, acc, bf);
            tile4x4(x + (size_t)b * in, in, W, o + 4, bias, out, y + (size_t)b * out, acc, bf);
        }
        for (; b < B; b++) tile1x8(x + (size_t)b * in, in, W, o, bias, y + (size_t)b * out, acc, bf);
    }
    for (; o < o1; o++)
        for (int b = 0; b < B; b++) {
            float s = 0.f;
            for (int k = 0; k < in; k++) {
                int c = k - k % 16, j = k % 16, src = k; /* where weight k's input sits in x */
                if (bf && c + 16 <= in) src = c + (j < 8 ? 2 * j : 2 * (j - 8) + 1);
                s += ld1(W, (size_t)o * in + src, bf) * x[(size_t)b * in + k];
            }
            put(y + (size_t)b * out + o, s + (bias ? ld1(bias, o, bf) : 0.f), acc);
        }
}

/* `scratch` holds B * in floats: bf16 weights read x deinterleaved (see ld16). */
static void linear(const float *x, int B, int in, const void *W, const void *bias, int out, float *y, int acc,
                   int o0, int o1, int bf, float *scratch) {
    if (bf) {
        deinterleave(x, B, in, scratch);
        linear_impl(scratch, B, in, W, bias, out, y, acc, o0, o1, 1);
    } else {
        linear_impl(x, B, in, W, bias, out, y, acc, o0, o1, 0);
    }
}

static void norm(const float *x, float *y, int n, const void *w, const void *bias, int kind, float eps, int bf) {
    float mean = 0.f, var = 0.f;
    if (kind == NORM_LAYER) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float r = 1.f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - mean) * r * (w ? ld1(w, i, bf) : 1.f) + (bias ? ld1(bias, i, bf) : 0.f);
}

static void rope(float *x, const void *cs, const void *sn, size_t at, int D, int bf) {
    int h = D / 2;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h], c = ld1(cs, at + i, bf), s = ld1(sn, at + i, bf);
        x[i] = a * c - b * s;
        x[i + h] = b * c + a * s;
    }
}

/* ---- one step, shared by its threads ---- */

typedef struct {
    volatile int count, sense;
    int n;
} Barrier;

static void barrier_wait(Barrier *b, int *local) {
    if (b->n == 1) return;
    *local = !*local;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->sense, *local, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) != *local; spins++) {
        if (spins > 20000) sched_yield();  /* the other core is busy elsewhere: do not burn it */
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

typedef struct {
    const int64_t *cfg;
    const double *fcfg;
    const void *const *w;
    const int64_t *tokens, *pos;
    float *kc, *vc, *logits;
    int B, cache_batch, cache_len, threads;
    float *x, *h, *qkv, *y, *u, *g, *att; /* shared activations; att: one row of scores per thread */
    float *scr;                           /* per thread: B x (widest linear input) floats */
    int scr_n;
    Barrier bar;
    volatile int go; /* 0: wait, 1: run, -1: stop (a thread could not be started) */
} Step;

typedef struct {
    Step *s;
    int t;
} Worker;

/* This thread's share [lo, hi) of n items. */
static inline void share(int n, int t, int T, int *lo, int *hi) {
    *lo = (int)((long)n * t / T);
    *hi = (int)((long)n * (t + 1) / T);
}

static void attend(Step *s, int l, int b, int hh, float *att) {
    const int64_t *cfg = s->cfg;
    const int H = (int)cfg[C_HEADS], Hkv = (int)cfg[C_KVHEADS], D = (int)cfg[C_HEADDIM], C = s->cache_len;
    const int nq = H * D, nqkv = nq + 2 * Hkv * D, bf = (int)cfg[C_BF16];
    const float scale = (float)s->fcfg[F_ATTN_SCALE];
    const int64_t p = s->pos[b];
    const int gh = hh / (H / Hkv);
    float *q = s->qkv + (size_t)b * nqkv + (size_t)hh * D;
    size_t base = ((((size_t)l * s->cache_batch + b) * Hkv + gh) * C) * D;
    if (cfg[C_ROPE]) rope(q, s->w[W_COS], s->w[W_SIN], (size_t)p * (D / 2), D, bf);
    if (hh % (H / Hkv) == 0) { /* the first query head of a group stores the group's new key and value */
        float *k = s->qkv + (size_t)b * nqkv + nq + (size_t)gh * D, *v = k + (size_t)Hkv * D;
        if (cfg[C_ROPE]) rope(k, s->w[W_COS], s->w[W_SIN], (size_t)p * (D / 2), D, bf);
        memcpy(s->kc + base + (size_t)p * D, k, D * sizeof(float));
        memcpy(s->vc + base + (size_t)p * D, v, D * sizeof(float));
    }
    const float *kh = s->kc + base, *vh = s->vc + base;
    float m = -INFINITY, sum = 0.f;
    for (int j = 0; j <= p; j++) {
        att[j] = dot(q, kh + (size_t)j * D, D) * scale;
        if (att[j] > m) m = att[j];
    }
    int j = 0;
    v8 acc = {0};
    for (; j + 8 <= p + 1; j += 8) {
        v8 e = vexp(*(v8 *)(att + j) - m);
        *(v8 *)(att + j) = e;
        acc += e;
    }
    sum = hsum(acc);
    for (; j <= p; j++) sum += (att[j] = expf(att[j] - m));
    float *yh = s->y + (size_t)b * nq + (size_t)hh * D;
    memset(yh, 0, D * sizeof(float));
    for (j = 0; j <= p; j++) {
        const float a = att[j] / sum, *vj = vh + (size_t)j * D;
        for (int i = 0; i < D; i++) yh[i] += a * vj[i];
    }
}

static void *run(void *arg) {
    Worker *wk = arg;
    Step *s = wk->s;
    while (__atomic_load_n(&s->go, __ATOMIC_ACQUIRE) == 0) sched_yield();
    if (s->go < 0) return NULL;
    const int t = wk->t, T = s->threads;
    const int64_t *cfg = s->cfg;
    const void *const *w = s->w;
    const int L = (int)cfg[C_LAYERS], d = (int)cfg[C_DMODEL], H = (int)cfg[C_HEADS], Hkv = (int)cfg[C_KVHEADS];
    const int D = (int)cfg[C_HEADDIM], ff = (int)cfg[C_FF], V = (int)cfg[C_VOCAB], B = s->B;
    const int kind = (int)cfg[C_NORM], act = (int)cfg[C_ACT], bf = (int)cfg[C_BF16];
    const float eps = (float)s->fcfg[F_EPS], inv_width = (float)s->fcfg[F_INV_WIDTH];
    const int nq = H * D, nqkv = nq + 2 * Hkv * D, up = act == ACT_SWIGLU ? 2 * ff : ff;
    float *x = s->x, *h = s->h, *att = s->att + (size_t)t * s->cache_len;
    float *scr = s->scr + (size_t)t * s->scr_n;
    int sense = 0, lo, hi, rlo, rhi;
    share(B, t, T, &rlo, &rhi);

    for (int b = rlo; b < rhi; b++)
        for (int i = 0; i < d; i++)
            x[(size_t)b * d + i] = ld1(w[W_TOK], (size_t)s->tokens[b] * d + i, bf) +
                                   (w[W_POS] ? ld1(w[W_POS], (size_t)s->pos[b] * d + i, bf) : 0.f);
    for (int l = 0; l < L; l++) {
        const void *const *lw = w + W_GLOBAL + (size_t)l * LAYER_W;
        for (int b = rlo; b < rhi; b++)
            norm(x + (size_t)b * d, h + (size_t)b * d, d, lw[L_N1W], lw[L_N1B], kind, eps, bf);
        barrier_wait(&s->bar, &sense);
        share(nqkv, t, T, &lo, &hi);
        linear(h, B, d, lw[L_QKVW], lw[L_QKVB], nqkv, s->qkv, 0, lo, hi, bf, scr);
        barrier_wait(&s->bar, &sense);
        share(B * H, t, T, &lo, &hi);
        /* query heads of one kv group stay on one thread: its first head writes the cache the rest read */
        int rep = H / Hkv;
        lo = (lo + rep - 1) / rep * rep;
        hi = t == T - 1 ? B * H : (hi + rep - 1) / rep * rep;
        for (int k = lo; k < hi; k++) attend(s, l, k / H, k % H, att);
        barrier_wait(&s->bar, &sense);
        share(d, t, T, &lo, &hi);
        linear(s->y, B, nq, lw[L_PROJW], lw[L_PROJB], d, x, 1, lo, hi, bf, scr);
        barrier_wait(&s->bar, &sense);
        for (int b = rlo; b < rhi; b++)
            norm(x + (size_t)b * d, h + (size_t)b * d, d, lw[L_N2W], lw[L_N2B], kind, eps, bf);
        barrier_wait(&s->bar, &sense);
        share(ff, t, T, &lo, &hi);
        linear(h, B, d, lw[L_UPW], lw[L_UPB], up, s->u, 0, lo, hi, bf, scr);
        if (act == ACT_SWIGLU) /* each gate column stays with its up column */
            linear(h, B, d, lw[L_UPW], lw[L_UPB], up, s->u, 0, ff + lo, ff + hi, bf, scr);
        for (int b = 0; b < B; b++) { /* the activation on this thread's own columns: no barrier needed */
            const float *ub = s->u + (size_t)b * up;
            float *gb = s->g + (size_t)b * ff;
            int i = lo;
            if (act == ACT_SWIGLU) {
                for (; i < hi; i++) gb[i] = ub[i] / (1.f + expf(-ub[i])) * ub[ff + i];
            } else if (act == ACT_GELU_TANH) {
                for (; i < hi; i++) {
                    float z = ub[i];
                    gb[i] = 0.5f * z * (1.f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
                }
            } else {
                for (; i + 8 <= hi; i += 8) {
                    v8 r = vgelu(*(const v8 *)(ub + i));
                    memcpy(gb + i, &r, sizeof r);
                }
                for (; i < hi; i++) gb[i] = 0.5f * ub[i] * (1.f + erff(ub[i] * 0.70710678118654752f));
            }
        }
        barrier_wait(&s->bar, &sense);
        share(d, t, T, &lo, &hi);
        linear(s->g, B, ff, lw[L_DOWNW], lw[L_DOWNB], d, x, 1, lo, hi, bf, scr);
        barrier_wait(&s->bar, &sense);
    }
    for (int b = rlo; b < rhi; b++) {
        norm(x + (size_t)b * d, h + (size_t)b * d, d, w[W_NORMF_W], w[W_NORMF_B], kind, eps, bf);
        for (int i = 0; i < d; i++) h[(size_t)b * d + i] *= inv_width;
    }
    barrier_wait(&s->bar, &sense);
    share(V, t, T, &lo, &hi);
    linear(h, B, d, w[W_HEAD], NULL, V, s->logits, 0, lo, hi, bf, scr);
    return NULL;
}

/* Decode one token for each of the B rows with up to `threads` threads. Returns 0, or -1 when a
 * position is out of range, -2 when out of memory. */
int lmlab_decode_step(const int64_t *cfg, const double *fcfg, const void *const *w, int B, const int64_t *tokens,
                      const int64_t *pos, float *kc, float *vc, int cache_batch, int cache_len, float *logits,
                      int threads) {
    for (int b = 0; b < B; b++)
        if (pos[b] < 0 || pos[b] >= cache_len || pos[b] >= cfg[C_MAXLEN]) return -1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    const int d = (int)cfg[C_DMODEL], H = (int)cfg[C_HEADS], Hkv = (int)cfg[C_KVHEADS], D = (int)cfg[C_HEADDIM];
    const int ff = (int)cfg[C_FF], nq = H * D, nqkv = nq + 2 * Hkv * D;
    const int up = cfg[C_ACT] == ACT_SWIGLU ? 2 * ff : ff;
    int widest = d > nq ? d : nq;
    widest = widest > ff ? widest : ff;
    size_t n = (size_t)B * (2 * d + nqkv + nq + up + ff) + (size_t)threads * (cache_len + 8 + (size_t)B * widest);
    float *buf = malloc(n * sizeof(float));
    if (!buf) return -2;
    Step s = {cfg, fcfg, w, tokens, pos, kc, vc, logits, B, cache_batch, cache_len, threads};
    s.x = buf;
    s.h = s.x + (size_t)B * d;
    s.qkv = s.h + (size_t)B * d;
    s.y = s.qkv + (size_t)B * nqkv;
    s.u = s.y + (size_t)B * nq;
    s.g = s.u + (size_t)B * up;
    s.att = s.g + (size_t)B * ff;
    s.scr = s.att + (size_t)threads * (cache_len + 8);
    s.scr_n = B * widest;
    s.bar.n = threads;
    Worker wk[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started = 1;
    for (int t = 0; t < threads; t++) wk[t] = (Worker){&s, t};
    for (; started < threads; started++)
        if (pthread_create(&tid[started], NULL, run, &wk[started]) != 0) break;
    if (started < threads) { /* no thread to be had: stop the ones started, then go on alone */
        __atomic_store_n(&s.go, -1, __ATOMIC_RELEASE);
        for (int t = 1; t < started; t++) pthread_join(tid[t], NULL);
        started = 1;
        s.threads = s.bar.n = 1;
        s.go = 0;
    }
    __atomic_store_n(&s.go, 1, __ATOMIC_RELEASE);
    run(&wk[0]);
    for (int t = 1; t < started; t++) pthread_join(tid[t], NULL);
    free(buf);
    return 0;
}

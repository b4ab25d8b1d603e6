/* One decode step of a small dense decoder-only transformer, for the CPU.
 *
 * Why this exists: a 1M-parameter model does about 1M multiply-adds per token, a few
 * microseconds of arithmetic, but a PyTorch forward pass issues ~60 operator calls of
 * 3-10 us each. Decoding such a model token by token is all dispatch overhead. This
 * file does the whole step (embedding, every block, the head) in one call, reading
 * the model's own fp32 parameters and lmlab's KV cache in place: nothing is copied.
 *
 * Layouts (all row-major fp32, as PyTorch stores them):
 *   linear weight (out, in); cache k/v (layers, batch, kv_heads, max_len, head_dim);
 *   qkv output = [q heads | k heads | v heads], head h at [h*D, (h+1)*D).
 * Semantics follow lmlab.model.transformer for pre-norm blocks: LayerNorm or RMSNorm,
 * learned or rotary (half-split) positions, GELU (exact or tanh) or SwiGLU, grouped-query
 * attention (query head h reads kv head h / (H / Hkv)), tied or separate output head.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { ACT_GELU = 0, ACT_GELU_TANH = 1, ACT_SWIGLU = 2 };

/* Integer config, in this order (the Python side builds it). */
enum { C_LAYERS, C_DMODEL, C_HEADS, C_KVHEADS, C_HEADDIM, C_FF, C_VOCAB, C_MAXLEN, C_NORM, C_ACT, C_ROPE,
       C_COUNT };
/* Float config. */
enum { F_EPS, F_ATTN_SCALE, F_INV_WIDTH, F_COUNT };
/* Global weights, then LAYER_W per layer. A missing one (e.g. a bias) is NULL. */
enum { W_TOK, W_POS, W_COS, W_SIN, W_NORMF_W, W_NORMF_B, W_HEAD, W_GLOBAL };
enum { L_N1W, L_N1B, L_QKVW, L_QKVB, L_PROJW, L_PROJB, L_N2W, L_N2B, L_UPW, L_UPB, L_DOWNW, L_DOWNB, LAYER_W };

/* Eight floats: GCC/Clang vector extensions compile to SSE/AVX/NEON as the target allows. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));

static inline float hsum(v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static float dot(const float *a, const float *b, int n) {
    v8 acc = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) acc += *(const v8 *)(a + i) * *(const v8 *)(b + i);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));

/* exp on eight lanes (Cephes' expf scheme: 2^n * e^r with |r| <= ln2/2, degree-6 polynomial; ~1 ulp).
 * glibc's expf is scalar, and the softmax and the GELU call it hundreds of times per row per layer. */
/* lanes of a where m is set (all ones), else of b */
static inline v8 vsel(v8i m, v8 a, v8 b) { return (v8)(((v8i)a & m) | ((v8i)b & ~m)); }

static inline v8 vexp(v8 x) {
    const float hi = 88.3762626647949f;
    x = vsel(x > hi, (v8){0} + hi, x);
    x = vsel(x < -hi, (v8){0} - hi, x);
    v8 fx = x * 1.44269504088896341f;
    v8 half = vsel(fx < 0, (v8){0} - 0.5f, (v8){0} + 0.5f);
    v8i n = __builtin_convertvector(fx + half, v8i);  /* round half away from zero */
    v8 nf = __builtin_convertvector(n, v8);
    v8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    v8i bits = (n + 127) << 23;
    v8 scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
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
    e = vsel(neg, -e, e);
    return 0.5f * x * (1.f + e);
}

static inline void put(float *y, float v, int accumulate) { *y = accumulate ? *y + v : v; }

/* Four rows of x against four weight rows: sixteen independent accumulators, eight loads per
 * sixteen multiply-adds. */
static void tile4x4(const float *x, int in, const float *w, const float *bias, int out, float *y, int accumulate) {
    v8 a[4][4] = {{{0}}};
    int i = 0;
    for (; i + 8 <= in; i += 8) {
        v8 wv[4], xv[4];
        for (int r = 0; r < 4; r++) wv[r] = *(const v8 *)(w + (size_t)r * in + i);
        for (int b = 0; b < 4; b++) xv[b] = *(const v8 *)(x + (size_t)b * in + i);
        for (int b = 0; b < 4; b++)
            for (int r = 0; r < 4; r++) a[b][r] += wv[r] * xv[b];
    }
    for (int b = 0; b < 4; b++)
        for (int r = 0; r < 4; r++) {
            float s = hsum(a[b][r]);
            for (int k = i; k < in; k++) s += w[(size_t)r * in + k] * x[(size_t)b * in + k];
            put(y + (size_t)b * out + r, s + (bias ? bias[r] : 0.f), accumulate);
        }
}

/* One row of x against eight weight rows: eight independent accumulators share each load of x. */
static void tile1x8(const float *x, int in, const float *w, const float *bias, float *y, int accumulate) {
    v8 a[8] = {{0}};
    int i = 0;
    for (; i + 8 <= in; i += 8) {
        v8 xv = *(const v8 *)(x + i);
        for (int r = 0; r < 8; r++) a[r] += *(const v8 *)(w + (size_t)r * in + i) * xv;
    }
    for (int r = 0; r < 8; r++) {
        float s = hsum(a[r]);
        for (int k = i; k < in; k++) s += w[(size_t)r * in + k] * x[k];
        put(y + r, s + (bias ? bias[r] : 0.f), accumulate);
    }
}

/* y[b, o] = sum_i x[b, i] W[o, i] (+ bias[o]) (+ y[b, o] when accumulate). A block of weight rows is
 * loaded once and used for every row of the batch while it sits in the L1 cache. */
static void linear(const float *x, int B, int in, const float *W, const float *bias, int out, float *y,
                   int accumulate) {
    int o = 0;
    for (; o + 8 <= out; o += 8) {
        const float *w = W + (size_t)o * in;
        const float *bo = bias ? bias + o : NULL;
        int b = 0;
        for (; b + 4 <= B; b += 4) {
            tile4x4(x + (size_t)b * in, in, w, bo, out, y + (size_t)b * out + o, accumulate);
            tile4x4(x + (size_t)b * in, in, w + (size_t)4 * in, bo ? bo + 4 : NULL, out,
                    y + (size_t)b * out + o + 4, accumulate);
        }
        for (; b < B; b++) tile1x8(x + (size_t)b * in, in, w, bo, y + (size_t)b * out + o, accumulate);
    }
    for (; o < out; o++)
        for (int b = 0; b < B; b++)
            put(y + (size_t)b * out + o, dot(W + (size_t)o * in, x + (size_t)b * in, in) + (bias ? bias[o] : 0.f),
                accumulate);
}

static void norm(const float *x, float *y, int n, const float *w, const float *bias, int kind, float eps) {
    float mean = 0.f, var = 0.f;
    if (kind == NORM_LAYER) {
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float r = 1.f / sqrtf(var / n + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * r * (w ? w[i] : 1.f) + (bias ? bias[i] : 0.f);
}

static void rope(float *x, const float *cos_row, const float *sin_row, int D) {
    int h = D / 2;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * cos_row[i] - b * sin_row[i];
        x[i + h] = b * cos_row[i] + a * sin_row[i];
    }
}

/* The arguments of one step, and the rows [b0, b0 + B) one thread takes. */
typedef struct {
    const int64_t *cfg;
    const double *fcfg;
    const float *const *w;
    const int64_t *tokens, *pos;
    float *kc, *vc, *logits;
    int cache_batch, cache_len, b0, B, rc;
} Step;

static int decode_rows(const Step *st) {
    const int64_t *cfg = st->cfg, *tokens = st->tokens + st->b0, *pos = st->pos + st->b0;
    const double *fcfg = st->fcfg;
    const float *const *w = st->w;
    float *kc = st->kc, *vc = st->vc;
    const int B = st->B, b0 = st->b0, cache_batch = st->cache_batch, cache_len = st->cache_len;
    const int L = (int)cfg[C_LAYERS], d = (int)cfg[C_DMODEL], H = (int)cfg[C_HEADS], Hkv = (int)cfg[C_KVHEADS];
    const int D = (int)cfg[C_HEADDIM], ff = (int)cfg[C_FF], V = (int)cfg[C_VOCAB], C = cache_len;
    const int kind = (int)cfg[C_NORM], act = (int)cfg[C_ACT], use_rope = (int)cfg[C_ROPE];
    const float eps = (float)fcfg[F_EPS], scale = (float)fcfg[F_ATTN_SCALE], inv_width = (float)fcfg[F_INV_WIDTH];
    const int nq = H * D, nkv = Hkv * D, nqkv = nq + 2 * nkv, up = act == ACT_SWIGLU ? 2 * ff : ff;
    const int rep = H / Hkv;
    const int V_ = V;
    float *logits = st->logits + (size_t)b0 * V_;
    size_t n = (size_t)B * (2 * d + nqkv + nq + up + ff) + C;
    float *buf = malloc(n * sizeof(float));
    if (!buf) return -2;
    float *x = buf, *h = x + (size_t)B * d, *qkv = h + (size_t)B * d, *y = qkv + (size_t)B * nqkv;
    float *u = y + (size_t)B * nq, *g = u + (size_t)B * up, *att = g + (size_t)B * ff;

    for (int b = 0; b < B; b++) {
        const float *te = w[W_TOK] + (size_t)tokens[b] * d;
        const float *pe = w[W_POS] ? w[W_POS] + (size_t)pos[b] * d : NULL;
        for (int i = 0; i < d; i++) x[(size_t)b * d + i] = te[i] + (pe ? pe[i] : 0.f);
    }
    for (int l = 0; l < L; l++) {
        const float *const *lw = w + W_GLOBAL + (size_t)l * LAYER_W;
        for (int b = 0; b < B; b++) norm(x + (size_t)b * d, h + (size_t)b * d, d, lw[L_N1W], lw[L_N1B], kind, eps);
        linear(h, B, d, lw[L_QKVW], lw[L_QKVB], nqkv, qkv, 0);
        for (int b = 0; b < B; b++) {
            float *q = qkv + (size_t)b * nqkv, *k = q + nq, *v = k + nkv;
            const int64_t p = pos[b];
            if (use_rope) {
                const float *cs = w[W_COS] + (size_t)p * (D / 2), *sn = w[W_SIN] + (size_t)p * (D / 2);
                for (int hh = 0; hh < H; hh++) rope(q + (size_t)hh * D, cs, sn, D);
                for (int hh = 0; hh < Hkv; hh++) rope(k + (size_t)hh * D, cs, sn, D);
            }
            /* cache index (l, b, g, j, :) */
            size_t row0 = (((size_t)l * cache_batch + b0 + b) * Hkv) * C;
            for (int gh = 0; gh < Hkv; gh++) {
                memcpy(kc + (row0 + (size_t)gh * C + p) * D, k + (size_t)gh * D, D * sizeof(float));
                memcpy(vc + (row0 + (size_t)gh * C + p) * D, v + (size_t)gh * D, D * sizeof(float));
            }
            for (int hh = 0; hh < H; hh++) {
                const float *kh = kc + (row0 + (size_t)(hh / rep) * C) * D;
                const float *vh = vc + (row0 + (size_t)(hh / rep) * C) * D;
                const float *qh = q + (size_t)hh * D;
                float m = -INFINITY, s = 0.f;
                for (int j = 0; j <= p; j++) {
                    att[j] = dot(qh, kh + (size_t)j * D, D) * scale;
                    if (att[j] > m) m = att[j];
                }
                int j = 0;
                v8 acc = {0};
                for (; j + 8 <= p + 1; j += 8) {
                    v8 e = vexp(*(v8 *)(att + j) - m);
                    *(v8 *)(att + j) = e;
                    acc += e;
                }
                s = hsum(acc);
                for (; j <= p; j++) s += (att[j] = expf(att[j] - m));
                float *yh = y + (size_t)b * nq + (size_t)hh * D;
                memset(yh, 0, D * sizeof(float));
                for (int j = 0; j <= p; j++) {
                    const float a = att[j] / s, *vj = vh + (size_t)j * D;
                    for (int i = 0; i < D; i++) yh[i] += a * vj[i];
                }
            }
        }
        linear(y, B, nq, lw[L_PROJW], lw[L_PROJB], d, x, 1);
        for (int b = 0; b < B; b++) norm(x + (size_t)b * d, h + (size_t)b * d, d, lw[L_N2W], lw[L_N2B], kind, eps);
        linear(h, B, d, lw[L_UPW], lw[L_UPB], up, u, 0);
        for (int b = 0; b < B; b++) {
            const float *ub = u + (size_t)b * up;
            float *gb = g + (size_t)b * ff;
            if (act == ACT_SWIGLU) {
                for (int i = 0; i < ff; i++) gb[i] = ub[i] / (1.f + expf(-ub[i])) * ub[ff + i];
            } else if (act == ACT_GELU_TANH) {
                for (int i = 0; i < ff; i++) {
                    float t = ub[i];
                    gb[i] = 0.5f * t * (1.f + tanhf(0.7978845608f * (t + 0.044715f * t * t * t)));
                }
            } else {
                int i = 0;
                for (; i + 8 <= ff; i += 8) *(v8 *)(gb + i) = vgelu(*(const v8 *)(ub + i));
                for (; i < ff; i++) gb[i] = 0.5f * ub[i] * (1.f + erff(ub[i] * 0.70710678118654752f));
            }
        }
        linear(g, B, ff, lw[L_DOWNW], lw[L_DOWNB], d, x, 1);
    }
    for (int b = 0; b < B; b++) {
        norm(x + (size_t)b * d, h + (size_t)b * d, d, w[W_NORMF_W], w[W_NORMF_B], kind, eps);
        for (int i = 0; i < d; i++) h[(size_t)b * d + i] *= inv_width;
    }
    linear(h, B, d, w[W_HEAD], NULL, V, logits, 0);
    free(buf);
    return 0;
}

static void *decode_thread(void *arg) {
    Step *st = arg;
    st->rc = decode_rows(st);
    return NULL;
}

/* Decode one token for each of the B rows, splitting the rows over up to `threads` threads (each reads
 * the weights once; at lab sizes a step is bound by reading weights and the KV cache, so two cores
 * nearly halve it). Returns 0, or -1 when a position is out of range, -2 when out of memory. */
int lmlab_decode_step(const int64_t *cfg, const double *fcfg, const float *const *w, int B,
                      const int64_t *tokens, const int64_t *pos, float *kc, float *vc, int cache_batch,
                      int cache_len, float *logits, int threads) {
    for (int b = 0; b < B; b++)
        if (pos[b] < 0 || pos[b] >= cache_len || pos[b] >= cfg[C_MAXLEN]) return -1;
    if (threads > B) threads = B;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    Step st[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0}, rc = 0;
    for (int t = 0; t < threads; t++) {
        int lo = B * t / threads, hi = B * (t + 1) / threads;
        st[t] = (Step){cfg, fcfg, w, tokens, pos, kc, vc, logits, cache_batch, cache_len, lo, hi - lo, 0};
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], NULL, decode_thread, &st[t]) == 0;
    for (int t = 1; t < threads; t++)
        if (!started[t]) decode_thread(&st[t]);  /* no thread to be had: do its rows here */
    rc = decode_rows(&st[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        if (st[t].rc) rc = st[t].rc;
    }
    return rc;
}

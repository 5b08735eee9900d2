/* elmbench's CPU decode kernels: fp32 (the GEMV also bf16 weights), contiguous (the GEMV's weights
 * row-major, or as column panels); built once per machine by elmbench.engine.cpu_kernels with the
 * system compiler (-O3 -march=native -fopenmp). README.md beside this file says what they do, and
 * docs/engine.md what was measured.
 *
 * GCC/Clang vector extensions give 8-float registers (AVX2 on x86, two NEON on arm64) without
 * intrinsics; -march=native picks the instructions. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else /* one thread: the pragmas are ignored */
static int omp_get_num_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

typedef float vf __attribute__((vector_size(32)));
#define LANES 8

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}

/* ---- GEMV: decode's linears ----------------------------------------------------------------
 * Each thread walks one contiguous range of whole weight rows, front to back: a single sequential
 * stream, the access pattern of a plain sum, which is what the hardware prefetchers keep up with
 * best (rows interleaved several at a time are several streams). Each weight row is loaded once
 * for up to ROWS_AT_ONCE input rows; with more inputs it is reread from L1/L2.
 *
 * The input row is reread from L1 for every weight row, so a weight row and the input must fit in
 * L1 together: with rows of 5,120 floats they do not, and the reread input comes from L2, which
 * slows the stream. Long rows are therefore stored as column panels: weights
 * (P, N, K/P), each panel contiguous, and y = sum over panels of x[panel] @ w[panel]^T. */

#define ROWS_AT_ONCE 4
/* No software prefetch: the hardware's prefetcher keeps up with one sequential stream a thread,
 * and none of the hints tried (non-temporal, or into a cache level) beat it (docs/engine.md). */

static float dot(const float *a, const float *b, int64_t k) {
  vf acc = {0};
  int64_t j = 0, kv = k - k % LANES;
  for (; j < kv; j += LANES) acc += load(a + j) * load(b + j);
  float s = hsum(acc);
  for (; j < k; ++j) s += a[j] * b[j];
  return s;
}
typedef uint16_t vh __attribute__((vector_size(16))); /* 8 bf16 */
typedef uint32_t vu __attribute__((vector_size(32)));

/* A bf16 is the upper half of an fp32: widening is exact (a shift), so products and sums are
 * fp32 as in the fp32 kernel; only the weights' bytes are halved. */
static inline vf load_bf16(const uint16_t *p) {
  vh h;
  memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline float bf16_at(const uint16_t *p, int64_t j) {
  uint32_t u = (uint32_t)p[j] << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline float f32_at(const float *p, int64_t j) { return p[j]; }

/* Work sharing. Each thread owns a contiguous share of a panel's rows and takes it from the front
 * in chunks of about STEAL_BYTES (one sequential stream); a thread that runs out takes chunks from
 * the back of the others' shares. On a shared host one core often runs slower than the other for
 * a while: with a fixed split the faster one would wait at the end of every matrix; with stealing
 * it reads on. A share is packed in one atomic word, front << 32 | back. Chunks shrink as a share
 * empties (half of what is left, from STEAL_BYTES down to LAST_BYTES), so that the threads also
 * finish close together. */
#define STEAL_BYTES 262144
#define LAST_BYTES 16384
#define MAX_THREADS 256

/* Half the rows left in `share` (between `least` and `most`, all if fewer), from its front or its
 * back: their count (0: none left) and the first of them in *first. */
static int64_t claim(_Atomic uint64_t *share, int64_t least, int64_t most, int front,
                     int64_t *first) {
  uint64_t s = atomic_load(share), f, b, take, rest;
  do {
    f = s >> 32;
    b = s & 0xffffffffu;
    if (f >= b) return 0;
    take = (b - f + 1) / 2;
    take = take < (uint64_t)least ? (uint64_t)least : take > (uint64_t)most ? (uint64_t)most : take;
    take = take < b - f ? take : b - f;
    rest = front ? (f + take) << 32 | b : f << 32 | (b - take);
  } while (!atomic_compare_exchange_weak(share, &s, rest));
  *first = (int64_t)(front ? f : b - take);
  return (int64_t)take;
}

/* NAME(w, x, y, n, k, m, panels, threads): y (m, n) = x (m, k) @ w^T with fp32 x and y, weights
 * of type WT read by LOAD (eight at a time) and AT (one), stored as `panels` column panels
 * (panels, n, k / panels) (one panel: a plain row-major (n, k) matrix). Per weight row and up to
 * ROWS_AT_ONCE inputs, two accumulators per input keep the FMA latency hidden. A barrier between
 * panels orders the updates of y. Small matrices stay on one thread: waking the others costs more
 * than it saves. */
#define DEFINE_GEMV(NAME, WT, LOAD, AT)                                                         \
  /* m (1..ROWS_AT_ONCE) is a constant where this is inlined, so the accumulators stay in       \
   * registers (indexed by a variable, the compiler keeps them on the stack and every FMA       \
   * then goes through memory) */                                                               \
  static inline __attribute__((always_inline)) void NAME##_rows_m(                              \
      const WT *w, const float *x, float *y, int64_t k, int64_t ldx, int64_t ldy, int add,      \
      const int64_t m) {                                                                        \
    vf a[ROWS_AT_ONCE][2] = {{{0}}};                                                            \
    int64_t j = 0, kv = k - k % (2 * LANES);                                                    \
    for (; j < kv; j += 2 * LANES) {                                                            \
      vf w0 = LOAD(w + j), w1 = LOAD(w + j + LANES);                                            \
      for (int64_t i = 0; i < m; ++i) {                                                         \
        a[i][0] += w0 * load(x + i * ldx + j);                                                  \
        a[i][1] += w1 * load(x + i * ldx + j + LANES);                                          \
      }                                                                                         \
    }                                                                                           \
    for (int64_t i = 0; i < m; ++i) {                                                           \
      float s = hsum(a[i][0] + a[i][1]);                                                        \
      for (int64_t t = j; t < k; ++t) s += AT(w, t) * x[i * ldx + t];                           \
      y[i * ldy] = add ? y[i * ldy] + s : s;                                                    \
    }                                                                                           \
  }                                                                                             \
  static void NAME##_rows(const WT *w, const float *x, float *y, int64_t k, int64_t ldx,       \
                          int64_t m, int64_t ldy, int add) {                                    \
    switch (m) {                                                                                \
      case 1: NAME##_rows_m(w, x, y, k, ldx, ldy, add, 1); break;                               \
      case 2: NAME##_rows_m(w, x, y, k, ldx, ldy, add, 2); break;                               \
      case 3: NAME##_rows_m(w, x, y, k, ldx, ldy, add, 3); break;                               \
      default: NAME##_rows_m(w, x, y, k, ldx, ldy, add, ROWS_AT_ONCE); break;                   \
    }                                                                                           \
  }                                                                                             \
  /* weight rows [r0, r1) of one panel (w, x at its first column) for all m inputs. One input    \
   * (decode at batch 1) gets the row loop inlined, with no call per row through the row-count  \
   * switch: when memory is fast, that call shows in the read rate */                           \
  static void NAME##_span(const WT *w, const float *x, float *y, int64_t r0, int64_t r1,       \
                          int64_t width, int64_t k, int64_t m, int64_t n, int add) {            \
    if (m == 1) {                                                                               \
      for (int64_t r = r0; r < r1; ++r)                                                         \
        NAME##_rows_m(w + r * width, x, y + r, width, k, n, add, 1);                            \
      return;                                                                                   \
    }                                                                                           \
    for (int64_t r = r0; r < r1; ++r) {                                                         \
      for (int64_t i = 0; i < m; i += ROWS_AT_ONCE) {                                           \
        int64_t rows = m - i < ROWS_AT_ONCE ? m - i : ROWS_AT_ONCE;                             \
        NAME##_rows(w + r * width, x + i * k, y + i * n + r, width, k, rows, n, add);           \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
  void NAME(const WT *w, const float *x, float *y, int64_t n, int64_t k, int64_t m,            \
            int64_t panels, int threads) {                                                      \
    int64_t width = k / panels, row = width * (int64_t)sizeof(WT);                             \
    int64_t most = STEAL_BYTES / row > 0 ? STEAL_BYTES / row : 1;                               \
    int64_t least = LAST_BYTES / row > 0 ? LAST_BYTES / row : 1;                                \
    _Atomic uint64_t share[MAX_THREADS];                                                        \
    threads = threads < MAX_THREADS ? threads : MAX_THREADS;                                    \
    _Pragma("omp parallel num_threads(threads) if (n * k >= 32768)") {                          \
      int T = omp_get_num_threads(), t = omp_get_thread_num();                                  \
      for (int64_t p = 0; p < panels; ++p) {                                                    \
        const WT *wp = w + p * n * width;                                                       \
        _Pragma("omp barrier") /* everyone is done with the previous panel and its shares */    \
        _Pragma("omp single")                                                                   \
        for (int i = 0; i < T; ++i)                                                             \
          atomic_store(&share[i], (uint64_t)(n * i / T) << 32 | (uint64_t)(n * (i + 1) / T));   \
        for (int v = 0; v < T; ++v) { /* its own share first, then the others' */               \
          int64_t first, got;                                                                   \
          while ((got = claim(&share[(t + v) % T], least, most, v == 0, &first)) > 0)           \
            NAME##_span(wp, x + p * width, y, first, first + got, width, k, m, n, p > 0);       \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  }

DEFINE_GEMV(elm_gemv_f32, float, load, f32_at)
DEFINE_GEMV(elm_gemv_bf16, uint16_t, load_bf16, bf16_at)

/* ---- Attention of a few query rows over a KV cache -------------------------------------------
 * q, out (B, Hq, T, D); k, v (B, Hkv, S, D); Hq a multiple of Hkv (grouped-query attention).
 * Query row t sees keys 0..pos[t]; keys beyond the longest of them are never read.
 * Split-K ("flash decoding"): each (batch, KV head, chunk of CHUNK keys) is one work item that
 * keeps, per query row of its group, a running max, the sum of exponentials and the weighted sum
 * of V rows; a second pass merges the chunks. Every thread gets work even with few KV heads. */

#define CHUNK 128 /* keys a work item; its scores for up to MAX_ROWS rows live on the stack */
#define MAX_ROWS 64 /* query rows per KV head (group size x rows); more go through BLAS */

typedef int32_t vi __attribute__((vector_size(32)));

/* a where `mask` is set (lanes -1), else b */
static inline vf vselect(vi mask, vf a, vf b) {
  vi ai, bi;
  memcpy(&ai, &a, sizeof a);
  memcpy(&bi, &b, sizeof b);
  ai = (ai & mask) | (bi & ~mask);
  memcpy(&a, &ai, sizeof a);
  return a;
}

/* exp(x) for x <= 0, eight at a time: 2^n * p(r) with r = x - n ln 2, |r| <= ln2 / 2 (Cephes
 * coefficients, relative error ~2e-7 like expf); inputs below -87 give ~0. */
static inline vf vexp(vf x) {
  const vf lo = {0}, c0 = lo + 1.0f, lim = lo - 87.0f;
  x = vselect(x < lim, lim, x);
  /* n = round(x log2 e) for x <= 0: conversion truncates toward zero */
  vf n = -__builtin_convertvector(__builtin_convertvector(0.5f - x * 1.44269504f, vi), vf);
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = 1.9875691500e-4f + lo;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + c0;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

/* The eight sums of a[0..7] as one vector: a transpose-add tree, not eight horizontal sums. */
static inline vf sum8(const vf a[8]) {
  vf b[4], c[2];
  for (int i = 0; i < 4; ++i)
    b[i] = SHUF(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           SHUF(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  for (int i = 0; i < 2; ++i)
    c[i] = SHUF(b[2 * i], b[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           SHUF(b[2 * i], b[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return SHUF(c[0], c[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(c[0], c[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* The dot products of NR query rows (1 or 2; q0, q1) with eight key rows (D a multiple of 8),
 * each key vector loaded once for both rows. */
static inline __attribute__((always_inline)) void dot8(const float *q0, const float *q1,
                                                       const float *k, int64_t D, vf *d0, vf *d1,
                                                       const int NR) {
  vf a[2][8] = {{{0}}};
  for (int64_t j = 0; j < D; j += LANES) {
    vf x0 = load(q0 + j), x1 = load(q1 + j);
    for (int i = 0; i < 8; ++i) {
      vf y = load(k + i * D + j);
      a[0][i] += x0 * y;
      if (NR > 1) a[1][i] += x1 * y;
    }
  }
  *d0 = sum8(a[0]);
  if (NR > 1) *d1 = sum8(a[1]);
}

/* Softmax of one row's scores over a chunk, in place: the first n (of CHUNK) become exp(score - m)
 * and the rest 0; *m is the max of the first n (-inf when n is 0), *l the sum. */
static void softmax_row(float *score, int64_t n, float *m, float *l) {
  const vf lanes = {0, 1, 2, 3, 4, 5, 6, 7}, zero = {0}, ninf = zero - INFINITY;
  vf mv = ninf, lv = zero;
  for (int64_t i = 0; i < CHUNK; i += LANES) {  /* keys past the row's end (or the chunk's): -inf */
    vf x = vselect(lanes + (float)i < (float)n, load(score + i), ninf);
    memcpy(score + i, &x, sizeof x);
    mv = vselect(mv > x, mv, x);
  }
  float mx = mv[0];
  for (int j = 1; j < LANES; ++j) mx = mv[j] > mx ? mv[j] : mx;
  for (int64_t i = 0; i < CHUNK; i += LANES) {
    vf e = i < n ? vselect(lanes + (float)i < (float)n, vexp(load(score + i) - mx), zero) : zero;
    lv += e;
    memcpy(score + i, &e, sizeof e);
  }
  *m = mx;
  *l = hsum(lv);
}

/* out rows (NR of them, 1 or 2) += e_r[i] * v[i] over keys [0, n), for NV vectors of columns from
 * v's column j: NR * NV independent accumulators, each V row read once for both rows. */
static inline __attribute__((always_inline)) void pv_block(const float *v, int64_t D,
                                                           const float *e0, const float *e1,
                                                           int64_t n, float *o0, float *o1,
                                                           const int NR, const int NV) {
  vf a[2][8] = {{{0}}};
  for (int64_t i = 0; i < n; ++i) {
    const float *vs = v + i * D;
    vf b0 = (vf){0} + e0[i], b1 = (vf){0} + e1[i];
    for (int c = 0; c < NV; ++c) {
      vf x = load(vs + c * LANES);
      a[0][c] += b0 * x;
      if (NR > 1) a[1][c] += b1 * x;
    }
  }
  for (int c = 0; c < NV; ++c) {
    memcpy(o0 + c * LANES, &a[0][c], sizeof(vf));
    if (NR > 1) memcpy(o1 + c * LANES, &a[1][c], sizeof(vf));
  }
}

/* The weighted sum of V rows for rows e0 (and e1 when NR is 2) over keys [0, n), all D columns. */
static inline __attribute__((always_inline)) void pv_rows(const float *v, int64_t D,
                                                          const float *e0, const float *e1,
                                                          int64_t n, float *o0, float *o1,
                                                          const int NR) {
  int64_t j = 0;
  for (; j + 8 * LANES <= D; j += 8 * LANES) pv_block(v + j, D, e0, e1, n, o0 + j, o1 + j, NR, 8);
  for (; j + LANES <= D; j += LANES) pv_block(v + j, D, e0, e1, n, o0 + j, o1 + j, NR, 1);
  for (; j < D; ++j) {
    float a0 = 0.0f, a1 = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      a0 += e0[i] * v[i * D + j];
      a1 += e1[i] * v[i * D + j];
    }
    o0[j] = a0;
    if (NR > 1) o1[j] = a1;
  }
}

/* One chunk of keys [s0, s1) for `rows` query rows (r = g * T + t) of one KV head: scores,
 * softmax, then the V rows, two query rows at a time. In decode the keys arrive from L3 or memory
 * (16 layers' caches, 18 MB at 270M, do not fit L2) and the hardware's prefetcher falls behind,
 * so the score loop prefetches the key block after next (16 keys ahead) itself, into L2
 * (prefetcht1), which served better than L1 (docs/engine.md). */
static void attend_chunk(const float *q, const float *k, const float *v, const int64_t *pos,
                         float *part, int64_t rows, int64_t T, int64_t s0, int64_t s1,
                         int64_t D, float scale) {
  float score[MAX_ROWS][CHUNK] __attribute__((aligned(32)));
  int64_t end[MAX_ROWS];
  for (int64_t r = 0; r < rows; ++r) {
    int64_t e = pos[r % T] + 1 < s1 ? pos[r % T] + 1 : s1;
    end[r] = e > s0 ? e - s0 : 0;  /* keys of the chunk this row sees (0: it ends before) */
  }
  int64_t s = s0;
  if (D % LANES == 0) {  /* eight keys at a time, each block read once for every query row */
    for (; s + 8 <= s1; s += 8) {
      for (int64_t l = 0; l < 8 * D; l += 16) /* the block after next (a prefetch never faults) */
        __builtin_prefetch(k + (s + 16) * D + l, 0, 2);
      int64_t r = 0;
      vf d0, d1;
      for (; r + 2 <= rows; r += 2) {
        dot8(q + r * D, q + (r + 1) * D, k + s * D, D, &d0, &d1, 2);
        d0 *= scale;
        d1 *= scale;
        memcpy(&score[r][s - s0], &d0, sizeof d0);
        memcpy(&score[r + 1][s - s0], &d1, sizeof d1);
      }
      if (r < rows) {
        dot8(q + r * D, q + r * D, k + s * D, D, &d0, &d0, 1);
        d0 *= scale;
        memcpy(&score[r][s - s0], &d0, sizeof d0);
      }
    }
  }
  for (; s < s1; ++s) {
    for (int64_t r = 0; r < rows; ++r) score[r][s - s0] = dot(q + r * D, k + s * D, D) * scale;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float *p = part + r * (D + 2);
    softmax_row(score[r], end[r], &p[0], &p[1]);
  }
  const float *vc = v + s0 * D;
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    /* to the longer row's end: the shorter one's weights are 0 there, and V rows before the
     * chunk's end are all filled (finite) */
    int64_t n = end[r] > end[r + 1] ? end[r] : end[r + 1];
    pv_rows(vc, D, score[r], score[r + 1], n, part + r * (D + 2) + 2,
            part + (r + 1) * (D + 2) + 2, 2);
  }
  if (r < rows) {
    float *acc = part + r * (D + 2) + 2;
    pv_rows(vc, D, score[r], score[r], end[r], acc, acc, 1);
  }
}

/* Returns 0; -1 when scratch memory could not be had, -2 with more than MAX_ROWS rows per head. */
int elm_attend_f32(const float *q, const float *k, const float *v, float *out, const int64_t *pos,
                   int64_t B, int64_t Hq, int64_t Hkv, int64_t T, int64_t S, int64_t D,
                   float scale, int threads) {
  int64_t G = Hq / Hkv, rows = G * T, span = 0;
  for (int64_t t = 0; t < T; ++t) span = pos[t] + 1 > span ? pos[t] + 1 : span;
  span = span < S ? span : S;
  int64_t chunks = (span + CHUNK - 1) / CHUNK, items = B * Hkv * chunks;
  if (rows > MAX_ROWS) return -2;
  float *part = malloc(sizeof(float) * (size_t)(items * rows * (D + 2)) + 1);
  if (part == NULL) return -1;
  int parallel = items > 1 && span * Hkv * D >= 16384;
#pragma omp parallel num_threads(threads) if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      int64_t c = it % chunks, bh = it / chunks, b = bh / Hkv, h = bh % Hkv;
      int64_t s0 = c * CHUNK, s1 = s0 + CHUNK < span ? s0 + CHUNK : span;
      attend_chunk(q + (b * Hq + h * G) * T * D, k + bh * S * D, v + bh * S * D, pos,
                   part + it * rows * (D + 2), rows, T, s0, s1, D, scale);
    }
#pragma omp for schedule(static)
    for (int64_t o = 0; o < B * Hq * T; ++o) {  /* o = (b * Hq + hq) * T + t */
      int64_t t = o % T, hq = (o / T) % Hq, b = o / (T * Hq), h = hq / G;
      int64_t r = (hq % G) * T + t;
      const float *first = part + ((b * Hkv + h) * chunks * rows + r) * (D + 2);
      float m = -INFINITY, l = 0.0f, *y = out + o * D;
      for (int64_t c = 0; c < chunks; ++c) {
        const float *p = first + c * rows * (D + 2);
        if (p[1] > 0.0f && p[0] > m) m = p[0];
      }
      memset(y, 0, sizeof(float) * D);
      for (int64_t c = 0; c < chunks; ++c) {
        const float *p = first + c * rows * (D + 2);
        if (p[1] <= 0.0f) continue;
        float w = expf(p[0] - m);
        l += w * p[1];
        for (int64_t j = 0; j < D; ++j) y[j] += w * p[2 + j];
      }
      for (int64_t j = 0; j < D; ++j) y[j] /= l;
    }
  }
  free(part);
  return 0;
}

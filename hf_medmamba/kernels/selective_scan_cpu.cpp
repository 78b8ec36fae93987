// Fused CPU selective scan (forward and backward) for hf_medmamba.
//
// One pass per (batch, channel) sequence with the state in vector registers (the state dimension n is the vector
// lane), parallel over (batch, channel) pairs with OpenMP. The step size (bias + softplus), the D * u skip and exp()
// are computed inside: exp() is a branch-free polynomial on GCC/Clang vector extensions, sized to the widest vectors
// the target has (16 floats with AVX-512, 8 with AVX/AVX2, 4 otherwise). The work is cut into tiles of 64 steps; the
// lane sums of a tile (the read-outs <h_t, C_t> and their gradients) are taken W steps at a time after its
// recurrence, off the critical path. Plain C ABI, loaded with ctypes: one argument, a `ScanArgs` struct of named
// fields, mirrored field by field in hf_medmamba/kernels/cpu_scan.py (which checks its size and the ABI version).
//
// Two layouts share the code. Plain scans (mamba-ssm's selective_scan_fn semantics) store every sequence in step
// order. SS2D scans store everything at pixel positions of an H x W grid and walk it in four directions without
// reordered copies; u is shared by the four directions and y is their sum. The walks are not computed here: the
// caller passes hf_medmamba.scan_directions' tables (`walk[k * L + t]` = pixel of direction k at step t) and its
// merge order (the order in which the four directions are added into y). Arrays (float32, contiguous); n_pad is n
// rounded up to the vector width, zero-padded by the caller:
//   u, y, du, dy              (b, lanes, L)    lanes = d (plain) or d / 4 (SS2D)
//   delta, ddelta             (b, d, L)        the raw step size, before bias and softplus
//   A                         (d, n_pad)       the negative real A
//   B, C                      rows of (b, g, L, bc_stride) with the n_pad values of a step contiguous; channel c
//                             reads group c / (d / g) (SS2D: g = 4, one group per direction)
//   D, delta_bias             (d) or null
//   last, dlast               (b, d, n_pad)    dlast may be null
//   nonpositive               1 when every dt * A <= 0 is known (dt >= 0 after softplus, A <= 0)
//   checkpoints               (b, d, ceil(L / 64), n_pad): state before every 64th step (forward writes, backward reads)
//   dA_part                   (b, d, n_pad)    per-batch partials (the caller sums over b)
//   dD_part, dbias_part       (b, d)           likewise
//   dB_part, dC_part          (threads, b, g, L, bc_stride) per-thread partials (the caller sums over threads)

#define HF_MEDMAMBA_SCAN_ABI_VERSION 5

#include <cstdint>
#include <cstring>
#include <utility>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
typedef float V __attribute__((vector_size(W * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(W * sizeof(float))));

constexpr int kSegment = 64;  // steps per tile; checkpoints are kept at tile starts
constexpr int kMaxVectors = 4;  // n_pad <= 4 * W
constexpr float kSoftplusThreshold = 20.0f;  // softplus(x) = x above it, as in PyTorch and mamba-ssm

inline V splat(float x) { return V{} + x; }

inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }

template <int N>
struct Vec {
  typedef float type __attribute__((vector_size(N * sizeof(float))));
};

// Sum of the lanes by halving (log2(W) vector adds), not lane by lane.
template <int N>
inline float hsum_n(typename Vec<N>::type v) {
  if constexpr (N == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {
    typename Vec<N / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hsum_n<N / 2>(lo + hi);
  }
}

inline float hsum(V v) { return hsum_n<W>(v); }

// The lane sums of W vectors at once (out[i] = hsum(v[i])), overwriting v. Each round adds the two halves of every
// lane group and packs two vectors into one: W - 1 vector adds for the W sums instead of W * log2(W).
// __builtin_shufflevector needs Clang or GCC 12; older GCC sums vector by vector.
#if defined(__clang__) || __GNUC__ >= 12
template <int S, int... I>
inline V fold(V a, V b, std::integer_sequence<int, I...>) {
  // Output lane o sums the halves of lane group (o mod W/2) / S of a (o < W/2) or of b.
  constexpr auto low = [](int o) { return (o >= W / 2 ? W : 0) + (o % (W / 2)) / S * 2 * S + o % S; };
  return __builtin_shufflevector(a, b, low(I)...) + __builtin_shufflevector(a, b, (low(I) + S)...);
}

template <int S>
inline void fold_pairs(V* v, int count) {
  for (int i = 0; i < count / 2; ++i) v[i] = fold<S>(v[2 * i], v[2 * i + 1], std::make_integer_sequence<int, W>{});
  if constexpr (S > 1) fold_pairs<S / 2>(v, count / 2);
}

inline V hsums(V* v) {
  fold_pairs<W / 2>(v, W);
  return v[0];
}
#else
inline V hsums(V* v) {
  V out;
  for (int i = 0; i < W; ++i) out[i] = hsum(v[i]);
  return out;
}
#endif

// 2^x = 2^k * p(r) with k = round(x), r = x - k in [-1/2, 1/2] and p a degree-6 polynomial fitted (here, by
// iteratively reweighted least squares) to 2^r for least maximum relative error: 1.6e-8 with float32 coefficients,
// below float rounding. x is clamped below at -125, where the true result (under 2.4e-38) is indistinguishable for the
// scan. With AVX-512, vscalefps multiplies by 2^k (and overflows to inf like exp). Elsewhere adding 1.5 * 2^23 rounds
// x to an integer that then sits in the low mantissa bits of the sum, and shifting those bits into the exponent field
// scales p with two integer operations; that needs the upper clamp at 127 unless x <= 0 is known (kHigh = false:
// dt >= 0 after softplus and A <= 0).
inline V exp2_fraction(V r) {
  V p = splat(1.53458124e-4f);
  p = p * r + 1.33999321e-3f;
  p = p * r + 9.61848907e-3f;
  p = p * r + 5.55032864e-2f;
  p = p * r + 2.40226462e-1f;
  p = p * r + 6.93147182e-1f;
  return p * r + 1.0f;
}

template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

template <bool kHigh = true>
inline V vexp2(V x) {
#if defined(__AVX512F__)
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-125.0f), bit_cast<__m512>(x));  // keeps NaN
  const __m512 k = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V p = exp2_fraction(bit_cast<V>(_mm512_sub_ps(v, k)));
  return bit_cast<V>(_mm512_scalef_ps(bit_cast<__m512>(p), k));
#else
  x = x > -125.0f ? x : splat(-125.0f);
  if constexpr (kHigh) x = x < 127.0f ? x : splat(127.0f);
  const V shifted = x + 12582912.0f;
  const V p = exp2_fraction(x - (shifted - 12582912.0f));
  return bit_cast<V>(bit_cast<VI>(p) + (bit_cast<VI>(shifted) << 23));
#endif
}

constexpr float kLog2e = 1.44269504088896341f;

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) (x itself above the threshold) and, with kGrad, its derivative
// sigmoid(x). log1p(e) = 2 atanh(e / (2 + e)), a series in s = e / (2 + e) <= 1/3 that converges to float precision
// by s^15.
template <bool kGrad>
inline void softplus(V x, V& value, V& slope) {
  const V ax = x < 0.0f ? -x : x;
  const V e = vexp2(ax * -kLog2e);
  const V s = e / (e + 2.0f);
  const V s2 = s * s;
  V series = splat(1.0f / 15.0f);
  series = series * s2 + 1.0f / 13.0f;
  series = series * s2 + 1.0f / 11.0f;
  series = series * s2 + 1.0f / 9.0f;
  series = series * s2 + 1.0f / 7.0f;
  series = series * s2 + 1.0f / 5.0f;
  series = series * s2 + 1.0f / 3.0f;
  series = series * s2 + 1.0f;
  const V positive = x > 0.0f ? x : splat(0.0f);
  const VI above = x > kSoftplusThreshold;
  value = above ? x : positive + 2.0f * s * series;
  if constexpr (kGrad) {
    const V inv = 1.0f / (e + 1.0f);
    slope = above ? splat(1.0f) : (x >= 0.0f ? inv : e * inv);
  }
}

struct Problem {
  int64_t b, d, L, n_pad, g;  // d channels scanned; channel c reads B/C group c / (d / g)
  const float *u, *delta, *A, *B, *C, *D, *bias;
  bool softplus;
  int64_t bc_stride;   // floats between the B (or C) vectors of consecutive steps
  int64_t lanes;       // channels of u and y: d for plain scans, d / 4 for SS2D (shared by its four directions)
  int64_t height, width;  // SS2D's grid (L = height * width); 0 for plain scans
  const int64_t* walk;    // SS2D: (4, L) pixel of each direction at each step; null for plain scans
  const int64_t* merge;   // SS2D: the four directions in the order they are added into y
  int64_t segments() const { return (L + kSegment - 1) / kSegment; }
  bool cross() const { return height > 0; }
};

// Where each step of a sequence lives: plain sequences are stored in step order; SS2D's direction k reads and writes
// at the pixel its walk table gives for each step, so the four directions need no reordered copies of their inputs.
struct Walk {
  const int64_t* table = nullptr;  // null: step order

  Walk(const Problem& p, int64_t c) {
    if (p.cross()) table = p.walk + (c / p.lanes) * p.L;
  }

  // Positions of steps t0 .. t0 + len - 1.
  void positions(int64_t t0, int64_t len, int64_t* pos) const {
    for (int64_t i = 0; i < len; ++i) pos[i] = table ? table[t0 + i] : t0 + i;
  }
};

// The channels one task handles, in order: one channel for plain scans; for SS2D the four directions of one
// channel, in the merge order (the first writes y, the others add to it).
inline int task_channels(const Problem& p, int64_t lane, int64_t* channels) {
  if (!p.cross()) {
    channels[0] = lane;
    return 1;
  }
  for (int i = 0; i < 4; ++i) channels[i] = p.merge[i] * p.lanes + lane;
  return 4;
}

// pos[i], hidden from the optimiser so that loops reading or writing at the positions of a walk stay scalar:
// compilers otherwise turn them into AVX-512 gathers and scatters, several times slower than scalar loads and stores
// on current x86 processors (they took about a quarter of the forward's time).
inline int64_t at(const int64_t* pos, int64_t i) {
  int64_t p = pos[i];
  asm("" : "+r"(p));
  return p;
}

// Asks for a channel's whole sequence to be brought into cache, in the order the scan will read it (backwards for the
// backward pass): the scan visits it in short tiles, which hardware prefetchers follow poorly.
template <bool kBackward, bool kWrite = false>
inline void prefetch(const float* x, int64_t L) {
  constexpr int64_t line = 64 / sizeof(float);
  for (int64_t i = 0; i < L; i += line) __builtin_prefetch(x + (kBackward ? L - 1 - i : i), kWrite ? 1 : 0);
}

// Step sizes (bias, softplus) for the tile's steps and, with kGrad, their derivative w.r.t. delta.
template <bool kGrad>
inline void step_sizes(const Problem& p, const float* delta, float bias, const int64_t* pos, int64_t len, float* dt,
                       float* slope) {
  alignas(64) float x[kSegment];
  for (int64_t i = 0; i < len; ++i) x[i] = delta[at(pos, i)] + bias;
  for (int64_t i = len; i < kSegment; ++i) x[i] = 0.0f;
  for (int64_t i = 0; i < kSegment; i += W) {
    V value = load(x + i), grad = splat(1.0f);
    if (p.softplus) softplus<kGrad>(value, value, grad);
    store(dt + i, value);
    if constexpr (kGrad) store(slope + i, grad);
  }
}

// One channel's forward scan. `accumulate` adds into y (the later directions of SS2D) instead of writing it.
template <int NV, bool kHigh>
void forward_sequence(const Problem& p, int64_t bi, int64_t c, bool accumulate, float* y, float* last,
                      float* checkpoints) {
  const int64_t n = p.n_pad;
  const Walk walk(p, c);
  const float* u = p.u + (bi * p.lanes + c % p.lanes) * p.L;
  const float* delta = p.delta + (bi * p.d + c) * p.L;
  float* out = y + (bi * p.lanes + c % p.lanes) * p.L;
  const int64_t gi = c / (p.d / p.g);
  const float* Bs = p.B + (bi * p.g + gi) * p.L * p.bc_stride;
  const float* Cs = p.C + (bi * p.g + gi) * p.L * p.bc_stride;
  const float Dc = p.D ? p.D[c] : 0.0f;
  const float bias = p.bias ? p.bias[c] : 0.0f;
  float* ck = checkpoints ? checkpoints + (bi * p.d + c) * p.segments() * n : nullptr;
  prefetch<false>(u, p.L);
  prefetch<false>(delta, p.L);
  V A2[NV], h[NV];  // A / ln 2: exp(dt A) = 2^(dt A2)
  for (int j = 0; j < NV; ++j) {
    A2[j] = load(p.A + c * n + j * W) * kLog2e;
    h[j] = splat(0.0f);
  }
  alignas(64) float dt[kSegment], y_tile[kSegment];
  V products[kSegment];  // h_t * C_t, summed over lanes W steps at a time
  int64_t pos[kSegment];
  for (int64_t t0 = 0; t0 < p.L; t0 += kSegment) {
    const int64_t len = p.L - t0 < kSegment ? p.L - t0 : kSegment;
    walk.positions(t0, len, pos);
    step_sizes<false>(p, delta, bias, pos, len, dt, nullptr);
    if (ck) {
      for (int j = 0; j < NV; ++j) store(ck + (t0 / kSegment) * n + j * W, h[j]);
    }
    for (int64_t i = 0; i < len; ++i) {
      const float drive = dt[i] * u[pos[i]];
      const float* Bt = Bs + pos[i] * p.bc_stride;
      const float* Ct = Cs + pos[i] * p.bc_stride;
      V sum = splat(0.0f);
      for (int j = 0; j < NV; ++j) {
        h[j] = vexp2<kHigh>(A2[j] * dt[i]) * h[j] + load(Bt + j * W) * drive;
        sum = sum + h[j] * load(Ct + j * W);
      }
      products[i] = sum;
    }
    for (int64_t i = len; i < kSegment; ++i) products[i] = splat(0.0f);
    for (int64_t i = 0; i < len; i += W) store(y_tile + i, hsums(products + i));
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = at(pos, i);
      const float value = y_tile[i] + Dc * u[t];
      out[t] = accumulate ? out[t] + value : value;
    }
  }
  if (last) {
    for (int j = 0; j < NV; ++j) store(last + (bi * p.d + c) * n + j * W, h[j]);
  }
}

struct Grads {
  const float *dy, *dlast, *checkpoints;
  float *du, *ddelta, *dA_part, *dD_part, *dbias_part, *dB_part, *dC_part;
};

// One channel's backward. `accumulate` adds into du (u is shared by SS2D's four directions).
template <int NV, bool kHigh>
void backward_sequence(const Problem& p, const Grads& gr, int64_t bi, int64_t c, bool accumulate, float* dB_part,
                       float* dC_part) {
  const int64_t n = p.n_pad;
  const Walk walk(p, c);
  const int64_t lane = (bi * p.lanes + c % p.lanes) * p.L;
  const float* u = p.u + lane;
  const float* dy = gr.dy + lane;
  float* du = gr.du + lane;
  const float* delta = p.delta + (bi * p.d + c) * p.L;
  float* ddelta = gr.ddelta + (bi * p.d + c) * p.L;
  const int64_t bc = (bi * p.g + c / (p.d / p.g)) * p.L * p.bc_stride;
  const float Dc = p.D ? p.D[c] : 0.0f;
  const float bias = p.bias ? p.bias[c] : 0.0f;
  const float* ck = gr.checkpoints + (bi * p.d + c) * p.segments() * n;
  prefetch<true>(u, p.L);
  prefetch<true>(delta, p.L);
  prefetch<true>(dy, p.L);
  prefetch<true, true>(du, p.L);
  prefetch<true, true>(ddelta, p.L);
  V Ac[NV], A2[NV], r[NV], dA[NV];
  for (int j = 0; j < NV; ++j) {
    Ac[j] = load(p.A + c * n + j * W);
    A2[j] = Ac[j] * kLog2e;
    r[j] = gr.dlast ? load(gr.dlast + (bi * p.d + c) * n + j * W) : splat(0.0f);  // adjoint from step t + 1
    dA[j] = splat(0.0f);
  }
  V states[kSegment + 1][NV];  // states[0]: before the segment; states[1 + i]: after its step i
  V decays[kSegment][NV];
  V ddrives[kSegment], dsteps[kSegment];  // per step, summed over lanes W steps at a time
  alignas(64) float dt[kSegment], slope[kSegment], ddrive_sum[kSegment], dstep_sum[kSegment];
  int64_t pos[kSegment];
  float dD = 0.0f, dbias = 0.0f;
  for (int64_t seg = p.segments() - 1; seg >= 0; --seg) {
    const int64_t t0 = seg * kSegment;
    const int64_t len = p.L - t0 < kSegment ? p.L - t0 : kSegment;
    walk.positions(t0, len, pos);
    step_sizes<true>(p, delta, bias, pos, len, dt, slope);
    for (int j = 0; j < NV; ++j) states[0][j] = load(ck + seg * n + j * W);
    for (int64_t i = 0; i < len; ++i) {
      const float drive = dt[i] * u[pos[i]];
      const float* Bt = p.B + bc + pos[i] * p.bc_stride;
      for (int j = 0; j < NV; ++j) {
        decays[i][j] = vexp2<kHigh>(A2[j] * dt[i]);
        states[i + 1][j] = decays[i][j] * states[i][j] + load(Bt + j * W) * drive;
      }
    }
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t row = bc + pos[i] * p.bc_stride;
      const float drive = dt[i] * u[pos[i]];
      const float gy = dy[pos[i]];
      V ddrive = splat(0.0f), dstep = splat(0.0f);
      for (int j = 0; j < NV; ++j) {
        const int64_t o = j * W;
        const V g = r[j] + load(p.C + row + o) * gy;  // dL/dh_t
        store(dC_part + row + o, load(dC_part + row + o) + states[i + 1][j] * gy);
        store(dB_part + row + o, load(dB_part + row + o) + g * drive);
        ddrive = ddrive + g * load(p.B + row + o);
        const V w = g * decays[i][j] * states[i][j];  // through exp(dt A) h_{t-1}
        dstep = dstep + w * Ac[j];
        dA[j] = dA[j] + w * dt[i];
        r[j] = decays[i][j] * g;
      }
      ddrives[i] = ddrive;
      dsteps[i] = dstep;
    }
    for (int64_t i = len; i < kSegment; ++i) ddrives[i] = dsteps[i] = splat(0.0f);
    for (int64_t i = 0; i < len; i += W) {
      store(ddrive_sum + i, hsums(ddrives + i));
      store(dstep_sum + i, hsums(dsteps + i));
    }
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t t = at(pos, i);
      const float ddelta_t = (ddrive_sum[i] * u[t] + dstep_sum[i]) * slope[i];
      const float du_t = ddrive_sum[i] * dt[i] + dy[t] * Dc;
      du[t] = accumulate ? du[t] + du_t : du_t;
      ddelta[t] = ddelta_t;
      dD += dy[t] * u[t];
      dbias += ddelta_t;
    }
  }
  for (int j = 0; j < NV; ++j) store(gr.dA_part + (bi * p.d + c) * n + j * W, dA[j]);
  gr.dD_part[bi * p.d + c] = dD;
  gr.dbias_part[bi * p.d + c] = dbias;
}

// Forward tasks write disjoint outputs, so they can be handed out dynamically (cores of a shared machine run at uneven
// speeds); the backward keeps a static schedule because its per-thread dB/dC partials must be the same on every call.
template <int NV, bool kHigh>
void forward_all(const Problem& p, float* y, float* last, float* checkpoints, int threads) {
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t task = 0; task < p.b * p.lanes; ++task) {
    int64_t channels[4];
    const int count = task_channels(p, task % p.lanes, channels);
    for (int i = 0; i < count; ++i) {
      forward_sequence<NV, kHigh>(p, task / p.lanes, channels[i], i > 0, y, last, checkpoints);
    }
  }
}

template <int NV, bool kHigh>
void backward_all(const Problem& p, const Grads& gr, int threads) {
  const int64_t part = p.b * p.g * p.L * p.bc_stride;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t task = 0; task < p.b * p.lanes; ++task) {
    const int tid = omp_get_thread_num();
    int64_t channels[4];
    const int count = task_channels(p, task % p.lanes, channels);
    for (int i = 0; i < count; ++i) {
      backward_sequence<NV, kHigh>(p, gr, task / p.lanes, channels[i], i > 0, gr.dB_part + tid * part,
                                   gr.dC_part + tid * part);
    }
  }
}

// Number of vectors per state, or 0 when the shapes cannot run here.
int vectors(const Problem& p) {
  if (p.b <= 0 || p.d <= 0 || p.L <= 0 || p.g <= 0 || p.d % p.g != 0 || p.n_pad <= 0 || p.n_pad % W != 0) return 0;
  if (p.bc_stride < p.n_pad || p.lanes <= 0 || p.d % p.lanes != 0) return 0;
  if (p.cross()) {
    if (p.d != 4 * p.lanes || p.g != 4 || p.height * p.width != p.L || !p.walk || !p.merge) return 0;
    bool seen[4] = {false, false, false, false};
    for (int i = 0; i < 4; ++i) {
      if (p.merge[i] < 0 || p.merge[i] > 3 || seen[p.merge[i]]) return 0;
      seen[p.merge[i]] = true;
    }
  }
  const int64_t nv = p.n_pad / W;
  return nv <= kMaxVectors ? static_cast<int>(nv) : 0;
}

// Runs fn<NV, kHigh>() for the problem's vector count; returns 1 when the shapes cannot run here.
template <template <int, bool> class Fn, typename... Args>
int dispatch(const Problem& p, bool nonpositive, Args... args) {
  switch (vectors(p) * 2 + (nonpositive ? 0 : 1)) {
    case 2: Fn<1, false>::run(p, args...); return 0;
    case 3: Fn<1, true>::run(p, args...); return 0;
    case 4: Fn<2, false>::run(p, args...); return 0;
    case 5: Fn<2, true>::run(p, args...); return 0;
    case 6: Fn<3, false>::run(p, args...); return 0;
    case 7: Fn<3, true>::run(p, args...); return 0;
    case 8: Fn<4, false>::run(p, args...); return 0;
    case 9: Fn<4, true>::run(p, args...); return 0;
    default: return 1;
  }
}

template <int NV, bool kHigh>
struct Forward {
  static void run(const Problem& p, float* y, float* last, float* checkpoints, int threads) {
    forward_all<NV, kHigh>(p, y, last, checkpoints, threads);
  }
};

template <int NV, bool kHigh>
struct Backward {
  static void run(const Problem& p, const Grads* gr, int threads) { backward_all<NV, kHigh>(p, *gr, threads); }
};

// The one argument of both entry points. Field order and types are mirrored by hf_medmamba/kernels/cpu_scan.py.
struct ScanArgs {
  int64_t struct_size;  // sizeof(ScanArgs) as the caller sees it
  int64_t b, d, L, n_pad, g, bc_stride;
  int64_t height, width;  // SS2D's grid, or 0, 0 for plain scans
  const int64_t* walk;    // SS2D: (4, L) scan_directions.scan_orders; null for plain scans
  const int64_t* merge;   // SS2D: scan_directions.MERGE_ORDER (4 entries); null for plain scans
  const float *u, *delta, *A, *B, *C, *D, *delta_bias;
  int32_t softplus, nonpositive, threads, unused;
  float *y, *last, *checkpoints;  // forward outputs (checkpoints: backward input)
  const float *dy, *dlast;        // backward inputs
  float *du, *ddelta, *dA_part, *dD_part, *dbias_part, *dB_part, *dC_part;  // backward outputs
};

Problem problem(const ScanArgs& a) {
  Problem p{};
  p.b = a.b, p.d = a.d, p.L = a.L, p.n_pad = a.n_pad, p.g = a.g;
  p.u = a.u, p.delta = a.delta, p.A = a.A, p.B = a.B, p.C = a.C, p.D = a.D, p.bias = a.delta_bias;
  p.softplus = a.softplus != 0;
  p.bc_stride = a.bc_stride;
  p.lanes = a.height > 0 ? a.d / 4 : a.d;
  p.height = a.height, p.width = a.width, p.walk = a.walk, p.merge = a.merge;
  return p;
}

}  // namespace

extern "C" {

int hf_medmamba_scan_abi_version() { return HF_MEDMAMBA_SCAN_ABI_VERSION; }

int64_t hf_medmamba_scan_args_size() { return sizeof(ScanArgs); }

int hf_medmamba_scan_vector_width() { return W; }

int hf_medmamba_scan_max_state() { return kMaxVectors * W; }

int hf_medmamba_scan_segment() { return kSegment; }

// Plain scans: u, delta, y (b, d, L) in step order; B, C (b, g, L, bc_stride).
// SS2D scans (height > 0): u and y (b, d / 4, L) shared by the four directions, y summed over them; delta (b, d, L),
// B and C (b, 4, L, bc_stride), all at pixel positions (row-major, L = height * width).
// Returns 0, 1 when the shapes cannot run here, 2 when the caller's ScanArgs has another size.
int hf_medmamba_scan_forward(const ScanArgs* a) {
  if (a->struct_size != static_cast<int64_t>(sizeof(ScanArgs))) return 2;
  return dispatch<Forward>(problem(*a), a->nonpositive != 0, a->y, a->last, a->checkpoints, a->threads);
}

int hf_medmamba_scan_backward(const ScanArgs* a) {
  if (a->struct_size != static_cast<int64_t>(sizeof(ScanArgs))) return 2;
  const Grads gr{a->dy, a->dlast, a->checkpoints, a->du, a->ddelta, a->dA_part, a->dD_part, a->dbias_part,
                 a->dB_part, a->dC_part};
  return dispatch<Backward>(problem(*a), a->nonpositive != 0, &gr, a->threads);
}

}  // extern "C"

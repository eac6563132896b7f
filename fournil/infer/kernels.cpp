// fournil's CPU decode kernels (x86-64 with AVX2), built on first use by fournil/infer/kernels.py.
//
// Why they exist: at batch 1 a decode step reads every weight once, so its speed is the memory bandwidth the
// matrix-vector products reach. Measured on a 2-core AMD EPYC (benchmarks/bench_infer.py): ATen's and
// inductor's int8 weight-only kernels read 7-12 GB/s from DRAM, a plain sum reads 23 GB/s. The two things
// that close the gap here are an integer inner product (int8 weights x int16 activations with vpmaddwd, or
// vpdpwssd where the CPU has AVX-512 VNNI; no int8 -> float conversion per weight) and a software prefetch of
// the next block of rows: the hardware prefetcher does not follow four interleaved row streams on its own.
//
// fournil::int8_linear(x (M, K), qs [(N_i, K) int8], scales [(N_i,) float]) -> (M, sum N_i)
//   y[:, block i] = (x . q_iT) * scale_i, several matrices sharing one input in one pass (q/k/v, gate/up).
// fournil::decode_attention(q (B, H, D), k (B, Hkv, S, D), v, mask (B, S) bool, scale) -> (B, H, D)
//   one query per row over the cache positions whose mask is set (grouped-query heads share kv heads).
// fournil::decode_step(plan, ids, positions, rows, slots, mask, k_cache, v_cache, last_only) -> logits
//   a whole decode step of a Llama (int8 or float32 matrices) whose weights a DecodePlan holds (see below).
// fournil::decode_token(plan, id, position, slot, mask, k_cache, v_cache, logits) -> argmax: batch 1's step, ints in.
// fournil::argmax_rows(x (M, V) float32) -> (M,) int64: torch.argmax(x, -1), the same index on ties and NaN.
// fournil::read_bytes(x, row_bytes) -> int64: the sum of x's bytes (unsigned), read by at::get_num_threads() threads
//   either as one plain stream a thread (row_bytes 0) or as the int8 step reads its matrices (rows of row_bytes, 4 at once,
//   the same prefetches): the bandwidth bound's probes (benchmarks/bench_infer.py).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kRows = 4;            // rows per block: they share each load of the activations
constexpr float kLevels = 16383.f;      // activations -> int16 in [-2^14, 2^14]: an int32 lane holds
constexpr int64_t kChunk = 4096;        // 2 * kChunk/16 products of 127 * 2^14 without overflow
constexpr int64_t kAhead = 16384;       // bytes of its next stretch a thread fetches while waiting at a barrier
// How far ahead the second prefetch reaches, in blocks past `next` (blocks of a stretch lie one after another in
// memory; past a matrix's end the next matrix of the step follows). Why: one block ahead (2.3 KB for a 576-wide
// matrix, most of SmolLM2's) covers DRAM's latency only while bandwidth is scarce; when this host's memory runs at
// 65 GB/s, reading 4 blocks ahead of the current one into L2 (kFarBlocks = 3) made an int8 token 8 % faster (14 of
// 14 interleaved rounds); 3 ahead gained less, 6-8 no more.
// With memory at 35 GB/s it neither helped nor hurt beyond the noise.
constexpr int64_t kFarBlocks = 3;
constexpr int64_t kMaxRows = 32;        // more rows (a long prefill): dequantise and use torch's GEMM instead

struct Block {                          // kRows (or fewer, at a matrix's end) consecutive weight rows
  const int8_t* rows;
  const float* scale;
  int64_t n;
};

inline __m256i dot16(const int8_t* w, __m256i xv) {
  return _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))), xv);
}

inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

inline int32_t hsum1(__m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_hadd_epi32(s, s);
  return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

// e^x for 8 floats (relative error < 2e-7 against expf; x below -86.9 gives 0, above 88.7 gives +inf): the
// fused step's silu and softmax take 30-45 k exponentials a token, which through libm's scalar expf cost
// ~0.15 ms of a ~7 ms int8 token
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-86.9f), hi = _mm256_set1_ps(88.7f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  // x = n ln2 + r, |r| <= ln2 / 2, ln2 split in two so that r keeps its precision
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  // e^r by its Taylor polynomial to r^7, Horner's rule
  __m256 p = _mm256_set1_ps(1.f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  // times 2^n, n in [-125, 128]: 2^n as 2^(n-1) * 2 keeps n = 128 representable
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
  p = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.f));
  p = _mm256_andnot_ps(under, p);
  return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
}

// the int32 sums of columns [k0, k1) of four consecutive rows r (row stride K) times xq, 16 columns a step; per step
// one line of `next` is fetched into L1, and one line kFarBlocks blocks further on into L2
inline __m128i chunk4(const int8_t* r, const int8_t* next, const int16_t* xq, int64_t K, int64_t k0, int64_t k1) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t k = k0; k < k1; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * (kFarBlocks * K + k)), _MM_HINT_T1);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));
    a0 = _mm256_add_epi32(a0, dot16(r + k, xv));
    a1 = _mm256_add_epi32(a1, dot16(r + K + k, xv));
    a2 = _mm256_add_epi32(a2, dot16(r + 2 * K + k, xv));
    a3 = _mm256_add_epi32(a3, dot16(r + 3 * K + k, xv));
  }
  return hsum4(a0, a1, a2, a3);
}

// the same sums (the same integers) with AVX-512 VNNI's vpdpwssd, which multiplies and adds into the int32 lanes in
// one instruction where AVX2 takes two: 3 % faster a token here, even while memory is the limit (interleaved A/B on
// SmolLM2 int8, 15 of 16 rounds), since the loop's instructions compete with its loads
__attribute__((target("avx512f,avx512vl,avx512vnni")))
__m128i chunk4_vnni(const int8_t* r, const int8_t* next, const int16_t* xq, int64_t K, int64_t k0, int64_t k1) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const auto widen = [](const int8_t* w) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  };
  for (int64_t k = k0; k < k1; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * (kFarBlocks * K + k)), _MM_HINT_T1);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));
    a0 = _mm256_dpwssd_epi32(a0, widen(r + k), xv);
    a1 = _mm256_dpwssd_epi32(a1, widen(r + K + k), xv);
    a2 = _mm256_dpwssd_epi32(a2, widen(r + 2 * K + k), xv);
    a3 = _mm256_dpwssd_epi32(a3, widen(r + 3 * K + k), xv);
  }
  return hsum4(a0, a1, a2, a3);
}

// chunk4 for two activation rows (xa, xb) at once, sums into sa and sb: each weight vector is widened once for both.
// Why: a prompt's rows (up to 32 in one step) make the products compute-bound; in pairs a SmolLM2 int8 prefill of 5
// tokens took 6.4 ms instead of 7.2, of 32 tokens 33.2 instead of 37.2 (interleaved, 8 rounds)
inline void chunk4x2(const int8_t* r, const int8_t* next, const int16_t* xa, const int16_t* xb, int64_t K,
                     int64_t k0, int64_t k1, __m128i& sa, __m128i& sb) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  const auto widen = [](const int8_t* w) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  };
  for (int64_t k = k0; k < k1; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + k));
    const __m256i yv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k));
    const __m256i w0 = widen(r + k), w1 = widen(r + K + k), w2 = widen(r + 2 * K + k), w3 = widen(r + 3 * K + k);
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, xv));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, xv));
    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(w2, xv));
    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(w3, xv));
    b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(w0, yv));
    b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(w1, yv));
    b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(w2, yv));
    b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(w3, yv));
  }
  sa = hsum4(a0, a1, a2, a3);
  sb = hsum4(b0, b1, b2, b3);
}

__attribute__((target("avx512f,avx512vl,avx512vnni")))
void chunk4x2_vnni(const int8_t* r, const int8_t* next, const int16_t* xa, const int16_t* xb, int64_t K, int64_t k0,
                   int64_t k1, __m128i& sa, __m128i& sb) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  const auto widen = [](const int8_t* w) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  };
  for (int64_t k = k0; k < k1; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + k));
    const __m256i yv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k));
    const __m256i w0 = widen(r + k), w1 = widen(r + K + k), w2 = widen(r + 2 * K + k), w3 = widen(r + 3 * K + k);
    a0 = _mm256_dpwssd_epi32(a0, w0, xv);
    a1 = _mm256_dpwssd_epi32(a1, w1, xv);
    a2 = _mm256_dpwssd_epi32(a2, w2, xv);
    a3 = _mm256_dpwssd_epi32(a3, w3, xv);
    b0 = _mm256_dpwssd_epi32(b0, w0, yv);
    b1 = _mm256_dpwssd_epi32(b1, w1, yv);
    b2 = _mm256_dpwssd_epi32(b2, w2, yv);
    b3 = _mm256_dpwssd_epi32(b3, w3, yv);
  }
  sa = hsum4(a0, a1, a2, a3);
  sb = hsum4(b0, b1, b2, b3);
}

// whether chunk4_vnni runs: the CPU has AVX-512 VNNI and FOURNIL_KERNELS_VNNI is not 0 (tests compare both paths)
const bool kVnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512vnni") &&
                   !(std::getenv("FOURNIL_KERNELS_VNNI") && std::string(std::getenv("FOURNIL_KERNELS_VNNI")) == "0");

// one block of rows against one quantised activation row; `next` is prefetched meanwhile
void block_dot(const Block& b, const int8_t* next, const int16_t* xq, int64_t K, float x_scale, float* out) {
  if (b.n == kRows) {
    __m128 total = _mm_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t k1 = std::min(K, k0 + kChunk);
      const __m128i sums = kVnni ? chunk4_vnni(b.rows, next, xq, K, k0, k1) : chunk4(b.rows, next, xq, K, k0, k1);
      total = _mm_add_ps(total, _mm_cvtepi32_ps(sums));
    }
    _mm_storeu_ps(out, _mm_mul_ps(_mm_mul_ps(total, _mm_set1_ps(x_scale)), _mm_loadu_ps(b.scale)));
    return;
  }
  for (int64_t i = 0; i < b.n; ++i) {
    const int8_t* r = b.rows + i * K;
    float total = 0.f;
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t k1 = std::min(K, k0 + kChunk);
      __m256i a = _mm256_setzero_si256();
      for (int64_t k = k0; k < k1; k += 16) {
        a = _mm256_add_epi32(a, dot16(r + k, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k))));
      }
      total += static_cast<float>(hsum1(a));
    }
    out[i] = total * x_scale * b.scale[i];
  }
}

// block_dot for two activation rows (a full block; see chunk4x2)
void block_dot2(const Block& b, const int8_t* next, const int16_t* xa, const int16_t* xb, int64_t K, float sa_scale,
                float sb_scale, float* out_a, float* out_b) {
  __m128 ta = _mm_setzero_ps(), tb = ta;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    __m128i sa, sb;
    if (kVnni) {
      chunk4x2_vnni(b.rows, next, xa, xb, K, k0, k1, sa, sb);
    } else {
      chunk4x2(b.rows, next, xa, xb, K, k0, k1, sa, sb);
    }
    ta = _mm_add_ps(ta, _mm_cvtepi32_ps(sa));
    tb = _mm_add_ps(tb, _mm_cvtepi32_ps(sb));
  }
  const __m128 scale = _mm_loadu_ps(b.scale);
  _mm_storeu_ps(out_a, _mm_mul_ps(_mm_mul_ps(ta, _mm_set1_ps(sa_scale)), scale));
  _mm_storeu_ps(out_b, _mm_mul_ps(_mm_mul_ps(tb, _mm_set1_ps(sb_scale)), scale));
}

// activations -> int16, one absmax scale per row (15 bits: finer than bf16's 8-bit mantissa)
// (AVX2 over 16 at a time: the fused step quantises four vectors a layer in every thread; same numbers as the
// scalar tail, since cvtps rounds to nearest-even as nearbyint does)
void quantize_rows(const float* x, int64_t M, int64_t K, int16_t* xq, float* x_scale) {
  const int64_t K16 = K - K % 16;
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int16_t* qr = xq + m * K;
    __m256 top = _mm256_setzero_ps();
    for (int64_t k = 0; k < K16; k += 8) top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(xr + k), magnitude));
    __m128 t4 = _mm_max_ps(_mm256_castps256_ps128(top), _mm256_extractf128_ps(top, 1));
    t4 = _mm_max_ps(t4, _mm_movehl_ps(t4, t4));
    float amax = std::max(_mm_cvtss_f32(t4), _mm_cvtss_f32(_mm_shuffle_ps(t4, t4, 1)));
    for (int64_t k = K16; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
    x_scale[m] = amax > 0.f ? amax / kLevels : 1.f;
    const float inv = 1.f / x_scale[m];
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t k = 0; k < K16; k += 16) {
      const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vinv));
      const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 8), vinv));
      // packs works per 128-bit lane: [lo0-3 hi0-3 lo4-7 hi4-7] -> put the quarters back in order
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + k), packed);
    }
    for (int64_t k = K16; k < K; ++k) qr[k] = static_cast<int16_t>(std::nearbyint(xr[k] * inv));
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float total = 0.f;
  if (n % 16 == 0) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (; i < n; i += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_hadd_ps(h, h);
    total = _mm_cvtss_f32(_mm_hadd_ps(h, h));
  }
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// the sums of a[0..7]'s lanes, in order, as one vector
inline __m256 hsum8(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// softmax over the n scores in w, then their weighted sum of the value rows vr[j] (D each) into out (D)
void weigh_values(float* w, int64_t n, const float* const* vr, int64_t D, float* out) {
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) top = std::max(top, w[j]);
  const __m256 shift = _mm256_set1_ps(top);
  __m256 sum8 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(w + i), shift));
    _mm256_storeu_ps(w + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum8);
  float total = 0.f;
  for (float lane : lanes) total += lane;
  for (; i < n; ++i) total += w[i] = std::exp(w[i] - top);
  // the weighted sum of the values in registers, 8 lanes of the head at a time, instead of through `out` per position:
  // a SmolLM2 token with its matrix products taken out went from 0.80 to 0.78 ms at 70 positions (12 of 12
  // interleaved rounds), and the share grows with the context
  if (D % 8 == 0 && D <= 128) {
    __m256 acc[16];
    const int64_t C = D / 8;
    for (int64_t c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 e = _mm256_set1_ps(w[j]);
      const float* vs = vr[j];
      for (int64_t c = 0; c < C; ++c) acc[c] = _mm256_fmadd_ps(e, _mm256_loadu_ps(vs + 8 * c), acc[c]);
    }
    const __m256 inv = _mm256_set1_ps(1.f / total);
    for (int64_t c = 0; c < C; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
    return;
  }
  std::fill(out, out + D, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t d = 0; d < D; ++d) out[d] += w[j] * vr[j][d];
  }
  for (int64_t d = 0; d < D; ++d) out[d] /= total;
}

// G query heads (q: G rows of D) that share one kv head, each over the cache positions whose mask is set:
// softmax(q.k * scale) . v into out (G rows of D). w: G * S scores, kr and vr: S row pointers of scratch. Position
// `fresh` (if >= 0) reads its key and value from k_fresh and v_fresh instead of the cache (a token's own, which
// another thread may be storing meanwhile). No position set gives zero rows (callers always set the new token's).
// Why a group at once: the keys of 8 positions are read once for all G heads and their 8 dot products reduced
// together, and the values of a block are fetched while its keys are scored: the cache of a 70-token SmolLM2 context
// comes from DRAM (the token's weights have pushed it out), and per head and position that cost ~230 us of a
// ~3.3 ms int8 token.
void attend_group(const float* q, int64_t G, const float* k, const float* v, const bool* mask, int64_t S, int64_t D,
                  float scale, float* w, const float** kr, const float** vr, float* out, int64_t fresh = -1,
                  const float* k_fresh = nullptr, const float* v_fresh = nullptr) {
  int64_t n = 0;
  for (int64_t s = 0; s < S; ++s) {
    if (!mask[s]) continue;
    kr[n] = s == fresh ? k_fresh : k + s * D;
    vr[n++] = s == fresh ? v_fresh : v + s * D;
  }
  if (n == 0) {
    std::fill(out, out + G * D, 0.f);
    return;
  }
  int64_t j = 0;
  if (D % 8 == 0 && D <= 128) {
    const __m256 vscale = _mm256_set1_ps(scale);
    for (; j + 8 <= n; j += 8) {
      const float* const* rows = kr + j;
      for (int i = 0; i < 8; ++i) {  // the next block's keys and this block's values, meanwhile
        const float* next = kr[std::min(n - 1, j + 8 + i)];
        const float* value = vr[j + i];
        for (int64_t off = 0; off < D; off += 16) {
          _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(value + off), _MM_HINT_T1);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const float* qg = q + g * D;
        __m256 a[8];
        for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
        for (int64_t c = 0; c < D; c += 8) {
          const __m256 qv = _mm256_loadu_ps(qg + c);
          for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[i] + c), a[i]);
        }
        _mm256_storeu_ps(w + g * S + j, _mm256_mul_ps(hsum8(a), vscale));
      }
    }
  }
  for (; j < n; ++j) {
    for (int64_t g = 0; g < G; ++g) w[g * S + j] = dot(q + g * D, kr[j], D) * scale;
  }
  for (int64_t g = 0; g < G; ++g) weigh_values(w + g * S, n, vr, D, out + g * D);
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.sizes() == k.sizes(), "decode_attention: q (B,H,D), k/v (B,Hkv,S,D)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && H % Hkv == 0, "decode_attention: shapes do not agree");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.numel() == B * S, "decode_attention: mask (B, S) bool");
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor kf = k.to(at::kFloat).contiguous(), vf = v.to(at::kFloat).contiguous();
  const at::Tensor mk = mask.reshape({B, S}).contiguous();
  at::Tensor out = at::empty({B, H, D}, qf.options());
  const int64_t G = H / Hkv;
  const float* qp = qf.data_ptr<float>();
  const float* kp = kf.data_ptr<float>();
  const float* vp = vf.data_ptr<float>();
  const bool* mp = mk.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  // one thread unless there is real work: starting a second one costs more than a short cache's attention
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / (S * D * G));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> w(G * S);
    std::vector<const float*> kr(S), vr(S);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hkv, head = (bh % Hkv) * G;
      attend_group(qp + (b * H + head) * D, G, kp + bh * S * D, vp + bh * S * D, mp + b * S, S, D,
                   static_cast<float>(scale), w.data(), kr.data(), vr.data(), op + (b * H + head) * D);
    }
  });
  return out.to(q.scalar_type());
}

namespace {

struct Mat {                            // one matrix of the step and the (M, n) buffer its products fill
  const int8_t* q;                      // int8 weights with one scale per row, or
  const float* scale;
  const float* wf;                      // float32 weights (q and scale unused)
  int64_t n;
  int64_t K;
  float* out;
  int64_t ld;                           // out's row stride: n for a buffer of its own, more for a column block

  const char* block(int64_t b) const {  // where row block b starts
    return wf ? reinterpret_cast<const char*>(wf + b * kRows * K) : reinterpret_cast<const char*>(q + b * kRows * K);
  }
};

// kRows float32 rows (or fewer at a matrix's end) against one activation row; `next` (the thread's next block,
// 4x the bytes of an int8 one) is prefetched meanwhile, two lines per step
void block_dot_f32(const float* r, int64_t n, const char* next, const float* x, int64_t K, float* out) {
  if (n == kRows) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K; k += 8) {
      _mm_prefetch(next + 16 * k, _MM_HINT_T0);
      _mm_prefetch(next + 16 * k + 64, _MM_HINT_T0);
      const __m256 xv = _mm256_loadu_ps(x + k);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + k), xv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + K + k), xv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 2 * K + k), xv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 3 * K + k), xv, a3);
    }
    const __m256 ab = _mm256_hadd_ps(a0, a1), cd = _mm256_hadd_ps(a2, a3);
    const __m256 abcd = _mm256_hadd_ps(ab, cd);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = dot(r + i * K, x, K);
}

// thread t's share [first, last) of the row blocks of an n-row matrix (int8_linear's fixed split)
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int T) {
  const int64_t blocks = (n + kRows - 1) / kRows;
  return {blocks * t / T, blocks * (t + 1) / T};
}

// row block b of w.out = x . wT for each of the M activation rows: int8 weights take the int16-quantised
// activations xq (scales xs), float32 ones the activations xf as they are; `next` is prefetched meanwhile
inline void block_rows(const Mat& w, int64_t b, const char* next, const int16_t* xq, const float* xs,
                       const float* xf, int64_t M) {
  const int64_t row = b * kRows, n = std::min(kRows, w.n - row);
  int64_t m = 0;
  if (w.q != nullptr && n == kRows) {  // int8 rows of activations in pairs, each block widened once for two
    const Block cur{w.q + row * w.K, w.scale + row, n};
    for (; m + 2 <= M; m += 2) {
      block_dot2(cur, reinterpret_cast<const int8_t*>(next), xq + m * w.K, xq + (m + 1) * w.K, w.K, xs[m],
                 xs[m + 1], w.out + m * w.ld + row, w.out + (m + 1) * w.ld + row);
    }
  }
  for (; m < M; ++m) {
    if (w.wf) {
      block_dot_f32(w.wf + row * w.K, n, next, xf + m * w.K, w.K, w.out + m * w.ld + row);
    } else {
      const Block cur{w.q + row * w.K, w.scale + row, n};
      block_dot(cur, reinterpret_cast<const int8_t*>(next), xq + m * w.K, w.K, xs[m], w.out + m * w.ld + row);
    }
  }
}

// thread t's rows of w: the last block prefetches the thread's first block of `after`, so the memory stream
// runs on from one matrix into the next
void gemv_share(const Mat& w, const Mat* after, int t, int T, const int16_t* xq, const float* xs, const float* xf,
                int64_t M) {
  const auto [b0, b1] = share(w.n, t, T);
  const char* onward = after ? after->block(share(after->n, t, T).first) : w.block(0);
  for (int64_t b = b0; b < b1; ++b) block_rows(w, b, b + 1 < b1 ? w.block(b + 1) : onward, xq, xs, xf, M);
}

// The products between two barriers of the fused step (q k v; o; gate and up; down; lm_head), as one list of
// row-block "items" that the threads share by stealing. Why: with a fixed split, whichever thread the memory
// system served less during a stretch arrived late at its barrier while the other waited (4-14 % of a token).
// Each thread owns an equal range of items and takes from its front, a quarter of what is left at a time;
// once it is empty it takes from the back of the fullest other range.
struct Stretch {
  struct Part {                         // one matrix, or two read block by block together (gate, up)
    const Mat* a;
    const Mat* b;
    float* act;                         // when set: silu(a) * b of each item's rows goes here
    int64_t blocks;
  };
  Part parts[3];
  int n_parts = 0;
  int64_t items = 0;

  void add(const Mat* a, const Mat* b = nullptr, float* act = nullptr) {
    const int64_t blocks = (a->n + kRows - 1) / kRows;
    parts[n_parts++] = {a, b, act, blocks};
    items += blocks;
  }
  std::pair<const Part*, int64_t> at(int64_t j) const {  // the part and block of item j
    int i = 0;
    while (j >= parts[i].blocks) j -= parts[i++].blocks;
    return {&parts[i], j};
  }
  const char* first(int64_t j) const {  // where item j's reading starts
    const auto [part, b] = at(j);
    return part->a->block(b);
  }
};

// The fused step's barrier (in place of `omp barrier`): arrivals count up, the last one flips the phase the others
// spin on. Why: a waiting thread fetches the start of its next stretch into L2 meanwhile, and the last to arrive,
// on whom both wait, fetches nothing and lets go at once; before, every thread fetched those 16 KiB ahead of the
// barrier, so the last one held both up while its fetches queued: +4.6 % a SmolLM2 int8 token (interleaved A/B,
// median of 20 rounds, 15 won, busy and quiet memory alike). Only for as many threads as CPUs to run them (`fits`):
// with more, a spinning thread holds a CPU that the one it waits for needs (4 threads on 2 CPUs: 41 tok/s, 5 when
// yielding at every turn), and libgomp's barrier, which then sleeps, stays (125-129 tok/s).
struct alignas(64) SpinBarrier {
  std::atomic<int> arrived{0};
  alignas(64) std::atomic<int> phase{0};

  // T threads, each with its own `mine` (0 at first); while waiting, fetch `bytes` from `ahead` (a prefetch never
  // faults, so one that runs past a small model's last matrix is harmless)
  void wait(int T, int& mine, const char* ahead = nullptr, int64_t bytes = 0) {
    mine ^= 1;
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == T - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.store(mine, std::memory_order_release);
      return;
    }
    int64_t off = 0;
    for (int64_t spins = 1; phase.load(std::memory_order_acquire) != mine; ++spins) {
      if (off < bytes) {
        _mm_prefetch(ahead + off, _MM_HINT_T1);
        off += 64;
        continue;
      }
      _mm_pause();
      if (spins % 4096 == 0) std::this_thread::yield();
    }
  }

  static bool fits(int T) {  // T threads have a CPU each
    static const int cpus = [] {
      cpu_set_t set;
      return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    }();
    return T <= cpus;
  }
};

struct alignas(64) Range {              // a thread's items [front, back), front in the low 32 bits
  std::atomic<uint64_t> v{0};
};

inline uint64_t pack(int64_t front, int64_t back) {
  return static_cast<uint64_t>(back) << 32 | static_cast<uint64_t>(front);
}

// take a quarter of what is left in r (at least one item), from its front or its back, into [a, b)
inline bool take(std::atomic<uint64_t>& r, bool front, int64_t& a, int64_t& b) {
  uint64_t cur = r.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t f = static_cast<int64_t>(cur & 0xffffffffu), e = static_cast<int64_t>(cur >> 32);
    if (f >= e) return false;
    const int64_t c = std::max<int64_t>(1, (e - f) / 4);
    if (r.compare_exchange_weak(cur, front ? pack(f + c, e) : pack(f, e - c), std::memory_order_relaxed)) {
      a = front ? f : e - c;
      b = front ? f + c : e;
      return true;
    }
  }
}

inline int64_t left(const Range& r) {
  const uint64_t v = r.v.load(std::memory_order_relaxed);
  return std::max<int64_t>(0, static_cast<int64_t>(v >> 32) - static_cast<int64_t>(v & 0xffffffffu));
}

// item j of s for the M rows; `next` (the following item's first block) is prefetched while its last block runs
void run_item(const Stretch& s, int64_t j, const char* next, const int16_t* xq, const float* xs, const float* xf,
              int64_t M) {
  const auto [part, b] = s.at(j);
  if (part->b == nullptr) {
    block_rows(*part->a, b, next, xq, xs, xf, M);
    return;
  }
  block_rows(*part->a, b, part->b->block(b), xq, xs, xf, M);
  block_rows(*part->b, b, next, xq, xs, xf, M);
  if (part->act != nullptr) {  // silu(gate) * up = gate / (1 + e^-gate) * up, the item's rows of each row m
    const int64_t n = part->a->n, r0 = b * kRows, r1 = std::min(n, r0 + kRows);
    for (int64_t m = 0; m < M; ++m) {
      const float* g = part->a->out + m * n;
      const float* u = part->b->out + m * n;
      float* y = part->act + m * n;
      if (r1 - r0 == 4) {
        const __m128 gv = _mm_loadu_ps(g + r0);
        const __m128 e = _mm256_castps256_ps128(exp8(_mm256_castps128_ps256(_mm_sub_ps(_mm_setzero_ps(), gv))));
        _mm_storeu_ps(y + r0, _mm_mul_ps(_mm_div_ps(gv, _mm_add_ps(_mm_set1_ps(1.f), e)), _mm_loadu_ps(u + r0)));
      } else {
        for (int64_t r = r0; r < r1; ++r) y[r] = g[r] / (1.f + std::exp(-g[r])) * u[r];
      }
    }
  }
}

// thread t's part of stretch s: its own items, then others' that are still waiting (ranges: one for each of the
// R threads asked for; one the runtime did not start is taken whole by the others). `onward` is prefetched
// after the thread's last own item: its first block of the next stretch.
// Byte ranges that a thread fetches into L2 a few lines at a time between the items of a stretch. Why: attention
// reads the layer's keys and values from a cache that the token's weights have pushed out to DRAM; fetched in
// one go before the q k v products the thread stalls as long as attention would have waited, but between their
// items the fetches ride along with the weight stream: attention 160-190 -> 90-105 us a SmolLM2 int8 token, the
// token +1.8 % and +2.7 % (16 of 24, 12 of 16 interleaved rounds, busy memory)
struct Side {
  static constexpr int kMax = 8;  // ranges
  const char* from[kMax];
  const char* to[kMax];
  int n = 0, at = 0;
  int64_t lines = 0, per_item = 12;  // lines in all; fetched after each item

  void add(const void* begin, const void* end) {
    if (n < kMax && begin < end) {
      from[n] = static_cast<const char*>(begin);
      to[n++] = static_cast<const char*>(end);
      lines += (to[n - 1] - from[n - 1] + 63) / 64;
    }
  }
  // spread over `items` items (12 lines each at least: a long context's cache gets more, so that it is all fetched
  // by the stretch's end)
  void spread(int64_t items) {
    items = std::max<int64_t>(1, items);
    per_item = std::clamp<int64_t>((lines + items - 1) / items, 12, 256);
  }
  void pump() {
    for (int64_t k = per_item; at < n && k > 0; --k) {
      _mm_prefetch(from[at], _MM_HINT_T1);
      from[at] += 64;
      if (from[at] >= to[at]) ++at;
    }
  }
};

// thread t's part of stretch s (see above); `side`, if given, is pumped once an item
void run_stretch(const Stretch& s, Range* ranges, int R, const char* onward, int t, const int16_t* xq,
                 const float* xs, const float* xf, int64_t M, Side* side) {
  int64_t a, b;
  while (take(ranges[t].v, true, a, b)) {
    for (int64_t j = a; j < b; ++j) {
      if (side != nullptr) side->pump();
      // the next item is probably ours too (unless it is stolen meanwhile): read it ahead
      const bool more = j + 1 < b || j + 1 < static_cast<int64_t>(ranges[t].v.load(std::memory_order_relaxed) >> 32);
      run_item(s, j, more ? s.first(j + 1) : onward, xq, xs, xf, M);
    }
  }
  for (;;) {
    int victim = -1;
    int64_t most = 0;
    for (int v = 0; v < R; ++v) {
      const int64_t n = v == t ? 0 : left(ranges[v]);
      if (n > most) most = n, victim = v;
    }
    if (victim < 0) return;
    if (take(ranges[victim].v, false, a, b)) {
      for (int64_t j = a; j < b; ++j) run_item(s, j, j + 1 < b ? s.first(j + 1) : onward, xq, xs, xf, M);
    }
  }
}

void rms_norm(const float* x, const float* weight, int64_t M, int64_t n, float eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float squares = dot(x + m * n, x + m * n, n);
    const float r = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) y[m * n + i] = weight[i] * (x[m * n + i] * r);
  }
}

// rotary embedding, "rotate half" layout: pairs (i, i + D/2) turn by the angle whose cos/sin rows are given
void rope(const float* x, const float* cos, const float* sin, int64_t D, float* y) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    y[i] = x[i] * cos[i] - x[i + h] * sin[i];
    y[i + h] = x[i + h] * cos[i + h] + x[i] * sin[i + h];
  }
}

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.is_cpu(),
              "fournil decode step: ", what, " must be a contiguous float32 CPU tensor");
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, at::TensorList qs, at::TensorList scales) {
  TORCH_CHECK(!qs.empty() && qs.size() == scales.size(), "int8_linear: one scale vector per weight matrix");
  const int64_t K = x.size(-1);
  TORCH_CHECK(K % 16 == 0, "int8_linear: the input width must be a multiple of 16, got ", K);
  const at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0);
  TORCH_CHECK(M <= kMaxRows, "int8_linear: at most ", kMaxRows, " rows, got ", M);
  int64_t N = 0, n_blocks = 0;
  for (size_t i = 0; i < qs.size(); ++i) {
    const at::Tensor& q = qs[i];
    TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous() && q.size(1) == K,
                "int8_linear: weights must be contiguous int8 (N, ", K, ")");
    TORCH_CHECK(scales[i].numel() == q.size(0), "int8_linear: scale ", i, " needs ", q.size(0), " entries");
    N += q.size(0);
    n_blocks += (q.size(0) + kRows - 1) / kRows;
  }
  at::Tensor out = at::empty({M, N}, xf.options());
  std::vector<at::Tensor> scale32;
  std::vector<Mat> mats;  // each matrix fills its columns of out
  for (size_t i = 0, col = 0; i < qs.size(); col += qs[i].size(0), ++i) {
    scale32.push_back(scales[i].to(at::kFloat).contiguous());
    mats.push_back({qs[i].data_ptr<int8_t>(), scale32.back().data_ptr<float>(), nullptr, qs[i].size(0), K,
                    out.data_ptr<float>() + col, N});
  }
  at::Tensor xq = at::empty({M, K}, xf.options().dtype(at::kShort));
  std::vector<float> x_scale(M);
  quantize_rows(xf.data_ptr<float>(), M, K, xq.data_ptr<int16_t>(), x_scale.data());
  // one thread for a handful of rows: starting a second one costs more than it saves
#pragma omp parallel num_threads(n_blocks > 16 ? std::max(1, at::get_num_threads()) : 1)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    for (size_t i = 0; i < mats.size(); ++i) {
      gemv_share(mats[i], i + 1 < mats.size() ? &mats[i + 1] : nullptr, t, T, xq.data_ptr<int16_t>(),
                 x_scale.data(), nullptr, M);
    }
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return out.to(x.scalar_type()).view(shape);
}

// The weights of a Llama for decode_step, checked once: per layer the input and post-attention norm weights and
// the q, k, v, o, gate, up, down matrices, then the final norm and lm_head; the embedding table (V, dim) and
// rotary tables (P, D). The matrices are all int8 with one float32 scale per row, or all float32 (no scales);
// everything else is float32. Holding them here makes a step one call with a handful of arguments.
struct DecodePlan : torch::CustomClassHolder {
  std::vector<at::Tensor> norms, qs, scales;
  at::Tensor embed, rope_cos, rope_sin;
  int64_t L, V, dim, ffn, H, Hkv, D;
  float eps;
  bool int8;
  // the matrices in step order as raw pointers (each step fills in where its products go). Why: a step that
  // reads them from the tensors touches ~400 tensor objects, which the token before has pushed out of every cache
  // with its 135 MB of weights: 45 us a SmolLM2 int8 token, where one contiguous table costs ~2
  std::vector<Mat> mats;

  DecodePlan(std::vector<at::Tensor> norms_, std::vector<at::Tensor> qs_, std::vector<at::Tensor> scales_,
             at::Tensor embed_, at::Tensor rope_cos_, at::Tensor rope_sin_, int64_t n_heads, int64_t n_kv_heads,
             double eps_)
      : norms(std::move(norms_)), qs(std::move(qs_)), scales(std::move(scales_)), embed(std::move(embed_)),
        rope_cos(std::move(rope_cos_)), rope_sin(std::move(rope_sin_)), H(n_heads), Hkv(n_kv_heads),
        eps(static_cast<float>(eps_)) {
    L = static_cast<int64_t>(norms.size() - 1) / 2;
    TORCH_CHECK(L > 0 && static_cast<int64_t>(norms.size()) == 2 * L + 1 &&
                static_cast<int64_t>(qs.size()) == 7 * L + 1,
                "DecodePlan: per layer 2 norms and 7 matrices (q k v o gate up down), then the final ones");
    int8 = qs[0].scalar_type() == at::kChar;
    TORCH_CHECK(scales.size() == (int8 ? qs.size() : 0),
                "DecodePlan: one scale vector per int8 matrix, none for float32 ones");
    check_float(embed, "embed");
    check_float(rope_cos, "rope_cos");
    check_float(rope_sin, "rope_sin");
    V = embed.size(0);
    dim = embed.size(1);
    D = rope_cos.size(1);
    TORCH_CHECK(H > 0 && Hkv > 0 && H % Hkv == 0 && D % 2 == 0 && rope_sin.sizes() == rope_cos.sizes(),
                "DecodePlan: heads, head size and rope tables do not agree");
    for (const at::Tensor& n : norms) {
      check_float(n, "norm weight");
      TORCH_CHECK(n.numel() == dim, "DecodePlan: norm weights of ", dim);
    }
    ffn = qs[4].size(0);
    for (int64_t i = 0; i < 7 * L + 1; ++i) {
      const int64_t n = height(i), K = width(i);
      const at::Tensor& q = qs[i];
      TORCH_CHECK(q.scalar_type() == (int8 ? at::kChar : at::kFloat) && q.is_contiguous() && q.dim() == 2 &&
                  q.size(0) == n && q.size(1) == K, "DecodePlan: matrix ", i, " must be contiguous ",
                  int8 ? "int8" : "float32", " (", n, ", ", K, ") like the first");
      TORCH_CHECK(K % 16 == 0, "DecodePlan: matrix widths must be multiples of 16, got ", K);
      if (int8) {
        check_float(scales[i], "scale");
        TORCH_CHECK(scales[i].numel() == n, "DecodePlan: scale ", i, " needs ", n, " entries");
      }
      mats.push_back({int8 ? q.data_ptr<int8_t>() : nullptr, int8 ? scales[i].data_ptr<float>() : nullptr,
                      int8 ? nullptr : q.data_ptr<float>(), n, K, nullptr, n});
    }
  }

  int64_t height(int64_t i) const {  // rows of matrix i: q k v o gate up down per layer, then the head
    const int64_t h[7] = {H * D, Hkv * D, Hkv * D, dim, ffn, ffn, dim};
    return i == 7 * L ? V : h[i % 7];
  }
  int64_t width(int64_t i) const {
    const int64_t w[7] = {dim, dim, dim, H * D, dim, dim, ffn};
    return i == 7 * L ? dim : w[i % 7];
  }
};

// One decode step of a Llama, whole, in one parallel region. Why: through separate operators each of a
// token's ~120 matrix products starts its threads and a cold memory stream on its own; here the threads stay
// up for the whole token, share every matrix's row blocks (see Stretch), and meet at a barrier only where a
// result is needed whole (6 per layer). Each thread keeps its own copy of the residual stream and of the
// normalised (for int8, int16-quantised) activations, so that small work is done twice rather than waited for.
// Its M input rows are tokens: one per sequence of a batch (decoding), or consecutive tokens of one sequence
// (a prompt, up to 32 at a time, for which the weights are then read once): every row's keys/values are stored
// before any row attends, and each row attends to the cache positions its mask row sets.
//   ids, positions (M,) int64; rows (M,): the cache batch index of each; slots (M,): its cache column;
//   mask (M, S) bool; k_cache/v_cache: (L, B, Hkv, S, D) float32, all layers in one tensor (the step's
//   arguments are then a handful of tensors, not two per layer: see DecodePlan::mats for why that counts)
//   -> float32 logits (M, V), or (1, V) of the last row with last_only
namespace {

// the caches' batch size B and length S after checking them against the plan: (L, B, Hkv, S, D) float32 both
std::pair<int64_t, int64_t> cache_shape(const DecodePlan& P, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_float(k_cache, "k_cache");
  check_float(v_cache, "v_cache");
  const bool five = k_cache.dim() == 5;
  const int64_t B = five ? k_cache.size(1) : 0, S = five ? k_cache.size(3) : 0;
  TORCH_CHECK(k_cache.sizes() == at::IntArrayRef({P.L, B, P.Hkv, S, P.D}) && v_cache.sizes() == k_cache.sizes(),
              "decode_step: key and value caches are (", P.L, ", B, ", P.Hkv, ", S, ", P.D, ") for ", P.L,
              " layers");
  return {B, S};
}

void check_rows(const DecodePlan& P, int64_t M, const int64_t* id, const int64_t* pos, const int64_t* row,
                const int64_t* slot, int64_t B, int64_t S) {
  const int64_t V = P.V;
  for (int64_t m = 0; m < M; ++m) {
    TORCH_CHECK(id[m] >= 0 && id[m] < V, "decode_step: token id ", id[m], " outside the vocabulary");
    TORCH_CHECK(pos[m] >= 0 && pos[m] < P.rope_cos.size(0), "decode_step: position ", pos[m],
                " past the rotary table");
    TORCH_CHECK(row[m] >= 0 && row[m] < B, "decode_step: cache row ", row[m], " outside the batch of ", B);
    TORCH_CHECK(slot[m] >= 0 && slot[m] < S, "decode_step: slot ", slot[m], " outside the cache of ", S);
    for (int64_t r = 0; r < m; ++r) {
      TORCH_CHECK(row[r] != row[m] || slot[r] != slot[m], "decode_step: rows ", r, " and ", m,
                  " would store their keys in the same cache cell");
    }
  }
}

// the step itself on checked arguments (see decode_step); logits: (last_only ? 1 : M, V)
void run_step(const DecodePlan& P, int64_t M, const int64_t* id, const int64_t* pos, const int64_t* row,
              const int64_t* slot, const bool* mk, int64_t B, int64_t S, float* k_all, float* v_all, bool last_only,
              float* logits) {
  const int64_t L = P.L, dim = P.dim, ffn = P.ffn, H = P.H, Hkv = P.Hkv, D = P.D;
  // shared buffers, each (M, n): q k v | attention | o | gate up act | down
  const int64_t sizes[9] = {H * D, Hkv * D, Hkv * D, H * D, dim, ffn, ffn, ffn, dim};
  int64_t total = 0;
  for (int64_t n : sizes) total += M * n;
  at::Tensor work = at::empty({total}, P.embed.options());
  float* buf[9];
  buf[0] = work.data_ptr<float>();
  for (int i = 1; i < 9; ++i) buf[i] = buf[i - 1] + M * sizes[i - 1];
  float* const outs[7] = {buf[0], buf[1], buf[2], buf[4], buf[5], buf[6], buf[8]};
  std::vector<Mat> seq(P.mats);
  for (int64_t i = 0; i < 7 * L + 1; ++i) seq[i].out = i == 7 * L ? logits : outs[i % 7];
  // the stretches between barriers: per layer q k v | o | gate+up (with silu(gate) * up) | down; then lm_head
  std::vector<Stretch> stretches(4 * L + 1);
  for (int64_t l = 0; l < L; ++l) {
    Stretch* st = &stretches[4 * l];
    const Mat* w = &seq[7 * l];
    st[0].add(&w[0]);
    st[0].add(&w[1]);
    st[0].add(&w[2]);
    st[1].add(&w[3]);
    st[2].add(&w[4], &w[5], buf[7]);
    st[3].add(&w[6]);
  }
  stretches[4 * L].add(&seq[7 * L]);
  const int threads = std::max(1, at::get_num_threads());
  std::vector<Range> ranges(stretches.size() * threads);  // each thread's own items of every stretch
  for (size_t i = 0; i < stretches.size(); ++i) {
    for (int t = 0; t < threads; ++t) {
      const int64_t n = stretches[i].items;
      ranges[i * threads + t].v.store(pack(n * t / threads, n * (t + 1) / threads), std::memory_order_relaxed);
    }
  }
  const float* cos = P.rope_cos.data_ptr<float>();
  const float* sin = P.rope_sin.data_ptr<float>();
  const float* embed = P.embed.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const int64_t widest = std::max({dim, H * D, ffn});

  SpinBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    int phase = 0;  // this thread's side of the barrier
    const bool spin = SpinBarrier::fits(T);
    const auto sync = [&](const char* ahead = nullptr, int64_t bytes = 0) {
      if (spin) {
        barrier.wait(T, phase, ahead, bytes);
        return;
      }
      for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T1);
#pragma omp barrier
    };
    std::vector<float> x(M * dim), h(M * widest), w(H / Hkv * S), qr(H / Hkv * D);
    std::vector<const float*> kr(S), vr(S);
    std::vector<float> fresh(Hkv * D);  // one row: the new keys (rotated) of the kv heads this thread's heads read
    std::vector<int16_t> xq(M * widest);
    std::vector<float> xs(M);
    const float* input = nullptr;  // the activations the next products take (quantised too for int8)
    const auto take_input = [&](const float* src, int64_t K) {
      input = src;
      if (P.int8) quantize_rows(src, M, K, xq.data(), xs.data());
    };
    Side side;  // M = 1: this layer's keys and values that the thread's heads read, fetched during q k v
    const auto run = [&](size_t i, int64_t rows_from = 0, int64_t rows = -1) {  // stretch i, then a barrier
      const Stretch& next = stretches[(i + 1) % stretches.size()];
      const char* onward = next.first(next.items * t / threads);
      const int64_t K = stretches[i].parts[0].a->K;
      run_stretch(stretches[i], &ranges[i * threads], threads, onward, t, xq.data() + rows_from * K,
                  xs.data() + rows_from, input + rows_from * K, rows < 0 ? M : rows,
                  i % 4 == 0 && i + 1 < stretches.size() ? &side : nullptr);
      if (i + 1 == stretches.size()) return;  // lm_head: the region's end waits for it
      // the memory would idle through the barrier (and the attention after q k v): a waiting thread fetches the
      // start of its next stretch into L2 meanwhile (16 KiB: 4-5 % faster a token, 64 gained nothing)
      sync(onward, kAhead);
    };
    const auto normed = [&](const at::Tensor& weight) {  // h = rmsnorm(x), ready for the next products
      rms_norm(x.data(), weight.data_ptr<float>(), M, dim, P.eps, h.data());
      take_input(h.data(), dim);
    };
    for (int64_t m = 0; m < M; ++m) std::copy_n(embed + id[m] * dim, dim, x.data() + m * dim);
    int64_t lo = 0, hi = -1;  // M = 1: the span of the cache positions set
    for (int64_t s = 0; M == 1 && s < S; ++s) {
      if (mk[s]) {
        lo = hi < 0 ? s : lo;
        hi = s;
      }
    }
    for (int64_t l = 0; l < L; ++l) {
      float* kc = k_all + l * B * Hkv * S * D;
      float* vc = v_all + l * B * Hkv * S * D;
      const int64_t G = H / Hkv, first = M * H * t / T, end = M * H * (t + 1) / T;  // this thread's heads
      side = Side{};
      if (M == 1 && first < end) {  // that span, of each kv head the thread's heads read
        for (int64_t g = first / G; g * G < end && hi >= 0; ++g) {
          const int64_t kv = (row[0] * Hkv + g) * S * D;
          side.add(kc + kv + lo * D, kc + kv + (hi + 1) * D);
          side.add(vc + kv + lo * D, vc + kv + (hi + 1) * D);
        }
        side.spread(stretches[4 * l].items / T);
      }
      normed(P.norms[2 * l]);
      run(4 * l);
      // a consecutive range of the rows' heads per thread, so that a kv head's queries mostly meet in one thread,
      // which then reads its keys and values once (attend_group): 3 % faster a SmolLM2 token than every other head
      if (M == 1) {
        // one row: no barrier between storing the new keys and attending. Each thread rotates the new key of every
        // kv head its heads read into `fresh` and attends with it; the thread holding a kv head's first query head
        // also stores it (so one thread writes each cell, and no thread reads a cell another is writing)
        for (int64_t g = first / G; first < end && g * G < end; ++g) {
          const int64_t cell = ((row[0] * Hkv + g) * S + slot[0]) * D;
          rope(buf[1] + g * D, cos + pos[0] * D, sin + pos[0] * D, D, fresh.data() + g * D);
          if (g * G >= first) {
            std::copy_n(fresh.data() + g * D, D, kc + cell);
            std::copy_n(buf[2] + g * D, D, vc + cell);
          }
        }
      } else {
        for (int64_t p = t; p < M * Hkv; p += T) {  // the new keys (rotated) and values into the cache
          const int64_t m = p / Hkv, g = p % Hkv, cell = ((row[m] * Hkv + g) * S + slot[m]) * D;
          rope(buf[1] + m * Hkv * D + g * D, cos + pos[m] * D, sin + pos[m] * D, D, kc + cell);
          std::copy_n(buf[2] + m * Hkv * D + g * D, D, vc + cell);
        }
        sync();
      }
      for (int64_t p = first; p < end;) {
        const int64_t m = p / H, head = p % H, group = head / G;
        const int64_t n = std::min(end - p, (group + 1) * G - head);  // this group's heads in the range
        for (int64_t i = 0; i < n; ++i) {
          rope(buf[0] + m * H * D + (head + i) * D, cos + pos[m] * D, sin + pos[m] * D, D, qr.data() + i * D);
        }
        const int64_t kv = (row[m] * Hkv + group) * S * D;
        attend_group(qr.data(), n, kc + kv, vc + kv, mk + m * S, S, D, scale, w.data(), kr.data(), vr.data(),
                     buf[3] + m * H * D + head * D, M == 1 ? slot[0] : -1, fresh.data() + group * D,
                     buf[2] + m * Hkv * D + group * D);
        p += n;
      }
      sync();
      take_input(buf[3], H * D);
      run(4 * l + 1);
      for (int64_t j = 0; j < M * dim; ++j) x[j] += buf[4][j];
      normed(P.norms[2 * l + 1]);
      run(4 * l + 2);
      take_input(buf[7], ffn);
      run(4 * l + 3);
      for (int64_t j = 0; j < M * dim; ++j) x[j] += buf[8][j];
    }
    normed(P.norms[2 * L]);
    run(4 * L, last_only ? M - 1 : 0, last_only ? 1 : M);  // a prompt's logits: its last token's only
  }
}

}  // namespace

at::Tensor decode_step(const c10::intrusive_ptr<DecodePlan>& plan, const at::Tensor& ids,
                       const at::Tensor& positions, const at::Tensor& rows, const at::Tensor& slots,
                       const at::Tensor& mask, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       bool last_only) {
  const DecodePlan& P = *plan;
  const int64_t M = ids.numel();
  TORCH_CHECK(M >= 1 && M <= kMaxRows, "decode_step: 1 to ", kMaxRows, " rows, got ", M);
  for (const at::Tensor* t : {&ids, &positions, &rows, &slots}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous() && t->numel() == M,
                "decode_step: ids, positions, rows and slots are (M,) int64");
  }
  const auto [B, S] = cache_shape(P, k_cache, v_cache);
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.numel() == M * S && mask.is_contiguous(),
              "decode_step: mask (M, S) bool");
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* row = rows.data_ptr<int64_t>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  check_rows(P, M, id, pos, row, slot, B, S);
  at::Tensor logits = at::empty({last_only ? 1 : M, P.V}, P.embed.options());
  run_step(P, M, id, pos, row, slot, mask.data_ptr<bool>(), B, S, k_cache.data_ptr<float>(),
           v_cache.data_ptr<float>(), last_only, logits.data_ptr<float>());
  return logits;
}

namespace {

// the index of r's largest value (V of them), the first on ties and the first NaN if any, as torch.argmax gives
int64_t argmax_row(const float* r, int64_t V) {
  const int64_t V8 = V - V % 8;
  __m256 top = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t i = 0; i < V8; i += 8) {
    const __m256 v = _mm256_loadu_ps(r + i);
    top = _mm256_max_ps(top, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float best = -INFINITY;
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, top);
  for (float lane : lanes) best = std::max(best, lane);
  for (int64_t i = V8; i < V; ++i) {
    any_nan = any_nan || std::isnan(r[i]);
    best = std::max(best, r[i]);
  }
  // the first position holding it (a row of only -inf: index 0, as torch says)
  const auto hit = [&](float v) { return any_nan ? std::isnan(v) : v == best; };
  const __m256 want = _mm256_set1_ps(best);
  int64_t at = 0;
  for (; at < V8; at += 8) {
    const __m256 v = _mm256_loadu_ps(r + at);
    const __m256 found = any_nan ? _mm256_cmp_ps(v, v, _CMP_UNORD_Q) : _mm256_cmp_ps(v, want, _CMP_EQ_OQ);
    const int mask = _mm256_movemask_ps(found);
    if (mask != 0) {
      at += __builtin_ctz(static_cast<unsigned>(mask));
      break;
    }
  }
  if (at >= V8) {
    while (at < V - 1 && !hit(r[at])) ++at;
  }
  return at;
}

}  // namespace

// One sequence's next token (batch 1): its id, position and cache column as plain integers; sets mask[slot],
// writes the logits into `logits` (1, V) and returns their argmax (greedy decoding's pick). Why: each tensor a
// step's call builds and each operator it calls from Python costs microseconds, more after a token has pushed the
// interpreter's memory out of the caches; with decode_step SmolLM2 int8 spent ~0.2 ms a token in Python (of ~4),
// with this one call a token ~0.05.
int64_t decode_token(const c10::intrusive_ptr<DecodePlan>& plan, int64_t id, int64_t position, int64_t slot,
                     const at::Tensor& mask, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& logits) {
  const DecodePlan& P = *plan;
  const auto [B, S] = cache_shape(P, k_cache, v_cache);
  TORCH_CHECK(B == 1, "decode_token: a cache of one row, got ", B);
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.numel() == S && mask.is_contiguous(),
              "decode_token: mask of ", S, " bool");
  check_float(logits, "logits");
  TORCH_CHECK(logits.numel() == P.V, "decode_token: logits of ", P.V);
  const int64_t row = 0;
  check_rows(P, 1, &id, &position, &row, &slot, B, S);
  bool* mk = mask.data_ptr<bool>();
  mk[slot] = true;
  float* out = logits.data_ptr<float>();
  run_step(P, 1, &id, &position, &row, &slot, mk, B, S, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), false,
           out);
  return argmax_row(out, P.V);
}

// each row's argmax_row; why: torch's takes 60-130 us on one (1, 49152) row of logits, 1-2 % of a fused decode step, this one ~5 us
at::Tensor argmax_rows(const at::Tensor& x) {
  check_float(x, "argmax input");
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0, "argmax_rows: (M, V) with V > 0");
  const int64_t M = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({M}, x.options().dtype(at::kLong));
  int64_t* index = out.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m) index[m] = argmax_row(x.data_ptr<float>() + m * V, V);
  return out;
}

namespace {

// The bandwidth bound's readers. Why: a bound is only a bound if its probe reads at least as fast as the step it
// judges; torch.sum read 40 GB/s on a host where the int8 step pulled 55, so the benchmark takes the fastest of
// torch.sum, a plain streaming read and one with the step's own access pattern (rows, prefetches), minus its compute.
// Each sums bytes with vpsadbw (exact, one instruction per load) so that nothing can be skipped.
int64_t read_plain(const uint8_t* p, int64_t a, int64_t b) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  const __m256i zero = _mm256_setzero_si256();
  const auto at = [&](int64_t i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)); };
  int64_t i = a;
  for (; i + 128 <= b; i += 128) {
    s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(at(i), zero));
    s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(at(i + 32), zero));
    s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(at(i + 64), zero));
    s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(at(i + 96), zero));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  int64_t total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < b; ++i) total += p[i];
  return total;
}

// rows [r0, r1) of width K as chunk4 walks them: 16 bytes of each of kRows rows a step, one line of the next block
// into L1 and one kFarBlocks blocks further into L2 meanwhile (a last partial block: plain)
int64_t read_rows(const uint8_t* p, int64_t K, int64_t r0, int64_t r1, int64_t rows) {
  __m128i s = _mm_setzero_si128();
  const __m128i zero = _mm_setzero_si128();
  const auto at = [](const uint8_t* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); };
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    const uint8_t* b = p + r * K;
    const uint8_t* next = r + 2 * kRows <= r1 ? b + kRows * K : p + r0 * K;
    const bool far = r + (2 + kFarBlocks) * kRows <= rows;
    for (int64_t k = 0; k + 16 <= K; k += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);
      if (far) _mm_prefetch(reinterpret_cast<const char*>(next + kRows * (kFarBlocks * K + k)), _MM_HINT_T1);
      const __m128i ab = _mm_add_epi64(_mm_sad_epu8(at(b + k), zero), _mm_sad_epu8(at(b + K + k), zero));
      const __m128i cd = _mm_add_epi64(_mm_sad_epu8(at(b + 2 * K + k), zero), _mm_sad_epu8(at(b + 3 * K + k), zero));
      s = _mm_add_epi64(s, _mm_add_epi64(ab, cd));
    }
  }
  int64_t total = _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
  const int64_t tail = K - K % 16;
  for (int64_t i = r0; i < r; ++i) total += read_plain(p + i * K, tail, K);  // columns past the last 16
  return total + read_plain(p, r * K, r1 * K);
}

int64_t read_bytes(const at::Tensor& x, int64_t row_bytes) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "read_bytes: a contiguous CPU tensor");
  TORCH_CHECK(row_bytes >= 0, "read_bytes: row_bytes must be >= 0");
  const auto* p = static_cast<const uint8_t*>(x.data_ptr());
  const int64_t n = x.numel() * x.element_size();
  const int64_t rows = row_bytes > 0 ? n / row_bytes : 0;
  int64_t total = 0;
#pragma omp parallel num_threads(std::max(1, at::get_num_threads())) reduction(+ : total)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    if (row_bytes > 0) {
      const int64_t blocks = rows / kRows;
      const int64_t r0 = blocks * t / T * kRows, r1 = t + 1 == T ? rows : blocks * (t + 1) / T * kRows;
      total += read_rows(p, row_bytes, r0, r1, rows);
      if (t + 1 == T) total += read_plain(p, rows * row_bytes, n);
    } else {
      const int64_t lines = n / 64;
      total += read_plain(p, lines * t / T * 64, t + 1 == T ? n : lines * (t + 1) / T * 64);
    }
  }
  return total;
}
}  // namespace

TORCH_LIBRARY(fournil, m) {
  m.def("int8_linear(Tensor x, Tensor[] qs, Tensor[] scales) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("read_bytes(Tensor x, int row_bytes) -> int");
  m.class_<DecodePlan>("DecodePlan")
      .def(torch::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor,
                       at::Tensor, at::Tensor, int64_t, int64_t, double>());
  m.def("decode_step(__torch__.torch.classes.fournil.DecodePlan plan, Tensor ids, Tensor positions, "
        "Tensor rows, Tensor slots, Tensor mask, Tensor(a!) k_cache, Tensor(b!) v_cache, bool last_only) "
        "-> Tensor");
  m.def("decode_token(__torch__.torch.classes.fournil.DecodePlan plan, int id, int position, int slot, "
        "Tensor(a!) mask, Tensor(b!) k_cache, Tensor(c!) v_cache, Tensor(d!) logits) -> int");
}

TORCH_LIBRARY_IMPL(fournil, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("decode_attention", &decode_attention);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("read_bytes", &read_bytes);
  m.impl("decode_step", &decode_step);
  m.impl("decode_token", &decode_token);
}

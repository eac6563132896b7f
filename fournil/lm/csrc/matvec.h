// Row-block products of int8 (or float32) weight matrices with a few activation rows: the inner loops of
// fournil::int8_linear (matvec.cpp) and of the fused decode step (decode_step.cpp).
//
// At batch 1 a decode step reads every weight once, so its speed is the memory bandwidth these products reach.
// Two things let them reach it: an integer inner product (int8 weights x int16 activations with vpmaddwd, or
// vpdpwssd where the CPU has AVX-512 VNNI: no int8 -> float conversion per weight), and software prefetches of the
// rows that come next, since the hardware prefetcher does not follow four interleaved row streams on its own.
// Rows go in blocks of kRows that share each load of the activations; a prompt's activation rows go in pairs, so
// that each widened weight vector serves two.
#pragma once

#include <cstdlib>
#include <string>

#include "common.h"

namespace {

constexpr float kLevels = 16383.f;      // activations -> int16 in [-2^14, 2^14]: an int32 lane holds
constexpr int64_t kChunk = 4096;        // 2 * kChunk/16 products of 127 * 2^14 without overflow
// How far ahead the second prefetch reaches, in blocks past `next` (blocks of a stretch lie one after another in
// memory; past a matrix's end the next matrix of the step follows). Why: one block ahead covers DRAM's latency
// only while bandwidth is scarce; on fast memory the stream needs a few blocks more in flight, fetched into L2.
constexpr int64_t kFarBlocks = 3;

struct Block {                          // kRows (or fewer, at a matrix's end) consecutive weight rows
  const int8_t* rows;
  const float* scale;
  int64_t n;
};

inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

inline int32_t hsum1(__m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_hadd_epi32(s, s);
  return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

inline __m256i widen(const int8_t* w) {  // 16 int8 weights -> 16 int16 lanes
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}

// acc + the pairwise products of w and x summed into int32 lanes: two instructions in AVX2, one (vpdpwssd) in
// AVX-512 VNNI, faster even while memory is the limit since the loop's instructions compete with its loads.
// Each product below is written once, as a macro over MADD, and compiled twice: plain, and in a
// function whose target attribute lets it use VNNI (an intrinsic of that target cannot be inlined elsewhere).
#define FOURNIL_MADD_AVX2(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
#define FOURNIL_MADD_VNNI(acc, w, x) _mm256_dpwssd_epi32(acc, w, x)

// the int32 sums of columns [k0, k1) of four consecutive rows r (row stride K) times xq, 16 columns a step; per step
// one line of `next` is fetched into L1, and one line kFarBlocks blocks further on into L2
#define FOURNIL_CHUNK4(MADD)                                                                          \
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;                                     \
  for (int64_t k = k0; k < k1; k += 16) {                                                             \
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);                       \
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * (kFarBlocks * K + k)), _MM_HINT_T1);    \
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));                  \
    a0 = MADD(a0, widen(r + k), xv);                                                                  \
    a1 = MADD(a1, widen(r + K + k), xv);                                                              \
    a2 = MADD(a2, widen(r + 2 * K + k), xv);                                                          \
    a3 = MADD(a3, widen(r + 3 * K + k), xv);                                                          \
  }                                                                                                   \
  return hsum4(a0, a1, a2, a3);

// the same for two activation rows (xa, xb) at once, sums into sa and sb: each weight vector is widened once for
// both. Why: a prompt's rows (up to 32 in one step) make the products compute-bound, and widening is half their work
#define FOURNIL_CHUNK4X2(MADD)                                                                                \
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;         \
  for (int64_t k = k0; k < k1; k += 16) {                                                                     \
    _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);                               \
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + k));                          \
    const __m256i yv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k));                          \
    const __m256i w0 = widen(r + k), w1 = widen(r + K + k), w2 = widen(r + 2 * K + k), w3 = widen(r + 3 * K + k); \
    a0 = MADD(a0, w0, xv); a1 = MADD(a1, w1, xv); a2 = MADD(a2, w2, xv); a3 = MADD(a3, w3, xv);               \
    b0 = MADD(b0, w0, yv); b1 = MADD(b1, w1, yv); b2 = MADD(b2, w2, yv); b3 = MADD(b3, w3, yv);               \
  }                                                                                                           \
  sa = hsum4(a0, a1, a2, a3);                                                                                 \
  sb = hsum4(b0, b1, b2, b3);

#define FOURNIL_VNNI __attribute__((target("avx512f,avx512vl,avx512vnni")))

inline __m128i chunk4(const int8_t* r, const int8_t* next, const int16_t* xq, int64_t K, int64_t k0, int64_t k1) {
  FOURNIL_CHUNK4(FOURNIL_MADD_AVX2)
}
FOURNIL_VNNI __m128i chunk4_vnni(const int8_t* r, const int8_t* next, const int16_t* xq, int64_t K, int64_t k0,
                                 int64_t k1) {
  FOURNIL_CHUNK4(FOURNIL_MADD_VNNI)
}
inline void chunk4x2(const int8_t* r, const int8_t* next, const int16_t* xa, const int16_t* xb, int64_t K,
                     int64_t k0, int64_t k1, __m128i& sa, __m128i& sb) {
  FOURNIL_CHUNK4X2(FOURNIL_MADD_AVX2)
}
FOURNIL_VNNI void chunk4x2_vnni(const int8_t* r, const int8_t* next, const int16_t* xa, const int16_t* xb, int64_t K,
                                int64_t k0, int64_t k1, __m128i& sa, __m128i& sb) {
  FOURNIL_CHUNK4X2(FOURNIL_MADD_VNNI)
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
        a = FOURNIL_MADD_AVX2(a, widen(r + k), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k)));
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

}  // namespace

// What fournil's CPU kernels (the sources in this folder, built as one library by fournil/infer/kernels.py) share:
// the includes, the sizes they agree on, and the vector helpers they all use (a dot product, e^x).
//
// The helpers of these headers sit in an unnamed namespace: each source gets its own copy, and the compiler
// inlines them as freely as it would within one file (the inner loops are where a decode step spends its time).
// Every source registers its own operators in the `fournil` op namespace (TORCH_LIBRARY_FRAGMENT).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>  // not torch/extension.h: no Python bindings, and each source parses the headers again
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kRows = 4;            // weight rows per block: they share each load of the activations
constexpr int64_t kMaxRows = 32;        // more rows (a long prefill): dequantise and use torch's GEMM instead

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

// e^x for 8 floats (relative error < 2e-7 against expf; x below -86.9 gives 0, above 88.7 gives +inf): the
// fused step's silu and softmax take tens of thousands of exponentials a token, too many for libm's scalar expf
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

}  // namespace

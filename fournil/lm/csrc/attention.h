// Attention of one new query per head over a key/value cache, for decoding: the inner loop of
// fournil::decode_attention (attention.cpp) and of the fused decode step (decode_step.cpp).
//
// Shaped for a cache that the token's weights have pushed out to DRAM: the query heads that share one kv head
// (grouped-query attention) are scored together, so that each key is read once for all of them; eight positions'
// dot products are reduced at once; and a block's values are fetched while its keys are scored.
#pragma once

#include "common.h"

namespace {

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
  // (a store and a load per position saved, a share of attention that grows with the context)
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
// The keys of 8 positions are read once for all G heads and their 8 dot products reduced together; the values of
// a block are fetched while its keys are scored (see the file's header for why).
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

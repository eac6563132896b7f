// fournil's CPU decode kernels (x86-64 with AVX2), built on first use by fournil/infer/kernels.py.
//
// Why they exist: at batch 1 a decode step reads every weight once, so its speed is the memory bandwidth the
// matrix-vector products reach. Measured on a 2-core AMD EPYC (benchmarks/bench_infer.py): ATen's and
// inductor's int8 weight-only kernels read 7-12 GB/s from DRAM, a plain sum reads 23 GB/s. The two things
// that close the gap here are an integer inner product (int8 weights x int16 activations with vpmaddwd, no
// int8 -> float conversion per weight) and a software prefetch of the next block of rows: the hardware
// prefetcher does not follow four interleaved row streams on its own.
//
// fournil::int8_linear(x (M, K), qs [(N_i, K) int8], scales [(N_i,) float]) -> (M, sum N_i)
//   y[:, block i] = (x . q_iT) * scale_i, several matrices sharing one input in one pass (q/k/v, gate/up).
// fournil::decode_attention(q (B, H, D), k (B, Hkv, S, D), v, mask (B, S) bool, scale) -> (B, H, D)
//   one query per row over the cache positions whose mask is set (grouped-query heads share kv heads).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kRows = 4;            // rows per block: they share each load of the activations
constexpr float kLevels = 16383.f;      // activations -> int16 in [-2^14, 2^14]: an int32 lane holds
constexpr int64_t kChunk = 4096;        // 2 * kChunk/16 products of 127 * 2^14 without overflow
constexpr int64_t kMaxRows = 32;        // more rows (a long prefill): dequantise and use torch's GEMM instead

struct Matrix {                         // one weight matrix of a call and where its rows land in the output
  const int8_t* rows;
  const float* scale;
  int64_t out_col;
  int64_t n;
  int64_t first_block;
};

struct Block {                          // kRows (or fewer, at a matrix's end) consecutive weight rows
  const int8_t* rows;
  const float* scale;
  int64_t out_col;
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

// one block of rows against one quantised activation row; `next` is prefetched meanwhile
void block_dot(const Block& b, const int8_t* next, const int16_t* xq, int64_t K, float x_scale, float* out) {
  if (b.n == kRows) {
    const int8_t* r = b.rows;
    __m128 total = _mm_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t k1 = std::min(K, k0 + kChunk);
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = k0; k < k1; k += 16) {
        _mm_prefetch(reinterpret_cast<const char*>(next + kRows * k), _MM_HINT_T0);  // one line per step
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));
        a0 = _mm256_add_epi32(a0, dot16(r + k, xv));
        a1 = _mm256_add_epi32(a1, dot16(r + K + k, xv));
        a2 = _mm256_add_epi32(a2, dot16(r + 2 * K + k, xv));
        a3 = _mm256_add_epi32(a3, dot16(r + 3 * K + k, xv));
      }
      total = _mm_add_ps(total, _mm_cvtepi32_ps(hsum4(a0, a1, a2, a3)));
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

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, at::TensorList qs, at::TensorList scales) {
  TORCH_CHECK(!qs.empty() && qs.size() == scales.size(), "int8_linear: one scale vector per weight matrix");
  const int64_t K = x.size(-1);
  TORCH_CHECK(K % 16 == 0, "int8_linear: the input width must be a multiple of 16, got ", K);
  std::vector<at::Tensor> scale32;
  std::vector<Matrix> mats;  // blocks are numbered across the matrices; block b of the call = mats[i] block j
  int64_t N = 0, n_blocks = 0;
  for (size_t i = 0; i < qs.size(); ++i) {
    const at::Tensor& q = qs[i];
    TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous() && q.size(1) == K,
                "int8_linear: weights must be contiguous int8 (N, ", K, ")");
    TORCH_CHECK(scales[i].numel() == q.size(0), "int8_linear: scale ", i, " needs ", q.size(0), " entries");
    scale32.push_back(scales[i].to(at::kFloat).contiguous());
    mats.push_back({q.data_ptr<int8_t>(), scale32.back().data_ptr<float>(), N, q.size(0), n_blocks});
    N += q.size(0);
    n_blocks += (q.size(0) + kRows - 1) / kRows;
  }
  const auto block = [&](int64_t b) {
    size_t i = 0;
    while (i + 1 < mats.size() && mats[i + 1].first_block <= b) ++i;
    const Matrix& w = mats[i];
    const int64_t n = (b - w.first_block) * kRows;
    return Block{w.rows + n * K, w.scale + n, w.out_col + n, std::min(kRows, w.n - n)};
  };
  const at::Tensor xf = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = xf.size(0);
  TORCH_CHECK(M <= kMaxRows, "int8_linear: at most ", kMaxRows, " rows, got ", M);
  // activations -> int16, one absmax scale per row (15 bits: finer than bf16's 8-bit mantissa)
  at::Tensor xq = at::empty({M, K}, xf.options().dtype(at::kShort));
  std::vector<float> x_scale(M);
  const float* xp = xf.data_ptr<float>();
  int16_t* xqp = xq.data_ptr<int16_t>();
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xp[m * K + k]));
    x_scale[m] = amax > 0.f ? amax / kLevels : 1.f;
    const float inv = 1.f / x_scale[m];
    for (int64_t k = 0; k < K; ++k) xqp[m * K + k] = static_cast<int16_t>(std::nearbyint(xp[m * K + k] * inv));
  }
  at::Tensor out = at::empty({M, N}, xf.options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n_blocks, 16, [&](int64_t begin, int64_t end) {
    Block current = block(begin);
    for (int64_t b = begin; b < end; ++b) {
      const Block next = block(std::min(b + 1, n_blocks - 1));
      for (int64_t m = 0; m < M; ++m) {
        block_dot(current, next.rows, xqp + m * K, K, x_scale[m], op + m * N + current.out_col);
      }
      current = next;
    }
  });
  auto shape = x.sizes().vec();
  shape.back() = N;
  return out.to(x.scalar_type()).view(shape);
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.sizes() == k.sizes(), "decode_attention: q (B,H,D), k/v (B,Hkv,S,D)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && H % Hkv == 0, "decode_attention: shapes do not agree");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.numel() == B * S, "decode_attention: mask (B, S) bool");
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor kf = k.to(at::kFloat).contiguous(), vf = v.to(at::kFloat).contiguous();
  const at::Tensor mk = mask.reshape({B, S}).contiguous();
  at::Tensor out = at::zeros({B, H, D}, qf.options());
  const int64_t G = H / Hkv;
  const float* qp = qf.data_ptr<float>();
  const float* kp = kf.data_ptr<float>();
  const float* vp = vf.data_ptr<float>();
  const bool* mp = mk.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  // one thread unless there is real work: starting a second one costs more than a short cache's attention
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / (S * D * G));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> w(S);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hkv;
      const float* kb = kp + bh * S * D;
      const float* vb = vp + bh * S * D;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t head = (bh % Hkv) * G + g;
        const float* qh = qp + (b * H + head) * D;
        float top = -INFINITY;
        for (int64_t s = 0; s < S; ++s) {
          if (!mp[b * S + s]) continue;
          w[s] = dot(qh, kb + s * D, D) * static_cast<float>(scale);
          top = std::max(top, w[s]);
        }
        if (top == -INFINITY) continue;  // nothing to attend to: a zero row, as the caller never asks for it
        float total = 0.f;
        float* oh = op + (b * H + head) * D;
        for (int64_t s = 0; s < S; ++s) {
          if (!mp[b * S + s]) continue;
          const float e = std::exp(w[s] - top);
          total += e;
          for (int64_t d = 0; d < D; ++d) oh[d] += e * vb[s * D + d];
        }
        for (int64_t d = 0; d < D; ++d) oh[d] /= total;
      }
    }
  });
  return out.to(q.scalar_type());
}

TORCH_LIBRARY(fournil, m) {
  m.def("int8_linear(Tensor x, Tensor[] qs, Tensor[] scales) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fournil, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("decode_attention", &decode_attention);
}

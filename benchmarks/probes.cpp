// The memory-bandwidth bound's readers (benchmarks/bench_infer.py), built by that benchmark beside fournil's kernels.
//
// fournil_probes::read_bytes(x, row_bytes) -> int64: the sum of x's bytes (unsigned), read by at::get_num_threads()
//   threads either as one plain stream a thread (row_bytes 0) or as the int8 step reads its matrices (rows of
//   row_bytes, kRows at once, the same two prefetches: fournil/infer/csrc/matvec.h).
// Why: a bound is only a bound if its probe reads at least as fast as the step it judges, and torch.sum can read
// slower than the int8 step does; the benchmark takes the fastest of torch.sum, a plain streaming read and one with
// the step's own access pattern, minus its compute. Each sums bytes with vpsadbw (exact, one instruction a load),
// so that nothing can be skipped.
#include "matvec.h"

namespace {

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

}  // namespace

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

TORCH_LIBRARY(fournil_probes, m) {
  m.def("read_bytes(Tensor x, int row_bytes) -> int");
}

TORCH_LIBRARY_IMPL(fournil_probes, CPU, m) {
  m.impl("read_bytes", &read_bytes);
}

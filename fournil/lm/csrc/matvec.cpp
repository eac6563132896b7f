// fournil::int8_linear(x (M, K), qs [(N_i, K) int8], scales [(N_i,) float]) -> (M, sum N_i)
//   y[:, block i] = (x . q_iT) * scale_i: several matrices sharing one input in one pass (q/k/v, gate/up), for
//   the decode steps that run one operator at a time (fournil.infer.quantize.Int8Linear, fournil.infer.compiled).
// Each thread takes a fixed share of every matrix's row blocks (gemv_share); matvec.h holds the products.
#include "matvec.h"

namespace {

// thread t's share [first, last) of the row blocks of an n-row matrix (int8_linear's fixed split)
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int T) {
  const int64_t blocks = (n + kRows - 1) / kRows;
  return {blocks * t / T, blocks * (t + 1) / T};
}

// thread t's rows of w: the last block prefetches the thread's first block of `after`, so the memory stream
// runs on from one matrix into the next
void gemv_share(const Mat& w, const Mat* after, int t, int T, const int16_t* xq, const float* xs, const float* xf,
                int64_t M) {
  const auto [b0, b1] = share(w.n, t, T);
  const char* onward = after ? after->block(share(after->n, t, T).first) : w.block(0);
  for (int64_t b = b0; b < b1; ++b) block_rows(w, b, b + 1 < b1 ? w.block(b + 1) : onward, xq, xs, xf, M);
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

TORCH_LIBRARY_FRAGMENT(fournil, m) {
  m.def("int8_linear(Tensor x, Tensor[] qs, Tensor[] scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(fournil, CPU, m) {
  m.impl("int8_linear", &int8_linear);
}

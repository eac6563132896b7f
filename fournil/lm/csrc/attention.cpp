// fournil::decode_attention(q (B, H, D), k (B, Hkv, S, D), v, mask (B, S) bool, scale) -> (B, H, D)
//   one query per row over the cache positions whose mask is set (grouped-query heads share kv heads), for the
//   decode steps that run one operator at a time (fournil.infer.compiled). The work is split by kv head, so
//   that a group's keys and values are read by one thread (see attention.h).
#include "attention.h"

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

TORCH_LIBRARY_FRAGMENT(fournil, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fournil, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}

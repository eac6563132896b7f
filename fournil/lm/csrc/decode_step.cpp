// A whole decode step of a Llama in one call (used by fournil.infer.fused):
// fournil::decode_step(plan, ids, positions, rows, slots, mask, k_cache, v_cache, last_only) -> logits
//   M tokens (one per sequence of a batch, or up to 32 consecutive tokens of one prompt) through every layer of a
//   Llama whose int8 or float32 weights a DecodePlan holds.
// fournil::decode_token(plan, id, position, slot, mask, k_cache, v_cache, logits) -> argmax
//   batch 1's step, plain integers in and greedy decoding's pick out.
// fournil::argmax_rows(x (M, V) float32) -> (M,) int64: torch.argmax(x, -1), the same index on ties and NaN.
// Why one call: through separate operators each matrix product starts its threads and a cold memory stream on its
// own, and every tensor and operator call from Python costs time that a small model's token cannot spare (run_step
// below says how the token runs instead).
#include "attention.h"
#include "work_sharing.h"

namespace {

constexpr int64_t kAhead = 16384;       // bytes of its next stretch a thread fetches while waiting at a barrier

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
  // reads them from the tensors touches hundreds of tensor objects, which the token before has pushed out of every
  // cache with its weights; one contiguous table is a few cache lines
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

// One decode step of a Llama, whole, in one parallel region: the threads stay up for the whole token, share
// every matrix's row blocks (see Stretch in work_sharing.h), and meet at a barrier only where a result is needed
// whole (6 per layer). Each thread keeps its own copy of the residual stream and of the normalised (for int8,
// int16-quantised) activations, so that small work is done twice rather than waited for.
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
      // start of its next stretch into L2 meanwhile (kAhead bytes)
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
      // which then reads its keys and values once (attend_group)
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
// interpreter's memory out of the caches; this call needs none of them.
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

// each row's argmax_row; why: torch's is an order of magnitude slower on one long row of logits, enough to
// show in a fused decode step
at::Tensor argmax_rows(const at::Tensor& x) {
  check_float(x, "argmax input");
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0, "argmax_rows: (M, V) with V > 0");
  const int64_t M = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({M}, x.options().dtype(at::kLong));
  int64_t* index = out.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m) index[m] = argmax_row(x.data_ptr<float>() + m * V, V);
  return out;
}

TORCH_LIBRARY_FRAGMENT(fournil, m) {
  m.def("argmax_rows(Tensor x) -> Tensor");
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
  m.impl("argmax_rows", &argmax_rows);
  m.impl("decode_step", &decode_step);
  m.impl("decode_token", &decode_token);
}

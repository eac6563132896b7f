// How the fused decode step's threads share its matrix products (decode_step.cpp): the products between two
// barriers form one "stretch" of row-block items that the threads share by stealing; a spinning barrier lets the
// threads that wait fetch their next weights meanwhile; and "side" fetches bring the layer's keys and values
// into L2 between items, riding along with the weight stream instead of stalling on it before attention.
#pragma once

#include <sched.h>

#include <atomic>
#include <thread>

#include "matvec.h"

namespace {

// The products between two barriers of the fused step (q k v; o; gate and up; down; lm_head), as one list of
// row-block "items" that the threads share by stealing. Why: with a fixed split, whichever thread the memory
// system served less during a stretch arrived late at its barrier while the other waited.
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
// on whom the others wait, fetches nothing and lets them go at once (had every thread fetched before arriving, the
// last one's queued fetches would hold all of them up). Only for as many threads as CPUs to run them (`fits`):
// with more, a spinning thread holds a CPU that the one it waits for needs, and libgomp's barrier, which then
// sleeps, is used instead.
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

// Byte ranges that a thread fetches into L2 a few lines at a time between the items of a stretch. Why: attention
// reads the layer's keys and values from a cache that the token's weights have pushed out to DRAM; fetched in
// one go before the q k v products the thread stalls as long as attention would have waited, but between their
// items the fetches ride along with the weight stream.
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

// thread t's part of stretch s: its own items, then others' that are still waiting (ranges: one for each of the
// R threads asked for; one the runtime did not start is taken whole by the others). `onward` is prefetched
// after the thread's last own item: its first block of the next stretch. `side`, if given, is pumped once an item.
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

}  // namespace

// Synthesis wrapper of the on-chip sampler (tb/tb_sampler.cpp checks it in C simulation): one token of
// autonomous decode over SmolLM2-135M's vocabulary (49152 logits, pool of 64, 4 lanes, greedy tokens on 16, ring of
// 64 ids: an Alveo card's sampler_lanes and argmax_lanes) with the PRNG state and the ring of recent ids kept on chip
// between calls, as roma_core.cpp keeps them (run_hls_sampler.tcl reports its II, latency and resources).
#include <cstdint>

#include "roma/sampler.h"

namespace {
constexpr int V = 49152, K = 64, LANES = 4, N = 64, GLANES = 16;
} // namespace

extern "C" uint32_t roma_syn_sampler(const float logits[V], int greedy, float inv_temperature, int top_k,
                                     float top_p, float min_p, float penalty, float inv_penalty, int repeat_last_n,
                                     uint32_t seed_lo, uint32_t seed_hi) {
  static uint64_t rng = 0x9E3779B97F4A7C15ull;
  static roma::RecentIds<N> recent;
  if (seed_lo | seed_hi) {
    rng = ((uint64_t)seed_hi << 32) | seed_lo;
    recent.clear();
  }
  roma::SamplerParams prm;
  prm.greedy = greedy;
  prm.inv_temperature = inv_temperature;
  prm.top_k = top_k;
  prm.top_p = top_p;
  prm.min_p = min_p;
  prm.penalty = penalty;
  prm.inv_penalty = inv_penalty;
  prm.repeat_last_n = repeat_last_n;
  roma::SamplerCycles cyc;
  return roma::sampler_step<V, K, LANES, N, GLANES>(logits, prm, rng, recent, cyc);
}

// Self-checking testbench of the on-chip sampler (sampler.h) against the golden on-chip sampler.
//
//   tb_sampler DATA_DIR      (DATA_DIR written by gen_sampler.py from roma_runtime.golden.sampler)
//
// Checks, all exact (bit for bit; there is no tolerance anywhere in the sampler's contract):
//   exp.f32   exp_f32(z) against the golden fp32 bits (when the file is present);
//   prng.*    PRNG state sequences and uniforms from several seeds, including the replaced state 0;
//   cases     for every case in cases.txt: `steps` tokens of autonomous decode (sampler_step: the PRNG state
//             and the ring of recent ids carried from token to token, the ring seeded with the case's ids)
//             -> every token and every PRNG state after it must equal the golden ones. A token counts as one
//             mismatch when its id or the state after it differs.
// Each case runs twice, the second time with ARGMAX at four times the lanes (its greedy tokens by ARGMAX).
// Prints one line per shape with its cycle model and `tb_sampler: M mismatches of N` (N = compared tokens,
// exp values and PRNG steps); the exit code is min(M, 255).
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "roma/sampler.h"
#include "tb_common.h"

using namespace roma;

namespace {

using tb::file_items;
using tb::read_array;

struct Case {
  std::string name;
  int v, k, lanes, n, steps, greedy, top_k, repeat_last_n;
  uint32_t inv_t, top_p, min_p, pen, inv_pen;
  uint64_t state;
  int n_recent;
};

typedef tb::Tally Tally;

struct ShapeStats {
  long cases = 0, tokens = 0, mismatches = 0;
  uint64_t greedy_cycles = 0, sampled_cycles = 0;
};

template <int V, int K, int LANES, int N, int GLANES>
bool run_case(const Case &c, Tally &tally, std::map<std::string, ShapeStats> &stats, const std::string &shape) {
  typedef SamplerConfig<V, K, LANES, N, GLANES> C;
  const auto logits = read_array<float>(c.name + ".logits.f32", (size_t)c.steps * V);
  const auto recent_ids = read_array<uint32_t>(c.name + ".recent.u32", (size_t)c.n_recent);
  const auto tokens = read_array<uint32_t>(c.name + ".tokens.u32", (size_t)c.steps);
  const auto states = read_array<uint64_t>(c.name + ".states.u64", (size_t)c.steps);
  SamplerParams prm;
  prm.greedy = c.greedy;
  prm.inv_temperature = bits_to_float(c.inv_t);
  prm.top_k = c.top_k;
  prm.top_p = bits_to_float(c.top_p);
  prm.min_p = bits_to_float(c.min_p);
  prm.penalty = bits_to_float(c.pen);
  prm.inv_penalty = bits_to_float(c.inv_pen);
  prm.repeat_last_n = c.repeat_last_n;
  RecentIds<N> recent;
  for (uint32_t id : recent_ids) recent.push(id);
  uint64_t state = c.state;
  ShapeStats &st = stats[shape];
  ++st.cases;
  for (int t = 0; t < c.steps; ++t) {
    SamplerCycles cyc;
    const uint32_t tok = sampler_step<V, K, LANES, N, GLANES>(&logits[(size_t)t * V], prm, state, recent, cyc);
    const bool ok = tok == tokens[t] && state == states[t];
    tally.check(ok);
    ++st.tokens;
    if (!ok) {
      ++st.mismatches;
      if (tally.shown++ < 10)
        std::printf("  %s step %d: token %u state %016llx, golden token %u state %016llx\n", c.name.c_str(), t,
                    tok, (unsigned long long)state, tokens[t], (unsigned long long)states[t]);
    }
    (void)cyc;
  }
  st.greedy_cycles = C::GREEDY_CYCLES;
  st.sampled_cycles = C::SAMPLED_CYCLES;
  return true;
}

// A case of this shape, twice: greedy tokens by the lists (GLANES = LANES) and by ARGMAX at four times the lanes
// (roma_core's ARGMAX_LANES on a board with more logits banks than list lanes; the lanes past V take nothing).
template <int V, int K, int LANES, int N>
bool try_case(const Case &c, Tally &tally, std::map<std::string, ShapeStats> &stats, const std::string &shape) {
  if (c.v != V || c.k != K || c.lanes != LANES || c.n != N) return false;
  return run_case<V, K, LANES, N, LANES>(c, tally, stats, shape) &&
         run_case<V, K, LANES, N, 4 * LANES>(c, tally, stats, shape + " ARGMAX=" + std::to_string(4 * LANES));
}

// The shapes gen_sampler.py writes (SHAPES there); each needs its own template instance.
bool dispatch(const Case &c, Tally &tally, std::map<std::string, ShapeStats> &stats) {
  const std::string shape = "V=" + std::to_string(c.v) + " K=" + std::to_string(c.k) +
                            " LANES=" + std::to_string(c.lanes) + " N=" + std::to_string(c.n);
  return try_case<49152, 64, 4, 64>(c, tally, stats, shape) || try_case<1000, 16, 1, 8>(c, tally, stats, shape) ||
         try_case<24, 64, 2, 4>(c, tally, stats, shape) || try_case<257, 64, 1, 64>(c, tally, stats, shape);
}

void check_exp(Tally &tally) {
  const size_t n = file_items("exp.f32", 8);
  if (!n) return;
  const auto zp = read_array<float>("exp.f32", 2 * n);
  long bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const float e = exp_f32(zp[2 * i]);
    const bool ok = float_to_bits(e) == float_to_bits(zp[2 * i + 1]);
    tally.check(ok);
    if (!ok && bad++ < 5)
      std::printf("  exp_f32(%.9g) = %.9g, golden %.9g\n", zp[2 * i], e, zp[2 * i + 1]);
  }
  std::printf("  exp_f32: %ld mismatches of %zu\n", bad, n);
}

void check_prng(Tally &tally) {
  const size_t ns = file_items("prng.u64", 8), nu = file_items("prng.f32", 4);
  if (!ns || !nu) return;
  const size_t seeds = ns - nu, steps = seeds ? nu / seeds : 0; // states [seeds, steps+1], uniforms [seeds, steps]
  if (!seeds || seeds * (steps + 1) != ns) {
    tb::io_error("prng.u64 / prng.f32 sizes disagree");
    return;
  }
  const auto states = read_array<uint64_t>("prng.u64", ns);
  const auto us = read_array<float>("prng.f32", nu);
  long bad = 0;
  for (size_t s = 0; s < seeds; ++s) {
    uint64_t st = states[s * (steps + 1)];
    for (size_t t = 0; t < steps; ++t) {
      const float u = prng_next(st);
      const bool ok = st == states[s * (steps + 1) + t + 1] && float_to_bits(u) == float_to_bits(us[s * steps + t]);
      tally.check(ok);
      bad += !ok;
    }
  }
  std::printf("  prng (xorshift64*): %ld mismatches of %zu steps from %zu seeds\n", bad, seeds * steps, seeds);
}

bool parse_hex32(const std::string &s, uint32_t &out) {
  char *end = nullptr;
  const unsigned long v = std::strtoul(s.c_str(), &end, 16);
  out = (uint32_t)v;
  return end && *end == 0 && !s.empty();
}

} // namespace

int main(int argc, char **argv) {
  if (!tb::init("tb_sampler", argc, argv, "gen_sampler.py")) return 2;
  std::vector<std::string> lines;
  if (!tb::read_cases(lines)) return 2;
  Tally tally;
  check_exp(tally);
  check_prng(tally);
  std::map<std::string, ShapeStats> stats;
  int cases = 0;
  for (const std::string &line : lines) {
    std::istringstream in(line);
    Case c;
    std::string it, tp, mp, pe, ip, st;
    bool ok = static_cast<bool>(in >> c.name >> c.v >> c.k >> c.lanes >> c.n >> c.steps >> c.greedy >> c.top_k >>
                                c.repeat_last_n >> it >> tp >> mp >> pe >> ip >> st >> c.n_recent);
    ok = ok && parse_hex32(it, c.inv_t) && parse_hex32(tp, c.top_p) && parse_hex32(mp, c.min_p) &&
         parse_hex32(pe, c.pen) && parse_hex32(ip, c.inv_pen) && st.size() == 16;
    if (ok) c.state = std::strtoull(st.c_str(), nullptr, 16);
    if (!ok) {
      std::fprintf(stderr, "tb_sampler: bad line in cases.txt: %s\n", line.c_str());
      ++tally.mismatches;
      continue;
    }
    if (!dispatch(c, tally, stats)) {
      std::fprintf(stderr, "tb_sampler: %s: no kernel instance for V=%d K=%d LANES=%d N=%d in tb_sampler.cpp\n",
                   c.name.c_str(), c.v, c.k, c.lanes, c.n);
      ++tally.mismatches;
      continue;
    }
    ++cases;
  }
  for (const auto &kv : stats)
    std::printf("  %-30s %4ld cases %5ld tokens  mismatches %ld  cycles/token greedy %llu sampled %llu\n",
                kv.first.c_str(), kv.second.cases, kv.second.tokens, kv.second.mismatches,
                (unsigned long long)kv.second.greedy_cycles, (unsigned long long)kv.second.sampled_cycles);
  return tb::finish(tally.mismatches, tally.compared, " (" + std::to_string(cases) + " cases)");
}

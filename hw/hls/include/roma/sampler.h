// ROMA-FPGA on-chip sampler: turns the LM head's logits into a token without the host (autonomous decode).
//
// The executable spec is host/roma_runtime/golden/sampler.py (OnChipSamplerSpec); this kernel returns the
// identical token and PRNG state for identical inputs (compile with -ffp-contract=off, round-to-nearest).
// The hardware cannot sort V = 49,152 logits per token, so it samples in one streaming pass and a few short
// loops over a pool of K candidates:
//
//   STREAM  V/LANES iterations, II=1. Logit i gets the repetition penalty when i is one of the active recent
//           ids (N comparators against the ring buffer): l * inv_penalty if l > 0, else l * penalty. It is
//           then inserted into its lane's sorted register array of the K best (value desc, id asc): K
//           parallel comparisons, then every slot takes its own, its left neighbour's or the new entry.
//           The comparison uses an ordered 32-bit integer key of the fp32 value (sign-flipped bit pattern,
//           -0 folded into +0), so the loop-carried recurrence is an integer compare + mux (one cycle).
//   MERGE   (LANES-1)*POOL iterations, II=1: the other lanes' lists are inserted into lane 0's list.
//           The order is total (key desc, id asc), so the pool is the first POOL = min(K, V) entries of a
//           stable descending sort of the penalised logits, for every LANES. Greedy: token = pool[0].
//   PROBS   POOL iterations, II=1: p[j] = exp_f32((l[j] - lmax) * inv_temperature) for j < kk
//           (kk = top_k, or POOL when top_k is 0 or larger: with top-k off the pool IS the candidate set,
//           i.e. the chip behaves as top-k = K; tokens outside the K best are never sampled).
//   CUMSUM  POOL iterations at II = FADD_LATENCY: cum[j] = cum[j-1] + p[j], sequential fp32 (the order is
//           part of the contract, so no adder tree).
//   KEEP    POOL iterations, II=1: keep = min(kk, 1 + first j with cum[j] >= top_p*cum[kk-1],
//           first j with p[j] < min_p*p[0]), at least 1.
//   PICK    POOL iterations, II=1: r = u * cum[keep-1]; token = pool[#{j < keep-1 : cum[j] <= r}].
//
// PRNG: xorshift64* (shifts 12, 25, 27; multiplier 0x2545F4914F6CDD1D), a 64-bit state register seeded by
// the host; one draw per token in every mode (greedy too), u = (out >> 40) * 2^-24 in [0, 1). State 0 (a
// fixed point of xorshift) is replaced by 0x9E3779B97F4A7C15. The 64x64 multiply (low half) runs once per
// token, in parallel with STREAM, so it adds no cycles.
//
// exp_f32 (fexp.h) uses fp32 + and * only, so g++ and synthesized IEEE fp cores give the golden bits; hls::exp /
// std::exp would not (they differ from numpy in the last bit, which changes tokens). No <cmath> needed.
//
// Repetition penalty is on chip: a ring of the last N sampled ids (RecentIds<N>, pushed by sampler_step)
// and LANES*N id comparators in STREAM. The active window is the last min(count, repeat_last_n, N) ids.
//
// ARGMAX (greedy, where GLANES > LANES): the best logit only, GLANES a cycle (as many as g_logits' banks give,
//   roma_core's LOGITS_BANKS): V/GLANES iterations at II=1, each lane keeping one (key, id) with the penalty's ring
//   comparators, then GLANES - 1 merges. The same order (key desc, id asc), so the same token as pool[0], without
//   the lists' networks per lane: the greedy token at the logits' width where a list per lane would cost too much.
//
// Cycle model (SamplerConfig, shared by the pragmas and the cycle counters):
//   greedy:  STREAM_CYCLES + MERGE_CYCLES, or ARGMAX_CYCLES where GLANES > LANES
//   sampled: STREAM_CYCLES + MERGE_CYCLES + PROBS_CYCLES + CUMSUM_CYCLES + KEEP_CYCLES + PICK_CYCLES
//   e.g. V=49152, K=64, LANES=4: 12,295 + 194 + 148 + 258 + 69 + 69 = 13,033 cycles (43 us at 300 MHz);
//   STREAM dominates, so LANES sets the speed (it can also consume the LM head's outputs as they appear).
//
// Preconditions: logits finite or -inf (no NaN, no +inf), at least one finite; V < 2^32 - 1.
#ifndef ROMA_SAMPLER_H
#define ROMA_SAMPLER_H

#include <cstdint>
#include <type_traits>

#include "fexp.h"
#include "types.h"

namespace roma {

// The sampler's control registers (written by the host, roma_runtime.golden.sampler.OnChipParams).
struct SamplerParams {
  int greedy = 1;              // 1: temperature 0 (argmax, ties -> lowest id)
  float inv_temperature = 1.f; // 1 / temperature (fp32, computed on the host: no divider on chip)
  int top_k = 0;               // 0: off (= the pool of K)
  float top_p = 1.f;           // 1: off
  float min_p = 0.f;           // 0: off
  float penalty = 1.f;         // repetition penalty (1: off)
  float inv_penalty = 1.f;     // 1 / penalty
  int repeat_last_n = 64;      // penalty window (capped by the ring size N)
};

// The ring buffer of the last N sampled ids (on-chip registers).
template <int N>
struct RecentIds {
  static_assert(N >= 1, "the ring needs at least one entry");
  uint32_t id[N];
  int count = 0; // valid entries (<= N)
  int head = 0;  // next slot to write; the most recent id is at head - 1
  RecentIds() {
    for (int j = 0; j < N; ++j) id[j] = 0;
  }
  void clear() { count = head = 0; }
  void push(uint32_t token) {
    id[head] = token;
    head = (head + 1 == N) ? 0 : head + 1;
    if (count < N) ++count;
  }
};

// C-simulation cycle counters of the sampler stages.
struct SamplerCycles {
  uint64_t stream = 0; // STREAM (penalty + per-lane top-K insertion)
  uint64_t merge = 0;  // MERGE of the lanes' lists
  uint64_t probs = 0;  // PROBS + CUMSUM
  uint64_t select = 0; // KEEP + PICK
  uint64_t tokens = 0;
  uint64_t total() const { return stream + merge + probs + select; }
  void reset() { stream = merge = probs = select = tokens = 0; }
};

namespace sampler_detail {

constexpr uint64_t XS_MULTIPLIER = 0x2545F4914F6CDD1Dull;
constexpr uint64_t SEED_ZERO_REPLACEMENT = 0x9E3779B97F4A7C15ull;
// an empty list entry's id: above every id of the vocabulary (ties go to the lower id)
template <class Id>
constexpr Id invalid_id() {
  return (Id)~(Id)0;
}
constexpr uint32_t EMPTY_KEY = 0u; // below the key of every non-NaN float (-inf has key 0x007fffff)

constexpr float UNIFORM_SCALE = 5.9604644775390625e-8f; // 2^-24 (0x33800000)

// Ordered key: a > b (as fp32, non-NaN) <=> key(a) > key(b) (unsigned); -0 and +0 get the same key.
inline uint32_t order_key(float f) {
  uint32_t b = float_to_bits(f);
  if ((b & 0x7fffffffu) == 0) b = 0; // -0 -> +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

inline float key_to_float(uint32_t k) { return bits_to_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

// (ka, ia) comes before (kb, ib): larger value first, ties to the lower id.
inline bool before(uint32_t ka, uint32_t ia, uint32_t kb, uint32_t ib) { return ka > kb || (ka == kb && ia < ib); }

// Insert (k, i) into a sorted list of P entries (the insertion network: P comparisons and a shift).
template <int P, class Id>
inline void insert(uint32_t key[P], Id id[P], uint32_t k, Id i) {
  if (!before(k, i, key[P - 1], id[P - 1])) return; // not among the P best: nothing moves
  bool b[P];
  for (int j = 0; j < P; ++j) {
#pragma HLS UNROLL
    b[j] = before(k, i, key[j], id[j]);
  }
  for (int j = P - 1; j > 0; --j) {
#pragma HLS UNROLL
    if (b[j]) {
      key[j] = b[j - 1] ? key[j - 1] : k;
      id[j] = b[j - 1] ? id[j - 1] : i;
    }
  }
  if (b[0]) {
    key[0] = k;
    id[0] = i;
  }
}

} // namespace sampler_detail

// One PRNG step: advances the state, returns u in [0, 1) (24 random bits).
inline float prng_next(uint64_t &state) {
  uint64_t x = state ? state : sampler_detail::SEED_ZERO_REPLACEMENT;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  state = x;
  const uint64_t out = x * sampler_detail::XS_MULTIPLIER;
  return (float)(uint32_t)(out >> 40) * sampler_detail::UNIFORM_SCALE;
}

template <int V, int K, int LANES = 1, int N = 64, int GLANES = LANES>
struct SamplerConfig {
  static_assert(V >= 1 && K >= 1 && LANES >= 1 && N >= 1, "sampler dimensions must be positive");
  static_assert(V % LANES == 0, "LANES must divide V");
  static_assert(GLANES % LANES == 0, "ARGMAX's lanes are a multiple of STREAM's (g_logits' banks serve both)");
  static constexpr bool ARGMAX = GLANES > LANES;
  // the ids' width: 16 bits where the vocabulary and the empty entry's id fit (the lists' compares and muxes, the
  // ring's comparators)
  typedef typename std::conditional<(V < 0xffff), uint16_t, uint32_t>::type Id;
  static constexpr int ARGMAX_STEPS = (V + GLANES - 1) / GLANES; // the last row's lanes past V take nothing
  static constexpr int POOL = K < V ? K : V;
  static constexpr int STEPS = V / LANES;
  static constexpr int MERGE_ITERS = (LANES - 1) * POOL;
  static constexpr int CUM_II = timing::FADD_LATENCY; // sequential fp32 running sum
  // logit read, ring compare, penalty multiply, key + insertion
  static constexpr int STREAM_DEPTH = timing::ROM_LATENCY + 1 + timing::FMUL_LATENCY + 1;
  static constexpr int MERGE_DEPTH = LANES > 1 ? 2 : 0;
  // t = z*log2e, +0.5, floor (2), n*ln2 hi/lo (2 mul+add), Horner (7 mul+add), build 2^n, *2^n
  static constexpr int EXP_DEPTH = timing::FMUL_LATENCY + timing::FADD_LATENCY + 2 +
                                   2 * (timing::FMUL_LATENCY + timing::FADD_LATENCY) +
                                   7 * (timing::FMUL_LATENCY + timing::FADD_LATENCY) + 1 + timing::FMUL_LATENCY;
  static constexpr int PROBS_DEPTH = timing::FADD_LATENCY + timing::FMUL_LATENCY + EXP_DEPTH + 1;
  static constexpr uint64_t STREAM_CYCLES = (uint64_t)STEPS * timing::II + STREAM_DEPTH;
  static constexpr uint64_t MERGE_CYCLES = (uint64_t)MERGE_ITERS * timing::II + MERGE_DEPTH;
  static constexpr uint64_t PROBS_CYCLES = (uint64_t)POOL * timing::II + PROBS_DEPTH;
  static constexpr uint64_t CUMSUM_CYCLES = (uint64_t)POOL * CUM_II + 2;
  static constexpr uint64_t KEEP_CYCLES = timing::FMUL_LATENCY + (uint64_t)POOL * timing::II + 2;
  static constexpr uint64_t PICK_CYCLES = timing::FMUL_LATENCY + (uint64_t)POOL * timing::II + 2;
  static constexpr uint64_t ARGMAX_STREAM_CYCLES = (uint64_t)ARGMAX_STEPS * timing::II + STREAM_DEPTH;
  static constexpr uint64_t ARGMAX_MERGE_CYCLES = (uint64_t)(GLANES - 1) * timing::II + MERGE_DEPTH;
  static constexpr uint64_t GREEDY_CYCLES =
      ARGMAX ? ARGMAX_STREAM_CYCLES + ARGMAX_MERGE_CYCLES : STREAM_CYCLES + MERGE_CYCLES;
  static constexpr uint64_t SAMPLED_CYCLES =
      STREAM_CYCLES + MERGE_CYCLES + PROBS_CYCLES + CUMSUM_CYCLES + KEEP_CYCLES + PICK_CYCLES;
};

// The penalised logit of id i: l * inv_penalty if l > 0, else l * penalty, where i is among the active recent ids
// (N comparators; one multiplier, its factor chosen first).
template <int N, class Id>
inline float penalised(float l, Id i, const Id ring[N], const bool act[N], const SamplerParams &prm) {
  bool seen = false;
  for (int j = 0; j < N; ++j) {
#pragma HLS UNROLL
    seen = seen || (act[j] && ring[j] == i);
  }
  return seen ? l * (l > 0.0f ? prm.inv_penalty : prm.penalty) : l;
}

// ARGMAX: the greedy token, GLANES logits a cycle (see the top of the file).
template <int V, int N, int GLANES, class Id>
uint32_t argmax_token(const float logits[V], const SamplerParams &prm, const Id ring[N], const bool act[N]) {
  using namespace sampler_detail;
  uint32_t best_key[GLANES];
  Id best_id[GLANES];
#pragma HLS ARRAY_PARTITION variable = best_key type = complete
#pragma HLS ARRAY_PARTITION variable = best_id type = complete
  for (int ln = 0; ln < GLANES; ++ln) {
#pragma HLS UNROLL
    best_key[ln] = EMPTY_KEY;
    best_id[ln] = invalid_id<Id>();
  }
ARGMAX:
  for (int s = 0; s < (V + GLANES - 1) / GLANES; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int ln = 0; ln < GLANES; ++ln) {
#pragma HLS UNROLL
      const int i = s * GLANES + ln;
      if (i < V) {
        const uint32_t k = order_key(penalised<N, Id>(logits[i], (Id)i, ring, act, prm));
        if (before(k, i, best_key[ln], best_id[ln])) {
          best_key[ln] = k;
          best_id[ln] = (Id)i;
        }
      }
    }
  }
ARGMAX_MERGE:
  for (int ln = 1; ln < GLANES; ++ln) {
#pragma HLS PIPELINE II = timing::II
    if (before(best_key[ln], best_id[ln], best_key[0], best_id[0])) {
      best_key[0] = best_key[ln];
      best_id[0] = best_id[ln];
    }
  }
  return best_id[0];
}

// One token: the logits of one position -> token id. rng_state advances by one draw. `recent` is read only.
template <int V, int K, int LANES = 1, int N = 64, int GLANES = LANES>
uint32_t sampler_sample(const float logits[V], const SamplerParams &prm, uint64_t &rng_state,
                        const RecentIds<N> &recent, SamplerCycles &cyc) {
  using namespace sampler_detail;
  typedef SamplerConfig<V, K, LANES, N, GLANES> C;
  typedef typename C::Id Id;
  constexpr int POOL = C::POOL;
  constexpr int CUM_II = C::CUM_II; // used by the PIPELINE pragma
  (void)CUM_II;
#pragma HLS ARRAY_PARTITION variable = logits type = cyclic factor = GLANES dim = 1

  // The draw does not depend on the logits: in hardware it runs in parallel with STREAM.
  const float u = prng_next(rng_state);

  // Active ring entries: the last min(count, repeat_last_n, N) ids.
  int nact = recent.count < prm.repeat_last_n ? recent.count : prm.repeat_last_n;
  if (nact < 0) nact = 0;
  Id ring[N];
  bool act[N];
#pragma HLS ARRAY_PARTITION variable = ring type = complete
#pragma HLS ARRAY_PARTITION variable = act type = complete
  for (int j = 0; j < N; ++j) {
#pragma HLS UNROLL
    const int age = (recent.head - 1 - j + 2 * N) % N; // 0 = the most recent id
    ring[j] = (Id)recent.id[j];
    act[j] = age < nact;
  }

  if (C::ARGMAX && prm.greedy) {
    cyc.stream += C::ARGMAX_STREAM_CYCLES;
    cyc.merge += C::ARGMAX_MERGE_CYCLES;
    ++cyc.tokens;
    return argmax_token<V, N, GLANES, Id>(logits, prm, ring, act);
  }

  uint32_t key[LANES][POOL];
  Id id[LANES][POOL];
#pragma HLS ARRAY_PARTITION variable = key type = complete dim = 0
#pragma HLS ARRAY_PARTITION variable = id type = complete dim = 0
  for (int ln = 0; ln < LANES; ++ln) {
#pragma HLS UNROLL
    for (int j = 0; j < POOL; ++j) {
#pragma HLS UNROLL
      key[ln][j] = EMPTY_KEY;
      id[ln][j] = invalid_id<Id>();
    }
  }

STREAM:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int ln = 0; ln < LANES; ++ln) {
#pragma HLS UNROLL
      const Id i = (Id)(s * LANES + ln);
      insert<POOL, Id>(key[ln], id[ln], order_key(penalised<N, Id>(logits[i], i, ring, act, prm)), i);
    }
  }

MERGE:
  for (int m = 0; m < C::MERGE_ITERS; ++m) {
#pragma HLS PIPELINE II = timing::II
    const int ln = 1 + m / POOL, j = m % POOL;
    insert<POOL, Id>(key[0], id[0], key[ln][j], id[ln][j]);
  }

  cyc.stream += C::STREAM_CYCLES;
  cyc.merge += C::MERGE_CYCLES;
  ++cyc.tokens;
  if (prm.greedy) return id[0][0];

  const int kk = (prm.top_k <= 0 || prm.top_k > POOL) ? POOL : prm.top_k;
  const float lmax = key_to_float(key[0][0]);
  float p[POOL], cum[POOL];
#pragma HLS ARRAY_PARTITION variable = p type = complete
#pragma HLS ARRAY_PARTITION variable = cum type = complete

PROBS:
  for (int j = 0; j < POOL; ++j) {
#pragma HLS PIPELINE II = timing::II
    const float z = (key_to_float(key[0][j]) - lmax) * prm.inv_temperature;
    p[j] = j < kk ? exp_f32(z) : 0.0f;
  }

  float acc = 0.0f;
CUMSUM:
  for (int j = 0; j < POOL; ++j) {
#pragma HLS PIPELINE II = CUM_II
    if (j < kk) acc = acc + p[j];
    cum[j] = acc;
  }

  const float thr_p = prm.top_p * cum[kk - 1];
  const float thr_m = prm.min_p * p[0];
  int keep_p = kk, keep_m = kk;
  bool found_p = false, found_m = false;
KEEP:
  for (int j = 0; j < POOL; ++j) {
#pragma HLS PIPELINE II = timing::II
    if (j < kk) {
      if (!found_p && cum[j] >= thr_p) {
        keep_p = j + 1;
        found_p = true;
      }
      if (!found_m && p[j] < thr_m) {
        keep_m = j;
        found_m = true;
      }
    }
  }
  int keep = keep_p < keep_m ? keep_p : keep_m;
  if (keep < 1) keep = 1;

  const float r = u * cum[keep - 1];
  int idx = 0;
PICK:
  for (int j = 0; j < POOL; ++j) {
#pragma HLS PIPELINE II = timing::II
    if (j < keep - 1 && cum[j] <= r) ++idx;
  }

  cyc.probs += C::PROBS_CYCLES + C::CUMSUM_CYCLES;
  cyc.select += C::KEEP_CYCLES + C::PICK_CYCLES;
  return id[0][idx];
}

// Autonomous decode: sample one token and push it into the ring (state carried to the next token).
template <int V, int K, int LANES = 1, int N = 64, int GLANES = LANES>
uint32_t sampler_step(const float logits[V], const SamplerParams &prm, uint64_t &rng_state, RecentIds<N> &recent,
                      SamplerCycles &cyc) {
  const uint32_t token = sampler_sample<V, K, LANES, N, GLANES>(logits, prm, rng_state, recent, cyc);
  recent.push(token);
  return token;
}

} // namespace roma

#endif // ROMA_SAMPLER_H

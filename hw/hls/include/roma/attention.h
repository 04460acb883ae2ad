// ROMA-FPGA attention over a KV cache: grouped-query heads, causal, fp16 KV, fp32 arithmetic.
//
// Semantics (roma_runtime.golden.model.GoldenModel.forward, one layer):
//   the new tokens' K (after RoPE) and V are rounded to fp16 (round to nearest even, float_to_half: bit-exact
//   with numpy's astype(float16)) and written to cache rows start..start+T-1; then for the query at position
//   p, with kv head kh = h / GROUP (GROUP = HEADS / KV_HEADS) and keys s = 0..p (causal):
//     score[h,s] = (sum_d q[h,d] * k[s,kh,d]) * scale,   scale = fp32(1/sqrt(HD))
//     e[h,s] = exp(score[h,s] - max_s score[h,s]),  l[h] = sum_s e[h,s]
//     out[h,d] = (sum_s e[h,s] * v[s,kh,d]) / l[h]
//   The golden divides the probabilities first (p = e/l, then p @ V); dividing the HD outputs once instead of
//   every probability is cheaper and only changes rounding (covered by the testbench bound).
//
// Cache layout (one layer, the golden's [position, kv_head, head_dim]): ROW = KV_HEADS*HD fp16 bit patterns
// (uint16) per position, row p at k_cache[p*ROW]. PLACE selects where the cache that attention reads lives:
//   KvPlace::Ddr    (default) DDR buffers the host allocates (KV manager), reached through m_axi pointer
//                   arguments of the top; each pass reads the rows 0..p as ONE sequential burst (S*ROW*2 bytes).
//   KvPlace::OnChip short contexts: the top owns `half_bits_t kv[LAYERS][2][CTX*ROW]` (URAM/BRAM, ARRAY_RESHAPE
//                   cyclic factor=SIMD: one SIMD-wide word per cycle) and passes the layer's slices; attention
//                   reads only them (RAM latency, no burst). The host's DDR rows stay the source of truth: kv_write
//                   writes each new row to both (write-through, the same loop: k_ddr/v_ddr), and kv_load copies
//                   rows of the DDR buffer into the on-chip ones (the top's CMD_KV_LOAD) when the host switches
//                   buffers or changed their rows. tb_kernels checks both places against the golden.
// The compute is the same code; PLACE changes the memory latency in the cycle model (and the top's pragmas).
// KV ports (PORTS, the build's KV_PORTS; Ddr only): a DDR cache split over two memory ports (an Alveo card's two DDR
// banks) so that their bandwidths add up. A row's SIMD-wide chunk c is PORTS runs of PORT_LANES = SIMD / PORTS
// elements, run p in port p's buffer (k_cache, k_cache1) at p's row offset c * PORT_LANES: each port holds
// PORT_ROW = ROW / PORTS elements of every row, the runs of the row interleaved over the ports, and a pass reads
// each port as one sequential burst. The arithmetic and its order do not change with the ports (lane l of a
// chunk holds the same element as with one port of SIMD lanes); the host splits and joins rows the same way
// (roma_runtime.artifact.kv_layout).
// KV sets (SETS, the build's KV_SETS; Ddr only): with four KV ports (a U250's four DDR banks) the positions alternate
// between two sets of PORTS ports: position s's row in set s % 2 (k_cache, k_cache1 or k_cache2, k_cache3) at row
// s / 2, so each set's rows are one sequential burst. A pass reads set 0's rows, then set 1's, a chunk a cycle as
// before; decode's query (a block of one on the token lanes' datapaths, attention_lanes' split) reads both sets at
// once, lane t over set t's rows, in half the cycles, and the lanes' maxima are merged before PV. PV's partial sums
// double (PV_PARTIALS is a multiple of SETS): position s still adds into partial s mod P, each partial's positions
// lie in one set and come in order, so the split changes no bit (tb_brom_tile checks split, unsplit and the fast
// path against one another); against one set only the partials' grouping differs. PV_SETS keeps the partials of
// the board's DDR sets in an instance of one set (roma_core's on-chip cache), so that both places give the same bits.
//
// Softmax: two passes over the cache (not online/streaming): pass 1 streams K and writes all scores of the
// query to an on-chip buffer score[HEADS][MAX_CTX] with a running max; pass 2 streams V and computes each
// probability where it is used (e = exp(score - max), summed into l[h] and multiplied into acc). Why: the online
// form rescales the HD accumulators by exp(m_old - m_new) at every new max, a loop-carried chain (compare, sub,
// exp, mul, add ~ 30 cycles) that would bound the II per position, and it adds rescale roundings; two passes
// read K once and V once (the same DDR traffic), keep every loop at II=1 and follow the golden's order. Cost:
// the score buffer (HEADS*MAX_CTX fp32: 9*8192*4 = 288 KB for SmolLM2 at full context; 36 KB at 1K; MAX_CTX is
// the build's CONTEXT, `roma compile --context N`). GQA: the GROUP query heads of a kv head are processed
// together, so each K/V element fetched is used GROUP times (the cache is read once per query, not once per head).
//
// Speed: the two passes are the only loops that grow with S, and each moves one SIMD-wide word of the cache per
// cycle, SIMD = the KV ports' width in fp16 lanes (roma_core's ATT_SIMD: KV_PORTS x roma_model.h's KV_PORT_BITS / 16,
// the board's kv_ports and kv_port_bits, e.g. one 128-bit HP port on Zynq UltraScale+, two 512-bit DDR ports on a
// U250; halved until it divides HD). So a query costs 2*S*ROW*2 bytes / port bytes per cycle plus pipeline depths, the port's bound
// (K and V share the port, and pass 2 needs pass 1's max); PV's partial sums (below) keep it at II=1 where a row is
// fewer than FADD_LATENCY chunks. The exps add no loop: GROUP exp units in PV (one per query head of the kv head
// the chunk belongs to; each head's e is recomputed in each of its CHD chunks rather than handed over, which would
// be a loop-carried dependence shorter than the exp's latency). A separate exp loop would cost S*HEADS cycles at one
// exp per cycle (S*KV_HEADS with GROUP lanes; S with HEADS lanes, but then l[h] is an fp32 accumulation revisited
// every iteration). Numerics do not depend on where the exps run (l[h] and acc sum s = 0, 1, ... in order) nor, for
// power-of-two SIMD and HD, on SIMD (SCORE's two trees are then one pairwise tree over HD), except through PV's
// partial sums: where a row is fewer than FADD_LATENCY chunks (CH = ROW / SIMD; SmolLM2 over two 512-bit KV ports:
// 3), l[h] and acc keep P = PV_PARTIALS (2 or 4) partial sums, position s in partial s mod P (each in order), added
// by a pairwise tree in FINAL, so the accumulators come back every CH * P iterations and PV runs at II=1. Every
// other build (CH >= FADD_LATENCY: one partial) sums in order; the golden's einsum sums in its own order, and both
// are within the testbenches' float bound.
//
// Loops (SIMD fp16 elements of a row per cycle, i.e. SIMD*16 bits of the m_axi port):
//   WRITE: CH = ROW/SIMD iterations per new token, a chunk's rows in one loop per KV set (convert + store; OnChip:
//          both places)                                                                     II=1
//   LOAD:  n*CH iterations per layer and K/V (kv_load, OnChip: DDR rows -> on chip)         II=1
//   QLOAD: HEADS*HD/SIMD (query to partitioned registers)                                  II=1
//   SCORE: S*CH iterations: SIMD fp16 of a K row, GROUP*SIMD products, lane adder tree;
//          the HD/SIMD chunk sums of a head are kept in registers and added by a tree at the head's
//          last chunk (no fp32 loop-carried accumulation); running max per head               II=1
//   PV:    S*CH iterations: SIMD fp16 of a V row, GROUP exps (score RAM: cyclic GROUP banks, one read each),
//          GROUP*SIMD MACs; a partial of acc[h][d] and (at a head's first chunk) l[h] revisited every CH * P
//          iterations                                                                       II=acc_ii(CH * P) = 1
//   FINAL: HEADS*HD/SIMD iterations, the P partials' adder trees and SIMD dividers          II=1
// A decode query at S keys thus costs 2*S*CH + 2*HEADS*HD/SIMD cycles plus the depths (AttentionConfig::
// query_cycles); SmolLM2-135M (ROW = 192) at S = 256: 12288 + 144 on a 128-bit port, 3072 + 36 on a 512-bit one,
// 1536 + 18 on two (CH = 3: PV's two partial sums keep it at II=1; in one it ran at II 2: 768 + 1536 + 18), and a
// decode query 768 + 18 on four (two KV sets, split over two lanes; a prefill block's passes still 1536).
// A prefill chunk of T tokens writes T rows, then runs the query loops once per block of QT queries (token lanes,
// attention_lanes: the block's last query's keys, each row chunk read feeding every lane; query i uses keys
// 0..start+i), so a chunk costs about T / QT passes over the keys instead of T.
// A decode query's keys may be scored over two calls (AttentionSteps): the cached keys while its own k and v are being
// computed, then its own key, written in between, and the finish; the second call loads the query and fills the score
// pass's pipeline again (AttentionConfig::RESCORE_CYCLES), which the overlap must repay (roma_core's scores_beside_kv).
// The emulated board's query (AVX-512, bit-identical: tb_brom_tile checks it) is in csim/attention.h.
#ifndef ROMA_ATTENTION_H
#define ROMA_ATTENTION_H

#include <cmath>
#include <cstdint>

#include "fexp.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

enum class KvPlace : int { Ddr = 0, OnChip = 1 };

// What one call of attention_lanes does besides loading the block's queries and scoring the keys it is given: start
// their maxima (the first call of a block) and finish (softmax, P x V over all the keys, the outputs: the last). A
// block's keys may be scored over several calls: the scores and their maxima do not depend on the order in which the
// keys come, so the outputs are those of one call (decode scores the cached keys beside the token's k and v GEMVs,
// then its own key: roma_core's token_qkv).
enum AttentionSteps : int { ATT_START = 1, ATT_FINISH = 2, ATT_ALL = ATT_START | ATT_FINISH };

// fp32(1/sqrt(n)) rounded like numpy's np.float32(1.0 / np.sqrt(n)) (double sqrt and divide, then fp32);
// constexpr so synthesis sees a constant. Newton in double converges to within an ulp of double, far below
// fp32 resolution (the testbench checks the value against the golden model's).
constexpr double constexpr_sqrt_newton(double x, double cur, int it) {
  return it == 0 ? cur : constexpr_sqrt_newton(x, 0.5 * (cur + x / cur), it - 1);
}
template <int HD>
constexpr float attention_scale() {
  return (float)(1.0 / constexpr_sqrt_newton((double)HD, (double)HD, 60));
}

template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int PORTS = 1,
          int SETS = 1, int PV_SETS = SETS>
struct AttentionConfig {
  static_assert(HEADS % KV_HEADS == 0, "HEADS must be a multiple of KV_HEADS");
  static_assert(HD % SIMD == 0, "SIMD must divide head_dim");
  static_assert(PORTS == 1 || (PORTS == MAX_KV_PORTS && PLACE == KvPlace::Ddr && SIMD % PORTS == 0),
                "a DDR cache over one or MAX_KV_PORTS ports, each carrying SIMD / PORTS lanes");
  static_assert(SETS == 1 || (SETS == MAX_KV_SETS && PLACE == KvPlace::Ddr),
                "a DDR cache's positions in one or MAX_KV_SETS sets of ports");
  static_assert(PV_SETS % SETS == 0 && PV_SETS <= MAX_KV_SETS, "PV's partial sums for at least the cache's sets");
  static constexpr int GROUP = HEADS / KV_HEADS;
  static constexpr int ROW = KV_HEADS * HD; // fp16 elements per cache row (one position)
  static constexpr int PORT_LANES = SIMD / PORTS; // the fp16 lanes one port carries: the rows' unit of interleave
  static constexpr int PORT_ROW = ROW / PORTS;    // fp16 elements of a row in one port's buffer
  static constexpr int CHD = HD / SIMD;     // chunks per head
  static constexpr int CH = ROW / SIMD;     // chunks per cache row
  static constexpr int MEM_READ_LATENCY =
      PLACE == KvPlace::Ddr ? timing::AXI_READ_LATENCY : timing::RAM_LATENCY;
  // OnChip writes through to DDR in the same loop, so a row write ends with the DDR write response either way
  static constexpr int MEM_WRITE_LATENCY = timing::AXI_WRITE_LATENCY;
  static constexpr int SCORE_II = timing::II;
  // PV's partial sums: a position's accumulators come back every CH iterations, under the fp32 adder's latency when
  // a row is fewer than FADD_LATENCY chunks (two 512-bit KV ports: CH = 3), so positions s = p mod PV_PARTIALS go to
  // partial p, added at the end (HLS_RULES.md: interleaved partial sums); else one, in order
  // (with SETS sets, SETS times as many: a set's positions take every SETS-th partial, so each set's lane keeps the
  // distance, and the decode split's two lanes sum exactly the partials one lane would: see KV sets; PV_SETS, the
  // sets of the board's DDR cache, where an on-chip cache of one set should sum as the DDR one does, bit for bit)
  static constexpr int PV_PARTIALS =
      PV_SETS * (CH >= timing::FADD_LATENCY ? 1 : CH * 2 >= timing::FADD_LATENCY ? 2 : 4);
  static constexpr int PV_II = timing::acc_ii(CH * PV_PARTIALS / SETS);
  // KV sets: the rows of S keys in set r (positions r, r + SETS, ...), and whether a block of n queries on QT lanes
  // splits them (decode: one query, lane t over set t's rows, both sets at once)
  static constexpr int set_rows(int S, int r) { return (S - r + SETS - 1) / SETS; }
  static constexpr int LAST_SET = SETS - 1; // set 1 with two sets
  static constexpr bool split(int n, int qt) { return SETS == MAX_KV_SETS && n == 1 && qt >= SETS; }
  static constexpr int WRITE_DEPTH = 2 + 1 /* fp16 rounding */ + MEM_WRITE_LATENCY;
  static constexpr int QLOAD_DEPTH = 2;
  static constexpr int SCORE_DEPTH = MEM_READ_LATENCY + 1 /* fp16 decode */ + timing::FMUL_LATENCY +
                                     timing::ceil_log2(SIMD) * timing::FADD_LATENCY +
                                     timing::ceil_log2(CHD) * timing::FADD_LATENCY + timing::FMUL_LATENCY +
                                     timing::FCMP_LATENCY + 1;
  // PV: the V row (memory latency, fp16 decode) and p = exp(score - max) (score RAM read, sub, exp) in parallel,
  // then p*v and the add into acc (l[h]'s add runs beside them)
  static constexpr int PV_V_DEPTH = MEM_READ_LATENCY + 1;
  static constexpr int PV_P_DEPTH = timing::RAM_LATENCY + timing::FADD_LATENCY + timing::FEXP_LATENCY;
  static constexpr int PV_DEPTH =
      (PV_V_DEPTH > PV_P_DEPTH ? PV_V_DEPTH : PV_P_DEPTH) + timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  static constexpr int FINAL_DEPTH =
      2 + timing::ceil_log2(PV_PARTIALS) * timing::FADD_LATENCY + timing::FDIV_LATENCY + 1;
  static constexpr int LOAD_DEPTH = timing::AXI_READ_LATENCY + 1 /* RAM write */;
  static constexpr uint64_t WRITE_CYCLES = (uint64_t)CH * timing::II + WRITE_DEPTH; // per new token alone
  // T new rows from position start: each set's rows in one pipelined loop (kv_write_rows)
  static constexpr uint64_t set_write_cycles(int start, int T, int r) {
    return set_rows(start + T, r) > set_rows(start, r)
               ? (uint64_t)(set_rows(start + T, r) - set_rows(start, r)) * CH * timing::II + WRITE_DEPTH
               : 0;
  }
  static constexpr uint64_t write_cycles(int start, int T) {
    return set_write_cycles(start, T, 0) + (SETS > 1 ? set_write_cycles(start, T, SETS - 1) : 0);
  }
  // kv_load of n rows of one cache (K or V of a layer): n*ROW*2 bytes at SIMD*2 bytes per cycle, one burst.
  static constexpr uint64_t load_cycles(int n) { return (uint64_t)n * CH * timing::II + LOAD_DEPTH; }
  // A block's score pass over keys [from, to) (decode's split: both sets' rows at once, j from set 1's first to set
  // 0's last), the block's n queries loaded first.
  static constexpr int score_rows(int from, int to, int n, int qt) {
    return split(n, qt) ? set_rows(to, 0) - set_rows(from, LAST_SET) : to - from;
  }
  static constexpr uint64_t score_cycles(int from, int to, int n, int qt) {
    return (uint64_t)(n * HEADS * CHD) * timing::II + QLOAD_DEPTH +
           (score_rows(from, to, n, qt) > 0
                ? (uint64_t)score_rows(from, to, n, qt) * CH * SCORE_II + SCORE_DEPTH
                : 0);
  }
  // what a block's second score call adds at most beyond one call: the queries loaded again, the pipeline filled
  // again, and (decode's split over two KV sets) a row pair of its own for a key in set 1
  static constexpr uint64_t RESCORE_CYCLES = (uint64_t)HEADS * CHD * timing::II + QLOAD_DEPTH + SCORE_DEPTH +
                                             (SETS > 1 ? (uint64_t)CH * SCORE_II : 0);
  // ... and its finish over all S keys: the lanes' maxima merged (split), P x V, the outputs one query after another.
  static constexpr uint64_t finish_cycles(int S, int n, int qt) {
    return (split(n, qt) ? timing::FCMP_LATENCY : 0) +
           (uint64_t)(split(n, qt) ? set_rows(S, 0) : S) * CH * PV_II + PV_DEPTH +
           (uint64_t)(n * HEADS * CHD) * timing::II + FINAL_DEPTH;
  }
  // A block of n queries whose last attends to S keys, on qt token lanes (the passes over the keys once for the
  // block, the queries loaded and finished one after another; decode's split: one pass over set 0's rows, both sets
  // at once, then the two lanes' maxima merged); one query over S keys on one lane.
  static constexpr uint64_t block_cycles(int S, int n, int qt = 1) {
    return score_cycles(0, S, n, qt) + finish_cycles(S, n, qt);
  }
  static constexpr uint64_t query_cycles(int S) { return block_cycles(S, 1); }
};

namespace detail {
// Balanced pairwise tree over N values (unrolled adder tree), in place.
template <int N>
inline float tree_sum(float v[N]) {
#pragma HLS INLINE
  for (int width = N; width > 1; width = (width + 1) / 2) {
#pragma HLS UNROLL
    for (int i = 0; i < width / 2; ++i) {
#pragma HLS UNROLL
      v[i] = v[2 * i] + v[2 * i + 1];
    }
    if (width % 2) v[width / 2] = v[width - 1];
  }
  return v[0];
}

// Chunk c of row j of each KV set's ports (K or V: p0, p1 set 0's ports, p2, p3 set 1's), widened to fp32: set r is
// read when the pass reads it (`set`) or both are (`split`), each through its own ports, else 0 (no access).
template <int SETS, int SIMD, int PL, int PROW>
inline void read_sets(const half_bits_t *p0, const half_bits_t *p1, const half_bits_t *p2, const half_bits_t *p3,
                      bool split, int set, int j, int c, float out[SETS][SIMD]) {
#pragma HLS INLINE
  for (int r = 0; r < SETS; ++r) {
#pragma HLS UNROLL
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      const half_bits_t *port = r == 0 ? (l / PL == 0 ? p0 : p1) : (l / PL == 0 ? p2 : p3);
      out[r][l] = split || r == set ? half_to_float(port[(size_t)j * PROW + c * PL + l % PL]) : 0.0f;
    }
  }
}

// A pass over the keys [from, to): set r's rows [from_r, to_r) (AttentionConfig::set_rows), set 0's and then set 1's,
// or (split) both sets' row j at once, j over [from_1, to_0). The cursor: the set being read (unsplit), its row j and
// the chunk c of the row.
struct KeyPass {
  int set, j, end, c, from1, to1;
  KeyPass(bool split, int from0, int to0, int from1_, int to1_)
      : set(split || from0 < to0 ? 0 : 1), j(split || from0 >= to0 ? from1_ : from0),
        end(split || from0 < to0 ? to0 : to1_), c(0), from1(from1_), to1(to1_) {}
  void next(int CH) { // the next chunk, row, or set 1's first row
#pragma HLS INLINE
    if (++c == CH) {
      c = 0;
      if (++j == end) {
        set = 1;
        j = from1;
        end = to1;
      }
    }
  }
};
template <class C>
inline KeyPass key_pass(bool split, int from, int to) {
#pragma HLS INLINE
  return KeyPass(split, C::set_rows(from, 0), C::set_rows(to, 0), C::set_rows(from, C::LAST_SET),
                 C::set_rows(to, C::LAST_SET));
}
} // namespace detail

// Write the K and V rows of tokens start..start+T-1 (fp32, K already rotated; T <= MAX_T, start + T <= MAX_CTX, checked
// by the caller) into the cache as fp16; OnChip: also into the host's DDR rows k_ddr/v_ddr (write-through; unused for
// Ddr). With two KV sets, position s into set s % 2's ports at row s / 2. A prefill chunk's rows are written before
// any of its queries runs, as the golden does. One pipelined loop per set over its rows' chunks, each port's writes
// sequential (one burst), so T rows cost T * CH cycles and a write latency per set (AttentionConfig::write_cycles).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int MAX_T, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr,
          int PORTS = 1, int SETS = 1>
void kv_write_rows(const float k_new[MAX_T][KV_HEADS * HD], const float v_new[MAX_T][KV_HEADS * HD], int start, int T,
                   half_bits_t *k_cache, half_bits_t *v_cache, LayerCycles &cyc, half_bits_t *k_ddr = nullptr,
                   half_bits_t *v_ddr = nullptr, half_bits_t *k_cache1 = nullptr, half_bits_t *v_cache1 = nullptr,
                   half_bits_t *k_cache2 = nullptr, half_bits_t *v_cache2 = nullptr,
                   half_bits_t *k_cache3 = nullptr, half_bits_t *v_cache3 = nullptr) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS> C;
  constexpr int PL = C::PORT_LANES, CH = C::CH, MAX_CHUNKS = MAX_T * CH; // (MAX_CHUNKS: the LOOP_TRIPCOUNT pragma)
  (void)MAX_CHUNKS;
WRITE_SETS:
  for (int set = 0; set < SETS; ++set) { // SETS is 1 or 2: set is a bit, the same for the whole inner loop
    const int j0 = C::set_rows(start, set); // the set's first row of the chunk, and its rows
    const int rows = C::set_rows(start + T, set) - j0;
  KV_WRITE:
    for (int i = 0; i < rows * CH; ++i) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_CHUNKS
      const int j = j0 + i / CH, c = i % CH, t = j * SETS + set - start; // the set's row, the chunk, the token
      for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
        // lane l's port (a constant per lane) and its place in that port's row
        const size_t e = (size_t)j * C::PORT_ROW + c * PL + l % PL;
        const half_bits_t kh = float_to_half(k_new[t][c * SIMD + l]), vh = float_to_half(v_new[t][c * SIMD + l]);
        if (set == 0) {
          (l / PL == 0 ? k_cache : k_cache1)[e] = kh;
          (l / PL == 0 ? v_cache : v_cache1)[e] = vh;
        } else { // set 1 (never with one set)
          (l / PL == 0 ? k_cache2 : k_cache3)[e] = kh;
          (l / PL == 0 ? v_cache2 : v_cache3)[e] = vh;
        }
        if (PLACE == KvPlace::OnChip) { // a template constant: the Ddr instance has no write-through
          k_ddr[e] = kh;
          v_ddr[e] = vh;
        }
      }
    }
  }
  cyc.attention += C::write_cycles(start, T);
}

// One token's row at position pos (kv_write_rows of one row).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int PORTS = 1,
          int SETS = 1>
void kv_write(const float k_new[KV_HEADS * HD], const float v_new[KV_HEADS * HD], int pos,
              half_bits_t *k_cache, half_bits_t *v_cache, LayerCycles &cyc, half_bits_t *k_ddr = nullptr,
              half_bits_t *v_ddr = nullptr, half_bits_t *k_cache1 = nullptr, half_bits_t *v_cache1 = nullptr,
              half_bits_t *k_cache2 = nullptr, half_bits_t *v_cache2 = nullptr, half_bits_t *k_cache3 = nullptr,
              half_bits_t *v_cache3 = nullptr) {
#pragma HLS INLINE
  typedef const float(*Row)[KV_HEADS * HD];
  kv_write_rows<HEADS, KV_HEADS, HD, MAX_CTX, 1, SIMD, PLACE, PORTS, SETS>(
      reinterpret_cast<Row>(k_new), reinterpret_cast<Row>(v_new), pos, 1, k_cache, v_cache, cyc, k_ddr, v_ddr,
      k_cache1, v_cache1, k_cache2, v_cache2, k_cache3, v_cache3);
}

// A block of n <= QT queries (all HEADS heads, rotated) at positions pos..pos+n-1, query c over cache rows
// 0..pos+c (already written): one pass over rows 0..pos+n-1 of K and one of V serves them all (token lanes: each row
// chunk read feeds QT lanes of datapaths), lane c skipping the rows past its position, so each query's scores, max,
// sums and outputs are the operations attention_query does for it alone, in the same order (bit for bit:
// tb_brom_tile checks it). q[c] and out[c] are the block's rows.
// KV sets (SETS 2): a pass reads set 0's rows, then set 1's, one row chunk a cycle as with one set; decode's split
// (C::split: one query on two or more lanes) reads both sets at once, lane t set t's rows with the query in both
// lanes, in half the cycles, and merges the lanes' maxima before PV. Position s always adds into partial s mod P (P
// even: a set's positions take every other partial, in order), so split and unsplit give the same bits.
// Steps (AttentionSteps): this call scores keys [keys_from, keys_to) of the block's 0..pos+n-1, starting the maxima
// (ATT_START) or adding to those of an earlier call (static, as the scores: one instance keeps them between calls),
// and finishes (ATT_FINISH) once every key was scored.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int QT = 1,
          int PORTS = 1, int SETS = 1, int PV_SETS = SETS>
void attention_lanes(const float q[][HEADS * HD], int n, int pos, int keys_from, int keys_to, int steps,
                     const half_bits_t *k_cache, const half_bits_t *v_cache, float out[][HEADS * HD], LayerCycles &cyc,
                     const half_bits_t *k_cache1 = nullptr, const half_bits_t *v_cache1 = nullptr,
                     const half_bits_t *k_cache2 = nullptr, const half_bits_t *v_cache2 = nullptr,
                     const half_bits_t *k_cache3 = nullptr, const half_bits_t *v_cache3 = nullptr) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS, PV_SETS> C;
  static constexpr int GROUP = C::GROUP; // static: the object's debug information keeps it (the footprint's partitions)
  constexpr int CHD = C::CHD, CH = C::CH, PL = C::PORT_LANES, PROW = C::PORT_ROW;
  constexpr int P = C::PV_PARTIALS, PV_II = C::PV_II, PV_DISTANCE = CH * P / SETS; // used by the pragmas
  constexpr int MAX_ITERS = MAX_CTX * CH;
  (void)PV_II;
  (void)PV_DISTANCE;
  (void)MAX_ITERS;
  const float scale = attention_scale<HD>();
  const int S = pos + n; // causal: keys 0..pos+n-1, lane c's 0..pos+c
  const bool split = C::split(n, QT);
  // the passes' chunks: the scores' over keys [keys_from, keys_to), PV's over all S (KeyPass: set 0's rows and then
  // set 1's, or both sets' at once)
  const int score_iters = C::score_rows(keys_from, keys_to, n, QT) * CH, iters = C::score_rows(0, S, n, QT) * CH;

  float ql[QT][HEADS][HD];
#pragma HLS ARRAY_PARTITION variable = ql type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = ql type = cyclic factor = GROUP dim = 2
#pragma HLS ARRAY_PARTITION variable = ql type = cyclic factor = SIMD dim = 3
  static float score[QT][HEADS][MAX_CTX]; // scores of the block's queries
#pragma HLS ARRAY_PARTITION variable = score type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = score type = cyclic factor = GROUP dim = 2
  static float mx[QT][HEADS]; // the scores' maxima, kept for the block's next call
#pragma HLS ARRAY_PARTITION variable = mx type = complete dim = 0
  float lsum[QT][P][HEADS];
#pragma HLS ARRAY_PARTITION variable = lsum type = complete dim = 0
  float acc[QT][P][HEADS][HD]; // PV's partial sums (C::PV_PARTIALS)
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = GROUP dim = 3
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = SIMD dim = 4
  float part[QT][GROUP][CHD]; // chunk sums of the current (position, kv head)
#pragma HLS ARRAY_PARTITION variable = part type = complete dim = 0

QLOAD: // the block's queries one after another (split: the query into both lanes)
  for (int i = 0; i < n * HEADS * CHD; ++i) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = HEADS * CHD max = QT * HEADS * CHD
    const int c = i / (HEADS * CHD), h = i / CHD % HEADS, dc = i % CHD;
    for (int t = 0; t < QT; ++t) {
#pragma HLS UNROLL
      if (t != c && !(split && t < SETS)) continue;
      for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
        ql[t][h][dc * SIMD + l] = q[c][h * HD + dc * SIMD + l];
      }
      if (dc == 0 && (steps & ATT_START)) mx[t][h] = -INFINITY;
    }
  }

  // Pass 1: scores and their max (one sequential read of each set's rows of K in the range).
  detail::KeyPass kp = detail::key_pass<C>(split, keys_from, keys_to);
SCORE:
  for (int i = 0; i < score_iters; ++i) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_ITERS
    const int kh = kp.c / CHD, dc = kp.c % CHD;
    float kv[SETS][SIMD]; // the chunk of each set read this cycle (set r through its own ports)
#pragma HLS ARRAY_PARTITION variable = kv type = complete dim = 0
    detail::read_sets<SETS, SIMD, PL, PROW>(k_cache, k_cache1, k_cache2, k_cache3, split, kp.set, kp.j, kp.c, kv);
    for (int t = 0; t < QT; ++t) {
#pragma HLS UNROLL
      const int r = split ? t : kp.set, s = kp.j * SETS + r, qi = split ? 0 : t; // lane t's set, key and query
      if ((split ? t >= SETS : t >= n) || s < keys_from || s > pos + qi) continue; // lane t: keys 0..pos+qi
      for (int gq = 0; gq < GROUP; ++gq) {
#pragma HLS UNROLL
        const int h = kh * GROUP + gq;
        float prod[SIMD];
#pragma HLS ARRAY_PARTITION variable = prod type = complete dim = 1
        for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
          prod[l] = ql[t][h][dc * SIMD + l] * kv[r % SETS][l];
        }
        part[t][gq][dc] = detail::tree_sum<SIMD>(prod);
        if (dc == CHD - 1) {
          float chunks[CHD];
#pragma HLS ARRAY_PARTITION variable = chunks type = complete dim = 1
          for (int k = 0; k < CHD; ++k) {
#pragma HLS UNROLL
            chunks[k] = part[t][gq][k];
          }
          const float sc = detail::tree_sum<CHD>(chunks) * scale;
          score[t][h][s] = sc;
          mx[t][h] = sc > mx[t][h] ? sc : mx[t][h];
        }
      }
    }
    kp.next(CH);
  }
  cyc.attention += C::score_cycles(keys_from, keys_to, n, QT);
  if (!(steps & ATT_FINISH)) return;
  if (split) { // the two lanes' maxima of the query's keys: one max, exact whatever the order
    for (int h = 0; h < HEADS; ++h) {
#pragma HLS UNROLL
      const float m = mx[1][h] > mx[0][h] ? mx[1][h] : mx[0][h];
      for (int t = 0; t < SETS; ++t) {
#pragma HLS UNROLL
        mx[t][h] = m;
      }
    }
  }
  for (int t = 0; t < QT; ++t) { // (PV sets each at s = p; this keeps gcc from seeing a read before any write)
#pragma HLS UNROLL
    for (int p = 0; p < P; ++p) {
#pragma HLS UNROLL
      for (int h = 0; h < HEADS; ++h) {
#pragma HLS UNROLL
        lsum[t][p][h] = 0.0f;
      }
    }
  }

  // Pass 2: sum_s e[h,s] * v[s] (one sequential read of each set's rows of V), e[h,s] = exp(score[h,s] - mx[h])
  // computed where it is used: each chunk of kv head kh computes the GROUP exps of its heads (the same value in
  // every chunk of the head, a recomputation instead of a loop-carried hand-over), and the head's first chunk
  // adds it to l[h], revisited every CH iterations like acc. No separate exp loop over S*HEADS. Position s goes to
  // partial s mod P, so a partial comes back every CH * P / SETS iterations.
  detail::KeyPass vp = detail::key_pass<C>(split, 0, S);
PV:
  for (int i = 0; i < iters; ++i) {
#pragma HLS PIPELINE II = PV_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_ITERS
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = PV_DISTANCE dependent = true
#pragma HLS DEPENDENCE variable = lsum type = inter direction = RAW distance = PV_DISTANCE dependent = true
    const int kh = vp.c / CHD, dc = vp.c % CHD;
    float vv[SETS][SIMD];
#pragma HLS ARRAY_PARTITION variable = vv type = complete dim = 0
    detail::read_sets<SETS, SIMD, PL, PROW>(v_cache, v_cache1, v_cache2, v_cache3, split, vp.set, vp.j, vp.c, vv);
    for (int t = 0; t < QT; ++t) {
#pragma HLS UNROLL
      const int r = split ? t : vp.set, s = vp.j * SETS + r, qi = split ? 0 : t;
      if ((split ? t >= SETS : t >= n) || s > pos + qi) continue;
      const int sp = s % P; // P is a power of two: a mask
      for (int gq = 0; gq < GROUP; ++gq) {
#pragma HLS UNROLL
        const int h = kh * GROUP + gq;
        const float p = exp_f32(score[t][h][s] - mx[t][h]);
        if (dc == 0) lsum[t][sp][h] = (s < P ? 0.0f : lsum[t][sp][h]) + p;
        for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
          const int d = dc * SIMD + l;
          acc[t][sp][h][d] = (s < P ? 0.0f : acc[t][sp][h][d]) + p * vv[r % SETS][l];
        }
      }
    }
    vp.next(CH);
  }

FINAL: // the block's outputs one query after another: the partials' pairwise sums (a partial no key reached, p past
       // the query's last key, adds 0; split: partial p is lane p mod SETS's), divided
  for (int i = 0; i < n * HEADS * CHD; ++i) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = HEADS * CHD max = QT * HEADS * CHD
    const int c = i / (HEADS * CHD), h = i / CHD % HEADS, dc = i % CHD, keys = pos + c + 1;
    float l_parts[P];
#pragma HLS ARRAY_PARTITION variable = l_parts type = complete dim = 1
    for (int p = 0; p < P; ++p) {
#pragma HLS UNROLL
      l_parts[p] = p < keys ? lsum[split ? p % SETS : c][p][h] : 0.0f;
    }
    const float l_sum = detail::tree_sum<P>(l_parts);
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      float a_parts[P];
#pragma HLS ARRAY_PARTITION variable = a_parts type = complete dim = 1
      for (int p = 0; p < P; ++p) {
#pragma HLS UNROLL
        a_parts[p] = p < keys ? acc[split ? p % SETS : c][p][h][dc * SIMD + l] : 0.0f;
      }
      out[c][h * HD + dc * SIMD + l] = detail::tree_sum<P>(a_parts) / l_sum;
    }
  }
  cyc.attention += C::finish_cycles(S, n, QT);
}

// One query at position `pos` over cache rows 0..pos: a block of one, on one lane.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int PORTS = 1,
          int SETS = 1, int PV_SETS = SETS>
void attention_query(const float q[HEADS * HD], int pos, const half_bits_t *k_cache, const half_bits_t *v_cache,
                     float out[HEADS * HD], LayerCycles &cyc, const half_bits_t *k_cache1 = nullptr,
                     const half_bits_t *v_cache1 = nullptr, const half_bits_t *k_cache2 = nullptr,
                     const half_bits_t *v_cache2 = nullptr, const half_bits_t *k_cache3 = nullptr,
                     const half_bits_t *v_cache3 = nullptr) {
#pragma HLS INLINE
  attention_lanes<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, 1, PORTS, SETS, PV_SETS>(
      reinterpret_cast<const float(*)[HEADS * HD]>(q), 1, pos, 0, pos + 1, ATT_ALL, k_cache, v_cache,
      reinterpret_cast<float(*)[HEADS * HD]>(out), cyc, k_cache1, v_cache1, k_cache2, v_cache2, k_cache3, v_cache3);
}

// Copy rows start..start+n-1 of one cache (K or V of a layer) from the host's DDR rows into the on-chip ones
// (OnChip; start + n <= MAX_CTX, checked by the caller): one sequential burst, SIMD fp16 per cycle.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8>
void kv_load(const half_bits_t *ddr, half_bits_t *chip, int start, int n, LayerCycles &cyc) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, KvPlace::OnChip> C;
  const size_t base = (size_t)start * C::ROW;
  constexpr int MAX_CHUNKS = MAX_CTX * C::CH; // used by the LOOP_TRIPCOUNT pragma
  (void)MAX_CHUNKS;
KV_LOAD:
  for (int c = 0; c < n * C::CH; ++c) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_CHUNKS
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      chip[base + (size_t)c * SIMD + l] = ddr[base + (size_t)c * SIMD + l];
    }
  }
  cyc.kv_load += C::load_cycles(n);
}

// Decode step: the token at `pos` (cache rows 0..pos-1 valid; 0 <= pos < MAX_CTX, checked by the caller), one lane.
// OnChip: k_cache/v_cache are the on-chip rows, k_ddr/v_ddr the host's (written through).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int PORTS = 1>
void attention_decode(const float q[HEADS * HD], const float k_new[KV_HEADS * HD],
                      const float v_new[KV_HEADS * HD], int pos, half_bits_t *k_cache, half_bits_t *v_cache,
                      float out[HEADS * HD], LayerCycles &cyc, half_bits_t *k_ddr = nullptr,
                      half_bits_t *v_ddr = nullptr, half_bits_t *k_cache1 = nullptr, half_bits_t *v_cache1 = nullptr) {
  kv_write<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS>(k_new, v_new, pos, k_cache, v_cache, cyc, k_ddr, v_ddr,
                                                             k_cache1, v_cache1);
  attention_query<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS>(q, pos, k_cache, v_cache, out, cyc, k_cache1,
                                                                    v_cache1);
}

} // namespace roma

#endif // ROMA_ATTENTION_H

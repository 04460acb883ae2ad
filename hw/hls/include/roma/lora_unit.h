// ROMA-FPGA LoRA unit: the writable half of ROMA. Adapters live in on-chip RAM slots; one call adds
// scale * B (A x) to a linear's output, in fp32, on the linear's fp32 input x (not its int8 quantization).
//
// Source format: the packed adapter of host/roma_runtime/lora.py (PackedLora: "ROMALORA" header, a directory
// of n_layers*7 entries, fp16 or int8-with-row-scales factors at slot rank R, 64-byte aligned blocks). The
// host stages it in DDR; CMD_LOAD_LORA validates the whole image (lora_validate: magic, version, types, rank,
// shapes, targets, every block inside the image) and only then copies it into the slot (lora_load), so a bad
// image changes nothing.
//
// Sized by the build (roma_model.h's LORA_SLOTS, LORA_RANK, LORA_TARGET, LORA_INT8: what `roma compile`
// reserved and the plan counts): SLOTS slots of rank RANK, memory only for the TARGETS linears (a bit mask,
// bit i = linear i of wq wk wv wo w_gate w_up w_down), fp16 values or int8 codes. The arrays, exactly:
//   values[SLOTS][SLOT_VALUES], SLOT_VALUES = N_LAYERS * sum over targets t of RANK * (in_t + out_t):
//     per (layer, target) A: RANK rows of IN values, then B: OUT rows of RANK values, at fixed offsets over the
//     targets only (a non-target linear has no memory and no LoRA cycles). fp16 bit patterns (fp16 builds) or
//     int8 codes (int8 builds).
//   row_scale[SLOTS][SLOT_ROWS] (int8 builds only), SLOT_ROWS = N_LAYERS * sum over targets (RANK + out_t):
//     fp32 per row of A and of B, so value = fp32(code) * scale: the golden unpack's product (an image's fp16
//     row scales are widened exactly). An fp16 value is used as it is (fp16 -> fp32 is exact).
//   rank, scale [SLOTS][N_LAYERS][targets] and loaded[SLOTS]: small (LUTRAM/registers).
// Only the first r rows of A and r columns of B are used (the image's zero padding contributes nothing).
// An image of another storage type than the build's, of a slot rank above RANK, or with a factor on a linear
// that is not a target is refused.
//
// Compute (golden LoraAdapter.delta, then y + delta):
//   t[k] = sum_i A[k,i] * x[i]          k < r   (fp32, sequential sum; BLAS sums in another order)
//   y[o] = y[o] + (sum_k B[o,k] * t[k]) * scale
// Loops: one MAC per cycle issued, the sum of a row in ONE fp32 accumulator in the golden's order, so each
// iteration waits for the previous add: II = ACC_II (the fp32 adder latency, timing::acc_ii(1)). Interleaved
// partial sums would reach II=1 but add in another order than the golden (not bit-exact), so the loops are
// counted at the II they have:
//   A pass: r rows x (IN iterations at ACC_II + A_DEPTH); B pass: OUT rows x (r iterations at ACC_II + B_DEPTH);
//   LOAD: bytes / LOAD_BYTES_PER_CYCLE.
#ifndef ROMA_LORA_UNIT_H
#define ROMA_LORA_UNIT_H

#include <cmath>
#include <cstdint>

#include "layer_cycles.h"
#include "types.h"

namespace roma {

namespace lora_fmt { // the LoRA image layout; artifact/lora_image.py reads these constants
constexpr uint32_t HEADER_BYTES = 64;
constexpr uint32_t ENTRY_BYTES = 32;
constexpr uint32_t VERSION = 1;
constexpr uint32_t LINEARS = 7; // wq wk wv wo w_gate w_up w_down
constexpr uint32_t FACTOR_FP16 = 1, FACTOR_INT8 = 2;
constexpr uint32_t SCALE_NONE = 0, SCALE_FP16 = 1, SCALE_FP32 = 2;

inline uint32_t rd32(const uint8_t *p, uint32_t off) {
  return (uint32_t)p[off] | ((uint32_t)p[off + 1] << 8) | ((uint32_t)p[off + 2] << 16) | ((uint32_t)p[off + 3] << 24);
}
inline uint16_t rd16(const uint8_t *p, uint32_t off) { return (uint16_t)(p[off] | (p[off + 1] << 8)); }
} // namespace lora_fmt

struct LoraCycles {
  uint64_t load = 0;  // CMD_LOAD_LORA copy
  uint64_t apply = 0; // A and B passes
  LoraCycles &operator+=(const LoraCycles &o) {
    load += o.load, apply += o.apply;
    return *this;
  }
};

// The shape of a LoRA unit (constants only): N_LAYERS layers of a LLaMA with DIM (= heads * head_dim), KV_DIM
// and FFN_DIM; SLOTS slots of rank RANK on the linears of the TARGETS mask.
template <int N_LAYERS, int DIM, int KV_DIM, int FFN_DIM, int SLOTS, int RANK, unsigned TARGETS>
struct LoraShape {
  static constexpr int NLIN = (int)lora_fmt::LINEARS;
  static constexpr int LAYERS = N_LAYERS;
  static constexpr int ENTRIES = N_LAYERS * NLIN; // (layer, linear) pairs of an image
  // the smallest and largest in/out size of a linear (trip counts of the load loops)
  static constexpr int DIM_MIN = (KV_DIM < DIM ? KV_DIM : DIM) < FFN_DIM ? (KV_DIM < DIM ? KV_DIM : DIM) : FFN_DIM;
  static constexpr int DIM_MAX = (KV_DIM > DIM ? KV_DIM : DIM) > FFN_DIM ? (KV_DIM > DIM ? KV_DIM : DIM) : FFN_DIM;
  static constexpr int MAX_R = RANK;
  static constexpr int SLOT_COUNT = SLOTS;
  static constexpr int in_dim(int lin) { return lin == 6 ? FFN_DIM : DIM; }
  static constexpr int out_dim(int lin) { return (lin == 1 || lin == 2) ? KV_DIM : (lin == 4 || lin == 5) ? FFN_DIM : DIM; }
  static constexpr bool is_target(int lin) { return (TARGETS >> lin) & 1u; }
  static constexpr int target_index(int lin) { // targets before linear `lin`
    return lin == 0 ? 0 : target_index(lin - 1) + (is_target(lin - 1) ? 1 : 0);
  }
  static constexpr int TARGET_COUNT = target_index(NLIN);
  static constexpr long a_off(int lin) { // values before linear `lin` inside one layer (targets only)
    return lin == 0 ? 0 : a_off(lin - 1) + (is_target(lin - 1) ? (long)RANK * (in_dim(lin - 1) + out_dim(lin - 1)) : 0);
  }
  static constexpr long b_off(int lin) { return a_off(lin) + (long)RANK * in_dim(lin); }
  static constexpr long LAYER_VALUES = a_off(NLIN);
  static constexpr long SLOT_VALUES = LAYER_VALUES * N_LAYERS;
  static constexpr long ra_off(int lin) { // row scales before linear `lin` inside one layer (targets only)
    return lin == 0 ? 0 : ra_off(lin - 1) + (is_target(lin - 1) ? RANK + out_dim(lin - 1) : 0);
  }
  static constexpr long rb_off(int lin) { return ra_off(lin) + RANK; }
  static constexpr long LAYER_ROWS = ra_off(NLIN);
  static constexpr long SLOT_ROWS = LAYER_ROWS * N_LAYERS;
  static constexpr int LOAD_BYTES_PER_CYCLE = 16; // a 128-bit m_axi read port
  static constexpr int ACC_II = timing::acc_ii(1); // acc += ...: the accumulator is read by the next iteration
  // row read, value decode, (value * row scale) * input, the add, the store of the sum
  static constexpr int A_DEPTH = 2 + 1 + 2 * timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  // as A, then y[o] + sum * scale after the row's loop
  static constexpr int B_DEPTH = A_DEPTH + timing::FMUL_LATENCY + timing::FADD_LATENCY;
  static constexpr uint64_t apply_cycles(int r, int in, int out) {
    return (uint64_t)r * ((uint64_t)in * ACC_II + A_DEPTH) + (uint64_t)out * ((uint64_t)r * ACC_II + B_DEPTH);
  }
  static_assert(SLOTS > 0 && RANK > 0 && TARGET_COUNT > 0, "a LoRA unit has slots, a rank and targets (a build "
                                                           "without LoRA declares no unit)");
};

// The unit's memory (see the top of this file): fp16 values, or int8 codes with fp32 row scales.
template <int N_LAYERS, int DIM, int KV_DIM, int FFN_DIM, int SLOTS, int RANK, unsigned TARGETS, bool INT8>
struct LoraUnit;

template <int N_LAYERS, int DIM, int KV_DIM, int FFN_DIM, int SLOTS, int RANK, unsigned TARGETS>
struct LoraUnit<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS, false>
    : LoraShape<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS> {
  typedef LoraShape<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS> S;
  static constexpr bool INT8 = false;
  half_bits_t values[SLOTS][S::SLOT_VALUES];
  uint16_t rank[SLOTS][N_LAYERS][S::TARGET_COUNT];
  float scale[SLOTS][N_LAYERS][S::TARGET_COUNT];
  bool loaded[SLOTS];

  float value(int slot, long v, long /*row*/) const { return half_to_float(values[slot][v]); }
  // an fp16 image's value at byte `off` (validated: the image is fp16)
  void put(int slot, long v, const uint8_t *img, uint32_t off) { values[slot][v] = lora_fmt::rd16(img, off); }
  void put_row_scale(int, long, float) {}
};

template <int N_LAYERS, int DIM, int KV_DIM, int FFN_DIM, int SLOTS, int RANK, unsigned TARGETS>
struct LoraUnit<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS, true>
    : LoraShape<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS> {
  typedef LoraShape<N_LAYERS, DIM, KV_DIM, FFN_DIM, SLOTS, RANK, TARGETS> S;
  static constexpr bool INT8 = true;
  int8_t values[SLOTS][S::SLOT_VALUES];
  float row_scale[SLOTS][S::SLOT_ROWS];
  uint16_t rank[SLOTS][N_LAYERS][S::TARGET_COUNT];
  float scale[SLOTS][N_LAYERS][S::TARGET_COUNT];
  bool loaded[SLOTS];

  float value(int slot, long v, long row) const { return (float)values[slot][v] * row_scale[slot][row]; }
  // an int8 image's code at byte `off` (validated: the image is int8)
  void put(int slot, long v, const uint8_t *img, uint32_t off) { values[slot][v] = (int8_t)img[off]; }
  void put_row_scale(int slot, long row, float s) { row_scale[slot][row] = s; }
};

// Why lora_validate refused an image: a code, not a string (synthesized code holds no string literals); the C
// simulation spells it out (csim/lora_unit.h, lora_image_error_text).
enum class LoraImageError : uint8_t {
  Ok = 0,
  Short,            // shorter than the header
  Magic,            // not "ROMALORA"
  Version,          // unknown format version
  Types,            // unknown factor/scale type pair
  SlotRank,         // slot rank 0 or above the unit's MAX_R
  Counts,           // layer/linear count differs from the model
  Directory,        // directory offset or total size wrong
  DirectoryOutside, // directory past the image's end
  Shape,            // a linear's in/out dims differ from the model
  EntryRank,        // an entry's rank above the slot rank
  Scale,            // an entry's scale is NaN or infinite
  Factor,           // a factor block past the image's end
  RowScales,        // a row-scale block past the image's end
  Storage,          // fp16 factors for an int8 unit, or int8 for an fp16 unit
  Target            // a factor on a linear the unit has no memory for
};

// The whole image checked against the unit's shapes: Ok, or why not.
template <class U>
LoraImageError lora_validate(const uint8_t *img, uint32_t bytes, int n_layers_expected) {
  using namespace lora_fmt;
  if (bytes < HEADER_BYTES) return LoraImageError::Short;
  const char magic[8] = {'R', 'O', 'M', 'A', 'L', 'O', 'R', 'A'};
  for (int i = 0; i < 8; ++i)
    if (img[i] != (uint8_t)magic[i]) return LoraImageError::Magic;
  const uint32_t version = rd32(img, 8), ftype = rd32(img, 12), stype = rd32(img, 16), R = rd32(img, 20);
  const uint32_t nl = rd32(img, 24), nlin = rd32(img, 28), dir = rd32(img, 32), total = rd32(img, 36);
  if (version != VERSION) return LoraImageError::Version;
  if (!((ftype == FACTOR_FP16 && stype == SCALE_NONE) ||
        (ftype == FACTOR_INT8 && (stype == SCALE_FP16 || stype == SCALE_FP32))))
    return LoraImageError::Types;
  if ((ftype == FACTOR_INT8) != U::INT8) return LoraImageError::Storage;
  if (R < 1 || R > (uint32_t)U::MAX_R) return LoraImageError::SlotRank;
  if (nl != (uint32_t)n_layers_expected || nlin != LINEARS) return LoraImageError::Counts;
  if (dir != HEADER_BYTES || total != bytes) return LoraImageError::Directory;
  if ((uint64_t)dir + (uint64_t)nl * nlin * ENTRY_BYTES > bytes) return LoraImageError::DirectoryOutside;
  const uint64_t elem = ftype == FACTOR_FP16 ? 2 : 1, sb = stype == SCALE_FP32 ? 4 : 2;
  constexpr int ENTRIES = U::ENTRIES; // used by the LOOP_TRIPCOUNT pragma (nl, nlin were checked above)
  (void)ENTRIES;
LORA_VALIDATE_ENTRIES:
  for (uint32_t e = 0; e < nl * nlin; ++e) {
#pragma HLS LOOP_TRIPCOUNT min = ENTRIES max = ENTRIES
    const uint32_t o = dir + e * ENTRY_BYTES, lin = e % nlin;
    const uint32_t r = rd32(img, o), in = rd32(img, o + 4), out = rd32(img, o + 8);
    if ((int)in != U::in_dim((int)lin) || (int)out != U::out_dim((int)lin)) return LoraImageError::Shape;
    if (r == 0) continue;
    if (r > R) return LoraImageError::EntryRank;
    if (!U::is_target((int)lin)) return LoraImageError::Target;
    const float s = bits_to_float(rd32(img, o + 12));
    if (!(s == s) || std::isinf(s)) return LoraImageError::Scale;
    const uint64_t oa = rd32(img, o + 16), osa = rd32(img, o + 20), ob = rd32(img, o + 24), osb = rd32(img, o + 28);
    if (oa + R * (uint64_t)in * elem > bytes || ob + (uint64_t)out * R * elem > bytes) return LoraImageError::Factor;
    if (ftype == FACTOR_INT8 && (osa + R * sb > bytes || osb + out * sb > bytes)) return LoraImageError::RowScales;
  }
  return LoraImageError::Ok;
}

// Copies a validated image into `slot` (marks it loaded). `bytes` only feeds the cycle model.
template <class U>
void lora_load(U &u, int slot, const uint8_t *img, uint32_t bytes, LoraCycles &cyc) {
  using namespace lora_fmt;
  const uint32_t stype = rd32(img, 16), R = rd32(img, 20), dir = rd32(img, 32);
  const uint32_t elem = U::INT8 ? 1 : 2;
  const int NL = (int)rd32(img, 24);
  constexpr int ENTRIES = U::ENTRIES, RMAX = U::MAX_R, DMIN = U::DIM_MIN, DMAX = U::DIM_MAX; // LOOP_TRIPCOUNTs
  (void)ENTRIES;
  (void)RMAX;
  (void)DMIN;
  (void)DMAX;
LORA_LOAD_ENTRIES:
  for (int e = 0; e < NL * U::NLIN; ++e) {
#pragma HLS LOOP_TRIPCOUNT min = ENTRIES max = ENTRIES
    const int layer = e / U::NLIN, lin = e % U::NLIN;
    if (!U::is_target(lin)) continue; // validated: no factor there
    const uint32_t o = dir + (uint32_t)e * ENTRY_BYTES;
    const uint32_t r = rd32(img, o);
    const int in = U::in_dim(lin), out = U::out_dim(lin), t = U::target_index(lin);
    u.rank[slot][layer][t] = (uint16_t)r;
    u.scale[slot][layer][t] = bits_to_float(rd32(img, o + 12));
    if (r == 0) continue;
    const uint32_t oa = rd32(img, o + 16), osa = rd32(img, o + 20), ob = rd32(img, o + 24), osb = rd32(img, o + 28);
    const long va = (long)layer * U::LAYER_VALUES + U::a_off(lin), vb = (long)layer * U::LAYER_VALUES + U::b_off(lin);
    const long ra = (long)layer * U::LAYER_ROWS + U::ra_off(lin), rb = (long)layer * U::LAYER_ROWS + U::rb_off(lin);
    auto row_scale = [&](uint32_t off, uint32_t idx) -> float { // int8 images only
      return stype == SCALE_FP32 ? bits_to_float(rd32(img, off + 4 * idx)) : half_to_float(rd16(img, off + 2 * idx));
    };
  LORA_LOAD_A:
    for (uint32_t k = 0; k < r; ++k) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
      if (U::INT8) u.put_row_scale(slot, ra + k, row_scale(osa, k));
      for (int i = 0; i < in; ++i) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
        u.put(slot, va + (long)k * in + i, img, oa + (uint32_t)(elem * ((uint64_t)k * in + i)));
      }
    }
  LORA_LOAD_B:
    for (int oo = 0; oo < out; ++oo) {
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
      if (U::INT8) u.put_row_scale(slot, rb + oo, row_scale(osb, (uint32_t)oo));
      for (uint32_t k = 0; k < r; ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
        u.put(slot, vb + (long)oo * U::MAX_R + k, img, ob + (uint32_t)(elem * ((uint64_t)oo * R + k)));
      }
    }
  }
  u.loaded[slot] = true;
  cyc.load += bytes / U::LOAD_BYTES_PER_CYCLE + timing::AXI_READ_LATENCY;
}

// y[out_dim(lin)] += scale * B (A x) for (slot, layer, lin), the linear a run-time index (one instance serves every
// linear: its in and out sizes are the unit's in_dim/out_dim); nothing when `lin` is not a target of the unit or the
// slot has no factor there.
template <class U>
void lora_apply(const U &u, int slot, int layer, int lin, const float x[U::DIM_MAX], float y[U::DIM_MAX],
                LoraCycles &cyc) {
  if (!U::is_target(lin)) return;
  const uint32_t r = u.rank[slot][layer][U::target_index(lin)];
  if (r == 0) return;
  constexpr int RMAX = U::MAX_R, ACC_II = U::ACC_II, DMIN = U::DIM_MIN, DMAX = U::DIM_MAX; // used by the pragmas
  (void)ACC_II;
  (void)DMIN;
  (void)DMAX;
  const int in = U::in_dim(lin), out = U::out_dim(lin);
  const long va = (long)layer * U::LAYER_VALUES + U::a_off(lin), vb = (long)layer * U::LAYER_VALUES + U::b_off(lin);
  const long ra = (long)layer * U::LAYER_ROWS + U::ra_off(lin), rb = (long)layer * U::LAYER_ROWS + U::rb_off(lin);
  const float s = u.scale[slot][layer][U::target_index(lin)];
  float t[RMAX];
LORA_A:
  for (uint32_t k = 0; k < r; ++k) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
    float acc = 0.0f;
    for (int i = 0; i < in; ++i) {
#pragma HLS PIPELINE II = ACC_II
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
      acc += u.value(slot, va + (long)k * in + i, ra + k) * x[i];
    }
    t[k] = acc;
  }
LORA_B:
  for (int o = 0; o < out; ++o) {
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
    float acc = 0.0f;
    for (uint32_t k = 0; k < r; ++k) {
#pragma HLS PIPELINE II = ACC_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
      acc += u.value(slot, vb + (long)o * RMAX + k, rb + o) * t[k];
    }
    y[o] = y[o] + acc * s;
  }
  cyc.apply += U::apply_cycles((int)r, in, out);
}

} // namespace roma

#endif // ROMA_LORA_UNIT_H

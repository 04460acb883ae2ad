// ROMA-FPGA LoRA unit: the writable half of ROMA. Several adapters live in on-chip RAM slots; one call adds
// scale * B (A x) to a linear's output, in fp32, on the linear's fp32 input x (not its int8 quantization).
//
// Source format: the packed adapter of host/roma_runtime/lora.py (PackedLora: "ROMALORA" header, a directory
// of n_layers*7 entries, fp16 or int8-with-row-scales factors at slot rank R, 64-byte aligned blocks). The
// host stages it in DDR; CMD_LOAD_LORA validates the whole image (lora_validate: magic, version, types, rank,
// shapes, every block inside the image) and only then copies it into the slot (lora_load), so a bad image
// changes nothing.
//
// Slot memory (per slot, fixed offsets so the datapath needs no directory): for every (layer, linear)
//   A: MAX_RANK rows of IN values, B: OUT rows of MAX_RANK values, as fp16 bit patterns; row scales fp32.
//   fp16 images store the values with row scale 1.0 (x * 1 is exact); int8 images store the code as fp16
//   (exact for |code| <= 127) and the row scale, so value = fp32(code) * scale: the golden unpack's product.
//   Only the first r rows of A and r columns of B are used (the image's zero padding contributes nothing).
//   Size: MAX_RANK * sum over linears (IN + OUT) * 2 bytes per layer (SmolLM2-135M, R=64: 1.3 MB per layer,
//   39 MB per slot: URAM on a U250, or a DDR-backed slot for bigger models).
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
};

// N_LAYERS layers of a LLaMA with DIM (= heads * head_dim), KV_DIM and FFN_DIM; SLOTS slots of rank MAX_RANK.
template <int N_LAYERS, int DIM, int KV_DIM, int FFN_DIM, int SLOTS, int MAX_RANK>
struct LoraUnit {
  static constexpr int NLIN = (int)lora_fmt::LINEARS;
  static constexpr int LAYERS = N_LAYERS;
  static constexpr int ENTRIES = N_LAYERS * NLIN; // (layer, linear) pairs of an image
  // the smallest and largest in/out size of a linear (trip counts of the load loops)
  static constexpr int DIM_MIN = (KV_DIM < DIM ? KV_DIM : DIM) < FFN_DIM ? (KV_DIM < DIM ? KV_DIM : DIM) : FFN_DIM;
  static constexpr int DIM_MAX = (KV_DIM > DIM ? KV_DIM : DIM) > FFN_DIM ? (KV_DIM > DIM ? KV_DIM : DIM) : FFN_DIM;
  static constexpr int MAX_R = MAX_RANK;
  static constexpr int SLOT_COUNT = SLOTS;
  static constexpr int in_dim(int lin) { return lin == 6 ? FFN_DIM : DIM; }
  static constexpr int out_dim(int lin) { return (lin == 1 || lin == 2) ? KV_DIM : (lin == 4 || lin == 5) ? FFN_DIM : DIM; }
  static constexpr long a_off(int lin) { // values before linear `lin` inside one layer
    return lin == 0 ? 0 : a_off(lin - 1) + (long)MAX_RANK * (in_dim(lin - 1) + out_dim(lin - 1));
  }
  static constexpr long b_off(int lin) { return a_off(lin) + (long)MAX_RANK * in_dim(lin); }
  static constexpr long LAYER_VALUES = a_off(NLIN);
  static constexpr long SLOT_VALUES = LAYER_VALUES * N_LAYERS;
  static constexpr long ra_off(int lin) { return lin == 0 ? 0 : ra_off(lin - 1) + MAX_RANK + out_dim(lin - 1); }
  static constexpr long rb_off(int lin) { return ra_off(lin) + MAX_RANK; }
  static constexpr long LAYER_ROWS = ra_off(NLIN);
  static constexpr long SLOT_ROWS = LAYER_ROWS * N_LAYERS;
  static constexpr int LOAD_BYTES_PER_CYCLE = 16; // a 128-bit m_axi read port
  static constexpr int ACC_II = timing::acc_ii(1); // acc += ...: the accumulator is read by the next iteration
  // row read, fp16 decode, (value * row scale) * input, the add, the store of the sum
  static constexpr int A_DEPTH = 2 + 1 + 2 * timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  // as A, then y[o] + sum * scale after the row's loop
  static constexpr int B_DEPTH = A_DEPTH + timing::FMUL_LATENCY + timing::FADD_LATENCY;
  static constexpr uint64_t apply_cycles(int r, int in, int out) {
    return (uint64_t)r * ((uint64_t)in * ACC_II + A_DEPTH) + (uint64_t)out * ((uint64_t)r * ACC_II + B_DEPTH);
  }

  half_bits_t values[SLOTS][SLOT_VALUES];
  float row_scale[SLOTS][SLOT_ROWS];
  uint32_t rank[SLOTS][N_LAYERS][NLIN];
  float scale[SLOTS][N_LAYERS][NLIN];
  bool loaded[SLOTS];
};

// Why lora_validate refused an image: a code, not a string (synthesized code holds no string literals); the C
// simulation spells it out (csim/lora_unit.h, lora_image_error_text).
enum class LoraImageError : uint8_t {
  Ok = 0,
  Short,            // shorter than the header
  Magic,            // not "ROMALORA"
  Version,          // unknown format version
  Types,            // unknown factor/scale type pair
  SlotRank,         // slot rank 0 or above the unit's MAX_RANK
  Counts,           // layer/linear count differs from the model
  Directory,        // directory offset or total size wrong
  DirectoryOutside, // directory past the image's end
  Shape,            // a linear's in/out dims differ from the model
  EntryRank,        // an entry's rank above the slot rank
  Scale,            // an entry's scale is NaN or infinite
  Factor,           // a factor block past the image's end
  RowScales         // a row-scale block past the image's end
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
  const uint32_t ftype = rd32(img, 12), stype = rd32(img, 16), R = rd32(img, 20), dir = rd32(img, 32);
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
    const uint32_t o = dir + (uint32_t)e * ENTRY_BYTES;
    const uint32_t r = rd32(img, o);
    const int in = U::in_dim(lin), out = U::out_dim(lin);
    u.rank[slot][layer][lin] = r;
    u.scale[slot][layer][lin] = bits_to_float(rd32(img, o + 12));
    if (r == 0) continue;
    const uint32_t oa = rd32(img, o + 16), osa = rd32(img, o + 20), ob = rd32(img, o + 24), osb = rd32(img, o + 28);
    half_bits_t *A = &u.values[slot][(long)layer * U::LAYER_VALUES + U::a_off(lin)];
    half_bits_t *B = &u.values[slot][(long)layer * U::LAYER_VALUES + U::b_off(lin)];
    float *sa = &u.row_scale[slot][(long)layer * U::LAYER_ROWS + U::ra_off(lin)];
    float *sbv = &u.row_scale[slot][(long)layer * U::LAYER_ROWS + U::rb_off(lin)];
    auto value = [&](uint32_t off, uint64_t idx) -> half_bits_t {
      if (ftype == FACTOR_FP16) return rd16(img, off + (uint32_t)(2 * idx));
      const int8_t c = (int8_t)img[off + idx];
      return float_to_half((float)c); // exact: |c| <= 128 < 2048
    };
    auto row_scale = [&](uint32_t off, uint32_t idx) -> float {
      if (ftype == FACTOR_FP16) return 1.0f;
      return stype == SCALE_FP32 ? bits_to_float(rd32(img, off + 4 * idx)) : half_to_float(rd16(img, off + 2 * idx));
    };
  LORA_LOAD_A:
    for (uint32_t k = 0; k < r; ++k) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
      sa[k] = row_scale(osa, k);
      for (int i = 0; i < in; ++i) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
        A[(long)k * in + i] = value(oa, (uint64_t)k * in + i);
      }
    }
  LORA_LOAD_B:
    for (int oo = 0; oo < out; ++oo) {
#pragma HLS LOOP_TRIPCOUNT min = DMIN max = DMAX
      sbv[oo] = row_scale(osb, (uint32_t)oo);
      for (uint32_t k = 0; k < r; ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
        B[(long)oo * U::MAX_R + k] = value(ob, (uint64_t)oo * R + k);
      }
    }
  }
  u.loaded[slot] = true;
  cyc.load += bytes / U::LOAD_BYTES_PER_CYCLE + timing::AXI_READ_LATENCY;
}

// y[OUT] += scale * B (A x) for (slot, layer, lin); nothing when the slot has no factor there.
template <class U, int IN, int OUT>
void lora_apply(const U &u, int slot, int layer, int lin, const float x[IN], float y[OUT], LoraCycles &cyc) {
  const uint32_t r = u.rank[slot][layer][lin];
  if (r == 0) return;
  constexpr int RMAX = U::MAX_R, ACC_II = U::ACC_II; // used by the pragmas
  (void)ACC_II;
  const half_bits_t *A = &u.values[slot][(long)layer * U::LAYER_VALUES + U::a_off(lin)];
  const half_bits_t *B = &u.values[slot][(long)layer * U::LAYER_VALUES + U::b_off(lin)];
  const float *sa = &u.row_scale[slot][(long)layer * U::LAYER_ROWS + U::ra_off(lin)];
  const float *sb = &u.row_scale[slot][(long)layer * U::LAYER_ROWS + U::rb_off(lin)];
  const float s = u.scale[slot][layer][lin];
  float t[RMAX];
LORA_A:
  for (uint32_t k = 0; k < r; ++k) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
    float acc = 0.0f;
    for (int i = 0; i < IN; ++i) {
#pragma HLS PIPELINE II = ACC_II
      acc += (half_to_float(A[(long)k * IN + i]) * sa[k]) * x[i];
    }
    t[k] = acc;
  }
LORA_B:
  for (int o = 0; o < OUT; ++o) {
    float acc = 0.0f;
    for (uint32_t k = 0; k < r; ++k) {
#pragma HLS PIPELINE II = ACC_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = RMAX
      acc += (half_to_float(B[(long)o * RMAX + k]) * sb[o]) * t[k];
    }
    y[o] = y[o] + acc * s;
  }
  cyc.apply += U::apply_cycles((int)r, IN, OUT);
}

} // namespace roma

#endif // ROMA_LORA_UNIT_H

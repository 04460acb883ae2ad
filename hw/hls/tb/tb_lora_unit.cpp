// Self-checking testbench of the LoRA unit (include/roma/lora_unit.h): packed adapters (lora.py PackedLora:
// fp16, int8 with fp16 or fp32 row scales, ranks below the slot rank, factors on some linears only) validated
// and loaded into slots the way CMD_LOAD_LORA does (lora_validate, then lora_load only if it passed), corrupt
// images refused with the unit's reason and the slot left bit for bit unchanged, then y += scale*B(Ax) on every
// (layer, linear) of a selected slot against the golden LoraAdapter.delta of PackedLora.to_golden().
//
//   tb_lora_unit DATA_DIR      (DATA_DIR written by gen_lora_unit.py)
//
// Units: "tiny16"/"tiny8" (2 layers, dim 32, kv 16, ffn 48, slot rank 8) and "smol16"/"smol8" (SmolLM2-135M, one
// layer, slot rank 16): fp16 on all 7 linears, and int8 with memory for some linears only (sized over those: the
// testbench checks each unit's value memory against N_LAYERS * sum over its targets R * (IN + OUT)).
// Exact: every validate verdict and refusal reason, the untouched slot, y == y0 where the slot has no factor or
// the unit no memory.
// Tolerance (u = 2^-24), y = y0 + delta: |y - yg| <= (2 IN + 2 r + 4) u M + 3 u |yg| + 1e-30, M = |s| sum_k
// |B[o,k]| sum_i |A[k,i] x[i]| (computed in fp64 by the generator). Both sides use the same fp32 factor values
// (fp16 -> fp32 is exact; int8: fp32(code) * fp32(row scale), the same single rounding as the golden unpack),
// so only the summation order differs (the unit sums sequentially, numpy/BLAS blocked, maybe with FMA): each
// side's A x is within IN u sum_i |A x| of the exact value (products and IN-1 adds), which B carries as
// sum_k |B| (2 IN u sum|A x|); each B sum adds r u sum_k |B t| per side; the product by s rounds once per side
// (u M each); the add of y0 rounds once per side (u |y| each). The 2 extra u M and u |yg| cover the
// second-order terms.
// Prints one line per case and `tb_lora_unit: M mismatches of N`; the exit code is min(M, 255).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "roma/csim/lora_unit.h"
#include "roma/lora_unit.h"
#include "tb_common.h"

using namespace roma;

namespace {

const double ULP = 1.0 / 16777216.0; // u = 2^-24
const char *const LIN_NAMES[7] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};

constexpr unsigned ALL = 0x7f; // bit i: linear i (wq wk wv wo w_gate w_up w_down) has LoRA memory
typedef LoraUnit<2, 32, 16, 48, 3, 8, ALL, false> Tiny16;
typedef LoraUnit<2, 32, 16, 48, 3, 8, 0x73, true> Tiny8; // wq wk w_gate w_up w_down
typedef LoraUnit<1, 576, 192, 1536, 3, 16, ALL, false> Smol16;
typedef LoraUnit<1, 576, 192, 1536, 3, 16, 0x71, true> Smol8; // wq w_gate w_up w_down
// the value memory of one slot, written out: layers * rank * (in + out) of each target, fp16 or int8
static_assert(sizeof(Tiny16::values[0]) == 2 * 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + (32 + 48) +
                                                         (32 + 48) + (48 + 32)),
              "tiny16: every linear");
static_assert(sizeof(Tiny8::values[0]) == 2 * 8 * ((32 + 32) + (32 + 16) + (32 + 48) + (32 + 48) + (48 + 32)),
              "tiny8: no memory for wv and wo");
static_assert(sizeof(Tiny8::row_scale[0]) == 4 * 2 * ((8 + 32) + (8 + 16) + (8 + 48) + (8 + 48) + (8 + 32)),
              "tiny8: fp32 row scales of its targets");
static_assert(sizeof(Smol8::values[0]) == 16 * ((576 + 576) + (576 + 1536) + (576 + 1536) + (1536 + 576)),
              "smol8: no memory for wk, wv and wo");

struct Totals {
  long mismatches = 0, compared = 0;
  void add(const tb::Tally &t, const char *kind, uint64_t cycles) {
    mismatches += t.mismatches;
    compared += t.compared;
    std::printf("  %-6s %-16s %7ld compared, %ld mismatches, worst |diff|/tol %.3f (|diff| %.3g), cycles %llu\n",
                kind, t.name.c_str(), t.compared, t.mismatches, t.worst, t.worst_abs, (unsigned long long)cycles);
  }
};

// The CMD_LOAD_LORA path of roma_core.cpp: the whole image validated first, copied into the slot only if valid;
// nullptr, or the refusal code's reason.
template <class U>
const char *load_checked(U &u, int slot, const std::vector<uint8_t> &img, LoraCycles &cyc) {
  const LoraImageError e = lora_validate<U>(img.data(), (uint32_t)img.size(), U::LAYERS);
  if (e == LoraImageError::Ok) lora_load<U>(u, slot, img.data(), (uint32_t)img.size(), cyc);
  return lora_image_error_text(e);
}

// a unit's slot bit for bit (and its row scales, for an int8 unit)
template <class U>
bool row_scales_equal(const U &, const U &, int, std::false_type) { return true; }
template <class U>
bool row_scales_equal(const U &a, const U &b, int slot, std::true_type) {
  return std::memcmp(a.row_scale[slot], b.row_scale[slot], sizeof(a.row_scale[slot])) == 0;
}
template <class U>
bool slot_equal(const U &a, const U &b, int slot) {
  return std::memcmp(a.values[slot], b.values[slot], sizeof(a.values[slot])) == 0 &&
         row_scales_equal(a, b, slot, std::integral_constant<bool, U::INT8>()) &&
         std::memcmp(a.rank[slot], b.rank[slot], sizeof(a.rank[slot])) == 0 &&
         std::memcmp(a.scale[slot], b.scale[slot], sizeof(a.scale[slot])) == 0 && a.loaded[slot] == b.loaded[slot];
}

std::vector<uint8_t> read_image(const std::string &name) {
  const std::string f = name + ".img.u8";
  return tb::read_array<uint8_t>(f, tb::file_items(f, 1));
}

template <class U>
void run_load(U &u, int slot, const std::string &name, Totals &tot) {
  tb::Tally t;
  t.name = name;
  LoraCycles cyc;
  const auto img = read_image(name);
  const char *why = load_checked(u, slot, img, cyc);
  if (!t.check(why == nullptr && u.loaded[slot]))
    std::printf("  %s refused: %s\n", name.c_str(), why ? why : "(slot not marked loaded)");
  tot.add(t, "load", cyc.load);
}

template <class U>
void run_reject(U &u, int slot, const std::string &name, const std::string &reason, Totals &tot) {
  tb::Tally t;
  t.name = name;
  LoraCycles cyc;
  const auto img = read_image(name);
  std::unique_ptr<U> before(new U(u));
  const char *why = load_checked(u, slot, img, cyc);
  if (!t.check(why != nullptr && reason == why))
    std::printf("  %s: unit says '%s', expected '%s'\n", name.c_str(), why ? why : "(accepted)", reason.c_str());
  if (!t.check(slot_equal(u, *before, slot))) std::printf("  %s: slot %d changed\n", name.c_str(), slot);
  tot.add(t, "reject", cyc.load);
}

template <class U, int LIN>
void apply_one(const U &u, int slot, int layer, const std::string &name, int T, tb::Tally &t, LoraCycles &cyc) {
  constexpr int IN = U::in_dim(LIN), OUT = U::out_dim(LIN);
  const std::string stem = name + ".l" + std::to_string(layer) + "_" + std::to_string(LIN);
  const auto x = tb::read_array<float>(stem + ".x.f32", (size_t)T * IN);
  const auto y0 = tb::read_array<float>(stem + ".y0.f32", (size_t)T * OUT);
  const auto yg = tb::read_array<float>(stem + ".y.f32", (size_t)T * OUT);
  const auto mag = tb::read_array<double>(stem + ".mag.f64", (size_t)T * OUT);
  const uint32_t r = U::is_target(LIN) ? u.rank[slot][layer][U::target_index(LIN)] : 0;
  const std::string what = std::string("l") + std::to_string(layer) + "." + LIN_NAMES[LIN];
  std::vector<float> y(OUT);
  for (int tok = 0; tok < T; ++tok) {
    for (int o = 0; o < OUT; ++o) y[o] = y0[(size_t)tok * OUT + o];
    lora_apply<U>(u, slot, layer, LIN, &x[(size_t)tok * IN], y.data(), cyc);
    for (int o = 0; o < OUT; ++o) {
      const size_t i = (size_t)tok * OUT + o;
      if (r == 0) {
        t.exact(std::memcmp(&y[o], &yg[i], sizeof(float)) == 0, what.c_str(), (long)i, y[o], yg[i]);
      } else {
        const double tol = (2.0 * IN + 2.0 * r + 4) * ULP * mag[i] + 3 * ULP * std::fabs((double)yg[i]) + 1e-30;
        t.within(y[o], yg[i], tol, what.c_str(), (long)i);
      }
    }
  }
}

template <class U>
void run_apply(const U &u, int slot, const std::string &name, int layers, int T, Totals &tot) {
  tb::Tally t;
  t.name = name;
  LoraCycles cyc;
  for (int l = 0; l < layers; ++l) {
    apply_one<U, 0>(u, slot, l, name, T, t, cyc);
    apply_one<U, 1>(u, slot, l, name, T, t, cyc);
    apply_one<U, 2>(u, slot, l, name, T, t, cyc);
    apply_one<U, 3>(u, slot, l, name, T, t, cyc);
    apply_one<U, 4>(u, slot, l, name, T, t, cyc);
    apply_one<U, 5>(u, slot, l, name, T, t, cyc);
    apply_one<U, 6>(u, slot, l, name, T, t, cyc);
  }
  tot.add(t, "apply", cyc.apply);
}

template <class U>
void run_line(U &u, std::istringstream &in, const std::string &kind, Totals &tot, const std::string &line) {
  int slot = -1;
  std::string name;
  in >> slot >> name;
  if (slot < 0 || slot >= U::SLOT_COUNT || name.empty()) {
    tb::io_error("bad case line: %s", line.c_str());
    return;
  }
  if (kind == "load") {
    run_load(u, slot, name, tot);
  } else if (kind == "reject") {
    std::string reason;
    std::getline(in >> std::ws, reason);
    run_reject(u, slot, name, reason, tot);
  } else if (kind == "apply") {
    int layers = 0, T = 0;
    in >> layers >> T;
    if (layers < 1 || T < 1 || !u.loaded[slot]) {
      tb::io_error("bad apply line (or slot not loaded): %s", line.c_str());
      return;
    }
    run_apply(u, slot, name, layers, T, tot);
  } else {
    tb::io_error("unknown case kind: %s", line.c_str());
  }
}

// Large: static storage, zero-initialised (no slot loaded).
Tiny16 g_tiny16;
Tiny8 g_tiny8;
Smol16 g_smol16;
Smol8 g_smol8;

} // namespace

int main(int argc, char **argv) {
  if (!tb::init("tb_lora_unit", argc, argv, "gen_lora_unit.py")) return 2;
  std::vector<std::string> lines;
  if (!tb::read_cases(lines)) return 255;
  Totals tot;
  for (const auto &line : lines) {
    std::istringstream in(line);
    std::string kind, shape;
    in >> kind >> shape;
    if (shape == "tiny16") run_line(g_tiny16, in, kind, tot, line);
    else if (shape == "tiny8") run_line(g_tiny8, in, kind, tot, line);
    else if (shape == "smol16") run_line(g_smol16, in, kind, tot, line);
    else if (shape == "smol8") run_line(g_smol8, in, kind, tot, line);
    else tb::io_error("unknown unit shape: %s", line.c_str());
  }
  return tb::finish(tot.mismatches, tot.compared, "");
}

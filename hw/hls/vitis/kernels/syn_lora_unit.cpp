// Synthesis wrapper of the LoRA unit (tb/tb_lora_unit.cpp checks it in C simulation): one SmolLM2-135M layer
// with 2 slots of rank 16, fp16, on all seven linears. command 0 validates a packed image staged in DDR and only then loads it into
// `slot`; command 1 adds that slot's scale * B(Ax) to the output of linear `lin` (run_hls_lora_unit.tcl
// reports II, latency and resources).
#include <cstdint>

#include "roma/lora_unit.h"

namespace {
constexpr int DIM = 576, KV_DIM = 192, FFN_DIM = 1536;
using Unit = roma::LoraUnit<1, DIM, KV_DIM, FFN_DIM, 2, 16, 0x7f, false>;
} // namespace

extern "C" int roma_syn_lora_unit(int command, int slot, int lin, const uint8_t *image, uint32_t bytes,
                                  const float x[FFN_DIM], float y[FFN_DIM]) {
  static Unit unit;
  roma::LoraCycles cyc;
  if (command == 0) {
    if (roma::lora_validate<Unit>(image, bytes, 1) != roma::LoraImageError::Ok) return 1;
    roma::lora_load(unit, slot, image, bytes, cyc);
    return 0;
  }
  if (lin < 0 || lin > 6) return 2;
  roma::lora_apply<Unit>(unit, slot, 0, lin, x, y, cyc); // one instance for every linear (run-time shapes)
  return 0;
}

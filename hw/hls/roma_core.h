// roma_core: the top function of the ROMA accelerator, its commands and its memory interfaces.
//
// This header is the contract between the HLS top (roma_core.cpp), the emulated board (the same code built
// by g++ into a shared library) and the host driver (host/roma_runtime/device), which addresses the
// AXI-Lite registers by these argument names, in this order, as Vitis HLS lays them out.
//
// One call runs one command. Model dimensions come from the build's generated roma_model.h.
//
// Commands (register `command`):
//   CMD_PREFILL  run tokens_in[0..n_tokens) at KV positions position..position+n_tokens-1 through all
//                layers, append their K/V rows, write the last token's logits to logits[0..VOCAB). With
//                sample_mode != 0 also sample one token from those logits into tokens_out[0].
//   CMD_DECODE   CMD_PREFILL with n_tokens == 1 (one decode step).
//   CMD_GENERATE autonomous decode: feed tokens_in[0] at `position`, then sample and feed back, until
//                n_tokens tokens are in tokens_out[0..) or eos_id was sampled (it is written and counted);
//                the last step's logits are in `logits`. The host is not on the per-token path.
//   CMD_LOAD_LORA   copy lora_bytes bytes of a packed adapter (host/roma_runtime/lora.py, PackedLora
//                   layout) from lora_staging into LoRA slot `lora_slot`; the active slot is unchanged.
//   CMD_SELECT_LORA make `lora_slot` the active adapter (LORA_NONE: no adapter).
//
// Sampler state: the on-chip PRNG (xorshift64*, golden/sampler.py) and the ring of recent ids persist
// across calls, so N single CMD_DECODE steps with sampling equal one CMD_GENERATE of N tokens. A call with
// seed_lo|seed_hi != 0 first reseeds the PRNG and clears the ring; 0/0 continues the current state.
//
// Memory (m_axi, each pointer an AXI-Lite address register; separate bundles so they can be separate ports):
//   tokens_in    int32  [n_tokens]                      token ids to run
//   tokens_out   int32  [n_tokens] (GENERATE) or [1]    sampled ids
//   logits       fp32   [VOCAB]                         logits of the last token run
//   kv_cache     fp16   [N_LAYERS][2][kv_capacity][KV_DIM] bit patterns; [.][0] keys, [.][1] values
//   lora_staging uint8  [lora_bytes]                    a packed adapter to load
//   ddr_weights  uint32 [...]                           ROM images of tensors the placement plan streams
//                                                       from DDR (same B-ROM layout as the on-chip ROMs)
//   status       uint32 [STATUS_WORDS]                  written at the end of every call (see Status)
#ifndef ROMA_CORE_H
#define ROMA_CORE_H

#include <cstdint>

namespace roma {

enum Command : uint32_t {
  CMD_PREFILL = 1,
  CMD_DECODE = 2,
  CMD_GENERATE = 3,
  CMD_LOAD_LORA = 4,
  CMD_SELECT_LORA = 5,
};

constexpr uint32_t LORA_NONE = 0xFFFFFFFFu;

// Words of the status buffer.
enum Status : uint32_t {
  STATUS_ERROR = 0,        // 0 = ok, else an ErrorCode; nothing was changed when it is not 0
  STATUS_TOKENS = 1,       // tokens run (PREFILL/DECODE) or generated (GENERATE)
  STATUS_CYCLES_LO = 2,    // estimated cycles of this call (cycle accounting of the pipelined loops)
  STATUS_CYCLES_HI = 3,
  STATUS_STAGE_CYCLES = 4, // per-stage estimated cycles, low 32 bits each, in the order of Stage
  STATUS_WORDS = 32,
};

enum ErrorCode : uint32_t {
  ERR_NONE = 0,
  ERR_BAD_COMMAND = 1,
  ERR_CONTEXT = 2,     // position + tokens > kv_capacity
  ERR_TOKEN_RANGE = 3, // a token id >= VOCAB
  ERR_LORA_SLOT = 4,   // slot out of range, or selecting an empty slot
  ERR_LORA_IMAGE = 5,  // bad magic, shapes or size in the staged adapter
};

}  // namespace roma

extern "C" void roma_core(
    // AXI-Lite scalars
    uint32_t command, uint32_t position, uint32_t n_tokens, uint32_t kv_capacity,
    uint32_t lora_slot, uint32_t lora_bytes,
    uint32_t sample_mode, float inv_temperature, uint32_t top_k, float top_p, float min_p,
    float repeat_penalty, uint32_t repeat_last_n, uint32_t seed_lo, uint32_t seed_hi, uint32_t eos_id,
    // m_axi
    const int32_t *tokens_in, int32_t *tokens_out, float *logits, uint16_t *kv_cache,
    const uint8_t *lora_staging, const uint32_t *ddr_weights, uint32_t *status);

#ifndef __SYNTHESIS__
// C simulation only (the emulated board): the ROM images that synthesis compiles into BRAM are loaded from
// a build folder (`roma compile` output) at start-up instead. Returns 0, or non-zero with a message in err.
extern "C" int roma_emu_load_build(const char *build_dir, char *err, int err_len);
#endif

#endif

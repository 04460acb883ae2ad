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
//   CMD_DECODE   CMD_PREFILL with n_tokens == 1 (one decode step; another n_tokens is ERR_BAD_COMMAND).
//   CMD_GENERATE autonomous decode: feed tokens_in[0] at `position`, then sample and feed back, until
//                n_tokens tokens are in tokens_out[0..) or eos_id was sampled (it is written and counted);
//                the last step's logits are in `logits`. The host is not on the per-token path. Positions
//                position..position+n_tokens-1 are run (the last sampled id is not), so the same context
//                check as PREFILL applies. sample_mode must not be SAMPLE_NONE (ERR_BAD_COMMAND).
//   n_tokens == 0 is ERR_BAD_COMMAND for PREFILL/DECODE/GENERATE.
//   CMD_LOAD_LORA   copy lora_bytes bytes of a packed adapter (host/roma_runtime/lora.py, PackedLora
//                   layout) from lora_staging into LoRA slot `lora_slot`; the active slot is unchanged. The
//                   build's LoRA unit (roma_model.h LORA_*) holds LORA_SLOTS slots of rank LORA_RANK with memory
//                   on the LORA_TARGET linears only, fp16 or int8 (LORA_INT8): an image of another storage type,
//                   a higher slot rank or a factor on another linear is ERR_LORA_IMAGE. A build with
//                   LORA_SLOTS == 0 has no LoRA unit: every slot is out of range (ERR_LORA_SLOT).
//   CMD_SELECT_LORA make `lora_slot` the active adapter (LORA_NONE: no adapter).
//   CMD_KV_LOAD  on-chip KV builds only (else ERR_BAD_COMMAND): copy rows position..position+n_tokens-1 of every
//                layer's keys and values from kv_cache into the on-chip KV cache (n_tokens == 0 is
//                ERR_BAD_COMMAND; the context check of PREFILL applies).
//   CMD_LOAD_WEIGHTS builds with URAM weight banks only (roma_model.h's URAM_WORDS > 0, else ERR_BAD_COMMAND): copy
//                the load image in uram_weights into the URAM banks, then read every word back from the banks and
//                write its checksum (weight_load.h) to STATUS_CHECKSUM. An image whose header (magic, version,
//                words, checksum) is not roma_model.h's URAM_WORDS/URAM_CHECKSUM, or whose words do not sum to that
//                checksum (a first pass over it), is refused (ERR_WEIGHTS_IMAGE) before anything is written. The
//                run commands of such a build are refused (ERR_WEIGHTS_NOT_LOADED) until a load succeeded: the
//                words read back sum to URAM_CHECKSUM (else the load ends in ERR_WEIGHTS_NOT_LOADED, the banks
//                written but not usable). The driver issues it once after the overlay loads (RomaOverlay).
//
// On-chip KV cache (a build's KV_ONCHIP_CTX > 0, roma_model.h; `roma compile --kv-onchip N`): the core holds
// KV_ONCHIP_CTX positions of every layer's fp16 keys and values in URAM/BRAM, and attention reads them from
// there instead of from kv_cache. The host's kv_cache buffer stays the source of truth: every row a run
// command computes is written to both (write-through), so the host reads, saves, truncates and restores its
// buffers as without the option. The core does not know which buffer its copy came from: before a run on a
// buffer, or at a position, whose rows 0..position-1 the on-chip copy does not hold (another buffer ran since,
// or the host wrote into this one), the host issues CMD_KV_LOAD for the missing rows (the driver tracks this,
// host/roma_runtime/device/driver.py). kv_capacity above KV_ONCHIP_CTX is ERR_CONTEXT.
//
// Sampling (register `sample_mode`, SampleMode): SAMPLE_NONE only writes logits (not valid for CMD_GENERATE),
// SAMPLE_GREEDY takes the argmax (ties -> lowest id), SAMPLE_RANDOM draws with inv_temperature, top_k (0: the
// pool of SAMPLER_K), top_p, min_p and the repetition penalty over the last repeat_last_n sampled ids
// (golden/sampler.py OnChipParams; inv_penalty = fp32(1/repeat_penalty) is computed on chip). Only sampled
// ids enter the ring of recent ids (fed-back or prompt tokens are not pushed again).
//
// Sampler state: the on-chip PRNG (xorshift64*, golden/sampler.py) and the ring of recent ids persist
// across calls, so N single CMD_DECODE steps with sampling equal one CMD_GENERATE of N tokens. A call with
// seed_lo|seed_hi != 0 first reseeds the PRNG and clears the ring; 0/0 continues the current state.
//
// Prefill runs in chunks of the build's roma_model.h PREFILL_CHUNK tokens (all layers per chunk; exact: a causal
// chunk split changes no value). The kv_capacity register may not exceed the build's CONTEXT, or KV_ONCHIP_CTX when the KV cache is
// on chip (ERR_CONTEXT).
//
// Memory (m_axi, each pointer an AXI-Lite address register; separate bundles so they can be separate ports):
//   tokens_in    int32  [n_tokens]                      token ids to run
//   tokens_out   int32  [n_tokens] (GENERATE) or [1]    sampled ids
//   logits       fp32   [VOCAB]                         logits of the last token run
//   kv_cache     fp16   [N_LAYERS][2][kv_capacity][KV_DIM] bit patterns; [.][0] keys, [.][1] values
//                                                       (on-chip KV builds: written through, read by CMD_KV_LOAD)
//                                                       ([KV_DIM / KV_PORTS] with two KV ports: each row's runs
//                                                       of KV_PORT_LANES alternate between the two buffers)
//   kv_cache_1   fp16   [N_LAYERS][2][kv_capacity][KV_DIM / 2] the second KV port's runs (roma_model.h KV_PORTS 2,
//                                                       the board's kv_ports); never read with one port (may
//                                                       be 0)
//   kv_cache_2   fp16   as kv_cache and kv_cache_1, for the odd positions: with two position sets (roma_model.h
//   kv_cache_3                                          KV_SETS 2, a board of four KV ports) position p's row is in
//                                                       set p % 2 (kv_cache and kv_cache_1, or kv_cache_2 and
//                                                       kv_cache_3) at row p / 2, each buffer [N_LAYERS][2]
//                                                       [ceil(kv_capacity / 2)][KV_DIM / KV_PORTS]; never read with
//                                                       one set (may be 0)
//   lora_staging uint8  [lora_bytes]                    a packed adapter to load
//   ddr_weights  uint32 [DDR_WORDS]                     the build's ddr_weights.bin: the tensors the placement
//                                                       plan streams from DDR (ddr_image.py's DDR image: header,
//                                                       then each tensor's B-ROM tile words in ROM order with
//                                                       each 32 steps' scale entries before their planes),
//                                                       read once per GEMV, one sequential pass per tile,
//                                                       through a port of roma_model.h's WEIGHT_PORT_BITS (the
//                                                       board's: 128 Zynq UltraScale+, 512 Alveo); unused (may
//                                                       be 0) when every tensor is on chip
//   ddr_weights_1..3 uint32 [DDR_WORDS]                 the same image for the build's other weight ports
//                                                       (roma_model.h WEIGHT_PORTS, the board's weight_ports: a
//                                                       DDR tensor's tiles stream through them at once, tile t
//                                                       through port t mod WEIGHT_PORTS); on Zynq the same
//                                                       buffer as ddr_weights (every HP port reaches the one DDR),
//                                                       on Alveo a copy in each port's bank; ports past
//                                                       WEIGHT_PORTS are never read (may be 0). ERR_DDR_WEIGHTS
//                                                       when a port the build reads lacks the image
//   uram_weights uint32 [URAM_WORDS]                    the build's uram_weights.bin, read by CMD_LOAD_WEIGHTS
//                                                       only (weight_load.h's load image: header, then each URAM
//                                                       tensor's bank words); shares the ddr_weights port
//                                                       (bundle gmem_weights); may be 0 for other commands
//   status       uint32 [STATUS_WORDS]                  written at the end of every call (see Status)
//
// Cycle counters (AXI-Lite outputs, `uint32_t &cycles_STAGE`: read-only registers, one per Stage, written at the
// end of every call): the cycles this call spent in each stage, low 32 bits. The core advances them by each
// kernel's cycle model (the iterations x II + depth of its pipelined loops, the constants its PIPELINE pragmas
// use), in C simulation and in synthesis alike, so the emulated board and a board report the same counts; the
// call's estimate is their sum.
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
  CMD_KV_LOAD = 6,
  CMD_LOAD_WEIGHTS = 7,
};

constexpr uint32_t LORA_NONE = 0xFFFFFFFFu;

enum SampleMode : uint32_t {
  SAMPLE_NONE = 0,
  SAMPLE_GREEDY = 1,
  SAMPLE_RANDOM = 2,
};

// Hardware parameters of the top. The LoRA unit's size (slots, slot rank, target linears, storage type) is the
// build's: roma_model.h's LORA_SLOTS, LORA_RANK, LORA_TARGET, LORA_INT8 (`roma compile --lora-slots ...`); so are the
// sampler's lanes (roma_model.h SAMPLER_LANES, the board's: logits per cycle, timing only).
constexpr int SAMPLER_K = 64;     // sampler pool (top-k maximum); golden/sampler.py reads it
constexpr int SAMPLER_RING = 64;  // recent ids for the repetition penalty; golden/sampler.py reads it

// Words of the status buffer.
enum Status : uint32_t {
  STATUS_ERROR = 0,        // 0 = ok, else an ErrorCode; nothing was changed when it is not 0 (but for the
                           // read-back failure of CMD_LOAD_WEIGHTS)
  STATUS_TOKENS = 1,       // tokens run (PREFILL/DECODE), generated (GENERATE) or rows loaded (KV_LOAD)
  STATUS_CHECKSUM = 2,     // CMD_LOAD_WEIGHTS: the checksum of the words read back from the URAM banks
  STATUS_WORDS = 32,       // (the other words are written as 0)
};

// Stages of the cycle estimate (the registers cycles_STAGE, in this order). The estimate is the sum of the
// kernels' cycle models (Cycles, LayerCycles, SamplerCycles, LoraCycles): kernels are counted one after the
// other, the tiles of one matrix in parallel, except where two run at once, counted as the longer of the two: a
// layer's gate and up on two engines (ffn_pair); in a prefill, a block's GEMVs beside another block's elementwise
// units (STAGE_NORM, STAGE_ROPE, STAGE_ACTIVATION and STAGE_RESIDUAL then hold what the GEMV does not hide), and a
// block's queries beside the FFN of the blocks before it where the memory serves both (STAGE_ATTENTION then holds
// what the FFN does not hide).
enum Stage : uint32_t {
  STAGE_EMBEDDING = 0,  // embedding row lookups
  STAGE_NORM = 1,       // RMSNorm (layers and final)
  STAGE_ACT_QUANT = 2,  // int8 activation quantizer in front of the layers' ROM GEMVs
  STAGE_GEMV = 3,       // the layers' B-ROM tile GEMVs (candidates + ROM stream; a DDR-streamed tensor's
                        // tiles cost their blocks at the slower of the WEIGHT_PORT_BITS port and the lanes,
                        // brom_ddr.h DdrStream)
  STAGE_LORA = 4,       // LoRA unit: deltas of the active slot, and CMD_LOAD_LORA copies
  STAGE_ROPE = 5,       // RoPE angles and rotations
  STAGE_ATTENTION = 6,  // KV writes, scores, softmax, P*V (beyond the FFN beside it in a prefill)
  STAGE_ACTIVATION = 7, // SwiGLU
  STAGE_RESIDUAL = 8,   // residual adds
  STAGE_LM_HEAD = 9,    // LM head: activation quantizer + GEMV over the vocabulary (ROM or DDR-streamed), and
                        // writing the logits to the host (LOGITS_OUT, once per run command)
  STAGE_SAMPLER = 10,   // on-chip sampler
  STAGE_KV_LOAD = 11,   // CMD_KV_LOAD: DDR rows into the on-chip KV cache (the run commands' writes to both
                        // places are under STAGE_ATTENTION)
  STAGE_WEIGHT_LOAD = 12, // CMD_LOAD_WEIGHTS: the image's check pass, the copy into the URAM banks, the read-back
  STAGE_COUNT = 13,
};

enum ErrorCode : uint32_t {
  ERR_NONE = 0,
  ERR_BAD_COMMAND = 1,
  ERR_CONTEXT = 2,     // position + tokens > kv_capacity, or kv_capacity > CONTEXT (KV_ONCHIP_CTX when on chip)
  ERR_TOKEN_RANGE = 3, // a token id >= VOCAB
  ERR_LORA_SLOT = 4,   // slot out of range, or selecting an empty slot
  ERR_LORA_IMAGE = 5,  // bad magic, shapes or size in the staged adapter, or one the build's LoRA unit cannot hold
  ERR_NOT_LOADED = 6,  // C simulation only: no build loaded (roma_emu_load_build not called or failed)
  ERR_DDR_WEIGHTS = 7, // the build streams tensors from DDR and ddr_weights does not hold its image
                       // (header magic, version, words or CRC differ from roma_model.h's DDR_WORDS/DDR_CRC;
                       // C simulation also checks the payload's CRC once per new buffer or build load)
  ERR_WEIGHTS_NOT_LOADED = 8, // a run command before CMD_LOAD_WEIGHTS succeeded (a build with URAM weight banks),
                              // or a load whose words read back from the banks differ (see CMD_LOAD_WEIGHTS)
  ERR_WEIGHTS_IMAGE = 9,      // CMD_LOAD_WEIGHTS: uram_weights does not hold this build's URAM load image
};

}  // namespace roma

extern "C" void roma_core(
    // AXI-Lite scalars
    uint32_t command, uint32_t position, uint32_t n_tokens, uint32_t kv_capacity,
    uint32_t lora_slot, uint32_t lora_bytes,
    uint32_t sample_mode, float inv_temperature, uint32_t top_k, float top_p, float min_p,
    float repeat_penalty, uint32_t repeat_last_n, uint32_t seed_lo, uint32_t seed_hi, uint32_t eos_id,
    // AXI-Lite outputs: the cycle counters, one per Stage in its order
    uint32_t &cycles_embedding, uint32_t &cycles_norm, uint32_t &cycles_act_quant, uint32_t &cycles_gemv,
    uint32_t &cycles_lora, uint32_t &cycles_rope, uint32_t &cycles_attention, uint32_t &cycles_activation,
    uint32_t &cycles_residual, uint32_t &cycles_lm_head, uint32_t &cycles_sampler, uint32_t &cycles_kv_load,
    uint32_t &cycles_weight_load,
    // m_axi
    const int32_t *tokens_in, int32_t *tokens_out, float *logits, uint16_t *kv_cache, uint16_t *kv_cache_1,
    uint16_t *kv_cache_2, uint16_t *kv_cache_3, const uint8_t *lora_staging, const uint32_t *ddr_weights, const uint32_t *ddr_weights_1,
    const uint32_t *ddr_weights_2, const uint32_t *ddr_weights_3, const uint32_t *uram_weights, uint32_t *status);

#ifndef __SYNTHESIS__
// C simulation only: threads of the emulated board's parallel loops (0: OpenMP's default). Returns the count used.
extern "C" int roma_emu_set_threads(int threads);
// C simulation only: the tile GEMVs run since the library was loaded, by path: the SIMD kernel on codes unpacked
// once (brom_tile_gemv_packed, the fast path every tile should take), and the slow fallbacks for a tile that could
// not be packed: a ROM tile evaluated from its arrays (brom_tile_gemv_csim), a DDR tensor streamed from the buffer
// (brom_ddr_gemv). Writes min(n, GEMV_PATH_COUNT) counts in GemvPath order to out; returns GEMV_PATH_COUNT.
enum GemvPath : int { GEMV_PATH_PACKED = 0, GEMV_PATH_ROM_UNPACKED = 1, GEMV_PATH_DDR_STREAM = 2, GEMV_PATH_COUNT = 3 };
extern "C" int roma_emu_gemv_paths(uint64_t *out, int n);
// C simulation only (the emulated board): the ROM images that synthesis compiles into BRAM are loaded from
// a build folder (`roma compile` output) at start-up instead (the URAM banks are not: as on a board, they hold
// nothing until CMD_LOAD_WEIGHTS). Returns 0, or non-zero with a message in err.
extern "C" int roma_emu_load_build(const char *build_dir, char *err, int err_len);
// C simulation only: the model dimensions compiled in (roma_model.h), see roma_core.cpp. Returns their count.
extern "C" int roma_model_dims(int32_t *out, int n);
#endif

#endif

// roma_core: the top of the ROMA accelerator (contract: roma_core.h; model dimensions: the build's generated
// roma_model.h, found on the include path: -I BUILD_DIR).
//
// Dataflow of one token through the layers (GoldenModel.forward, golden/model.py):
//   embedding_row (the embedding ROM) -> RoPE's angles of the chunk's positions (rope_angles, once for every layer)
//   -> per layer l (a run-time loop over one layer() instance; its weights
//   are its words in the engines' ROM banks, weight-stationary):
//     rms_norm -> act_quant (once: wk and wv reuse wq's codes) + B-ROM GEMV for wq, wk, wv (+ LoRA unit deltas on
//     the fp32 input) -> rope_qk
//     -> kv_write of the chunk's K/V rows into the DDR KV cache (and the on-chip one) + attention over rows 0..pos
//     -> act_quant + GEMV wo (+LoRA) -> residual -> rms_norm -> act_quant (once) + GEMV w_gate, w_up (+LoRA) -> swiglu
//     -> GEMV w_down (+LoRA) -> residual
//   -> final rms_norm -> act_quant + LM-head GEMV (tied: the embedding ROM itself) -> logits -> sampler.
// A prefill runs PREFILL_CHUNK tokens per pass through the layers (the golden writes all K/V rows of a chunk,
// then attends causally; chunking is exact), and each linear of a chunk in blocks of TOKEN_LANES tokens (the board's
// token_lanes): a layers' GEMV engine computes a block in one pass over its weights, TOKEN_LANES datapaths per PE
// or port on each word it reads (weights stationary), each token bit for bit as alone; a decode token takes one.
// Blocks overlap in a layer: a block's q/k/v GEMVs run beside the next block's norm and activation codes and the
// previous block's RoPE (LAYER_QKV), a block's attention beside the FFN of the two before it, and in that FFN one
// block's GEMVs beside the other's elementwise units and the codes of its next GEMV (LAYER_ATT_FFN, ffn_step): two
// activation quantizers, one right before a GEMV, one beside the GEMV before it (quantize_block, quantize_ahead),
// write codes any engine reads. A decode token scores its cached keys beside its k and v
// GEMVs where those outlast the second score call that costs (token_qkv, scores_beside_kv).
//
// One instance of each kernel, shared by all layers (issue 19): the layer index is a run-time loop variable, and
// every linear of every layer runs through linear(l, lin, ...), one function called at eight places (the seven
// linears of layer(), the head) and limited to one instance (ALLOCATION), on a GEMV engine, gemv_unit<U>, one per
// configuration the build uses (roma_model.h's UNIT_*: bits, group, scale format (SCALES_*: fp16, or q8: 8-bit
// steps with per-row exponents, brom_tile.h), tiles, and tier (BRAM ROM, URAM, DDR), from the per-layer BITS_*/
// GROUP_*/SCALES_*/TILES_*/DDR_*/URAM_* arrays; the embedding and an untied output have engines of their own, except
// an lm head streamed from DDR that the plan puts on the layers' DDR engine of its configuration, head_on_layers: that
// engine takes the head's tiles at run time, Unit::HEAD_TILES).
// An engine takes the tensor's rows and columns at run time (brom_gemv_banks_rt, brom_ddr_gemv_rt) and is sized by
// the largest; a uniform build has one engine for all layers' linears (one per tier), a mixed one one per width
// it uses, and where a BRAM ROM and a URAM engine of one configuration hold a layer's w_gate and its other linears
// (the FFN pair) the two are one engine of two banks (TWO_BANKS). linear() compares the tensor's engine index with
// each engine's, so every engine is called at one place, and applies the LoRA delta at one place. An on-chip
// engine's weights are its bank [TILES][words], each tile's words of all its tensors stacked (Unit<U>;
// BANK_OFFSETS: where each tensor starts), or each tensor's tiles streamed from its DDR offset. roma_core limits
// forward() to one instance (ALLOCATION), so the two run paths share it. Only the configurations present are
// instantiated.
//
// Placement: roma_model.h gives each tensor's tier (DDR_*: -1 on chip, else its word offset in the DDR weight
// image; URAM_*: -1 unless in URAM, else its offset in the URAM load image). An on-chip tensor is words of its
// engine's bank: a BRAM ROM (below) or a URAM bank (the plan's "URAM-load-once": UltraScale+ URAM has no initial
// contents, so CMD_LOAD_WEIGHTS writes the banks from the load image in uram_weights, one word per cycle, after
// checking the image's words against URAM_CHECKSUM, then reads every word back into the checksum it reports;
// run commands refuse until a load succeeded; load_uram_bank binds the banks to URAM, 64-bit words, and
// STAGE_WEIGHT_LOAD counts the three passes); a DDR-streamed one (the placement plan's "DDR-stream", for the
// layers and lm head that do not fit the board) is read through the weight ports (`ddr_weights`,
// `ddr_weights_1`, ...: roma_model.h's WEIGHT_PORTS m_axi bundles, each port holding the whole image), one
// sequential pass per tile per GEMV, a tile per port at once (brom_ddr_gemv_rt; its embedding rows by
// embedding_row_ddr through the first port), with the same integer dots and fp32 sequence as in ROM, so its
// outputs are bit-identical. A port is roma_model.h's WEIGHT_PORT_BITS wide (the board's memory port: 128 bits on
// Zynq UltraScale+, 512 on Alveo); a round of tiles costs its chunks at the slower of the port (a port word per
// chunk, or a step's words) and the accumulators, a chunk's steps in parallel lanes (brom_ddr.h: DdrStream), counted
// under STAGE_GEMV (layers) and STAGE_LM_HEAD like the ROM GEMVs. Run commands first check each port's image
// header (magic, version, words, CRC) against roma_model.h's DDR_WORDS/DDR_CRC: ERR_DDR_WEIGHTS when the host has
// not loaded this build's ddr_weights.bin. The RMSNorm
// weights of every layer stay on chip (norms.dat).
//
// On-chip KV cache (roma_model.h's KV_ONCHIP_CTX > 0, `roma compile --kv-onchip N`): g_kv_chip holds every
// layer's keys and values for KV_ONCHIP_CTX positions (URAM or BRAM as the plan reserved it,
// ROMA_KV_ONCHIP_IMPL; reshaped to ATT_SIMD fp16 per word, the attention loops' width), attention reads it
// (KvPlace::OnChip: RAM latency instead of a DDR burst per pass), and kv_write writes each new row to it and to
// kv_cache in the same loop, so the host's buffer stays the source of truth; CMD_KV_LOAD (kv_load, counted
// under STAGE_KV_LOAD) refills it from kv_cache when the host switches buffers (roma_core.h). The C simulation
// runs the same arrays through the same fast attention path. Without the option g_kv_chip has one row and is
// never referenced.
//
// KV ports (roma_model.h KV_PORTS 2, from the board's kv_ports: an Alveo card's DDR banks): a DDR KV cache's rows are
// split over kv_cache and kv_cache_1, runs of KV_PORT_LANES elements alternating (attention.h), so attention reads
// both banks at once; with one port kv_cache_1 is never read. KV sets (KV_SETS 2, a U250's four KV ports): position
// p's row is in set p % 2, set 1's in kv_cache_2 and kv_cache_3, so decode reads two rows a cycle, one per token
// lane; with one set kv_cache_2 and kv_cache_3 are never read.
//
// ROMs: per ROM engine a bank of the bit planes and two scale ROM arrays by its format (fp16: scales and mins;
// q8: params, the per-group steps, and exps, the per-row exponents; brom_tile.h), [TILES][words] of its tensors.
// Synthesis (__SYNTHESIS__) defines the BRAM ROM banks' static const arrays from the build's .dat files
// (roma_model.h writes each bank's initialiser, per tile that tile's section of each tensor's .dat, with
// roma_rom_define.h's declarators; DDR tensors have no ROM, URAM banks no initialiser); C simulation (the emulated
// board) has the same arrays writable and fills each tensor's words from its NAME.bin image (CRC-checked) in
// roma_emu_load_build; its URAM banks,
// as on a board, only by CMD_LOAD_WEIGHTS. The compute code reads the same arrays in both; only the GEMV
// loop order differs: C simulation evaluates the tiles with brom_tile_gemv_packed from codes unpacked once
// (g_packed, per layer and linear; 16 rows per SIMD step, bit-identical to both synthesis datapaths: tb_brom_tile
// checks it): a ROM tensor's at load, a URAM tensor's from its bank words after CMD_LOAD_WEIGHTS, a DDR tensor's
// from the ddr_weights buffer at the first run command that sees a new image (keyed by the buffer's address and
// the load; the payload's CRC is checked then), or brom_tile_gemv_csim /
// brom_ddr_gemv_rt for a tile that could not be packed (same bits, far slower: roma_emu_gemv_paths counts the tile
// GEMVs by path, so the tests see every one take the packed path).
#ifndef __SYNTHESIS__
#pragma GCC visibility push(default) // the emulated board's library exports only the C API of roma_core.h
#endif
#include "roma_core.h"
#ifndef __SYNTHESIS__
#pragma GCC visibility pop
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "roma/act_quant.h"
#include "roma/activation.h"
#include "roma/attention.h"
#include "roma/brom_ddr.h"
#include "roma/brom_tile.h"
#include "roma/embedding.h"
#include "roma/layer_cycles.h"
#include "roma/lora_unit.h"
#include "roma/norm.h"
#include "roma/rope.h"
#include "roma/sampler.h"
#include "roma/types.h"
#include "roma/weight_load.h"
#include "roma_model.h"

#ifndef __SYNTHESIS__
#include <cstdio>
#include <string>
#include <vector>

#include "roma/csim/activation.h"
#include "roma/csim/attention.h"
#include "roma/csim/brom_ddr.h"
#include "roma/csim/brom_tile.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#endif

namespace rm = roma_model;
using namespace roma;

#ifndef ROMA_DATAPATH
#define ROMA_DATAPATH LutSelect // the synthesis datapath of the B-ROM tiles (LutSelect or DspMac)
#endif

namespace {

constexpr int QDIM = rm::N_HEADS * rm::HEAD_DIM;
constexpr int MAX_T = rm::PREFILL_CHUNK; // the board's (boards.json prefill_chunk): the chunk's buffers' rows
constexpr int MAX_TOKENS = rm::CONTEXT;                      // tokens of one command at most (LOOP_TRIPCOUNT)
constexpr int MAX_CHUNKS = (rm::CONTEXT + MAX_T - 1) / MAX_T; // prefill chunks of one command at most
// the KV cache's m_axi port width (the board's, roma_model.h) and attention's fp16 lanes: as many as one beat of
// it carries, halved until they divide a head
constexpr int KV_PORT_BITS = rm::KV_PORT_BITS;
constexpr int att_simd(int lanes) { return rm::HEAD_DIM % lanes == 0 ? lanes : att_simd(lanes / 2); }
// ... over the KV ports (roma_model.h KV_PORTS: the board's kv_ports where a DDR cache's rows split into whole runs of
// one port's lanes, else 1; artifact/kv_layout.py picks it): attention reads the ports side by side
static_assert(rm::KV_PORTS == 1 || rm::KV_PORTS == MAX_KV_PORTS, "one or MAX_KV_PORTS KV ports");
// ... and their sets (roma_model.h KV_SETS, position p's row in set p % 2; attention.h, KV sets): two for a DDR cache
// where set 1's arguments have bundles of their own (ROMA_KV_PORTS 4), so that decode reads both sets at once, one
// per token lane. PV's partial sums are laid out for them also with an on-chip cache (one set: static_assert below),
// so that a build gives the same bits with its KV cache on chip or in DDR.
constexpr int PV_SETS = ROMA_KV_PORTS > MAX_KV_PORTS ? MAX_KV_SETS : 1;
static_assert(rm::KV_ONCHIP_CTX > 0 || rm::KV_SETS == PV_SETS, "a DDR cache's sets are the board's");
static_assert(rm::KV_PORTS * rm::KV_SETS <= ROMA_KV_PORTS, "the build's KV ports among the board's (its m_axi KV "
                                                           "bundles)");
constexpr int ATT_SIMD = att_simd(rm::KV_PORT_BITS / 16) * rm::KV_PORTS;
static_assert(rm::HEAD_DIM % ATT_SIMD == 0 && rm::KV_PORT_LANES * rm::KV_PORTS == ATT_SIMD,
              "the KV ports' runs (roma_model.h KV_PORT_LANES) as attention reads them");
// The GEMV output buffers take ROMA_GEMV_PE consecutive rows a cycle from the on-chip engines (one per PE; two per PE
// under decode's row split, on a build with token lanes: brom_gemv_tiles_rt) and WEIGHT_PORTS from a DDR engine (one
// per port): partitioned cyclic by the power of two covering both.
constexpr int pow2_at_least(int n, int p = 1) { return p >= n ? p : pow2_at_least(n, 2 * p); }
constexpr int lanes_max(int a, int b) { return a > b ? a : b; }
constexpr int GEMV_OUT_LANES =
    pow2_at_least(lanes_max(ROMA_GEMV_PE * (rm::TOKEN_LANES > 1 ? 2 : 1), rm::WEIGHT_PORTS));
// The GEMV inputs are read GEMV_IN_LANES per cycle at most by the engines' activation quantizers (roma_model.h
// ROMA_ACT_LANES, the board's act_lanes; an engine of a smaller group reads its group: Unit::ACT), so they are
// partitioned cyclic by GEMV_IN_LANES where they are declared (h0/h1, att0/att1); gate is also written ROMA_GEMV_PE
// rows per cycle (GEMV_OUT_LANES): cyclic by the larger of the two (powers of two: a multiple of both).
constexpr int GEMV_IN_LANES = ROMA_ACT_LANES;
static_assert(GEMV_IN_LANES >= QUAD && (GEMV_IN_LANES & (GEMV_IN_LANES - 1)) == 0,
              "ROMA_ACT_LANES: a power of two >= 4");
constexpr int GEMV_CHAIN_LANES = lanes_max(GEMV_OUT_LANES, GEMV_IN_LANES);
// The elementwise units' lanes (roma_model.h: the board's elementwise_lanes): RMSNorm's sum of squares and normalize
// loop (norm.h), SwiGLU, RoPE's rotation (pairs: 2 * ROPE_LANES values) and the residual add.
// Every buffer they read or write is partitioned cyclic by at least its lanes where it is declared (powers of two:
// the larger of two factors is a multiple of both).
constexpr int NORM_LANES = ROMA_NORM_LANES, SWIGLU_LANES = ROMA_SWIGLU_LANES, ROPE_LANES = ROMA_ROPE_LANES,
              RESIDUAL_LANES = ROMA_RESIDUAL_LANES;
// g_x (the residual stream): read by rms_norm (NORM_LANES), read and written by residual_add; g_norms,
// rms_norm's weights, are read NORM_LANES per cycle
constexpr int STREAM_LANES = lanes_max(NORM_LANES, RESIDUAL_LANES);
// h: written by rms_norm, read by the GEMV's activation quantizer
constexpr int NORM_OUT_LANES = lanes_max(GEMV_IN_LANES, NORM_LANES);
// qr, kr: written by the GEMV, rotated by RoPE; g_q, g_k: RoPE's outputs
constexpr int ROPE_IN_LANES = lanes_max(GEMV_OUT_LANES, 2 * ROPE_LANES);
constexpr int ROPE_OUT_LANES = 2 * ROPE_LANES;
constexpr int ROPE_PAIRS = rm::HEAD_DIM / 2; // RoPE's angles of a position: a pair of a head each
// o: written by the GEMV, added by residual_add
constexpr int RESIDUAL_IN_LANES = lanes_max(GEMV_OUT_LANES, RESIDUAL_LANES);
// gate (SwiGLU's output too) and up: written by the GEMV, gate read by w_down's quantizer
constexpr int GATE_LANES = lanes_max(GEMV_CHAIN_LANES, SWIGLU_LANES);
constexpr int UP_LANES = lanes_max(GEMV_OUT_LANES, SWIGLU_LANES);
constexpr bool KV_ONCHIP = rm::KV_ONCHIP_CTX > 0;
typedef std::integral_constant<bool, KV_ONCHIP> KvOnChip; // selects overloads: only the build's KV code is instantiated
static_assert(rm::KV_ONCHIP_CTX >= 0 && rm::KV_ONCHIP_CTX <= rm::CONTEXT, "the on-chip KV fits the context");
static_assert(rm::KV_ONCHIP_CTX == 0 || (rm::KV_PORTS == 1 && rm::KV_SETS == 1),
              "an on-chip KV cache: one port, one set");
constexpr uint32_t KV_LIMIT = KV_ONCHIP ? rm::KV_ONCHIP_CTX : rm::CONTEXT; // the largest kv_capacity
constexpr int KV_CHIP_ROWS = KV_ONCHIP ? rm::KV_ONCHIP_CTX : 1;

enum Lin : int { L_WQ = 0, L_WK, L_WV, L_WO, L_GATE, L_UP, L_DOWN, L_EMBD, L_OUTPUT };
constexpr int HEAD_LIN = rm::TIED_EMBEDDINGS ? L_EMBD : L_OUTPUT;
// The DDR weight image through the build's weight ports (roma_model.h WEIGHT_PORTS): ddr_weights, ddr_weights_1..3,
// each holding the whole image (those past WEIGHT_PORTS are never read). Four arguments down to the DDR engine, not
// an array: Vitis HLS keeps a top-level pointer's m_axi bundle only through arguments of its own.
#define DDR_PORT_PARAMS const rom_word_t *ddr, const rom_word_t *ddr1, const rom_word_t *ddr2, const rom_word_t *ddr3
#define DDR_PORTS ddr, ddr1, ddr2, ddr3
// Token lanes (roma_model.h TOKEN_LANES, the board's token_lanes): a linear takes a block of n <= TT prefill tokens and
// each layers' GEMV engine serves them in one pass over its weights (weights stationary; a head engine has one
// lane). A block's inputs and outputs are four pointers each, token c's x_c and y_c (no pointers to pointers):
// every lane writes its own buffer in the same cycle. TOKEN_ROWS passes the rows of a [TT][n] buffer (the first
// one for the lanes past TT, never used).
constexpr int TT = rm::TOKEN_LANES;
static_assert(TT >= 1 && TT <= MAX_TOKEN_LANES, "one to MAX_TOKEN_LANES token lanes");
constexpr int RESIDUAL_ADDS = 2 * TT; // a token's two residual adds, per lane (the ALLOCATION limit)
// The lanes past the first, where the build has them (0: none): a block's elementwise units are called once per lane,
// a call site each, so each lane has its instance (as the footprint counts them) and its rows' banks
constexpr int TC1 = TT > 1 ? 1 : 0, TC2 = TT > 2 ? 2 : 0, TC3 = TT > 3 ? 3 : 0;
#define TOKEN_INS const float *x0, const float *x1, const float *x2, const float *x3
#define TOKEN_IN_ARGS x0, x1, x2, x3
#define TOKEN_OUTS float *y0, float *y1, float *y2, float *y3
#define TOKEN_OUT_ARGS y0, y1, y2, y3
// the second tensor of a pair on the two-bank engine (w_gate beside w_up: ffn_pair), token c's output z_c
#define PAIR_OUTS float *z0, float *z1, float *z2, float *z3
#define PAIR_OUT_ARGS z0, z1, z2, z3
#define TOKEN_ROWS(b) b[0], b[TT > 1 ? 1 : 0], b[TT > 2 ? 2 : 0], b[TT > 3 ? 3 : 0]
inline const float *token_in(int c, TOKEN_INS) {
#pragma HLS INLINE
  return c == 0 ? x0 : c == 1 ? x1 : c == 2 ? x2 : x3;
}
static_assert(rm::WEIGHT_PORTS >= 1 && rm::WEIGHT_PORTS <= 4 && rm::WEIGHT_PORTS == ROMA_WEIGHT_PORTS,
              "one to four weight ports");

constexpr int lin_rows(int lin) {
  return lin == L_WQ ? QDIM : (lin == L_WK || lin == L_WV) ? rm::KV_DIM : (lin == L_GATE || lin == L_UP) ? rm::FFN_DIM
         : lin >= L_EMBD ? rm::VOCAB : rm::DIM;
}
constexpr int lin_cols(int lin) { return lin == L_WO ? QDIM : lin == L_DOWN ? rm::FFN_DIM : rm::DIM; }
constexpr int lin_bits(int l, int lin) {
  return lin == L_WQ ? rm::BITS_WQ[l] : lin == L_WK ? rm::BITS_WK[l] : lin == L_WV ? rm::BITS_WV[l]
         : lin == L_WO ? rm::BITS_WO[l] : lin == L_GATE ? rm::BITS_W_GATE[l] : lin == L_UP ? rm::BITS_W_UP[l]
         : lin == L_DOWN ? rm::BITS_W_DOWN[l] : lin == L_EMBD ? rm::BITS_TOKEN_EMBD : rm::BITS_OUTPUT;
}
constexpr int lin_group(int l, int lin) {
  return lin == L_WQ ? rm::GROUP_WQ[l] : lin == L_WK ? rm::GROUP_WK[l] : lin == L_WV ? rm::GROUP_WV[l]
         : lin == L_WO ? rm::GROUP_WO[l] : lin == L_GATE ? rm::GROUP_W_GATE[l] : lin == L_UP ? rm::GROUP_W_UP[l]
         : lin == L_DOWN ? rm::GROUP_W_DOWN[l] : lin == L_EMBD ? rm::GROUP_TOKEN_EMBD : rm::GROUP_OUTPUT;
}
constexpr ScaleFormat lin_scales(int l, int lin) {
  return (ScaleFormat)(lin == L_WQ ? rm::SCALES_WQ[l] : lin == L_WK ? rm::SCALES_WK[l] : lin == L_WV ? rm::SCALES_WV[l]
         : lin == L_WO ? rm::SCALES_WO[l] : lin == L_GATE ? rm::SCALES_W_GATE[l] : lin == L_UP ? rm::SCALES_W_UP[l]
         : lin == L_DOWN ? rm::SCALES_W_DOWN[l] : lin == L_EMBD ? rm::SCALES_TOKEN_EMBD : rm::SCALES_OUTPUT);
}
constexpr long long lin_ddr(int l, int lin) {
  return lin == L_WQ ? rm::DDR_WQ[l] : lin == L_WK ? rm::DDR_WK[l] : lin == L_WV ? rm::DDR_WV[l]
         : lin == L_WO ? rm::DDR_WO[l] : lin == L_GATE ? rm::DDR_W_GATE[l] : lin == L_UP ? rm::DDR_W_UP[l]
         : lin == L_DOWN ? rm::DDR_W_DOWN[l] : lin == L_EMBD ? rm::DDR_TOKEN_EMBD : rm::DDR_OUTPUT;
}
constexpr long long lin_uram(int l, int lin) {
  return lin == L_WQ ? rm::URAM_WQ[l] : lin == L_WK ? rm::URAM_WK[l] : lin == L_WV ? rm::URAM_WV[l]
         : lin == L_WO ? rm::URAM_WO[l] : lin == L_GATE ? rm::URAM_W_GATE[l] : lin == L_UP ? rm::URAM_W_UP[l]
         : lin == L_DOWN ? rm::URAM_W_DOWN[l] : lin == L_EMBD ? rm::URAM_TOKEN_EMBD : rm::URAM_OUTPUT;
}
constexpr int lin_tiles(int l, int lin) {
  return lin == L_WQ ? rm::TILES_WQ[l] : lin == L_WK ? rm::TILES_WK[l] : lin == L_WV ? rm::TILES_WV[l]
         : lin == L_WO ? rm::TILES_WO[l] : lin == L_GATE ? rm::TILES_W_GATE[l] : lin == L_UP ? rm::TILES_W_UP[l]
         : lin == L_DOWN ? rm::TILES_W_DOWN[l] : lin == L_EMBD ? rm::TILES_TOKEN_EMBD : rm::TILES_OUTPUT;
}

// The GEMV engine of each tensor (roma_model.h's UNIT_*: one engine per configuration of the layers' linears,
// shared by every layer and linear of that configuration; the embedding and an untied output are engines of their
// own). A tied output is the embedding's tensor (HEAD_LIN == L_EMBD): L_OUTPUT has no tensor of its own then.
constexpr int lin_unit(int l, int lin) {
  return lin == L_WQ ? rm::UNIT_WQ[l] : lin == L_WK ? rm::UNIT_WK[l] : lin == L_WV ? rm::UNIT_WV[l]
         : lin == L_WO ? rm::UNIT_WO[l] : lin == L_GATE ? rm::UNIT_W_GATE[l] : lin == L_UP ? rm::UNIT_W_UP[l]
         : lin == L_DOWN ? rm::UNIT_W_DOWN[l] : lin == L_EMBD ? rm::UNIT_TOKEN_EMBD : rm::UNIT_OUTPUT;
}
constexpr int lin_layers(int lin) { return lin >= L_EMBD ? 1 : rm::N_LAYERS; } // tensors of linear lin
constexpr bool lin_present(int lin) { return lin != L_OUTPUT || HEAD_LIN == L_OUTPUT; }
// The activation codes of a block's GEMV inputs (act_quant.h: int8 codes, an fp32 scale per group), quantized for a
// tensor's group into a buffer its engine reads (quantize_block, quantize_ahead): a row per token lane of CODE_COLS
// codes (the widest input) and CODE_GROUPS scales (at the smallest group), so that one buffer serves every engine.
// group_used: whether a GEMV of the layers (layers_only) or also the head's has that group (an untied embedding is
// only looked up): the quantizers built are one per such group and token lane.
constexpr int CODE_COLS = lanes_max(rm::DIM, rm::FFN_DIM);
constexpr bool group_used(int group, bool layers_only) {
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l)
      if (lin_present(lin) && (lin < L_EMBD || (!layers_only && lin == HEAD_LIN)) && lin_group(l, lin) == group)
        return true;
  return false;
}
constexpr int CODE_GROUPS = CODE_COLS / (group_used(32, false) ? 32 : group_used(64, false) ? 64 : 128);
// activations per cycle into a quantizer of `group` and its engine's candidate stage: the build's (GEMV_IN_LANES),
// at most a group (both stages work within one group a cycle)
constexpr int act_lanes(int group) { return GEMV_IN_LANES < group ? GEMV_IN_LANES : group; }
// One tile of tensor (l, lin): its rows and its bank words (planes, scale entries, aux entries: q8's are per row).
constexpr int tile_rows(int l, int lin) { return lin_rows(lin) / lin_tiles(l, lin); }
constexpr int tile_params(int l, int lin) { return lin_cols(lin) / lin_group(l, lin) * tile_rows(l, lin); }
constexpr int tile_words(int l, int lin, int kind) {
  return kind == 0 ? tile_params(l, lin) * lin_bits(l, lin) * lin_group(l, lin) / ROM_WORD_BITS
         : kind == 1 ? tile_params(l, lin)
         : lin_scales(l, lin) == ScaleFormat::Q8 ? tile_rows(l, lin) : tile_params(l, lin);
}
enum BankKind : int { BANK_PLANES = 0, BANK_PARAMS = 1, BANK_AUX = 2 };

// The first tensor of engine u (its configuration is the engine's: unit_consistent checks the others), as
// lin * N_LAYERS + l; -1 when no tensor uses u.
constexpr int unit_first(int u) {
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l)
      if (lin_present(lin) && lin_unit(l, lin) == u) return lin * rm::N_LAYERS + l;
  return -1;
}
constexpr int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }
// The largest number every row count per tile of engine u's tensors is a multiple of (brom_ddr.h: lanes).
constexpr int unit_row_align(int u) {
  int v = 0;
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l)
      if (lin_present(lin) && lin_unit(l, lin) == u) v = gcd(tile_rows(l, lin), v);
  return v > 0 ? v : 1;
}
// Over the tensors of engine u: the largest (what = 0) and smallest (1) rows per tile, the largest columns (2), and
// the bank words of its on-chip tensors per tile (3 + BankKind).
constexpr long long unit_stat(int u, int what) {
  long long v = what == 1 ? 1LL << 40 : 0;
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l) {
      if (!lin_present(lin) || lin_unit(l, lin) != u) continue;
      const long long x = what == 0 || what == 1 ? tile_rows(l, lin) : what == 2 ? lin_cols(lin)
                          : lin_ddr(l, lin) < 0 ? tile_words(l, lin, what - 3) : 0;
      v = what == 1 ? (x < v ? x : v) : what == 2 || what == 0 ? (x > v ? x : v) : v + x;
    }
  return v;
}
// Whether tensor (l, lin) is the lm head streamed from DDR on a layers' DDR engine (the plan's choice where its stream
// writes each output in its last group's step, compiler/placement: a head with tiles of its own, a multiple of the
// weight ports, beside the layers' linears' one count).
constexpr bool head_on_layers(int u, int l, int lin) {
  return lin == HEAD_LIN && lin_ddr(l, lin) >= 0 && unit_first(u) / rm::N_LAYERS < L_EMBD;
}
// Every tensor of engine u has its configuration (bits, group, scales, tiles, tier), is a tensor of the layers'
// linears or the engine's own embedding/output (or the lm head on the layers' DDR engine, head_on_layers), and a DDR
// or URAM offset lies inside its image, past its header.
constexpr bool unit_consistent(int u) {
  const int f = unit_first(u);
  if (f < 0) return false;
  const int fl = f % rm::N_LAYERS, flin = f / rm::N_LAYERS;
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l) {
      if (!lin_present(lin) || lin_unit(l, lin) != u) continue;
      const bool joined = head_on_layers(u, l, lin);
      if (lin_bits(l, lin) != lin_bits(fl, flin) || lin_group(l, lin) != lin_group(fl, flin) ||
          lin_scales(l, lin) != lin_scales(fl, flin) || (!joined && lin_tiles(l, lin) != lin_tiles(fl, flin)) ||
          (joined && (lin_tiles(l, lin) % rm::WEIGHT_PORTS != 0 || lin_tiles(fl, flin) % rm::WEIGHT_PORTS != 0)) ||
          (lin_ddr(l, lin) >= 0) != (lin_ddr(fl, flin) >= 0) || (lin_uram(l, lin) >= 0) != (lin_uram(fl, flin) >= 0) ||
          (lin_ddr(l, lin) >= 0 && lin_uram(l, lin) >= 0) || (!joined && (lin >= L_EMBD) != (flin >= L_EMBD)) ||
          (lin >= L_EMBD && !joined && lin != flin) || lin_rows(lin) % lin_tiles(l, lin) != 0)
        return false;
      if (lin_ddr(l, lin) >= 0 && (lin_ddr(l, lin) < DDR_HEADER_WORDS || lin_ddr(l, lin) >= rm::DDR_WORDS)) return false;
      if (lin_uram(l, lin) >= 0 && (lin_uram(l, lin) < URAM_HEADER_WORDS || lin_uram(l, lin) >= rm::URAM_WORDS))
        return false;
    }
  return true;
}

// Where each on-chip tensor starts in its engine's bank (per tile, in words of each BankKind): the bank stacks the
// engine's tensors linear by linear, layer by layer (artifact/model_header.py writes the ROM initialisers in that
// order). A table of constants the engines index with the run-time (layer, linear).
struct BankOffsets {
  int at[3][rm::N_LAYERS][L_OUTPUT + 1];
};
constexpr BankOffsets bank_offsets() {
  BankOffsets o{};
  long long run[3][rm::N_UNITS] = {};
  for (int lin = L_WQ; lin <= L_OUTPUT; ++lin)
    for (int l = 0; l < lin_layers(lin); ++l)
      for (int k = 0; k < 3; ++k) {
        if (!lin_present(lin) || lin_ddr(l, lin) >= 0) continue;
        o.at[k][l][lin] = (int)run[k][lin_unit(l, lin)];
        run[k][lin_unit(l, lin)] += tile_words(l, lin, k);
      }
  return o;
}
constexpr BankOffsets BANK_OFFSETS = bank_offsets();

#ifdef __SYNTHESIS__
constexpr bool SYNTHESIS = true; // BRAM ROM banks are const arrays initialised from the build's .dat files
#else
constexpr bool SYNTHESIS = false; // the emulated board fills every bank at run time
#endif

} // namespace

// GEMV engine U and its weight bank (global scope: roma_rom_define.h specialises its members): the configuration of
// its tensors, the bounds of their shapes (rows per tile, columns: the engine takes each tensor's at run time), and
// for an on-chip engine the bank arrays, [TILES][words]: each tile's words of every tensor of the engine, stacked
// (BANK_OFFSETS); only the scale arrays of its format are used (prm() and aux() are those the kernels take). Its
// tier: a BRAM ROM (const in synthesis, initialised from the .dat files; its storage bound in bank_tiles), URAM
// (the plan's "URAM-load-once": writable arrays, zero until CMD_LOAD_WEIGHTS writes them; BIND_STORAGE uram and
// 64-bit words by ARRAY_RESHAPE in load_uram_bank), or DDR (no bank: each tensor's tiles stream from its offset
// into ddr_weights, lin_ddr).
template <int U>
struct Unit {
  static_assert(unit_consistent(U), "roma_model.h: every tensor of a GEMV engine has its configuration");
  static constexpr int ENGINE = U, L0 = unit_first(U) % rm::N_LAYERS, LIN0 = unit_first(U) / rm::N_LAYERS;
  static constexpr int BITS = lin_bits(L0, LIN0), GROUP = lin_group(L0, LIN0), TILES = lin_tiles(L0, LIN0);
  static constexpr ScaleFormat SF = lin_scales(L0, LIN0);
  static constexpr Datapath DP = BITS >= DSP_MAC_MIN_BITS ? Datapath::DspMac : Datapath::ROMA_DATAPATH;
  // activations per cycle into the engine and candidate quads per cycle (its group's quantizer's pace)
  static constexpr int ACT = act_lanes(GROUP), CQ = ACT / QUAD;
  static_assert(SF == ScaleFormat::Fp16 || SF == ScaleFormat::Q8, "SCALES_* is 0 (fp16) or 1 (q8)");
  static constexpr int MAX_ROWS = (int)unit_stat(U, 0), MIN_ROWS = (int)unit_stat(U, 1), MAX_COLS = (int)unit_stat(U, 2);
  static constexpr int ROW_ALIGN = unit_row_align(U);
  static constexpr bool DDR = lin_ddr(L0, LIN0) >= 0, URAM = lin_uram(L0, LIN0) >= 0, HEAD = LIN0 >= L_EMBD;
  static constexpr int TOKENS = HEAD ? 1 : TT; // token lanes: the head's engine runs for the last token only
  // a layers' DDR engine that also streams the lm head (head_on_layers): the head's tiles, which the engine takes at
  // run time (brom_ddr_gemv_rt's VAR_TILES), sized by the larger count
  static constexpr bool WITH_HEAD = lin_unit(0, HEAD_LIN) == U && head_on_layers(U, 0, HEAD_LIN);
  static constexpr int HEAD_TILES = WITH_HEAD ? lin_tiles(0, HEAD_LIN) : TILES;
  static constexpr bool VAR_TILES = HEAD_TILES != TILES;
  static constexpr int MAX_TILES = HEAD_TILES > TILES ? HEAD_TILES : TILES;
  // words per tile of its bank (at least 1: the declared size of a DDR engine's unused bank)
  static constexpr int words(int kind) { return unit_stat(U, 3 + kind) > 0 ? (int)unit_stat(U, 3 + kind) : 1; }
  static constexpr int PLANE_WORDS = words(BANK_PLANES), PARAMS = words(BANK_PARAMS), AUX = words(BANK_AUX);
  // an untied embedding is only looked up (embedding_row): a bank, no GEMV engine
  typedef std::integral_constant<bool, !(LIN0 == L_EMBD && HEAD_LIN != L_EMBD)> RunsGemv;
  typedef std::integral_constant<bool, DDR> InDdr; // selects overloads: only the tier's code is instantiated
  typedef std::integral_constant<bool, URAM> InUram;
  // a bank's elements: read-only in a synthesized BRAM ROM, writable in URAM (and in C simulation)
  typedef typename std::conditional<SYNTHESIS && !URAM, const rom_word_t, rom_word_t>::type plane_word;
  typedef typename std::conditional<SYNTHESIS && !URAM, const scale_word_t, scale_word_t>::type scale_entry;
  static plane_word planes[TILES][PLANE_WORDS];
  static scale_entry scales[TILES][PARAMS]; // fp16 (half_bits_t is scale_word_t)
  static scale_entry mins[TILES][PARAMS];   // fp16
  static scale_entry params[TILES][PARAMS]; // q8: sd | sm << 8 per (group, row)
  static scale_entry exps[TILES][AUX];      // q8: row exponents
  typedef std::integral_constant<bool, SF == ScaleFormat::Q8> IsQ8;
  static auto &prm() { return prm_of(IsQ8()); }
  static auto &aux() { return aux_of(IsQ8()); }

private: // the q8 array or the fp16 one, chosen by overload (C++14: no if constexpr on the synthesis path); only
         // the called overload is instantiated, so the other format's arrays are never defined
  static auto &prm_of(std::true_type) { return params; }
  static auto &prm_of(std::false_type) { return scales; }
  static auto &aux_of(std::true_type) { return exps; }
  static auto &aux_of(std::false_type) { return mins; }
};

#ifdef __SYNTHESIS__
#define ROMA_ROM_DEFINE "roma_rom_define.h"
#include "roma_model.h" // again, past its guard: the bank definitions
static const float g_norms[2 * rm::N_LAYERS + 1][rm::DIM] = {
#include "norms.dat"
};
#endif
// The banks without an initialiser: URAM banks (and in C simulation every bank). A synthesized BRAM ROM bank's
// arrays are the explicit specialisations above, so these are not instantiated for it.
template <int U>
typename Unit<U>::plane_word Unit<U>::planes[Unit<U>::TILES][Unit<U>::PLANE_WORDS];
template <int U> // the scale arrays: only those of the bank's format are used, so instantiated
typename Unit<U>::scale_entry Unit<U>::scales[Unit<U>::TILES][Unit<U>::PARAMS];
template <int U>
typename Unit<U>::scale_entry Unit<U>::mins[Unit<U>::TILES][Unit<U>::PARAMS];
template <int U>
typename Unit<U>::scale_entry Unit<U>::params[Unit<U>::TILES][Unit<U>::PARAMS];
template <int U>
typename Unit<U>::scale_entry Unit<U>::exps[Unit<U>::TILES][Unit<U>::AUX];

// The FFN pair's engines as one engine of two banks (brom_gemv_banks_rt): where the pair (FFN_PAIR_GATE, FFN_PAIR_UP)
// is two engines of one configuration, w_gate's BRAM ROM and the URAM of the layers' other linears, on a build
// with token lanes, one GEMV engine reads both banks: bank 0 is PAIR_UP's, bank 1 PAIR_GATE's, each PE has a slot per
// bank and token lane, and every tensor of either runs on it. A layer's gate and up run at once, a bank's slots each
// (ffn_pair), and so do its k and v, a port of their bank each (kv_linears); any other tensor alone takes all four
// slots of a PE, its rows split over its bank's two ports for a block of two prefill tokens (decode's row split on two
// lanes already takes them). So the datapaths that served only w_gate serve every linear of the bank's layers, in
// half the steps of a prefill block.
constexpr int PAIR_GATE = rm::FFN_PAIR_GATE >= 0 ? rm::FFN_PAIR_GATE : 0,
              PAIR_UP = rm::FFN_PAIR_UP >= 0 ? rm::FFN_PAIR_UP : 0;
constexpr bool two_banks() {
  typedef Unit<PAIR_GATE> G;
  typedef Unit<PAIR_UP> P;
  return rm::FFN_PAIR_GATE >= 0 && TT >= 2 && !G::DDR && !G::URAM && P::URAM && !G::HEAD && !P::HEAD &&
         G::BITS == P::BITS && G::GROUP == P::GROUP && G::SF == P::SF && G::TILES == P::TILES;
}
constexpr bool TWO_BANKS = two_banks();
constexpr bool on_two_banks(int u) { return TWO_BANKS && (u == PAIR_GATE || u == PAIR_UP); }
// The engine of tensor (l, lin): its unit's, or the two-bank engine's (PAIR_UP) for PAIR_GATE's tensors.
constexpr int lin_engine(int l, int lin) { return on_two_banks(lin_unit(l, lin)) ? PAIR_UP : lin_unit(l, lin); }
// The two-bank engine's configuration (bank 0's, PAIR_UP's, and the bounds over both banks' tensors) for
// brom_gemv_banks_rt; bank 1's sizes are Unit<PAIR_GATE>'s.
template <class P, class G>
struct TwoBankEngine : P {
  static constexpr int MAX_ROWS = P::MAX_ROWS > G::MAX_ROWS ? P::MAX_ROWS : G::MAX_ROWS;
  static constexpr int MIN_ROWS = P::MIN_ROWS < G::MIN_ROWS ? P::MIN_ROWS : G::MIN_ROWS;
  static constexpr int MAX_COLS = P::MAX_COLS > G::MAX_COLS ? P::MAX_COLS : G::MAX_COLS;
};
typedef TwoBankEngine<Unit<PAIR_UP>, Unit<PAIR_GATE>> TwoBank;
// The configuration a GEMV engine U's kernels are sized by: Unit<U>, or the two-bank engine's.
template <int U>
using EngineOf = typename std::conditional<on_two_banks(U) && U == PAIR_UP, TwoBank, Unit<U>>::type;
// Engine u's datapaths per PE for a tensor alone (the row split's slots: BromStepConfig::row_split) and the fewest
// rows per tile of its tensors (its II and split distance): the two-bank engine's over both banks.
template <int U>
constexpr int engine_slots() {
  return tensor_slots(on_two_banks(U) ? 2 : 1, Unit<U>::TOKENS, false, false);
}
template <int U>
constexpr int engine_min_rows() {
  return on_two_banks(U) ? TwoBank::MIN_ROWS : Unit<U>::MIN_ROWS;
}

#ifndef __SYNTHESIS__
static float g_norms[2 * rm::N_LAYERS + 1][rm::DIM]; // attn_norm, ffn_norm per layer, then output_norm
// C simulation only: each (layer, linear)'s tensor repacked once for the SIMD GEMV (brom_tile_gemv_packed,
// bit-identical to the ROM and DDR datapaths; tb_brom_tile checks it), all its tiles as one matrix of its rows in
// order (InterleavedTiles): from the ROM at roma_emu_load_build, from its URAM bank after CMD_LOAD_WEIGHTS, or from
// the ddr_weights buffer for a DDR tensor. The embedding and the output use row 0.
static CsimPackedTile g_packed[rm::N_LAYERS][L_OUTPUT + 1];
#endif

namespace {

// The LoRA unit the build reserved (roma_model.h LORA_*), or none: a build with LORA_SLOTS == 0 declares no LoRA
// memory, refuses every slot (ERR_LORA_SLOT) and never adds a delta.
constexpr unsigned lora_target_mask(int lin = 0) {
  return lin == (int)lora_fmt::LINEARS ? 0u : (rm::LORA_TARGET[lin] ? 1u << lin : 0u) | lora_target_mask(lin + 1);
}
constexpr uint32_t LORA_SLOTS = rm::LORA_SLOTS > 0 ? (uint32_t)rm::LORA_SLOTS : 0u;
typedef std::integral_constant<bool, (LORA_SLOTS > 0)> HasLora;
struct NoLora {};
typedef std::conditional<HasLora::value,
                         LoraUnit<rm::N_LAYERS, rm::DIM, rm::KV_DIM, rm::FFN_DIM, rm::LORA_SLOTS, rm::LORA_RANK,
                                  lora_target_mask(), rm::LORA_INT8>,
                         NoLora>::type Lora;
static_assert(QDIM == rm::DIM, "the LoRA unit assumes n_heads * head_dim == dim (LLaMA)");
// the unit's arrays as 64-bit words (the BIND_STORAGE/ARRAY_RESHAPE pragmas of roma_core; contract C1)
constexpr int LORA_VALUES_PER_WORD = rm::LORA_INT8 ? 8 : 4;
constexpr int LORA_ROW_SCALES_PER_WORD = 2;
static_assert(ROMA_LORA_ARRAYS == (HasLora::value ? (rm::LORA_INT8 ? 2 : 1) : 0),
              "roma_model.h's ROMA_LORA_ARRAYS says which LoRA arrays the unit declares");

// Persistent state (registers and on-chip RAM of the core).
Lora g_lora;
uint32_t g_active = LORA_NONE;
uint64_t g_rng = 0;
RecentIds<SAMPLER_RING> g_recent;
bool g_weights_loaded = false; // the URAM banks hold this build's weights (CMD_LOAD_WEIGHTS succeeded)
#ifndef __SYNTHESIS__
// C simulation: whether a build is loaded, the GEMVs' OpenMP threads (0: not set yet), and the DDR image the
// packed codes (g_packed) of DDR tensors came from (buffer address and load generation)
bool g_loaded = false;
int g_threads = 0;
uint64_t g_gemv_paths[GEMV_PATH_COUNT] = {}; // tile GEMVs by the path they took (roma_emu_gemv_paths)
const uint32_t *g_ddr_packed_from = nullptr;
uint64_t g_ddr_packed_load = 0, g_load_count = 0;
#endif

// The on-chip KV cache: [layer][keys, values][position * KV_DIM + i] fp16 bits (the DDR rows' layout).
half_bits_t g_kv_chip[rm::N_LAYERS][2][KV_CHIP_ROWS * rm::KV_DIM];

// Activations of one chunk (on-chip buffers).
float g_x[MAX_T][rm::DIM];
float g_q[MAX_T][QDIM], g_k[MAX_T][rm::KV_DIM], g_v[MAX_T][rm::KV_DIM];
float g_logits[rm::VOCAB];

// LOGITS_OUT: the last token's logits to the host, once per run command (counted under STAGE_LM_HEAD as the head's
// output), LOGITS_LANES fp32 per cycle: as many as a weight port's width carries (the logits port is widened to it).
constexpr int LOGITS_LANES = rm::WEIGHT_PORT_BITS / 32;
// g_logits' banks: the head's engine writes one logit per cycle on chip (one tile), one per weight port from DDR;
// LOGITS_OUT reads LOGITS_LANES.
constexpr int LOGITS_BANKS = pow2_at_least(lanes_max(rm::WEIGHT_PORTS, LOGITS_LANES));
constexpr int LOGITS_PORT_BITS = 32 * LOGITS_LANES;
constexpr int LOGITS_BEATS = (rm::VOCAB + LOGITS_LANES - 1) / LOGITS_LANES;
constexpr uint64_t LOGITS_OUT_CYCLES = (uint64_t)LOGITS_BEATS * timing::II + 2 + timing::AXI_WRITE_LATENCY;
// the sampler reads rm::SAMPLER_LANES consecutive logits a cycle (a greedy token rm::ARGMAX_LANES), one from each of
// as many of g_logits' banks
static_assert(LOGITS_BANKS % rm::ARGMAX_LANES == 0 && rm::ARGMAX_LANES % rm::SAMPLER_LANES == 0,
              "the sampler's lanes among g_logits' banks");

struct Acct {
  LayerCycles layer;
  Cycles gemv, head;
  LoraCycles lora;
  SamplerCycles sampler;
  uint64_t weight_load = 0; // CMD_LOAD_WEIGHTS
};

// A block's activation codes (CODE_COLS above): written by a quantizer, read by the GEMV engine of the tensor they were
// quantized for (and by the next tensors of the same input and group: w_k, w_v after w_q; w_up after w_gate).
#define CODE_PARAMS act_t xq[TT][CODE_COLS], float as[TT][CODE_GROUPS]
#define CODES_IN const act_t xq[TT][CODE_COLS], const float as[TT][CODE_GROUPS]
#define CODE_ARGS xq, as
// The block's n inputs x_c into codes xq[c] and scales as[c] by act_quant sized for group G (VAR_GROUP: in groups of
// `group`, at run time): a quantizer per token lane, side by side (lane 0's counted), the lanes past the first only
// where the layers use it (BLOCKS; a group of the head's only has lane 0).
template <int G, bool VAR_GROUP, bool BLOCKS>
inline void quantize_on_lanes(int group, int cols, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE
  constexpr int LANES = act_lanes(G);
  constexpr int C1 = BLOCKS ? TC1 : 0, C2 = BLOCKS ? TC2 : 0, C3 = BLOCKS ? TC3 : 0;
  Cycles beside;
  act_quant<CODE_COLS, G, LANES, VAR_GROUP>(cols, x0, xq[0], as[0], cyc, group);
  if (C1 && n > 1) act_quant<CODE_COLS, G, LANES, VAR_GROUP>(cols, x1, xq[C1], as[C1], beside, group);
  if (C2 && n > 2) act_quant<CODE_COLS, G, LANES, VAR_GROUP>(cols, x2, xq[C2], as[C2], beside, group);
  if (C3 && n > 3) act_quant<CODE_COLS, G, LANES, VAR_GROUP>(cols, x3, xq[C3], as[C3], beside, group);
}
// The quantizer of group G, or nothing where no tensor of the role has group G (false_type: not built).
template <int G>
inline void quantize_group(std::true_type, int cols, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE
  quantize_on_lanes<G, false, group_used(G, true)>(G, cols, n, TOKEN_IN_ARGS, CODE_ARGS, cyc);
}
template <int G>
inline void quantize_group(std::false_type, int, int, const float *, const float *, const float *, const float *,
                           act_t[TT][CODE_COLS], float[TT][CODE_GROUPS], Cycles &) {}
// The groups above the activation lanes (act_quant's three-loop form) that a quantizer of the role (LAYERS_ONLY: the
// layers' GEMVs, else the head's too) serves: where there are several (a KV260's G64 layers and G32 8-bit head), one
// instance per token lane takes each at run time (act_quant's VAR_GROUP), sized by the smallest.
constexpr int wide_group(bool layers_only, int at_least) {
  return group_used(at_least, layers_only) ? at_least : at_least < 128 ? wide_group(layers_only, 2 * at_least) : 0;
}
constexpr bool wide_shared(bool layers_only) {
  return wide_group(layers_only, 2 * GEMV_IN_LANES) > 0 &&
         wide_group(layers_only, 2 * wide_group(layers_only, 2 * GEMV_IN_LANES)) > 0;
}
constexpr bool wide_lanes(bool layers_only, int at_least) { // whether the layers use one of them: the token lanes
  return at_least <= 128 && ((group_used(at_least, true) && group_used(at_least, layers_only)) ||
                             wide_lanes(layers_only, 2 * at_least));
}
template <bool LAYERS_ONLY>
inline void quantize_wide(std::true_type, int group, int cols, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE
  quantize_on_lanes<wide_group(LAYERS_ONLY, 2 * GEMV_IN_LANES), true, wide_lanes(LAYERS_ONLY, 2 * GEMV_IN_LANES)>(
      group, cols, n, TOKEN_IN_ARGS, CODE_ARGS, cyc);
}
template <bool LAYERS_ONLY>
inline void quantize_wide(std::false_type, int, int, int, const float *, const float *, const float *, const float *,
                          act_t[TT][CODE_COLS], float[TT][CODE_GROUPS], Cycles &) {}
// Whether group g has a quantizer of its own in the role: used, and not one of the wide groups it shares.
constexpr bool own_quantizer(int g, bool layers_only) {
  return group_used(g, layers_only) && !(wide_shared(layers_only) && g > GEMV_IN_LANES);
}
template <bool LAYERS_ONLY>
inline void quantize_lanes(int l, int lin, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE
  const int group = lin_group(l, lin), cols = lin_cols(lin);
  if (wide_shared(LAYERS_ONLY) && group > GEMV_IN_LANES)
    quantize_wide<LAYERS_ONLY>(std::integral_constant<bool, wide_shared(LAYERS_ONLY)>(), group, cols, n,
                               TOKEN_IN_ARGS, CODE_ARGS, cyc);
  else if (group == 32)
    quantize_group<32>(std::integral_constant<bool, own_quantizer(32, LAYERS_ONLY)>(), cols, n, TOKEN_IN_ARGS,
                       CODE_ARGS, cyc);
  else if (group == 64)
    quantize_group<64>(std::integral_constant<bool, own_quantizer(64, LAYERS_ONLY)>(), cols, n, TOKEN_IN_ARGS,
                       CODE_ARGS, cyc);
  else
    quantize_group<128>(std::integral_constant<bool, own_quantizer(128, LAYERS_ONLY)>(), cols, n, TOKEN_IN_ARGS,
                        CODE_ARGS, cyc);
}
// Tensor (l, lin)'s codes for the block's n inputs, right before the GEMV that reads them: a decode token's, a layer's
// first block's, wo's (attention's outputs are ready only then), the head's, and a tensor's whose group differs from
// the one before it on the same input (requantize). One instance (ALLOCATION).
void quantize_block(int l, int lin, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  quantize_lanes<false>(l, lin, n, TOKEN_IN_ARGS, CODE_ARGS, cyc);
}
// ... or beside the GEMV before it, into a buffer that GEMV does not read: the next block's q/k/v codes beside a
// block's q/k/v GEMVs (qkv_step), a block's w_down codes beside wo and its gate/up codes beside w_down (ffn_step). An
// instance of its own (ALLOCATION), so that it never waits for quantize_block; the layers' groups only.
void quantize_ahead(int l, int lin, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  quantize_lanes<true>(l, lin, n, TOKEN_IN_ARGS, CODE_ARGS, cyc);
}
// Tensor lin's codes where its group is not that of tensor prev, whose codes of the same input the buffer holds.
inline void requantize(int l, int lin, int prev, int n, TOKEN_INS, CODE_PARAMS, Cycles &cyc) {
#pragma HLS INLINE
  if (lin_group(l, lin) != lin_group(l, prev)) quantize_block(l, lin, n, TOKEN_IN_ARGS, CODE_ARGS, cyc);
}

// The LoRA delta of the active slot on linear lin of layer l (lora_apply: one instance for every linear, which it
// takes at run time), or nothing in a build without a LoRA unit (no call, no cycles).
template <class U>
void lora_delta(std::true_type, const U &u, int l, int lin, const float *x, float *y, Acct &a) {
  if (g_active != LORA_NONE && lin < (int)lora_fmt::LINEARS) lora_apply<U>(u, (int)g_active, l, lin, x, y, a.lora);
}
template <class U>
void lora_delta(std::false_type, const U &, int, int, const float *, float *, Acct &) {}

// CMD_LOAD_LORA's check and copy, and CMD_SELECT_LORA's check, on the unit (a build without one has no slot).
template <class U>
uint32_t lora_check_load(std::true_type, const U &, const uint8_t *img, uint32_t bytes) {
  return lora_validate<U>(img, bytes, rm::N_LAYERS) == LoraImageError::Ok ? ERR_NONE : ERR_LORA_IMAGE;
}
template <class U>
uint32_t lora_check_load(std::false_type, const U &, const uint8_t *, uint32_t) { return ERR_LORA_SLOT; }
template <class U>
void lora_copy(std::true_type, U &u, uint32_t slot, const uint8_t *img, uint32_t bytes, Acct &a) {
  lora_load<U>(u, (int)slot, img, bytes, a.lora);
}
template <class U>
void lora_copy(std::false_type, U &, uint32_t, const uint8_t *, uint32_t, Acct &) {}
template <class U>
bool lora_loaded(std::true_type, const U &u, uint32_t slot) { return u.loaded[slot]; }
template <class U>
bool lora_loaded(std::false_type, const U &, uint32_t) { return false; }

// The cyclic banks of engine R's outputs: the layer buffers' (GEMV_OUT_LANES or a multiple), the head's g_logits'
// (they decide how many rows of a DDR tensor's last round DDR_Y writes a cycle: DdrStream::y_rows; an engine of both
// writes a row a cycle there, VAR_TILES).
template <class R>
constexpr int out_banks() {
  return R::HEAD ? LOGITS_BANKS : GEMV_OUT_LANES;
}
// The tiles of linear lin's tensors on engine R: the head's own on a layers' DDR engine that streams it too.
template <class R>
constexpr int tiles_on(int lin) {
  return lin >= L_EMBD ? R::HEAD_TILES : R::TILES;
}

// Tensor (l, lin)'s tiles on engine R (TILES x rows outputs): streamed from its offset in ddr, or from its words in
// the bank.
template <class R>
void tiles_gemv(std::true_type /*in DDR*/, int l, int lin, int n, int rows, int cols, CODES_IN,
                DDR_PORT_PARAMS, TOKEN_OUTS,
                acc_t probe[R::MAX_TILES][(R::MAX_COLS / R::GROUP) * R::MAX_ROWS], acc_t xs[R::MAX_COLS / R::GROUP],
                Cycles &cyc) {
  const long long at = lin_ddr(l, lin);
  brom_ddr_gemv_rt<R, R::MAX_TILES, rm::WEIGHT_PORT_BITS, rm::WEIGHT_PORTS, false, R::TOKENS, out_banks<R>(),
                   CODE_COLS, CODE_GROUPS, R::VAR_TILES>(n, rows, cols, xq, as, ddr + at, ddr1 + at, ddr2 + at,
                                                         ddr3 + at, TOKEN_OUT_ARGS, probe, xs, cyc, tiles_on<R>(lin));
}
// The tiles of one tensor in the bank: a BRAM ROM's planes are bound here (they are only read); a URAM bank's
// storage is bound where CMD_LOAD_WEIGHTS writes it (load_uram_bank).
template <class R>
void bank_tiles(std::false_type /*BRAM ROM*/, const rom_word_t planes[R::TILES][R::PLANE_WORDS],
                const scale_word_t prm[R::TILES][R::PARAMS], const scale_word_t aux[R::TILES][R::AUX], int l, int lin,
                int n, int rows, int cols, CODES_IN, TOKEN_OUTS,
                acc_t probe[R::TILES][(R::MAX_COLS / R::GROUP) * R::MAX_ROWS], acc_t xs[R::MAX_COLS / R::GROUP],
                Cycles &cyc) {
#pragma HLS INLINE
#pragma HLS BIND_STORAGE variable = planes type = rom_2p impl = bram
  brom_gemv_tiles_rt<R, R::TILES, false, R::TOKENS, CODE_COLS, CODE_GROUPS>(
      n, rows, cols, xq, as, planes, BANK_OFFSETS.at[BANK_PLANES][l][lin], prm, BANK_OFFSETS.at[BANK_PARAMS][l][lin],
      aux, BANK_OFFSETS.at[BANK_AUX][l][lin], TOKEN_OUT_ARGS, probe, xs, cyc);
}
template <class R>
void bank_tiles(std::true_type /*URAM*/, const rom_word_t planes[R::TILES][R::PLANE_WORDS],
                const scale_word_t prm[R::TILES][R::PARAMS], const scale_word_t aux[R::TILES][R::AUX], int l, int lin,
                int n, int rows, int cols, CODES_IN, TOKEN_OUTS,
                acc_t probe[R::TILES][(R::MAX_COLS / R::GROUP) * R::MAX_ROWS], acc_t xs[R::MAX_COLS / R::GROUP],
                Cycles &cyc) {
#pragma HLS INLINE
  brom_gemv_tiles_rt<R, R::TILES, false, R::TOKENS, CODE_COLS, CODE_GROUPS>(
      n, rows, cols, xq, as, planes, BANK_OFFSETS.at[BANK_PLANES][l][lin], prm, BANK_OFFSETS.at[BANK_PARAMS][l][lin],
      aux, BANK_OFFSETS.at[BANK_AUX][l][lin], TOKEN_OUT_ARGS, probe, xs, cyc);
}
template <class R>
void tiles_gemv(std::false_type /*on chip*/, int l, int lin, int n, int rows, int cols, CODES_IN,
                const rom_word_t *, const rom_word_t *, const rom_word_t *, const rom_word_t *, TOKEN_OUTS,
                acc_t probe[R::MAX_TILES][(R::MAX_COLS / R::GROUP) * R::MAX_ROWS], acc_t xs[R::MAX_COLS / R::GROUP],
                Cycles &cyc) {
  bank_tiles<R>(typename R::InUram(), R::planes, R::prm(), R::aux(), l, lin, n, rows, cols, xq, as, TOKEN_OUT_ARGS,
                probe, xs, cyc);
}

// Tensor (l, lin) on the two-bank engine E (TWO_BANKS): alone on every slot of its bank, or with (l, pair_lin) beside
// it into z_c (from the other bank, or through the second port of the same one). Bank 1 (PAIR_GATE's, a BRAM ROM) is
// bound here; bank 0 (URAM) where CMD_LOAD_WEIGHTS writes it.
template <class E, class G>
void two_bank_tiles(const rom_word_t planes[E::TILES][E::PLANE_WORDS], const scale_word_t prm[E::TILES][E::PARAMS],
                    const scale_word_t aux[E::TILES][E::AUX], const rom_word_t planes1[G::TILES][G::PLANE_WORDS],
                    const scale_word_t prm1[G::TILES][G::PARAMS], const scale_word_t aux1[G::TILES][G::AUX], int l,
                    int lin, int pair_lin, int n, int rows, int cols, CODES_IN, TOKEN_OUTS, PAIR_OUTS,
                    acc_t probe[E::TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS], acc_t xs[E::MAX_COLS / E::GROUP],
                    Cycles &cyc) {
#pragma HLS INLINE
#pragma HLS BIND_STORAGE variable = planes1 type = rom_2p impl = bram
  const bool pair = pair_lin >= 0;
  const int ylin = pair ? pair_lin : lin;
  brom_gemv_banks_rt<E, G, E::TILES, 2, false, E::TOKENS, CODE_COLS, CODE_GROUPS>(
      n, rows, cols, xq, as, lin_unit(l, lin) == PAIR_GATE ? 1 : 0, pair, lin_unit(l, ylin) == PAIR_GATE ? 1 : 0,
      planes, prm, aux, planes1, prm1, aux1,
      BANK_OFFSETS.at[BANK_PLANES][l][lin], BANK_OFFSETS.at[BANK_PARAMS][l][lin], BANK_OFFSETS.at[BANK_AUX][l][lin],
      BANK_OFFSETS.at[BANK_PLANES][l][ylin], BANK_OFFSETS.at[BANK_PARAMS][l][ylin], BANK_OFFSETS.at[BANK_AUX][l][ylin],
      TOKEN_OUT_ARGS, PAIR_OUT_ARGS, probe, xs, cyc);
}
// Engine U's tiles for tensor (l, lin) (and the pair's second, pair_lin, on the two-bank engine): its tier's. The
// codes xq, scales as, probe and sums xs are gemv_unit's arrays, sized by EngineOf<U>.
template <int U, class Codes, class Scales, class Probe, class Sums>
void engine_tiles(std::false_type /*one bank*/, int l, int lin, int, int n, int rows, int cols, Codes xq,
                  Scales as, DDR_PORT_PARAMS, TOKEN_OUTS, PAIR_OUTS, Probe probe, Sums xs, Cycles &cyc) {
#pragma HLS INLINE
  (void)z0, (void)z1, (void)z2, (void)z3;
  tiles_gemv<Unit<U>>(typename Unit<U>::InDdr(), l, lin, n, rows, cols, xq, as, DDR_PORTS, TOKEN_OUT_ARGS, probe, xs,
                      cyc);
}
template <int U, class Codes, class Scales, class Probe, class Sums>
void engine_tiles(std::true_type /*two banks*/, int l, int lin, int pair_lin, int n, int rows, int cols, Codes xq,
                  Scales as, DDR_PORT_PARAMS, TOKEN_OUTS, PAIR_OUTS, Probe probe, Sums xs, Cycles &cyc) {
#pragma HLS INLINE
  (void)ddr, (void)ddr1, (void)ddr2, (void)ddr3;
  typedef Unit<U> P;                             // PAIR_UP
  typedef Unit<U == PAIR_UP ? PAIR_GATE : U> G; // (dependent on U: instantiated only for the two-bank engine)
  two_bank_tiles<EngineOf<U>, G>(P::planes, P::prm(), P::aux(), G::planes, G::prm(), G::aux(), l, lin, pair_lin, n,
                                 rows, cols, xq, as, TOKEN_OUT_ARGS, PAIR_OUT_ARGS, probe, xs, cyc);
}

#ifndef __SYNTHESIS__
// Whether tensor LIN's shape is one engine R serves (the packers and loaders are compiled per shape,
// for the engines that can hold it).
template <class R, int LIN>
constexpr bool serves_shape() {
  constexpr int TILES = tiles_on<R>(LIN);
  return lin_rows(LIN) % TILES == 0 && lin_cols(LIN) % R::GROUP == 0 && lin_cols(LIN) <= R::MAX_COLS &&
         lin_rows(LIN) / TILES <= R::MAX_ROWS && lin_rows(LIN) / TILES >= R::MIN_ROWS;
}
// C simulation: tensor (l, LIN) on engine R for the block's n tokens (the codes xq[c] and scales as[c] of each token's
// input, then the emulated board's packed GEMV of the whole tensor, or the straight one, tile by tile, for a tensor it
// could not pack), or nothing when the tensor is not one of R's; counted as the engine counts it (the lanes'
// candidate stages side by side, one pass over the weights for the block).
template <class R, int LIN>
void csim_tensor_gemv(int l, int n, CODES_IN, DDR_PORT_PARAMS, TOKEN_OUTS, int slots, int min_rows, Cycles &cyc) {
  constexpr int TILES = tiles_on<R>(LIN), ROWS = lin_rows(LIN) / TILES, COLS = lin_cols(LIN);
  constexpr int NG = R::MAX_COLS / R::GROUP;
  if constexpr (serves_shape<R, LIN>()) {
    acc_t xs[NG];
    const CsimPackedTile &pk = g_packed[l][LIN];
    g_gemv_paths[pk.ok ? GEMV_PATH_PACKED : R::DDR ? GEMV_PATH_DDR_STREAM : GEMV_PATH_ROM_UNPACKED] += TILES * n;
    Cycles sim; // the simulation's loop order; the hardware's cycles are counted below
    if (pk.ok) {
      for (int c = 0; c < n; ++c)
        brom_tile_gemv_packed<lin_rows(LIN), COLS, R::GROUP, R::BITS>(xq[c], as[c], pk, token_out(c, TOKEN_OUT_ARGS),
                                                                     xs, sim, g_threads);
    } else if constexpr (R::DDR) {
      static acc_t probe[R::MAX_TILES][NG * R::MAX_ROWS]; // not written (PROBE = false)
      const long long at = lin_ddr(l, LIN);
      brom_ddr_gemv_rt<R, R::MAX_TILES, rm::WEIGHT_PORT_BITS, rm::WEIGHT_PORTS, false, R::TOKENS, out_banks<R>(),
                       CODE_COLS, CODE_GROUPS, R::VAR_TILES>(n, ROWS, COLS, xq, as, ddr + at, ddr1 + at, ddr2 + at,
                                                             ddr3 + at, TOKEN_OUT_ARGS, probe, xs, sim, TILES);
    } else {
      const int pb = BANK_OFFSETS.at[BANK_PLANES][l][LIN], qb = BANK_OFFSETS.at[BANK_PARAMS][l][LIN],
                ab = BANK_OFFSETS.at[BANK_AUX][l][LIN];
      for (int c = 0; c < n; ++c)
        for (int t = 0; t < R::TILES; ++t)
          brom_tile_gemv_csim<ROWS, COLS, R::GROUP, R::BITS, R::SF>(xq[c], as[c], &R::planes[t][pb], &R::prm()[t][qb],
                                                                   &R::aux()[t][ab], token_out(c, TOKEN_OUT_ARGS) + t,
                                                                   xs, sim, g_threads, R::TILES);
    }
    if constexpr (R::DDR) {
      typedef DdrStream<DdrStepConfig<R::GROUP, R::BITS, R::DP, R::SF, R::CQ>, rm::WEIGHT_PORT_BITS> P;
      P::count(cyc, P::rounds(TILES, rm::WEIGHT_PORTS), ROWS, COLS, R::MIN_ROWS, R::ROW_ALIGN,
               R::VAR_TILES ? 1 : P::y_rows(TILES, rm::WEIGHT_PORTS, out_banks<R>()));
    } else { // parallel tiles: one tile's cycles
      BromStepConfig<R::GROUP, R::BITS, R::DP, R::SF, R::CQ>::count(cyc, n, slots, ROWS, COLS, min_rows);
    }
  }
  (void)slots, (void)min_rows;
}
// Tensor (l, lin) of unit R's bank in C simulation: the GEMVs are compiled per shape (linear LIN's, or a later one's).
template <class R, int LIN = L_WQ>
void csim_gemv(int l, int lin, int n, CODES_IN, DDR_PORT_PARAMS, TOKEN_OUTS, int slots, int min_rows, Cycles &cyc) {
  if constexpr (LIN == L_OUTPUT)
    csim_tensor_gemv<R, L_OUTPUT>(l, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, min_rows, cyc);
  else if (lin == LIN)
    csim_tensor_gemv<R, LIN>(l, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, min_rows, cyc);
  else
    csim_gemv<R, LIN + 1>(l, lin, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, min_rows, cyc);
}
// Tensor (l, lin) of engine U in C simulation, on its unit's bank (PAIR_GATE's for its tensors on the two-bank engine).
template <int U>
void csim_bank_gemv(int l, int lin, int n, CODES_IN, DDR_PORT_PARAMS, TOKEN_OUTS, int slots, Cycles &cyc) {
  if constexpr (on_two_banks(U)) {
    if (lin_unit(l, lin) == PAIR_GATE) {
      csim_gemv<Unit<PAIR_GATE>>(l, lin, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, engine_min_rows<U>(), cyc);
      return;
    }
  }
  csim_gemv<Unit<U>>(l, lin, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, engine_min_rows<U>(), cyc);
}
#endif

// GEMV engine U for tensor (l, lin), both run-time indices (one instance serves every tensor of its
// configuration), for the block's n tokens: their codes xq[c] and scales as[c] (quantized for the tensor's group:
// quantize_block, quantize_ahead) -> y_c[rows] through the tiles (its words in the bank, or streamed from ddr), one
// pass for the block. pair_lin (the two-bank engine only; else -1): a tensor with the same input and shape (w_gate
// beside w_up, w_v beside w_k), into z_c in the same pass.
template <int U>
void gemv_unit(int l, int lin, int n, CODES_IN, TOKEN_OUTS, DDR_PORT_PARAMS, Acct &a, int pair_lin, PAIR_OUTS) {
  typedef Unit<U> R;
  Cycles &cyc = lin >= L_EMBD ? a.head : a.gemv;
#ifdef __SYNTHESIS__
  typedef EngineOf<U> E;
  constexpr int NG = E::MAX_COLS / R::GROUP;
  acc_t xs[NG];
  const int rows = lin_rows(lin) / tiles_on<R>(lin), cols = lin_cols(lin);
  static acc_t probe[R::MAX_TILES][NG * E::MAX_ROWS]; // not written (PROBE = false)
  engine_tiles<U>(std::integral_constant<bool, on_two_banks(U)>(), l, lin, pair_lin, n, rows, cols, xq, as, DDR_PORTS,
                  TOKEN_OUT_ARGS, PAIR_OUT_ARGS, probe, xs, cyc);
#else
  // the emulated board's GEMVs, counted on the slots the tensor has (tensor_slots); a pair's second tensor has the
  // same shape and runs in the same pass, so it is not counted again
  const bool pair = pair_lin >= 0, same_bank = pair && lin_unit(l, pair_lin) == lin_unit(l, lin);
  const int slots = tensor_slots(on_two_banks(U) ? 2 : 1, R::TOKENS, pair, same_bank);
  csim_bank_gemv<U>(l, lin, n, CODE_ARGS, DDR_PORTS, TOKEN_OUT_ARGS, slots, cyc);
  Cycles same;
  if (pair) csim_bank_gemv<U>(l, pair_lin, n, CODE_ARGS, DDR_PORTS, PAIR_OUT_ARGS, slots, same);
#endif
}

// Tensor (l, lin): to its engine (a run-time compare per engine, so every engine is called at one place), then the
// LoRA delta (one call site). One instance serves every linear of every layer and the head: roma_core limits it
// (ALLOCATION), so the GEMV hardware is one engine per configuration and one LoRA unit.
template <int U>
void gemv_from(std::false_type /*past the last engine*/, int, int, int, int, CODES_IN, float *, float *, float *,
               float *, const rom_word_t *, const rom_word_t *, const rom_word_t *, const rom_word_t *, Acct &) {
  (void)xq, (void)as;
}
template <int U>
void gemv_if(std::false_type /*an untied embedding: only looked up*/, int, int, int, CODES_IN, float *, float *,
             float *, float *, const rom_word_t *, const rom_word_t *, const rom_word_t *, const rom_word_t *, Acct &) {
  (void)xq, (void)as;
}
template <int U>
void gemv_if(std::true_type, int l, int lin, int n, CODES_IN, TOKEN_OUTS, DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE
  gemv_unit<U>(l, lin, n, CODE_ARGS, TOKEN_OUT_ARGS, DDR_PORTS, a, -1, TOKEN_OUT_ARGS);
}
template <int U>
void gemv_from(std::true_type, int u, int l, int lin, int n, CODES_IN, TOKEN_OUTS, DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE
  if (u == U) // u: the tensor's engine (lin_engine), so PAIR_GATE's call site has no engine of its own on two banks
    gemv_if<U>(std::integral_constant<bool, Unit<U>::RunsGemv::value && !(on_two_banks(U) && U == PAIR_GATE)>(), l,
               lin, n, CODE_ARGS, TOKEN_OUT_ARGS, DDR_PORTS, a);
  else gemv_from<U + 1>(std::integral_constant<bool, (U + 1 < rm::N_UNITS)>(), u, l, lin, n, CODE_ARGS, TOKEN_OUT_ARGS,
                        DDR_PORTS, a);
}
// Tensor (l, lin) for a block of n tokens (x_c -> y_c), on the codes of x_c for its group (xq, as). The LoRA delta of
// each token, on x_c itself: one LoRA apply unit for the lanes' call sites (ALLOCATION), one token after another.
inline void lora_deltas(int l, int lin, int n, TOKEN_INS, TOKEN_OUTS, Acct &a) {
#pragma HLS INLINE
LINEAR_LORA:
  for (int c = 0; c < TT; ++c) {
#pragma HLS UNROLL
    if (c < n) lora_delta(HasLora(), g_lora, l, lin, token_in(c, TOKEN_IN_ARGS), token_out(c, TOKEN_OUT_ARGS), a);
  }
}
void linear(int l, int lin, int n, TOKEN_INS, CODES_IN, TOKEN_OUTS, DDR_PORT_PARAMS, Acct &a) {
  gemv_from<0>(std::true_type(), lin_engine(l, lin), l, lin, n, CODE_ARGS, TOKEN_OUT_ARGS, DDR_PORTS, a);
  lora_deltas(l, lin, n, TOKEN_IN_ARGS, TOKEN_OUT_ARGS, a);
}

// The FFN pair (roma_model.h FFN_PAIR_GATE, FFN_PAIR_UP; never two DDR engines, which would share the weight ports):
// a layer whose w_gate and w_up are on these two engines runs them at once: one pass of the two-bank engine
// (TWO_BANKS: linear_pair), or each engine at its second call site (ALLOCATION: still one instance each, which
// linear() calls at other times). Nothing passes between the two calls (both read h, each writes its own output and
// counts into its own counters), so they are scheduled side by side: counted as the longer (its stages; the other is
// not counted, as the token lanes beside lane 0). Then the LoRA deltas, gate's and up's, one after the other as
// linear() does.
typedef std::integral_constant<bool, (rm::FFN_PAIR_GATE >= 0)> HasFfnPair;
inline bool ffn_paired(int l) {
  return HasFfnPair::value && lin_unit(l, L_GATE) == rm::FFN_PAIR_GATE && lin_unit(l, L_UP) == rm::FFN_PAIR_UP;
}
template <class = void>
void ffn_pair(std::false_type, int, int, const float *, const float *, const float *, const float *, CODES_IN, float *,
              float *, float *, float *, float *, float *, float *, float *, const rom_word_t *, const rom_word_t *,
              const rom_word_t *, const rom_word_t *, Acct &) {
  (void)xq, (void)as;
}
// Tensors lin and lin2 of layer l, of one input, group and shape, on the two-bank engine (TWO_BANKS) in one pass (w_up
// and w_gate a bank each; w_k and w_v a port of their bank each), then their LoRA deltas as linear() adds them.
template <class = void>
void linear_pair(std::true_type /*two banks*/, int l, int lin, int lin2, int n, TOKEN_INS, CODES_IN, TOKEN_OUTS,
                 PAIR_OUTS, DDR_PORT_PARAMS, Acct &a) {
  gemv_unit<PAIR_UP>(l, lin, n, CODE_ARGS, TOKEN_OUT_ARGS, DDR_PORTS, a, lin2, PAIR_OUT_ARGS);
  lora_deltas(l, lin, n, TOKEN_IN_ARGS, TOKEN_OUT_ARGS, a);
  lora_deltas(l, lin2, n, TOKEN_IN_ARGS, PAIR_OUT_ARGS, a);
}
template <class = void>
void linear_pair(std::false_type, int, int, int, int, const float *, const float *, const float *, const float *,
                 CODES_IN, float *, float *, float *, float *, float *, float *, float *, float *, const rom_word_t *,
                 const rom_word_t *, const rom_word_t *, const rom_word_t *, Acct &) {
  (void)xq, (void)as;
}
typedef std::integral_constant<bool, TWO_BANKS> HasTwoBanks;
// The FFN pair's gate and up on the codes of w_gate's group: one pass of the two-bank engine, or two engines side by
// side (counted as the longer). Two engines do not read one buffer at once: w_up's are its own (uq, us), quantized in
// its call beside w_gate's GEMV.
template <class = void>
void pair_gemvs(std::true_type /*two banks*/, int l, int n, TOKEN_INS, CODES_IN, TOKEN_OUTS, float *u0, float *u1,
                float *u2, float *u3, DDR_PORT_PARAMS, Acct &a) {
  linear_pair(HasTwoBanks(), l, L_UP, L_GATE, n, TOKEN_IN_ARGS, CODE_ARGS, u0, u1, u2, u3, TOKEN_OUT_ARGS, DDR_PORTS,
              a);
}
template <class = void>
void pair_gemvs(std::false_type, int l, int n, TOKEN_INS, CODES_IN, TOKEN_OUTS, float *u0, float *u1, float *u2,
                float *u3, DDR_PORT_PARAMS, Acct &a) {
  act_t uq[TT][CODE_COLS]; // w_up's codes: quantize_block's, read by PAIR_UP's candidate stages
#pragma HLS ARRAY_PARTITION variable = uq type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = uq type = cyclic factor = GEMV_IN_LANES dim = 2
  float us[TT][CODE_GROUPS];
#pragma HLS ARRAY_PARTITION variable = us type = complete dim = 1
  Acct at_gate, at_up;
  gemv_unit<PAIR_GATE>(l, L_GATE, n, CODE_ARGS, TOKEN_OUT_ARGS, DDR_PORTS, at_gate, -1, TOKEN_OUT_ARGS);
  quantize_block(l, L_UP, n, TOKEN_IN_ARGS, uq, us, at_up.gemv);
  gemv_unit<PAIR_UP>(l, L_UP, n, uq, us, u0, u1, u2, u3, DDR_PORTS, at_up, -1, u0, u1, u2, u3);
  const Cycles &longer = at_gate.gemv.total() >= at_up.gemv.total() ? at_gate.gemv : at_up.gemv;
  a.gemv += longer;
  lora_deltas(l, L_GATE, n, TOKEN_IN_ARGS, TOKEN_OUT_ARGS, a);
  lora_deltas(l, L_UP, n, TOKEN_IN_ARGS, u0, u1, u2, u3, a);
}
template <class = void>
void ffn_pair(std::true_type, int l, int n, TOKEN_INS, CODES_IN, TOKEN_OUTS, float *u0, float *u1, float *u2,
              float *u3, DDR_PORT_PARAMS, Acct &a) {
  pair_gemvs(HasTwoBanks(), l, n, TOKEN_IN_ARGS, CODE_ARGS, TOKEN_OUT_ARGS, u0, u1, u2, u3, DDR_PORTS, a);
}
// w_k and w_v from h into kr, vr, on w_q's codes (xq, as; quantized again where their group is not w_q's): in one pass
// where the two-bank engine holds both (linear_pair), else one after the other.
inline bool kv_paired(int l) {
  return TWO_BANKS && on_two_banks(lin_unit(l, L_WK)) && on_two_banks(lin_unit(l, L_WV));
}
inline void kv_linears(int l, int n, float h[TT][rm::DIM], CODE_PARAMS, float kr[TT][rm::KV_DIM],
                       float vr[TT][rm::KV_DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE
  requantize(l, L_WK, L_WQ, n, TOKEN_ROWS(h), CODE_ARGS, a.gemv);
  if (kv_paired(l)) {
    linear_pair(HasTwoBanks(), l, L_WK, L_WV, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(kr), TOKEN_ROWS(vr), DDR_PORTS,
                a);
  } else {
    linear(l, L_WK, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(kr), DDR_PORTS, a);
    requantize(l, L_WV, L_WK, n, TOKEN_ROWS(h), CODE_ARGS, a.gemv);
    linear(l, L_WV, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(vr), DDR_PORTS, a);
  }
}

#ifdef __SYNTHESIS__
#define ROMA_ATTENTION_LANES attention_lanes
#else // the emulated board's query (csim/attention.h, bit-identical)
#define ROMA_ATTENTION_LANES attention_lanes_csim
#endif
// Layer l's attention, in two steps: the chunk's keys and values (g_k, g_v) into the KV cache, on chip (written through
// to the DDR rows kc, vc) or in DDR; then block by block, the n queries of g_q from row i0 over the cache into out (a
// block's rows; n = 0: nothing), their keys [keys_from, keys_to) scored by this call and the steps it takes
// (AttentionSteps: a decode token's cached keys are scored beside its k and v GEMVs, token_qkv). Templates: only the
// build's overloads are instantiated.
template <class = void>
void attend_rows(std::true_type /*on chip*/, int l, int start, int T, half_bits_t *kc, half_bits_t *vc, half_bits_t *,
                 half_bits_t *, half_bits_t *, half_bits_t *, half_bits_t *, half_bits_t *, LayerCycles &cyc) {
  kv_write_rows<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, rm::KV_ONCHIP_CTX, MAX_T, ATT_SIMD, KvPlace::OnChip>(
      g_k, g_v, start, T, g_kv_chip[l][0], g_kv_chip[l][1], cyc, kc, vc);
}
template <class = void>
void attend_rows(std::false_type /*in DDR*/, int, int start, int T, half_bits_t *kc, half_bits_t *vc, half_bits_t *kc1,
                 half_bits_t *vc1, half_bits_t *kc2, half_bits_t *vc2, half_bits_t *kc3, half_bits_t *vc3,
                 LayerCycles &cyc) {
  kv_write_rows<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, rm::CONTEXT, MAX_T, ATT_SIMD, KvPlace::Ddr, rm::KV_PORTS,
                rm::KV_SETS>(g_k, g_v, start, T, kc, vc, cyc, nullptr, nullptr, kc1, vc1, kc2, vc2, kc3, vc3);
}
template <class = void>
void attend_block(std::true_type /*on chip*/, int l, int start, int i0, int n, int keys_from, int keys_to, int steps,
                  float out[TT][QDIM], half_bits_t *, half_bits_t *, half_bits_t *, half_bits_t *, half_bits_t *,
                  half_bits_t *, half_bits_t *, half_bits_t *, LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  ROMA_ATTENTION_LANES<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, rm::KV_ONCHIP_CTX, ATT_SIMD, KvPlace::OnChip, TT, 1,
                       1, PV_SETS>(&g_q[i0], n, start + i0, keys_from, keys_to, steps, g_kv_chip[l][0],
                                   g_kv_chip[l][1], out, cyc);
}
template <class = void>
void attend_block(std::false_type /*in DDR*/, int, int start, int i0, int n, int keys_from, int keys_to, int steps,
                  float out[TT][QDIM], half_bits_t *kc, half_bits_t *vc, half_bits_t *kc1, half_bits_t *vc1,
                  half_bits_t *kc2, half_bits_t *vc2, half_bits_t *kc3, half_bits_t *vc3, LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  ROMA_ATTENTION_LANES<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, rm::CONTEXT, ATT_SIMD, KvPlace::Ddr, TT, rm::KV_PORTS,
                       rm::KV_SETS, PV_SETS>(&g_q[i0], n, start + i0, keys_from, keys_to, steps, kc, vc, out, cyc, kc1,
                                             vc1, kc2, vc2, kc3, vc3);
}

// A token's value row from vr into the chunk's g_v, GEMV_OUT_LANES per cycle (the rate the engines wrote it; g_v's
// partition), counted under RoPE's stage (the stage that writes the keys beside it): the GEMV writes vr, not g_v, so
// that it shares no array with the RoPE of the block before, which runs beside it (qkv_step).
constexpr int MAX_BLOCKS = (MAX_T + TT - 1) / TT; // token blocks of a chunk at most
static_assert(rm::KV_DIM % GEMV_OUT_LANES == 0, "a value row is whole GEMV output beats");
void v_copy(const float v[rm::KV_DIM], float out[rm::KV_DIM], LayerCycles &cyc) {
V_COPY:
  for (int s = 0; s < rm::KV_DIM / GEMV_OUT_LANES; ++s) {
#pragma HLS PIPELINE II = 1
    for (int k = 0; k < GEMV_OUT_LANES; ++k) {
#pragma HLS UNROLL
      out[s * GEMV_OUT_LANES + k] = v[s * GEMV_OUT_LANES + k];
    }
  }
  cyc.rope += rm::KV_DIM / GEMV_OUT_LANES * timing::II + 2;
}

// One token lane's elementwise units of a layer phase (a block's lanes: layer() calls each once per lane, on that
// lane's rows). Before attention: the token rotated by its position's angles (cos_t, sin_t: forward() computes them
// once for every layer), queries and keys into q, k, and its values copied into v.
inline void lane_rotate(const float cos_t[ROPE_PAIRS], const float sin_t[ROPE_PAIRS], const float qr[QDIM],
                        const float kr[rm::KV_DIM], const float vr[rm::KV_DIM], float q[QDIM], float k[rm::KV_DIM],
                        float v[rm::KV_DIM], LayerCycles &cyc) {
#pragma HLS INLINE
  rope_qk<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, ROPE_LANES>(cos_t, sin_t, qr, kr, q, k, cyc);
  v_copy(vr, v, cyc);
}
// After attention: x += o, then h = RMSNorm(x) with weights w (the FFN's input).
inline void lane_residual_norm(float x[rm::DIM], const float o[rm::DIM], const float w[rm::DIM], float h[rm::DIM],
                               LayerCycles &cyc) {
#pragma HLS INLINE
  residual_add<rm::DIM, RESIDUAL_LANES>(x, o, x, cyc);
  rms_norm<rm::DIM, NORM_LANES>(x, w, rm::RMS_EPS, h, cyc);
}
// Between the FFN's GEMVs: gate = SwiGLU(gate, up).
inline void lane_activation(float gate[rm::FFN_DIM], const float up[rm::FFN_DIM], LayerCycles &cyc) {
#pragma HLS INLINE
#ifdef __SYNTHESIS__
  swiglu<rm::FFN_DIM, SWIGLU_LANES>(gate, up, gate, cyc);
#else // csim/activation.h: bit-identical
  swiglu_csim<rm::FFN_DIM, SWIGLU_LANES>(gate, up, gate, cyc);
#endif
}

// The tokens of the block at chunk row i (none past T).
inline int block_tokens(int T, int i) { return i < 0 || i >= T ? 0 : T - i < TT ? T - i : TT; }

// The units of a layer's second half, each on the block of n tokens from chunk row i0 (n = 0: nothing), a lane's
// row each (a lane past the block reads the first, never used): on the GEMV engines wo, gate and up, w_down; beside
// them the residual add and RMSNorm, SwiGLU, the residual add. Each called once, in ffn_step; the lanes past the
// first run side by side with lane 0 (an instance each) and are not counted.
// wo: the block's attention outputs att into o, through their codes (xq, as).
void wo_block(int l, int n, float att[TT][QDIM], CODE_PARAMS, float o[TT][rm::DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  if (n == 0) return;
  quantize_block(l, L_WO, n, TOKEN_ROWS(att), CODE_ARGS, a.gemv);
  linear(l, L_WO, n, TOKEN_ROWS(att), CODE_ARGS, TOKEN_ROWS(o), DDR_PORTS, a);
}
// x += o, then h = RMSNorm(x): the FFN's input.
void residual_norm_block(int l, int i0, int n, float o[TT][rm::DIM], float h[TT][rm::DIM], LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  LayerCycles beside;
  const float *w = g_norms[2 * l + 1];
  lane_residual_norm(g_x[i0], o[0], w, h[0], cyc);
  if (TC1 && n > 1) lane_residual_norm(g_x[i0 + TC1], o[TC1], w, h[TC1], beside);
  if (TC2 && n > 2) lane_residual_norm(g_x[i0 + TC2], o[TC2], w, h[TC2], beside);
  if (TC3 && n > 3) lane_residual_norm(g_x[i0 + TC3], o[TC3], w, h[TC3], beside);
}
// gate and up from h, through its codes for w_gate (xq, as) (on two engines at once where the layer's pair is:
// ffn_pair).
void gate_up_block(int l, int n, float h[TT][rm::DIM], CODE_PARAMS, float gate[TT][rm::FFN_DIM],
                   float up[TT][rm::FFN_DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  if (n == 0) return;
  if (ffn_paired(l)) {
    ffn_pair(HasFfnPair(), l, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(gate), TOKEN_ROWS(up), DDR_PORTS, a);
  } else {
    linear(l, L_GATE, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(gate), DDR_PORTS, a);
    requantize(l, L_UP, L_GATE, n, TOKEN_ROWS(h), CODE_ARGS, a.gemv);
    linear(l, L_UP, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(up), DDR_PORTS, a);
  }
}
// gate = SwiGLU(gate, up).
void swiglu_block(int n, float gate[TT][rm::FFN_DIM], float up[TT][rm::FFN_DIM], LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  LayerCycles beside;
  lane_activation(gate[0], up[0], cyc);
  if (TC1 && n > 1) lane_activation(gate[TC1], up[TC1], beside);
  if (TC2 && n > 2) lane_activation(gate[TC2], up[TC2], beside);
  if (TC3 && n > 3) lane_activation(gate[TC3], up[TC3], beside);
}
// w_down: gate into o, through its codes (xq, as).
void down_block(int l, int n, float gate[TT][rm::FFN_DIM], CODES_IN, float o[TT][rm::DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  if (n == 0) return;
  linear(l, L_DOWN, n, TOKEN_ROWS(gate), CODE_ARGS, TOKEN_ROWS(o), DDR_PORTS, a);
}
// x += o.
void residual_block(int i0, int n, float o[TT][rm::DIM], LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  LayerCycles beside;
  residual_add<rm::DIM, RESIDUAL_LANES>(g_x[i0], o[0], g_x[i0], cyc);
  if (TC1 && n > 1) residual_add<rm::DIM, RESIDUAL_LANES>(g_x[i0 + TC1], o[TC1], g_x[i0 + TC1], beside);
  if (TC2 && n > 2) residual_add<rm::DIM, RESIDUAL_LANES>(g_x[i0 + TC2], o[TC2], g_x[i0 + TC2], beside);
  if (TC3 && n > 3) residual_add<rm::DIM, RESIDUAL_LANES>(g_x[i0 + TC3], o[TC3], g_x[i0 + TC3], beside);
}

// The cycles c of a stage beyond what the call beside it still hides (hide: its cycles not yet spent hiding others).
inline uint64_t beyond(uint64_t c, uint64_t &hide) {
#pragma HLS INLINE
  const uint64_t hidden = c < hide ? c : hide;
  hide -= hidden;
  return c - hidden;
}
// A GEMV call (the engines' cycles: e) beside elementwise ones (u) and the quantizer after them (q: quantize_ahead),
// as Vitis HLS starts calls with no data between them (UG1399, "Loop Parallelism": it schedules functions, not loops,
// in parallel): the GEMV counted in full, the elementwise stages and the quantizer by what they add beyond it.
inline void count_beside(Acct &a, const Acct &e, const LayerCycles &u, const Cycles &q) {
#pragma HLS INLINE
  uint64_t hide = e.gemv.total() + e.lora.apply;
  a.gemv += e.gemv;
  a.lora += e.lora;
  a.layer.residual += beyond(u.residual, hide);
  a.layer.norm += beyond(u.norm, hide);
  a.layer.activation += beyond(u.activation, hide);
  a.gemv.act_quant += beyond(q.act_quant, hide);
}

// The FFN of two blocks, the block at chunk row i - TT (its front: wo, residual and norm into h, gate and up into
// gate_w, up_w) and the one before it (its back: SwiGLU over gate_r, up_r, w_down, residual), the engines' calls of
// one beside the elementwise calls of the other: wo beside SwiGLU, w_down beside the residual and norm, gate and up
// beside the residual. The GEMV inputs' codes: wo's quantized in its call (into qa, sa); the back's w_down codes
// (qb, sb) after SwiGLU, beside wo, and the front's gate/up codes (qa, sa: wo is done) after its norm, beside w_down
// (quantize_ahead). One instance (ALLOCATION) for layer()'s two call sites.
void ffn_step(int l, int T, int i, float att[TT][QDIM], float h[TT][rm::DIM], float gate_w[TT][rm::FFN_DIM],
              float up_w[TT][rm::FFN_DIM], float gate_r[TT][rm::FFN_DIM], float up_r[TT][rm::FFN_DIM],
              act_t qa[TT][CODE_COLS], float sa[TT][CODE_GROUPS], act_t qb[TT][CODE_COLS], float sb[TT][CODE_GROUPS],
              DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  const int f0 = i - TT, b0 = i - 2 * TT, nf = block_tokens(T, f0), nb = block_tokens(T, b0);
  // the front's wo outputs, the back's w_down outputs
  float o_f[TT][rm::DIM], o_b[TT][rm::DIM];
#pragma HLS ARRAY_PARTITION variable = o_f type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = o_f type = cyclic factor = RESIDUAL_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = o_b type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = o_b type = cyclic factor = RESIDUAL_IN_LANES dim = 2
  Acct e1, e2, e3;
  LayerCycles u1, u2, u3;
  Cycles q1, q2, none;
  wo_block(l, nf, att, qa, sa, o_f, DDR_PORTS, e1);
  swiglu_block(nb, gate_r, up_r, u1);
  quantize_ahead(l, L_DOWN, nb, TOKEN_ROWS(gate_r), qb, sb, q1);
  count_beside(a, e1, u1, q1);
  down_block(l, nb, gate_r, qb, sb, o_b, DDR_PORTS, e2);
  residual_norm_block(l, f0, nf, o_f, h, u2);
  quantize_ahead(l, L_GATE, nf, TOKEN_ROWS(h), qa, sa, q2);
  count_beside(a, e2, u2, q2);
  gate_up_block(l, nf, h, qa, sa, gate_w, up_w, DDR_PORTS, e3);
  residual_block(b0, nb, o_b, u3);
  count_beside(a, e3, u3, none);
}

// Whether layer l's FFN block runs beside attention at full rate: attention reads the KV cache from DDR, so an FFN
// that streams a linear from DDR shares the memory with it. Where the memory's peak covers both streams at once
// (roma_model.h KV_BESIDE_WEIGHTS: a KV260's KV port is an HP port of its own) they run side by side; where it does
// not (a U250, whose KV ports share the weight ports' DDR banks) they are counted one after the other. An FFN on
// chip, or attention on an on-chip cache, shares nothing.
inline bool ffn_beside_attention(int l) {
  return KV_ONCHIP || rm::KV_BESIDE_WEIGHTS ||
         (lin_ddr(l, L_WO) < 0 && lin_ddr(l, L_GATE) < 0 && lin_ddr(l, L_UP) < 0 && lin_ddr(l, L_DOWN) < 0);
}

// One step of layer()'s LAYER_ATT_FFN: the queries of the block at chunk row i into att_out beside the FFN step of the
// two blocks before it (ffn_step; the first's attention outputs in att_in). The two are calls with no data between
// them, which Vitis HLS starts together, on units of their own (attention's datapaths and KV ports; the GEMV engines,
// elementwise units and weight ports): counted as the longer of the two where ffn_beside_attention, else one after
// the other; attention's stage counts what the FFN does not hide.
inline void att_ffn_step(int l, int start, int T, int i, bool scored, float att_out[TT][QDIM],
                         float att_in[TT][QDIM], float h[TT][rm::DIM], float gate_w[TT][rm::FFN_DIM],
                         float up_w[TT][rm::FFN_DIM], float gate_r[TT][rm::FFN_DIM], float up_r[TT][rm::FFN_DIM],
                         act_t qa[TT][CODE_COLS], float sa[TT][CODE_GROUPS], act_t qb[TT][CODE_COLS],
                         float sb[TT][CODE_GROUPS], half_bits_t *kc, half_bits_t *vc, half_bits_t *kc1,
                         half_bits_t *vc1, half_bits_t *kc2, half_bits_t *vc2, half_bits_t *kc3, half_bits_t *vc3,
                         DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE
  LayerCycles att;
  Acct ffn;
  const int n = block_tokens(T, i);
  // the block's keys, or (scored: a decode token whose cached keys token_qkv scored) its own key, and the finish
  attend_block(KvOnChip(), l, start, i, n, scored ? start : 0, start + i + n, scored ? ATT_FINISH : ATT_ALL, att_out,
               kc, vc, kc1, vc1, kc2, vc2, kc3, vc3, att);
  ffn_step(l, T, i, att_in, h, gate_w, up_w, gate_r, up_r, qa, sa, qb, sb, DDR_PORTS, ffn);
  const uint64_t ffn_cycles = ffn.gemv.total() + ffn.layer.total() + ffn.lora.apply;
  a.gemv += ffn.gemv;
  a.layer += ffn.layer;
  a.lora += ffn.lora;
  a.layer.attention += !ffn_beside_attention(l)     ? att.attention
                       : att.attention > ffn_cycles ? att.attention - ffn_cycles
                                                    : 0;
}

// The block of n tokens from chunk row i0 (n = 0: nothing), each lane's row of the layer's first half. One instance
// of each (ALLOCATION) for qkv_step's two call sites; the lanes past the first run side by side with lane 0 (an
// instance each) and are not counted.
// RMSNorm of the rows of g_x into h.
void norm_block(int l, int i0, int n, float h[TT][rm::DIM], LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  LayerCycles beside;
  rms_norm<rm::DIM, NORM_LANES>(g_x[i0], g_norms[2 * l], rm::RMS_EPS, h[0], cyc);
  if (TC1 && n > 1) rms_norm<rm::DIM, NORM_LANES>(g_x[i0 + TC1], g_norms[2 * l], rm::RMS_EPS, h[TC1], beside);
  if (TC2 && n > 2) rms_norm<rm::DIM, NORM_LANES>(g_x[i0 + TC2], g_norms[2 * l], rm::RMS_EPS, h[TC2], beside);
  if (TC3 && n > 3) rms_norm<rm::DIM, NORM_LANES>(g_x[i0 + TC3], g_norms[2 * l], rm::RMS_EPS, h[TC3], beside);
}
// q, k and v from h into qr, kr, vr, through its codes for w_q (xq, as: wk and wv reuse them).
void qkv_block(int l, int n, float h[TT][rm::DIM], CODE_PARAMS, float qr[TT][QDIM], float kr[TT][rm::KV_DIM],
               float vr[TT][rm::KV_DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  if (n == 0) return;
  linear(l, L_WQ, n, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(qr), DDR_PORTS, a);
  kv_linears(l, n, h, CODE_ARGS, kr, vr, DDR_PORTS, a);
}
// RoPE by the rows' positions' angles: qr, kr into the rows of g_q, g_k; vr copied into g_v's.
void rotate_block(int i0, int n, const float rope_cos[MAX_T][ROPE_PAIRS], const float rope_sin[MAX_T][ROPE_PAIRS],
                  float qr[TT][QDIM], float kr[TT][rm::KV_DIM], float vr[TT][rm::KV_DIM], LayerCycles &cyc) {
#pragma HLS INLINE off
  if (n == 0) return;
  LayerCycles beside;
  lane_rotate(rope_cos[i0], rope_sin[i0], qr[0], kr[0], vr[0], g_q[i0], g_k[i0], g_v[i0], cyc);
  if (TC1 && n > 1) lane_rotate(rope_cos[i0 + TC1], rope_sin[i0 + TC1], qr[TC1], kr[TC1], vr[TC1], g_q[i0 + TC1],
                                g_k[i0 + TC1], g_v[i0 + TC1], beside);
  if (TC2 && n > 2) lane_rotate(rope_cos[i0 + TC2], rope_sin[i0 + TC2], qr[TC2], kr[TC2], vr[TC2], g_q[i0 + TC2],
                                g_k[i0 + TC2], g_v[i0 + TC2], beside);
  if (TC3 && n > 3) lane_rotate(rope_cos[i0 + TC3], rope_sin[i0 + TC3], qr[TC3], kr[TC3], vr[TC3], g_q[i0 + TC3],
                                g_k[i0 + TC3], g_v[i0 + TC3], beside);
}

// One step of layer()'s LAYER_QKV: the q/k/v GEMVs of the block at chunk row i (h_in and its codes q_in, s_in -> qr,
// kr, vr) beside the next block's norm (into h_next) and its codes (q_next, s_next: quantize_ahead), and the RoPE of
// the block before (from its qr_prev, kr_prev, vr_prev). Three chains of calls with no data between them, on units
// of their own (the GEMV engines; RMSNorm and a quantizer; RoPE and the value copy), which Vitis HLS starts together
// (UG1399, "Loop Parallelism"): counted as the longest of the three, the GEMVs in full and the norm, quantizer and
// RoPE stages by what they add beyond them.
inline void qkv_step(int l, int T, int i, const float rope_cos[MAX_T][ROPE_PAIRS],
                     const float rope_sin[MAX_T][ROPE_PAIRS], float h_in[TT][rm::DIM], act_t q_in[TT][CODE_COLS],
                     float s_in[TT][CODE_GROUPS], float h_next[TT][rm::DIM], act_t q_next[TT][CODE_COLS],
                     float s_next[TT][CODE_GROUPS], float qr[TT][QDIM], float kr[TT][rm::KV_DIM],
                     float vr[TT][rm::KV_DIM], float qr_prev[TT][QDIM], float kr_prev[TT][rm::KV_DIM],
                     float vr_prev[TT][rm::KV_DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE
  Acct gemvs;
  LayerCycles norm, rope;
  Cycles codes;
  const int n_next = block_tokens(T, i + TT);
  qkv_block(l, block_tokens(T, i), h_in, q_in, s_in, qr, kr, vr, DDR_PORTS, gemvs);
  norm_block(l, i + TT, n_next, h_next, norm);
  quantize_ahead(l, L_WQ, n_next, TOKEN_ROWS(h_next), q_next, s_next, codes);
  rotate_block(i - TT, block_tokens(T, i - TT), rope_cos, rope_sin, qr_prev, kr_prev, vr_prev, rope);
  const uint64_t g = gemvs.gemv.total() + gemvs.lora.apply, chain = norm.norm + codes.act_quant;
  uint64_t hide_chain = g, hide_rope = g > chain ? g : chain; // RoPE runs beside both
  a.gemv += gemvs.gemv;
  a.lora += gemvs.lora;
  a.layer.norm += beyond(norm.norm, hide_chain);
  a.gemv.act_quant += beyond(codes.act_quant, hide_chain);
  a.layer.rope += beyond(rope.rope, hide_rope);
}

// A decode token's q, k and v, with its cached keys scored beside its k and v (token_qkv). The scores need only the
// rotated query, so after wq and the query's RoPE the pass over the cached keys (attend_block's first steps) and the k
// and v GEMVs with the key's RoPE (kv_block) are two calls with no data between them, which Vitis HLS starts together
// (UG1399, "Loop Parallelism"); att_ffn_step's attention then scores the token's own key, written to the cache in
// between, and finishes. The scores in any order of the keys are the same values (attention.h, AttentionSteps), so the
// outputs are those of one pass. The second call loads the query and fills the score pipeline again
// (AttentionConfig::RESCORE_CYCLES: a DDR burst's latency and the trees'), so this is taken where k and v take longer
// than that (scores_beside_kv): on chip, by their engines' candidate stages and steps (onchip_gemv_cycles, as gemv_unit
// counts them); streamed from DDR (a burst each and their words through the weight ports) where the KV reads do not
// share their memory: a KV cache on chip, or a KV port of its own (KV_BESIDE_WEIGHTS, as ffn_beside_attention). Any
// other token runs as a prefill block of one.
typedef AttentionConfig<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, KV_ONCHIP ? rm::KV_ONCHIP_CTX : rm::CONTEXT,
                        ATT_SIMD, KV_ONCHIP ? KvPlace::OnChip : KvPlace::Ddr, KV_ONCHIP ? 1 : rm::KV_PORTS,
                        KV_ONCHIP ? 1 : rm::KV_SETS, PV_SETS>
    Att;
// One token's GEMV of tensor lin on on-chip engine u: its candidate stage and steps (BromStepConfig::count, as the
// engine counts them; no quantizer: k and v reuse wq's codes), on the engine's slots or, in a pair, `slots`.
template <int U>
inline uint64_t onchip_gemv_cycles(std::false_type /*past the last engine*/, int, int, int) {
  return 0;
}
template <int U>
inline uint64_t onchip_gemv_cycles(std::true_type, int u, int lin, int slots) {
  typedef Unit<U> R;
  if (u != U) return onchip_gemv_cycles<U + 1>(std::integral_constant<bool, (U + 1 < rm::N_UNITS)>(), u, lin, slots);
  Cycles cyc;
  BromStepConfig<R::GROUP, R::BITS, R::DP, R::SF, R::CQ>::count(cyc, 1, slots > 0 ? slots : engine_slots<U>(),
                                                                lin_rows(lin) / R::TILES, lin_cols(lin),
                                                                engine_min_rows<U>());
  return cyc.total();
}
inline bool scores_beside_kv(int l) {
  const bool k_ddr = lin_ddr(l, L_WK) >= 0, v_ddr = lin_ddr(l, L_WV) >= 0;
  if (k_ddr || v_ddr) return KV_ONCHIP || rm::KV_BESIDE_WEIGHTS;
  const int uk = lin_unit(l, L_WK), uv = lin_unit(l, L_WV);
  if (kv_paired(l)) // one pass, a port each on one bank (unsplit) or a bank each
    return onchip_gemv_cycles<0>(std::true_type(), uk, L_WK, tensor_slots(2, TT, true, uk == uv)) >
           Att::RESCORE_CYCLES;
  return onchip_gemv_cycles<0>(std::true_type(), uk, L_WK, 0) + onchip_gemv_cycles<0>(std::true_type(), uv, L_WV, 0) >
         Att::RESCORE_CYCLES;
}
// k and v from h (wq's activation codes) into kr, vr; the key rotated into g_k, the values copied into g_v. rope_qk's
// query arguments are unused (ROPE_K) and name arrays attention does not touch (qr, q_unused), so that the call beside
// shares none.
void kv_block(int l, const float cos_t[ROPE_PAIRS], const float sin_t[ROPE_PAIRS], float h[TT][rm::DIM],
              CODE_PARAMS, float qr[TT][QDIM], float q_unused[TT][QDIM], float kr[TT][rm::KV_DIM],
              float vr[TT][rm::KV_DIM], DDR_PORT_PARAMS, Acct &a) {
#pragma HLS INLINE off
  kv_linears(l, 1, h, CODE_ARGS, kr, vr, DDR_PORTS, a);
  rope_qk<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, ROPE_LANES>(cos_t, sin_t, qr[0], kr[0], q_unused[0], g_k[0],
                                                                 a.layer, ROPE_K);
  v_copy(vr[0], g_v[0], a.layer);
}
// The token (chunk row 0 at position start > 0): RMSNorm into h and its codes (xq, as), wq into qr and its RoPE into
// g_q, then the scores of keys 0..start-1 (their maxima kept for att_ffn_step; att is not written) beside kv_block,
// counted as kv_block's stages in full and the scores by what they add beyond them.
inline void token_qkv(int l, int start, const float rope_cos[MAX_T][ROPE_PAIRS],
                      const float rope_sin[MAX_T][ROPE_PAIRS], float h[TT][rm::DIM], CODE_PARAMS, float qr[TT][QDIM],
                      float q_unused[TT][QDIM], float kr[TT][rm::KV_DIM], float vr[TT][rm::KV_DIM],
                      float att[TT][QDIM], half_bits_t *kc, half_bits_t *vc, half_bits_t *kc1, half_bits_t *vc1,
                      half_bits_t *kc2, half_bits_t *vc2, half_bits_t *kc3, half_bits_t *vc3, DDR_PORT_PARAMS,
                      Acct &a) {
#pragma HLS INLINE
  norm_block(l, 0, 1, h, a.layer);
  quantize_block(l, L_WQ, 1, TOKEN_ROWS(h), CODE_ARGS, a.gemv);
  linear(l, L_WQ, 1, TOKEN_ROWS(h), CODE_ARGS, TOKEN_ROWS(qr), DDR_PORTS, a);
  rope_qk<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, ROPE_LANES>(rope_cos[0], rope_sin[0], qr[0], kr[0], g_q[0],
                                                                 g_k[0], a.layer, ROPE_Q);
  LayerCycles scores;
  Acct kv;
  attend_block(KvOnChip(), l, start, 0, 1, 0, start, ATT_START, att, kc, vc, kc1, vc1, kc2, vc2, kc3, vc3, scores);
  kv_block(l, rope_cos[0], rope_sin[0], h, CODE_ARGS, qr, q_unused, kr, vr, DDR_PORTS, kv);
  uint64_t hide = kv.gemv.total() + kv.lora.apply + kv.layer.total();
  a.gemv += kv.gemv;
  a.lora += kv.lora;
  a.layer += kv.layer;
  a.layer.attention += beyond(scores.attention, hide);
}

// Layer l over tokens 0..T-1 of the chunk at positions start.. (x in g_x, updated in place): one instance, run
// for every layer with its run-time index. The linears take the chunk's tokens in blocks of TT (one pass over each
// engine's weights per block), the elementwise units a block's tokens side by side (an instance per token lane:
// ALLOCATION; each lane's rows of g_x, g_q, g_k and g_v are banks of their own, partitioned cyclic TT by token).
// First block by block q/k/v beside the next block's norm and codes and the previous block's RoPE (LAYER_QKV), and the
// chunk's keys and values into the cache; then block by block its queries beside the FFN of the two blocks before it
// (LAYER_ATT_FFN: a block's FFN needs only its own attention). A decode token whose cached keys can be scored beside
// its k and v GEMVs (scores_beside_kv) takes token_qkv instead of LAYER_QKV, and its attention block only scores its
// own key and finishes. The GEMV inputs' codes: forward()'s two buffers (q0, s0 and q1, s1), one written while an
// engine reads the other.
void layer(int l, int start, int T, const float rope_cos[MAX_T][ROPE_PAIRS], const float rope_sin[MAX_T][ROPE_PAIRS],
           act_t q0[TT][CODE_COLS], float s0[TT][CODE_GROUPS], act_t q1[TT][CODE_COLS], float s1[TT][CODE_GROUPS],
           half_bits_t *kv, half_bits_t *kv1, half_bits_t *kv2, half_bits_t *kv3, uint32_t cap, DDR_PORT_PARAMS,
           Acct &a) {
  // layer l's keys and values in each KV port's buffer ([N_LAYERS][2][ceil(cap / KV_SETS)][KV_DIM / KV_PORTS] each:
  // kv, kv1 set 0's ports, kv2, kv3 set 1's); a buffer the build does not use may be null: not read, nor offset
  constexpr int PORT_ROW = rm::KV_DIM / rm::KV_PORTS;
  const size_t rows = (cap + rm::KV_SETS - 1) / rm::KV_SETS, k_at = (size_t)(2 * l) * rows * PORT_ROW,
               v_at = (size_t)(2 * l + 1) * rows * PORT_ROW;
  constexpr bool PORT1 = rm::KV_PORTS > 1, SET1 = rm::KV_SETS > 1;
  half_bits_t *kc = kv + k_at, *vc = kv + v_at;
  half_bits_t *kc1 = PORT1 ? kv1 + k_at : kv1, *vc1 = PORT1 ? kv1 + v_at : kv1;
  half_bits_t *kc2 = SET1 ? kv2 + k_at : kv2, *vc2 = SET1 ? kv2 + v_at : kv2;
  half_bits_t *kc3 = PORT1 && SET1 ? kv3 + k_at : kv3, *vc3 = PORT1 && SET1 ? kv3 + v_at : kv3;
  // the GEMV inputs and outputs of two blocks: one set written while the units beside read the other
  float h0[TT][rm::DIM], h1[TT][rm::DIM], qr0[TT][QDIM], qr1[TT][QDIM], kr0[TT][rm::KV_DIM], kr1[TT][rm::KV_DIM],
      vr0[TT][rm::KV_DIM], vr1[TT][rm::KV_DIM];
  // the GEMV inputs: written NORM_LANES per cycle by rms_norm, read GEMV_IN_LANES per cycle by the quantizers
#pragma HLS ARRAY_PARTITION variable = h0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = h0 type = cyclic factor = NORM_OUT_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = h1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = h1 type = cyclic factor = NORM_OUT_LANES dim = 2
  // the GEMV outputs: the layers' engines write GEMV_OUT_LANES consecutive rows per cycle (a PE's or port's each) of
  // every token lane at once, RoPE reads ROPE_LANES pairs, the value copy GEMV_OUT_LANES values
#pragma HLS ARRAY_PARTITION variable = qr0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = qr0 type = cyclic factor = ROPE_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = qr1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = qr1 type = cyclic factor = ROPE_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = kr0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = kr0 type = cyclic factor = ROPE_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = kr1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = kr1 type = cyclic factor = ROPE_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = vr0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = vr0 type = cyclic factor = GEMV_OUT_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = vr1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = vr1 type = cyclic factor = GEMV_OUT_LANES dim = 2
  // the attention outputs and the FFN's gate and up of two blocks: one set written while the units beside read the
  // other (gate is also w_down's input: written GEMV_OUT_LANES rows per cycle, read GEMV_IN_LANES); the FFN's input
  // goes into h0, free once LAYER_QKV is done
  float att0[TT][QDIM], att1[TT][QDIM], gate0[TT][rm::FFN_DIM], gate1[TT][rm::FFN_DIM], up0[TT][rm::FFN_DIM],
      up1[TT][rm::FFN_DIM];
#pragma HLS ARRAY_PARTITION variable = att0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = att0 type = cyclic factor = GEMV_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = att1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = att1 type = cyclic factor = GEMV_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = gate0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = gate0 type = cyclic factor = GATE_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = gate1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = gate1 type = cyclic factor = GATE_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = up0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = up0 type = cyclic factor = UP_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = up1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = up1 type = cyclic factor = UP_LANES dim = 2
  // a decode token with cached keys: those scored beside its k and v GEMVs (token_qkv)
  const bool scored = T == 1 && start > 0 && scores_beside_kv(l);
  if (scored) {
    token_qkv(l, start, rope_cos, rope_sin, h0, q0, s0, qr0, qr1, kr0, vr0, att0, kc, vc, kc1, vc1, kc2, vc2, kc3,
              vc3, DDR_PORTS, a);
  } else {
    norm_block(l, 0, block_tokens(T, 0), h0, a.layer);
    quantize_block(l, L_WQ, block_tokens(T, 0), TOKEN_ROWS(h0), q0, s0, a.gemv);
  LAYER_QKV: // two blocks' q, k, v per iteration, each beside the next block's norm and codes and the block before's
             // RoPE
    for (int i0 = 0; i0 < T + TT; i0 += 2 * TT) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_BLOCKS / 2 + 1
      qkv_step(l, T, i0, rope_cos, rope_sin, h0, q0, s0, h1, q1, s1, qr0, kr0, vr0, qr1, kr1, vr1, DDR_PORTS, a);
      qkv_step(l, T, i0 + TT, rope_cos, rope_sin, h1, q1, s1, h0, q0, s0, qr1, kr1, vr1, qr0, kr0, vr0, DDR_PORTS, a);
    }
  }
  attend_rows(KvOnChip(), l, start, T, kc, vc, kc1, vc1, kc2, vc2, kc3, vc3, a.layer);
LAYER_ATT_FFN: // two blocks' queries per iteration, each beside the FFN of the two blocks before it
  for (int i0 = 0; i0 < T + 2 * TT; i0 += 2 * TT) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_BLOCKS / 2 + 1
    att_ffn_step(l, start, T, i0, scored, att0, att1, h0, gate1, up1, gate0, up0, q0, s0, q1, s1, kc, vc, kc1, vc1,
                 kc2, vc2, kc3, vc3, DDR_PORTS, a);
    att_ffn_step(l, start, T, i0 + TT, scored, att1, att0, h0, gate0, up0, gate1, up1, q0, s0, q1, s1, kc, vc, kc1,
                 vc1, kc2, vc2, kc3, vc3, DDR_PORTS, a);
  }
}

// The embedding row of token `id`, from its ROM or streamed from ddr.
// Its shape is its own (a tied embedding streamed on the layers' DDR engine is a tensor of that engine's).
constexpr int EMBD_TILES = lin_tiles(0, L_EMBD), EMBD_ROWS = rm::VOCAB / EMBD_TILES;
template <class E>
void embed(std::true_type /*in DDR*/, int id, const rom_word_t *ddr, float *out, LayerCycles &cyc) {
  embedding_row_ddr<rm::WEIGHT_PORT_BITS, EMBD_TILES, EMBD_ROWS, rm::DIM, E::GROUP, E::BITS, E::SF>(
      id, ddr + lin_ddr(0, L_EMBD), out, cyc);
}
template <class E>
void embed(std::false_type /*on chip*/, int id, const rom_word_t *, float *out, LayerCycles &cyc) {
  embedding_row<E::TILES, E::MAX_ROWS, E::MAX_COLS, E::GROUP, E::BITS, E::SF>(id, E::planes, E::prm(), E::aux(), out,
                                                                             cyc);
}

// Tokens ids[0..n) at positions start..: all layers, chunk by chunk; the last token's logits in g_logits.
void forward(const int32_t *ids, int n, int start, half_bits_t *kv, half_bits_t *kv1, half_bits_t *kv2,
             half_bits_t *kv3, uint32_t cap, DDR_PORT_PARAMS, Acct &a) {
  // the GEMV inputs' codes and scales of two blocks (layer(): one written by a quantizer while an engine reads the
  // other; the head's in q0, s0): written and read GEMV_IN_LANES codes a cycle (a group of a smaller group), a row per
  // token lane
  act_t q0[TT][CODE_COLS], q1[TT][CODE_COLS];
  float s0[TT][CODE_GROUPS], s1[TT][CODE_GROUPS];
#pragma HLS ARRAY_PARTITION variable = q0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = q0 type = cyclic factor = GEMV_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = q1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = q1 type = cyclic factor = GEMV_IN_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = s0 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = s1 type = complete dim = 1
FORWARD_CHUNKS:
  for (int c0 = 0; c0 < n; c0 += MAX_T) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_CHUNKS
    const int T = n - c0 < MAX_T ? n - c0 : MAX_T;
    typedef Unit<rm::UNIT_TOKEN_EMBD> E; // one tensor: its bank is that tensor's tiles (fp16 or q8 scales)
  EMBED_CHUNK:
    for (int i = 0; i < T; ++i) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_T
      embed<E>(E::InDdr(), ids[c0 + i], ddr, g_x[i], a.layer);
    }
    // RoPE's angles of the chunk's positions, once for every layer: read by a block's token lanes at once (a row
    // each: cyclic TT) and ROPE_LANES pairs a cycle by each lane's rotations
    float rope_cos[MAX_T][ROPE_PAIRS], rope_sin[MAX_T][ROPE_PAIRS];
#pragma HLS ARRAY_PARTITION variable = rope_cos type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = rope_cos type = cyclic factor = ROPE_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = rope_sin type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = rope_sin type = cyclic factor = ROPE_LANES dim = 2
    // in LUTRAM: a few KB, written once per position (on a Zynq board's 4 lanes each bank is 512 deep: BRAM otherwise)
#pragma HLS BIND_STORAGE variable = rope_cos type = ram_s2p impl = lutram
#pragma HLS BIND_STORAGE variable = rope_sin type = ram_s2p impl = lutram
  ROPE_ANGLES_CHUNK:
    for (int i = 0; i < T; ++i) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_T
      rope_angles<rm::HEAD_DIM>(start + c0 + i, rm::ROPE_INV_FREQ, rope_cos[i], rope_sin[i], a.layer);
    }
  LAYERS:
    for (int l = 0; l < rm::N_LAYERS; ++l) {
#pragma HLS LOOP_TRIPCOUNT min = rm::N_LAYERS max = rm::N_LAYERS
      layer(l, start + c0, T, rope_cos, rope_sin, q0, s0, q1, s1, kv, kv1, kv2, kv3, cap, DDR_PORTS, a);
    }
    if (c0 + T == n) {
      float h[rm::DIM]; // the head's GEMV input: written by rms_norm, read by its activation quantizer
#pragma HLS ARRAY_PARTITION variable = h type = cyclic factor = NORM_OUT_LANES dim = 1
      rms_norm<rm::DIM, NORM_LANES>(g_x[T - 1], g_norms[2 * rm::N_LAYERS], rm::RMS_EPS, h, a.layer);
      quantize_block(0, HEAD_LIN, 1, h, h, h, h, q0, s0, a.head);
      linear(0, HEAD_LIN, 1, h, h, h, h, q0, s0, g_logits, g_logits, g_logits, g_logits, DDR_PORTS, a);
    }
  }
}

// CMD_KV_LOAD: rows start..start+n-1 of every layer's keys and values from the DDR buffer into g_kv_chip (a build
// without an on-chip KV cache refuses the command before this).
// (inline: a build uses one of the two overloads)
inline void kv_load_all(std::false_type /*no on-chip KV*/, const half_bits_t *, uint32_t, int, int, LayerCycles &) {}
inline void kv_load_all(std::true_type /*on-chip KV*/, const half_bits_t *kv, uint32_t cap, int start, int n,
                        LayerCycles &cyc) {
KV_LOAD_CACHES:
  for (int c = 0; c < 2 * rm::N_LAYERS; ++c)
    kv_load<rm::N_HEADS, rm::N_KV_HEADS, rm::HEAD_DIM, KV_CHIP_ROWS, ATT_SIMD>(
        kv + (size_t)c * cap * rm::KV_DIM, g_kv_chip[c / 2][c % 2], start, n, cyc);
}

// ---- CMD_LOAD_WEIGHTS: the URAM banks from the load image (weight_load.h) ----
enum UramPass : int {
  URAM_CHECK = 0,  // sum the image's words (nothing is written unless they sum to URAM_CHECKSUM)
  URAM_WRITE = 1,  // copy them into the banks
  URAM_VERIFY = 2, // sum the words read back from the banks
};
// A URAM load pass: one word per cycle, plus the loop's depth (the m_axi read latency for the image passes).
constexpr uint64_t uram_pass_cycles(int words) { return (uint64_t)words * timing::II + 2 + timing::AXI_READ_LATENCY; }

// One pass over n words of a bank's tile (one tensor's planes, from `base`), their image words at src.
template <int MAX_N>
void uram_words_pass(rom_word_t row[], int base, int n, const rom_word_t *src, int pass, UramChecksum &sum,
                     uint64_t &cyc) {
URAM_WORDS:
  for (int k = 0; k < n; ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_N
    const rom_word_t w = pass == URAM_VERIFY ? row[base + k] : src[k];
    if (pass == URAM_WRITE) row[base + k] = w;
    sum.add(w);
  }
  cyc += uram_pass_cycles(n);
}
// One pass over n 16-bit entries of a bank's tile (one tensor's scale array, from `base`), two to an image
// word.
template <int MAX_N>
void uram_halves_pass(scale_word_t row[], int base, int n, const rom_word_t *src, int pass, UramChecksum &sum,
                      uint64_t &cyc) {
URAM_HALVES:
  for (int k = 0; k < halves_words(n); ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 1 max = halves_words(MAX_N)
    const bool pair = 2 * k + 1 < n; // an odd n's last word holds one entry
    const rom_word_t w = pass == URAM_VERIFY
                             ? (rom_word_t)row[base + 2 * k] | (pair ? (rom_word_t)row[base + 2 * k + 1] << 16 : 0u)
                             : src[k];
    if (pass == URAM_WRITE) {
      row[base + 2 * k] = (scale_word_t)(w & 0xffffu);
      if (pair) row[base + 2 * k + 1] = (scale_word_t)(w >> 16);
    }
    sum.add(w);
  }
  cyc += uram_pass_cycles(halves_words(n));
}

// One pass over URAM engine R's bank: each of its tensors from its offset into the image, tile by tile (planes,
// then the two scale arrays) into its words of the bank (BANK_OFFSETS), its checksum added to `total`. The bank's
// storage: URAM, 64-bit words.
template <class R>
void load_uram_bank(rom_word_t planes[R::TILES][R::PLANE_WORDS], scale_word_t prm[R::TILES][R::PARAMS],
                    scale_word_t aux[R::TILES][R::AUX], int pass, const rom_word_t *image, uint32_t &total,
                    uint64_t &cyc) {
#pragma HLS BIND_STORAGE variable = planes type = ram_t2p impl = uram
#pragma HLS ARRAY_RESHAPE variable = planes type = cyclic factor = 2 dim = 2
#pragma HLS BIND_STORAGE variable = prm type = ram_t2p impl = uram
#pragma HLS ARRAY_RESHAPE variable = prm type = cyclic factor = 4 dim = 2
#pragma HLS BIND_STORAGE variable = aux type = ram_t2p impl = uram
#pragma HLS ARRAY_RESHAPE variable = aux type = cyclic factor = 4 dim = 2
URAM_TENSORS:
  for (int i = 0; i < (L_OUTPUT + 1) * rm::N_LAYERS; ++i) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = (L_OUTPUT + 1) * rm::N_LAYERS
    const int lin = i / rm::N_LAYERS, l = i % rm::N_LAYERS;
    if (l >= lin_layers(lin) || !lin_present(lin) || lin_unit(l, lin) != R::ENGINE) continue;
    const int pw = tile_words(l, lin, BANK_PLANES), np = tile_words(l, lin, BANK_PARAMS),
              na = tile_words(l, lin, BANK_AUX);
    const int tile_image_words = pw + halves_words(np) + halves_words(na);
    UramChecksum sum;
  URAM_TILES:
    for (int t = 0; t < R::TILES; ++t) {
      const rom_word_t *src = image + lin_uram(l, lin) + (long long)t * tile_image_words;
      uram_words_pass<R::PLANE_WORDS>(planes[t], BANK_OFFSETS.at[BANK_PLANES][l][lin], pw, src, pass, sum, cyc);
      uram_halves_pass<R::PARAMS>(prm[t], BANK_OFFSETS.at[BANK_PARAMS][l][lin], np, src + pw, pass, sum, cyc);
      uram_halves_pass<R::AUX>(aux[t], BANK_OFFSETS.at[BANK_AUX][l][lin], na, src + pw + halves_words(np), pass, sum,
                               cyc);
    }
    total += sum.value();
  }
}

// The pass over every URAM engine: only URAM banks are instantiated.
template <class R>
void uram_engine(std::false_type /*not URAM*/, int, const rom_word_t *, uint32_t &, uint64_t &) {}
template <class R>
void uram_engine(std::true_type, int pass, const rom_word_t *image, uint32_t &total, uint64_t &cyc) {
  load_uram_bank<R>(R::planes, R::prm(), R::aux(), pass, image, total, cyc);
}
template <int U>
void uram_engines(std::false_type /*past the last engine*/, int, const rom_word_t *, uint32_t &, uint64_t &) {}
template <int U>
void uram_engines(std::true_type, int pass, const rom_word_t *image, uint32_t &total, uint64_t &cyc) {
  uram_engine<Unit<U>>(typename Unit<U>::InUram(), pass, image, total, cyc);
  uram_engines<U + 1>(std::integral_constant<bool, (U + 1 < rm::N_UNITS)>(), pass, image, total, cyc);
}

// Whether an image's header (magic, version, words, checksum: its first four words, brom_ddr.h's and
// weight_load.h's layout) is the one roma_model.h names; four reads.
bool image_header_is(const rom_word_t *image, rom_word_t magic, rom_word_t version, rom_word_t words,
                     rom_word_t checksum) {
#ifndef __SYNTHESIS__
  if (!image) return false;
#endif
  rom_word_t h[4];
IMAGE_HEADER:
  for (int k = 0; k < 4; ++k) {
#pragma HLS PIPELINE II = 1
    h[k] = image[k];
  }
  return h[0] == magic && h[1] == version && h[2] == words && h[3] == checksum;
}
static_assert(DDR_HEADER_WORDS >= 4 && URAM_HEADER_WORDS >= 4, "an image header starts magic, version, words, checksum");

// Whether uram_weights holds this build's load image (URAM_WORDS, URAM_CHECKSUM).
bool uram_header_ok(const rom_word_t *image) {
  return image_header_is(image, URAM_MAGIC, URAM_VERSION, (rom_word_t)rm::URAM_WORDS, rm::URAM_CHECKSUM);
}

SamplerParams sampler_params(uint32_t mode, float inv_t, uint32_t top_k, float top_p, float min_p, float pen,
                             uint32_t last_n) {
  SamplerParams p;
  p.greedy = mode == SAMPLE_GREEDY ? 1 : 0;
  p.inv_temperature = inv_t;
  p.top_k = (int)(top_k > 0x7fffffffu ? 0x7fffffffu : top_k);
  p.top_p = top_p;
  p.min_p = min_p;
  p.penalty = pen;
  p.inv_penalty = 1.0f / pen;
  p.repeat_last_n = (int)(last_n > 0x7fffffffu ? 0x7fffffffu : last_n);
  return p;
}

// The call's cycles per stage, in roma_core.h's Stage order (what the cycles_STAGE registers report).
void stage_cycles(const Acct &a, uint64_t st[STAGE_COUNT]) {
  st[STAGE_EMBEDDING] = a.layer.embedding;
  st[STAGE_NORM] = a.layer.norm;
  st[STAGE_ACT_QUANT] = a.gemv.act_quant;
  st[STAGE_GEMV] = a.gemv.candidates + a.gemv.gemv + a.gemv.output;
  st[STAGE_LORA] = a.lora.load + a.lora.apply;
  st[STAGE_ROPE] = a.layer.rope;
  st[STAGE_ATTENTION] = a.layer.attention;
  st[STAGE_ACTIVATION] = a.layer.activation;
  st[STAGE_RESIDUAL] = a.layer.residual;
  st[STAGE_LM_HEAD] = a.head.total();
  st[STAGE_SAMPLER] = a.sampler.total();
  st[STAGE_KV_LOAD] = a.layer.kv_load;
  st[STAGE_WEIGHT_LOAD] = a.weight_load;
}

void write_status(uint32_t *status, uint32_t err, uint32_t tokens, uint32_t checksum) {
STATUS_WRITE:
  for (int w = 0; w < (int)STATUS_WORDS; ++w) {
#pragma HLS PIPELINE II = 1
    status[w] = w == (int)STATUS_ERROR ? err : w == (int)STATUS_TOKENS ? tokens : w == (int)STATUS_CHECKSUM ? checksum
                                                                                                             : 0u;
  }
}

#ifndef __SYNTHESIS__
// C simulation: f(Unit<U>()) for engine u (its type from the run-time index).
template <int U = 0, class F>
void with_unit(int u, F &&f) {
  if constexpr (U < rm::N_UNITS) {
    if (u == U) f(Unit<U>());
    else with_unit<U + 1>(u, f);
  }
}
// f(l, std::integral_constant<int, LIN>, Unit) for every tensor of linear LIN whose engine serves its shape.
template <int LIN, class F>
void for_each_layer_of(F &&f) {
  for (int l = 0; l < lin_layers(LIN); ++l)
    with_unit(lin_unit(l, LIN), [&](auto r) {
      if constexpr (serves_shape<decltype(r), LIN>()) f(l, std::integral_constant<int, LIN>(), r);
    });
}
// ... for every tensor: the layers' linears, then the embedding and an untied output.
template <class F>
void for_each_tensor(F &&f) {
  for_each_layer_of<L_WQ>(f);
  for_each_layer_of<L_WK>(f);
  for_each_layer_of<L_WV>(f);
  for_each_layer_of<L_WO>(f);
  for_each_layer_of<L_GATE>(f);
  for_each_layer_of<L_UP>(f);
  for_each_layer_of<L_DOWN>(f);
  for_each_layer_of<L_EMBD>(f);
  if constexpr (HEAD_LIN == L_OUTPUT) for_each_layer_of<L_OUTPUT>(f);
}

// C simulation: repack the DDR tensors' tiles from a new image in the ddr_weights buffer (the ones the GEMVs
// read: an untied embedding's rows are read from the buffer directly; a tied one is the head's GEMV too).
void pack_ddr_tensors(const rom_word_t *ddr) {
  for_each_tensor([&](int l, auto lin_c, auto r) {
    typedef decltype(r) R;
    constexpr int LIN = decltype(lin_c)::value, TILES = tiles_on<R>(LIN), ROWS = lin_rows(LIN) / TILES;
    constexpr int COLS = lin_cols(LIN);
    if constexpr (R::DDR) {
      if (LIN == L_EMBD && HEAD_LIN != L_EMBD) return;
      typedef DdrTileSource<ROWS, COLS, R::GROUP, R::BITS, R::SF> T;
      InterleavedTiles<TILES, ROWS, T> src;
      for (int t = 0; t < TILES; ++t) src.tile[t] = T{ddr + lin_ddr(l, LIN) + t * T::D::TILE_WORDS};
      csim_pack_tile_from<lin_rows(LIN), COLS, R::GROUP, R::BITS>(src, g_packed[l][LIN]);
    }
  });
}

// C simulation: repack the URAM tensors from their bank words after CMD_LOAD_WEIGHTS wrote them.
void pack_uram_tensors() {
  for_each_tensor([&](int l, auto lin_c, auto r) {
    typedef decltype(r) R;
    constexpr int LIN = decltype(lin_c)::value, ROWS = lin_rows(LIN) / R::TILES, COLS = lin_cols(LIN);
    if constexpr (R::URAM) {
      typedef RomBankTileSource<BromStepConfig<R::GROUP, R::BITS, R::DP, R::SF>::WPS, ROWS, R::SF> T;
      InterleavedTiles<R::TILES, ROWS, T> src;
      for (int t = 0; t < R::TILES; ++t)
        src.tile[t] = T{&R::planes[t][BANK_OFFSETS.at[BANK_PLANES][l][LIN]],
                        &R::prm()[t][BANK_OFFSETS.at[BANK_PARAMS][l][LIN]],
                        &R::aux()[t][BANK_OFFSETS.at[BANK_AUX][l][LIN]]};
      csim_pack_tile_from<lin_rows(LIN), COLS, R::GROUP, R::BITS>(src, g_packed[l][LIN]);
    }
  });
}

// Whether weight port `port` (1-based), if the build reads it, holds the same image as the first port: the same buffer,
// or equal words (a copy per bank, as on Alveo), compared once per pair of buffers and build load as the first port's
// payload is checked once (csim_ddr_packed); the headers are read on every command.
bool csim_same_image(const rom_word_t *first, const rom_word_t *other, int port) {
  static const rom_word_t *same_first[4], *same_other[4];
  static uint64_t same_load[4];
  if (port > rm::WEIGHT_PORTS || other == first) return true;
  if (same_first[port - 1] == first && same_other[port - 1] == other && same_load[port - 1] == g_load_count)
    return true;
  if (std::memcmp(first, other, 4 * (size_t)rm::DDR_WORDS) != 0) return false;
  same_first[port - 1] = first;
  same_other[port - 1] = other;
  same_load[port - 1] = g_load_count;
  return true;
}

// Whether the packed codes (g_packed) of the DDR tensors are those of the image at ddr (header already checked): the
// first call with another buffer, or after a build load, checks the payload's CRC and repacks.
bool csim_ddr_packed(const rom_word_t *ddr) {
  if (ddr == g_ddr_packed_from && g_ddr_packed_load == g_load_count) return true;
  g_ddr_packed_from = nullptr;
  const size_t bytes = 4 * (size_t)(rm::DDR_WORDS - DDR_HEADER_WORDS);
  if (crc32_update(0, reinterpret_cast<const unsigned char *>(ddr + DDR_HEADER_WORDS), bytes) != rm::DDR_CRC)
    return false;
  pack_ddr_tensors(ddr);
  g_ddr_packed_from = ddr;
  g_ddr_packed_load = g_load_count;
  return true;
}
#endif

// Whether a weight port's buffer holds this build's DDR image: its header is the one roma_model.h names
// (DDR_WORDS, DDR_CRC); four reads.
bool ddr_header_ok(const rom_word_t *ddr) {
  return image_header_is(ddr, DDR_MAGIC, DDR_VERSION, (rom_word_t)rm::DDR_WORDS, rm::DDR_CRC);
}
// ... whether every weight port the build reads holds it (four reads per port and run command).
bool ddr_images_ready(DDR_PORT_PARAMS) {
  const bool ok = ddr_header_ok(ddr) && (rm::WEIGHT_PORTS < 2 || ddr_header_ok(ddr1)) &&
                  (rm::WEIGHT_PORTS < 3 || ddr_header_ok(ddr2)) && (rm::WEIGHT_PORTS < 4 || ddr_header_ok(ddr3));
#ifndef __SYNTHESIS__
  // the emulated board computes from the first port's image; the others must hold the same payload
  return ok && csim_ddr_packed(ddr) && csim_same_image(ddr, ddr1, 2) && csim_same_image(ddr, ddr2, 3) &&
         csim_same_image(ddr, ddr3, 4);
#else
  return ok;
#endif
}

} // namespace

// Depths of the m_axi ports for C/RTL co-simulation (elements).
constexpr int DEPTH_TOKENS = rm::CONTEXT;
constexpr int DEPTH_LOGITS = rm::VOCAB;
constexpr int DEPTH_KV = 2 * rm::N_LAYERS * rm::CONTEXT * rm::KV_DIM;
constexpr int DEPTH_LORA = 1 << 20;
constexpr int DEPTH_STATUS = STATUS_WORDS;
constexpr int DEPTH_DDR = rm::DDR_WORDS > 0 ? (int)rm::DDR_WORDS : 1;
constexpr int DEPTH_URAM = rm::URAM_WORDS > 0 ? (int)rm::URAM_WORDS : 1;
constexpr int WEIGHT_PORT_BITS = rm::WEIGHT_PORT_BITS; // the pragmas name it unqualified

extern "C" void roma_core(uint32_t command, uint32_t position, uint32_t n_tokens, uint32_t kv_capacity,
                          uint32_t lora_slot, uint32_t lora_bytes, uint32_t sample_mode, float inv_temperature,
                          uint32_t top_k, float top_p, float min_p, float repeat_penalty, uint32_t repeat_last_n,
                          uint32_t seed_lo, uint32_t seed_hi, uint32_t eos_id, uint32_t &cycles_embedding,
                          uint32_t &cycles_norm, uint32_t &cycles_act_quant, uint32_t &cycles_gemv,
                          uint32_t &cycles_lora, uint32_t &cycles_rope, uint32_t &cycles_attention,
                          uint32_t &cycles_activation, uint32_t &cycles_residual, uint32_t &cycles_lm_head,
                          uint32_t &cycles_sampler, uint32_t &cycles_kv_load, uint32_t &cycles_weight_load,
                          const int32_t *tokens_in, int32_t *tokens_out, float *logits, uint16_t *kv_cache,
                          uint16_t *kv_cache_1, uint16_t *kv_cache_2, uint16_t *kv_cache_3,
                          const uint8_t *lora_staging, const uint32_t *ddr_weights,
                          const uint32_t *ddr_weights_1, const uint32_t *ddr_weights_2, const uint32_t *ddr_weights_3,
                          const uint32_t *uram_weights, uint32_t *status) {
#pragma HLS INTERFACE mode = s_axilite port = command bundle = control
#pragma HLS INTERFACE mode = s_axilite port = position bundle = control
#pragma HLS INTERFACE mode = s_axilite port = n_tokens bundle = control
#pragma HLS INTERFACE mode = s_axilite port = kv_capacity bundle = control
#pragma HLS INTERFACE mode = s_axilite port = lora_slot bundle = control
#pragma HLS INTERFACE mode = s_axilite port = lora_bytes bundle = control
#pragma HLS INTERFACE mode = s_axilite port = sample_mode bundle = control
#pragma HLS INTERFACE mode = s_axilite port = inv_temperature bundle = control
#pragma HLS INTERFACE mode = s_axilite port = top_k bundle = control
#pragma HLS INTERFACE mode = s_axilite port = top_p bundle = control
#pragma HLS INTERFACE mode = s_axilite port = min_p bundle = control
#pragma HLS INTERFACE mode = s_axilite port = repeat_penalty bundle = control
#pragma HLS INTERFACE mode = s_axilite port = repeat_last_n bundle = control
#pragma HLS INTERFACE mode = s_axilite port = seed_lo bundle = control
#pragma HLS INTERFACE mode = s_axilite port = seed_hi bundle = control
#pragma HLS INTERFACE mode = s_axilite port = eos_id bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_embedding bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_norm bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_act_quant bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_gemv bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_lora bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_rope bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_attention bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_activation bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_residual bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_lm_head bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_sampler bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_kv_load bundle = control
#pragma HLS INTERFACE mode = s_axilite port = cycles_weight_load bundle = control
#pragma HLS INTERFACE mode = m_axi port = tokens_in offset = slave bundle = gmem_tok depth = DEPTH_TOKENS
#pragma HLS INTERFACE mode = m_axi port = tokens_out offset = slave bundle = gmem_tok depth = DEPTH_TOKENS
#pragma HLS INTERFACE mode = m_axi port = logits offset = slave bundle = gmem_logits depth = DEPTH_LOGITS \
    max_widen_bitwidth = LOGITS_PORT_BITS
#pragma HLS INTERFACE mode = m_axi port = kv_cache offset = slave bundle = gmem_kv depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
// the board's second KV port (ROMA_KV_PORTS 2: its kv_ports, as alveo_link_BOARD.cfg binds them) has a bundle of its
// own; it is never read by a build whose cache takes one port (KV_PORTS 1: an on-chip cache), nor with one port,
// where it shares the first bundle
#if ROMA_KV_PORTS > 1
#pragma HLS INTERFACE mode = m_axi port = kv_cache_1 offset = slave bundle = gmem_kv_1 depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#else
#pragma HLS INTERFACE mode = m_axi port = kv_cache_1 offset = slave bundle = gmem_kv depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#endif
// the odd positions' set (ROMA_KV_PORTS 4: KV_SETS 2) has bundles of its own, linked to the banks the KV cache's
// first two ports do not use (alveo_link_BOARD.cfg; a weight port's bundle would not do: arguments of one bundle
// must share its element width and options, or it loses the weight stream's bursts); with fewer KV ports they share
// the first KV bundle, never read
#if ROMA_KV_PORTS > 2
#pragma HLS INTERFACE mode = m_axi port = kv_cache_2 offset = slave bundle = gmem_kv_2 depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#pragma HLS INTERFACE mode = m_axi port = kv_cache_3 offset = slave bundle = gmem_kv_3 depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#else
#pragma HLS INTERFACE mode = m_axi port = kv_cache_2 offset = slave bundle = gmem_kv depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#pragma HLS INTERFACE mode = m_axi port = kv_cache_3 offset = slave bundle = gmem_kv depth = DEPTH_KV \
    max_widen_bitwidth = KV_PORT_BITS
#endif
#pragma HLS INTERFACE mode = m_axi port = lora_staging offset = slave bundle = gmem_lora depth = DEPTH_LORA
// the weights' port at the board's memory port width (roma_model.h WEIGHT_PORT_BITS; brom_ddr.h counts at it)
#pragma HLS INTERFACE mode = m_axi port = ddr_weights offset = slave bundle = gmem_weights depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
// the build's other weight ports (ROMA_WEIGHT_PORTS: the board's weight_ports), a bundle each; the ones past them
// share the first port and are never read
#if ROMA_WEIGHT_PORTS > 1
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_1 offset = slave bundle = gmem_weights_1 depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#else
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_1 offset = slave bundle = gmem_weights depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#endif
#if ROMA_WEIGHT_PORTS > 2
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_2 offset = slave bundle = gmem_weights_2 depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#else
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_2 offset = slave bundle = gmem_weights depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#endif
#if ROMA_WEIGHT_PORTS > 3
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_3 offset = slave bundle = gmem_weights_3 depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#else
#pragma HLS INTERFACE mode = m_axi port = ddr_weights_3 offset = slave bundle = gmem_weights depth = DEPTH_DDR \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#endif
// the URAM load image shares the weights' port (the same bundle options): read by CMD_LOAD_WEIGHTS only
#pragma HLS INTERFACE mode = m_axi port = uram_weights offset = slave bundle = gmem_weights depth = DEPTH_URAM \
    max_widen_bitwidth = WEIGHT_PORT_BITS max_read_burst_length = 64 num_read_outstanding = 16
#pragma HLS INTERFACE mode = m_axi port = status offset = slave bundle = gmem_status depth = DEPTH_STATUS
#pragma HLS INTERFACE mode = s_axilite port = tokens_in bundle = control
#pragma HLS INTERFACE mode = s_axilite port = tokens_out bundle = control
#pragma HLS INTERFACE mode = s_axilite port = logits bundle = control
#pragma HLS INTERFACE mode = s_axilite port = kv_cache bundle = control
#pragma HLS INTERFACE mode = s_axilite port = kv_cache_1 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = kv_cache_2 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = kv_cache_3 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = lora_staging bundle = control
#pragma HLS INTERFACE mode = s_axilite port = ddr_weights bundle = control
#pragma HLS INTERFACE mode = s_axilite port = ddr_weights_1 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = ddr_weights_2 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = ddr_weights_3 bundle = control
#pragma HLS INTERFACE mode = s_axilite port = uram_weights bundle = control
#pragma HLS INTERFACE mode = s_axilite port = status bundle = control
#pragma HLS INTERFACE mode = s_axilite port = return bundle = control
#pragma HLS BIND_STORAGE variable = g_kv_chip type = ram_s2p impl = ROMA_KV_ONCHIP_IMPL
#pragma HLS ARRAY_RESHAPE variable = g_kv_chip type = cyclic factor = ATT_SIMD dim = 3
  // the whole vocabulary's logits (the head writes them, the sampler and LOGITS_OUT read them): in URAM where the
  // board has it (roma_model.h's ROMA_LOGITS_IMPL, memory.logits_impl), 48 BRAM36 of SmolLM2's otherwise
#pragma HLS BIND_STORAGE variable = g_logits type = ram_2p impl = ROMA_LOGITS_IMPL
  // ... written by the head's engine LOGITS_BANKS consecutive logits a cycle (a DDR head: the ports' logits of
  // DdrStream::y_rows rows a cycle)
#pragma HLS ARRAY_PARTITION variable = g_logits type = cyclic factor = LOGITS_BANKS dim = 1
  // the chunk's values, written by the layers' GEMV engines GEMV_OUT_LANES rows per cycle
#pragma HLS ARRAY_PARTITION variable = g_v type = cyclic factor = GEMV_OUT_LANES dim = 2
  // the residual stream, the norms' weights and RoPE's outputs: read and written by the elementwise units, a block's
  // token lanes at once (a token's row in its own banks: cyclic TT on the token dimension)
#pragma HLS ARRAY_PARTITION variable = g_x type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = g_q type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = g_k type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = g_v type = cyclic factor = TT dim = 1
#pragma HLS ARRAY_PARTITION variable = g_x type = cyclic factor = STREAM_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = g_norms type = cyclic factor = NORM_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = g_q type = cyclic factor = ROPE_OUT_LANES dim = 2
#pragma HLS ARRAY_PARTITION variable = g_k type = cyclic factor = ROPE_OUT_LANES dim = 2
  // the LoRA unit's memory where the plan reserved it, 64-bit words (ROMA_LORA_ARRAYS: which arrays it declares)
#if ROMA_LORA_ARRAYS >= 1
#pragma HLS BIND_STORAGE variable = g_lora.values type = ram_s2p impl = ROMA_LORA_IMPL
#pragma HLS ARRAY_RESHAPE variable = g_lora.values type = cyclic factor = LORA_VALUES_PER_WORD dim = 2
#pragma HLS BIND_STORAGE variable = g_lora.rank type = ram_1p impl = lutram
#pragma HLS BIND_STORAGE variable = g_lora.scale type = ram_1p impl = lutram
#endif
#if ROMA_LORA_ARRAYS == 2
#pragma HLS BIND_STORAGE variable = g_lora.row_scale type = ram_s2p impl = ROMA_LORA_IMPL
#pragma HLS ARRAY_RESHAPE variable = g_lora.row_scale type = cyclic factor = LORA_ROW_SCALES_PER_WORD dim = 2
#endif
  // One forward datapath for both call sites below (a run, a generate step): each GEMV engine, the layer and the
  // head are called at one place inside it, so the whole model is one instance of each kernel.
#pragma HLS ALLOCATION function instances = forward limit = 1
  // ... and inside it one linear() for its eight call sites (seven linears of a layer, the head): each GEMV engine,
  // its activation quantizer and the LoRA apply are one RTL instance
#pragma HLS ALLOCATION function instances = linear limit = 1
  // ... and one linear_pair() for the two-bank engine's pairs (gate and up, k and v)
#pragma HLS ALLOCATION function instances = linear_pair limit = 1
  // ... and each engine one instance for its call site there and its second one: the FFN pair's in pair_gemvs, the
  // two-bank engine's in linear_pair
#pragma HLS ALLOCATION function instances = gemv_unit limit = 1
  // ... and two activation quantizers (each one per group and token lane): quantize_block, right before the GEMV
  // that reads its codes, and quantize_ahead, beside the GEMV before it
#pragma HLS ALLOCATION function instances = quantize_block limit = 1
#pragma HLS ALLOCATION function instances = quantize_ahead limit = 1
  // ... one attention block and one FFN step (its unit blocks called once in it) for layer()'s two steps of
  // LAYER_ATT_FFN (one after the other)
#pragma HLS ALLOCATION function instances = attend_block limit = 1
#pragma HLS ALLOCATION function instances = ffn_step limit = 1
  // ... and one of each unit block of LAYER_QKV's two steps
#pragma HLS ALLOCATION function instances = norm_block limit = 1
#pragma HLS ALLOCATION function instances = qkv_block limit = 1
#pragma HLS ALLOCATION function instances = rotate_block limit = 1
  // ... per token lane one RMSNorm (lane 0's also the final norm), one RoPE, one SwiGLU, one value copy and two
  // residual adds (a token's two): a block's tokens run their elementwise units side by side; one LoRA apply for
  // the lanes' call sites, one token after another; one sampler for its two call sites (a run command, a
  // generate step)
#pragma HLS ALLOCATION function instances = rms_norm limit = TT
#pragma HLS ALLOCATION function instances = rope_qk limit = TT
#pragma HLS ALLOCATION function instances = swiglu limit = TT
#pragma HLS ALLOCATION function instances = v_copy limit = TT
#pragma HLS ALLOCATION function instances = residual_add limit = RESIDUAL_ADDS
#pragma HLS ALLOCATION function instances = lora_apply limit = 1
#pragma HLS ALLOCATION function instances = sampler_step limit = 1
  Acct a;
  uint32_t err = ERR_NONE, done = 0, checksum = 0;
  const bool run = command == CMD_PREFILL || command == CMD_DECODE || command == CMD_GENERATE;
  const bool kv_cmd = run || command == CMD_KV_LOAD; // on KV rows position..position+n_tokens-1

  // ---- validation: nothing changes unless it passes ----
#ifndef __SYNTHESIS__
  if (!g_loaded) err = ERR_NOT_LOADED;
#endif
  if (err == ERR_NONE) {
    if (!kv_cmd && command != CMD_LOAD_LORA && command != CMD_SELECT_LORA && command != CMD_LOAD_WEIGHTS)
      err = ERR_BAD_COMMAND;
    else if (command == CMD_LOAD_WEIGHTS && rm::URAM_WORDS == 0) err = ERR_BAD_COMMAND;
    else if (command == CMD_LOAD_WEIGHTS && !uram_header_ok(uram_weights)) err = ERR_WEIGHTS_IMAGE;
    else if (command == CMD_KV_LOAD && (!KV_ONCHIP || n_tokens == 0)) err = ERR_BAD_COMMAND;
    else if (run && (n_tokens == 0 || (command == CMD_DECODE && n_tokens != 1) ||
                     (command == CMD_GENERATE && sample_mode == SAMPLE_NONE) || sample_mode > SAMPLE_RANDOM))
      err = ERR_BAD_COMMAND;
    else if (kv_cmd && (kv_capacity > KV_LIMIT || position > kv_capacity || n_tokens > kv_capacity - position))
      err = ERR_CONTEXT;
    else if (run && rm::URAM_WORDS > 0 && !g_weights_loaded)
      err = ERR_WEIGHTS_NOT_LOADED;
    else if (run && rm::DDR_WORDS > 0 && !ddr_images_ready(ddr_weights, ddr_weights_1, ddr_weights_2, ddr_weights_3))
      err = ERR_DDR_WEIGHTS;
    else if (run) {
      const uint32_t check = command == CMD_GENERATE ? 1 : n_tokens;
    VALIDATE_TOKENS:
      for (uint32_t i = 0; i < check; ++i) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_TOKENS
        if (tokens_in[i] < 0 || tokens_in[i] >= rm::VOCAB) err = ERR_TOKEN_RANGE;
      }
    } else if (command == CMD_LOAD_LORA) {
      if (lora_slot >= LORA_SLOTS) err = ERR_LORA_SLOT;
      else err = lora_check_load(HasLora(), g_lora, lora_staging, lora_bytes);
    } else if (command == CMD_SELECT_LORA) {
      if (lora_slot != LORA_NONE && (lora_slot >= LORA_SLOTS || !lora_loaded(HasLora(), g_lora, lora_slot)))
        err = ERR_LORA_SLOT;
    }
  }
  if (err != ERR_NONE) {
    // refused: nothing runs (status and counters below: the error, 0 cycles)
  } else if (command == CMD_LOAD_LORA) {
    lora_copy(HasLora(), g_lora, lora_slot, lora_staging, lora_bytes, a);
  } else if (command == CMD_SELECT_LORA) {
    g_active = lora_slot;
  } else if (command == CMD_LOAD_WEIGHTS) {
    // check the image's words, then write them into the banks, then read the banks back (one call site: one
    // instance of each bank's load)
    uint32_t sum = 0;
  WEIGHT_LOAD_PASSES:
    for (int pass = URAM_CHECK; pass <= URAM_VERIFY && err == ERR_NONE; ++pass) {
      sum = 0;
      uram_engines<0>(std::true_type(), pass, uram_weights, sum, a.weight_load);
      if (pass == URAM_CHECK && sum != rm::URAM_CHECKSUM) err = ERR_WEIGHTS_IMAGE; // nothing written
      else if (pass == URAM_CHECK) g_weights_loaded = false; // the banks are about to be overwritten
    }
    if (err == ERR_NONE) {
      checksum = sum;
      g_weights_loaded = sum == rm::URAM_CHECKSUM;
      if (!g_weights_loaded) err = ERR_WEIGHTS_NOT_LOADED;
#ifndef __SYNTHESIS__
      else pack_uram_tensors();
#endif
    }
  } else if (command == CMD_KV_LOAD) {
    kv_load_all(KvOnChip(), kv_cache, kv_capacity, (int)position, (int)n_tokens, a.layer);
    done = n_tokens;
  } else {
    if (seed_lo != 0 || seed_hi != 0) {
      g_rng = ((uint64_t)seed_hi << 32) | seed_lo;
      g_recent.clear();
    }
    const SamplerParams prm =
        sampler_params(sample_mode, inv_temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n);
    if (command != CMD_GENERATE) {
      forward(tokens_in, (int)n_tokens, (int)position, kv_cache, kv_cache_1, kv_cache_2, kv_cache_3, kv_capacity,
              ddr_weights, ddr_weights_1, ddr_weights_2, ddr_weights_3, a);
      if (sample_mode != SAMPLE_NONE)
        tokens_out[0] = (int32_t)sampler_step<rm::VOCAB, SAMPLER_K, rm::SAMPLER_LANES, SAMPLER_RING, rm::ARGMAX_LANES>(
            g_logits, prm, g_rng, g_recent, a.sampler);
      done = n_tokens;
    } else {
      int32_t tok = tokens_in[0];
    GENERATE:
      for (uint32_t s = 0; s < n_tokens; ++s) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_TOKENS
        forward(&tok, 1, (int)(position + s), kv_cache, kv_cache_1, kv_cache_2, kv_cache_3, kv_capacity,
                ddr_weights, ddr_weights_1, ddr_weights_2, ddr_weights_3, a);
        const uint32_t next = sampler_step<rm::VOCAB, SAMPLER_K, rm::SAMPLER_LANES, SAMPLER_RING, rm::ARGMAX_LANES>(
            g_logits, prm, g_rng, g_recent, a.sampler);
        tokens_out[s] = (int32_t)next;
        ++done;
        if (next == eos_id) break;
        tok = (int32_t)next;
      }
    }
  LOGITS_OUT:
    for (int i = 0; i < LOGITS_BEATS; ++i) {
#pragma HLS PIPELINE II = timing::II
      for (int k = 0; k < LOGITS_LANES; ++k) {
#pragma HLS UNROLL
        const int v = i * LOGITS_LANES + k;
        if (v < rm::VOCAB) logits[v] = g_logits[v];
      }
    }
    a.head.output += LOGITS_OUT_CYCLES;
  }
  write_status(status, err, done, checksum);
  uint64_t st[STAGE_COUNT];
  stage_cycles(a, st);
  cycles_embedding = (uint32_t)st[STAGE_EMBEDDING];
  cycles_norm = (uint32_t)st[STAGE_NORM];
  cycles_act_quant = (uint32_t)st[STAGE_ACT_QUANT];
  cycles_gemv = (uint32_t)st[STAGE_GEMV];
  cycles_lora = (uint32_t)st[STAGE_LORA];
  cycles_rope = (uint32_t)st[STAGE_ROPE];
  cycles_attention = (uint32_t)st[STAGE_ATTENTION];
  cycles_activation = (uint32_t)st[STAGE_ACTIVATION];
  cycles_residual = (uint32_t)st[STAGE_RESIDUAL];
  cycles_lm_head = (uint32_t)st[STAGE_LM_HEAD];
  cycles_sampler = (uint32_t)st[STAGE_SAMPLER];
  cycles_kv_load = (uint32_t)st[STAGE_KV_LOAD];
  cycles_weight_load = (uint32_t)st[STAGE_WEIGHT_LOAD];
}

#ifndef __SYNTHESIS__
// ---- the emulated board: ROM images from a build folder ----
namespace {

bool set_err(char *err, int err_len, const std::string &msg) {
  if (err && err_len > 0) {
    std::strncpy(err, msg.c_str(), (size_t)err_len - 1);
    err[err_len - 1] = 0;
  }
  return false;
}

// Tensor (l, LIN) of engine R from dir/NAME.bin into its words of the bank, and its tiles packed.
template <class R, int LIN>
bool load_tensor(const std::string &dir, const std::string &name, int l, char *err, int err_len) {
  if constexpr (R::DDR || R::URAM) {
    // streamed from ddr_weights (the host copies ddr_weights.bin into that buffer), or a URAM bank: written by
    return true; // CMD_LOAD_WEIGHTS and repacked then (pack_uram_tensors)
  } else {
    constexpr int ROWS = lin_rows(LIN) / R::TILES, COLS = lin_cols(LIN);
    typedef BromTileConfig<ROWS, COLS, R::GROUP, R::BITS, R::DP, R::SF> C;
    BromImageHost img;
    const std::string path = dir + "/" + name + ".bin";
    const std::string msg = load_brom_image(path, img);
    if (!msg.empty()) return set_err(err, err_len, msg);
    if ((int)img.bits != R::BITS || (int)img.group != R::GROUP || (int)img.rows != lin_rows(LIN) ||
        (int)img.cols != COLS || (int)img.tiles != R::TILES || img.scale_format != R::SF) {
      const char *fmt[2] = {"fp16", "q8"};
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "ROM image %s is %ux%u, %u bits, group %u, %u tiles, %s scales, but this library was built for "
                    "%dx%d, %d bits, group %d, %d tiles, %s scales (roma_model.h of another build?)",
                    path.c_str(), img.rows, img.cols, img.bits, img.group, img.tiles, fmt[(int)img.scale_format],
                    lin_rows(LIN), COLS, R::BITS, R::GROUP, R::TILES, fmt[(int)R::SF]);
      return set_err(err, err_len, buf);
    }
    for (int t = 0; t < R::TILES; ++t) { // tile t's words at the tensor's offsets in the bank's tile t
      std::memcpy(&R::planes[t][BANK_OFFSETS.at[BANK_PLANES][l][LIN]], &img.planes[(size_t)t * C::PLANE_WORDS],
                  sizeof(rom_word_t) * C::PLANE_WORDS);
      std::memcpy(&R::prm()[t][BANK_OFFSETS.at[BANK_PARAMS][l][LIN]], img.rom_prm() + (size_t)t * C::PARAMS,
                  sizeof(scale_word_t) * C::PARAMS);
      std::memcpy(&R::aux()[t][BANK_OFFSETS.at[BANK_AUX][l][LIN]], img.rom_aux() + (size_t)t * C::AUX,
                  sizeof(scale_word_t) * C::AUX);
    }
    // packed from the fp16 scales and minimums (q8: as load_brom_image decoded them), all tiles as one matrix
    typedef RomTileSource<C::WPS> T;
    InterleavedTiles<R::TILES, ROWS, T> src;
    for (int t = 0; t < R::TILES; ++t)
      src.tile[t] = T{&img.planes[(size_t)t * C::PLANE_WORDS], &img.scales[(size_t)t * C::PARAMS],
                      &img.mins[(size_t)t * C::PARAMS]};
    csim_pack_tile_from<lin_rows(LIN), COLS, R::GROUP, R::BITS>(src, g_packed[l][LIN]);
    return true;
  }
}

const char *const LIN_NAMES[L_OUTPUT + 1] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "token_embd", "output"};

} // namespace

extern "C" int roma_emu_set_threads(int threads) {
#ifdef _OPENMP
  g_threads = threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  g_threads = 1;
#endif
  return g_threads;
}

extern "C" int roma_emu_gemv_paths(uint64_t *out, int n) {
  for (int i = 0; out && i < n && i < GEMV_PATH_COUNT; ++i) out[i] = g_gemv_paths[i];
  return GEMV_PATH_COUNT;
}

// The model dimensions this library was compiled with (roma_model.h), so that the host refuses a build whose
// manifest states others before it sizes a buffer: writes min(n, 11) of {N_LAYERS, DIM, FFN_DIM, N_HEADS,
// N_KV_HEADS, HEAD_DIM, KV_DIM, VOCAB, CONTEXT, KV_ONCHIP_CTX, TIED_EMBEDDINGS} to out, returns 11.
extern "C" int roma_model_dims(int32_t *out, int n) {
  const int32_t dims[] = {rm::N_LAYERS, rm::DIM,   rm::FFN_DIM, rm::N_HEADS,       rm::N_KV_HEADS,         rm::HEAD_DIM,
                          rm::KV_DIM,   rm::VOCAB, rm::CONTEXT, rm::KV_ONCHIP_CTX, rm::TIED_EMBEDDINGS ? 1 : 0};
  const int count = (int)(sizeof dims / sizeof dims[0]);
  for (int i = 0; out && i < n && i < count; ++i) out[i] = dims[i];
  return count;
}

extern "C" int roma_emu_load_build(const char *build_dir, char *err, int err_len) {
  g_loaded = false;
  ++g_load_count; // DDR tensors: repack from ddr_weights at the next run command
  if (g_threads == 0) roma_emu_set_threads(0);
  if (!build_dir) return set_err(err, err_len, "no build folder given") ? 0 : 1;
  const std::string dir = build_dir;
  bool ok = true;
  for_each_tensor([&](int l, auto lin_c, auto r) {
    constexpr int LIN = decltype(lin_c)::value;
    const std::string name = LIN >= L_EMBD ? LIN_NAMES[LIN] : "blk." + std::to_string(l) + "." + LIN_NAMES[LIN];
    ok = ok && load_tensor<decltype(r), LIN>(dir, name, l, err, err_len);
  });
  if (!ok) return 1;
  const std::string np = dir + "/norms.bin";
  FILE *f = std::fopen(np.c_str(), "rb");
  if (!f) return set_err(err, err_len, "cannot open the norm weights " + np) ? 0 : 1;
  const size_t got = std::fread(g_norms, 1, sizeof g_norms, f);
  const bool extra = std::fgetc(f) != EOF;
  std::fclose(f);
  if (got != sizeof g_norms || extra)
    return set_err(err, err_len, np + " has the wrong size (expected " + std::to_string(sizeof g_norms) +
                                     " bytes of fp32 norm weights)") ? 0 : 1;
  for (int r = 0; r < 2 * rm::N_LAYERS + 1; ++r)
    for (int i = 0; i < rm::DIM; ++i)
      if (!(g_norms[r][i] == g_norms[r][i]) || g_norms[r][i] - g_norms[r][i] != 0.0f)
        return set_err(err, err_len, np + " is corrupt (a norm weight is not finite)") ? 0 : 1;
  std::memset(g_kv_chip, 0, sizeof g_kv_chip); // as URAM powers up: the host loads what it runs on
  g_weights_loaded = false;                     // likewise the URAM weight banks (CMD_LOAD_WEIGHTS)
  g_loaded = true;
  if (err && err_len > 0) err[0] = 0;
  return 0;
}
#endif

// Synthesis wrapper of the layer kernels (tb/tb_kernels.cpp checks them in C simulation): RMSNorm, RoPE,
// attention over a DDR KV cache (one decode step), residual add, SwiGLU and the embedding row lookup, at
// SmolLM2-135M's dimensions (dim 576, 9 query / 3 KV heads of 64, FFN 1536), so Vitis HLS reports each
// kernel's II, latency and resources (run_hls_kernels.tcl). `op` selects the kernel, so each one is a
// separate branch of the schedule. The embedding ROM is an argument here (a small 2 x 256-row slice).
#include "roma/activation.h"
#include "roma/attention.h"
#include "roma/embedding.h"
#include "roma/layer_cycles.h"
#include "roma/norm.h"
#include "roma/rope.h"

namespace {
constexpr int DIM = 576, FFN = 1536, HEADS = 9, KV_HEADS = 3, HD = 64, CTX = 2048;
constexpr int KV_SIMD = 8; // attention's fp16 lanes on a 128-bit KV port (Zynq UltraScale+ HP; roma_core: ATT_SIMD)
constexpr int E_TILES = 2, E_ROWS = 256, E_GROUP = 32, E_BITS = 8;
typedef roma::BromTileConfig<E_ROWS, DIM, E_GROUP, E_BITS> E;
} // namespace

extern "C" void roma_syn_kernels(int op, int pos, const float x[FFN], const float w[FFN], float y[FFN],
                                 const float q[HEADS * HD], const float k[KV_HEADS * HD],
                                 const float v[KV_HEADS * HD], float out[HEADS * HD],
                                 const float inv_freq[HD / 2], roma::half_bits_t *k_cache,
                                 roma::half_bits_t *v_cache, const roma::rom_word_t e_planes[E_TILES][E::PLANE_WORDS],
                                 const roma::half_bits_t e_scales[E_TILES][E::PARAMS],
                                 const roma::half_bits_t e_mins[E_TILES][E::PARAMS]) {
#pragma HLS INTERFACE mode = m_axi port = k_cache offset = slave bundle = gmem_kv depth = 1
#pragma HLS INTERFACE mode = m_axi port = v_cache offset = slave bundle = gmem_kv depth = 1
  roma::LayerCycles cyc;
  switch (op) {
  case 0:
    roma::rms_norm<DIM>(x, w, 1e-5f, y, cyc);
    break;
  case 1: {
    float cos_t[HD / 2], sin_t[HD / 2];
    roma::rope_angles<HD>(pos, inv_freq, cos_t, sin_t, cyc);
    roma::rope_qk<HEADS, KV_HEADS, HD>(cos_t, sin_t, q, k, out, y, cyc); // rotated k -> y[0..KV_HEADS*HD)
    break;
  }
  case 2:
    roma::attention_decode<HEADS, KV_HEADS, HD, CTX, KV_SIMD, roma::KvPlace::Ddr>(q, k, v, pos, k_cache, v_cache,
                                                                                   out, cyc);
    break;
  case 3:
    roma::residual_add<DIM>(x, w, y, cyc);
    break;
  case 4:
    roma::swiglu<FFN>(x, w, y, cyc);
    break;
  default:
    roma::embedding_row<E_TILES, E_ROWS, DIM, E_GROUP, E_BITS>(pos, e_planes, e_scales, e_mins, y, cyc);
    break;
  }
}

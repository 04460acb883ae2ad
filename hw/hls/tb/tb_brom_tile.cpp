// Self-checking testbench of the activation quantizer (act_quant.h) and the B-ROM tile (brom_tile.h).
//
//   tb_brom_tile DATA_DIR      (DATA_DIR written by gen_brom_tile.py from the Python golden model)
//
// For every case in DATA_DIR/cases.txt and both datapaths (LutSelect, DspMac) it loads the ROM image the
// packer wrote (as C simulation does at start-up), quantizes the golden fp32 activations, runs all tiles,
// and compares:
//   exactly:  int8 activations, activation scales (fp32 bits), group dot products dot[o,g], xsums xsum[g]
//   within a tolerance: y[o]. The golden model evaluates the same real number in another fp32 order (one
//   GEMV over d*q and the dequantized activations a_scale*x_q, plus the zero-point GEMV); the kernel sums
//   per-group terms a_scale*(d*dot + m*xsum) sequentially. With M = sum_j |a d q x_q| + sum_g |a m xsum|
//   (written by the generator), the golden result is within (K+2)u*M and the kernel's within (NG+3)u*M of
//   the exact value (u = 2^-24, recursive-summation bounds), so the check is
//       |y - y_golden| <= (K + NG + 8) * 2^-24 * M.
//   That is a worst-case bound (observed deviations are ~10-100x smaller); errors the float stage could make
//   (wrong d, m, a_scale or group) move y by a whole group term, far above it. The integers are exact.
// The emulated board's fast path (brom_tile_gemv_csim, C simulation only) is compared with the LutSelect kernel:
// y and xsum bit for bit, with 1 and 2 threads (the ROM words, integers and fp32 sequence per row are the same);
// likewise its repacked path (brom_tile_gemv_packed: codes unpacked once, 16 rows side by side), both the
// portable loop and the AVX-512 VNNI loop when the testbench is compiled with it (EMU_ARCH, the AVX-512 sets the CPU lists). The DDR tier
// (brom_ddr.h) on the same tensor's DDR image (name.ddr.u32, brom.ddr_words): the streamed kernel
// brom_ddr_gemv on both datapaths at a 128-bit port and at a 512-bit one (the LUT datapath), and the emulated
// board's repack of DDR tiles, against the ROM kernel: y, dots and xsums bit for bit. q8 cases (the scale ROM in the q8 format) run all of the above with the q8 arrays,
// and are also compared with the same matrix packed with fp16 scales (name.fp16.bin): the loader's decoded
// scales and minimums equal its fp16 ones, and the q8 kernels' y and dots equal the fp16 kernel's bit for bit;
// the decoder q8_to_half is checked on every code and exponent (q8.u16). The attention
// fast path of the emulated board (attention_query_csim) is checked against attention_query's loops the same way.
// Prints one line per case and `tb_brom_tile: M mismatches of N`; the exit code is min(M, 255).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "roma/act_quant.h"
#include "roma/activation.h"
#include "roma/attention.h"
#include "roma/brom_ddr.h"
#include "roma/brom_tile.h"
#include "roma/csim/activation.h"
#include "roma/csim/attention.h"
#include "roma/csim/brom_ddr.h"
#include "roma/csim/brom_tile.h"
#include "tb_common.h"

using namespace roma;

namespace {

using tb::read_array;

struct Case {
  std::string name, scales; // scales: "fp16" or "q8"
  int bits, group, rows, cols, tiles, tokens;
};

// The kernels' views of an image's ROM arrays, [TILES][n] (C: the tile's BromTileConfig).
template <class C>
const rom_word_t (*rom_planes(const BromImageHost &img))[C::PLANE_WORDS] {
  return reinterpret_cast<const rom_word_t(*)[C::PLANE_WORDS]>(img.planes.data());
}
template <class C>
const scale_word_t (*rom_prm(const BromImageHost &img))[C::PARAMS] {
  return reinterpret_cast<const scale_word_t(*)[C::PARAMS]>(img.rom_prm());
}
template <class C>
const scale_word_t (*rom_aux(const BromImageHost &img))[C::AUX] {
  return reinterpret_cast<const scale_word_t(*)[C::AUX]>(img.rom_aux());
}

typedef tb::Tally Tally; // .worst: the largest |y - y_golden| / tolerance seen

// twin (q8 cases): the same matrix with fp16 scales; the q8 kernel's y and dots must equal its fp16 kernel's.
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP, ScaleFormat SF>
long run_datapath(const Case &c, const BromImageHost &img, const BromImageHost *twin, Tally &tally,
                  uint64_t &cycles_per_gemv) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF> C;
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP> C16;
  constexpr int NG = C::NG, PP = C::PARAMS;
  const int T = c.tokens, R = TILES * ROWS;
  const auto x = read_array<float>(c.name + ".x.f32", (size_t)T * COLS);
  const auto xq_g = read_array<int8_t>(c.name + ".xq.i8", (size_t)T * COLS);
  const auto as_g = read_array<float>(c.name + ".ascale.f32", (size_t)T * NG);
  const auto dot_g = read_array<int32_t>(c.name + ".dot.i32", (size_t)T * R * NG);
  const auto xsum_g = read_array<int32_t>(c.name + ".xsum.i32", (size_t)T * NG);
  const auto y_g = read_array<float>(c.name + ".y.f32", (size_t)T * R);
  const auto ymag = read_array<double>(c.name + ".ymag.f64", (size_t)T * R);
  const double rtol = (double)(COLS + NG + 8) / 16777216.0;
  const long before = tally.mismatches;

  std::vector<act_t> xq(COLS);
  std::vector<float> a_scale(NG), y(R), y16(R);
  std::vector<acc_t> dot((size_t)TILES * PP), dot16(dot.size()), xsum(NG), xsum16(NG);
  long shown = 0;
  for (int t = 0; t < T; ++t) {
    Cycles cyc;
    act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq.data(), a_scale.data(), cyc);
    brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, DP, true, SF>(
        xq.data(), a_scale.data(), rom_planes<C>(img), rom_prm<C>(img), rom_aux<C>(img), y.data(),
        reinterpret_cast<acc_t(*)[PP]>(dot.data()), xsum.data(), cyc);
    cycles_per_gemv = cyc.total();
    if (twin) {
      Cycles c16;
      brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, DP, true>(
          xq.data(), a_scale.data(), rom_planes<C16>(*twin), rom_prm<C16>(*twin), rom_aux<C16>(*twin), y16.data(),
          reinterpret_cast<acc_t(*)[PP]>(dot16.data()), xsum16.data(), c16);
      for (int o = 0; o < R; ++o) tally.check(float_to_bits(y[o]) == float_to_bits(y16[o]));
      for (size_t i = 0; i < dot.size(); ++i) tally.check(dot[i] == dot16[i]);
    }
    if constexpr (GROUP >= 2 * ACT_LANES && GROUP > 32) { // a quantizer that takes its group at run time (VAR_GROUP),
      // sized for G32 (roma_core's for a KV260's G64 layers and G32 head): the same codes and scales, the same cycles
      std::vector<act_t> xqv(COLS);
      std::vector<float> asv(COLS / 32);
      Cycles cv, cf;
      act_quant<COLS, 32, ACT_LANES, true>(COLS, &x[(size_t)t * COLS], xqv.data(), asv.data(), cv, GROUP);
      act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq.data(), a_scale.data(), cf);
      for (int i = 0; i < COLS; ++i) tally.check(xqv[i] == xq[i]);
      for (int g = 0; g < NG; ++g) tally.check(float_to_bits(asv[g]) == float_to_bits(a_scale[g]));
      tally.check(cv.act_quant == cf.act_quant);
    }
    if constexpr (BITS == 2) { // a whole group a cycle (an Alveo build's act_lanes): the same codes, sums and outputs
      typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF, GROUP / QUAD> CW;
      std::vector<act_t> xqw(COLS);
      std::vector<float> asw(NG), yw(R);
      std::vector<acc_t> dotw(dot.size()), xsumw(NG);
      Cycles cw;
      act_quant<COLS, GROUP, GROUP>(COLS, &x[(size_t)t * COLS], xqw.data(), asw.data(), cw);
      brom_gemv_tiles_rt<CW, TILES, true>(1, ROWS, COLS, reinterpret_cast<const act_t(*)[COLS]>(xqw.data()),
                                          reinterpret_cast<const float(*)[NG]>(asw.data()), rom_planes<C>(img), 0,
                                          rom_prm<C>(img), 0, rom_aux<C>(img), 0, yw.data(), yw.data(), yw.data(),
                                          yw.data(), reinterpret_cast<acc_t(*)[PP]>(dotw.data()), xsumw.data(), cw);
      for (int i = 0; i < COLS; ++i) tally.check(xqw[i] == xq[i]);
      for (int g = 0; g < NG; ++g)
        tally.check(float_to_bits(asw[g]) == float_to_bits(a_scale[g]) && xsumw[g] == xsum[g]);
      for (int o = 0; o < R; ++o) tally.check(float_to_bits(yw[o]) == float_to_bits(y[o]));
      for (size_t i = 0; i < dot.size(); ++i) tally.check(dotw[i] == dot[i]);
      tally.check(cw.total() < cycles_per_gemv); // fewer cycles in front of the steps
    }
    for (int i = 0; i < COLS; ++i) tally.check(xq[i] == xq_g[(size_t)t * COLS + i]);
    for (int g = 0; g < NG; ++g) {
      tally.check(float_to_bits(a_scale[g]) == float_to_bits(as_g[(size_t)t * NG + g]));
      tally.check(xsum[g] == xsum_g[(size_t)t * NG + g]);
    }
    for (int tile = 0; tile < TILES; ++tile) {
      for (int r = 0; r < ROWS; ++r) {
        const int o = r * TILES + tile; // tile t holds rows t, t + TILES, ...
        for (int g = 0; g < NG; ++g) {
          const int step = g * ROWS + r;
          const acc_t d = dot[(size_t)tile * PP + step];
          const bool ok = d == dot_g[((size_t)t * R + o) * NG + g];
          tally.check(ok);
          if (!ok && shown++ < 5)
            std::printf("  %s dot[t=%d,o=%d,g=%d] = %d, golden %d\n", c.name.c_str(), t, o, g, d,
                        dot_g[((size_t)t * R + o) * NG + g]);
        }
        const double mag = ymag[(size_t)t * R + o];
        const double yg = y_g[(size_t)t * R + o];
        const double dev = std::fabs((double)y[o] - yg);
        const bool ok = dev <= rtol * mag;
        if (mag > 0) tally.note(dev, rtol * mag);
        tally.check(ok);
        if (!ok && shown++ < 5)
          std::printf("  %s y[t=%d,o=%d] = %.9g, golden %.9g (row magnitude %.3g)\n", c.name.c_str(), t, o,
                      y[o], yg, mag);
      }
    }
  }
  return tally.mismatches - before;
}

// The C-simulation fast path (brom_tile_gemv_csim, used by the emulated board) against the LutSelect kernel:
// y and xsum must be the same bit patterns, with 1 and 2 threads.
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF>
long run_csim_fast(const Case &c, const BromImageHost &img, Tally &tally) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> C;
  constexpr int NG = C::NG, PP = C::PARAMS;
  const int T = c.tokens, R = TILES * ROWS;
  const auto x = read_array<float>(c.name + ".x.f32", (size_t)T * COLS);
  const auto planes = rom_planes<C>(img);
  const auto prm = rom_prm<C>(img);
  const auto aux = rom_aux<C>(img);
  std::vector<act_t> xq(COLS);
  std::vector<float> a_scale(NG), y(R), yf(R);
  std::vector<acc_t> dot((size_t)TILES * PP), xsum(NG), xsf(NG);
  std::vector<CsimPackedTile> packed(TILES);
  for (int tile = 0; tile < TILES; ++tile) { // from the fp16 view (q8: decoded by load_brom_image)
    csim_pack_tile<ROWS, COLS, GROUP, BITS>(planes[tile], &img.scales[(size_t)tile * PP], &img.mins[(size_t)tile * PP],
                                            packed[tile]);
    tally.check(packed[tile].ok); // the generator's scales and minimums are finite
  }
  const long before = tally.mismatches;
  for (int t = 0; t < T; ++t) {
    Cycles cyc, cyf;
    act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq.data(), a_scale.data(), cyc);
    brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, false, SF>(
        xq.data(), a_scale.data(), planes, prm, aux, y.data(), reinterpret_cast<acc_t(*)[PP]>(dot.data()),
        xsum.data(), cyc);
    for (int threads = 1; threads <= 2; ++threads) {
      for (int tile = 0; tile < TILES; ++tile)
        brom_tile_gemv_csim<ROWS, COLS, GROUP, BITS, SF>(xq.data(), a_scale.data(), planes[tile], prm[tile], aux[tile],
                                                         &yf[tile], xsf.data(), cyf, threads, TILES);
      for (int o = 0; o < R; ++o) tally.check(float_to_bits(yf[o]) == float_to_bits(y[o]));
      for (int g = 0; g < NG; ++g) tally.check(xsf[g] == xsum[g]);
      // the repacked path (codes unpacked once at load): portable loop, and the SIMD loop when compiled in
      for (int simd = 0; simd <= ROMA_CSIM_SIMD; ++simd) {
        std::fill(yf.begin(), yf.end(), -1.0f);
        for (int tile = 0; tile < TILES; ++tile) {
          if (simd)
            brom_tile_gemv_packed<ROWS, COLS, GROUP, BITS, true>(xq.data(), a_scale.data(), packed[tile],
                                                                 &yf[tile], xsf.data(), cyf, threads, TILES);
          else
            brom_tile_gemv_packed<ROWS, COLS, GROUP, BITS, false>(xq.data(), a_scale.data(), packed[tile],
                                                                  &yf[tile], xsf.data(), cyf, threads, TILES);
        }
        for (int o = 0; o < R; ++o) tally.check(float_to_bits(yf[o]) == float_to_bits(y[o]));
        for (int g = 0; g < NG; ++g) tally.check(xsf[g] == xsum[g]);
      }
    }
  }
  return tally.mismatches - before;
}

// A fixed tile shape as an engine: its one row count is its alignment.
template <class C>
struct DdrFixedShape : C {
  static constexpr int ROW_ALIGN = C::MAX_ROWS;
};

// All TILES tiles of one DDR-streamed tensor (a fixed shape) through PORTS PORT_BITS-wide ports reading one image,
// into a y of Y_BANKS cyclic banks (roma_core's engines run brom_ddr_gemv_rt at run-time shapes).
template <int PORT_BITS, int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          bool PROBE = false, ScaleFormat SF = ScaleFormat::Fp16, int PORTS = 1, int Y_BANKS = 1>
void brom_ddr_gemv(const act_t xq[COLS], const float a_scale[COLS / GROUP], const rom_word_t *image,
                   float y[TILES * ROWS], acc_t dot_probe[TILES][(COLS / GROUP) * ROWS],
                   acc_t xsum_out[COLS / GROUP], Cycles &cyc) {
  brom_ddr_gemv_rt<DdrFixedShape<BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>>, TILES, PORT_BITS, PORTS, PROBE, 1,
                   Y_BANKS>(
      1, ROWS, COLS, reinterpret_cast<const act_t(*)[COLS]>(xq),
      reinterpret_cast<const float(*)[COLS / GROUP]>(a_scale), image, image, image, image, y, y, y, y, dot_probe,
      xsum_out, cyc);
}

// The same tensor on an engine that takes its tiles at run time (VAR_TILES: roma_core's layers' DDR engine that also
// streams the lm head), sized for twice its tiles: y bit for bit as with the tiles fixed (yd), the same chunk loop's
// cycles; only DDR_Y's rows a cycle may differ (one a cycle at run-time tiles).
template <int PORT_BITS, int TILES, int PORTS, int Y_BANKS, class C>
void check_var_tiles(const std::vector<act_t> &xq, const std::vector<float> &a_scale,
                     const std::vector<rom_word_t> &ddr, const std::vector<float> &yd, const Cycles &fixed,
                     Tally &tally) {
  constexpr int ROWS = C::MAX_ROWS, COLS = C::MAX_COLS, NG = C::NG, R = TILES * ROWS;
  static acc_t probe[2 * TILES][NG * ROWS]; // not written (PROBE = false)
  std::vector<float> yv(R, -1.0f);
  std::vector<acc_t> xs(NG);
  Cycles cyc;
  brom_ddr_gemv_rt<DdrFixedShape<C>, 2 * TILES, PORT_BITS, PORTS, false, 1, Y_BANKS, COLS, NG, true>(
      1, ROWS, COLS, reinterpret_cast<const act_t(*)[COLS]>(xq.data()),
      reinterpret_cast<const float(*)[NG]>(a_scale.data()), ddr.data(), ddr.data(), ddr.data(), ddr.data(), yv.data(),
      yv.data(), yv.data(), yv.data(), probe, xs.data(), cyc, TILES);
  for (int o = 0; o < R; ++o) tally.check(float_to_bits(yv[o]) == float_to_bits(yd[o]));
  typedef DdrStream<DdrStepConfig<C::GROUP, C::BITS, C::DP, C::SF>, PORT_BITS> P;
  const uint64_t y_fixed = P::y_cycles(ROWS, ROWS, C::MAX_ROWS, P::y_rows(TILES, PORTS, Y_BANKS));
  tally.check(cyc.gemv - P::y_cycles(ROWS, ROWS, C::MAX_ROWS, 1) == fixed.gemv - y_fixed &&
              cyc.candidates == fixed.candidates);
}

// The DDR-streamed kernel on the DDR image through PORTS PORT_BITS-wide ports (a tile per port at once) into a y of
// Y_BANKS banks, and the C-simulation repack of its tiles, against the ROM kernel on datapath DP: y, dots and xsum
// bit for bit.
template <int PORT_BITS, int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP, ScaleFormat SF,
          int PORTS = 1, int Y_BANKS = 1>
long run_ddr(const Case &c, const BromImageHost &img, Tally &tally, uint64_t &cycles_per_gemv) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF> C;
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS, DP, SF> D;
  constexpr int NG = C::NG, PP = C::PARAMS;
  const int T = c.tokens, R = TILES * ROWS;
  const long before = tally.mismatches;
  const size_t words = tb::file_items(c.name + ".ddr.u32", 4);
  const bool size_ok = words == (size_t)(TILES * D::TILE_WORDS);
  tally.check(size_ok);
  if (!size_ok) {
    std::printf("  %s: the DDR image has %zu words, the kernel expects %lld\n", c.name.c_str(), words,
                (long long)(TILES * D::TILE_WORDS));
    return tally.mismatches - before;
  }
  const auto ddr = read_array<rom_word_t>(c.name + ".ddr.u32", words);
  const auto x = read_array<float>(c.name + ".x.f32", (size_t)T * COLS);
  std::vector<CsimPackedTile> packed(TILES);
  for (int tile = 0; tile < TILES; ++tile) {
    csim_pack_ddr_tile<ROWS, COLS, GROUP, BITS, SF>(&ddr[(size_t)tile * D::TILE_WORDS], packed[tile]);
    tally.check(packed[tile].ok);
  }
  std::vector<act_t> xq(COLS);
  std::vector<float> a_scale(NG), y(R), yd(R), yp(R);
  std::vector<acc_t> dot((size_t)TILES * PP), dotd((size_t)TILES * PP), xsum(NG), xsd(NG), xsp(NG);
  for (int t = 0; t < T; ++t) {
    Cycles cyc, cyd, cyp;
    act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq.data(), a_scale.data(), cyc);
    brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, DP, true, SF>(
        xq.data(), a_scale.data(), rom_planes<C>(img), rom_prm<C>(img), rom_aux<C>(img), y.data(),
        reinterpret_cast<acc_t(*)[PP]>(dot.data()), xsum.data(), cyc);
    brom_ddr_gemv<PORT_BITS, TILES, ROWS, COLS, GROUP, BITS, DP, true, SF, PORTS, Y_BANKS>(
        xq.data(), a_scale.data(), ddr.data(), yd.data(), reinterpret_cast<acc_t(*)[PP]>(dotd.data()), xsd.data(), cyd);
    cycles_per_gemv = cyc.act_quant + cyd.total();
    for (int tile = 0; tile < TILES; ++tile)
      brom_tile_gemv_packed<ROWS, COLS, GROUP, BITS>(xq.data(), a_scale.data(), packed[tile], &yp[tile], xsp.data(),
                                                     cyp, 0, TILES);
    for (int o = 0; o < R; ++o) {
      tally.check(float_to_bits(yd[o]) == float_to_bits(y[o]));
      tally.check(float_to_bits(yp[o]) == float_to_bits(y[o]));
    }
    for (size_t i = 0; i < dot.size(); ++i) tally.check(dotd[i] == dot[i]);
    for (int g = 0; g < NG; ++g) tally.check(xsd[g] == xsum[g] && xsp[g] == xsum[g]);
    if constexpr (TILES % PORTS == 0)
      check_var_tiles<PORT_BITS, TILES, PORTS, Y_BANKS, C>(xq, a_scale, ddr, yd, cyd, tally);
  }
  return tally.mismatches - before;
}

// Token lanes: the case's tokens (at most MAX_TOKEN_LANES) as one block through the engine's and the DDR stream's
// MAX_TOKEN_LANES lanes (a lane left over when the case has fewer): each token's y bit for bit as its own GEMV, and the
// block counted as one pass over the weights with a candidate stage per token.
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF>
long run_token_lanes(const Case &c, const BromImageHost &img, Tally &tally) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> C;
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> D;
  constexpr int NG = C::NG, PP = C::PARAMS, L = MAX_TOKEN_LANES;
  const int n = std::min(c.tokens, L), R = TILES * ROWS;
  const long before = tally.mismatches;
  const auto x = read_array<float>(c.name + ".x.f32", (size_t)c.tokens * COLS);
  const auto ddr = read_array<rom_word_t>(c.name + ".ddr.u32", (size_t)TILES * D::TILE_WORDS);
  act_t xq[L][COLS] = {};
  float a_scale[L][NG] = {};
  std::vector<float> y1(R), yb((size_t)L * R, -1.0f), yd((size_t)L * R, -1.0f);
  std::vector<acc_t> dot((size_t)TILES * PP), xsum(NG);
  Cycles quant, block, block_ddr;
  for (int t = 0; t < n; ++t) act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq[t], a_scale[t], quant);
  brom_gemv_tiles_rt<C, TILES, false, L>(n, ROWS, COLS, xq, a_scale, rom_planes<C>(img), 0, rom_prm<C>(img), 0,
                                         rom_aux<C>(img), 0, &yb[0], &yb[R], &yb[2 * R], &yb[3 * R],
                                         reinterpret_cast<acc_t(*)[PP]>(dot.data()), xsum.data(), block);
  brom_ddr_gemv_rt<DdrFixedShape<C>, TILES, 512, 1, false, L>(n, ROWS, COLS, xq, a_scale, ddr.data(), ddr.data(),
                                                               ddr.data(), ddr.data(), &yd[0], &yd[R], &yd[2 * R],
                                                               &yd[3 * R], reinterpret_cast<acc_t(*)[PP]>(dot.data()),
                                                               xsum.data(), block_ddr);
  Cycles one, one_ddr;
  for (int t = 0; t < L; ++t) {
    if (t < n) {
      brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, false, SF>(
          xq[t], a_scale[t], rom_planes<C>(img), rom_prm<C>(img), rom_aux<C>(img), y1.data(),
          reinterpret_cast<acc_t(*)[PP]>(dot.data()), xsum.data(), t == 0 ? one : quant);
      brom_ddr_gemv<512, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, false, SF>(
          xq[t], a_scale[t], ddr.data(), y1.data(), reinterpret_cast<acc_t(*)[PP]>(dot.data()), xsum.data(),
          t == 0 ? one_ddr : quant);
    }
    for (int o = 0; o < R; ++o) { // a lane past the block writes nothing
      const uint32_t want = float_to_bits(t < n ? y1[o] : -1.0f);
      tally.check(float_to_bits(yb[(size_t)t * R + o]) == want && float_to_bits(yd[(size_t)t * R + o]) == want);
    }
  }
  typedef BromStepConfig<GROUP, BITS, Datapath::LutSelect, SF> S;
  const bool split = S::row_split(n, L, ROWS, ROWS);
  // a block costs one token's candidate stage (a stage per lane, side by side) and one pass over the weights
  tally.check(block.gemv == (split ? S::gemv_cycles(ROWS / 2, COLS, C::GEMV_II) : one.gemv) &&
              block.candidates == one.candidates);
  tally.check(block_ddr.gemv == one_ddr.gemv && block_ddr.candidates == one_ddr.candidates);

  // Decode's row split: token 0 alone through the lanes, its even rows on lane 0 and its odd ones on lane 1 (where
  // the tile's rows allow it: S::row_split), into y0 only: bit for bit its GEMV on one lane, every dot product probed
  // where that one probes it, in half the steps
  std::vector<float> ys((size_t)L * R, -1.0f), y0(R);
  std::vector<acc_t> dot_split((size_t)TILES * PP, -1), dot_one((size_t)TILES * PP);
  Cycles decode, single;
  brom_gemv_tiles_rt<C, TILES, true, L>(1, ROWS, COLS, xq, a_scale, rom_planes<C>(img), 0, rom_prm<C>(img), 0,
                                        rom_aux<C>(img), 0, &ys[0], &ys[R], &ys[2 * R], &ys[3 * R],
                                        reinterpret_cast<acc_t(*)[PP]>(dot_split.data()), xsum.data(), decode);
  brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, true, SF>(
      xq[0], a_scale[0], rom_planes<C>(img), rom_prm<C>(img), rom_aux<C>(img), y0.data(),
      reinterpret_cast<acc_t(*)[PP]>(dot_one.data()), xsum.data(), single);
  for (int o = 0; o < R; ++o) {
    tally.check(float_to_bits(ys[o]) == float_to_bits(y0[o]));
    for (int t = 1; t < L; ++t) tally.check(float_to_bits(ys[(size_t)t * R + o]) == float_to_bits(-1.0f));
  }
  for (size_t i = 0; i < dot_one.size(); ++i) tally.check(dot_split[i] == dot_one[i]);
  const bool splits = S::row_split(1, L, ROWS, ROWS);
  tally.check(splits == (ROWS % 2 == 0 && ROWS / 2 >= (ROWS < timing::FADD_LATENCY ? ROWS : timing::FADD_LATENCY)));
  tally.check(decode.gemv == (splits ? S::gemv_cycles(ROWS / 2, COLS, C::GEMV_II) : single.gemv));
  tally.check(!splits || decode.gemv + (uint64_t)(COLS / GROUP) * (ROWS / 2) * C::GEMV_II == single.gemv);
  return tally.mismatches - before;
}

// The FFN pair's engine of two banks (brom_gemv_banks_rt, two token lanes a bank): bank 0 holds the case's matrix A,
// bank 1 its complement B (every code c as 2^BITS - 1 - c: another matrix of the same shape) followed by A, so a
// tensor starts past the bank's first words. Each call gives every token's y bit for bit as the one-bank engine's
// GEMV of its matrix: A alone from bank 0 and from bank 1 (its rows split over the banks' four slots where the
// tile's rows allow it, in half the steps, decode's split too), and the pairs A with B at once (A on bank 0's slots,
// B on bank 1's into z, the other way round, and both from bank 1 through a port each, unsplit), each counted as one
// GEMV of the two-lane engine.
template <class C>
struct TwiceTheBank : C { // bank 1 of run_two_banks: B's words, then A's
  static constexpr int PLANE_WORDS = 2 * C::PLANE_WORDS, PARAMS = 2 * C::PARAMS, AUX = 2 * C::AUX;
};
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF>
long run_two_banks(const Case &c, const BromImageHost &img, Tally &tally) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> C;
  typedef TwiceTheBank<C> C1;
  typedef BromStepConfig<GROUP, BITS, Datapath::LutSelect, SF> S;
  constexpr int NG = C::NG, PP = C::PARAMS, PW = C::PLANE_WORDS, AX = C::AUX, L = 2;
  const int n_block = std::min(c.tokens, L), R = TILES * ROWS;
  const long before = tally.mismatches;
  const auto x = read_array<float>(c.name + ".x.f32", (size_t)c.tokens * COLS);
  act_t xq[L][COLS] = {};
  float a_scale[L][NG] = {};
  Cycles quant;
  for (int t = 0; t < n_block; ++t) act_quant<COLS, GROUP>(COLS, &x[(size_t)t * COLS], xq[t], a_scale[t], quant);
  std::vector<rom_word_t> inv((size_t)TILES * PW), planes1((size_t)TILES * 2 * PW);
  std::vector<scale_word_t> prm1((size_t)TILES * 2 * PP), aux1((size_t)TILES * 2 * AX);
  for (int t = 0; t < TILES; ++t) {
    for (int k = 0; k < PW; ++k) {
      const rom_word_t a = rom_planes<C>(img)[t][k];
      inv[(size_t)t * PW + k] = planes1[(size_t)t * 2 * PW + k] = ~a;
      planes1[(size_t)t * 2 * PW + PW + k] = a;
    }
    for (int k = 0; k < PP; ++k)
      prm1[(size_t)t * 2 * PP + k] = prm1[(size_t)t * 2 * PP + PP + k] = rom_prm<C>(img)[t][k];
    for (int k = 0; k < AX; ++k)
      aux1[(size_t)t * 2 * AX + k] = aux1[(size_t)t * 2 * AX + AX + k] = rom_aux<C>(img)[t][k];
  }
  const auto p1 = reinterpret_cast<const rom_word_t(*)[2 * PW]>(planes1.data());
  const auto q1 = reinterpret_cast<const scale_word_t(*)[2 * PP]>(prm1.data());
  const auto a1 = reinterpret_cast<const scale_word_t(*)[2 * AX]>(aux1.data());
  std::vector<acc_t> dot((size_t)TILES * PP), xsum(NG);
  auto probe = reinterpret_cast<acc_t(*)[PP]>(dot.data());
  for (int n = 1; n <= n_block; ++n) {
    // the references: A and B on the one-bank engine of two token lanes
    std::vector<float> ya((size_t)L * R, -1.0f), yb((size_t)L * R, -1.0f);
    Cycles one, other;
    brom_gemv_tiles_rt<C, TILES, false, L>(n, ROWS, COLS, xq, a_scale, rom_planes<C>(img), 0, rom_prm<C>(img), 0,
                                           rom_aux<C>(img), 0, &ya[0], &ya[R], &ya[R], &ya[R], probe, xsum.data(), one);
    brom_gemv_tiles_rt<C, TILES, false, L>(n, ROWS, COLS, xq, a_scale,
                                           reinterpret_cast<const rom_word_t(*)[PW]>(inv.data()), 0, rom_prm<C>(img), 0,
                                           rom_aux<C>(img), 0, &yb[0], &yb[R], &yb[R], &yb[R], probe, xsum.data(),
                                           other);
    // (xbank, pair, ybank, want in y, want in z)
    const struct {
      int xbank;
      bool pair;
      int ybank;
      const std::vector<float> *y, *z;
    } calls[] = {{0, false, 0, &ya, nullptr}, {1, false, 0, &ya, nullptr}, {0, true, 1, &ya, &yb},
                 {1, true, 0, &yb, &ya},      {1, true, 1, &ya, &yb}};
    for (const auto &k : calls) {
      std::vector<float> y((size_t)L * R, -1.0f), z((size_t)L * R, -1.0f);
      Cycles cyc;
      // X: A in bank 0, or in bank 1 past B (alone, or beside B on bank 1), or B at its start (beside A on bank 0);
      // Y: B at bank 1's start, or A on bank 0
      const bool same = k.pair && k.ybank == k.xbank, x_past_b = k.xbank == 1 && (!k.pair || same);
      brom_gemv_banks_rt<C, C1, TILES, 2, false, L>(
          n, ROWS, COLS, xq, a_scale, k.xbank, k.pair, k.ybank, rom_planes<C>(img), rom_prm<C>(img), rom_aux<C>(img),
          p1, q1, a1, x_past_b ? PW : 0, x_past_b ? PP : 0, x_past_b ? AX : 0, 0, 0, 0, &y[0], &y[R], &y[R], &y[R],
          &z[0], &z[R], &z[R], &z[R], probe, xsum.data(), cyc);
      for (int t = 0; t < L; ++t)
        for (int o = 0; o < R; ++o) {
          const size_t i = (size_t)t * R + o;
          tally.check(float_to_bits(y[i]) == float_to_bits(t < n ? (*k.y)[i] : -1.0f));
          tally.check(float_to_bits(z[i]) == float_to_bits(t < n && k.z ? (*k.z)[i] : -1.0f));
        }
      // a pair on one bank takes a port each, unsplit; alone, a tensor splits its rows wherever they split on one
      // lane (as decode's token on two lanes)
      const int slots = same ? 1 : k.pair ? L : 2 * L;
      tally.check(cyc.gemv == S::engine_gemv_cycles(n, slots, ROWS, COLS, ROWS) && cyc.candidates == one.candidates);
      tally.check(!same || cyc.gemv == S::gemv_cycles(ROWS, COLS, C::GEMV_II));
      tally.check(k.pair || S::row_split(n, slots, ROWS, ROWS) == S::row_split(1, 2, ROWS, ROWS));
    }
  }
  return tally.mismatches - before;
}

// A q8 case's fp16 twin (name.fp16.bin), checked: the same codes, and its scales and minimums equal the ones
// load_brom_image decoded from the q8 arrays, bit for bit. nullptr (and a mismatch) when it is not.
bool load_twin(const Case &c, const BromImageHost &img, BromImageHost &twin, Tally &tally) {
  const std::string err = load_brom_image(tb::path(c.name + ".fp16.bin"), twin);
  const bool ok = err.empty() && twin.scale_format == ScaleFormat::Fp16 && twin.planes == img.planes &&
                  twin.scales == img.scales && twin.mins == img.mins;
  tally.check(ok);
  if (!ok) std::printf("  %s: the q8 image does not decode to its fp16 twin %s\n", c.name.c_str(), err.c_str());
  return ok;
}

template <int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16>
bool try_case(const Case &c, const BromImageHost &img, Tally &tally) {
  if (c.tiles != TILES || c.rows != TILES * ROWS || c.cols != COLS || c.group != GROUP || c.bits != BITS ||
      img.scale_format != SF)
    return false;
  BromImageHost twin_img;
  const BromImageHost *twin = nullptr;
  if (SF == ScaleFormat::Q8) twin = load_twin(c, img, twin_img, tally) ? &twin_img : nullptr;
  uint64_t cyc_lut = 0, cyc_dsp = 0;
  const long m_lut =
      run_datapath<TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>(c, img, twin, tally, cyc_lut);
  const long m_dsp = run_datapath<TILES, ROWS, COLS, GROUP, BITS, Datapath::DspMac, SF>(c, img, twin, tally, cyc_dsp);
  const long m_fast = run_csim_fast<TILES, ROWS, COLS, GROUP, BITS, SF>(c, img, tally) +
                      run_token_lanes<TILES, ROWS, COLS, GROUP, BITS, SF>(c, img, tally) +
                      run_two_banks<TILES, ROWS, COLS, GROUP, BITS, SF>(c, img, tally);
  // the stream at a Zynq UltraScale+ HP port's 128 bits (both datapaths) and an Alveo port's 512 bits
  // ... and through three 128-bit ports (a Zynq UltraScale+ board's HP0, HP1, HP3)
  // ... and through four 512-bit ports (a U250's) into a y of one bank, of 32 and of 64 (a layer buffer's without and
  // with decode's row split): the last round's rows go out P512::y_rows an iteration of y_ii cycles where the banks
  // allow it
  uint64_t cyc_ddr = 0, cyc_ddr_dsp = 0, cyc_ddr_512 = 0, cyc_ddr_3p = 0, cyc_ddr_4p = 0, cyc_ddr_4p_y = 0,
           cyc_ddr_4p_y64 = 0;
  const long m_ddr = run_ddr<128, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>(c, img, tally, cyc_ddr) +
                     run_ddr<128, TILES, ROWS, COLS, GROUP, BITS, Datapath::DspMac, SF>(c, img, tally, cyc_ddr_dsp) +
                     run_ddr<512, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>(c, img, tally, cyc_ddr_512) +
                     run_ddr<128, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF, 3>(c, img, tally, cyc_ddr_3p) +
                     run_ddr<512, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF, 4>(c, img, tally, cyc_ddr_4p) +
                     run_ddr<512, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF, 4, 32>(c, img, tally,
                                                                                                  cyc_ddr_4p_y) +
                     run_ddr<512, TILES, ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF, 4, 64>(c, img, tally,
                                                                                                  cyc_ddr_4p_y64);
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> C;
  typedef DdrStepConfig<GROUP, BITS, Datapath::LutSelect, SF> D;
  typedef DdrStream<D, 128> P128;
  typedef DdrStream<D, 512> P512;
  const int y_rows = P512::y_rows(TILES, 4, 32);
  tally.check(cyc_ddr_4p - cyc_ddr_4p_y ==
              P512::y_cycles(ROWS, ROWS, ROWS, 1) - P512::y_cycles(ROWS, ROWS, ROWS, y_rows));
  const int y_rows64 = P512::y_rows(TILES, 4, 64);
  tally.check(cyc_ddr_4p - cyc_ddr_4p_y64 ==
              P512::y_cycles(ROWS, ROWS, ROWS, 1) - P512::y_cycles(ROWS, ROWS, ROWS, y_rows64));
  // 64 banks take twice 32's rows in twice the cycles: no slower
  tally.check(cyc_ddr_4p_y64 <= cyc_ddr_4p_y + P512::y_ii(y_rows64));
  std::printf("  %-18s b=%d G=%-3d %4dx%-4d tiles=%d %-4s mismatches lut=%ld dsp=%ld csim-fast=%ld ddr=%ld  "
              "cycles/GEMV lut=%llu dsp=%llu (act_quant %llu + candidates %llu + gemv %llu, gemv II=%d) "
              "ddr@128=%llu (%s, chunk II %d) ddr@512=%llu (%s, chunk II %d) ddr@3x128=%llu ddr@4x512=%llu "
              "(y %d rows a cycle: %llu; %d rows in %d: %llu)\n",
              c.name.c_str(), BITS, GROUP, c.rows, COLS, TILES, c.scales.c_str(), m_lut, m_dsp, m_fast, m_ddr,
              (unsigned long long)cyc_lut, (unsigned long long)cyc_dsp,
              (unsigned long long)ActQuantConfig<COLS, GROUP>::CYCLES, (unsigned long long)C::CAND_CYCLES,
              (unsigned long long)C::GEMV_CYCLES, C::GEMV_II, (unsigned long long)cyc_ddr,
              P128::lanes(ROWS) ? "lanes" : "serial", P128::chunk_ii(ROWS, ROWS), (unsigned long long)cyc_ddr_512,
              P512::lanes(ROWS) ? "lanes" : "serial", P512::chunk_ii(ROWS, ROWS), (unsigned long long)cyc_ddr_3p,
              (unsigned long long)cyc_ddr_4p, y_rows, (unsigned long long)cyc_ddr_4p_y, y_rows64, P512::y_ii(y_rows64),
              (unsigned long long)cyc_ddr_4p_y64);
  return true;
}

// The shapes gen_brom_tile.py writes (each needs its own template instance).
bool dispatch(const Case &c, const BromImageHost &img, Tally &tally) {
  constexpr ScaleFormat Q8 = ScaleFormat::Q8;
#define ROMA_TB_RAND(B, G) (try_case<6, 2, 384, G, B>(c, img, tally) || try_case<6, 2, 384, G, B, Q8>(c, img, tally))
  return ROMA_TB_RAND(2, 32) || ROMA_TB_RAND(2, 64) || ROMA_TB_RAND(2, 128) || ROMA_TB_RAND(3, 32) ||
         ROMA_TB_RAND(3, 64) || ROMA_TB_RAND(3, 128) || ROMA_TB_RAND(4, 32) || ROMA_TB_RAND(4, 64) ||
         ROMA_TB_RAND(4, 128) || ROMA_TB_RAND(8, 32) || ROMA_TB_RAND(8, 64) || ROMA_TB_RAND(8, 128) ||
         try_case<1, 16, 192, 64, 3>(c, img, tally) ||      // one tile of 16 rows
         try_case<4, 8, 128, 64, 2>(c, img, tally) ||       // four tiles of 8 rows in lanes: at 512 bits a tile's
                                                            // outputs go out during the next one's blocks
         try_case<1, 16, 192, 64, 3, Q8>(c, img, tally) ||  // the same, q8 from the RTN quantizer
         try_case<3, 5, 96, 32, 2, Q8>(c, img, tally) ||    // q8, odd rows per tile, 15 steps (a partial block)
         try_case<4, 144, 576, 32, 4>(c, img, tally);       // SmolLM2-135M layer 0 wq, 4 tiles
#undef ROMA_TB_RAND
}

// The attention checks' random values: uniform in [-2, 2) from a xorshift64 state.
struct Uniform2 {
  uint64_t st;
  float operator()() {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return (float)((st >> 40) & 0xffffff) * 0x1p-22f - 2.0f;
  }
};

// The emulated board's attention fast path (attention_query_csim, AVX-512 builds) against attention_query's
// reference loops: every output bit for bit, on random fp16 caches and queries at several positions. With two KV
// ports the cache is split as the host splits it (runs of SIMD / 2 alternating between the ports' buffers), and
// the reference is the one-port attention_query on the whole rows: the ports change no bit, only the cycles.
template <int HEADS, int KV_HEADS, int HD, int SIMD, int PORTS = 1>
void check_attention_csim(Tally &tally) {
  constexpr int MAXCTX = 300, ROW = KV_HEADS * HD;
  Uniform2 rnd{0x9E3779B97F4A7C15ull ^ (uint64_t)(HEADS * 131 + KV_HEADS)};
  std::vector<half_bits_t> kc((size_t)MAXCTX * ROW), vc((size_t)MAXCTX * ROW);
  for (size_t i = 0; i < kc.size(); ++i) {
    kc[i] = float_to_half(rnd() * (i % 7 == 0 ? 1e-6f : 3.0f)); // includes fp16 subnormals
    vc[i] = float_to_half(rnd());
  }
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS> C;
  constexpr int PL = C::PORT_LANES;
  // each port's rows; a new row written through kv_write lands in the same places
  std::vector<half_bits_t> kp[2], vp[2];
  for (int p = 0; p < PORTS; ++p) {
    kp[p].resize((size_t)MAXCTX * C::PORT_ROW);
    vp[p].resize((size_t)MAXCTX * C::PORT_ROW);
  }
  for (int s = 0; s < MAXCTX; ++s)
    for (int e = 0; e < ROW; ++e) {
      const size_t at = (size_t)s * C::PORT_ROW + (e / (PL * PORTS)) * PL + e % PL;
      kp[(e / PL) % PORTS][at] = kc[(size_t)s * ROW + e];
      vp[(e / PL) % PORTS][at] = vc[(size_t)s * ROW + e];
    }
  half_bits_t *k0 = kp[0].data(), *k1 = PORTS > 1 ? kp[1].data() : nullptr;
  half_bits_t *v0 = vp[0].data(), *v1 = PORTS > 1 ? vp[1].data() : nullptr;
  std::vector<float> q((size_t)HEADS * HD), ref(q.size()), fast(q.size()), ported(q.size());
  long bad = 0;
  {
    std::vector<float> kn(ROW), vn(ROW);
    for (int e = 0; e < ROW; ++e) {
      kn[e] = half_to_float(kc[(size_t)(MAXCTX - 1) * ROW + e]);
      vn[e] = half_to_float(vc[(size_t)(MAXCTX - 1) * ROW + e]);
    }
    std::vector<half_bits_t> k_before[2] = {kp[0], kp[1]}, v_before[2] = {vp[0], vp[1]};
    for (int p = 0; p < PORTS; ++p) { // clear the last row, then write it again
      std::fill(kp[p].begin() + (size_t)(MAXCTX - 1) * C::PORT_ROW, kp[p].end(), 0);
      std::fill(vp[p].begin() + (size_t)(MAXCTX - 1) * C::PORT_ROW, vp[p].end(), 0);
    }
    LayerCycles cw;
    kv_write<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS>(kn.data(), vn.data(), MAXCTX - 1, k0, v0, cw,
                                                                     nullptr, nullptr, k1, v1);
    bool ok = cw.attention == C::WRITE_CYCLES;
    for (int p = 0; p < PORTS; ++p) ok = ok && kp[p] == k_before[p] && vp[p] == v_before[p];
    tally.check(ok);
    bad += !ok;
  }
  for (int pos : {0, 1, 2, 15, 64, 151, MAXCTX - 1}) {
    for (size_t i = 0; i < q.size(); ++i) q[i] = rnd() * (pos % 2 ? 4.0f : 0.5f);
    LayerCycles c0, c1, c2;
    attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr>(q.data(), pos, kc.data(), vc.data(),
                                                                      ref.data(), c0);
    attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS>(q.data(), pos, k0, v0, ported.data(), c1,
                                                                             k1, v1);
    attention_query_fast<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS>(q.data(), pos, k0, v0,
                                                                                  fast.data(), c2, k1, v1);
    // decode's steps (roma_core's token_qkv): the cached keys 0..pos-1 scored by one call, the query's own key and
    // the finish by another, bit for bit the one pass; counted as the two passes (the second one's query load and
    // depth again)
    std::vector<float> phased(q.size());
    LayerCycles c3;
    const float(*qv)[HEADS * HD] = reinterpret_cast<const float(*)[HEADS * HD]>(q.data());
    float(*pv)[HEADS * HD] = reinterpret_cast<float(*)[HEADS * HD]>(phased.data());
    attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, 1, PORTS>(qv, 1, pos, 0, pos, ATT_START, k0, v0,
                                                                               pv, c3, k1, v1);
    attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, 1, PORTS>(qv, 1, pos, pos, pos + 1, ATT_FINISH,
                                                                               k0, v0, pv, c3, k1, v1);
    for (size_t i = 0; i < q.size(); ++i) {
      const bool ok = float_to_bits(ref[i]) == float_to_bits(fast[i]) &&
                      float_to_bits(ref[i]) == float_to_bits(ported[i]) &&
                      float_to_bits(ref[i]) == float_to_bits(phased[i]);
      tally.check(ok);
      bad += !ok;
    }
    tally.check(c1.attention == c2.attention && c1.attention == C::query_cycles(pos + 1));
    tally.check(c3.attention == C::query_cycles(pos + 1) + HEADS * C::CHD + C::QLOAD_DEPTH +
                                    (pos > 0 ? C::SCORE_DEPTH : 0));
  }
  // token lanes: a block of three queries at positions pos..pos+2 through four lanes (one idle), each query's
  // output bit for bit as attention_query's alone, the block counted as one pass over its last query's keys
  constexpr int L = MAX_TOKEN_LANES, N = 3;
  for (int pos : {0, 7, 150, MAXCTX - N}) {
    std::vector<float> qb((size_t)L * HEADS * HD), ob((size_t)L * HEADS * HD, -1.0f), one(q.size());
    for (size_t i = 0; i < qb.size(); ++i) qb[i] = rnd();
    LayerCycles cb, c1;
    attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, L, PORTS>(
        reinterpret_cast<const float(*)[HEADS * HD]>(qb.data()), N, pos, 0, pos + N, ATT_ALL, k0, v0,
        reinterpret_cast<float(*)[HEADS * HD]>(ob.data()), cb, k1, v1);
    for (int t = 0; t < L; ++t) {
      if (t < N)
        attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr>(&qb[(size_t)t * HEADS * HD], pos + t,
                                                                          kc.data(), vc.data(), one.data(), c1);
      for (size_t i = 0; i < one.size(); ++i) { // a lane past the block writes nothing
        const bool ok = float_to_bits(ob[(size_t)t * HEADS * HD + i]) == float_to_bits(t < N ? one[i] : -1.0f);
        tally.check(ok);
        bad += !ok;
      }
    }
    tally.check(cb.attention == C::block_cycles(pos + N, N));
  }
  std::printf("  attention fast path and token lanes (%d heads, %d kv heads, hd %d, simd %d over %d KV port(s), "
              "compiled in: %d): %ld mismatches\n", HEADS, KV_HEADS, HD, SIMD, PORTS, ROMA_ATT_CSIM_FAST, bad);
}

// KV sets (a U250's four KV ports): the cache's positions alternate between two sets of PORTS buffers (position s in
// set s % 2 at row s / 2, each set split over its ports as above), as the host splits them. One query through one lane
// (set 0's rows, then set 1's), the same query split over two lanes (decode: both sets at once), and the fast path
// agree bit for bit (the partial sums are the same: position s in partial s mod P either way); against the one-set
// reference within rounding (only the partials' grouping differs). A block of three queries on four lanes gives each
// query's output bit for bit. The split takes half the passes' cycles.
template <int HEADS, int KV_HEADS, int HD, int SIMD, int PORTS>
void check_attention_sets(Tally &tally) {
  constexpr int MAXCTX = 301, ROW = KV_HEADS * HD, SETS = MAX_KV_SETS, L = MAX_TOKEN_LANES;
  Uniform2 rnd{0xD1B54A32D192ED03ull ^ (uint64_t)(HEADS * 131 + KV_HEADS + 7 * PORTS)};
  std::vector<half_bits_t> kc((size_t)MAXCTX * ROW), vc((size_t)MAXCTX * ROW);
  for (size_t i = 0; i < kc.size(); ++i) {
    kc[i] = float_to_half(rnd() * 3.0f);
    vc[i] = float_to_half(rnd());
  }
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS, SETS> C;
  constexpr int PL = C::PORT_LANES, SET_ROWS = (MAXCTX + SETS - 1) / SETS;
  std::vector<half_bits_t> kp[4], vp[4]; // buffer 2 * set + port
  for (int b = 0; b < 4; ++b) {
    kp[b].assign((size_t)SET_ROWS * C::PORT_ROW, 0);
    vp[b].assign((size_t)SET_ROWS * C::PORT_ROW, 0);
  }
  for (int s = 0; s < MAXCTX; ++s)
    for (int e = 0; e < ROW; ++e) {
      const int b = 2 * (s % SETS) + (e / PL) % PORTS;
      const size_t at = (size_t)(s / SETS) * C::PORT_ROW + (e / (PL * PORTS)) * PL + e % PL;
      kp[b][at] = kc[(size_t)s * ROW + e];
      vp[b][at] = vc[(size_t)s * ROW + e];
    }
  auto ptr = [&](std::vector<half_bits_t> *v, int b) { return b % 2 < PORTS ? v[b].data() : nullptr; };
  half_bits_t *k0 = ptr(kp, 0), *k1 = ptr(kp, 1), *k2 = ptr(kp, 2), *k3 = ptr(kp, 3);
  half_bits_t *v0 = ptr(vp, 0), *v1 = ptr(vp, 1), *v2 = ptr(vp, 2), *v3 = ptr(vp, 3);
  long bad = 0;
  auto check = [&](bool ok) {
    tally.check(ok);
    bad += !ok;
  };
  for (int row : {MAXCTX - 2, MAXCTX - 1}) { // a row of each set, cleared and written again through kv_write
    std::vector<half_bits_t> k_before[4] = {kp[0], kp[1], kp[2], kp[3]}, v_before[4] = {vp[0], vp[1], vp[2], vp[3]};
    std::vector<float> kn(ROW), vn(ROW);
    for (int e = 0; e < ROW; ++e) {
      kn[e] = half_to_float(kc[(size_t)row * ROW + e]);
      vn[e] = half_to_float(vc[(size_t)row * ROW + e]);
    }
    for (int b = 2 * (row % SETS); b < 2 * (row % SETS) + PORTS; ++b) {
      std::fill_n(kp[b].begin() + (size_t)(row / SETS) * C::PORT_ROW, C::PORT_ROW, 0);
      std::fill_n(vp[b].begin() + (size_t)(row / SETS) * C::PORT_ROW, C::PORT_ROW, 0);
    }
    LayerCycles cw;
    kv_write<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS, SETS>(kn.data(), vn.data(), row, k0, v0, cw,
                                                                           nullptr, nullptr, k1, v1, k2, v2, k3, v3);
    bool ok = cw.attention == C::WRITE_CYCLES;
    for (int b = 0; b < 4; ++b) ok = ok && kp[b] == k_before[b] && vp[b] == v_before[b];
    check(ok);
  }
  { // a chunk's rows at once: each set's in one loop, counted as its rows' chunks and one write latency per set
    constexpr int T = 5, start = MAXCTX - T;
    std::vector<half_bits_t> k_before[4] = {kp[0], kp[1], kp[2], kp[3]}, v_before[4] = {vp[0], vp[1], vp[2], vp[3]};
    static float kn[T][ROW], vn[T][ROW];
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < ROW; ++e) {
        kn[t][e] = half_to_float(kc[(size_t)(start + t) * ROW + e]);
        vn[t][e] = half_to_float(vc[(size_t)(start + t) * ROW + e]);
      }
    for (int s = start; s < MAXCTX; ++s)
      for (int b = 2 * (s % SETS); b < 2 * (s % SETS) + PORTS; ++b) {
        std::fill_n(kp[b].begin() + (size_t)(s / SETS) * C::PORT_ROW, C::PORT_ROW, 0);
        std::fill_n(vp[b].begin() + (size_t)(s / SETS) * C::PORT_ROW, C::PORT_ROW, 0);
      }
    LayerCycles cw;
    kv_write_rows<HEADS, KV_HEADS, HD, MAXCTX, T, SIMD, KvPlace::Ddr, PORTS, SETS>(kn, vn, start, T, k0, v0, cw, nullptr,
                                                                                   nullptr, k1, v1, k2, v2, k3, v3);
    bool ok = cw.attention == C::write_cycles(start, T) &&
              cw.attention == (uint64_t)T * C::CH + (SETS > 1 ? 2 : 1) * C::WRITE_DEPTH;
    for (int b = 0; b < 4; ++b) ok = ok && kp[b] == k_before[b] && vp[b] == v_before[b];
    check(ok);
  }
  std::vector<float> q((size_t)HEADS * HD), ref(q.size()), one(q.size()), fast(q.size()), split(q.size());
  double worst = 0.0;
  for (int pos : {0, 1, 2, 3, 15, 64, 151, MAXCTX - 2, MAXCTX - 1}) {
    for (size_t i = 0; i < q.size(); ++i) q[i] = rnd() * (pos % 2 ? 4.0f : 0.5f);
    LayerCycles c0, c1, c2, c3;
    attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr>(q.data(), pos, kc.data(), vc.data(),
                                                                      ref.data(), c0);
    attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS, SETS>(q.data(), pos, k0, v0, one.data(),
                                                                                   c1, k1, v1, k2, v2, k3, v3);
    attention_query_fast<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS, SETS>(
        q.data(), pos, k0, v0, fast.data(), c2, k1, v1, k2, v2, k3, v3);
    attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, 2, PORTS, SETS>(
        reinterpret_cast<const float(*)[HEADS * HD]>(q.data()), 1, pos, 0, pos + 1, ATT_ALL, k0, v0,
        reinterpret_cast<float(*)[HEADS * HD]>(split.data()), c3, k1, v1, k2, v2, k3, v3);
    // decode's steps (token_qkv), split over the sets and on one lane: keys 0..pos-1, then pos and the finish
    std::vector<float> split2(q.size()), one2(q.size());
    LayerCycles c4, c5;
    const float(*qv)[HEADS * HD] = reinterpret_cast<const float(*)[HEADS * HD]>(q.data());
    for (int step = 0; step < 2; ++step) {
      const int from = step ? pos : 0, to = step ? pos + 1 : pos, steps = step ? ATT_FINISH : ATT_START;
      attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, 2, PORTS, SETS>(
          qv, 1, pos, from, to, steps, k0, v0, reinterpret_cast<float(*)[HEADS * HD]>(split2.data()), c4, k1, v1, k2,
          v2, k3, v3);
      attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, 1, PORTS, SETS>(
          qv, 1, pos, from, to, steps, k0, v0, reinterpret_cast<float(*)[HEADS * HD]>(one2.data()), c5, k1, v1, k2,
          v2, k3, v3);
    }
    for (size_t i = 0; i < q.size(); ++i) {
      check(float_to_bits(one[i]) == float_to_bits(fast[i]) && float_to_bits(one[i]) == float_to_bits(split[i]) &&
            float_to_bits(one[i]) == float_to_bits(split2[i]) && float_to_bits(one[i]) == float_to_bits(one2[i]));
      worst = std::max(worst, (double)std::fabs(one[i] - ref[i]) / (1e-5 * (1.0 + std::fabs(ref[i]))));
    }
    const int S = pos + 1;
    check(c1.attention == c2.attention && c1.attention == C::query_cycles(S));
    // (roma_core's scores_beside_kv takes the two calls where k and v outlast RESCORE_CYCLES: their bound)
    check(c4.attention <= C::block_cycles(S, 1, 2) + C::RESCORE_CYCLES &&
          c5.attention <= C::query_cycles(S) + C::RESCORE_CYCLES);
    check(c4.attention == C::score_cycles(0, pos, 1, 2) + C::score_cycles(pos, S, 1, 2) + C::finish_cycles(S, 1, 2) &&
          c5.attention == C::query_cycles(S) + HEADS * C::CHD + C::QLOAD_DEPTH + (pos > 0 ? C::SCORE_DEPTH : 0));
    check(c3.attention == C::block_cycles(S, 1, 2) &&
          c1.attention - c3.attention ==
              (uint64_t)(S - C::set_rows(S, 0)) * C::CH * (C::SCORE_II + C::PV_II) - timing::FCMP_LATENCY);
  }
  check(worst <= 1.0);
  constexpr int N = 3;
  for (int pos : {0, 7, 150, MAXCTX - N}) {
    std::vector<float> qb((size_t)L * HEADS * HD), ob((size_t)L * HEADS * HD, -1.0f);
    for (size_t i = 0; i < qb.size(); ++i) qb[i] = rnd();
    LayerCycles cb, c1;
    attention_lanes<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, L, PORTS, SETS>(
        reinterpret_cast<const float(*)[HEADS * HD]>(qb.data()), N, pos, 0, pos + N, ATT_ALL, k0, v0,
        reinterpret_cast<float(*)[HEADS * HD]>(ob.data()), cb, k1, v1, k2, v2, k3, v3);
    for (int t = 0; t < L; ++t) {
      if (t < N)
        attention_query<HEADS, KV_HEADS, HD, MAXCTX, SIMD, KvPlace::Ddr, PORTS, SETS>(
            &qb[(size_t)t * HEADS * HD], pos + t, k0, v0, one.data(), c1, k1, v1, k2, v2, k3, v3);
      for (size_t i = 0; i < one.size(); ++i) // a lane past the block writes nothing
        check(float_to_bits(ob[(size_t)t * HEADS * HD + i]) == float_to_bits(t < N ? one[i] : -1.0f));
    }
    check(cb.attention == C::block_cycles(pos + N, N, L));
  }
  std::printf("  attention over two KV sets (%d heads, %d kv heads, hd %d, simd %d over %d port(s) a set, %d partial "
              "sums; against one set: %.3f of 1e-5 relative): %ld mismatches\n",
              HEADS, KV_HEADS, HD, SIMD, PORTS, C::PV_PARTIALS, worst, bad);
}

// exp_f32x16 against exp_f32 on every lane (a dense sweep of [-90, 90] and the special values), and the
// emulated board's 16-lane SwiGLU against its scalar expression; both are compiled in with AVX-512.
void check_exp_simd(Tally &tally) {
#if defined(__AVX512F__)
  std::vector<float> z;
  for (float v = -90.0f; v < 90.0f; v += 0x1p-9f) z.push_back(v);
  for (float v : {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, -86.0f, 88.38f, 88.72f, 88.73f}) z.push_back(v);
  while (z.size() % 16) z.push_back(0.5f);
  long bad = 0;
  for (size_t i = 0; i < z.size(); i += 16) {
    float v[16];
    _mm512_storeu_ps(v, exp_f32x16(_mm512_loadu_ps(&z[i])));
    for (int l = 0; l < 16; ++l) {
      const bool ok = float_to_bits(v[l]) == float_to_bits(exp_f32(z[i + l]));
      tally.check(ok);
      bad += !ok;
    }
  }
  constexpr int N = 1536;
  std::vector<float> gate(N), up(N), y(N);
  for (int i = 0; i < N; ++i) {
    gate[i] = z[(size_t)i * 37 % z.size()] * 0.25f;
    up[i] = z[(size_t)i * 11 % z.size()] * 0.1f;
  }
  LayerCycles cyc;
  swiglu_csim<N>(gate.data(), up.data(), y.data(), cyc);
  for (int i = 0; i < N; ++i) {
    const float g = gate[i], want = (g / (1.0f + exp_f32(-g))) * up[i];
    const bool ok = float_to_bits(y[i]) == float_to_bits(want);
    tally.check(ok);
    bad += !ok;
  }
  std::printf("  exp_f32x16 and SwiGLU fast path: %ld mismatches of %zu\n", bad, z.size() + N);
#else
  (void)tally;
#endif
}

// q8_to_half on every code (unsigned and signed) and biased exponent against numpy (q8.u16: [2][33][256]).
void check_q8_table(Tally &tally) {
  if (!tb::file_exists("q8.u16")) return;
  constexpr int EXPS = Q8_EXP_MAX - Q8_EXP_MIN + 1;
  const auto ref = read_array<uint16_t>("q8.u16", 2 * EXPS * 256);
  long bad = 0;
  for (int s = 0; s < 2; ++s)
    for (int e = 0; e < EXPS; ++e)
      for (int code = 0; code < 256; ++code) {
        const bool ok = q8_to_half((uint32_t)code, s == 1, (uint32_t)e) == ref[((size_t)s * EXPS + e) * 256 + code];
        tally.check(ok);
        bad += !ok;
      }
  std::printf("  q8_to_half: %ld mismatches of %d codes x exponents\n", bad, 2 * EXPS * 256);
}

void check_half_table(Tally &tally) {
  if (!tb::file_exists("half.f32")) return;
  const auto ref = read_array<float>("half.f32", 1 << 16);
  long bad = 0;
  for (uint32_t h = 0; h < (1u << 16); ++h) {
    const bool ok = float_to_bits(half_to_float((half_bits_t)h)) == float_to_bits(ref[h]);
    tally.check(ok);
    bad += !ok;
  }
  std::printf("  half_to_float: %ld mismatches of 65536 fp16 bit patterns\n", bad);
}

} // namespace

int main(int argc, char **argv) {
  if (!tb::init("tb_brom_tile", argc, argv, "gen_brom_tile.py")) return 2;
  std::vector<std::string> lines;
  if (!tb::read_cases(lines)) return 2;
  Tally tally;
  check_half_table(tally);
  check_q8_table(tally);
  check_exp_simd(tally);
  check_attention_csim<9, 3, 64, 8>(tally);  // SmolLM2-135M, 128-bit KV port
  check_attention_csim<9, 3, 64, 32>(tally); // SmolLM2-135M, 512-bit KV port
  check_attention_csim<9, 3, 64, 64, 2>(tally); // SmolLM2-135M, two 512-bit KV ports (a U250)
  check_attention_csim<9, 3, 64, 32, 2>(tally); // two 256-bit ports (a U280's HBM)
  check_attention_csim<4, 2, 64, 4>(tally);
  check_attention_csim<8, 8, 64, 8>(tally);
  check_attention_sets<9, 3, 64, 64, 2>(tally); // SmolLM2-135M, four 512-bit KV ports (a U250)
  check_attention_sets<9, 3, 64, 32, 1>(tally); // one 512-bit port a set
  check_attention_sets<4, 2, 64, 16, 2>(tally); // CH = 8: one partial a set
  int cases = 0;
  for (const std::string &line : lines) {
    std::istringstream in(line);
    Case c;
    if (!(in >> c.name >> c.bits >> c.group >> c.rows >> c.cols >> c.tiles >> c.tokens >> c.scales) ||
        (c.scales != "fp16" && c.scales != "q8")) {
      std::fprintf(stderr, "tb_brom_tile: bad line in cases.txt: %s\n", line.c_str());
      ++tally.mismatches;
      continue;
    }
    BromImageHost img;
    const std::string err = load_brom_image(tb::path(c.name + ".bin"), img);
    if (!err.empty()) {
      std::fprintf(stderr, "tb_brom_tile: %s\n", err.c_str());
      ++tally.mismatches;
      continue;
    }
    if ((int)img.bits != c.bits || (int)img.group != c.group || (int)img.rows != c.rows ||
        (int)img.cols != c.cols || (int)img.tiles != c.tiles ||
        img.scale_format != (c.scales == "q8" ? ScaleFormat::Q8 : ScaleFormat::Fp16)) {
      std::fprintf(stderr, "tb_brom_tile: %s: ROM image header disagrees with cases.txt\n", c.name.c_str());
      ++tally.mismatches;
      continue;
    }
    if (!dispatch(c, img, tally)) {
      std::fprintf(stderr, "tb_brom_tile: %s: no kernel instance for this shape in tb_brom_tile.cpp\n",
                   c.name.c_str());
      ++tally.mismatches;
      continue;
    }
    ++cases;
  }
  std::printf("  largest |y - y_golden| as a fraction of its tolerance: %.3f\n", tally.worst);
  return tb::finish(tally.mismatches, tally.compared,
                    " (" + std::to_string(cases) + " cases, 2 datapaths, ROM and DDR, fp16 and q8 scales)");
}

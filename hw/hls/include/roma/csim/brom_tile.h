// ROMA-FPGA B-ROM tile, C simulation only: what the emulated board and the testbenches run beside the
// synthesis kernels of ../brom_tile.h, never read by Vitis HLS.
//   brom_tile_gemv_csim     brom_tile_gemv straight from the ROM words, rows in parallel (OpenMP)
//   brom_tile_gemv_packed   the emulated board's GEMV over codes repacked once at load (AVX-512 VNNI or a
//                           portable loop), bit-identical to both synthesis datapaths (tb_brom_tile checks it)
//   load_brom_image         a NAME.bin ROM image written by roma_runtime.artifact.brom_image.write_image
#ifndef ROMA_CSIM_BROM_TILE_H
#define ROMA_CSIM_BROM_TILE_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../brom_tile.h"
#endif

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../brom_tile.h"

namespace roma {

// ---- brom_tile_gemv straight from the ROM words ----
// xsum[g] = sum of the GROUP activations of group g (the minimum's term), into both arrays.
template <int COLS, int GROUP>
inline void csim_group_sums(const act_t xq[COLS], acc_t xsum[COLS / GROUP], acc_t xsum_out[COLS / GROUP]) {
  for (int g = 0; g < COLS / GROUP; ++g) {
    acc_t s = 0;
    for (int j = 0; j < GROUP; ++j) s += xq[g * GROUP + j];
    xsum[g] = xsum_out[g] = s;
  }
}

// (The emulated board uses brom_tile_gemv_packed below; this one remains for tiles it cannot repack.)
// The same per-row arithmetic as brom_tile_gemv (bit for bit: exact int32 dot and xsum, the same decoded d and m,
// then per row the same fp32 sequence acc = term_0 + term_1 + ... with term = a_scale[g] * (d*dot + m*xsum[g])),
// evaluated row-major
// so that rows run in parallel (OpenMP; HLS never sees this code). The integer dot is LUT-select widened to
// octets: for every 8 activations the 256 subset sums are built once per GEMV, and each byte of a bit-plane
// word selects one (4 selections per 32-bit word instead of 8 nibble selections). tb_brom_tile checks that
// its y bit patterns equal both synthesis datapaths' on every case.
template <int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16,
          class C = BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>>
void brom_tile_gemv_csim(const act_t xq[COLS], const float a_scale[COLS / GROUP],
                         const rom_word_t planes[C::PLANE_WORDS], const scale_word_t prm[C::PARAMS],
                         const scale_word_t aux[C::AUX], float *y, acc_t xsum_out[COLS / GROUP], Cycles &cyc,
                         int threads = 0, int y_stride = 1) {
  constexpr int NG = C::NG, LANES = C::LANES, WPS = C::WPS, OCTETS = COLS / 8;
  static thread_local std::vector<int16_t> tab_store; // the calling thread's tables, shared by the row threads
  tab_store.resize((size_t)OCTETS * 256);
  int16_t *tab = tab_store.data();
  for (int o = 0; o < OCTETS; ++o) {
    int16_t *t = &tab[(size_t)o * 256];
    t[0] = 0;
    for (int b = 1; b < 256; ++b) t[b] = (int16_t)(t[b & (b - 1)] + xq[8 * o + __builtin_ctz((unsigned)b)]);
  }
  acc_t xsum[NG];
  csim_group_sums<COLS, GROUP>(xq, xsum, xsum_out);
  const int nthreads = threads > 0 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && (long)ROWS * COLS >= 65536)
  for (int r = 0; r < ROWS; ++r) {
    float acc = 0.0f;
    for (int g = 0; g < NG; ++g) {
      const int step = g * ROWS + r;
      const rom_word_t *w = &planes[(size_t)step * WPS];
      acc_t dot = 0;
      for (int p = 0; p < BITS; ++p) {
        acc_t sel = 0;
        for (int l = 0; l < LANES; ++l) {
          const rom_word_t word = w[p * LANES + l];
          const int16_t *t = &tab[(size_t)((g * GROUP + l * ROM_WORD_BITS) / 8) * 256];
          sel += t[word & 0xffu] + t[256 + ((word >> 8) & 0xffu)] + t[512 + ((word >> 16) & 0xffu)] +
                 t[768 + (word >> 24)];
        }
        dot += sel * (acc_t(1) << p);
      }
      const HalfPair dm = brom_scales<SF>(prm[step], aux[brom_aux_index<SF>(step, r)]);
      const float term = brom_term(a_scale[g], dm.d, dm.m, dot, xsum[g]);
      acc = (g == 0) ? term : acc + term;
    }
    y[(size_t)r * y_stride] = acc; // local row r: the tensor's row r * TILES + t when y_stride = TILES, y at tile t
  }
  cyc.candidates += C::CAND_CYCLES; // the hardware's cycles, whatever the simulation's loop order
  cyc.gemv += C::GEMV_CYCLES;
}

// ---- C simulation only: the emulated board's repacked GEMV (codes unpacked once at load) ----
// The ROM's bit planes are repacked once (csim_pack_tile, at roma_emu_load_build) into a row-interleaved
// layout for int8 dot-product SIMD: rows in blocks of CSIM_BLOCK = 16 (one 32-bit lane per row), and for each
// block and group, vectors of 64 bytes whose byte 4*i + c holds columns 4k+c (c = 0..3) of row i for CPB
// consecutive 4-column chunks k, chunk s of the vector in bits s*P..s*P+P-1 (P = 2 for 2-bit codes, 4 for 3-
// and 4-bit, 8 for 8-bit: 2-bit codes take a quarter of a byte). One vpdpbusd (unsigned code x signed
// activation, 4 products summed into each row's int32) per chunk gives the 16 rows' exact group dots side by
// side; the fp32 scaling then runs on 16 rows at once with the same per-row sequence as brom_tile_gemv
// (term = a_scale[g] * (d*dot + m*xsum[g]), acc = term_0 + term_1 + ...), so y is bit-identical (tb_brom_tile
// checks both the SIMD and the portable loop against both synthesis datapaths). fp16 d and m stay fp16 in
// memory (vcvtph2ps is exact for every non-NaN half); a tile with a NaN scale or minimum is not repacked and
// the caller keeps brom_tile_gemv_csim for it. q8 tiles are repacked from their decoded halves (never NaN).
constexpr int CSIM_BLOCK = 16;
#ifndef ROMA_CSIM_PARALLEL_MIN
#define ROMA_CSIM_PARALLEL_MIN (1L << 22)
#endif
constexpr long CSIM_PARALLEL_MIN = ROMA_CSIM_PARALLEL_MIN;
constexpr int CSIM_PREFETCH_BYTES = 8192; // how far ahead the SIMD loop prefetches its codes

template <int BITS>
struct CsimPack {
  static constexpr int P = BITS <= 2 ? 2 : BITS <= 4 ? 4 : 8; // bits per stored code
  static constexpr int CPB = 8 / P;                           // 4-column chunks per 64-byte vector
};

struct CsimPackedTile {
  bool ok = false;
  int blocks = 0;
  std::vector<uint8_t> codes;     // [blocks][NG][GROUP/4/CPB][64]
  std::vector<half_bits_t> d, m;  // [blocks][NG][CSIM_BLOCK], rows past ROWS: 0
};

// A tile's words as its ROM arrays hold them, fp16 scales and minimums (the packer's source; a q8 ROM tile's
// come from load_brom_image's decoded arrays; brom_ddr.h has the DDR one).
template <int WPS>
struct RomTileSource {
  const rom_word_t *planes;
  const half_bits_t *scales, *mins;
  const rom_word_t *step_planes(int step) const { return planes + (size_t)step * WPS; }
  half_bits_t scale(int step) const { return scales[step]; }
  half_bits_t minimum(int step) const { return mins[step]; }
};

// A tile as an engine's bank holds it in its scale format (roma_core's URAM banks after CMD_LOAD_WEIGHTS): its steps'
// fp16 scale and minimum decoded from prm/aux as the datapath decodes them (brom_scales).
template <int WPS, int ROWS, ScaleFormat SF>
struct RomBankTileSource {
  const rom_word_t *planes;
  const scale_word_t *prm, *aux;
  const rom_word_t *step_planes(int step) const { return planes + (size_t)step * WPS; }
  HalfPair scales(int step) const {
    return brom_scales<SF>(prm[step], aux[SF == ScaleFormat::Q8 ? step % ROWS : step]);
  }
  half_bits_t scale(int step) const { return scales(step).d; }
  half_bits_t minimum(int step) const { return scales(step).m; }
};

// The TILES tiles of one tensor (ROWS rows each) as one source of its rows in order: row R is tile R % TILES's row
// R / TILES (brom_tile.h deals the rows to the tiles in turn), so the emulated board packs and runs a tensor as one
// GEMV whatever its hardware's PEs.
template <int TILES, int ROWS, class Source>
struct InterleavedTiles {
  Source tile[TILES];
  int tile_step(int step, int &t) const { // the step of (group, row) of the tensor in its tile's order
    const int g = step / (ROWS * TILES), r = step % (ROWS * TILES);
    t = r % TILES;
    return g * ROWS + r / TILES;
  }
  const rom_word_t *step_planes(int step) const {
    int t;
    const int s = tile_step(step, t);
    return tile[t].step_planes(s);
  }
  half_bits_t scale(int step) const {
    int t;
    const int s = tile_step(step, t);
    return tile[t].scale(s);
  }
  half_bits_t minimum(int step) const {
    int t;
    const int s = tile_step(step, t);
    return tile[t].minimum(s);
  }
};

inline bool csim_is_nan(half_bits_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

// Repack one tile from `src` (step_planes / scale / minimum of each (group, row) step).
template <int ROWS, int COLS, int GROUP, int BITS, class Source>
void csim_pack_tile_from(const Source &src, CsimPackedTile &pk) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> C;
  constexpr int NG = C::NG, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB;
  constexpr int VPG = GROUP / 4 / CPB;
  const int NB = (ROWS + CSIM_BLOCK - 1) / CSIM_BLOCK;
  pk = CsimPackedTile();
  for (int i = 0; i < NG * ROWS; ++i) { // NaN d or m: vcvtph2ps would quiet it; keep the reference path
    if (csim_is_nan(src.scale(i)) || csim_is_nan(src.minimum(i))) return;
  }
  pk.blocks = NB;
  pk.codes.assign((size_t)NB * NG * VPG * 64, 0);
  pk.d.assign((size_t)NB * NG * CSIM_BLOCK, 0);
  pk.m.assign((size_t)NB * NG * CSIM_BLOCK, 0);
  for (int r = 0; r < ROWS; ++r) {
    const int b = r / CSIM_BLOCK, i = r % CSIM_BLOCK;
    for (int g = 0; g < NG; ++g) {
      const size_t bg = (size_t)b * NG + g;
      const int step = g * ROWS + r;
      pk.d[bg * CSIM_BLOCK + i] = src.scale(step);
      pk.m[bg * CSIM_BLOCK + i] = src.minimum(step);
      const rom_word_t *w = src.step_planes(step);
      for (int j = 0; j < GROUP; ++j) {
        const uint32_t code = rom_code<GROUP, BITS>(w, j);
        const int k = j / 4, c = j % 4, v = k / CPB, s = k % CPB;
        pk.codes[(bg * VPG + v) * 64 + 4 * i + c] |= (uint8_t)(code << (s * P));
      }
    }
  }
  pk.ok = true;
}

template <int ROWS, int COLS, int GROUP, int BITS>
void csim_pack_tile(const rom_word_t *planes, const half_bits_t *scales, const half_bits_t *mins,
                    CsimPackedTile &pk) {
  csim_pack_tile_from<ROWS, COLS, GROUP, BITS>(
      RomTileSource<BromTileConfig<ROWS, COLS, GROUP, BITS>::WPS>{planes, scales, mins}, pk);
}

// One block of 16 rows: y16[i] for rows i of the block (portable loop: the reference of the SIMD one).
template <int COLS, int GROUP, int BITS>
inline void csim_block_portable(const uint8_t *codes, const half_bits_t *dh, const half_bits_t *mh, const act_t *xq,
                                const float *a_scale, const acc_t *xsum, float *y16) {
  constexpr int NG = COLS / GROUP, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB, VPG = GROUP / 4 / CPB;
  constexpr uint32_t MASK = (1u << P) - 1u;
  float acc[CSIM_BLOCK];
  for (int g = 0; g < NG; ++g) {
    acc_t dot[CSIM_BLOCK] = {0};
    const act_t *x = xq + g * GROUP;
    for (int v = 0; v < VPG; ++v) {
      const uint8_t *s8 = codes + ((size_t)g * VPG + v) * 64;
      for (int s = 0; s < CPB; ++s) {
        const act_t *xk = x + 4 * (v * CPB + s);
        for (int i = 0; i < CSIM_BLOCK; ++i)
          for (int c = 0; c < 4; ++c) dot[i] += (acc_t)((s8[4 * i + c] >> (s * P)) & MASK) * (acc_t)xk[c];
      }
    }
    const float as = a_scale[g], xs = (float)xsum[g];
    for (int i = 0; i < CSIM_BLOCK; ++i) {
      const float d = half_to_float(dh[g * CSIM_BLOCK + i]), m = half_to_float(mh[g * CSIM_BLOCK + i]);
      const float term = as * (d * (float)dot[i] + m * xs);
      acc[i] = (g == 0) ? term : acc[i] + term;
    }
  }
  for (int i = 0; i < CSIM_BLOCK; ++i) y16[i] = acc[i];
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define ROMA_CSIM_SIMD 1
template <int COLS, int GROUP, int BITS>
inline void csim_block_simd(const uint8_t *codes, const half_bits_t *dh, const half_bits_t *mh, const act_t *xq,
                            const float *a_scale, const acc_t *xsum, float *y16) {
  constexpr int NG = COLS / GROUP, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB, VPG = GROUP / 4 / CPB;
  const __m512i mask = _mm512_set1_epi8((char)((1u << P) - 1u));
  __m512 acc = _mm512_setzero_ps();
  for (int g = 0; g < NG; ++g) {
    __m512i dot0 = _mm512_setzero_si512(), dot1 = _mm512_setzero_si512(); // two chains, exact int32 sums
    const act_t *x = xq + g * GROUP;
    for (int v = 0; v < VPG; ++v) {
      const uint8_t *cv = codes + ((size_t)g * VPG + v) * 64;
      // The codes are read once per GEMV, front to back (the blocks are contiguous): with the hardware
      // prefetcher alone the loop waits on DRAM. Measured on a 2-bit 49152x576 tile: 1.7x faster with a
      // prefetch CSIM_PREFETCH_BYTES ahead (plateau from 8 to 32 KB), the 8-bit lm head 1.1x. A prefetch past
      // the end is a hint and never faults.
      _mm_prefetch((const char *)(cv + CSIM_PREFETCH_BYTES), _MM_HINT_T0);
      const __m512i sv = _mm512_loadu_si512((const void *)cv);
      for (int s = 0; s < CPB; ++s) {
        int32_t x4;
        std::memcpy(&x4, x + 4 * (v * CPB + s), 4);
        const __m512i c = P == 8 ? sv : _mm512_and_si512(_mm512_srli_epi16(sv, s * P), mask);
        if (((v * CPB + s) & 1) == 0) dot0 = _mm512_dpbusd_epi32(dot0, c, _mm512_set1_epi32(x4));
        else dot1 = _mm512_dpbusd_epi32(dot1, c, _mm512_set1_epi32(x4));
      }
    }
    const __m512 dotf = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_add_epi32(dot0, dot1)); // |dot| < 2^24: exact
    const __m512 d = _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)(dh + g * CSIM_BLOCK)));
    const __m512 m = _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)(mh + g * CSIM_BLOCK)));
    const __m512 term = _mm512_mul_ps(_mm512_set1_ps(a_scale[g]),
                                      _mm512_add_ps(_mm512_mul_ps(d, dotf),
                                                    _mm512_mul_ps(m, _mm512_set1_ps((float)xsum[g]))));
    acc = (g == 0) ? term : _mm512_add_ps(acc, term);
  }
  _mm512_storeu_ps(y16, acc);
}
#else
#define ROMA_CSIM_SIMD 0
#endif

// The ROWS outputs of one tile from its repacked codes (pk.ok), local row r to y[r * y_stride] (the tiles of a tensor
// interleave its rows: tile t's row r is the tensor's row r * TILES + t). SIMD: the AVX-512 VNNI loop when compiled in (the
// Makefile's EMU_ARCH, on a CPU that lists those sets), else the portable loop; tb_brom_tile runs both.
template <int ROWS, int COLS, int GROUP, int BITS, bool SIMD = (ROMA_CSIM_SIMD != 0)>
void brom_tile_gemv_packed(const act_t xq[COLS], const float a_scale[COLS / GROUP], const CsimPackedTile &pk,
                           float *y, acc_t xsum_out[COLS / GROUP], Cycles &cyc, int threads = 0,
                           int y_stride = 1) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> C;
  constexpr int NG = C::NG, VPG = GROUP / 4 / CsimPack<BITS>::CPB;
  constexpr int NB = (ROWS + CSIM_BLOCK - 1) / CSIM_BLOCK;
  acc_t xsum[NG];
  csim_group_sums<COLS, GROUP>(xq, xsum, xsum_out);
  // Waking the row threads costs more than a layer GEMV takes here (~10 us from its packed codes): only
  // matrices of at least CSIM_PARALLEL_MIN weights (the LM head) are split across threads.
  const int nthreads = threads > 0 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && (long)ROWS * COLS >= CSIM_PARALLEL_MIN)
  for (int b = 0; b < NB; ++b) {
    const uint8_t *codes = &pk.codes[(size_t)b * NG * VPG * 64];
    const half_bits_t *dh = &pk.d[(size_t)b * NG * CSIM_BLOCK], *mh = &pk.m[(size_t)b * NG * CSIM_BLOCK];
    float tmp[CSIM_BLOCK];
    const bool direct = (b + 1) * CSIM_BLOCK <= ROWS && y_stride == 1;
    float *out = direct ? &y[b * CSIM_BLOCK] : tmp;
#if ROMA_CSIM_SIMD
    if (SIMD) csim_block_simd<COLS, GROUP, BITS>(codes, dh, mh, xq, a_scale, xsum, out);
    else
#endif
      csim_block_portable<COLS, GROUP, BITS>(codes, dh, mh, xq, a_scale, xsum, out);
    if (!direct)
      for (int i = 0; i < CSIM_BLOCK && b * CSIM_BLOCK + i < ROWS; ++i) y[(size_t)(b * CSIM_BLOCK + i) * y_stride] = tmp[i];
  }
  cyc.candidates += C::CAND_CYCLES; // the hardware's cycles, whatever the simulation's loop order
  cyc.gemv += C::GEMV_CYCLES;
}

// ---- load a NAME.bin ROM image ----

struct BromImageHost {
  uint32_t bits = 0, group = 0, rows = 0, cols = 0, tiles = 0;
  uint32_t plane_words_per_tile = 0, params_per_tile = 0;
  ScaleFormat scale_format = ScaleFormat::Fp16;
  std::vector<rom_word_t> planes;  // [tiles][plane_words_per_tile]
  std::vector<half_bits_t> scales; // [tiles][params_per_tile] fp16 bits (q8: decoded, for the repacker)
  std::vector<half_bits_t> mins;   // [tiles][params_per_tile]
  std::vector<scale_word_t> q8_params; // q8: [tiles][params_per_tile] sd | sm << 8, as stored
  std::vector<scale_word_t> q8_exps;   // q8: [tiles][rows / tiles] row exponents, as stored
  // The scale ROM arrays of the kernels (brom_tile_gemv's prm, aux): [tiles][PARAMS] and [tiles][AUX].
  const scale_word_t *rom_prm() const { return scale_format == ScaleFormat::Q8 ? q8_params.data() : scales.data(); }
  const scale_word_t *rom_aux() const { return scale_format == ScaleFormat::Q8 ? q8_exps.data() : mins.data(); }
};

inline uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

inline uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// The B-ROM image's header constants (artifact/brom_image.py reads them; its struct is the fields' layout).
constexpr uint32_t BROM_VERSION = 1;
constexpr uint32_t BROM_HEADER_BYTES = 72;
constexpr uint32_t BROM_LAYOUT_GROUP_MAJOR = 1; // word index ((g*R + r)*bits + p)*lanes + l

// The code widths and groups an image may have (artifact/brom_image.py check_params).
inline bool is_supported_bits(int b) { return b == 2 || b == 3 || b == 4 || b == 8; }
inline bool is_supported_group(int g) { return g == 32 || g == 64 || g == 128; }

// Returns "" on success, else a message naming the file. Layout: see artifact/brom_image.py (header, payload).
inline std::string load_brom_image(const std::string &path, BromImageHost &img) {
  FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return "cannot open ROM image " + path;
  std::vector<unsigned char> data;
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  const size_t HEADER = BROM_HEADER_BYTES;
  if (data.size() < 8 || std::string(data.begin(), data.begin() + 8) != "ROMABROM")
    return path + " is not a ROMA B-ROM image (bad magic)";
  if (data.size() < HEADER) return "ROM image " + path + " is truncated";
  const unsigned char *h = data.data();
  if (le32(h + 8) != BROM_VERSION || le32(h + 12) != HEADER) return "ROM image " + path + " has an unknown version";
  std::vector<unsigned char> hz(h, h + HEADER);
  hz[56] = hz[57] = hz[58] = hz[59] = 0;
  if (crc32_update(0, hz.data(), HEADER) != le32(h + 56))
    return "ROM image " + path + " is corrupt (header checksum mismatch)";
  img.bits = le32(h + 16);
  img.group = le32(h + 20);
  img.rows = le32(h + 24);
  img.cols = le32(h + 28);
  img.tiles = le32(h + 32);
  img.plane_words_per_tile = le32(h + 44);
  img.params_per_tile = le32(h + 48);
  const uint32_t format = le32(h + 60);
  const uint64_t plen = (uint64_t)le32(h + 64) | ((uint64_t)le32(h + 68) << 32);
  if (le32(h + 36) != ROM_WORD_BITS || le32(h + 40) != BROM_LAYOUT_GROUP_MAJOR) return "ROM image " + path + " has an unknown word layout";
  if (format > (uint32_t)ScaleFormat::Q8) return "ROM image " + path + " has an unknown scale format";
  img.scale_format = (ScaleFormat)format;
  const bool q8 = img.scale_format == ScaleFormat::Q8;
  if (!is_supported_bits((int)img.bits) || !is_supported_group((int)img.group) || img.tiles == 0 ||
      img.rows % img.tiles || img.cols % img.group)
    return "ROM image " + path + " has unsupported parameters";
  const uint64_t r = img.rows / img.tiles, ng = img.cols / img.group, lanes = img.group / 32;
  const uint64_t scale_bytes = q8 ? 2ull * img.params_per_tile + 2ull * r : 4ull * img.params_per_tile;
  if (img.plane_words_per_tile != ng * r * img.bits * lanes || img.params_per_tile != ng * r ||
      plen != (uint64_t)img.tiles * (4ull * img.plane_words_per_tile + scale_bytes))
    return "ROM image " + path + " has inconsistent sizes";
  if (data.size() != HEADER + plen) return "ROM image " + path + " is truncated or has trailing bytes";
  if (crc32_update(0, h + HEADER, plen) != le32(h + 52))
    return "ROM image " + path + " is corrupt (payload checksum mismatch)";
  const unsigned char *p = h + HEADER;
  img.planes.resize((size_t)img.tiles * img.plane_words_per_tile);
  for (size_t i = 0; i < img.planes.size(); ++i, p += 4) img.planes[i] = le32(p);
  const size_t pp = img.params_per_tile;
  std::vector<scale_word_t> &first = q8 ? img.q8_params : img.scales, &second = q8 ? img.q8_exps : img.mins;
  first.resize((size_t)img.tiles * pp);
  for (size_t i = 0; i < first.size(); ++i, p += 2) first[i] = (scale_word_t)(p[0] | (p[1] << 8));
  second.resize((size_t)img.tiles * (q8 ? r : pp));
  for (size_t i = 0; i < second.size(); ++i, p += 2) second[i] = (scale_word_t)(p[0] | (p[1] << 8));
  if (q8) { // decode into scales/mins with the kernels' decoder: the repacker and the fp16 view read those
    constexpr uint32_t EXP_RANGE = Q8_EXP_MAX - Q8_EXP_MIN;
    for (scale_word_t e : img.q8_exps)
      if ((e & 0xffu) > EXP_RANGE || (uint32_t)(e >> 8) > EXP_RANGE)
        return "ROM image " + path + " is corrupt (a q8 row exponent is out of range)";
    img.scales.resize(first.size());
    img.mins.resize(first.size());
    for (size_t t = 0; t < img.tiles; ++t)
      for (size_t step = 0; step < pp; ++step) {
        const HalfPair dm = brom_scales<ScaleFormat::Q8>(img.q8_params[t * pp + step], img.q8_exps[t * r + step % r]);
        img.scales[t * pp + step] = dm.d;
        img.mins[t * pp + step] = dm.m;
      }
  }
  return "";
}

} // namespace roma

#endif // ROMA_CSIM_BROM_TILE_H

// ROMA-FPGA URAM weight load: the load image of the tensors the placement plan puts in URAM ("URAM-load-once")
// and the checksum the core computes over it. UltraScale+ URAM has no initial contents, so those tensors' bank
// rows are written once after the overlay loads, by CMD_LOAD_WEIGHTS (roma_core.h), from this image in DDR.
//
// Image (written only by host/roma_runtime/artifact/uram_image.py; its module docstring has the layout):
//   URAM_HEADER_WORDS header words [URAM_MAGIC, URAM_VERSION, words (header included), checksum of the tensors],
//   then the URAM tensors at the word offsets roma_model.h gives (URAM_*). A tensor is its TILES tiles one after
//   another; a tile is the words its bank's tile holds, in the bank's order: the PLANE_WORDS bit-plane words, then the
//   scale arrays of its format (fp16: scales, minimums; q8: params, exponents), each as 16-bit entries two per
//   word (entry 2i in the low half, 2i+1 in the high half, a last odd entry zero-padded).
//
// Checksum (uram_checksum_*): per tensor, over its words w_0..w_{n-1}, a = sum w_j and b = sum of a before each
// word (= sum w_j * (n-1-j)), all mod 2^32, and the tensor's checksum a ^ b; the image's checksum is the sum of its
// tensors' (mod 2^32), so it does not depend on the order the core visits the tensors in. Two 32-bit adders with
// one-cycle recurrences: II = 1. Position-weighted (b), so swapped or shifted words change it, unlike a plain sum.
#ifndef ROMA_WEIGHT_LOAD_H
#define ROMA_WEIGHT_LOAD_H

#include <cstdint>

#include "types.h"

namespace roma {

constexpr uint32_t URAM_MAGIC = 0x4d415255u; // "URAM"; artifact/uram_image.py reads these three
constexpr uint32_t URAM_VERSION = 1;
constexpr int URAM_HEADER_WORDS = 4;         // magic, version, words, checksum

// The running checksum of one tensor's words.
struct UramChecksum {
  uint32_t a = 0, b = 0;
  void add(uint32_t w) {
#pragma HLS INLINE
    b += a;
    a += w;
  }
  uint32_t value() const { return a ^ b; }
};

// Words of n 16-bit entries, two per word.
constexpr int halves_words(int n) { return (n + 1) / 2; }

} // namespace roma

#endif // ROMA_WEIGHT_LOAD_H

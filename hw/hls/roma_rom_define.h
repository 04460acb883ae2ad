// Synthesis only: defines the three ROM arrays of one tensor, initialised from its .dat (written by
// compiler/brom.py). roma_model.h includes this file once per ROM tensor with ROMA_ROM_LAYER, ROMA_ROM_LINEAR
// and ROMA_ROM_DAT defined (see compiler/header.py); roma_core.cpp sets ROMA_ROM_DEFINE to this file's name.
// No include guard: it is meant to be included many times.
template <>
const roma::rom_word_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::planes[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                         [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::C::PLANE_WORDS] = {
#define ROMA_BROM_PLANES
#include ROMA_ROM_DAT
#undef ROMA_BROM_PLANES
};
template <>
const roma::half_bits_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::scales[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                          [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::C::PARAMS] = {
#define ROMA_BROM_SCALES
#include ROMA_ROM_DAT
#undef ROMA_BROM_SCALES
};
template <>
const roma::half_bits_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::mins[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                        [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::C::PARAMS] = {
#define ROMA_BROM_MINIMUMS
#include ROMA_ROM_DAT
#undef ROMA_BROM_MINIMUMS
};

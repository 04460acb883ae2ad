// Synthesis only: defines the ROM arrays of one tensor, initialised from its .dat (written by artifact/brom_image.py).
// roma_model.h includes this file once per ROM tensor with ROMA_ROM_LAYER, ROMA_ROM_LINEAR and ROMA_ROM_DAT
// defined (see artifact/model_header.py); roma_core.cpp sets ROMA_ROM_DEFINE to this file's name.
// No include guard: it is meant to be included many times.
// The scale arrays are those of the .dat's format: a q8 .dat defines ROMA_BROM_DAT_Q8 when included (here by
// the planes), an fp16 one (the format of every earlier build) does not. A .dat of the other format than
// roma_model.h's SCALES_* gave RomTensor fails to compile (its arrays are declared per format).
template <>
const roma::rom_word_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::planes[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                         [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::C::PLANE_WORDS] = {
#define ROMA_BROM_PLANES
#include ROMA_ROM_DAT
#undef ROMA_BROM_PLANES
};
#ifdef ROMA_BROM_DAT_Q8
static_assert(RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::SF == roma::ScaleFormat::Q8, "a q8 .dat for an fp16 tensor");
template <>
const roma::scale_word_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::params[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                           [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::C::PARAMS] = {
#define ROMA_BROM_PARAMS
#include ROMA_ROM_DAT
#undef ROMA_BROM_PARAMS
};
template <>
const roma::scale_word_t RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::exps[RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::TILES]
                                                                         [RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::ROWS] = {
#define ROMA_BROM_EXPONENTS
#include ROMA_ROM_DAT
#undef ROMA_BROM_EXPONENTS
};
#undef ROMA_BROM_DAT_Q8
#else
static_assert(RomTensor<ROMA_ROM_LAYER, ROMA_ROM_LINEAR>::SF == roma::ScaleFormat::Fp16, "an fp16 .dat for a q8 tensor");
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
#endif

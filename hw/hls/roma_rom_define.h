// Synthesis only: the declarators of the BRAM ROM banks, for the bank definitions roma_model.h generates
// (artifact/model_header.py): `ROMA_UNIT_PLANES(U) = { {tile 0 of each tensor's .dat}, {tile 1 ...}, ... };`
// defines the planes of GEMV engine U, one brace-enclosed row per tile holding that tile's section
// (ROMA_BROM_TILE) of every tensor of the engine's bank, in bank order; each .dat was written by
// artifact/brom_image.py. roma_core.cpp sets ROMA_ROM_DEFINE to this file's name; roma_model.h includes it once,
// before its banks. The scale arrays are those of the bank's format (fp16: SCALES and MINS; q8: PARAMS and EXPS):
// a .dat of the other format stops at its #error.
#ifndef ROMA_ROM_DEFINE_H
#define ROMA_ROM_DEFINE_H

#define ROMA_UNIT_ARRAY(T, U, NAME, INNER) template <> const T Unit<U>::NAME[Unit<U>::TILES][Unit<U>::INNER]
#define ROMA_UNIT_PLANES(U) ROMA_UNIT_ARRAY(roma::rom_word_t, U, planes, PLANE_WORDS)
#define ROMA_UNIT_SCALES(U) ROMA_UNIT_ARRAY(roma::half_bits_t, U, scales, PARAMS)
#define ROMA_UNIT_MINS(U) ROMA_UNIT_ARRAY(roma::half_bits_t, U, mins, PARAMS)
#define ROMA_UNIT_PARAMS(U) ROMA_UNIT_ARRAY(roma::scale_word_t, U, params, PARAMS)
#define ROMA_UNIT_EXPS(U) ROMA_UNIT_ARRAY(roma::scale_word_t, U, exps, AUX)

#endif // ROMA_ROM_DEFINE_H

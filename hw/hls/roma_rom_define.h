// Synthesis only: the declarators of the ROM bank arrays, for the bank definitions roma_model.h generates
// (artifact/model_header.py): `ROMA_BANK_PLANES(LIN, E) = { {blk.0 .dat rows}, {blk.3 .dat rows}, ... };` defines
// the planes of engine E of linear LIN, one brace-enclosed row per layer of its bank, each row the layer's .dat
// (written by artifact/brom_image.py) included with its section macro. roma_core.cpp sets ROMA_ROM_DEFINE to this
// file's name; roma_model.h includes it once, before its banks. The scale arrays are those of the bank's format
// (fp16: SCALES and MINS; q8: PARAMS and EXPS): a .dat of the other format stops at its #error.
#ifndef ROMA_ROM_DEFINE_H
#define ROMA_ROM_DEFINE_H

#define ROMA_BANK_ARRAY(T, LIN, E, NAME, INNER) \
  template <> const T RomBank<LIN, E>::NAME[RomBank<LIN, E>::DEPTH][RomBank<LIN, E>::TILES][RomBank<LIN, E>::INNER]
#define ROMA_BANK_PLANES(LIN, E) ROMA_BANK_ARRAY(roma::rom_word_t, LIN, E, planes, C::PLANE_WORDS)
#define ROMA_BANK_SCALES(LIN, E) ROMA_BANK_ARRAY(roma::half_bits_t, LIN, E, scales, C::PARAMS)
#define ROMA_BANK_MINS(LIN, E) ROMA_BANK_ARRAY(roma::half_bits_t, LIN, E, mins, C::PARAMS)
#define ROMA_BANK_PARAMS(LIN, E) ROMA_BANK_ARRAY(roma::scale_word_t, LIN, E, params, C::PARAMS)
#define ROMA_BANK_EXPS(LIN, E) ROMA_BANK_ARRAY(roma::scale_word_t, LIN, E, exps, ROWS)

#endif // ROMA_ROM_DEFINE_H

// ROMA-FPGA LoRA unit, C simulation only: the words for ../lora_unit.h's refusal codes (the testbench compares
// them with the reasons gen_lora_unit.py expects). Never read by Vitis HLS.
#ifndef ROMA_CSIM_LORA_UNIT_H
#define ROMA_CSIM_LORA_UNIT_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../lora_unit.h"
#endif

#include "../lora_unit.h"

namespace roma {

// nullptr for Ok, else a short reason
inline const char *lora_image_error_text(LoraImageError e) {
  switch (e) {
  case LoraImageError::Ok:
    return nullptr;
  case LoraImageError::Short:
    return "shorter than the header";
  case LoraImageError::Magic:
    return "bad magic";
  case LoraImageError::Version:
    return "unknown version";
  case LoraImageError::Types:
    return "unknown factor/scale type";
  case LoraImageError::SlotRank:
    return "slot rank above the unit's";
  case LoraImageError::Counts:
    return "layer/linear count differs from the model";
  case LoraImageError::Directory:
    return "bad directory offset or total size";
  case LoraImageError::DirectoryOutside:
    return "directory outside the image";
  case LoraImageError::Shape:
    return "linear shape differs from the model";
  case LoraImageError::EntryRank:
    return "entry rank above the slot rank";
  case LoraImageError::Scale:
    return "scale is not finite";
  case LoraImageError::Factor:
    return "factor outside the image";
  case LoraImageError::RowScales:
    return "row scales outside the image";
  case LoraImageError::Storage:
    return "storage type differs from the unit's";
  case LoraImageError::Target:
    return "factor on a linear the unit has no memory for";
  }
  return "unknown refusal code";
}

} // namespace roma

#endif // ROMA_CSIM_LORA_UNIT_H

"""The generated C++ header of a build: the model's and the hardware's dimensions as constexpr for the HLS
kernels (roma_model.h). Per-tensor bit widths, groups, scale formats (SCALES_*: 0 fp16, 1 q8; see
compiler/quantization/quantize.py) and tile counts go in as arrays indexed by layer.

Also generated for the top (hw/hls/roma_core.cpp):
- ROPE_INV_FREQ: the RoPE inverse frequencies as exact fp32 hex literals, computed like golden rope_tables;
- BITS_OUTPUT/GROUP_OUTPUT/TILES_OUTPUT always (a tied head repeats the embedding's: it is that ROM);
- DDR_<LINEAR>[N_LAYERS], DDR_TOKEN_EMBD, DDR_OUTPUT: per tensor, -1 when it is on chip, else the word offset
  of its image inside the DDR weight image (ddr_weights.bin) the core reads through `ddr_weights`, with
  DDR_WORDS (the image's words, 0 without DDR tensors) and DDR_CRC (its payload CRC-32, which the image's
  header repeats: the core refuses a buffer holding another image);
- WEIGHT_PORT_BITS: the board's weight port width (boards.json weight_port_bits): the width roma_core.cpp gives
  the ddr_weights/uram_weights port and brom_ddr.h counts the DDR stream at; WEIGHT_PORTS (and the macro
  ROMA_WEIGHT_PORTS for the interface pragmas): how many such ports (weight_ports) stream a DDR tensor's tiles;
  TOKEN_LANES: the prefill tokens a layers' GEMV engine serves per pass over its weights (the board's
  token_lanes as the plan kept them); PREFILL_CHUNK: the prompt tokens a prefill runs through all layers per pass
  (the board's prefill_chunk);
- URAM_<LINEAR>[N_LAYERS], URAM_TOKEN_EMBD, URAM_OUTPUT: per tensor, -1 unless the plan puts it in URAM
  ("URAM-load-once"), else the word offset of its bank words inside the URAM load image (uram_weights.bin,
  uram_image.py) that CMD_LOAD_WEIGHTS copies into its engine's bank, with URAM_WORDS (the image's words, 0 without
  URAM tensors) and URAM_CHECKSUM (weight_load.h's checksum of its tensors, which its header repeats);
- LORA_SLOTS, LORA_RANK, LORA_TARGET, LORA_INT8: the LoRA unit the build reserved (the manifest's "lora_unit"),
  and ROMA_LORA_IMPL / ROMA_LORA_ARRAYS, the memory its arrays bind to and which arrays it declares (macros for
  the top's pragmas);
- ROMA_LOGITS_IMPL: the memory g_logits binds to (uram where the board has URAM, else bram);
- KV_ONCHIP_CTX: the positions of the on-chip KV cache (`roma compile --kv-onchip N`; 0: the KV cache is in DDR
  only), and ROMA_KV_ONCHIP_IMPL, the memory its array binds to (uram, bram, or auto where the plan spread it
  over both), a macro because the top's BIND_STORAGE pragma takes it;
- KV_PORT_BITS: the board's KV port width (boards.json kv_port_bits), which sets attention's lanes; KV_PORTS and
  KV_PORT_LANES: the ports a DDR KV cache's rows are split over and the runs they alternate in, KV_SETS: the position
  sets (position p's row in set p % KV_SETS; kv_layout.KvLayout), and the macro ROMA_KV_PORTS for the interface
  pragmas: the board's kv_ports (its KV m_axi ports: 1, 2 or 4); KV_BESIDE_WEIGHTS: whether the memory's peak
  covers the weight and KV ports at once (Board.kv_beside_weights);
- ROMA_NORM_LANES, ROMA_SWIGLU_LANES, ROMA_ROPE_LANES, ROMA_RESIDUAL_LANES: the elementwise units' lanes (the
  board's elementwise_lanes for this model's dimensions, boards.ElementwiseLanes.for_model), macros because the
  top's partition pragmas name them; ROMA_ACT_LANES: the activations a GEMV engine takes in per cycle (the board's
  act_lanes; an engine of a smaller group takes its group, roma_core.cpp Unit::ACT); SAMPLER_LANES: the logits the
  on-chip sampler takes in per cycle (the board's sampler_lanes, Board.model_sampler_lanes), ARGMAX_LANES those a greedy
  token takes (the board's argmax_lanes, Board.model_argmax_lanes);
- the GEMV engines and their weight banks: one engine per distinct configuration (bits, group, scale format,
  tiles, and tier: BRAM ROM, URAM or DDR-streamed) of the layers' linears, shared by every layer and linear of
  that configuration (the engine takes a tensor's rows and columns at run time); the embedding and an untied
  output are engines of their own, except a head streamed from DDR where a weight port word holds one step at most
  (head_on_layers_engine): it runs on the layers' DDR engine of its configuration tiled as the weight ports, with
  tiles of its own. UNIT_<LINEAR>[N_LAYERS], UNIT_TOKEN_EMBD and UNIT_OUTPUT number each tensor's
  engine (0.. in order of first use: linear by linear, layer by layer, then token_embd and output; a tied output
  repeats token_embd's), N_UNITS counts them. An on-chip engine's bank stacks its tensors in that same order,
  tile by tile (bank [TILES][words]); roma_core.cpp computes each tensor's offset in it from that order.
  FFN_PAIR_GATE and FFN_PAIR_UP name two engines that run a layer's w_gate and w_up at once where the layer has them
  there (ffn_pair: never two DDR engines, which share the weight ports; -1 when no layer has such a pair);
- a synthesis-only section that defines every BRAM ROM bank (ROMA_UNIT_* declarators from ROMA_ROM_DEFINE, i.e.
  hw/hls/roma_rom_define.h) initialised from its tensors' .dat files: per tile, one brace-enclosed row holding
  that tile's section (ROMA_BROM_TILE) of each tensor's .dat in bank order (the preprocessor cannot loop); DDR
  tensors get no ROM, and URAM banks no initialiser (CMD_LOAD_WEIGHTS writes them)."""

from __future__ import annotations

import re
from dataclasses import asdict

import numpy as np

from ..model.config import ModelConfig
from ..model.weights import LayerWeights
from .boards import get_board
from .brom_image import SCALE_FORMATS
from .ddr_image import ddr_step_words
from .kv_layout import KvLayout


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def _array(values) -> str:
    return "{" + ", ".join(str(int(v)) for v in values) + "}"


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """fp32 [head_dim/2], the same expression as golden.model.rope_tables."""
    return (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)


def c_float(value) -> str:
    """An fp32 value as a C++11 literal that reads back exactly: 10 significant digits, always with a point and
    an exponent (a bare "2f" is not C++, and hex literals are C++17)."""
    return f"{float(value):.9e}f"


def _float_array(values) -> str:
    return "{" + ", ".join(c_float(v) for v in values) + "}"


def _impl(reservation: dict | None) -> str:
    """BIND_STORAGE impl of an on-chip array: where the plan reserved it ("URAM", "BRAM" or "URAM/BRAM")."""
    placement = (reservation or {}).get("placement", "BRAM")
    return {"URAM": "uram", "BRAM": "bram"}.get(placement, "auto")


def _bool(v) -> str:
    return "true" if v else "false"


def head_on_layers_engine(bits: int, group: int, tiles: int, port_bits: int, ports: int) -> int | None:
    """The tiles of the layers' DDR engine on which an lm head streamed from DDR in `tiles` tiles runs (the engine of
    its bits, group and scales tiled as the board's `ports` weight ports; roma_core.cpp head_on_layers), or None where
    it keeps an engine of its own. Where a weight port word holds one step at most, that stream writes each output in
    its last group's step (brom_ddr.h: no pass after the rounds), so the head's own tile count, a multiple of the
    ports, costs the shared engine nothing but taking its tiles at run time."""
    return ports if ddr_step_words(bits, group) >= port_bits // 32 and tiles % ports == 0 else None


def ffn_pair(pairs: list[tuple], streams) -> tuple | None:
    """The two engines on which roma_core runs a layer's w_gate and w_up at once (FFN_PAIR_GATE, FFN_PAIR_UP): of
    the layers' (gate's engine, up's engine), the most frequent pair of two engines that do not both stream from DDR
    (`streams(engine)`: they would share the weight ports), the earliest on a tie; None when there is none."""
    distinct = [p for p in pairs if p[0] != p[1] and not (streams(p[0]) and streams(p[1]))]
    return max(distinct, key=lambda p: (distinct.count(p), -distinct.index(p))) if distinct else None


def render_header(config: ModelConfig, tensors: dict, *, bits: int, group: int, context: int, board: str,
                  model_sha256: str, tiles_default: int = 1, ddr: dict | None = None,
                  kv_onchip: dict | None = None, lora_unit: dict | None = None, uram: dict | None = None,
                  logits_impl: str = "bram", gemv_pe: int = 1, token_lanes: int = 1,
                  prefill_chunk: int | None = None) -> str:
    """tensors: manifest tensor entries (name -> {bits, group, tiles, ddr_offset, uram_offset, ...}) for
    blk.<i>.<linear>, token_embd and, when untied, output; ddr: the manifest's "ddr" entry (None: every tensor is
    on chip); uram: its "uram" entry (None: no tensor is in URAM); board: a boards.json name (its KV and weight
    port widths go into the header);
    kv_onchip: the manifest's "kv_onchip" entry ({tokens, placement, ...}; None: the KV cache is in DDR);
    lora_unit: the manifest's "lora_unit" entry ({slots, rank, targets, dtype, placement, ...}; None or 0 slots:
    the build has no LoRA unit); logits_impl: the memory g_logits binds to (uram or bram, the plan's choice);
    gemv_pe: the tiles of the layers' on-chip GEMV engines (the plan's pe: ROMA_GEMV_PE); token_lanes: the
    prefill tokens they serve per pass over their weights (the plan's board's: TOKEN_LANES); prefill_chunk: the
    prompt tokens a prefill runs through all layers per pass (the plan's board's, or by default the board's:
    PREFILL_CHUNK). The DDR KV cache's
    ports, their runs and its position sets (KV_PORTS, KV_PORT_LANES, KV_SETS) are KvLayout.for_build's, as the
    manifest's "kv_layout"."""
    unit = lora_unit if lora_unit and lora_unit["slots"] > 0 else None
    lanes = get_board(board).elementwise_lanes.for_model(config.dim, config.ffn_dim, config.head_dim)
    kv_layout = KvLayout.for_build(config.head_dim, get_board(board).kv_port_bits, get_board(board).kv_ports,
                                   kv_onchip["tokens"] if kv_onchip else 0)
    lora_arrays = 0 if unit is None else 2 if unit["dtype"] == "int8" else 1
    c = config
    lines = [
        "// Generated by `roma compile`; do not edit. The dimensions of one ROMA build for the HLS kernels.",
        f"// model: {c.name}  sha256: {model_sha256}  board: {board}",
        "#ifndef ROMA_MODEL_H",
        "#define ROMA_MODEL_H",
        "",
        "namespace roma_model {",
        "",
        f"constexpr int N_LAYERS = {c.n_layers};",
        f"constexpr int DIM = {c.dim};",
        f"constexpr int FFN_DIM = {c.ffn_dim};",
        f"constexpr int N_HEADS = {c.n_heads};",
        f"constexpr int N_KV_HEADS = {c.n_kv_heads};",
        f"constexpr int HEAD_DIM = {c.head_dim};",
        f"constexpr int KV_DIM = {c.kv_dim};",
        f"constexpr int VOCAB = {c.vocab_size};",
        f"constexpr int CONTEXT = {context};",
        f"constexpr float ROPE_THETA = {c_float(c.rope_theta)};",
        f"constexpr float RMS_EPS = {c_float(c.rms_eps)};",
        f"constexpr bool TIED_EMBEDDINGS = {'true' if c.tied_embeddings else 'false'};",
        "",
        f"constexpr int DEFAULT_BITS = {bits};",
        f"constexpr int GROUP = {group};",
        f"constexpr int DEFAULT_TILES = {tiles_default};",
        "",
        "// The LoRA unit (lora_unit.h): slots, the slot rank (the largest adapter rank it holds), which linears",
        "// (wq wk wv wo w_gate w_up w_down) have LoRA memory, int8 codes with fp32 row scales or fp16 values;",
        "// LORA_SLOTS 0: no LoRA unit",
        f"constexpr int LORA_SLOTS = {unit['slots'] if unit else 0};",
        f"constexpr int LORA_RANK = {unit['rank'] if unit else 0};",
        "constexpr bool LORA_TARGET[7] = {" + ", ".join(
            _bool(unit is not None and lin in unit["targets"]) for lin in LayerWeights.LINEAR) + "};",
        f"constexpr bool LORA_INT8 = {_bool(lora_arrays == 2)};",
        "",
    ]
    def offset(e: dict) -> int:
        return e["ddr_offset"] if ddr and e.get("ddr_offset") is not None else -1

    def uram_offset(e: dict) -> int:
        return e["uram_offset"] if uram and e.get("uram_offset") is not None else -1

    def tier(e: dict) -> str:
        return "ddr" if offset(e) >= 0 else "uram" if uram_offset(e) >= 0 else "rom"

    def configuration(e: dict) -> tuple:  # what one GEMV engine is built for
        return e["bits"], e["group"], e["scales"], e.get("tiles", tiles_default), tier(e)

    units: dict[tuple, int] = {}  # configuration (and, for the embedding and output, their own role) -> engine
    members: dict[int, list] = {}  # engine -> its on-chip tensors in bank order
    hw = get_board(board)
    head = "output" if "output" in tensors else "token_embd"  # the tensor the lm head's GEMV streams

    def unit_of(name: str, e: dict, role: str) -> int:
        key = (role,) + configuration(e)
        joined = role == head and tier(e) == "ddr" and head_on_layers_engine(
            e["bits"], e["group"], e.get("tiles", tiles_default), hw.weight_port_bits, hw.weight_ports)
        if joined:
            key = ("layers", e["bits"], e["group"], e["scales"], joined, "ddr")
        u = units.setdefault(key, len(units))
        if offset(e) < 0:
            members.setdefault(u, []).append(name)
        return u

    layer_units = {}  # linear -> its engine per layer
    for lin in LayerWeights.LINEAR:
        entries = [tensors[f"blk.{i}.{lin}"] for i in range(c.n_layers)]
        unit_ids = layer_units[lin] = [unit_of(f"blk.{i}.{lin}", e, "layers") for i, e in enumerate(entries)]
        lines.append(f"constexpr int BITS_{_ident(lin)}[N_LAYERS] = {_array(e['bits'] for e in entries)};")
        lines.append(f"constexpr int GROUP_{_ident(lin)}[N_LAYERS] = {_array(e['group'] for e in entries)};")
        lines.append(f"constexpr int SCALES_{_ident(lin)}[N_LAYERS] = "
                     f"{_array(SCALE_FORMATS[e['scales']] for e in entries)};")
        lines.append(f"constexpr int TILES_{_ident(lin)}[N_LAYERS] = "
                     f"{_array(e.get('tiles', tiles_default) for e in entries)};")
        lines.append(f"constexpr long long DDR_{_ident(lin)}[N_LAYERS] = {_array(offset(e) for e in entries)};")
        lines.append(f"constexpr long long URAM_{_ident(lin)}[N_LAYERS] = {_array(uram_offset(e) for e in entries)};")
        lines.append(f"constexpr int UNIT_{_ident(lin)}[N_LAYERS] = {_array(unit_ids)};")
    embd_unit = unit_of("token_embd", tensors["token_embd"], "token_embd")
    out_unit = unit_of("output", tensors["output"], "output") if "output" in tensors else embd_unit
    for name in ("token_embd", "output"):
        e = tensors[name] if name in tensors else tensors["token_embd"]  # tied: the head is the embedding ROM
        lines.append(f"constexpr int BITS_{_ident(name)} = {e['bits']};")
        lines.append(f"constexpr int GROUP_{_ident(name)} = {e['group']};")
        lines.append(f"constexpr int SCALES_{_ident(name)} = {SCALE_FORMATS[e['scales']]};")
        lines.append(f"constexpr int TILES_{_ident(name)} = {e.get('tiles', tiles_default)};")
        lines.append(f"constexpr long long DDR_{_ident(name)} = {offset(e)};")
        lines.append(f"constexpr long long URAM_{_ident(name)} = {uram_offset(e)};")
    lines += [f"constexpr int UNIT_TOKEN_EMBD = {embd_unit};", f"constexpr int UNIT_OUTPUT = {out_unit};",
              "// the GEMV engines: one per configuration (see UNIT_*)", f"constexpr int N_UNITS = {len(units)};"]
    streamed = {u for key, u in units.items() if key[-1] == "ddr"}  # the DDR engines (a configuration ends in its tier)
    pair = ffn_pair(list(zip(layer_units["w_gate"], layer_units["w_up"])), streamed.__contains__) or (-1, -1)
    lines += ["// the engines that run a layer's w_gate and w_up at once where they hold them (-1: none; ffn_pair)",
              f"constexpr int FFN_PAIR_GATE = {pair[0]};", f"constexpr int FFN_PAIR_UP = {pair[1]};"]
    lines += ["",
              "// The DDR weight image (ddr_weights.bin): words, header included (0: no tensor streams from DDR),",
              "// and the CRC-32 of its payload, as its header holds it",
              f"constexpr long long DDR_WORDS = {ddr['words'] if ddr else 0};",
              f"constexpr unsigned DDR_CRC = 0x{ddr['crc32'] if ddr else 0:08x}u;",
              "// the board's weight port (ddr_weights, uram_weights): bits per core cycle (boards.json weight_port_bits)",
              f"constexpr int WEIGHT_PORT_BITS = {get_board(board).weight_port_bits};",
              "// ... and how many such ports read the DDR tensors' tiles at once (boards.json weight_ports)",
              f"constexpr int WEIGHT_PORTS = {get_board(board).weight_ports};",
              "// prefill tokens a layers' GEMV engine serves per pass over its weights (boards.json token_lanes, one",
              "// where the plan's logic estimate has no room for more)",
              f"constexpr int TOKEN_LANES = {token_lanes};",
              "// prompt tokens a prefill runs through all layers per pass: the rows of the chunk's activation buffers",
              "// (boards.json prefill_chunk, or 16 where the plan needs the room for weights)",
              f"constexpr int PREFILL_CHUNK = {prefill_chunk or get_board(board).prefill_chunk};"]
    lines += ["",
              "// The URAM load image (uram_weights.bin): words, header included (0: no tensor is in URAM), and the",
              "// checksum of its tensors (weight_load.h), as its header holds it",
              f"constexpr long long URAM_WORDS = {uram['words'] if uram else 0};",
              f"constexpr unsigned URAM_CHECKSUM = 0x{uram['checksum'] if uram else 0:08x}u;"]
    lines += ["",
              "// The on-chip KV cache: positions of every layer's fp16 keys and values (0: the KV cache is in DDR only)",
              f"constexpr int KV_ONCHIP_CTX = {kv_onchip['tokens'] if kv_onchip else 0};",
              "// the KV cache's memory port: data bits per beat (boards.json kv_port_bits; attention's lanes)",
              f"constexpr int KV_PORT_BITS = {get_board(board).kv_port_bits};",
              "// ... how many such ports a DDR cache's rows are split over, in runs of KV_PORT_LANES fp16 elements",
              "// alternating between them (boards.json kv_ports; artifact/kv_layout.py)",
              f"constexpr int KV_PORTS = {kv_layout.ports};",
              f"constexpr int KV_PORT_LANES = {kv_layout.unit};",
              "// ... the position sets: position p's row is in set p % KV_SETS (kv_cache/kv_cache_1, or",
              "// kv_cache_2/kv_cache_3 for set 1) at row p / KV_SETS",
              f"constexpr int KV_SETS = {kv_layout.sets};",
              "// ... whether the memory's peak covers the weight ports and the KV ports streaming at once (the board's",
              "// kv_beside_weights): a prefill block's attention runs beside an FFN that streams from DDR",
              f"constexpr bool KV_BESIDE_WEIGHTS = {str(get_board(board).kv_beside_weights).lower()};"]
    lines += ["",
              "// RoPE inverse frequencies fp32(1 / theta^(2i/HEAD_DIM)), exact (golden rope_tables' values)",
              f"constexpr float ROPE_INV_FREQ[HEAD_DIM / 2] = {_float_array(rope_inv_freq(c.head_dim, c.rope_theta))};",
              "// the logits the on-chip sampler takes in per cycle, each lane a sorted list of the best (boards.json",
              "// sampler_lanes, halved to divide VOCAB)",
              f"constexpr int SAMPLER_LANES = {get_board(board).model_sampler_lanes(c.vocab_size)};",
              "// the logits a greedy token takes per cycle (boards.json argmax_lanes: sampler.h ARGMAX where more",
              "// than SAMPLER_LANES)",
              f"constexpr int ARGMAX_LANES = {get_board(board).model_argmax_lanes(c.vocab_size)};",
              "", "}  // namespace roma_model", "",
              "// the memory the on-chip KV array binds to (the plan's reservation; unused without one)",
              f"#define ROMA_KV_ONCHIP_IMPL {_impl(kv_onchip)}",
              "// the memory the LoRA unit's arrays bind to (the plan's reservation), and which arrays the unit",
              "// declares for roma_core's storage pragmas (0: none, 1: fp16 values, 2: int8 values and row scales)",
              f"#define ROMA_LORA_IMPL {_impl(unit)}",
              f"#define ROMA_LORA_ARRAYS {lora_arrays}",
              "// the memory the whole vocabulary's logits (g_logits) bind to",
              f"#define ROMA_LOGITS_IMPL {logits_impl}",
              "// the tiles (PEs) of the layers' on-chip GEMV engines: the outputs they write per cycle, the cyclic",
              "// partition of the layer's GEMV output buffers",
              f"#define ROMA_GEMV_PE {gemv_pe}",
              "// the weight ports (WEIGHT_PORTS), for roma_core's interface pragmas: one m_axi bundle each",
              f"#define ROMA_WEIGHT_PORTS {get_board(board).weight_ports}",
              "// the board's KV ports (boards.json kv_ports: 1, 2 or 4), for roma_core's interface pragmas: gmem_kv,",
              "// gmem_kv_1, and with 4 the second position set through gmem_weights and gmem_weights_2, as",
              "// alveo_link_BOARD.cfg binds them (a build whose cache uses fewer, KV_PORTS x KV_SETS, leaves the",
              "// others idle)",
              f"#define ROMA_KV_PORTS {get_board(board).kv_ports}",
              "// the elementwise units' lanes (boards.json elementwise_lanes, halved to divide the model's vectors):",
              "// RMSNorm's normalize loop, SwiGLU, RoPE's rotation (pairs), the residual add",
              *(f"#define ROMA_{unit.upper()}_LANES {n}" for unit, n in asdict(lanes).items()),
              "// the activations a GEMV engine's quantizer and candidate stage take per cycle (boards.json act_lanes;",
              "// an engine of a smaller group takes its group)",
              f"#define ROMA_ACT_LANES {get_board(board).act_lanes}",
              "", "#endif  // ROMA_MODEL_H", "",
              "// Synthesis: the ROM banks, tile by tile (see the module doc of artifact/model_header.py);",
              "// outside the include guard: the top includes this header again with ROMA_ROM_DEFINE set.",
              "#ifdef ROMA_ROM_DEFINE", "#include ROMA_ROM_DEFINE"]
    for u, names in sorted(members.items()):
        first = tensors[names[0]]
        if tier(first) != "rom":
            continue
        sections = (("PLANES", "PLANES"),) + ((("PARAMS", "PARAMS"), ("EXPS", "EXPONENTS"))
                                             if first["scales"] == "q8" else (("SCALES", "SCALES"), ("MINS", "MINIMUMS")))
        for array, section in sections:
            lines.append(f"ROMA_UNIT_{array}({u}) = {{")
            for t in range(first.get("tiles", tiles_default)):
                lines += ["{", f"#define ROMA_BROM_{section}", f"#define ROMA_BROM_TILE {t}"]
                lines += [f'#include "{name}.dat"' for name in names]
                lines += ["#undef ROMA_BROM_TILE", f"#undef ROMA_BROM_{section}", "},"]
            lines.append("};")
    lines += ["#undef ROMA_BROM_DAT_Q8", "#endif", ""]
    return "\n".join(lines)

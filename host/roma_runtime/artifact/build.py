"""A build folder, as every reader sees it: its file names, its manifest (sealed, checked) and its contents.

The compiler (compiler/build.py) writes builds; the model loader, the driver, the engine and the CLI only read
them, through this module. A build folder holds
    <tensor>.bin/.dat   one B-ROM image per on-chip weight matrix (brom_image.py): blk.<i>.<linear>,
                        token_embd, and output when the lm head is not tied to the embedding
    ddr_weights.bin     the weight matrices the placement plan streams from DDR, in one image (ddr_image.py;
                        only when there are any): the host copies it into the core's `ddr_weights` buffer.
                        These tensors have no .bin/.dat of their own (synthesis gets no ROM for them).
    uram_weights.bin    the weight matrices the plan puts in URAM ("URAM-load-once"), as their bank words in one
                        load image (uram_image.py; only when there are any): the driver copies it into a buffer
                        and the core's CMD_LOAD_WEIGHTS writes it into the URAM banks. No .bin/.dat either.
    norms.bin/.dat      the fp32 RMSNorm weights, concatenated (layout in the manifest)
    lora.safetensors    fp16 LoRA factors compensating the quantization error (with --lora-rank), on the LoRA
                        unit's targets
    (the LoRA unit      the core's adapter slots, slot rank, target linears and storage type: the manifest's
                        "lora_unit", roma_model.h's LORA_*; artifact/lora_unit.py)
    roma_model.h        the dimensions for the HLS kernels (model_header.py): the build's context (--context N:
                        CONTEXT, the manifest's "context"; at most the model's context length), which sizes the
                        attention buffers, the KV port and the longest session, and the on-chip KV cache's
                        positions (--kv-onchip N: KV_ONCHIP_CTX; the manifest's "kv_onchip" entry, None when the
                        KV cache is in DDR only)
    manifest.json       written last and atomically: what was built, from which model, how, where it goes,
                        and the sha256 of every other file; sealed by "manifest_sha256", the sha256 of its own
                        canonical JSON (manifest_digest). A folder without a manifest is not a build.
Before anything is read or sized from a manifest, `check_manifest` verifies its seal and its structure: the
model config within model/config.py's bounds and equal to the dimensions roma_model.h was generated with, every
tensor the config implies with its shape and its own image file, the norms' layout, the file names plain names
inside the folder; a refusal is one RomaError naming what is wrong. `read_build` reads a build back, verifying
every checksum, into its weights (the linears as QuantizedMatrix images) and its compensating LoRA factors;
model.loader.load_build makes a LoadedModel of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ..errors import RomaError
from ..model.config import ModelConfig, linear_shapes
from ..model.weights import (SCALE_BITS, SUPPORTED_BITS, SUPPORTED_GROUPS, LayerWeights, LoraAdapter, ModelWeights,
                             QuantizedMatrix)
from .brom_image import read_image, unpack
from .ddr_image import ddr_unpack, read_ddr_image
from .uram_image import read_uram_image, uram_unpack
from .kv_layout import MAX_KV_PORTS, MAX_KV_SETS
from .lora_unit import manifest_lora_unit

MANIFEST = "manifest.json"
FORMAT = "roma-build"
FORMAT_VERSION = 23  # 2: DDR-streamed tensors live in ddr_weights.bin, not in NAME.bin/.dat; 3: per-tensor scale
# format; 4: the manifest is sealed by MANIFEST_SEAL and checked against roma_model.h; 5: roma_model.h numbers
# the GEMV engines and ROM bank rows (ENGINE_*, SLOT_*) and defines the synthesis ROM banks; 6: the LoRA unit is
# the build's (manifest "lora_unit", roma_model.h LORA_SLOTS/LORA_RANK/LORA_TARGET/LORA_INT8), URAM-load-once
# tensors in uram_weights.bin, the build's context; 7: ROMA_LOGITS_IMPL, DDR-streamed tensors of more than 8K rows
# in tiles (memory.ddr_tiles); 8: one GEMV engine per configuration shared by all linears (UNIT_*, N_UNITS), its
# bank the tensors' tiles stacked; a .dat's tiles selected by ROMA_BROM_TILE; KV_PORT_BITS (the board's KV port,
# attention's lanes); 9: tile t of a tensor holds its rows t, t + tiles, ... (brom_image.pack); roma_model.h
# WEIGHT_PORT_BITS (the board's weight port width); 10: WEIGHT_PORTS, a DDR tensor's tiles a multiple of them
# (memory.ddr_tiles); 11: the lanes of the elementwise units (ROMA_NORM_LANES, ROMA_SWIGLU_LANES, ROMA_ROPE_LANES,
# ROMA_RESIDUAL_LANES: the board's elementwise_lanes); 12: TOKEN_LANES (the board's token_lanes); 13: KV_PORTS and
# KV_PORT_LANES, the manifest's "kv_layout" (the DDR KV cache's rows over the board's kv_ports); 14: ROMA_ACT_LANES
# (the board's act_lanes); 15: ddr_weights.bin version 2 (blocks of 32 steps, their scale entries before their
# planes, everything in 512-bit words); 16: FFN_PAIR_GATE/FFN_PAIR_UP (a layer's gate and up on two engines at once);
# 17: KV_SETS, the manifest's "kv_layout" "sets" (a board of four KV ports splits the DDR KV cache's positions into two
# sets: kv_cache_2/kv_cache_3), the U250's kv_ports 4; 18: the board's memory_banks name set 1's bundles gmem_kv_2 and
# gmem_kv_3 (the manifest's "board": a build of 17 put set 1 on two weight ports' bundles); 19: KV_BESIDE_WEIGHTS (the
# board's kv_beside_weights: a prefill block's attention beside a DDR-streaming FFN); 20: ddr_weights.bin version 3
# (q8's row exponents padded to whole stream chunks, read in the tile's one burst); 21: PREFILL_CHUNK (the board's
# prefill_chunk; it was roma_core.h's 16 for every board); 22: a streamed lm head may share the layers' DDR engine
# (UNIT_OUTPUT or UNIT_TOKEN_EMBD a layers' unit, its TILES_* its own: model_header.head_on_layers_engine); 23:
# SAMPLER_LANES (the board's sampler_lanes; it was roma_core.h's 4 for every board)
MANIFEST_SEAL = "manifest_sha256"
HEADER_FILE = "roma_model.h"
DDR_FILE = "ddr_weights.bin"
URAM_FILE = "uram_weights.bin"
NORMS_FILE = "norms"
LORA_FILE = "lora.safetensors"
EMBEDDING = "token_embd"
OUTPUT = "output"
# Where the placement plan puts a tensor (the manifest's tensors.<name>.placement)
BRAM_ROM, URAM_LOAD_ONCE, DDR_STREAM = "BRAM-ROM", "URAM-load-once", "DDR-stream"


def tensor_names(config: ModelConfig) -> list[str]:
    """The weight matrices a build of `config` holds, each its own image: blk.<i>.<linear>, token_embd, output."""
    names = [f"blk.{i}.{lin}" for i in range(config.n_layers) for lin in LayerWeights.LINEAR]
    names.append(EMBEDDING)
    if not config.tied_embeddings:
        names.append(OUTPUT)
    return names


def split_name(name: str) -> tuple[int, str] | None:
    """(layer, linear) of a tensor name blk.<i>.<linear>; None for the embedding and the lm head."""
    if name.startswith("blk."):
        _, i, lin = name.split(".", 2)
        return int(i), lin
    return None


def is_ddr(entry: dict) -> bool:
    """Whether a manifest tensor entry streams from DDR (its image is a slice of ddr_weights.bin)."""
    return entry.get("placement") == DDR_STREAM


def is_uram(entry: dict) -> bool:
    """Whether a manifest tensor entry is in URAM (its image is a slice of uram_weights.bin)."""
    return entry.get("placement") == URAM_LOAD_ONCE


def uram_layout(manifest: dict) -> list[tuple[int, int]]:
    """(word offset, words) of every URAM tensor in the load image, in the manifest's order."""
    return [(e["uram_offset"], e["uram_words"]) for e in manifest["tensors"].values() if is_uram(e)]


def sha256_files(files) -> str:
    """One sha256 over the contents of `files`, in order, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces) without its seal and without model.source
    (where the source model lives is a pointer a user may move, not a fact of the build)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    if isinstance(body.get("model"), dict):
        body["model"] = {k: v for k, v in body["model"].items() if k != "source"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest as JSON gives it back, with its seal (MANIFEST_SEAL) set."""
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_SEAL},
                                     default=json_default))
    manifest[MANIFEST_SEAL] = manifest_digest(manifest)
    return manifest


MAX_MANIFEST_BYTES = 64 << 20


def read_manifest(out_dir: Path, check_seal: bool = True) -> dict | None:
    """The build manifest in `out_dir` (None when there is none), its seal verified (check_seal): RomaError
    when it is unreadable, not a ROMA build manifest, or was edited after the build wrote it."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise RomaError(f"{path} is {path.stat().st_size} bytes, more than a build manifest can be "
                            f"({MAX_MANIFEST_BYTES})", hint="recompile the build with roma compile --force")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RomaError(f"{path} is not a readable build manifest ({e})",
                        hint="recompile the build with roma compile --force") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RomaError(f"{path} is not a ROMA build manifest")
    if check_seal and data.get("format_version") == FORMAT_VERSION:
        seal = data.get(MANIFEST_SEAL)
        if not isinstance(seal, str) or seal != manifest_digest(data):
            raise RomaError(f"{path} was changed after the build wrote it (its {MANIFEST_SEAL} does not match "
                            "its contents)" if seal else f"{path} has no {MANIFEST_SEAL}",
                            hint="recompile the build (roma compile --force); a build's manifest is not edited "
                                 "by hand")
    return data


def _header_dims(path: Path) -> dict[str, int]:
    """The model dimensions a build's roma_model.h was generated with (the constexpr ints of model_header.py)."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise RomaError(f"{path} is {path.stat().st_size} bytes, not a generated header", hint="recompile the build")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RomaError(f"cannot read {path}: {e.strerror or e}", hint="recompile the build") from None
    dims: dict = {k: int(v) for k, v in re.findall(r"constexpr int (\w+) = (-?\d+);", text)}
    for k, v in re.findall(r"constexpr float (ROPE_THETA|RMS_EPS) = ([-+0-9.eE]+|inf|nan)f;", text):
        dims[k] = float(np.float32(float(v)))
    for k, v in re.findall(r"constexpr bool (TIED_EMBEDDINGS|LORA_INT8) = (true|false);", text):
        dims[k] = v == "true"
    return dims


HEADER_DIMS = {"N_LAYERS": "n_layers", "DIM": "dim", "FFN_DIM": "ffn_dim", "N_HEADS": "n_heads",
               "N_KV_HEADS": "n_kv_heads", "HEAD_DIM": "head_dim", "KV_DIM": "kv_dim", "VOCAB": "vocab_size"}


def _plain_name(name) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and "\0" not in name
            and not name.startswith(".") and len(name) <= 255)


def _whole(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check_manifest(manifest: dict, build_dir: str | Path) -> ModelConfig:
    """The build's ModelConfig, after checking the manifest's structure (see the module docstring) and, when the
    folder holds it, that roma_model.h was generated for that config. RomaError naming the first fault."""
    build_dir = Path(build_dir)
    where = build_dir / MANIFEST
    hint = "recompile the build (roma compile --force)"

    def bad(what: str):
        return RomaError(f"{where}: {what}", hint=hint)

    for key in ("model", "quantization", "tensors", "files", "norms"):
        if not isinstance(manifest.get(key), dict):
            raise bad(f"'{key}' is missing or not an object")
    config = ModelConfig.from_dict(manifest["model"].get("config"), f"{where}: model.config")
    files = manifest["files"]
    for name, entry in files.items():
        if not _plain_name(name):
            raise bad(f"the file name {name!r} is not a plain file name inside the build folder")
        if (not isinstance(entry, dict) or not _whole(entry.get("bytes"))
                or not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
            raise bad(f"the entry of file {name} is not {{sha256, bytes}}")

    def listed(name, what: str) -> str:
        if not isinstance(name, str) or name not in files:
            raise bad(f"{what} names the file {name!r}, which the manifest's files do not list")
        return name

    tensors = manifest["tensors"]
    want = tensor_names(config)
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    if missing or extra:
        raise bad(f"its tensors do not fit its config of {config.n_layers} layers "
                  f"({'missing ' + missing[0] if missing else 'unexpected ' + str(extra[0])})")
    shapes = linear_shapes(config)
    ddr = manifest.get("ddr")
    if ddr is not None and (not isinstance(ddr, dict) or not _whole(ddr.get("words"), 1)):
        raise bad("'ddr' is not an object with its word count")
    if ddr is not None:
        listed(ddr.get("file"), "ddr")
    uram = manifest.get("uram")
    if uram is not None and (not isinstance(uram, dict) or not _whole(uram.get("words"), 1)
                             or not _whole(uram.get("checksum"))):
        raise bad("'uram' is not an object with its word count and checksum")
    if uram is not None:
        listed(uram.get("file"), "uram")
    for name in want:
        e = tensors[name]
        key = split_name(name)
        shape = list(shapes[key[1]]) if key else [config.vocab_size, config.dim]
        if not isinstance(e, dict):
            raise bad(f"tensor {name}'s entry is not an object")
        if e.get("shape") != shape:
            raise bad(f"tensor {name} has shape {e.get('shape')!r}, but the config needs {shape}")
        if e.get("bits") not in SUPPORTED_BITS or e.get("group") not in SUPPORTED_GROUPS or \
                not isinstance(e.get("scales"), str) or e["scales"] not in SCALE_BITS or not _whole(e.get("tiles"), 1):
            raise bad(f"tensor {name} has an unsupported bits/group/scales/tiles entry")
        if is_ddr(e):
            if ddr is None or e.get("image") != ddr.get("file") or not _whole(e.get("ddr_offset")) \
                    or not _whole(e.get("ddr_words"), 1) or e["ddr_offset"] + e["ddr_words"] > ddr["words"]:
                raise bad(f"tensor {name} streams from DDR but its slice of the DDR image is malformed")
        elif is_uram(e):
            if uram is None or e.get("image") != uram.get("file") or not _whole(e.get("uram_offset")) \
                    or not _whole(e.get("uram_words"), 1) or e["uram_offset"] + e["uram_words"] > uram["words"]:
                raise bad(f"tensor {name} is in URAM but its slice of the URAM load image is malformed")
        elif e.get("image") != f"{name}.bin" or e.get("init") != f"{name}.dat":
            raise bad(f"tensor {name} names the images {e.get('image')!r} / {e.get('init')!r}, not its own "
                      f"{name}.bin / {name}.dat")
        else:
            listed(e["image"], f"tensor {name}")
    norms = manifest["norms"]
    layout = norms.get("layout")
    names = [n for i in range(config.n_layers) for n in (f"blk.{i}.attn_norm", f"blk.{i}.ffn_norm")] + ["output_norm"]
    if not isinstance(layout, list) or len(layout) != len(names) or any(
            not isinstance(x, dict) or x.get("name") != n or x.get("offset") != i * config.dim
            or x.get("length") != config.dim for i, (x, n) in enumerate(zip(layout, names))):
        raise bad("the norms' layout does not fit the config")
    norm_file = listed(norms.get("file"), "norms")
    if files[norm_file]["bytes"] != 4 * config.dim * len(names):
        raise bad(f"the norms file is {files[norm_file]['bytes']} bytes, but the config needs "
                  f"{4 * config.dim * len(names)}")
    lora = manifest.get("lora")
    if lora is not None:
        if not isinstance(lora, dict) or isinstance(lora.get("scale"), bool) or \
                not isinstance(lora.get("scale"), (int, float)) or not math.isfinite(lora["scale"]):
            raise bad("'lora' is not an object with a finite scale")
        listed(lora.get("file"), "lora")
    context = manifest.get("context")
    if not _whole(context, 1) or context > config.context_length:
        raise bad(f"'context' is {context!r}, not a token count within the model's {config.context_length}")
    unit = manifest_lora_unit(manifest)
    kv_onchip = manifest.get("kv_onchip")
    if kv_onchip is not None and (not isinstance(kv_onchip, dict) or not _whole(kv_onchip.get("tokens"), 1)
                                  or kv_onchip["tokens"] > context):
        raise bad("'kv_onchip' is not an object with a token count within the build's context")
    kv_layout = manifest.get("kv_layout")
    if not (isinstance(kv_layout, dict) and _whole(kv_layout.get("ports"), 1) and kv_layout["ports"] <= MAX_KV_PORTS
            and _whole(kv_layout.get("unit"), 1) and config.kv_dim % (kv_layout["ports"] * kv_layout["unit"]) == 0
            and _whole(kv_layout.get("sets"), 1) and kv_layout["sets"] <= MAX_KV_SETS):
        raise bad(f"'kv_layout' is not an object {{ports, unit, sets}} of 1 to {MAX_KV_PORTS} KV ports whose runs "
                  f"split a KV row and 1 to {MAX_KV_SETS} position sets")
    header = listed(manifest.get("header"), "header")
    if (build_dir / header).is_file():
        dims = _header_dims(build_dir / header)
        want = {macro: getattr(config, attr) for macro, attr in HEADER_DIMS.items()}
        want.update({"ROPE_THETA": float(np.float32(config.rope_theta)), "RMS_EPS": float(np.float32(config.rms_eps)),
                     "TIED_EMBEDDINGS": bool(config.tied_embeddings), "CONTEXT": context,
                     "KV_ONCHIP_CTX": kv_onchip["tokens"] if kv_onchip else 0, "LORA_SLOTS": unit.slots,
                     "LORA_RANK": unit.rank if unit.slots else 0,
                     "LORA_INT8": bool(unit.slots) and unit.dtype == "int8",
                     "KV_PORTS": kv_layout["ports"], "KV_PORT_LANES": kv_layout["unit"],
                     "KV_SETS": kv_layout["sets"]})
        for macro, value in want.items():
            attr = HEADER_DIMS.get(macro, macro.lower())
            if dims.get(macro) != value:
                raise bad(f"its config says {attr} = {value}, but {header} was generated with "
                          f"{macro} = {dims.get(macro)}")
    return config


def verify_build(build_dir: str | Path) -> dict:
    """The manifest, after checking every listed file's size and sha256 (RomaError naming a bad file)."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise RomaError(f"no build folder at {build_dir}")
    manifest = read_manifest(build_dir)
    if manifest is None:
        raise RomaError(f"{build_dir} holds no {MANIFEST}; it is not a complete build",
                        hint="compile it with roma compile --out " + str(build_dir))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RomaError(f"{build_dir}: build format version {manifest.get('format_version')} is not "
                        f"{FORMAT_VERSION}", hint="recompile the build")
    check_manifest(manifest, build_dir)
    for name, entry in manifest["files"].items():
        verify_file(build_dir / name, entry)
    return manifest


def verify_file(path: Path, entry: dict) -> None:
    """RomaError naming `path` unless it exists with the size and sha256 of its manifest `entry`."""
    if not path.is_file():
        raise RomaError(f"build file {path} is missing", hint="recompile the build")
    if path.stat().st_size != entry["bytes"] or sha256_files([path]) != entry["sha256"]:
        raise RomaError(f"build file {path} is corrupt (its sha256 does not match the manifest)",
                        hint="recompile the build")


def read_build(build_dir: str | Path, verify: bool = True) -> tuple[dict, ModelConfig, ModelWeights,
                                                                     LoraAdapter | None]:
    """(manifest, config, weights, compensating LoRA or None) of a build, every checksum verified (verify)."""
    build_dir = Path(build_dir)
    manifest = verify_build(build_dir) if verify else read_manifest(build_dir)
    if manifest is None:
        raise RomaError(f"{build_dir} holds no {MANIFEST}; it is not a complete build")
    config = check_manifest(manifest, build_dir)
    tensors = manifest["tensors"]
    ddr_words = read_ddr_image(build_dir / DDR_FILE) if manifest.get("ddr") else None
    uram_words = read_uram_image(build_dir / URAM_FILE, uram_layout(manifest)) if manifest.get("uram") else None

    def matrix(name: str) -> QuantizedMatrix:
        e = tensors[name]
        if is_ddr(e):
            words = ddr_words[e["ddr_offset"]: e["ddr_offset"] + e["ddr_words"]]
            rows, cols = e["shape"]
            return unpack(ddr_unpack(words, e["bits"], e["group"], rows, cols, e["tiles"], scales=e["scales"]))
        if is_uram(e):
            words = uram_words[e["uram_offset"]: e["uram_offset"] + e["uram_words"]]
            rows, cols = e["shape"]
            return unpack(uram_unpack(words, e["bits"], e["group"], rows, cols, e["tiles"], scales=e["scales"]))
        return unpack(read_image(build_dir / e["image"]))

    norms = np.frombuffer((build_dir / manifest["norms"]["file"]).read_bytes(), dtype="<f4").astype(np.float32)
    norm = {e["name"]: norms[e["offset"]:e["offset"] + e["length"]].copy() for e in manifest["norms"]["layout"]}
    layers = []
    for i in range(config.n_layers):
        layers.append(LayerWeights(attn_norm=norm[f"blk.{i}.attn_norm"], ffn_norm=norm[f"blk.{i}.ffn_norm"],
                                   **{lin: matrix(f"blk.{i}.{lin}") for lin in LayerWeights.LINEAR}))
    weights = ModelWeights(token_embedding=matrix(EMBEDDING), output_norm=norm["output_norm"],
                           output=matrix(OUTPUT) if OUTPUT in tensors else None, layers=layers)
    lora = None
    if manifest.get("lora"):
        entry = manifest["lora"]
        arrays = load_file(str(build_dir / entry["file"]))
        factors = {}
        for key in arrays:
            if key.endswith(".lora_a"):
                base = key[: -len(".lora_a")]
                layer, name = split_name(base)
                factors[(layer, name)] = (arrays[key].astype(np.float32),
                                          arrays[base + ".lora_b"].astype(np.float32), float(entry["scale"]))
        lora = LoraAdapter(factors)
    return manifest, config, weights, lora

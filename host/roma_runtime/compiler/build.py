"""The model compiler: a model file in, a build folder out (ROM images, norms, LoRA, C++ header, manifest).

A build folder holds
    <tensor>.bin/.dat   one B-ROM image per on-chip weight matrix (brom.write_image): blk.<i>.<linear>,
                        token_embd, and output when the lm head is not tied to the embedding
    ddr_weights.bin     the weight matrices the placement plan streams from DDR, in one image (brom.ddr_image;
                        only when there are any): the host copies it into the core's `ddr_weights` buffer.
                        These tensors have no .bin/.dat of their own (synthesis gets no ROM for them).
    norms.bin/.dat      the fp32 RMSNorm weights, concatenated (layout in the manifest)
    lora.safetensors    fp16 LoRA factors compensating the quantization error (with --lora-rank)
    roma_model.h        the dimensions for the HLS kernels (header.py), and the on-chip KV cache's positions
                        (--kv-onchip N: KV_ONCHIP_CTX; the manifest's "kv_onchip" entry, None when the KV cache is
                        in DDR only)
    manifest.json       written last and atomically: what was built, from which model, how, where it goes,
                        and the sha256 of every other file; sealed by "manifest_sha256", the sha256 of its own
                        canonical JSON (manifest_digest). A folder without a manifest is not a build.
`load_build` reads a build back, verifying every checksum, into a LoadedModel whose linear weights are the
QuantizedMatrix images (and the LoRA as a LoraAdapter). Before anything is read or sized from a manifest,
`check_manifest` verifies its seal and its structure: the model config within model/config.py's bounds and
equal to the dimensions roma_model.h was generated with, every tensor the config implies with its shape and
its own image file, the norms' layout, the file names plain names inside the folder; a refusal is one
RomaError naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import RomaError
from ..model.config import ModelConfig
from ..model.loader import LoadedModel, check_weights, linear_shapes, load_model, sha256_files
from ..model.weights import (SCALE_BITS, SUPPORTED_BITS, SUPPORTED_GROUPS, LayerWeights, ModelWeights, QuantizedMatrix,
                             as_float, storage_bits_per_weight)
from ..progress import with_progress
from ..tempfiles import clean_stale, write_text_atomic
from . import brom
from .header import c_float
from .mixed import assign_settings, mixed_settings, setting_name
from .quantize import CALIB_TOKENS, METHODS, effective_group, quantize_tensor, validate

MANIFEST = "manifest.json"
FORMAT = "roma-build"
FORMAT_VERSION = 4  # 2: DDR-streamed tensors live in ddr_weights.bin, not in NAME.bin/.dat; 3: per-tensor scale
# format; 4: the manifest is sealed by MANIFEST_SEAL and checked against roma_model.h
MANIFEST_SEAL = "manifest_sha256"
HEADER_FILE = "roma_model.h"
DDR_FILE = "ddr_weights.bin"
NORMS_FILE = "norms"
LORA_FILE = "lora.safetensors"
EMBEDDING = "token_embd"
OUTPUT = "output"


def tensor_names(config: ModelConfig) -> list[str]:
    names = [f"blk.{i}.{lin}" for i in range(config.n_layers) for lin in LayerWeights.LINEAR]
    names.append(EMBEDDING)
    if not config.tied_embeddings:
        names.append(OUTPUT)
    return names


def _split(name: str) -> tuple[int, str] | None:
    if name.startswith("blk."):
        _, i, lin = name.split(".", 2)
        return int(i), lin
    return None


def _tensor(weights: ModelWeights, name: str):
    key = _split(name)
    if key:
        return getattr(weights.layers[key[0]], key[1])
    return weights.token_embedding if name == EMBEDDING else weights.output


def _progress(iterable, desc: str, enabled: bool, total=None):
    return with_progress(iterable, desc, enabled, total=total, unit="tensors")


def manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest's canonical JSON (sorted keys, no spaces) without its seal and without model.source
    (where the source model lives is a pointer a user may move, not a fact of the build)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SEAL}
    if isinstance(body.get("model"), dict):
        body["model"] = {k: v for k, v in body["model"].items() if k != "source"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest as JSON gives it back, with its seal (MANIFEST_SEAL) set."""
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != MANIFEST_SEAL},
                                     default=_json_default))
    manifest[MANIFEST_SEAL] = manifest_digest(manifest)
    return manifest


def write_manifest(out_dir: Path, manifest: dict) -> dict:
    """Seal `manifest` and write it atomically (a temporary name renamed over manifest.json); returns it sealed."""
    manifest = seal_manifest(manifest)
    write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))
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
    """The model dimensions a build's roma_model.h was generated with (the constexpr ints of header.py)."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise RomaError(f"{path} is {path.stat().st_size} bytes, not a generated header", hint="recompile the build")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RomaError(f"cannot read {path}: {e.strerror or e}", hint="recompile the build") from None
    dims: dict = {k: int(v) for k, v in re.findall(r"constexpr int (\w+) = (-?\d+);", text)}
    for k, v in re.findall(r"constexpr float (ROPE_THETA|RMS_EPS) = ([-+0-9.eE]+|inf|nan)f;", text):
        dims[k] = float(np.float32(float(v)))
    for k, v in re.findall(r"constexpr bool (TIED_EMBEDDINGS) = (true|false);", text):
        dims[k] = v == "true"
    return dims


HEADER_DIMS = {"N_LAYERS": "n_layers", "DIM": "dim", "FFN_DIM": "ffn_dim", "N_HEADS": "n_heads",
               "N_KV_HEADS": "n_kv_heads", "HEAD_DIM": "head_dim", "KV_DIM": "kv_dim", "VOCAB": "vocab_size",
               "CONTEXT": "context_length"}


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
    for name in want:
        e = tensors[name]
        key = _split(name)
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
    kv_onchip = manifest.get("kv_onchip")
    if kv_onchip is not None and (not isinstance(kv_onchip, dict) or not _whole(kv_onchip.get("tokens"), 1)
                                  or kv_onchip["tokens"] > config.context_length):
        raise bad("'kv_onchip' is not an object with a token count within the context")
    header = listed(manifest.get("header"), "header")
    if (build_dir / header).is_file():
        dims = _header_dims(build_dir / header)
        want = {macro: getattr(config, attr) for macro, attr in HEADER_DIMS.items()}
        want.update({"ROPE_THETA": float(np.float32(config.rope_theta)), "RMS_EPS": float(np.float32(config.rms_eps)),
                     "TIED_EMBEDDINGS": bool(config.tied_embeddings),
                     "KV_ONCHIP_CTX": kv_onchip["tokens"] if kv_onchip else 0})
        for macro, value in want.items():
            attr = HEADER_DIMS.get(macro, macro.lower())
            if dims.get(macro) != value:
                raise bad(f"its config says {attr} = {value}, but {header} was generated with "
                          f"{macro} = {dims.get(macro)}")
    return config


def _prepare_out_dir(out_dir: Path, identity: str, force: bool) -> None:
    """Refuse a folder holding another model's build (unless force); remove the old manifest first so that a
    compile that fails midway never leaves a folder that looks like a complete build."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RomaError(f"{out_dir} exists and is not a folder")
    old = None
    try:
        old = read_manifest(out_dir)
    except RomaError:
        if not force:
            raise
    if old is not None:
        old_id = old.get("model", {}).get("sha256")
        if old_id != identity and not force:
            raise RomaError(
                f"{out_dir} holds a build of another model ({old.get('model', {}).get('name', '?')}, "
                f"sha256 {str(old_id)[:12]}...)",
                hint="choose another --out folder, or pass --force to replace that build")
    elif out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        foreign = [p.name for p in out_dir.iterdir() if not _is_build_file(p.name)]
        if foreign:
            raise RomaError(f"{out_dir} is not empty and holds no ROMA build (for example {foreign[0]})",
                            hint="choose an empty or new --out folder, or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)  # a manifest a killed compile was writing
    (out_dir / MANIFEST).unlink(missing_ok=True)
    if old is not None:
        for name in old.get("files", {}):
            if "/" not in name and "\\" not in name:
                (out_dir / name).unlink(missing_ok=True)


def _is_build_file(name: str) -> bool:
    return (name.endswith((".bin", ".dat", ".h", ".safetensors", ".tmp")) or name == MANIFEST)


def _plan_name(name: str) -> str:
    key = _split(name)
    if key:
        return f"layers.{key[0]}.{key[1]}"
    return "token_embedding" if name == EMBEDDING else "output"


def _plan(config: ModelConfig, board, bits: int, group: int, per_tensor_bits: dict, per_tensor_groups: dict,
          lora_rank: int, ddr, kv_onchip: int = 0, scales: str = "fp16"):
    try:
        from .plan import make_plan
    except ImportError:  # the planner is optional for building images; the manifest says so
        return None
    plan = make_plan(config, board, bits=bits, group=group, per_tensor_bits=per_tensor_bits,
                     per_tensor_groups=per_tensor_groups, lora_rank=lora_rank, ddr=ddr,
                     kv_tokens=kv_onchip or None, scales=scales)
    return plan.to_dict()


def _kv_onchip_entry(plan: dict | None, kv_onchip: int) -> dict | None:
    """The manifest's "kv_onchip" entry: the on-chip KV cache's positions and the memory the plan reserved for it
    (None when the KV cache is in DDR only)."""
    if not kv_onchip:
        return None
    kv = plan["kv_cache"]
    return {"tokens": kv_onchip, "bytes": kv["bytes"], "placement": kv["placement"], "bram36": kv["bram36"],
            "uram": kv["uram"]}


def is_ddr(entry: dict) -> bool:
    """Whether a manifest tensor entry streams from DDR (its image is a slice of ddr_weights.bin)."""
    from .plan import DDR_STREAM

    return entry.get("placement") == DDR_STREAM


def write_ddr_image(out_dir: Path, images: dict, tensors: dict) -> tuple[list[Path], dict | None]:
    """Write the DDR tensors' `images` ({name: BromImage}, in this order) as ddr_weights.bin and point their
    manifest entries at it; returns ([its path], the manifest's "ddr" entry), or ([], None) without any."""
    if not images:
        (Path(out_dir) / DDR_FILE).unlink(missing_ok=True)
        return [], None
    words, layout = brom.ddr_image(images)
    path = Path(out_dir) / DDR_FILE
    path.write_bytes(words.astype("<u4").tobytes())
    for name, (offset, n) in layout.items():
        img = images[name]
        tensors[name].update({"tiles": img.tiles, "rom_bytes": 0, "ddr_bytes": 4 * n, "image": DDR_FILE,
                              "ddr_offset": offset, "ddr_words": n, "init": None, "image_sha256": img.sha256()})
    return [path], {"file": DDR_FILE, "words": int(words.size), "crc32": int(words[3]),
                    "layout": f"brom.py DDR image version {brom.DDR_VERSION}: fp16 tiles in blocks of "
                              f"{brom.DDR_BLOCK_STEPS} steps, planes then scale|minimum<<16 words; q8 tiles: row "
                              f"exponents, then blocks of {brom.DDR_Q8_BLOCK_STEPS} steps, planes then two steps' "
                              "params per word",
                    "tensors": list(layout)}


def compile_model(model: LoadedModel | str | Path, out_dir: str | Path, *, bits: int = 4, group: int = 32,
                  method: str = "rtn", scales: str = "fp16", board: str = "u250", lora_rank: int = 0,
                  bits_budget: float | None = None, embedding_bits: int = 8, force: bool = False,
                  calib_tokens: int | None = None, calib_window: int = 256, loftq_iters: int = 2,
                  progress: bool = True, hessians=None, sensitivity=None, sensitivity_tokens: int = 256,
                  fail_after: str | None = None, ddr=None, kv_onchip: int = 0) -> dict:
    """Quantize, pack, place and describe a model; returns the manifest (also written to out_dir).

    calib_tokens: calibration text for GPTQ, GPTAQ and the mixed-precision pricing (default CALIB_TOKENS[method]).
    scales: how the linears' ROM stores their scales and minimums (quantize.py: fp16, or q8 with an 8-bit
    step of a per-row power of two); the embedding keeps fp16 (its Q8_0 source passes through).

    ddr: placement units to stream from DDR whatever the room (plan.parse_ddr_units: "1,3-5,head", ...).
    kv_onchip: positions of an on-chip KV cache the core holds (0: the KV cache is in DDR only); the plan
    reserves its memory before any weight, and the header gives it to the core (KV_ONCHIP_CTX).
    hessians: calibrate.Hessians (parallel) computed earlier for this model, for the sensitivity quantizer;
    sensitivity: measure_sensitivity(...) computed earlier at this group (benchmarks reuse both across builds).
    fail_after: testing hook; raise after writing that tensor's image (shows the manifest is written last).
    """
    from .. import __version__
    from .boards import get_board

    t0 = time.time()
    if method not in METHODS:
        raise RomaError(f"unknown quantization method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    calib_tokens = CALIB_TOKENS[method] if calib_tokens is None else calib_tokens
    validate(bits, group, name="--bits/--group", scales=scales)
    validate(embedding_bits, 32, name="embedding")
    if lora_rank < 0:
        raise RomaError(f"--lora-rank must be positive, not {lora_rank}")
    board_obj = get_board(board)
    if not isinstance(model, LoadedModel):
        model = load_model(model)
    config = model.config
    if ddr:  # a unit the model does not have is refused before anything is written
        from .plan import check_ddr_units, parse_ddr_units

        check_ddr_units(parse_ddr_units(ddr), config)
    from .plan import check_kv_onchip  # a KV longer than the context or too big for the board, likewise

    check_kv_onchip(config, board_obj, kv_onchip, lora_rank=lora_rank)
    out_dir = Path(out_dir)
    identity = model.identity()
    _prepare_out_dir(out_dir, identity, force)
    w = model.weights
    linears = [n for n in tensor_names(config) if _split(n)]
    # Per tensor, the largest supported group up to --group that divides its rows (576 at G128 -> 64).
    groups = {n: effective_group(_tensor(w, n).shape[1], group) for n in linears}
    fallback = {_tensor(w, n).shape[1]: g for n, g in groups.items() if g != group}
    if fallback and bits_budget is None:  # under a budget every group up to --group is a candidate anyway
        print("note: --group " + str(group) + " does not divide every row; " + ", ".join(
            f"{c}-wide rows use G{g}" for c, g in sorted(fallback.items())), file=sys.stderr)

    # Calibration text. GPTQ and the sensitivity quantizer of mixed precision use the float model's one-pass
    # Hessians of it; GPTAQ fits each linear on it sequentially (calibrate.quantize_sequentially).
    calib_windows = None
    if method != "rtn" or bits_budget is not None:
        from .corpus import token_windows

        calib_windows = token_windows(model, "calibration", calib_tokens, calib_window)
    needs_hessians = method == "gptq" or (bits_budget is not None and sensitivity is None)
    if not needs_hessians:
        hessians = None
    elif hessians is None:
        from .calibrate import collect_hessians

        hessians = collect_hessians(model, windows=calib_windows, progress=progress)

    # (width, group) per linear: the default, or the mixed-precision assignment under the budget.
    choice = {n: (bits, groups[n]) for n in linears}
    if bits_budget is not None:
        if sensitivity is None:
            sensitivity = measure_sensitivity(model, group, hessians, sensitivity_tokens, calib_window, progress,
                                              scales)
        kl, cost = {}, {}
        for n in linears:
            rows, cols = _tensor(w, n).shape
            priced = sensitivity[_split(n)]["settings"]
            kl[n] = {s: e["kl"] for s, e in priced.items()}
            cost[n] = (rows * cols, {s: storage_bits_per_weight(s[0], s[1], cols, scales) for s in priced})
        choice = assign_settings(kl, cost, bits_budget)

    # Embedding (and untied lm head): the source form when it already has embedding_bits, else RTN.
    def embedding_group(t) -> int:
        if isinstance(t, QuantizedMatrix) and t.bits == embedding_bits:
            return t.group
        return effective_group(t.shape[1], group)

    tensors: dict[str, dict] = {}
    files: list[Path] = []
    lora_factors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    quantized: dict[str, QuantizedMatrix] = {}
    how_of: dict[str, str] = {}

    def quantize_linear(name: str, target=None, h=None) -> np.ndarray:
        """Quantize one linear (with its LoftQ LoRA when asked) to fit target (its own weights when None) on
        inputs with Hessian h (None: RTN); returns the weights the build computes with, base plus LoRA."""
        t, key = _tensor(w, name), _split(name)
        b, g = choice[name]
        m = method if h is not None else "rtn"
        source = t if target is None else target
        if lora_rank > 0:
            from .loftq import loftq

            # with calibration, the low-rank step weights the error by the inputs (loftq.py)
            q, a, bb = loftq(as_float(source), lambda x: quantize_tensor(x, b, g, m, h, name, scales)[0],
                             lora_rank, loftq_iters, hessian=h)
            lora_factors[key] = (a, bb)
            how_of[name] = f"{m}+loftq" + ("-aw" if h is not None else "")
            effective = q.dequantize() + bb @ a
        else:
            q, how_of[name] = quantize_tensor(source, b, g, m, h, name, scales)
            effective = q.dequantize()
        quantized[name] = q
        return effective

    if method == "gptaq":
        from .calibrate import quantize_sequentially

        quantize_sequentially(model, calib_windows, lambda key, target, h: quantize_linear(
            f"blk.{key[0]}.{key[1]}", target, h), progress)
    for name in _progress(tensor_names(config), "quantizing", progress):
        t = _tensor(w, name)
        if _split(name) is None:
            q, how_of[name] = quantize_tensor(t, embedding_bits, embedding_group(t), "rtn", None, name)
            quantized[name] = q
        elif name not in quantized:
            quantize_linear(name, h=hessians[_split(name)] if method == "gptq" else None)
        q = quantized[name]
        tensors[name] = {"shape": list(q.shape), "bits": q.bits, "group": q.group, "scales": q.scale_format,
                         "method": how_of[name], "bits_per_weight": q.bits_per_weight}
        key = _split(name)
        if bits_budget is not None and key is not None:
            entry = sensitivity[key]
            tensors[name]["sensitivity"] = {"reference": entry["reference"], "settings": {
                setting_name(s): e for s, e in entry["settings"].items()}}

    # The plan sees every tensor's actual width (its names: layers.<i>.<linear>, token_embedding, output).
    per_tensor_bits = {_plan_name(n): tensors[n]["bits"] for n in tensors}
    per_tensor_groups = {_plan_name(n): tensors[n]["group"] for n in tensors}
    plan_group = min(g for _, g in choice.values())  # what the plan's --group-wide reservations assume
    plan = _plan(config, board_obj, bits, plan_group, per_tensor_bits, per_tensor_groups, lora_rank, ddr,
                 kv_onchip, scales)
    kv_entry = _kv_onchip_entry(plan, kv_onchip)
    placement = {t["name"]: t["placement"] for t in (plan or {}).get("tensors", [])}
    for n in tensors:
        tensors[n]["placement"] = placement.get(_plan_name(n))

    ddr_images = {}
    for name in _progress(tensor_names(config), "packing", progress):
        q = quantized[name]
        n_tiles = 1  # the planner does not fold tensors into tiles yet
        img = brom.pack(q, tiles=n_tiles, name=name)
        if is_ddr(tensors[name]):
            ddr_images[name] = img
        else:
            paths = brom.write_image(img, out_dir, name)
            files += paths
            tensors[name].update({"tiles": n_tiles, "rom_bytes": img.rom_bytes, "image": paths[0].name,
                                  "init": paths[1].name, "image_sha256": img.sha256()})
        if fail_after == name:
            raise RuntimeError(f"injected failure after {name}")
    ddr_files, ddr_entry = write_ddr_image(out_dir, ddr_images, tensors)
    files += ddr_files

    norms_layout, norm_files = _write_norms(w, config, out_dir)
    files += norm_files

    lora_entry = None
    if lora_factors:
        lora_entry = _write_lora(lora_factors, out_dir, lora_rank, loftq_iters)
        files.append(out_dir / LORA_FILE)

    header = out_dir / HEADER_FILE
    from .header import render_header

    header.write_text(render_header(config, tensors, bits=bits, group=group, context=config.context_length,
                                    lora_rank=lora_rank, board=board_obj.name if hasattr(board_obj, "name")
                                    else str(board), model_sha256=identity, ddr=ddr_entry, kv_onchip=kv_entry))
    files.append(header)

    linear_params = sum(int(np.prod(tensors[n]["shape"])) for n in linears)
    linear_bits = sum(tensors[n]["bits_per_weight"] * np.prod(tensors[n]["shape"]) for n in linears)
    all_params = sum(int(np.prod(e["shape"])) for e in tensors.values())
    all_bits = sum(e["bits_per_weight"] * np.prod(e["shape"]) for e in tensors.values())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": f"roma_runtime {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "compile_seconds": round(time.time() - t0, 2),
        "model": {"name": config.name, "source": str(model.source), "file": Path(model.source).name,
                  "format": model.format, "sha256": identity, "config": config.to_dict()},
        "quantization": {
            "bits": bits, "group": group, "group_fallback": {str(c): g for c, g in sorted(fallback.items())},
            "scales": scales,
            "plan_group": plan_group, "method": method, "embedding_bits": embedding_bits,
            "bits_budget": bits_budget, "lora_rank": lora_rank,
            "calibration": None if calib_windows is None else {
                "corpus": "python-stdlib-docstrings/calibration", "tokens": sum(len(x) for x in calib_windows),
                "windows": len(calib_windows), "window": calib_window,
                "gptq": None if method == "rtn" else {
                    "gptq": "one-pass Hessians of the float model",
                    "gptaq": "sequential and asymmetric (each linear fitted on the quantized model's own inputs to "
                             "the float model's outputs)"}[method]
                + ", act-order, static groups, scale/minimum search weighted by the Hessian diagonal"},
            "sensitivity": None if bits_budget is None else {
                "measure": "mean KL(float || tensor lowered) of next-token distributions on calibration text, "
                           "one linear at a time, the rest float, measured at the reference setting and scaled "
                           "to the others by the layer-output error tr(dW H dW^T); quantizer RTN with "
                           "Hessian-diagonal-weighted scale search; 8-bit taken as lossless; per tensor in "
                           "tensors.<name>.sensitivity",
                "tokens": sensitivity_tokens},
            "linear_bits_per_weight": float(linear_bits / linear_params),
            "all_bits_per_weight": float(all_bits / all_params),
        },
        "tensors": tensors,
        "norms": norms_layout,
        "lora": lora_entry,
        "board": board_obj.to_dict() if hasattr(board_obj, "to_dict") else str(board),
        "plan": plan,
        "ddr": ddr_entry,
        "kv_onchip": kv_entry,
        "header": HEADER_FILE,
        "sizes": {"rom_bytes": int(sum(e["rom_bytes"] for e in tensors.values())),
                  "ddr_bytes": int(sum(e.get("ddr_bytes", 0) for e in tensors.values())),
                  "linear_params": linear_params, "all_params": all_params,
                  "files_bytes": int(sum(p.stat().st_size for p in files))},
        "files": {p.name: {"sha256": sha256_files([p]), "bytes": p.stat().st_size} for p in files},
    }
    return write_manifest(out_dir, manifest)


def measure_sensitivity(model: LoadedModel, group: int, hessians, tokens: int = 256, window: int = 256,
                        progress: bool = False, scales: str = "fp16") -> dict:
    """mixed.measure_sensitivity with the compiler's quantizer, RTN with the scale search weighted by the
    Hessian diagonal (calibrated, and far cheaper than GPTQ), over mixed_settings of every linear."""
    from .corpus import token_windows
    from .mixed import measure_sensitivity as measure

    w = model.weights

    def quantize(li, lin, b, g):
        return quantize_tensor(getattr(w.layers[li], lin), b, g, "rtn", hessians[(li, lin)], f"blk.{li}.{lin}",
                               scales)[0]

    settings = {(li, lin): mixed_settings(t.shape[1], group)
                for li, layer in enumerate(w.layers) for lin, t in layer.linears().items()}
    windows = token_windows(model, "calibration", tokens, window)
    return measure(model, quantize, hessians, windows, settings,
                   progress=lambda it: _progress(it, "sensitivity", progress))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_norms(w: ModelWeights, config: ModelConfig, out_dir: Path) -> tuple[dict, list[Path]]:
    arrays = []
    for i, layer in enumerate(w.layers):
        arrays += [(f"blk.{i}.attn_norm", layer.attn_norm), (f"blk.{i}.ffn_norm", layer.ffn_norm)]
    arrays.append(("output_norm", w.output_norm))
    layout, offset, chunks = [], 0, []
    for name, a in arrays:
        a = np.ascontiguousarray(a, dtype="<f4")
        layout.append({"name": name, "offset": offset, "length": int(a.size)})
        offset += a.size
        chunks.append(a)
    flat = np.concatenate(chunks)
    bin_path, dat_path = out_dir / f"{NORMS_FILE}.bin", out_dir / f"{NORMS_FILE}.dat"
    bin_path.write_bytes(flat.tobytes())
    lines = [f"// fp32 RMSNorm weights, {flat.size} values; layout in manifest.json (norms.layout)"]
    for i in range(0, flat.size, 8):
        lines.append(", ".join(c_float(v) for v in flat[i:i + 8].tolist()) + ",")
    dat_path.write_text("\n".join(lines) + "\n")
    return {"file": bin_path.name, "init": dat_path.name, "dtype": "float32", "layout": layout}, [bin_path, dat_path]


def _write_lora(factors, out_dir: Path, rank: int, iters: int) -> dict:
    from safetensors.numpy import save_file

    arrays = {}
    for (layer, name), (a, b) in sorted(factors.items()):
        arrays[f"blk.{layer}.{name}.lora_a"] = np.ascontiguousarray(a, np.float16)
        arrays[f"blk.{layer}.{name}.lora_b"] = np.ascontiguousarray(b, np.float16)
    save_file(arrays, str(out_dir / LORA_FILE))
    return {"file": LORA_FILE, "rank": rank, "scale": 1.0, "dtype": "float16", "method": f"loftq-{iters}",
            "targets": sorted({name for _, name in factors})}


# --- reading a build back ------------------------------------------------------------------------------------


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


def load_build(build_dir: str | Path, verify: bool = True):
    """(LoadedModel with the build's quantized weights, LoraAdapter or None)."""
    from ..golden import LoraAdapter

    build_dir = Path(build_dir)
    manifest = verify_build(build_dir) if verify else read_manifest(build_dir)
    if manifest is None:
        raise RomaError(f"{build_dir} holds no {MANIFEST}; it is not a complete build")
    config = check_manifest(manifest, build_dir)
    tensors = manifest["tensors"]
    ddr_words = brom.read_ddr_image(build_dir / DDR_FILE) if manifest.get("ddr") else None

    def matrix(name: str) -> QuantizedMatrix:
        e = tensors[name]
        if is_ddr(e):
            words = ddr_words[e["ddr_offset"]: e["ddr_offset"] + e["ddr_words"]]
            rows, cols = e["shape"]
            return brom.unpack(brom.ddr_unpack(words, e["bits"], e["group"], rows, cols, e["tiles"],
                                               scales=e["scales"]))
        return brom.unpack(brom.read_image(build_dir / e["image"]))

    norms = np.frombuffer((build_dir / manifest["norms"]["file"]).read_bytes(), dtype="<f4").astype(np.float32)
    norm = {e["name"]: norms[e["offset"]:e["offset"] + e["length"]].copy() for e in manifest["norms"]["layout"]}
    layers = []
    for i in range(config.n_layers):
        layers.append(LayerWeights(attn_norm=norm[f"blk.{i}.attn_norm"], ffn_norm=norm[f"blk.{i}.ffn_norm"],
                                   **{lin: matrix(f"blk.{i}.{lin}") for lin in LayerWeights.LINEAR}))
    weights = ModelWeights(token_embedding=matrix(EMBEDDING), output_norm=norm["output_norm"],
                           output=matrix(OUTPUT) if OUTPUT in tensors else None, layers=layers)
    check_weights(build_dir, config, weights)
    loaded = LoadedModel(config, weights, build_dir, "build", {"roma.build": manifest})
    lora = None
    if manifest.get("lora"):
        from safetensors.numpy import load_file

        entry = manifest["lora"]
        arrays = load_file(str(build_dir / entry["file"]))
        factors = {}
        for key in arrays:
            if key.endswith(".lora_a"):
                base = key[: -len(".lora_a")]
                layer, name = _split(base)
                factors[(layer, name)] = (arrays[key].astype(np.float32),
                                          arrays[base + ".lora_b"].astype(np.float32), float(entry["scale"]))
        lora = LoraAdapter(factors)
    return loaded, lora

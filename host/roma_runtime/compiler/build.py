"""The model compiler: a model file in, a build folder out (ROM images, norms, LoRA, C++ header, manifest).

compile_model quantizes (quantization/), places (placement/) and writes a build folder in the format
artifact/build.py describes and reads back: the B-ROM images (artifact/brom_image.py), the DDR image
(artifact/ddr_image.py), the URAM load image (artifact/uram_image.py), the norms, the compensating LoRA, roma_model.h (artifact/model_header.py) and, last and
atomically, the sealed manifest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .. import __version__
from ..artifact.boards import get_board
from ..artifact.brom_image import pack, write_image
from ..artifact.build import (DDR_FILE, EMBEDDING, FORMAT, FORMAT_VERSION, HEADER_FILE, LORA_FILE, MANIFEST,
                              NORMS_FILE, URAM_FILE, is_ddr, is_uram, read_manifest, seal_manifest, sha256_files,
                              split_name, tensor_names)
from ..artifact.ddr_image import DDR_ALIGN_WORDS, DDR_BLOCK_STEPS, DDR_VERSION, ddr_image
from ..artifact.uram_image import URAM_VERSION, uram_image
from ..artifact.kv_layout import KvLayout
from ..artifact.lora_unit import LoraUnit
from ..artifact.model_header import c_float, render_header
from ..errors import RomaError
from ..model.config import ModelConfig
from ..model.loader import LoadedModel, load_model
from ..model.weights import ModelWeights, QuantizedMatrix, as_float, storage_bits_per_weight
from ..progress import with_progress
from ..tempfiles import clean_stale, write_text_atomic
from .placement.footprint import FOOTPRINT_FILE
from .placement.memory import logits_impl
from .placement.plan import (DEFAULT_CONTEXT, check_ddr_units, check_kv_onchip, check_kv_tokens, check_pe,
                             make_plan, parse_ddr_units)
from .quantization.calibrate import collect_hessians, quantize_sequentially
from .quantization.corpus import token_windows
from .quantization.loftq import loftq
from .quantization.mixed import assign_settings, mixed_settings, setting_name
from .quantization.mixed import measure_sensitivity as measure_mixed_sensitivity
from .quantization.quantize import CALIB_TOKENS, METHODS, effective_group, quantize_tensor, validate


def _tensor(weights: ModelWeights, name: str):
    key = split_name(name)
    if key:
        return getattr(weights.layers[key[0]], key[1])
    return weights.token_embedding if name == EMBEDDING else weights.output


def embedding_form(t, embedding_bits: int, group: int, scales: str) -> tuple[int, int, str]:
    """(bits, group, scale format) a build stores the embedding (or an untied lm head) `t` in: the source's form
    when it already has embedding_bits (passed through), else RTN at embedding_bits in the linears' group and scale
    format (q8 halves a tied head's stream: embedding.h reads either)."""
    if isinstance(t, QuantizedMatrix) and t.bits == embedding_bits:
        return t.bits, t.group, t.scale_format
    return embedding_bits, effective_group(t.shape[1], group), scales


def embedding_forms(model: LoadedModel, embedding_bits: int, group: int, scales: str, bits_of: dict) -> dict:
    """The plan's names of the embedding and an untied lm head -> (bits, group, scale format), as roma compile
    stores them (embedding_form) at embedding_bits, or at the bits `bits_of` gives that name: what `roma plan`
    places."""
    return {_plan_name(n): embedding_form(_tensor(model.weights, n), bits_of.get(_plan_name(n), embedding_bits),
                                          group, scales)
            for n in tensor_names(model.config) if split_name(n) is None}


def _progress(iterable, desc: str, enabled: bool, total=None):
    return with_progress(iterable, desc, enabled, total=total, unit="tensors")


def write_manifest(out_dir: Path, manifest: dict) -> dict:
    """Seal `manifest` and write it atomically (a temporary name renamed over manifest.json); returns it sealed."""
    manifest = seal_manifest(manifest)
    write_text_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


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
    (out_dir / FOOTPRINT_FILE).unlink(missing_ok=True)  # the check of the build this one replaces
    if old is not None:
        for name in old.get("files", {}):
            if "/" not in name and "\\" not in name:
                (out_dir / name).unlink(missing_ok=True)


def _is_build_file(name: str) -> bool:
    return (name.endswith((".bin", ".dat", ".h", ".safetensors", ".tmp")) or name in (MANIFEST, FOOTPRINT_FILE))


def _plan_name(name: str) -> str:
    key = split_name(name)
    if key:
        return f"layers.{key[0]}.{key[1]}"
    return "token_embedding" if name == EMBEDDING else "output"


def _plan(config: ModelConfig, board, bits: int, group: int, per_tensor_bits: dict, per_tensor_groups: dict,
          unit: LoraUnit, ddr, kv_onchip: int = 0, scales: str = "fp16", uram=None, context: int | None = None,
          pe: int | None = None, per_tensor_scales: dict | None = None):
    # the estimate's context: the plan's default (the on-chip KV, else DEFAULT_CONTEXT), or the build's when shorter
    plan = make_plan(config, board, bits=bits, group=group, per_tensor_bits=per_tensor_bits,
                     per_tensor_groups=per_tensor_groups, per_tensor_scales=per_tensor_scales,
                     **_lora_plan_args(unit), ddr=ddr,
                     kv_tokens=kv_onchip or None, scales=scales, uram=uram, build_context=context, pe=pe,
                     context=min(context or config.context_length, kv_onchip or DEFAULT_CONTEXT))
    return plan.to_dict()


def _lora_plan_args(unit: LoraUnit) -> dict:
    """make_plan's LoRA reservation for the build's LoRA unit."""
    return {"lora_slots": unit.slots, "lora_rank": unit.rank if unit.slots else 0, "lora_targets": unit.targets,
            "lora_dtype": unit.dtype}


def lora_unit_of(board, loftq_rank: int, slots: int | None = None, rank: int | None = None, targets=None,
                 dtype: str | None = None) -> LoraUnit:
    """The LoRA unit a build reserves: the board's default (boards.json "lora_unit") with the options given
    instead; RomaError when it cannot hold the build's own compensating LoRA of rank `loftq_rank`."""
    default = get_board(board).lora_unit
    unit = LoraUnit.make(default.slots if slots is None else slots, default.rank if rank is None else rank,
                         default.targets if targets is None else tuple(targets),
                         default.dtype if dtype is None else dtype, "roma compile")
    if loftq_rank > 0 and not unit.slots:
        raise RomaError(f"--lora-rank {loftq_rank} makes a compensating LoRA, which needs a LoRA slot, and the build "
                        "reserves none (--lora-slots 0)", hint="use --lora-slots 1 or more, or --lora-rank 0")
    if loftq_rank > unit.rank:
        raise RomaError(f"the compensating LoRA of --lora-rank {loftq_rank} does not fit the LoRA unit's slot rank "
                        f"{unit.rank} ({unit.describe()})",
                        hint=f"use --lora-slot-rank {loftq_rank} or more, or a --lora-rank of {unit.rank} or less")
    return unit


def _lora_unit_entry(unit: LoraUnit, plan: dict) -> dict:
    """The manifest's "lora_unit": the unit and the memory the plan reserved for it."""
    lora = plan["lora"]
    return {**unit.to_dict(), "placement": lora["placement"] if unit.slots else "none", "bytes": lora["bytes"],
            "bram36": lora["bram36"], "uram": lora["uram"]}


def _kv_onchip_entry(plan: dict | None, kv_onchip: int) -> dict | None:
    """The manifest's "kv_onchip" entry: the on-chip KV cache's positions and the memory the plan reserved for it
    (None when the KV cache is in DDR only)."""
    if not kv_onchip:
        return None
    kv = plan["kv_cache"]
    return {"tokens": kv_onchip, "bytes": kv["bytes"], "placement": kv["placement"], "bram36": kv["bram36"],
            "uram": kv["uram"]}


def _write_weight_image(out_dir: Path, images: dict, tensors: dict, file: str, tier: str, build_image,
                        entry) -> tuple[list[Path], dict | None]:
    """Write `images` ({name: BromImage}, in this order) as one image file of the tier ("ddr" or "uram") built by
    build_image(images) -> (words, {name: (offset, words)}), and point their manifest entries at it; returns
    ([its path], the manifest's entry for the tier: the file, words and tensors, and entry(words), the tier's own
    fields), or ([], None) without any."""
    if not images:
        (Path(out_dir) / file).unlink(missing_ok=True)
        return [], None
    words, layout = build_image(images)
    path = Path(out_dir) / file
    path.write_bytes(words.astype("<u4").tobytes())
    for name, (offset, n) in layout.items():
        tensors[name].update({"tiles": images[name].tiles, "rom_bytes": 0, f"{tier}_bytes": 4 * n, "image": file,
                              f"{tier}_offset": offset, f"{tier}_words": n, "init": None})
    return [path], {"file": file, "words": int(words.size), **entry(words), "tensors": list(layout)}


def write_ddr_image(out_dir: Path, images: dict, tensors: dict) -> tuple[list[Path], dict | None]:
    """The DDR tensors' images as ddr_weights.bin (_write_weight_image); the entry holds its CRC-32."""
    return _write_weight_image(out_dir, images, tensors, DDR_FILE, "ddr", ddr_image, lambda words: {
        "crc32": int(words[3]),
        "layout": f"ddr_image.py DDR image version {DDR_VERSION}: tiles in blocks of {DDR_BLOCK_STEPS} steps, the "
                  f"steps' scale|minimum<<16 words (q8: two steps' params per word, after the tile's row exponents) "
                  f"then their planes, each padded to a power of two words; everything in whole "
                  f"{DDR_ALIGN_WORDS}-word units"})


def write_uram_image(out_dir: Path, images: dict, tensors: dict) -> tuple[list[Path], dict | None]:
    """The URAM tensors' images as uram_weights.bin (_write_weight_image); the entry holds its checksum."""
    return _write_weight_image(out_dir, images, tensors, URAM_FILE, "uram", uram_image, lambda words: {
        "checksum": int(words[3]),
        "layout": f"uram_image.py URAM load image version {URAM_VERSION}: per tile the bank row's plane words, then "
                  "its two scale arrays as 16-bit entries two per word"})


def compile_model(model: LoadedModel | str | Path, out_dir: str | Path, *, bits: int = 4, group: int = 32,
                  method: str = "rtn", scales: str = "fp16", board: str = "u250", lora_rank: int = 0,
                  bits_budget: float | None = None, embedding_bits: int = 8, force: bool = False,
                  calib_tokens: int | None = None, calib_window: int = 256, loftq_iters: int = 2,
                  progress: bool = True, hessians=None, sensitivity=None, sensitivity_tokens: int = 256,
                  fail_after: str | None = None, ddr=None, kv_onchip: int = 0, uram=None,
                  context: int | None = None, lora_slots: int | None = None, lora_slot_rank: int | None = None,
                  lora_targets=None, lora_dtype: str | None = None, pe: int | None = None) -> dict:
    """Quantize, pack, place and describe a model; returns the manifest (also written to out_dir).

    calib_tokens: calibration text for GPTQ, GPTAQ and the mixed-precision pricing (default CALIB_TOKENS[method]).
    scales: how the linears' ROM stores their scales and minimums (quantize.py: fp16, or q8 with an 8-bit
    step of a per-row power of two); the embedding keeps fp16 (its Q8_0 source passes through).

    ddr: placement units to stream from DDR whatever the room (plan.parse_ddr_units: "1,3-5,head", ...).
    uram: placement units to put in URAM (load-once) instead of BRAM, in the same form.
    kv_onchip: positions of an on-chip KV cache the core holds (0: the KV cache is in DDR only); the plan
    reserves its memory before any weight, and the header gives it to the core (KV_ONCHIP_CTX).
    context: the build's context, 1..the model's context length (None: the model's): the longest session its
    core runs; CONTEXT in the header sizes attention's score buffer, the KV port and the token limits.
    pe: the tiles (processing elements) of the layers' on-chip GEMV engines (None: the most the board's logic
    allows whose placement costs the fewest GEMV cycles, placement.plan.pe_candidates); each tensor's tiles are
    the plan's.
    lora_slots, lora_slot_rank, lora_targets, lora_dtype: the core's LoRA unit (artifact/lora_unit.py), None
    for the board's default (boards.json "lora_unit"); lora_rank, the compensating LoRA's rank (LoftQ, on the
    unit's targets only), is at most the slot rank. The plan reserves the unit's memory before any weight.
    hessians: calibrate.Hessians (parallel) computed earlier for this model, for the sensitivity quantizer;
    sensitivity: measure_sensitivity(...) computed earlier at this group (benchmarks reuse both across builds).
    fail_after: testing hook; raise after writing that tensor's image (shows the manifest is written last).
    """
    t0 = time.time()
    if method not in METHODS:
        raise RomaError(f"unknown quantization method '{method}'", hint=f"choose one of {', '.join(METHODS)}")
    calib_tokens = CALIB_TOKENS[method] if calib_tokens is None else calib_tokens
    validate(bits, group, name="--bits/--group", scales=scales)
    validate(embedding_bits, 32, name="embedding")
    if lora_rank < 0:
        raise RomaError(f"--lora-rank must be positive, not {lora_rank}")
    board_obj = get_board(board)
    unit = lora_unit_of(board_obj, lora_rank, lora_slots, lora_slot_rank, lora_targets, lora_dtype)
    if not isinstance(model, LoadedModel):
        model = load_model(model)
    config = model.config
    # a unit the model does not have is refused before anything is written
    if ddr:
        check_ddr_units(parse_ddr_units(ddr), config)
    if uram:
        check_ddr_units(parse_ddr_units(uram), config, "--uram")
    if pe is not None:
        check_pe(pe, config)
    # a KV longer than the context or too big for the board, likewise
    check_kv_tokens(kv_onchip or None, config)  # first: a KV longer than the model's context says so
    context = check_build_context(config, board_obj, context, kv_onchip)
    check_kv_onchip(config, board_obj, kv_onchip, **_lora_plan_args(unit), build_context=context)
    out_dir = Path(out_dir)
    identity = model.identity()
    _prepare_out_dir(out_dir, identity, force)
    w = model.weights
    linears = [n for n in tensor_names(config) if split_name(n)]
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
        calib_windows = token_windows(model, "calibration", calib_tokens, calib_window)
    needs_hessians = method == "gptq" or (bits_budget is not None and sensitivity is None)
    if not needs_hessians:
        hessians = None
    elif hessians is None:
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
            priced = sensitivity[split_name(n)]["settings"]
            kl[n] = {s: e["kl"] for s, e in priced.items()}
            cost[n] = (rows * cols, {s: storage_bits_per_weight(s[0], s[1], cols, scales) for s in priced})
        choice = assign_settings(kl, cost, bits_budget)

    tensors: dict[str, dict] = {}
    files: list[Path] = []
    lora_factors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    quantized: dict[str, QuantizedMatrix] = {}
    how_of: dict[str, str] = {}

    def quantize_linear(name: str, target=None, h=None) -> np.ndarray:
        """Quantize one linear (with its LoftQ LoRA when asked) to fit target (its own weights when None) on
        inputs with Hessian h (None: RTN); returns the weights the build computes with, base plus LoRA."""
        t, key = _tensor(w, name), split_name(name)
        b, g = choice[name]
        m = method if h is not None else "rtn"
        source = t if target is None else target
        if lora_rank > 0 and key[1] in unit.targets:  # the core adds a LoRA only where it has its memory
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
        quantize_sequentially(model, calib_windows, lambda key, target, h: quantize_linear(
            f"blk.{key[0]}.{key[1]}", target, h), progress)
    for name in _progress(tensor_names(config), "quantizing", progress):
        t = _tensor(w, name)
        if split_name(name) is None:
            b, g, sf = embedding_form(t, embedding_bits, group, scales)
            q, how_of[name] = quantize_tensor(t, b, g, "rtn", None, name, sf)
            quantized[name] = q
        elif name not in quantized:
            quantize_linear(name, h=hessians[split_name(name)] if method == "gptq" else None)
        q = quantized[name]
        tensors[name] = {"shape": list(q.shape), "bits": q.bits, "group": q.group, "scales": q.scale_format,
                         "method": how_of[name], "bits_per_weight": q.bits_per_weight}
        key = split_name(name)
        if bits_budget is not None and key is not None:
            entry = sensitivity[key]
            tensors[name]["sensitivity"] = {"reference": entry["reference"], "settings": {
                setting_name(s): e for s, e in entry["settings"].items()}}

    # The plan sees every tensor's actual width (its names: layers.<i>.<linear>, token_embedding, output).
    per_tensor_bits = {_plan_name(n): tensors[n]["bits"] for n in tensors}
    per_tensor_groups = {_plan_name(n): tensors[n]["group"] for n in tensors}
    per_tensor_scales = {_plan_name(n): tensors[n]["scales"] for n in tensors}
    plan_group = min(g for _, g in choice.values())  # what the plan's --group-wide reservations assume
    plan = _plan(config, board_obj, bits, plan_group, per_tensor_bits, per_tensor_groups, unit, ddr,
                 kv_onchip, scales, uram, context, pe, per_tensor_scales)
    lora_unit = _lora_unit_entry(unit, plan)
    kv_entry = _kv_onchip_entry(plan, kv_onchip)
    kv_layout = KvLayout.for_build(config.head_dim, board_obj.kv_port_bits, board_obj.kv_ports, kv_onchip)
    placement = {t["name"]: t["placement"] for t in (plan or {}).get("tensors", [])}
    tiles_of = {t["name"]: t["tiles"] for t in (plan or {}).get("tensors", [])}
    for n in tensors:
        tensors[n]["placement"] = placement.get(_plan_name(n))

    ddr_images, uram_images = {}, {}
    for name in _progress(tensor_names(config), "packing", progress):
        q = quantized[name]
        # the plan's tiles: an on-chip layer tensor's engine's PEs, a DDR tensor's what bounds its accumulator
        n_tiles = tiles_of[_plan_name(name)]
        img = pack(q, tiles=n_tiles, name=name)
        # the weights' identity whatever their tier and tiling (finetune's base fingerprint): the one-tile image's
        tensors[name]["image_sha256"] = (img if n_tiles == 1 else pack(q, tiles=1, name=name)).sha256()
        if is_ddr(tensors[name]):
            ddr_images[name] = img
        elif is_uram(tensors[name]):
            uram_images[name] = img
        else:
            paths = write_image(img, out_dir, name)
            files += paths
            tensors[name].update({"tiles": n_tiles, "rom_bytes": img.rom_bytes, "image": paths[0].name,
                                  "init": paths[1].name})
        if fail_after == name:
            raise RuntimeError(f"injected failure after {name}")
    ddr_files, ddr_entry = write_ddr_image(out_dir, ddr_images, tensors)
    files += ddr_files
    uram_files, uram_entry = write_uram_image(out_dir, uram_images, tensors)
    files += uram_files

    norms_layout, norm_files = _write_norms(w, config, out_dir)
    files += norm_files

    lora_entry = None
    if lora_factors:
        lora_entry = _write_lora(lora_factors, out_dir, lora_rank, loftq_iters)
        files.append(out_dir / LORA_FILE)

    header = out_dir / HEADER_FILE
    header.write_text(render_header(config, tensors, bits=bits, group=group, context=context,
                                    board=board_obj.name if hasattr(board_obj, "name")
                                    else str(board), model_sha256=identity, ddr=ddr_entry, kv_onchip=kv_entry,
                                    lora_unit=lora_unit, uram=uram_entry, logits_impl=logits_impl(board_obj.uram),
                                    gemv_pe=plan["pe"], token_lanes=plan["board"]["token_lanes"],
                                    prefill_chunk=plan["board"]["prefill_chunk"]))
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
        "board": plan["board"],  # the board as the plan built for it (its token lanes: the logic's room)
        "plan": plan,
        "ddr": ddr_entry,
        "uram": uram_entry,
        "context": context,
        "kv_onchip": kv_entry,
        "kv_layout": kv_layout.to_dict(),
        "lora_unit": lora_unit,
        "header": HEADER_FILE,
        "sizes": {"rom_bytes": int(sum(e["rom_bytes"] for e in tensors.values())),
                  "ddr_bytes": int(sum(e.get("ddr_bytes", 0) for e in tensors.values())),
                  "uram_bytes": int(sum(e.get("uram_bytes", 0) for e in tensors.values())),
                  "linear_params": linear_params, "all_params": all_params,
                  "files_bytes": int(sum(p.stat().st_size for p in files))},
        "files": {p.name: {"sha256": sha256_files([p]), "bytes": p.stat().st_size} for p in files},
    }
    return write_manifest(out_dir, manifest)


def check_build_context(config: ModelConfig, board, context, kv_onchip: int = 0) -> int:
    """The build's context: `context` (roma compile --context), or the board's default for this model when None
    (Board.default_context). RomaError unless it is a whole number 1..the model's context length holding the
    on-chip KV cache."""
    if context is None:
        context = max(board.default_context(config.context_length), kv_onchip or 0)
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= config.context_length:
        raise RomaError(f"--context {context} is outside 1..{config.context_length}, the context length of "
                        f"{config.name}", hint=f"a build's context is at most the model's: --context "
                                               f"{config.context_length} or less (the default: the board's max_context, "
                                               "or the model's when shorter)")
    if kv_onchip and kv_onchip > context:
        raise RomaError(f"--kv-onchip {kv_onchip} exceeds the build's context of {context} tokens",
                        hint=f"an on-chip KV cache holds at most the context: use --kv-onchip {context} or less, "
                             "or a larger --context")
    return context


def measure_sensitivity(model: LoadedModel, group: int, hessians, tokens: int = 256, window: int = 256,
                        progress: bool = False, scales: str = "fp16") -> dict:
    """mixed.measure_sensitivity with the compiler's quantizer, RTN with the scale search weighted by the
    Hessian diagonal (calibrated, and far cheaper than GPTQ), over mixed_settings of every linear."""
    w = model.weights

    def quantize(li, lin, b, g):
        return quantize_tensor(getattr(w.layers[li], lin), b, g, "rtn", hessians[(li, lin)], f"blk.{li}.{lin}",
                               scales)[0]

    settings = {(li, lin): mixed_settings(t.shape[1], group)
                for li, layer in enumerate(w.layers) for lin, t in layer.linears().items()}
    windows = token_windows(model, "calibration", tokens, window)
    return measure_mixed_sensitivity(model, quantize, hessians, windows, settings,
                   progress=lambda it: _progress(it, "sensitivity", progress))


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
    arrays = {}
    for (layer, name), (a, b) in sorted(factors.items()):
        arrays[f"blk.{layer}.{name}.lora_a"] = np.ascontiguousarray(a, np.float16)
        arrays[f"blk.{layer}.{name}.lora_b"] = np.ascontiguousarray(b, np.float16)
    save_file(arrays, str(out_dir / LORA_FILE))
    return {"file": LORA_FILE, "rank": rank, "scale": 1.0, "dtype": "float16", "method": f"loftq-{iters}",
            "targets": sorted({name for _, name in factors})}



"""Footprint check: what the synthesized top declares for one build, read from its compiled synthesis path.

    python -m roma_runtime.compiler.placement.footprint BUILD [--board NAME] [--json]
    make -C hw/hls footprint BUILD=...

No AMD tool runs here, so the proof of fit comes from the code Vitis HLS would read: hw/hls/roma_core.cpp is
compiled with g++ on the synthesis path (-D__SYNTHESIS__) against the build's roma_model.h, .dat ROM initialisers
and norms.dat, at -O0 -g -ffunction-sections -fno-inline so that every template instantiation stays a function
of its own, as C++14 with -pedantic-errors (the standard Vitis HLS reads: a C++17 construct fails the check).

Memory: every static array of the object file (`nm -S`: its bytes) with its element width and shape from the
DWARF debug information (structs such as g_lora count member by member: each member array is its own memory).
Its layout is the one the code declares (HLS_RULES.md: "Count with the layout the code declares"), by the rules
of memory.py, which the planner uses for its own list of the arrays (one mapping from array to blocks for both):
the ARRAY_PARTITION / ARRAY_RESHAPE and BIND_STORAGE pragmas of the HLS sources that apply to it
(memory.PRAGMA_SITES names where they are: on the array itself, or on the kernel argument it is passed to) split
it into banks of width x depth, and each bank costs the blocks of the physical aspect ratios (RAMB36 and RAMB18
halves; URAM 4K x 72), no packing of several elements into one word unless a RESHAPE says so. An array without
BIND_STORAGE is counted in BRAM, except a bank of depth <= LUTRAM_MAX_DEPTH, which is counted as LUTRAM (FINN's
rule for small memories). Banks of depth 1 (complete partitioning) are registers.

Local arrays: the arrays a function declares on its stack are memories of every RTL instance of that function in
HLS; they are read from the DWARF information of each instantiation and counted once per RTL instance, laid out by
the pragmas of that function on that name, whose factors are evaluated from the instance's template parameters.
The kernels declare the local constants their pragmas name static (brom_ddr's LANES and EX_BANKS, attention's
GROUP), which the debug information keeps with their values; a factor that names a constant gcc folded away is
listed and not applied (fewer, deeper banks: the local figure would be a lower bound).

Kernels: the instantiations of each kernel template (distinct function symbols), and the RTL instances Vitis
makes (one per call site, through the call tree from roma_core, from the object's call relocations; a function
named by an `ALLOCATION function instances=F limit=N` pragma has at most N, before any INLINE). The GEMV engines
are counted against the configurations roma_model.h gives (UNIT_*, N_UNITS: one engine per distinct bits, group,
scale format, tiles and tier, shared by every layer and linear of it; the embedding's and an untied output's
their own): the check fails when there are more engine instantiations than configurations, when linear(), an
engine, the LoRA apply, the layer, attention or the sampler has more than one RTL instance, or an elementwise unit
more than one per token lane (RMSNorm, RoPE, SwiGLU; residual add two per lane: roma_model.h TOKEN_LANES).

Against the plan: the build's plan (manifest.json "plan") lists the arrays it expects ("memory": memory.py's
model of the top); compare_arrays sets them beside the object's, by memory.array_key (a function's local arrays
summed over its instantiations), and the report names those that differ by more than PLAN_TOLERANCE.

Verdict: fail when the BRAM36 or URAM total (static + local arrays) exceeds the board's budget (80% of
boards.json's counts, as the planner's), or differs from the on-chip total the build's plan promises by more
than PLAN_TOLERANCE; the exit status is 1 and the message gives the numbers. `roma compile` runs the check on
the build it writes (check_build: footprint.json beside the manifest; --no-footprint skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ...artifact.boards import ELEMENTWISE_UNITS, ElementwiseLanes, get_board
from ...artifact.interface import HLS_DIR
from ...errors import RomaError
from .memory import LINEARS, Array, Pragma, apply_layout, array_key, hls_sources, local_pragmas, pragma_defines, \
    read_pragmas, static_pragmas

FOOTPRINT_FILE = "footprint.json"  # check_build's report, beside the manifest
PLAN_TOLERANCE = 0.05  # issue 19: the object's totals may differ from the plan's by at most 5%
BUDGET = 0.8  # plan.py's default share of BRAM/URAM (timing closure)

CXX_STD = "c++14"  # the synthesized sources' standard (UG1399 lists C++11/14); vitis/common.tcl says the same

# Arrays the object defines that synthesis drops, and why (read in roma_core.cpp).
NOT_HARDWARE = {
    "probe": "gemv_unit()'s dot probe: passed with PROBE = false, never accessed, removed by synthesis",
}
KV_UNUSED = "the on-chip KV cache of a build without one (KV_ONCHIP_CTX = 0): never referenced by roma_core"

# Kernel templates whose instances are counted: label -> demangled function-name prefixes (without return type).
KERNELS = {
    "linear (engine dispatch + LoRA)": ("(anonymous namespace)::linear(",),
    # (the two-bank one only: a build without the engine has an empty overload, which is no hardware)
    "linear pair (two-bank engine + LoRA)": (
        "(anonymous namespace)::linear_pair<void>(std::integral_constant<bool, true>",),
    "GEMV engine (tiles)": ("(anonymous namespace)::gemv_unit<",),
    "layer": ("(anonymous namespace)::layer(",),
    "B-ROM GEMV (PE x GROUP lanes)": ("roma::brom_gemv_banks_rt<",),
    "DDR-streamed GEMV": ("roma::brom_ddr_gemv_rt<",),
    "activation quantizer": ("roma::act_quant<",),
    "attention": ("roma::attention_lanes<",),
    "RMSNorm": ("roma::rms_norm<",),
    "RoPE": ("roma::rope_qk<",),
    "SwiGLU": ("roma::swiglu<",),
    "residual add": ("roma::residual_add<",),
    "LoRA apply": ("roma::lora_apply<",),
    "sampler": ("roma::sampler_step<",),
}


def _model_consts(build: Path) -> dict[str, int]:
    """The integer constants of the build's roma_model.h (N_HEADS, HEAD_DIM, ...) and its integer macros
    (ROMA_ACT_LANES, ...)."""
    text = (build / "roma_model.h").read_text()
    return {**{m.group(1): int(m.group(2)) for m in re.finditer(r"#define\s+(ROMA_\w+)\s+(\d+)\s*$", text, re.M)},
            **{m.group(1): int(m.group(2)) for m in re.finditer(r"constexpr\s+int\s+(\w+)\s*=\s*(-?\d+)\s*;", text)}}


# --- compiling ----------------------------------------------------------------------------------------------


def compile_synthesis(build: Path, out: Path) -> Path:
    """g++ -D__SYNTHESIS__ -c roma_core.cpp against the build, as C++14 (UG1399 lists C++11/14) -> the object."""
    if shutil.which("g++") is None:
        raise RomaError("the footprint check needs g++", hint="apt-get install g++")
    obj = out / "roma_core_synth.o"
    # -pedantic-errors: a C++17 construct on the synthesis path (if constexpr, hex-float literals, ...) fails here
    # (no -w: it would silence them); -Wfatal-errors stops at the first error instead of parsing megabytes of ROM
    # initialisers
    cmd = ["g++", f"-std={CXX_STD}", "-pedantic-errors", "-Wfatal-errors", "-Wno-unknown-pragmas",
           "-Wno-unused-label", "-O0", "-g", "-ffunction-sections", "-fno-inline", "-D__SYNTHESIS__",
           "-ffp-contract=off", f"-I{HLS_DIR}", f"-I{HLS_DIR / 'include'}", f"-I{build}", "-c",
           str(HLS_DIR / "roma_core.cpp"), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:300])
        raise RomaError(f"the synthesis path does not compile as {CXX_STD} against {build}: "
                        f"{first.replace(str(HLS_DIR) + '/', '')}",
                        hint="the build's roma_model.h and .dat files must come from this checkout's `roma compile`; "
                             "synthesized sources are C++14 (C-simulation-only code lives in include/roma/csim/)")
    return obj


def _nm_data(obj: Path) -> list[tuple[str, str, int, str]]:
    """(mangled, demangled, bytes, nm type) of every sized data symbol."""
    def run(*flags):  # -p: symbol-table order, the same in both listings
        r = subprocess.run(["nm", "-S", "-p", *flags, str(obj)], capture_output=True, text=True, check=True)
        return [ln.split(None, 3) for ln in r.stdout.splitlines()]
    out = []
    for raw, dem in zip(run(), run("-C")):
        if len(raw) == 4 and raw[2] in "bBdDrRuV":
            out.append((raw[3], dem[3], int(raw[1], 16), raw[2]))
    return out


# --- DWARF: element widths and shapes -----------------------------------------------------------------------


def _strip(die):
    while die.tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type"):
        die = die.get_DIE_from_attribute("DW_AT_type")
    return die


def _layout(die) -> tuple[str, object]:
    """('array', (elem_bits, dims)), ('struct', [(member, layout)]), ('scalar', bits) or ('pointer', None)."""
    die = _strip(die)
    if die.tag == "DW_TAG_array_type":
        dims = [c.attributes["DW_AT_upper_bound"].value + 1 if "DW_AT_upper_bound" in c.attributes
                else c.attributes["DW_AT_count"].value for c in die.iter_children()
                if c.tag == "DW_TAG_subrange_type"]
        kind, inner = _layout(die.get_DIE_from_attribute("DW_AT_type"))
        if kind == "array":
            return "array", (inner[0], dims + inner[1])
        if kind == "scalar":
            return "array", (inner, dims)
        return kind, inner  # arrays of structs or pointers: treated like their element
    if die.tag in ("DW_TAG_structure_type", "DW_TAG_class_type"):
        members = [(m.attributes["DW_AT_name"].value.decode(), _layout(m.get_DIE_from_attribute("DW_AT_type")))
                   for m in die.iter_children() if m.tag == "DW_TAG_member" and "DW_AT_data_member_location"
                   in m.attributes]
        return "struct", members
    if die.tag == "DW_TAG_base_type":
        name = die.attributes["DW_AT_name"].value.decode()
        return "scalar", 1 if name == "bool" else 8 * die.attributes["DW_AT_byte_size"].value
    if die.tag == "DW_TAG_enumeration_type":
        return "scalar", 8 * die.attributes["DW_AT_byte_size"].value
    return "pointer", None


def _dwarf_variables(obj: Path) -> dict:
    """Static variables -> their layouts, keyed by linkage name, or by name for those without one."""
    from elftools.elf.elffile import ELFFile

    by_key: dict = {}
    with open(obj, "rb") as f:
        dw = ELFFile(f).get_dwarf_info()
        for cu in dw.iter_CUs():
            for die in cu.iter_DIEs():
                a = die.attributes
                if die.tag != "DW_TAG_variable" or "DW_AT_location" not in a:
                    continue
                spec = die.get_DIE_from_attribute("DW_AT_specification") if "DW_AT_specification" in a else None
                src = spec if spec is not None else die
                if "DW_AT_name" not in src.attributes or "DW_AT_type" not in (a if "DW_AT_type" in a else src.attributes):
                    continue
                if "DW_AT_const_expr" in src.attributes:
                    continue  # constexpr tables (roma_model.h's per-layer widths...): folded at compile time
                name = src.attributes["DW_AT_name"].value.decode()
                link = src.attributes.get("DW_AT_linkage_name") or a.get("DW_AT_linkage_name")
                layout = _layout((die if "DW_AT_type" in a else src).get_DIE_from_attribute("DW_AT_type"))
                by_key.setdefault(link.value.decode() if link else name, []).append(layout)
    return by_key


# --- weight banks' tiers -----------------------------------------------------------------------------------

def uram_banks(model_h: str) -> set[int]:
    """The GEMV engines (roma_model.h's UNIT_* numbers) whose banks are in URAM: those of the tensors with a URAM
    offset (URAM_<NAME> >= 0)."""
    out = set()
    for name in LINEARS:
        ident = name.upper()
        m = re.search(rf"constexpr\s+long\s+long\s+URAM_{ident}\[N_LAYERS\]\s*=\s*\{{([^}}]*)\}}", model_h)
        e = re.search(rf"constexpr\s+int\s+UNIT_{ident}\[N_LAYERS\]\s*=\s*\{{([^}}]*)\}}", model_h)
        if m and e:
            out |= {int(k) for u, k in zip(m.group(1).split(","), e.group(1).split(",")) if int(u) >= 0}
        one = re.search(rf"constexpr\s+long\s+long\s+URAM_{ident}\s*=\s*(-?\d+)\s*;", model_h)
        unit = re.search(rf"constexpr\s+int\s+UNIT_{ident}\s*=\s*(\d+)\s*;", model_h)
        if one and unit and int(one.group(1)) >= 0:
            out.add(int(unit.group(1)))
    return out


def bank_tier(arr: Array, uram: set) -> str | None:
    """"uram" or "rom" for a weight bank's array (Unit<U>::NAME), None for other arrays."""
    m = re.search(r"Unit<(\d+)>::", arr.name)
    return None if not m else "uram" if int(m.group(1)) in uram else "rom"


# --- kernels ------------------------------------------------------------------------------------------------


def _functions_and_calls(obj: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Defined functions (mangled -> demangled) and call sites: caller -> {callee: count} (R_X86_64_PLT32 or PC32
    relocations in each function's own .text section, -ffunction-sections)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    funcs, calls = {}, {}
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        sec_func = {}
        for s in symtab.iter_symbols():
            if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF":
                funcs[s.name] = ""
                sec_func[s["st_shndx"]] = s.name
        for i, sec in enumerate(elf.iter_sections()):
            if not isinstance(sec, RelocationSection) or not sec.name.startswith(".rela.text"):
                continue
            caller = sec_func.get(sec["sh_info"])
            if caller is None:
                continue
            counts = calls.setdefault(caller, {})
            for rel in sec.iter_relocations():
                sym = symtab.get_symbol(rel["r_info_sym"])
                # the assembler refers to a local function through its section's symbol
                name = sec_func.get(sym["st_shndx"]) if sym["st_info"]["type"] == "STT_SECTION" else sym.name
                if name in funcs and rel["r_info_type"] in (2, 4):  # R_X86_64_PC32 / PLT32: a call or address
                    counts[name] = counts.get(name, 0) + 1
    names = list(funcs)
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    for k, d in zip(names, r.stdout.splitlines()):
        funcs[k] = d
    return funcs, calls


def _base_name(demangled: str) -> str:
    """'void (anonymous namespace)::gemv_unit<1>(int, ...)' -> 'gemv_unit'."""
    return re.sub(r"<.*", "", _qualified(demangled)).rsplit("::", 1)[-1]


def kernel_instances(obj: Path, pragmas: list[Pragma] = ()) -> tuple[dict[str, dict], dict[str, int]]:
    """Per kernel: distinct instantiations and the RTL instances one-per-call-site makes from roma_core down
    (capped by the ALLOCATION limits in pragmas); and every function's RTL instances (by symbol)."""
    funcs, calls = _functions_and_calls(obj)
    limits = {p.options["instances"]: int(p.options["limit"]) for p in pragmas
              if p.directive == "ALLOCATION" and "instances" in p.options and "limit" in p.options}
    memo: dict[str, int] = {}
    callers: dict[str, list] = {}
    for caller, cs in calls.items():
        for callee, n in cs.items():
            callers.setdefault(callee, []).append((caller, n))

    def instances(fn: str, stack=()) -> int:
        if fn == "roma_core":  # the top (extern "C": not mangled)
            return 1
        if fn not in memo:
            memo[fn] = sum(n * instances(c, stack + (fn,)) for c, n in callers.get(fn, []) if c not in stack)
            limit = limits.get(_base_name(funcs[fn]) if funcs.get(fn) else fn)
            if limit is not None:
                memo[fn] = min(memo[fn], limit)
        return memo[fn]

    out = {}
    for label, prefixes in KERNELS.items():
        name = re.compile(r"^(?:[\w:]+ )*(?:" + "|".join(map(re.escape, prefixes)) + ")")  # after a return type
        hits = [m for m, d in funcs.items() if name.match(d)]
        out[label] = {"templates": len(hits), "rtl_instances": sum(instances(m) for m in hits),
                      "max_rtl_instances": max((instances(m) for m in hits), default=0)}
    per_function = {fn: instances(fn) for fn in funcs}
    for fn, d in funcs.items():  # also by qualified name: DWARF names some instantiations only so
        q = _qualified(d)
        per_function[q] = per_function.get(q, 0) + per_function[fn]
    return out, per_function


def gemv_engines(obj: Path, consts_text: str) -> dict[str, int]:
    """The gemv_unit<U> instantiations in the object, and the GEMV engines roma_model.h configures (N_UNITS, less an
    untied embedding's, which is only looked up)."""
    funcs, _ = _functions_and_calls(obj)
    made = sum(1 for d in funcs.values() if re.match(r"^(?:[\w:]+ )*\(anonymous namespace\)::gemv_unit<\d+>", d))
    n = re.search(r"constexpr\s+int\s+N_UNITS\s*=\s*(\d+)\s*;", consts_text)
    tied = re.search(r"constexpr\s+bool\s+TIED_EMBEDDINGS\s*=\s*true\s*;", consts_text)
    return {"engines": made, "configurations": int(n.group(1)) - (0 if tied else 1) if n else 0}


def _qualified(demangled: str) -> str:
    """'void (anonymous namespace)::layer<0>(int, float*)' -> '(anonymous namespace)::layer<0>'."""
    depth, end = 0, len(demangled)
    for i in range(len(demangled) - 1, -1, -1):  # the argument list: the last balanced (...)
        c = demangled[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                end = i
                break
    name, depth, start = demangled[:end], 0, 0
    for i, c in enumerate(name):  # the return type ends at the last space outside <> and ()
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        elif c == " " and depth == 0:
            start = i + 1
    return name[start:]


def _dwarf_qualified(die) -> str:
    parts = [die.attributes["DW_AT_name"].value.decode()]
    parent = die.get_parent()
    while parent is not None and parent.tag != "DW_TAG_compile_unit":
        nm = parent.attributes.get("DW_AT_name")
        parts.append(nm.value.decode() if nm else "(anonymous namespace)")
        parent = parent.get_parent()
    return "::".join(reversed(parts))


def _local_arrays(obj: Path, per_function: dict[str, int], pragmas: list[Pragma]) -> list[Array]:
    """The arrays declared inside each function (stack arrays in C++, memories of every RTL instance in HLS), laid
    out by the pragmas of that function on them; factor symbols are the instance's template parameters and local
    constants from the DWARF information."""
    from elftools.elf.elffile import ELFFile

    out = []
    with open(obj, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                    continue
                decl = die.get_DIE_from_attribute("DW_AT_specification") if "DW_AT_specification" in \
                    die.attributes else die
                link = die.attributes.get("DW_AT_linkage_name") or decl.attributes.get("DW_AT_linkage_name")
                n = per_function.get(link.value.decode() if link else _dwarf_qualified(decl))
                if not n:
                    continue  # not reached from roma_core: no hardware
                full = decl.attributes["DW_AT_name"].value.decode()
                short = full.split("<")[0]
                env, arrays = {}, []
                for src in (decl, die):
                    for c in src.iter_children():
                        if c.tag == "DW_TAG_template_value_param" and "DW_AT_const_value" in c.attributes:
                            env[c.attributes["DW_AT_name"].value.decode()] = c.attributes["DW_AT_const_value"].value
                stack = list(die.iter_children())
                while stack:
                    c = stack.pop()
                    if c.tag == "DW_TAG_lexical_block":
                        stack += list(c.iter_children())
                    if c.tag != "DW_TAG_variable" or "DW_AT_name" not in c.attributes:
                        continue
                    name = c.attributes["DW_AT_name"].value.decode()
                    if "DW_AT_const_value" in c.attributes and isinstance(c.attributes["DW_AT_const_value"].value, int):
                        env[name] = c.attributes["DW_AT_const_value"].value
                    loc = c.attributes.get("DW_AT_location")
                    if loc is None or not isinstance(loc.value, list) or not loc.value or loc.value[0] == 0x03:
                        continue  # no storage, or a static (DW_OP_addr: in nm's list)
                    kind, info = _layout(c.get_DIE_from_attribute("DW_AT_type"))
                    if kind == "array":
                        bits, dims = info
                        arrays.append(Array(f"{full}::{name}", name, n * _bytes((kind, info)), bits, dims, n))
                for a in arrays:
                    apply_layout(a, local_pragmas(short, a, pragmas, env), strict=False)
                out += arrays
    return out


# --- the check ----------------------------------------------------------------------------------------------


def _arrays(obj: Path, kv_onchip: bool) -> tuple[list[Array], list[dict]]:
    dwarf = _dwarf_variables(obj)
    arrays, dropped = [], []
    for mangled, dem, size, _ in _nm_data(obj):
        var = dem.rsplit("::", 1)[-1]
        why = NOT_HARDWARE.get(var) or (KV_UNUSED if var == "g_kv_chip" and not kv_onchip else None)
        if why:
            dropped.append({"name": dem, "bytes": size, "why": why})
            continue
        layouts = dwarf.get(mangled) or dwarf.get(var) or []
        distinct = {json.dumps(lay) for lay in layouts}
        if not layouts:
            continue  # constexpr or a compiler artefact: no storage in hardware
        if len(distinct) > 1:  # same name, no linkage name: the one whose size matches
            layouts = [lay for lay in layouts if _bytes(lay) == size] or layouts
            if len({json.dumps(lay) for lay in layouts}) > 1:
                raise RomaError(f"cannot tell the layouts of the static arrays named '{var}' apart")
        kind, info = layouts[0]
        parts = [(dem, var, kind, info)] if kind != "struct" else [
            (f"{dem}.{m}", m, k, i) for m, (k, i) in info]
        for name, v, k, i in parts:
            if k == "array":
                bits, dims = i
                arrays.append(Array(name, v, _bytes((k, i)), bits, dims))
    return arrays, dropped


def _bytes(layout) -> int:
    kind, info = layout
    if kind == "array":
        return math.prod(info[1]) * max(1, info[0] // 8)
    if kind == "struct":
        return sum(_bytes(m) for _, m in info)
    return (info or 64) // 8


def measure(build: str | Path, workdir: str | Path | None = None) -> dict:
    """What the synthesis path of `build` declares, board-independent: arrays with their layouts and blocks, the
    kernels, and the build's plan figures (the expensive part: one g++ run and the object's DWARF)."""
    build = Path(build).resolve()
    manifest_path = build / "manifest.json"
    if not (build / "roma_model.h").is_file() or not manifest_path.is_file():
        raise RomaError(f"{build} is not a build folder (no roma_model.h or manifest.json)",
                        hint="make one with `roma compile --out DIR`")
    try:
        import elftools  # noqa: F401  (the DWARF reader)
    except ImportError:
        raise RomaError("the footprint check needs pyelftools", hint="pip install pyelftools (in the dev extra)") \
            from None
    manifest = json.loads(manifest_path.read_text())
    plan = manifest.get("plan") or {}
    consts = _model_consts(build)
    defines = dict(re.findall(r"#define\s+(ROMA_\w+)\s+(\w+)", (build / "roma_model.h").read_text()))
    lanes = ElementwiseLanes(**{u: int(defines[f"ROMA_{u.upper()}_LANES"]) for u in ELEMENTWISE_UNITS})
    defines = {**pragma_defines(int(defines["ROMA_GEMV_PE"]), int(defines["ROMA_WEIGHT_PORTS"]),
                                consts["WEIGHT_PORT_BITS"], lanes, consts["TOKEN_LANES"],
                                act_lanes=consts["ROMA_ACT_LANES"]), **defines}

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        obj = compile_synthesis(build, Path(tmp))
        arrays, dropped = _arrays(obj, consts.get("KV_ONCHIP_CTX", 0) > 0)
        pragmas = read_pragmas(hls_sources(), defines)
        kernels, per_function = kernel_instances(obj, pragmas)
        engines = gemv_engines(obj, (build / "roma_model.h").read_text())
        obj_bytes = sum(s for _, _, s, _ in _nm_data(obj))
        local = _local_arrays(obj, per_function, pragmas)

    groups: dict[str, dict] = {}
    for a in arrays:
        groups.setdefault(a.name.rsplit("::", 1)[0], {})[a.var] = a
    uram = uram_banks((build / "roma_model.h").read_text())
    for a in arrays:
        apply_layout(a, static_pragmas(a, pragmas, groups[a.name.rsplit("::", 1)[0]], consts, bank_tier(a, uram)))
    local.sort(key=lambda a: (-(a.bram36 + a.uram * 8), -a.bytes))
    arrays.sort(key=lambda a: (-(a.bram36 + a.uram * 8), -a.bytes))
    res = plan.get("resources", {})
    per_array = compare_arrays([asdict(a) for a in arrays + local], (plan.get("memory") or {}).get("arrays"))
    return {
        "build": str(build),
        "build_board": (plan.get("board") or {}).get("name"),
        "std": CXX_STD,
        "object_static_bytes": obj_bytes,
        "array_bytes": sum(a.bytes for a in arrays),
        "bram36": sum(a.bram36 for a in arrays),
        "uram": sum(a.uram for a in arrays),
        "plan": {"bram36": res.get("bram36", {}).get("used"), "uram": res.get("uram", {}).get("used"),
                 "summary": plan.get("summary")},
        "kernels": kernels,
        "token_lanes": consts["TOKEN_LANES"],
        "engines": engines,
        "arrays": [asdict(a) for a in arrays],
        "local_bram36": sum(a.bram36 for a in local),
        "local_uram": sum(a.uram for a in local),
        "local_bytes": sum(a.bytes for a in local),
        "local_arrays": [asdict(a) for a in local],
        "dropped": dropped,
        "per_array": per_array,
        # pragmas whose factor names a constant the object does not keep: not applied, so their arrays' figures
        # would be those of fewer, deeper banks (none on the builds of benchmarks/footprint.md)
        "unresolved": [f"{a.name}: {p}" for a in arrays + local for p in a.pragmas if "factor not resolved" in p],
    }


def compare_arrays(measured: list[dict], planned: list[dict] | None) -> list[dict] | None:
    """The object's arrays against the plan's (memory.py's list), by memory.array_key (a function's local arrays
    summed over its instantiations): one row per name with blocks on either side, `agrees` within
    PLAN_TOLERANCE. None for a build whose plan lists no arrays."""
    if planned is None:
        return None
    sides: dict[str, dict] = {}
    for side, arrays in (("object", measured), ("plan", planned)):
        for a in arrays:
            row = sides.setdefault(array_key(a["name"]), {"object": [0.0, 0.0], "plan": [0.0, 0.0]})
            row[side][0] += a["bram36"]
            row[side][1] += a["uram"]
    out = []
    for key, row in sides.items():
        got, want = row["object"], row["plan"]
        if not any(got + want):
            continue
        agrees = all(abs(g - w) <= PLAN_TOLERANCE * max(w, 1.0) for g, w in zip(got, want))
        out.append({"array": key, "object_bram36": got[0], "object_uram": got[1], "plan_bram36": want[0],
                    "plan_uram": want[1], "agrees": agrees})
    return sorted(out, key=lambda r: (r["agrees"], -(r["object_bram36"] + r["plan_bram36"]
                                                     + 8 * (r["object_uram"] + r["plan_uram"]))))


def verdict(measured: dict, board: str | None = None, *, bram36_budget: float | None = None,
            uram_budget: float | None = None) -> dict:
    """The measurement against `board` (default: the build's) and the build's plan -> the report (render()).
    Budgets default to 80% of the board's BRAM36/URAM (as the planner's); passing them overrides."""
    b = get_board(board or measured["build_board"] or "u250")
    bram_budget = math.floor(b.bram36 * BUDGET * 2) / 2 if bram36_budget is None else bram36_budget
    uram_cap = float(math.floor(b.uram * BUDGET)) if uram_budget is None else uram_budget
    bram = measured["bram36"] + measured["local_bram36"]
    uram = measured["uram"] + measured["local_uram"]
    plan = measured["plan"]
    failures = []
    if bram > bram_budget:
        share = f"{BUDGET:.0%} of {b.bram36:,}" if bram36_budget is None else "given"
        failures.append(f"BRAM36 {bram:,.1f} exceeds the {b.name} budget of {bram_budget:,.1f} ({share})")
    if uram > uram_cap:
        share = f"{BUDGET:.0%} of {b.uram:,}" if uram_budget is None else "given"
        failures.append(f"URAM {uram:,.0f} exceeds the {b.name} budget of {uram_cap:,.0f} ({share})")
    for what, got, want in (("BRAM36", bram, plan["bram36"]), ("URAM", uram, plan["uram"])):
        if want is not None and abs(got - want) > PLAN_TOLERANCE * max(want, 1.0):
            failures.append(f"{what} {got:,.1f} differs from the plan's {want:,.1f} by more than "
                            f"{PLAN_TOLERANCE:.0%} ({got - want:+,.1f})")
    if measured.get("unresolved"):
        failures.append(f"{len(measured['unresolved'])} pragma(s) not applied, their factor unknown to the check: "
                        + "; ".join(measured["unresolved"][:3]))
    e = measured["engines"]
    if e["engines"] > e["configurations"]:
        failures.append(f"{e['engines']} GEMV engines for {e['configurations']} configurations (one engine per "
                        f"configuration, shared by every layer and linear of that configuration)")
    # the elementwise units have an instance per token lane (a block's tokens side by side), the rest one
    tt = measured["token_lanes"]
    for label, most in (("linear (engine dispatch + LoRA)", 1), ("linear pair (two-bank engine + LoRA)", 1),
                        ("GEMV engine (tiles)", 1),
                        ("LoRA apply", 1), ("layer", 1), ("attention", 1), ("sampler", 1), ("RMSNorm", tt),
                        ("RoPE", tt), ("SwiGLU", tt), ("residual add", 2 * tt)):
        k = measured["kernels"].get(label, {})
        if k.get("max_rtl_instances", 0) > most:
            failures.append(f"a {label} function has {k['max_rtl_instances']} RTL instances ({most} expected: "
                            f"an ALLOCATION limit or one call site for each)")
    return {**measured, "board": b.name, "total_bram36": bram, "total_uram": uram, "bram36_budget": bram_budget, "uram_budget": uram_cap,
            "bram36_available": b.bram36, "uram_available": b.uram, "failures": failures, "ok": not failures}


def check(build: str | Path, board: str | None = None, **budgets) -> dict:
    """measure() then verdict(): the footprint report of `build` on `board`."""
    return verdict(measure(build), board, **budgets)


def available() -> str | None:
    """None when the check can run here, else why not (what `roma compile` says when it skips it)."""
    if shutil.which("g++") is None or shutil.which("nm") is None:
        return "no g++/nm"
    try:
        import elftools  # noqa: F401  (the DWARF reader)
    except ImportError:
        return "no pyelftools (pip install pyelftools)"
    return None


def check_build(build: str | Path, progress: bool = True) -> dict:
    """The check `roma compile` runs on the build it wrote: the report, also written to the build's
    FOOTPRINT_FILE (beside the sealed manifest; a later compile into the folder replaces it)."""
    t0 = time.time()
    if progress:
        print(f"footprint: compiling the synthesis path of {build} (g++ -std={CXX_STD} -D__SYNTHESIS__) ...",
              file=sys.stderr, flush=True)
    rep = check(build)
    rep["seconds"] = round(time.time() - t0, 1)
    keep = ("board", "ok", "failures", "total_bram36", "total_uram", "bram36_budget", "uram_budget", "plan",
            "kernels", "engines", "per_array", "std", "seconds")
    (Path(build) / FOOTPRINT_FILE).write_text(json.dumps({k: rep[k] for k in keep}, indent=1) + "\n")
    return rep


def summary_line(rep: dict) -> str:
    """One line: the totals against the budget and the plan, and the verdict."""
    p = rep["plan"]
    plan = f" (plan {p['bram36']:,.1f} / {p['uram']:,.0f})" if p["bram36"] is not None else ""
    return (f"footprint: BRAM36 {rep['total_bram36']:,.1f} of {rep['bram36_budget']:,.1f}, URAM "
            f"{rep['total_uram']:,.0f} of {rep['uram_budget']:,.0f} on {rep['board']}{plan}: "
            + ("fits" if rep["ok"] else "DOES NOT FIT") + f" ({rep['seconds']:.1f} s)")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def _table(title: str, arrays: list, top: int) -> list[str]:
    lines = [f"{title:<58} {'bytes':>12} {'width x depth':>16} {'banks':>6} {'inst':>5} {'impl':>6} {'BRAM36':>9} "
             f"{'URAM':>6}"]
    for a in arrays[:top]:
        name = a["name"] if len(a["name"]) <= 58 else a["name"][:55] + "..."
        lines.append(f"{name:<58} {a['bytes']:>12,} {a['width']:>6} x {a['depth']:<8,} {a['banks']:>6,} "
                     f"{a['instances']:>5,} {a['impl']:>6} {a['bram36']:>9,.1f} {a['uram']:>6,.0f}")
    if len(arrays) > top:
        rest = arrays[top:]
        lines.append(f"{f'... {len(rest)} more':<58} {sum(a['bytes'] for a in rest):>12,} {'':>16} {'':>6} {'':>5} "
                     f"{'':>6} {sum(a['bram36'] for a in rest):>9,.1f} {sum(a['uram'] for a in rest):>6,.0f}")
    return lines


def _by_kernel(arrays: list) -> list:
    """Local arrays summed over the instantiations of each template ('layer<...>::gate'); width x depth and banks
    are those of the largest."""
    groups: dict[str, dict] = {}
    for a in arrays:
        func, var = a["name"].rsplit("::", 1)
        key = re.sub(r"<.*>", "<...>", func) + "::" + var
        g = groups.get(key)
        if g is None:
            groups[key] = {**a, "name": key}
            continue
        for k in ("bytes", "instances", "bram36", "uram"):
            g[k] += a[k]
    return sorted(groups.values(), key=lambda a: (-(a["bram36"] + a["uram"] * 8), -a["bytes"]))


def render(rep: dict, top: int = 30) -> str:
    """The report as text: the largest arrays, the totals against budget and plan, the kernels, the verdict."""
    lines = [f"footprint of {rep['build']} on {rep['board']} (g++ -std={rep['std']} -D__SYNTHESIS__)"]
    lines.append("")
    lines += _table("static array", rep["arrays"], top)
    reasons: dict[str, list] = {}
    for d in rep["dropped"]:
        reasons.setdefault(d["why"], []).append(d)
    for why, ds in reasons.items():
        lines.append(f"  not hardware: {len(ds)} array{'s' if len(ds) > 1 else ''} ({sum(d['bytes'] for d in ds):,} "
                     f"bytes), {why}")
    lines += [""] + _table("local arrays by kernel (x RTL instances)", _by_kernel(rep["local_arrays"]), max(top // 2, 5))
    p = rep["plan"]
    lines += ["",
              f"static storage in the object: {_mib(rep['object_static_bytes'])}; static arrays counted: "
              f"{_mib(rep['array_bytes'])}; local arrays x instances: {_mib(rep['local_bytes'])}",
              f"{'':<7}{'static':>10} {'+ local':>9} {'= total':>10} {'budget':>9} {'of':>7} {'plan':>9}"]
    for what, unit in (("BRAM36", "bram36"), ("URAM", "uram")):
        plan = f"{p[unit]:>9,.1f}" if p[unit] is not None else f"{'-':>9}"
        lines.append(f"{what:<7}{rep[unit]:>10,.1f} {rep['local_' + unit]:>9,.1f} {rep['total_' + unit]:>10,.1f} "
                     f"{rep[unit + '_budget']:>9,.1f} {rep[unit + '_available']:>7,} {plan}")
    if p["summary"]:
        lines.append(f"plan: {p['summary']}")
    if rep.get("per_array") is not None:
        rows = rep["per_array"]
        off = [r for r in rows if not r["agrees"]]
        lines += ["", f"per array against the plan's model (placement/memory.py): {len(rows) - len(off)} of "
                      f"{len(rows)} agree within {PLAN_TOLERANCE:.0%}" + (", these differ:" if off else "")]
        for r in off:
            lines.append(f"  {r['array'][:60]:<60} object {r['object_bram36']:>9,.1f} BRAM36 {r['object_uram']:>5,.0f} "
                         f"URAM   plan {r['plan_bram36']:>9,.1f} BRAM36 {r['plan_uram']:>5,.0f} URAM")
    lines += ["", f"{'kernel':<36} {'templates':>9} {'RTL instances':>14}"]
    for k, v in rep["kernels"].items():
        lines.append(f"{k:<36} {v['templates']:>9,} {v['rtl_instances']:>14,}")
    e = rep["engines"]
    lines.append(f"GEMV engines: {e['engines']} for {e['configurations']} configurations (each shared by every layer "
                 f"and linear of its configuration)")
    lines.append("")
    if rep["ok"]:
        lines.append(f"FITS: within the {rep['board']} budget and within {PLAN_TOLERANCE:.0%} of the plan")
    else:
        lines += ["DOES NOT FIT:"] + [f"  - {f}" for f in rep["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m roma_runtime.compiler.placement.footprint",
                                 description="what roma_core declares for a build, read from its compiled "
                                             "synthesis path, against the board's budget and the build's plan")
    ap.add_argument("build", help="a build folder (roma compile --out)")
    ap.add_argument("--board", help="board to check against (default: the build's)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--top", type=int, default=30, help="static arrays listed in the table (default 30)")
    args = ap.parse_args(argv)
    try:
        rep = check(args.build, args.board)
    except RomaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=1) if args.json else render(rep, args.top))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

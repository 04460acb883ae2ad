"""Compile seconds of SmolLM2-135M: pass-through, RTN and GPTQ (calibration included), printed as a table.

    PYTHONPATH=host python benchmarks/compile_time.py [--calib-tokens 2048] [--methods passthrough,rtn,gptq]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from roma_runtime.compiler.build import compile_model
from roma_runtime.model.loader import load_model

SETTINGS = {
    "passthrough": dict(bits=4, group=32),
    "rtn": dict(bits=4, group=64),
    "gptq": dict(bits=4, group=64, method="gptq"),
    "rtn-2bit": dict(bits=2, group=64),
    "gptq-2bit": dict(bits=2, group=64, method="gptq"),
    "gptq-g128-r64": dict(bits=4, group=128, method="gptq", lora_rank=64),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--methods", default="passthrough,rtn,gptq")
    args = ap.parse_args()
    t = time.time()
    model = load_model(args.model)
    load_s = time.time() - t
    print(f"model {model.config.name}: load {load_s:.1f} s; {os.cpu_count()} CPUs; "
          f"calibration {args.calib_tokens} tokens for GPTQ")
    print("| setting | compile s | files MB |")
    print("|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="roma-compile-time-") as root:
        for key in [m.strip() for m in args.methods.split(",") if m.strip()]:
            kw = SETTINGS[key]
            t = time.time()
            man = compile_model(model, Path(root) / key, board="u250", calib_tokens=args.calib_tokens,
                                progress=sys.stderr.isatty(), lora_slot_rank=kw.get("lora_rank") or None, **kw)
            secs = time.time() - t
            print(f"| {key} ({kw}) | {secs:.1f} | {man['sizes']['files_bytes'] / 1e6:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

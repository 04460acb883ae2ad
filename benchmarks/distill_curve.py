"""Learning curve of `roma finetune --distill`: agreement with the float model against training minutes.

Each run is an adapter folder trained with --keep-snapshots. Every point is `roma eval --lora SNAPSHOT` on the
run's build (the same held-out text and chat prompts for every point; the reference's logits are computed
once). Minute 0 is the build with its compensating LoRA (where distillation starts); the build without any
LoRA is listed as "before". Runs on the same build share these two points (measured once).

  PYTHONPATH=host python benchmarks/distill_curve.py --run 2-bit=/tmp/d7/a2 --run 3-bit=/tmp/d7/a3 \
      --tokens 1024 --points 6 --goal 2-bit=50 --goal 3-bit=85 --json benchmarks/distill_curve.json \
      --plot benchmarks/distill_curve.png --markdown benchmarks/distill_curve.md

Prints a table as it goes. The figures are measured on this machine, not estimated.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))

from roma_runtime import finetune as F  # noqa: E402
from roma_runtime.model.loader import load_build  # noqa: E402
from roma_runtime.evaluation import evaluate_build  # noqa: E402
from roma_runtime.golden import GoldenModel  # noqa: E402
from roma_runtime.model.loader import build_source, load_model  # noqa: E402


def pick(snapshots: list[Path], points: int) -> list[Path]:
    """About `points` snapshots spread evenly over training time, the last one always included."""
    if len(snapshots) <= points:
        return snapshots
    seconds = [F.read_record(p)["training"]["seconds"] for p in snapshots]
    chosen = {len(snapshots) - 1}
    for k in range(1, points):
        t = seconds[-1] * k / points
        chosen.add(min(range(len(seconds)), key=lambda i: abs(seconds[i] - t)))
    return [snapshots[i] for i in sorted(chosen)]


def row(label: str, point: str, minutes: float | None, steps: int | None, result: dict) -> dict:
    t, c = result["text"], result.get("chat", {})
    return {"run": label, "point": point, "minutes": minutes, "steps": steps, "top1": t["top1"], "kl": t["kl"],
            "ppl": t["ppl_candidate"], "ppl_reference": t["ppl_reference"], "chat_top1": c.get("top1"),
            "chat_kl": c.get("kl")}


def show(r: dict) -> None:
    m = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
    chat = "-" if r["chat_top1"] is None else f"{r['chat_top1'] * 100:.1f}%"
    print(f"{r['run']:8} {r['point']:22} {m:>6} {r['top1'] * 100:6.1f}% {r['kl']:7.4f} {r['ppl']:9.2f} {chat:>7}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                    help="an adapter folder trained with --keep-snapshots (repeatable)")
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens per point (default 1024)")
    ap.add_argument("--chat-tokens", type=int, default=32, help="reference answer tokens per chat prompt")
    ap.add_argument("--points", type=int, default=6, help="snapshots per run (spread over time)")
    ap.add_argument("--goal", action="append", default=[], metavar="LABEL=PERCENT",
                    help="draw a run's target top-1 agreement on the plot (repeatable)")
    ap.add_argument("--previous", action="append", default=[], type=Path, metavar="JSON",
                    help="rows of an earlier --json output, shown beside the new ones, not measured again "
                         "(repeatable)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--plot", type=Path, help="write the curve here (PNG, needs matplotlib)")
    ap.add_argument("--markdown", type=Path, help="write the table here")
    args = ap.parse_args()

    runs = []
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep or not F.snapshots(folder):
            ap.error(f"--run {spec}: expected LABEL=DIR with DIR an adapter folder trained with --keep-snapshots")
        runs.append((label, Path(folder)))

    previous = [json.loads(p.read_text()) for p in args.previous]
    rows, memo, reference, source = [r for p in previous for r in p["rows"]], {}, None, None
    starts: dict[Path, tuple[dict, dict]] = {}  # build -> its "before" and "start" results, shared by its runs
    print(f"{'run':8} {'point':22} {'min':>6} {'top-1':>7} {'KL':>7} {'ppl':>9} {'chat':>7}")
    for label, folder in runs:
        record = F.read_record(folder)
        build = Path(record["base"]["path"])
        loaded = load_build(build)
        kind, path = build_source(loaded)
        if source != path:  # one reference (and one memo of its logits) per source model
            source, memo = path, {}
            model = load_model(path)
            reference = GoldenModel(model, "float")

        def measure(lora, *, no_lora=False):
            return evaluate_build(model, build, tokens=args.tokens, chat=args.chat_tokens > 0,
                                  chat_tokens=max(args.chat_tokens, 1), lora=lora,
                                  reference=reference, memo=memo, without_lora=no_lora)

        if build not in starts:
            starts[build] = measure(None, no_lora=True), measure(None)
        before, start = starts[build]
        rows.append(row(label, "before (no LoRA)", None, None, before))
        show(rows[-1])
        rows.append(row(label, "start (compensating LoRA)", 0.0, 0, start))
        show(rows[-1])
        for snap in pick(F.snapshots(folder), args.points):
            tr = F.read_record(snap)["training"]
            rows.append(row(label, f"distilled {tr['steps_done']} steps", tr["seconds"] / 60, tr["steps_done"],
                            measure(snap)))
            show(rows[-1])
        rows[-1]["run_record"] = record["training"]

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} ({__import__('os').cpu_count()} CPUs)",
            "python": platform.python_version(), "tokens": args.tokens, "chat_tokens": args.chat_tokens,
            "command": "PYTHONPATH=host python benchmarks/distill_curve.py " + shlex.join(sys.argv[1:]),
            "previous": [dict(p["meta"], runs=list(dict.fromkeys(r["run"] for r in p["rows"])))
                         for p in previous]}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(meta, rows))
    if args.plot:
        goals = {label: float(pct) for label, _, pct in (g.partition("=") for g in args.goal)}
        plot(rows, args.plot, goals)
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"Measured by `{meta['command']}` on {meta['date']}, {meta['machine']}, Python {meta['python']}."]
    lines += [f"The rows of {', '.join(p['runs'])} were measured earlier, by `{p['command']}` on {p['date']}."
              for p in meta.get("previous", [])]
    lines += [f"Held-out text: {meta['tokens']} tokens of stdlib docstrings (evaluation split); chat: the fixed "
              f"prompts, {meta['chat_tokens']} reference answer tokens each.", "",
              "| build | point | training min | top-1 (text) | KL | ppl (ref) | top-1 (chat) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        chat = "-" if r["chat_top1"] is None else f"{r['chat_top1'] * 100:.1f}%"
        lines.append(f"| {r['run']} | {r['point']} | {m} | {r['top1'] * 100:.1f}% | {r['kl']:.4f} | "
                     f"{r['ppl']:.2f} ({r['ppl_reference']:.2f}) | {chat} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, goals: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, label in enumerate(dict.fromkeys(r["run"] for r in rows)):
        pts = [r for r in rows if r["run"] == label and r["minutes"] is not None]
        color = f"C{i}"
        ax.plot([r["minutes"] for r in pts], [100 * r["top1"] for r in pts], "o-", color=color,
                label=f"{label}: held-out text")
        if all(r["chat_top1"] is not None for r in pts):
            ax.plot([r["minutes"] for r in pts], [100 * r["chat_top1"] for r in pts], "s--", color=color,
                    alpha=0.6, label=f"{label}: chat answers")
        before = next(r for r in rows if r["run"] == label and r["minutes"] is None)
        ax.axhline(100 * before["top1"], color=color, lw=0.8, ls=":", label=f"{label}: no LoRA")
        if label in goals:
            ax.axhline(goals[label], color=color, lw=1.2, ls="-.", label=f"{label}: goal")
    ax.set_xlabel("training minutes (roma finetune --distill)")
    ax.set_ylabel("top-1 agreement with the float model (%)")
    ax.set_title("SmolLM2-135M: distillation into the ROM base's LoRA")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

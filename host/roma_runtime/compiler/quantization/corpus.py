"""Calibration and evaluation text that every machine already has: the docstrings of Python's standard library.

The standard library's sources are parsed with `ast` (nothing is imported, so no module runs), in sorted
order, so the text is deterministic for a given Python version. Modules are split between the two sets by a
hash of their name, so calibration and evaluation never share a module (and so never share a docstring).
Only docstrings that read as English prose are kept: long enough, mostly letters, doctest lines removed.

Distillation (`roma finetune --distill`) reads the calibration split ("stdlib", ~190K tokens) or, so that long
runs repeat less, "stdlib+torch": the calibration split interleaved with the docstrings of the installed torch
package, which the `train` extra pins (torch==2.13.0), so every machine that can train has the same text. A
docstring that also appears in the evaluation split is dropped. (In a 60-minute 3-bit run it distilled no
better than the stdlib text repeated; see the README.)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import re
import sysconfig
from functools import lru_cache
from itertools import chain, zip_longest
from pathlib import Path
from typing import Iterator

from ...errors import RomaError
from ...tokenizer import Tokenizer

SPLITS = ("calibration", "evaluation")
DISTILL_TEXTS = ("stdlib", "stdlib+torch")  # roma finetune --distill-text
EVAL_SHARE = 4  # one module in EVAL_SHARE goes to evaluation
MIN_WORDS = 12

# Package folders of the standard library that hold tests, vendored code or non-English data.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "ensurepip",
              "turtledemo", "__pycache__", "pydoc_data", "encodings", "config-3", "tkinter", "idlelib"}
# ... and of an installed package's sources (distillation text).
_SKIP_PACKAGE_DIRS = {"test", "tests", "testing", "_vendor", "third_party", "__pycache__"}

# A fixed set of chat prompts for evaluating conversational quality (rendered with the model's chat template).
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences what a CPU cache is.",
    "Give me three tips for staying focused while studying.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Summarize the story of Romeo and Juliet in one paragraph.",
    "Why is the sky blue?",
)


def split_of(module: str) -> str:
    """The split a module belongs to: a stable hash of its dotted name."""
    h = int.from_bytes(hashlib.sha256(module.encode()).digest()[:4], "little")
    return "evaluation" if h % EVAL_SHARE == 0 else "calibration"


def _stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise RomaError(f"the Python standard library sources are not at {root}",
                        hint="calibration text comes from stdlib docstrings; install the full Python")
    return root


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)")


def clean_docstring(doc: str) -> str | None:
    """English prose from a docstring, or None when it is too short or not prose."""
    lines = [ln for ln in inspect.cleandoc(doc).splitlines() if not _DOCTEST.match(ln)]
    # Drop indented blocks (code examples, tables) but keep the paragraphs.
    lines = [ln for ln in lines if not ln.startswith("    ")]
    text = "\n".join(ln.rstrip() for ln in lines).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.8 * len(text) or not text.isascii():
        return None
    return text


def _docstrings_of(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
        return []
    out = []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            text = clean_docstring(doc)
            if text:
                out.append(text)
    return out


@lru_cache(maxsize=None)
def _all_docstrings() -> tuple[tuple[str, tuple[str, ...]], ...]:
    root = _stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in rel[:-1]):
            continue
        files.append(path)
    result = []
    seen: set[str] = set()
    for path in files:
        docs = []
        for d in _docstrings_of(path):
            if d not in seen:  # identical docstrings (overrides, copies) count once, in the first module
                seen.add(d)
                docs.append(d)
        if docs:
            result.append((_module_name(root, path), tuple(docs)))
    return tuple(result)


def modules(split: str) -> list[str]:
    _check(split)
    return [m for m, _ in _all_docstrings() if split_of(m) == split]


def docstrings(split: str) -> list[str]:
    """All kept docstrings of one split, in a deterministic order."""
    _check(split)
    return [d for m, docs in _all_docstrings() if split_of(m) == split for d in docs]


def corpus_text(split: str, max_chars: int | None = None) -> str:
    """The docstrings of one split joined by blank lines, optionally cut (at a docstring boundary)."""
    out, n = [], 0
    for d in docstrings(split):
        if max_chars is not None and n + len(d) > max_chars and out:
            break
        out.append(d)
        n += len(d) + 2
    return "\n\n".join(out)


def _package_docstrings(package: str) -> Iterator[str]:
    """The prose docstrings of an installed package's sources, file by file in sorted order, parsed lazily (a
    short distillation run reads only the first files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RomaError(f"the distillation text needs the installed {package} package, which is missing",
                        hint="pip install 'roma-runtime[train]'")
    root = Path(spec.origin).parent
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if any(p in _SKIP_PACKAGE_DIRS for p in path.relative_to(root).parts[:-1]):
            continue
        for d in _docstrings_of(path):
            if d not in seen:
                seen.add(d)
                yield d


def distillation_texts(name: str) -> Iterator[str]:
    """The text of `roma finetune --distill` (see the module doc), never a docstring of the evaluation split."""
    if name not in DISTILL_TEXTS:
        raise RomaError(f"unknown distillation text '{name}'", hint=f"choose one of {', '.join(DISTILL_TEXTS)}")
    if name == "stdlib":
        yield from docstrings("calibration")
        return
    held_out = set(docstrings("evaluation"))
    pairs = zip_longest(docstrings("calibration"), _package_docstrings("torch"))
    for d in chain.from_iterable(pairs):
        if d is not None and d not in held_out:
            yield d


def _check(split: str) -> None:
    if split not in SPLITS:
        raise RomaError(f"unknown corpus split '{split}'", hint=f"choose one of {', '.join(SPLITS)}")


# --- tokens ------------------------------------------------------------------------------------------------


def encoder_for(model):
    """A function text -> token ids for a loaded model.

    Models with a tokenizer (GGUF tokenizer.* metadata or a Hugging Face tokenizer) use it; models without
    one (tiny test models) fall back to bytes modulo the vocabulary, which is deterministic and good enough
    to exercise calibration and evaluation.
    """
    has_tokenizer = bool(model.metadata.get("tokenizer.ggml.tokens")) or (
        Path(model.source).is_dir() and (Path(model.source) / "tokenizer.json").is_file())
    if has_tokenizer:
        tok = Tokenizer.from_model(model)
        return lambda text: list(tok.encode(text, add_special=False))
    vocab = model.config.vocab_size
    return lambda text: [b % vocab for b in text.encode()]


def token_windows(model, split: str, n_tokens: int, window: int = 256) -> list[list[int]]:
    """About n_tokens tokens of one split (or of a distillation text, DISTILL_TEXTS) as windows of `window`
    tokens (the last one may be shorter)."""
    if n_tokens <= 0:
        raise RomaError(f"token count must be positive, not {n_tokens}")
    encode = encoder_for(model)
    ids: list[int] = []
    for d in (distillation_texts(split) if split in DISTILL_TEXTS else docstrings(split)):
        ids.extend(encode(d + "\n\n"))
        if len(ids) >= n_tokens:
            break
    ids = ids[:n_tokens]
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in windows if len(w) >= 2]

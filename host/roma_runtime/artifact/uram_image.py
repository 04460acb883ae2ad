"""The URAM load image: the tensors the placement plan puts in URAM ("URAM-load-once"), as their bank words.

UltraScale+ URAM has no initial contents, so these tensors get no ROM initialiser: after the overlay loads, the
driver copies this image into a DDR buffer and issues CMD_LOAD_WEIGHTS, which writes it into the core's URAM
banks and reads the banks back into a checksum (hw/hls/roma_core.h; the core's reader and the constants:
hw/hls/include/roma/weight_load.h).

Image uram_weights.bin, little-endian uint32 words:
    word 0 magic 0x4d415255 ("URAM"), 1 version (1), 2 words in the image (header included),
    3 the checksum of the tensors (below)
    then the URAM tensors, one after another at the word offsets the manifest and roma_model.h (URAM_*) give. A
    tensor is its tiles one after another; a tile is the words of its B-ROM tile (brom_image.py) as its engine's bank
    holds them: the plane words, then the tile's two scale arrays of its format (fp16: scales, minimums; q8:
    params, exponents), each as uint16 entries two per word (entry 2i in the low half, 2i+1 in the high half; an
    odd count's last word has 0 in its high half).
Checksum: per tensor over its words w_0..w_{n-1}, a = sum w_j and b = sum w_j * (n-1-j) (mod 2^32), the
tensor's checksum a ^ b; the image's is the sum of its tensors' (mod 2^32). The core accumulates it in one pass at
one word per cycle, over the image before it writes anything and over the banks when it reads them back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RomaError
from .brom_image import REBUILD_HINT, WORD_BITS, BromImage, check_params, check_q8_exponents, read_word_image
from .interface import kernel_constants

_LOAD = kernel_constants("weight_load.h")  # the core's reader of this image
URAM_MAGIC = _LOAD["URAM_MAGIC"]  # b"URAM" little-endian
URAM_VERSION = _LOAD["URAM_VERSION"]
URAM_HEADER_WORDS = _LOAD["URAM_HEADER_WORDS"]


def _halves(a: np.ndarray) -> np.ndarray:
    """uint16 [tiles, k] -> uint32 [tiles, ceil(k/2)]: entry 2i in the low half, 2i+1 in the high."""
    a = a.astype(np.uint32)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    return a[:, 0::2] | (a[:, 1::2] << 16)


def tile_sizes(bits: int, group: int, rows_per_tile: int, cols: int, scales: str) -> tuple[int, int, int]:
    """(plane words, prm entries, aux entries) of one tile, as a bank holds it (roma_core.cpp tile_words)."""
    steps = (cols // group) * rows_per_tile
    return steps * bits * (group // WORD_BITS), steps, rows_per_tile if scales == "q8" else steps


def uram_words(img: BromImage) -> np.ndarray:
    """The image's tiles as their bank words: uint32 [tiles * words per tile]."""
    prm, aux = img.scale_arrays
    return np.concatenate([img.planes.astype(np.uint32), _halves(prm), _halves(aux)], axis=1).reshape(-1)


def uram_unpack(words: np.ndarray, bits: int, group: int, rows: int, cols: int, tiles: int,
                scales: str = "fp16") -> BromImage:
    """The BromImage of one tensor's bank words (the exact inverse of uram_words)."""
    check_params(bits, group, rows, cols, tiles)
    r = rows // tiles
    pw, np_, na = tile_sizes(bits, group, r, cols, scales)
    n = pw + -(-np_ // 2) + -(-na // 2)
    words = np.asarray(words, dtype=np.uint32)
    if words.size != tiles * n:
        raise RomaError(f"a URAM tensor of {rows}x{cols} at {bits} bits, group {group}, {scales} scales, {tiles} "
                        f"tiles has {tiles * n} words, not {words.size}", REBUILD_HINT)
    t = words.reshape(tiles, n)

    def entries(w: np.ndarray, k: int) -> np.ndarray:
        return np.stack([w & 0xFFFF, w >> 16], axis=-1).reshape(tiles, -1)[:, :k].astype(np.uint16)

    planes = np.ascontiguousarray(t[:, :pw])
    prm = entries(t[:, pw: pw + -(-np_ // 2)], np_)
    aux = entries(t[:, pw + -(-np_ // 2):], na)
    if scales == "q8":
        check_q8_exponents(aux, f"a URAM tensor of {rows}x{cols}: ")
        return BromImage(bits, group, rows, cols, tiles, planes, None, None, "q8", prm, aux)
    return BromImage(bits, group, rows, cols, tiles, planes, prm, aux)


def tensor_checksum(words: np.ndarray) -> int:
    """weight_load.h's checksum of one tensor's words."""
    w = np.asarray(words, dtype=np.uint64)
    weights = np.arange(w.size - 1, -1, -1, dtype=np.uint64)
    a = int(w.sum(dtype=np.uint64)) & 0xFFFFFFFF
    b = int((w * weights).sum(dtype=np.uint64)) & 0xFFFFFFFF  # mod 2^64, then 2^32: the same as mod 2^32 all along
    return a ^ b


def uram_image(images: dict[str, BromImage]) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """(the whole load image, header included, as uint32 words; {name: (word offset, words)}) of `images` in
    their order."""
    chunks, layout, offset, checksum = [], {}, URAM_HEADER_WORDS, 0
    for name, img in images.items():
        w = uram_words(img)
        layout[name] = (offset, int(w.size))
        chunks.append(w)
        checksum = (checksum + tensor_checksum(w)) & 0xFFFFFFFF
        offset += w.size
    payload = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    header = np.array([URAM_MAGIC, URAM_VERSION, URAM_HEADER_WORDS + payload.size, checksum], np.uint32)
    return np.concatenate([header, payload]), layout


def image_checksum(words: np.ndarray, layout) -> int:
    """The checksum of the tensors at `layout` ((offset, words) each) inside an image's words."""
    total = 0
    for offset, n in layout:
        total = (total + tensor_checksum(words[offset: offset + n])) & 0xFFFFFFFF
    return total


def read_uram_image(path: Path, layout=None) -> np.ndarray:
    """Read and verify a URAM load image (header, size; with `layout`, the manifest's (offset, words) of its
    tensors, also the checksum); RomaError naming the file on any inconsistency."""
    words, checksum = read_word_image(path, "URAM load image", URAM_MAGIC, URAM_VERSION, URAM_HEADER_WORDS)
    if layout is not None and image_checksum(words, layout) != checksum:
        raise RomaError(f"the URAM load image {path} is corrupt (its tensors' checksum does not match its header)",
                        REBUILD_HINT)
    return words

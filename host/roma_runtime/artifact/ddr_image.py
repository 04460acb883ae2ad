"""The DDR weight image: the tensors the placement plan streams from DDR, in the B-ROM tiles' words.

DDR image ddr_weights.bin (the tensors the placement plan streams from DDR; roma_core reads it through its
`ddr_weights` m_axi port, hw/hls/include/roma/brom_ddr.h). Little-endian uint32 words:
    word 0 magic 0x52444452 ("RDDR"), 1 version (1), 2 words in the image (header included),
    3 CRC-32 (zlib) of the words after the header
    then the DDR tensors, one after another at the word offsets the manifest and roma_model.h give. A tensor
    is its tiles one after another; a tile is the words of its B-ROM tile in the ROM's step order (step
    s = g * R + r), cut into blocks:
    fp16 (blocks of DDR_BLOCK_STEPS = 4 steps):
        block b: the plane words of steps 4b..4b+3 (b * L each, in the ROM's (p, l) order),
                 then one word per step: scale | minimum << 16
    q8: first the tile's R row exponents, two per word (row 2i in the low half, 2i+1 in the high half),
        padded with zero words to a multiple of 4 words; then blocks of DDR_Q8_BLOCK_STEPS = 8 steps:
        block b: the plane words of steps 8b..8b+7, then 4 words, word k: params of step 8b+2k
                 | params of step 8b+2k+1 << 16
    The last block's missing steps are zero words. The GEMV reads a tile in one sequential pass (q8: the
    exponents into a local array of R entries first), and each block's 4 scale words are one 128-bit beat
    after their steps' planes, so the stream needs no buffer for them. Every tile is a multiple of 4 words
    and the header is 4, so tensors and tiles start on 16-byte (128-bit beat) boundaries.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..errors import RomaError
from .brom_image import (REBUILD_HINT, SCALE_FORMATS, WORD_BITS, BromImage, check_params, check_q8_exponents,
                          read_word_image)
from .interface import kernel_constants

_DDR = kernel_constants("brom_ddr.h")  # the streaming kernel's definitions of the image it reads
DDR_MAGIC = _DDR["DDR_MAGIC"]  # b"RDDR" little-endian
DDR_VERSION = _DDR["DDR_VERSION"]
DDR_HEADER_WORDS = _DDR["DDR_HEADER_WORDS"]
DDR_BLOCK_STEPS = _DDR["DDR_BLOCK_STEPS"]  # fp16: (group, row) steps per block, 4 scale|minimum words = one beat
DDR_Q8_BLOCK_STEPS = _DDR["DDR_Q8_BLOCK_STEPS"]  # q8: steps per block, their 16-bit params fill one beat


def _ddr_geometry(bits: int, group: int, rows_per_tile: int, cols: int, scales: str) -> tuple[int, int, int, int]:
    """(prefix words, block steps, blocks, words per block) of one tile in the DDR layout."""
    if scales not in SCALE_FORMATS:
        raise RomaError(f"unknown scale format '{scales}' (supported: {', '.join(SCALE_FORMATS)})", REBUILD_HINT)
    wps, steps = bits * (group // WORD_BITS), (cols // group) * rows_per_tile
    q8 = scales == "q8"
    block_steps = DDR_Q8_BLOCK_STEPS if q8 else DDR_BLOCK_STEPS
    prefix = -(-rows_per_tile // 8) * 4 if q8 else 0  # R exponents, 2 per word, whole 4-word beats
    return prefix, block_steps, -(-steps // block_steps), block_steps * wps + 4


def ddr_tile_words(bits: int, group: int, rows_per_tile: int, cols: int, scales: str = "fp16") -> int:
    """Words of one tile in the DDR layout (see the module docstring)."""
    prefix, _, blocks, block_words = _ddr_geometry(bits, group, rows_per_tile, cols, scales)
    return prefix + blocks * block_words


def _halves(a: np.ndarray, n: int) -> np.ndarray:
    """uint16 [tiles, k] -> uint32 [tiles, n] words: entry 2i in the low half, 2i+1 in the high, zeros after."""
    a = np.pad(a.astype(np.uint32), ((0, 0), (0, 2 * n - a.shape[1])))
    return a[:, 0::2] | (a[:, 1::2] << 16)


def ddr_words(img: BromImage) -> np.ndarray:
    """The image's tiles in the DDR layout: uint32 [tiles * ddr_tile_words]."""
    wps, steps = img.bits * img.lanes, img.params_per_tile
    prefix, block_steps, blocks, _ = _ddr_geometry(img.bits, img.group, img.rows_per_tile, img.cols,
                                                   img.scale_format)
    pad = blocks * block_steps - steps
    planes = np.pad(img.planes.reshape(img.tiles, steps, wps), ((0, 0), (0, pad), (0, 0)))
    planes = planes.reshape(img.tiles, blocks, block_steps * wps)
    if img.scale_format == "q8":
        params = _halves(img.params, blocks * 4)
        head = _halves(img.exponents, prefix)
    else:
        params = np.pad(img.scales.astype(np.uint32) | (img.minimums.astype(np.uint32) << 16), ((0, 0), (0, pad)))
        head = np.zeros((img.tiles, 0), np.uint32)
    body = np.concatenate([planes, params.reshape(img.tiles, blocks, 4)], axis=2).reshape(img.tiles, -1)
    return np.concatenate([head, body], axis=1).reshape(-1).astype(np.uint32)


def ddr_unpack(words: np.ndarray, bits: int, group: int, rows: int, cols: int, tiles: int,
               scales: str = "fp16") -> BromImage:
    """The BromImage of one tensor's words in the DDR layout (the exact inverse of ddr_words)."""
    check_params(bits, group, rows, cols, tiles)
    r = rows // tiles
    wps, steps = bits * (group // WORD_BITS), (cols // group) * r
    prefix, block_steps, blocks, block_words = _ddr_geometry(bits, group, r, cols, scales)
    n = prefix + blocks * block_words
    words = np.asarray(words, dtype=np.uint32)
    if words.size != tiles * n:
        raise RomaError(f"a DDR tensor of {rows}x{cols} at {bits} bits, group {group}, {scales} scales, {tiles} "
                        f"tiles has {tiles * n} words, not {words.size}", REBUILD_HINT)
    t = words.reshape(tiles, n)
    body = t[:, prefix:].reshape(tiles, blocks, block_words)
    planes = body[:, :, : block_steps * wps].reshape(tiles, blocks * block_steps, wps)[:, :steps]
    planes = np.ascontiguousarray(planes.reshape(tiles, -1))
    params = body[:, :, block_steps * wps:].reshape(tiles, blocks * 4)

    def unhalves(w: np.ndarray, k: int) -> np.ndarray:  # inverse of _halves
        return np.stack([w & 0xFFFF, w >> 16], axis=-1).reshape(tiles, -1)[:, :k].astype(np.uint16)

    if scales == "q8":
        exps = unhalves(t[:, :prefix], r)
        check_q8_exponents(exps, f"a DDR tensor of {rows}x{cols}: ")
        return BromImage(bits, group, rows, cols, tiles, planes, None, None, "q8", unhalves(params, steps), exps)
    params = params[:, :steps]
    return BromImage(bits, group, rows, cols, tiles, planes, (params & 0xFFFF).astype(np.uint16),
                     (params >> 16).astype(np.uint16))


def ddr_image(images: dict[str, BromImage]) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """(the whole DDR image, header included, as uint32 words; {name: (word offset, words)}) of `images` in
    their order."""
    chunks, layout, offset = [], {}, DDR_HEADER_WORDS
    for name, img in images.items():
        w = ddr_words(img)
        layout[name] = (offset, int(w.size))
        chunks.append(w)
        offset += w.size
    payload = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    crc = zlib.crc32(payload.astype("<u4").tobytes())
    header = np.array([DDR_MAGIC, DDR_VERSION, DDR_HEADER_WORDS + payload.size, crc], np.uint32)
    return np.concatenate([header, payload]), layout


def read_ddr_image(path: Path) -> np.ndarray:
    """Read and verify a DDR image (header, size, checksum); RomaError naming the file on any inconsistency."""
    words, crc = read_word_image(path, "DDR weight image", DDR_MAGIC, DDR_VERSION, DDR_HEADER_WORDS)
    if zlib.crc32(words[DDR_HEADER_WORDS:].astype("<u4").tobytes()) != crc:
        raise RomaError(f"the DDR weight image {path} is corrupt (payload checksum mismatch)", REBUILD_HINT)
    return words

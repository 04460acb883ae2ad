"""The DDR weight image: the tensors the placement plan streams from DDR, in the B-ROM tiles' words.

DDR image ddr_weights.bin (the tensors the placement plan streams from DDR; roma_core reads it through its
`ddr_weights` m_axi ports, hw/hls/include/roma/brom_ddr.h). Little-endian uint32 words:
    word 0 magic 0x52444452 ("RDDR"), 1 version (3), 2 words in the image (header included),
    3 CRC-32 (zlib) of the words after the header
    zero words up to word 16, then the DDR tensors, one after another at the word offsets the manifest and
    roma_model.h give. A tensor is its tiles one after another; a tile is the steps of its B-ROM tile in the ROM's
    step order (step s = g * R + r):
    q8: first the tile's R row exponents, two per word (row 2i in the low half, 2i+1 in the high half), padded
        with zero words to a multiple of 16 words, or of a step's words where those are more (version 3);
    then blocks of DDR_BLOCK_STEPS = 32 steps, block b:
        its scale entries: q8 16 words, word k: params of step 32b+2k | params of step 32b+2k+1 << 16; fp16 32
        words, one per step: scale | minimum << 16 (padded with zero words to a step's words when those are more);
        then the planes of steps 32b..32b+31, each its b * L plane words in the ROM's (p, l) order, zero-padded
        to a power of two (3-bit steps of 3, 6 or 12 words take 4, 8 or 16).
    The last block's missing steps are zero words. Every tensor, tile, prefix and block is a multiple of 16 words
    (512 bits, the widest weight port's word), so the GEMV reads a tile in one sequential pass of whole port words
    at any port width (q8: the exponents into a local array of R entries first, in the same pass), each block's
    scale entries into registers before their planes.
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
DDR_ALIGN_WORDS = _DDR["DDR_ALIGN_WORDS"]  # 512 bits: tensors, tiles, prefixes and blocks are whole such words
DDR_BLOCK_STEPS = _DDR["DDR_BLOCK_STEPS"]  # (group, row) steps per block, both scale formats


def ddr_step_words(bits: int, group: int) -> int:
    """A step's plane words in the DDR layout: its bits * group / 32 words, padded to a power of two."""
    return 1 << (bits * (group // WORD_BITS) - 1).bit_length()


def ddr_param_words(bits: int, group: int, scales: str) -> int:
    """A block's scale-entry words in the DDR layout: q8 two steps a word, fp16 one, at least a step's words."""
    return max(DDR_BLOCK_STEPS // 2 if scales == "q8" else DDR_BLOCK_STEPS, ddr_step_words(bits, group))


def _ddr_geometry(bits: int, group: int, rows_per_tile: int, cols: int, scales: str) -> tuple[int, int, int, int]:
    """(prefix words, step words, blocks, scale-entry words per block) of one tile in the DDR layout."""
    if scales not in SCALE_FORMATS:
        raise RomaError(f"unknown scale format '{scales}' (supported: {', '.join(SCALE_FORMATS)})", REBUILD_HINT)
    steps, step_words = (cols // group) * rows_per_tile, ddr_step_words(bits, group)
    q8 = scales == "q8"
    align = max(DDR_ALIGN_WORDS, step_words)  # brom_ddr.h PREFIX_ALIGN: whole chunks of the stream at any port width
    prefix = -(-rows_per_tile // (2 * align)) * align if q8 else 0  # R exponents, 2 per word
    return prefix, step_words, -(-steps // DDR_BLOCK_STEPS), ddr_param_words(bits, group, scales)


def ddr_tile_words(bits: int, group: int, rows_per_tile: int, cols: int, scales: str = "fp16") -> int:
    """Words of one tile in the DDR layout (see the module docstring)."""
    prefix, step_words, blocks, param_words = _ddr_geometry(bits, group, rows_per_tile, cols, scales)
    return prefix + blocks * (param_words + DDR_BLOCK_STEPS * step_words)


def _halves(a: np.ndarray, n: int) -> np.ndarray:
    """uint16 [tiles, k] -> uint32 [tiles, n] words: entry 2i in the low half, 2i+1 in the high, zeros after."""
    a = np.pad(a.astype(np.uint32), ((0, 0), (0, 2 * n - a.shape[1])))
    return a[:, 0::2] | (a[:, 1::2] << 16)


def ddr_words(img: BromImage) -> np.ndarray:
    """The image's tiles in the DDR layout: uint32 [tiles * ddr_tile_words]."""
    wps, steps, tiles = img.bits * img.lanes, img.params_per_tile, img.tiles
    prefix, step_words, blocks, param_words = _ddr_geometry(img.bits, img.group, img.rows_per_tile, img.cols,
                                                            img.scale_format)
    pad = blocks * DDR_BLOCK_STEPS - steps
    planes = np.pad(img.planes.reshape(tiles, steps, wps), ((0, 0), (0, pad), (0, step_words - wps)))
    planes = planes.reshape(tiles, blocks, DDR_BLOCK_STEPS * step_words)
    if img.scale_format == "q8":
        params = _halves(img.params, blocks * DDR_BLOCK_STEPS // 2).reshape(tiles, blocks, -1)
        head = _halves(img.exponents, prefix)
    else:
        params = np.pad(img.scales.astype(np.uint32) | (img.minimums.astype(np.uint32) << 16), ((0, 0), (0, pad)))
        params = params.reshape(tiles, blocks, -1)
        head = np.zeros((tiles, 0), np.uint32)
    params = np.pad(params, ((0, 0), (0, 0), (0, param_words - params.shape[2])))
    body = np.concatenate([params, planes], axis=2).reshape(tiles, -1)
    return np.concatenate([head, body], axis=1).reshape(-1).astype(np.uint32)


def ddr_unpack(words: np.ndarray, bits: int, group: int, rows: int, cols: int, tiles: int,
               scales: str = "fp16") -> BromImage:
    """The BromImage of one tensor's words in the DDR layout (the exact inverse of ddr_words)."""
    check_params(bits, group, rows, cols, tiles)
    r = rows // tiles
    wps, steps = bits * (group // WORD_BITS), (cols // group) * r
    prefix, step_words, blocks, param_words = _ddr_geometry(bits, group, r, cols, scales)
    n = prefix + blocks * (param_words + DDR_BLOCK_STEPS * step_words)
    words = np.asarray(words, dtype=np.uint32)
    if words.size != tiles * n:
        raise RomaError(f"a DDR tensor of {rows}x{cols} at {bits} bits, group {group}, {scales} scales, {tiles} "
                        f"tiles has {tiles * n} words, not {words.size}", REBUILD_HINT)
    t = words.reshape(tiles, n)
    body = t[:, prefix:].reshape(tiles, blocks, -1)
    planes = body[:, :, param_words:].reshape(tiles, blocks * DDR_BLOCK_STEPS, step_words)[:, :steps, :wps]
    planes = np.ascontiguousarray(planes.reshape(tiles, -1))
    params = body[:, :, :param_words]

    def unhalves(w: np.ndarray, k: int) -> np.ndarray:  # inverse of _halves
        return np.stack([w & 0xFFFF, w >> 16], axis=-1).reshape(tiles, -1)[:, :k].astype(np.uint16)

    if scales == "q8":
        exps = unhalves(t[:, :prefix], r)
        check_q8_exponents(exps, f"a DDR tensor of {rows}x{cols}: ")
        params = unhalves(params[:, :, :DDR_BLOCK_STEPS // 2].reshape(tiles, -1), steps)
        return BromImage(bits, group, rows, cols, tiles, planes, None, None, "q8", params, exps)
    params = params[:, :, :DDR_BLOCK_STEPS].reshape(tiles, -1)[:, :steps]
    return BromImage(bits, group, rows, cols, tiles, planes, (params & 0xFFFF).astype(np.uint16),
                     (params >> 16).astype(np.uint16))


def ddr_image(images: dict[str, BromImage]) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """(the whole DDR image, header included, as uint32 words; {name: (word offset, words)}) of `images` in
    their order."""
    # zero words after the header, so that the tensors start on an aligned word
    chunks, layout, offset = [np.zeros(DDR_ALIGN_WORDS - DDR_HEADER_WORDS, np.uint32)], {}, DDR_ALIGN_WORDS
    for name, img in images.items():
        w = ddr_words(img)
        layout[name] = (offset, int(w.size))
        chunks.append(w)
        offset += w.size
    payload = np.concatenate(chunks)
    crc = zlib.crc32(payload.astype("<u4").tobytes())
    header = np.array([DDR_MAGIC, DDR_VERSION, DDR_HEADER_WORDS + payload.size, crc], np.uint32)
    return np.concatenate([header, payload]), layout


def read_ddr_image(path: Path) -> np.ndarray:
    """Read and verify a DDR image (header, size, checksum); RomaError naming the file on any inconsistency."""
    words, crc = read_word_image(path, "DDR weight image", DDR_MAGIC, DDR_VERSION, DDR_HEADER_WORDS)
    if zlib.crc32(words[DDR_HEADER_WORDS:].astype("<u4").tobytes()) != crc:
        raise RomaError(f"the DDR weight image {path} is corrupt (payload checksum mismatch)", REBUILD_HINT)
    return words

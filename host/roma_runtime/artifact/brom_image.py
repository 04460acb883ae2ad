"""The B-ROM image format: the only writer (and the reference reader) of ROM images.

A ROM image holds one quantized weight matrix (`QuantizedMatrix`: rows x cols, b-bit unsigned codes, an fp16
scale d and an fp16 minimum m per row and group of G inputs, w = d*q + m) in the layout the HLS B-ROM tile
(hw/hls/include/roma/brom_tile.h) reads, one ROM word per cycle per bank.

Tiles
    The matrix's output rows are dealt to `tiles` tiles in turn: tile t owns rows t, t + tiles, t + 2*tiles, ...
    (its row r is row r * tiles + t), R = rows / tiles each (rows % tiles must be 0), so the tiles, the GEMV
    engine's processing elements, finish `tiles` consecutive outputs per cycle. Every tile has its own ROM arrays;
    nothing is shared between tiles, so each tile emits finished outputs.

Bit-plane words (layout 1, "group-major bit-planes")
    NG = cols / G groups per row, L = G / 32 lanes: a group's bit-plane p (bit p of its G codes) is L
    uint32 words; lane l, bit j holds bit p of code[row, g*G + 32*l + j]. Within a tile the words are
    ordered
        index = ((g * R + r) * b + p) * L + l          (g group, r row in the tile, p plane, l lane)
    i.e. group-major, then row, then plane, then lane. The tile's GEMV loop walks (g, r) with II=1 and
    reads the b*L words of one (g, r) per cycle, one from each of b*L banks (cyclic partition of the
    flat array by b*L). Group-major order keeps one activation group (and its 16-entry candidate tables)
    stationary while all R rows stream past, and revisits a row's fp32 accumulator only every R cycles, so
    the float add's latency does not limit II. 3-bit codes are 3 planes (no padding); 2-bit costs half
    the ROM of 4-bit.
    Within a 32-bit lane word, nibble k (bits 4k..4k+3) covers codes 4k..4k+3 of that lane: the LUT-select
    datapath uses it directly as the index of a 16-entry subset-sum table of 4 activations.

Scales and minimums, by the matrix's scale format (compiler/quantization/quantize.py; the values are fp16 in both)
    fp16: fp16 bit patterns as uint16, one scale and one minimum per (g, r), in the same group-major order:
          index = g * R + r.
    q8:   d = sd * 2^ed, m = sm * 2^em with an unsigned 8-bit sd and a signed 8-bit sm per (g, r) and the
          exponents ed, em (each in [Q8_EXP_MIN, Q8_EXP_MAX] = [-24, 8]) per row:
          params    uint16 per (g, r), index g * R + r:  sd | (sm & 0xff) << 8
          exponents uint16 per row r of the tile:        (ed - Q8_EXP_MIN) | (em - Q8_EXP_MIN) << 8
          Every such value is exactly an fp16, so the datapath sees the same d and m as with fp16 storage;
          16 bits per group and 16 per row instead of 32 per group. pack takes each row's smallest
          exponents (quantize.q8_exponents) and refuses a value that is not on its row's grid; -0.0 is stored
          as 0 and unpacks as +0.0.

File NAME.bin (C simulation loads it at start-up); little-endian, a 72-byte header then the payload:
    off  size  field
      0     8  magic b"ROMABROM"
      8     4  version (1)
     12     4  header size in bytes (72)
     16     4  bits          20  4  group         24  4  rows          28  4  cols
     32     4  tiles         36  4  word bits (32)
     40     4  layout (1, described above)
     44     4  plane words per tile (NG * R * b * L)
     48     4  scale entries per tile (NG * R)
     52     4  CRC-32 (zlib) of the payload
     56     4  CRC-32 (zlib) of the header with this field zeroed
     60     4  scale format (0 = fp16, 1 = q8; images written before q8 hold 0 here)
     64     8  payload size in bytes
    payload, fp16: planes    uint32[tiles][plane words per tile]
                   scales    uint16[tiles][scale entries per tile]
                   minimums  uint16[tiles][scale entries per tile]
    payload, q8:   planes    uint32[tiles][plane words per tile]
                   params    uint16[tiles][scale entries per tile]
                   exponents uint16[tiles][R]
File NAME.dat (synthesis compiles it into the BRAM ROM arrays): the same three arrays as C initializers,
selected by a macro, one tile's words (each followed by a comma) selected by ROMA_BROM_TILE, so that an includer
can concatenate the same tile of several tensors into one row of an engine's bank [TILES][words]
(artifact/model_header.py):
    static const uint32_t planes[TILES][WORDS] = {
    {
    #define ROMA_BROM_PLANES
    #define ROMA_BROM_TILE 0
    #include "NAME.dat"
    #include "OTHER.dat"
    #undef ROMA_BROM_TILE
    #undef ROMA_BROM_PLANES
    },
    ...  (tile 1, ...)
    };
and likewise, fp16: ROMA_BROM_SCALES / ROMA_BROM_MINIMUMS for uint16_t arrays [TILES][NG*R]; q8:
ROMA_BROM_PARAMS for uint16_t [TILES][NG*R] and ROMA_BROM_EXPONENTS for uint16_t [TILES][R]. A q8 .dat also
defines the macro ROMA_BROM_DAT_Q8 whenever it is included, so that an includer (hw/hls/roma_rom_define.h)
can tell the formats apart in the preprocessor.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RomaError
from ..model.weights import SUPPORTED_BITS, SUPPORTED_GROUPS, QuantizedMatrix
from .interface import kernel_constants

MAGIC = b"ROMABROM"
_LOADER = kernel_constants("csim/brom_tile.h")  # the emulated board's reader of this image
VERSION = _LOADER["BROM_VERSION"]
LAYOUT_GROUP_MAJOR = _LOADER["BROM_LAYOUT_GROUP_MAJOR"]
WORD_BITS = kernel_constants("types.h")["ROM_WORD_BITS"]
SCALE_FORMATS = {"fp16": 0, "q8": 1}  # header field 60 (roma::ScaleFormat)
# magic, version, header size, bits, group, rows, cols, tiles, word bits, layout, plane words per tile,
# scale entries per tile, payload crc, header crc, scale format, payload bytes
_HEADER = struct.Struct("<8s14IQ")
HEADER_BYTES = _LOADER["BROM_HEADER_BYTES"]  # _HEADER.size (tests/artifact/test_brom.py checks)
_TILE = kernel_constants("brom_tile.h")  # the tile kernel's q8 exponent range
Q8_EXP_MIN, Q8_EXP_MAX = _TILE["Q8_EXP_MIN"], _TILE["Q8_EXP_MAX"]  # -24: fp16's smallest step; 255 * 2^8 < FP16_MAX
REBUILD_HINT = "regenerate the ROM images with the compiler (roma compile) from the model"


@dataclass(frozen=True, eq=False)
class BromImage:
    """One weight matrix packed for `tiles` B-ROM tiles (see the module docstring for the layout)."""

    bits: int
    group: int
    rows: int
    cols: int
    tiles: int
    planes: np.ndarray  # uint32 [tiles, plane_words_per_tile]
    scales: np.ndarray | None  # fp16: uint16 [tiles, params_per_tile], fp16 bit patterns; q8: None
    minimums: np.ndarray | None  # fp16: uint16 [tiles, params_per_tile]; q8: None
    scale_format: str = "fp16"
    params: np.ndarray | None = None  # q8: uint16 [tiles, params_per_tile], sd | (sm & 0xff) << 8
    exponents: np.ndarray | None = None  # q8: uint16 [tiles, rows_per_tile], (ed - MIN) | (em - MIN) << 8

    @property
    def rows_per_tile(self) -> int:
        return self.rows // self.tiles

    @property
    def groups(self) -> int:
        return self.cols // self.group

    @property
    def lanes(self) -> int:
        return self.group // WORD_BITS

    @property
    def plane_words_per_tile(self) -> int:
        return self.groups * self.rows_per_tile * self.bits * self.lanes

    @property
    def params_per_tile(self) -> int:
        return self.groups * self.rows_per_tile

    @property
    def scale_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored scale arrays in payload order: (scales, minimums) or, q8, (params, exponents)."""
        return (self.params, self.exponents) if self.scale_format == "q8" else (self.scales, self.minimums)

    def payload(self) -> bytes:
        return b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                        for a in (self.planes, *self.scale_arrays))

    @property
    def rom_bytes(self) -> int:
        """ROM bits the tiles hold, in bytes (codes + the stored scale arrays)."""
        return self.planes.nbytes + sum(a.nbytes for a in self.scale_arrays)

    def sha256(self) -> str:
        """Identity of the packed contents (header parameters + payload), for build manifests."""
        payload = self.payload()
        h = hashlib.sha256(_header_bytes(self, zlib.crc32(payload), len(payload)))
        h.update(payload)
        return h.hexdigest()


def check_params(bits: int, group: int, rows: int, cols: int, tiles: int, where: str = "") -> None:
    if bits not in SUPPORTED_BITS:
        raise RomaError(f"{where}unsupported code width {bits} bits (supported: {SUPPORTED_BITS})", REBUILD_HINT)
    if group not in SUPPORTED_GROUPS:
        raise RomaError(f"{where}unsupported group size {group} (supported: {SUPPORTED_GROUPS})", REBUILD_HINT)
    if rows <= 0 or cols <= 0 or cols % group:
        raise RomaError(f"{where}bad matrix shape {rows}x{cols} for group {group}", REBUILD_HINT)
    if tiles <= 0 or rows % tiles:
        raise RomaError(
            f"{where}{rows} rows do not split into {tiles} tiles of equal size",
            f"choose a tile count that divides {rows}")


def q8_exponents(d: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest per-row exponents (over the last axis, kept) whose 8-bit grids hold every d (unsigned,
    up to 255 steps) and m (signed, -128..127 steps) of the row."""
    def exponent(need):  # need: the step each value asks for; the row takes the largest
        need = np.max(need, axis=-1, keepdims=True)
        with np.errstate(divide="ignore"):
            e = np.ceil(np.log2(np.where(need > 0, need, 1.0)))
        return np.clip(np.where(need > 0, e, Q8_EXP_MIN), Q8_EXP_MIN, Q8_EXP_MAX).astype(np.int32)

    d = np.asarray(d, np.float64)
    m = np.asarray(m, np.float64)
    return exponent(d / 255), exponent(np.maximum(-m / 128, m / 127))


def pack(qm: QuantizedMatrix, tiles: int = 1, name: str = "tensor") -> BromImage:
    """Pack a quantized matrix into bit-plane ROM words for `tiles` tiles (rows % tiles == 0), its scales and
    minimums in its scale format (qm.scale_format; `name` names the tensor in errors)."""
    rows, cols = qm.shape
    bits, group = qm.bits, qm.group
    check_params(bits, group, rows, cols, tiles)
    if qm.codes.size and int(qm.codes.max()) >= (1 << bits):
        raise RomaError(f"codes exceed {bits} bits; the matrix is not a valid {bits}-bit QuantizedMatrix")
    r, ng, lanes = rows // tiles, cols // group, group // WORD_BITS
    # tile t holds rows t, t + tiles, ... (its local row i is row i * tiles + t): [R, tiles, NG, L, 32] ->
    # [tiles, NG, R, L, 32]
    codes = qm.codes.reshape(r, tiles, ng, lanes, WORD_BITS).transpose(1, 2, 0, 3, 4)
    planes = np.empty((tiles, ng, r, bits, lanes), dtype=np.uint32)
    for p in range(bits):
        bitp = ((codes >> p) & 1).astype(np.uint8)
        packed = np.packbits(bitp, axis=-1, bitorder="little")  # [..., L, 4] bytes, little-endian word
        planes[:, :, :, p, :] = np.ascontiguousarray(packed).view("<u4")[..., 0]

    def group_major(a: np.ndarray) -> np.ndarray:  # [rows, NG] -> [tiles, NG * R], index g * R + r
        return np.ascontiguousarray(a.reshape(r, tiles, ng).transpose(1, 2, 0)).reshape(tiles, ng * r)

    planes = planes.reshape(tiles, -1)
    if qm.scale_format == "q8":
        sd, sm, ed, em = _q8_codes(qm, name)
        params = (sd.astype(np.uint16) | (sm.astype(np.uint8).astype(np.uint16) << 8))
        exps = np.ascontiguousarray(((ed - Q8_EXP_MIN) | ((em - Q8_EXP_MIN) << 8)).astype(np.uint16).reshape(r, tiles).T)
        return BromImage(bits, group, rows, cols, tiles, planes, None, None, "q8", group_major(params), exps)
    return BromImage(bits, group, rows, cols, tiles, planes, group_major(qm.scales.view(np.uint16)),
                     group_major(qm.minimums.view(np.uint16)))


def _q8_codes(qm: QuantizedMatrix, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sd [rows, NG], sm [rows, NG], ed [rows, 1], em [rows, 1]) of a q8 matrix's fp16 scales and minimums,
    with each row's smallest exponents; RomaError naming the tensor for a value off its row's grid."""
    d, m = qm.scales.astype(np.float64), qm.minimums.astype(np.float64)
    hint = "quantize with scales='q8' (compiler/quantization/quantize.py), which fits the scales and minimums on that grid"
    for what, v in (("scale", d), ("minimum", m)):
        if not np.isfinite(v).all():
            row, g = np.argwhere(~np.isfinite(v))[0]
            raise RomaError(f"{name}: the {what} of row {row}, group {g} is {v[row, g]}; q8 scales hold finite "
                            "values only", hint)
    ed, em = q8_exponents(d, m)
    sd, sm = d / np.ldexp(1.0, ed), m / np.ldexp(1.0, em)
    for what, steps, v, e, lo, hi in (("scale", sd, d, ed, 0, 255), ("minimum", sm, m, em, -128, 127)):
        off = (steps != np.rint(steps)) | (steps < lo) | (steps > hi)
        if off.any():
            row, g = np.argwhere(off)[0]
            raise RomaError(
                f"{name}: the {what} {v[row, g]!r} of row {row}, group {g} is not on the row's q8 grid "
                f"({lo}..{hi} steps of 2^{int(e[row, 0])}, exponents {Q8_EXP_MIN}..{Q8_EXP_MAX})", hint)
    return sd.astype(np.int64), sm.astype(np.int64), ed.astype(np.int64), em.astype(np.int64)


def q8_values(codes: np.ndarray, exp_biased: np.ndarray) -> np.ndarray:
    """float16 codes * 2^(exp_biased + Q8_EXP_MIN) (exact): the values q8 storage decodes to."""
    return np.ldexp(np.asarray(codes, np.float64), np.asarray(exp_biased, np.int64) + Q8_EXP_MIN).astype(np.float16)


def unpack(img: BromImage) -> QuantizedMatrix:
    """The exact inverse of `pack`."""
    tiles, r, ng, lanes, bits = img.tiles, img.rows_per_tile, img.groups, img.lanes, img.bits
    words = np.ascontiguousarray(img.planes, dtype="<u4").reshape(tiles, ng, r, bits, lanes)
    bitvals = np.unpackbits(words.view(np.uint8).reshape(tiles, ng, r, bits, lanes, 4), axis=-1,
                            bitorder="little")  # [tiles, NG, R, b, L, 32]
    codes = np.zeros((tiles, ng, r, lanes, WORD_BITS), dtype=np.uint8)
    for p in range(bits):
        codes |= (bitvals[:, :, :, p] << p).astype(np.uint8)
    codes = codes.transpose(2, 0, 1, 3, 4).reshape(img.rows, img.cols)  # [R, tiles, ...]: row i * tiles + t

    def row_major(a: np.ndarray) -> np.ndarray:  # [tiles, NG * R] -> [rows, NG]
        return np.ascontiguousarray(a.reshape(tiles, ng, r).transpose(2, 0, 1)).reshape(img.rows, ng)

    codes = np.ascontiguousarray(codes)
    if img.scale_format == "q8":
        p, e = row_major(img.params), np.ascontiguousarray(img.exponents.T).reshape(img.rows, 1)
        d = q8_values(p & 0xFF, e & 0xFF)
        m = q8_values((p >> 8).astype(np.uint8).view(np.int8), e >> 8)
        return QuantizedMatrix(codes, d, m, img.bits, img.group, "q8")
    return QuantizedMatrix(codes, row_major(img.scales).view(np.float16), row_major(img.minimums).view(np.float16),
                           img.bits, img.group)


def _header_bytes(img: BromImage, payload_crc: int, payload_len: int, header_crc: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, HEADER_BYTES, img.bits, img.group, img.rows, img.cols, img.tiles,
                        WORD_BITS, LAYOUT_GROUP_MAJOR, img.plane_words_per_tile, img.params_per_tile,
                        payload_crc, header_crc, SCALE_FORMATS[img.scale_format], payload_len)


def _hex_words(a: np.ndarray, digits: int, per_line: int) -> bytes:
    """Comma-separated 0x... words, `per_line` to a line, formatted without a Python loop per word."""
    n = a.size
    if n == 0:
        return b""
    hexed = np.frombuffer(a.astype(f">u{digits // 2}").tobytes().hex().encode(), dtype=np.uint8)
    width = digits + 4  # "0x" + digits + "," + separator
    out = np.empty((n, width), dtype=np.uint8)
    out[:, 0], out[:, 1] = ord("0"), ord("x")
    out[:, 2:2 + digits] = hexed.reshape(n, digits)
    out[:, 2 + digits] = ord(",")
    out[:, 3 + digits] = ord(" ")
    out[per_line - 1::per_line, 3 + digits] = ord("\n")
    out[-1, 3 + digits] = ord("\n")
    return out.tobytes()


def dat_text(img: BromImage, name: str) -> bytes:
    """The NAME.dat initializer include (see the module docstring)."""
    q8 = img.scale_format == "q8"
    if q8:
        arrays = f"params (sd | sm << 8, index g*R+r): uint16_t [{img.tiles}][{img.params_per_tile}]; " \
                 f"exponents ((ed+{-Q8_EXP_MIN}) | (em+{-Q8_EXP_MIN}) << 8, per row): " \
                 f"uint16_t [{img.tiles}][{img.rows_per_tile}]"
        macros = ("ROMA_BROM_PARAMS", "ROMA_BROM_EXPONENTS")
    else:
        arrays = f"scales, minimums: uint16_t [{img.tiles}][{img.params_per_tile}] (fp16 bits, index g*R+r)"
        macros = ("ROMA_BROM_SCALES", "ROMA_BROM_MINIMUMS")
    head = (
        f"// ROMA B-ROM image '{name}': generated by roma_runtime.artifact.brom_image from the same arrays as "
        f"{name}.bin; do not edit.\n"
        f"// bits={img.bits} group={img.group} rows={img.rows} cols={img.cols} tiles={img.tiles} "
        f"layout={LAYOUT_GROUP_MAJOR} (group-major bit-planes, word index ((g*R+r)*bits+p)*lanes+l)"
        f"{' scales=q8' if q8 else ''}\n"
        f"// planes: uint32_t [{img.tiles}][{img.plane_words_per_tile}]; {arrays}\n"
    ).encode()
    parts = [head, b"#define ROMA_BROM_DAT_Q8\n" if q8 else b"",
             b"#if !defined(ROMA_BROM_TILE) || ROMA_BROM_TILE < 0 || ROMA_BROM_TILE >= %d\n"
             b"#error \"define ROMA_BROM_TILE (a tile of this image) before including a B-ROM .dat\"\n" % img.tiles]
    for macro, arr, digits in (("ROMA_BROM_PLANES", img.planes, 8), *zip(macros, img.scale_arrays, (4, 4))):
        for t in range(img.tiles):
            parts.append(f"#elif defined({macro}) && ROMA_BROM_TILE == {t}\n".encode())
            parts.append(_hex_words(arr[t], digits, 8))
    parts.append(f"#else\n#error \"define ROMA_BROM_PLANES, {macros[0]} or {macros[1]} "
                 f"before including a B-ROM .dat\"\n#endif\n".encode())
    return b"".join(parts)


def write_image(img: BromImage, out_dir: Path, name: str) -> list[Path]:
    """Write NAME.bin (C simulation) and NAME.dat (synthesis) into out_dir; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = img.payload()
    pcrc = zlib.crc32(payload)
    hcrc = zlib.crc32(_header_bytes(img, pcrc, len(payload)))
    bin_path, dat_path = out_dir / f"{name}.bin", out_dir / f"{name}.dat"
    with open(bin_path, "wb") as f:
        f.write(_header_bytes(img, pcrc, len(payload), hcrc))
        f.write(payload)
    dat_path.write_bytes(dat_text(img, name))
    return [bin_path, dat_path]


def read_image(path: Path) -> BromImage:
    """Read and verify a NAME.bin ROM image; RomaError naming the file on any inconsistency."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RomaError(f"cannot read ROM image {path}: {e.strerror}", REBUILD_HINT) from None
    if len(data) < HEADER_BYTES:
        if not data.startswith(MAGIC[: len(data)]) or not data:
            raise RomaError(f"{path} is not a ROMA B-ROM image (bad magic)", REBUILD_HINT)
        raise RomaError(f"ROM image {path} is truncated ({len(data)} bytes, header alone is {HEADER_BYTES})",
                        REBUILD_HINT)
    (magic, version, hbytes, bits, group, rows, cols, tiles, word_bits, layout, pw, pp, pcrc, hcrc, fmt,
     plen) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RomaError(f"{path} is not a ROMA B-ROM image (bad magic {magic!r})", REBUILD_HINT)
    if version != VERSION or hbytes != HEADER_BYTES:
        raise RomaError(f"ROM image {path} has format version {version}; this runtime reads {VERSION}", REBUILD_HINT)
    zeroed = bytearray(data[:HEADER_BYTES])
    zeroed[56:60] = b"\0\0\0\0"
    if zlib.crc32(bytes(zeroed)) != hcrc:
        raise RomaError(f"ROM image {path} is corrupt (header checksum mismatch)", REBUILD_HINT)
    where = f"ROM image {path}: "
    check_params(bits, group, rows, cols, tiles, where)
    if word_bits != WORD_BITS or layout != LAYOUT_GROUP_MAJOR:
        raise RomaError(f"{where}unknown word layout (word bits {word_bits}, layout {layout})", REBUILD_HINT)
    formats = {v: k for k, v in SCALE_FORMATS.items()}
    if fmt not in formats:
        raise RomaError(f"{where}unknown scale format {fmt}", REBUILD_HINT)
    scale_format = formats[fmt]
    r, ng, lanes = rows // tiles, cols // group, group // WORD_BITS
    scale_bytes = 2 * pp + 2 * r if scale_format == "q8" else 4 * pp
    if pw != ng * r * bits * lanes or pp != ng * r or plen != tiles * (4 * pw + scale_bytes):
        raise RomaError(f"{where}header sizes are inconsistent with its shape", REBUILD_HINT)
    if len(data) < HEADER_BYTES + plen:
        raise RomaError(f"ROM image {path} is truncated ({len(data)} bytes, expected {HEADER_BYTES + plen})",
                        REBUILD_HINT)
    if len(data) > HEADER_BYTES + plen:
        raise RomaError(f"ROM image {path} has {len(data) - HEADER_BYTES - plen} unexpected trailing bytes",
                        REBUILD_HINT)
    payload = data[HEADER_BYTES:]
    if zlib.crc32(payload) != pcrc:
        raise RomaError(f"ROM image {path} is corrupt (payload checksum mismatch)", REBUILD_HINT)
    planes = np.frombuffer(payload, dtype="<u4", count=tiles * pw).reshape(tiles, pw).astype(np.uint32)
    off = 4 * tiles * pw
    first = np.frombuffer(payload, dtype="<u2", count=tiles * pp, offset=off).reshape(tiles, pp).astype(np.uint16)
    off += 2 * tiles * pp
    n = r if scale_format == "q8" else pp
    second = np.frombuffer(payload, dtype="<u2", count=tiles * n, offset=off).reshape(tiles, n).astype(np.uint16)
    if scale_format == "q8":
        check_q8_exponents(second, where)
        return BromImage(bits, group, rows, cols, tiles, planes, None, None, "q8", first, second)
    return BromImage(bits, group, rows, cols, tiles, planes, first, second)


def check_q8_exponents(exps: np.ndarray, where: str) -> None:
    """Every biased row exponent lies in 0..Q8_EXP_MAX - Q8_EXP_MIN (the decoder's range)."""
    if ((exps & 0xFF) > Q8_EXP_MAX - Q8_EXP_MIN).any() or ((exps >> 8) > Q8_EXP_MAX - Q8_EXP_MIN).any():
        raise RomaError(f"{where}a q8 row exponent is out of range (corrupt image)", REBUILD_HINT)


def read_word_image(path: Path, what: str, magic: int, version: int, header_words: int) -> tuple[np.ndarray, int]:
    """A weight image of 32-bit words whose header starts (magic, version, words, checksum): its words and the
    header's checksum, after RomaError naming the file (`what`: "DDR weight image", ...) unless it is readable and
    its magic, version and size are right. The caller checks the checksum its own way."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RomaError(f"cannot read the {what} {path}: {e.strerror}", REBUILD_HINT) from None
    if len(data) < 4 * header_words or len(data) % 4:
        raise RomaError(f"the {what} {path} is truncated ({len(data)} bytes)", REBUILD_HINT)
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    got_magic, got_version, n, checksum = (int(v) for v in words[:4])
    if got_magic != magic:
        raise RomaError(f"{path} is not a ROMA {what} (bad magic 0x{got_magic:08x})", REBUILD_HINT)
    if got_version != version:
        raise RomaError(f"the {what} {path} has format version {got_version}; this runtime reads {version}",
                        REBUILD_HINT)
    if n != words.size:
        raise RomaError(f"the {what} {path} holds {words.size} words, its header says {n}", REBUILD_HINT)
    return words, checksum

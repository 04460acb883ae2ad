"""The B-ROM packer: exact pack/unpack for every bits x group and scale format (fp16, q8), the word layout,
image files, the DDR layout, corruption."""

from __future__ import annotations

import re

import numpy as np
import pytest

from roma_runtime.artifact import brom_image as brom
from roma_runtime.artifact import ddr_image
from roma_runtime.artifact.brom_image import Q8_EXP_MIN
from roma_runtime.compiler.quantization.quantize import quantize_rtn
from roma_runtime.errors import RomaError
from roma_runtime.model.weights import QuantizedMatrix

BITS = (2, 3, 4, 8)
GROUPS = (32, 64, 128)


def random_qm(bits: int, group: int, rows: int = 12, cols: int = 256, seed: int = 0) -> QuantizedMatrix:
    rng = np.random.default_rng(seed + 100 * bits + group)
    ng = cols // group
    return QuantizedMatrix(
        rng.integers(0, 1 << bits, (rows, cols), dtype=np.uint8),
        rng.standard_normal((rows, ng)).astype(np.float16),
        rng.standard_normal((rows, ng)).astype(np.float16), bits, group)


def q8_qm(bits: int, group: int, rows: int = 12, cols: int = 256, seed: int = 0) -> QuantizedMatrix:
    """The RTN quantizer's q8 output for random weights whose rows span a wide range of magnitudes."""
    rng = np.random.default_rng(seed + 100 * bits + group)
    w = rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-12, 4, (rows, 1)))
    return quantize_rtn(w.astype(np.float32), bits, group, scales="q8")


def same(a: QuantizedMatrix, b: QuantizedMatrix) -> bool:
    """The same matrix, bit for bit, in the same scale format."""
    return (a.bits == b.bits and a.group == b.group and a.scale_format == b.scale_format
            and np.array_equal(a.codes, b.codes)
            and np.array_equal(a.scales.view(np.uint16), b.scales.view(np.uint16))
            and np.array_equal(a.minimums.view(np.uint16), b.minimums.view(np.uint16)))


def test_header_fields_fill_the_size_the_core_reads():
    """The header's field layout (the struct) spans exactly the header size the emulated board's loader
    reads (csim/brom_tile.h BROM_HEADER_BYTES, which brom_image takes as HEADER_BYTES)."""
    assert brom._HEADER.size == brom.HEADER_BYTES == 72


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("tiles", (1, 3, 4))
def test_pack_unpack_round_trip(bits, group, tiles):
    qm = random_qm(bits, group)
    img = brom.pack(qm, tiles)
    assert img.planes.dtype == np.uint32 and img.planes.shape == (tiles, img.plane_words_per_tile)
    # b planes of G bits per (row, group): 3-bit codes take 3 planes, no padding
    assert img.planes.size * 32 == qm.codes.size * bits
    assert img.scales.shape == img.minimums.shape == (tiles, (12 // tiles) * (256 // group))
    assert same(brom.unpack(img), qm)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("tiles", (1, 3, 4))
def test_q8_pack_unpack_round_trip(bits, group, tiles):
    qm = q8_qm(bits, group)
    img = brom.pack(qm, tiles)
    r, ng = 12 // tiles, 256 // group
    assert img.scale_format == "q8" and img.scales is None and img.minimums is None
    assert img.params.shape == (tiles, ng * r) and img.exponents.shape == (tiles, r)
    assert np.array_equal(img.planes, brom.pack(QuantizedMatrix(qm.codes, qm.scales, qm.minimums, bits, group),
                                                tiles).planes)  # the codes do not depend on the scale format
    assert img.rom_bytes == img.planes.nbytes + 2 * tiles * ng * r + 2 * 12
    assert same(brom.unpack(img), qm)


def _q8(sd, sm, ed, em, bits=2, group=32) -> QuantizedMatrix:
    d = np.ldexp(np.asarray(sd, np.float64), np.asarray(ed)[:, None]).astype(np.float16)
    m = np.ldexp(np.asarray(sm, np.float64), np.asarray(em)[:, None]).astype(np.float16)
    return QuantizedMatrix(np.zeros((d.shape[0], d.shape[1] * group), np.uint8), d, m, bits, group, "q8")


def test_q8_layout():
    """params[t][g*R + r] = sd | (sm & 0xff) << 8, exponents[t][r] = (ed + 24) | (em + 24) << 8 with
    d = sd * 2^ed, m = sm * 2^em, for row r * tiles + t (the tiles take the rows in turn); the grid's extremes
    (2^-24 subnormals, 255 * 2^8, -128 steps) are exact."""
    sd = np.array([[1, 255], [200, 3], [0, 0], [255, 128]])
    sm = np.array([[-128, 127], [-2, 100], [0, 0], [-1, -128]])
    ed, em = np.array([-24, 3, -24, 8]), np.array([-24, -4, -24, 8])  # each row's smallest (an all-zero row: -24)
    qm = _q8(sd, sm, ed, em)
    img = brom.pack(qm, 2)
    for t in range(2):
        for r in range(2):
            row = 2 * r + t
            e = int(img.exponents[t, r])
            assert (e & 0xFF) + Q8_EXP_MIN == ed[row] and (e >> 8) + Q8_EXP_MIN == em[row]
            for g in range(2):
                p = int(img.params[t, g * 2 + r])
                assert p & 0xFF == sd[row, g] and np.int8(np.uint8(p >> 8)) == sm[row, g]
    back = brom.unpack(img)
    assert same(back, qm) and back.scale_format == "q8"
    assert np.array_equal(back.scales.view(np.uint16), qm.scales.view(np.uint16))
    assert back.scales[0, 0] == np.float16(2.0**-24) and back.scales[3, 0] == np.float16(255 * 256.0)
    assert back.minimums[0, 0] == np.float16(-128 * 2.0**-24) and back.minimums[3, 1] == np.float16(-32768.0)


def test_q8_takes_each_rows_smallest_exponents_and_refuses_values_off_them():
    # 100 steps of 2^2 are 200 steps of 2^1, the smallest exponent holding 400 in 255 steps
    img = brom.pack(_q8([[100, 3]], [[0, 0]], [2], [0]))
    assert int(img.exponents[0, 0]) & 0xFF == 1 - Q8_EXP_MIN and img.params[0].tolist() == [200, 6]
    # 255 steps of 2^3 need 2^3; 4 is half a step of it, so no exponent holds both values of the row
    with pytest.raises(RomaError, match=r"wq: the scale 4\.0 of row 0, group 1 is not on the row's q8 grid "
                                        r"\(0\.\.255 steps of 2\^3"):
        brom.pack(QuantizedMatrix(np.zeros((1, 64), np.uint8), np.array([[2040.0, 4.0]], np.float16),
                                  np.zeros((1, 2), np.float16), 2, 32, "q8"), name="wq")


@pytest.mark.parametrize("change, pattern", [
    ("half a step", r"the minimum \S+ of row 0, group 1 is not on the row's q8 grid \(-128\.\.127 steps of 2\^"),
    ("nan", "the minimum of row 0, group 1 is nan; q8 scales hold finite values only"),
    ("too large", r"the minimum \S+ of row 0, group \d is not on the row's q8 grid .*exponents -24\.\.8"),
])
def test_q8_refuses_values_off_the_grid(change, pattern):
    qm = q8_qm(4, 32, rows=2, cols=64)
    m = qm.minimums.copy()
    em = int(brom.q8_exponents(qm.scales, qm.minimums)[1][0, 0])
    m[0, 1] = {"half a step": m[0, 1] + np.float16(2.0 ** (em - 1)), "nan": np.nan, "too large": -40000.0}[change]
    with pytest.raises(RomaError, match=pattern) as e:
        brom.pack(QuantizedMatrix(qm.codes, qm.scales, m, 4, 32, "q8"), name="blk.3.w_up")
    assert str(e.value).startswith("blk.3.w_up: ") and e.value.hint


def test_q8_refuses_a_negative_scale():
    qm = q8_qm(4, 32, rows=2, cols=64)
    s = qm.scales.copy()
    s[1, 0] = np.float16(-s[1, 0] or -1.0)  # unsigned steps: a negative scale is off the grid
    with pytest.raises(RomaError, match="the scale .* of row 1, group 0 is not on the row's q8 grid"):
        brom.pack(QuantizedMatrix(qm.codes, s, qm.minimums, 4, 32, "q8"))


def test_word_layout_matches_the_documented_formula():
    """planes[t][((g*R + r)*b + p)*L + l] bit j = bit p of code[r*tiles + t, g*G + 32*l + j]: tile t holds rows t,
    t + tiles, ..."""
    bits, group, tiles = 3, 64, 2
    qm = random_qm(bits, group, rows=4, cols=128, seed=7)
    img = brom.pack(qm, tiles)
    r_per, ng, lanes = 2, 2, 2
    for t in range(tiles):
        for g in range(ng):
            for r in range(r_per):
                for p in range(bits):
                    for lane in range(lanes):
                        word = int(img.planes[t, ((g * r_per + r) * bits + p) * lanes + lane])
                        for j in range(32):
                            code = int(qm.codes[r * tiles + t, g * group + 32 * lane + j])
                            assert (word >> j) & 1 == (code >> p) & 1
                assert img.scales[t, g * r_per + r] == qm.scales[r * tiles + t, g].view(np.uint16)
                assert img.minimums[t, g * r_per + r] == qm.minimums[r * tiles + t, g].view(np.uint16)


def test_rows_must_split_evenly_into_tiles():
    with pytest.raises(RomaError, match="tiles"):
        brom.pack(random_qm(4, 32), tiles=5)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
def test_image_files_round_trip(tmp_path, bits, group):
    qm = random_qm(bits, group)
    img = brom.pack(qm, 2)
    paths = brom.write_image(img, tmp_path, "w")
    assert [p.name for p in paths] == ["w.bin", "w.dat"]
    back = brom.read_image(paths[0])
    for a in ("planes", "scales", "minimums"):
        assert np.array_equal(getattr(back, a), getattr(img, a))
    assert (back.bits, back.group, back.rows, back.cols, back.tiles) == (bits, group, 12, 256, 2)
    assert same(brom.unpack(back), qm)
    assert back.sha256() == img.sha256()
    assert paths[0].stat().st_size == brom.HEADER_BYTES + img.rom_bytes
    assert paths[0].read_bytes()[60:64] == b"\0\0\0\0"  # scale format fp16, as every earlier image holds


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
def test_q8_image_files_round_trip(tmp_path, bits, group):
    qm = q8_qm(bits, group)
    img = brom.pack(qm, 2)
    paths = brom.write_image(img, tmp_path, "w")
    assert paths[0].read_bytes()[60:64] == b"\1\0\0\0"
    back = brom.read_image(paths[0])
    assert back.scale_format == "q8"
    for a in ("planes", "params", "exponents"):
        assert np.array_equal(getattr(back, a), getattr(img, a))
    assert same(brom.unpack(back), qm)
    stored = brom.unpack(img)  # the same values with fp16 storage: another image
    fp16 = brom.pack(QuantizedMatrix(stored.codes, stored.scales, stored.minimums, bits, group), 2)
    assert back.sha256() == img.sha256() != fp16.sha256() and img.rom_bytes < fp16.rom_bytes
    assert paths[0].stat().st_size == brom.HEADER_BYTES + img.rom_bytes


@pytest.mark.parametrize("scales", ("fp16", "q8"))
def test_dat_initializer_holds_the_same_words(tmp_path, scales):
    img = brom.pack(random_qm(3, 32) if scales == "fp16" else q8_qm(3, 32), 3)
    text = brom.write_image(img, tmp_path, "w")[1].read_text()
    sections = re.findall(r"#elif defined\((ROMA_BROM_\w+)\) && ROMA_BROM_TILE == (\d+)\n(.*?)(?=#)", text, re.S)
    names = ("ROMA_BROM_SCALES", "ROMA_BROM_MINIMUMS") if scales == "fp16" else ("ROMA_BROM_PARAMS",
                                                                                  "ROMA_BROM_EXPONENTS")
    assert [(m, int(t)) for m, t, _ in sections] == [(m, t) for m in ("ROMA_BROM_PLANES", *names)
                                                     for t in range(img.tiles)]
    bodies = {(m, int(t)): body for m, t, body in sections}
    for macro, arr in (("ROMA_BROM_PLANES", img.planes), *zip(names, img.scale_arrays)):
        for t in range(img.tiles):  # one tile's words, each followed by a comma: tiles of tensors concatenate
            words = [int(w, 16) for w in re.findall(r"0x([0-9a-f]+),", bodies[macro, t])]
            assert words == arr[t].tolist()


def test_sha256_depends_on_contents():
    a, b = random_qm(4, 32, seed=1), random_qm(4, 32, seed=2)
    assert brom.pack(a).sha256() == brom.pack(a).sha256() != brom.pack(b).sha256()
    assert brom.pack(a, 1).sha256() != brom.pack(a, 2).sha256()


@pytest.fixture(params=("fp16", "q8"))
def image_file(tmp_path, request):
    qm = random_qm(4, 64) if request.param == "fp16" else q8_qm(4, 64)
    return brom.write_image(brom.pack(qm, 2), tmp_path, "wq")[0]


def expect_error(path, pattern):
    with pytest.raises(RomaError, match=pattern) as e:
        brom.read_image(path)
    assert str(path) in str(e.value)  # the message names the file
    assert e.value.hint


def test_bad_magic(image_file):
    data = bytearray(image_file.read_bytes())
    data[:8] = b"NOTAROM!"
    image_file.write_bytes(bytes(data))
    expect_error(image_file, "bad magic")


@pytest.mark.parametrize("keep", (0, 5, 40, -1))
def test_truncation(image_file, keep):
    data = image_file.read_bytes()
    image_file.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    expect_error(image_file, "truncated|bad magic")


def test_trailing_bytes(image_file):
    image_file.write_bytes(image_file.read_bytes() + b"\0")
    expect_error(image_file, "trailing")


def test_payload_corruption(image_file):
    data = bytearray(image_file.read_bytes())
    data[brom.HEADER_BYTES + 17] ^= 0x04
    image_file.write_bytes(bytes(data))
    expect_error(image_file, "payload checksum")


def test_header_corruption(image_file):
    data = bytearray(image_file.read_bytes())
    data[24] ^= 0x01  # rows
    image_file.write_bytes(bytes(data))
    expect_error(image_file, "header checksum")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.bin", "cannot read")


def test_unknown_scale_format(tmp_path):
    path = brom.write_image(brom.pack(random_qm(4, 64), 2), tmp_path, "wq")[0]
    data = bytearray(path.read_bytes())
    data[60] = 7
    data[56:60] = b"\0\0\0\0"
    data[56:60] = (brom.zlib.crc32(bytes(data[:brom.HEADER_BYTES])) & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    expect_error(path, "unknown scale format 7")


def test_q8_exponent_out_of_range(tmp_path):
    img = brom.pack(q8_qm(4, 64), 2)
    exps = img.exponents.copy()
    exps[1, 2] = 33  # ed = 9, past Q8_EXP_MAX
    # a well-formed file (valid checksums) with bad contents
    bad = brom.BromImage(img.bits, img.group, img.rows, img.cols, img.tiles, img.planes, None, None, "q8",
                         img.params, exps)
    path = brom.write_image(bad, tmp_path, "wq")[0]
    expect_error(path, "q8 row exponent is out of range")


@pytest.mark.parametrize("scales", ("fp16", "q8"))
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUPS)
def test_ddr_layout_round_trip(scales, bits, group):
    for rows, tiles in ((12, 3), (15, 3), (16, 1)):  # 4, 5 (odd: half an exponent word) and 16 rows a tile
        qm = random_qm(bits, group, rows=rows) if scales == "fp16" else q8_qm(bits, group, rows=rows)
        img = brom.pack(qm, tiles)
        words = ddr_image.ddr_words(img)
        assert words.dtype == np.uint32
        n = ddr_image.ddr_tile_words(bits, group, rows // tiles, 256, scales=scales)
        assert words.size == tiles * n and n % 16 == 0  # tiles are whole 512-bit words
        back = ddr_image.ddr_unpack(words, bits, group, rows, 256, tiles, scales=scales)
        assert back.scale_format == scales
        for a in ("planes", *(("scales", "minimums") if scales == "fp16" else ("params", "exponents"))):
            assert np.array_equal(getattr(back, a), getattr(img, a)), a
        assert same(brom.unpack(back), qm)
    # one row of 32: a block of 32 steps, 2 plane words each, after their 32 scale words; q8: 16 words of exponents,
    # then the block with 16 scale words
    words = {"fp16": 32 + 32 * 2, "q8": 16 + 16 + 32 * 2}[scales]
    with pytest.raises(RomaError, match=f"{scales} scales, 1 tiles has {words} words, not 13"):
        ddr_image.ddr_unpack(np.zeros(13, np.uint32), 2, 32, 1, 32, 1, scales=scales)


def test_ddr_q8_tile_layout():
    """A q8 tile: R exponents two per word, zero-padded to 16 words, then blocks of 32 steps: 16 words of two steps'
    params each (step 2k low, 2k+1 high), then the steps' plane words, each step's padded to a power of two (3-bit
    G32: 3 words -> 4); missing steps are zeros."""
    bits, group, rows = 3, 32, 5  # one tile of 5 rows, 2 groups: 10 steps, one block (22 steps of padding)
    qm = q8_qm(bits, group, rows=rows, cols=64, seed=3)
    img = brom.pack(qm)
    w = ddr_image.ddr_words(img)
    wps, step = 3, 4
    assert w.size == 16 + 16 + 32 * step
    e = img.exponents[0].astype(np.uint32)
    assert w[:16].tolist() == [e[0] | e[1] << 16, e[2] | e[3] << 16, e[4]] + [0] * 13
    p = img.params[0].astype(np.uint32)
    assert w[16:32].tolist() == [int(p[2 * k] | p[2 * k + 1] << 16) for k in range(5)] + [0] * 11
    planes = w[32:].reshape(32, step)
    assert planes[:10, :wps].ravel().tolist() == img.planes[0].tolist()
    assert not planes[:10, wps:].any() and not planes[10:].any()


@pytest.mark.slow
def test_smollm2_wq_round_trip(smollm2, tmp_path):
    wq = smollm2.weights.layers[0].wq
    img = brom.pack(wq, tiles=4)
    assert img.rom_bytes == 576 * 576 * 4 // 8 + 2 * 2 * 576 * (576 // 32)
    back = brom.read_image(brom.write_image(img, tmp_path, "blk.0.wq")[0])
    assert same(brom.unpack(back), wq)

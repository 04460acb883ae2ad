"""The B-ROM packer: exact pack/unpack for every bits x group, the word layout, image files, corruption."""

from __future__ import annotations

import re

import numpy as np
import pytest

from roma_runtime.compiler import brom
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


def same(a: QuantizedMatrix, b: QuantizedMatrix) -> bool:
    return (a.bits == b.bits and a.group == b.group and np.array_equal(a.codes, b.codes)
            and np.array_equal(a.scales.view(np.uint16), b.scales.view(np.uint16))
            and np.array_equal(a.minimums.view(np.uint16), b.minimums.view(np.uint16)))


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


def test_word_layout_matches_the_documented_formula():
    """planes[t][((g*R + r)*b + p)*L + l] bit j = bit p of code[t*R + r, g*G + 32*l + j]."""
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
                            code = int(qm.codes[t * r_per + r, g * group + 32 * lane + j])
                            assert (word >> j) & 1 == (code >> p) & 1
                assert img.scales[t, g * r_per + r] == qm.scales[t * r_per + r, g].view(np.uint16)
                assert img.minimums[t, g * r_per + r] == qm.minimums[t * r_per + r, g].view(np.uint16)


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


def test_dat_initializer_holds_the_same_words(tmp_path):
    img = brom.pack(random_qm(3, 32), 3)
    text = brom.write_image(img, tmp_path, "w")[1].read_text()
    sections = re.split(r"#(?:el)?if defined\((ROMA_BROM_\w+)\)\n", text.split("#else")[0])[1:]
    arrays = dict(zip(sections[::2], sections[1::2]))
    for macro, arr in (("ROMA_BROM_PLANES", img.planes), ("ROMA_BROM_SCALES", img.scales),
                       ("ROMA_BROM_MINIMUMS", img.minimums)):
        tiles = re.findall(r"\{\n(.*?)\},\n", arrays[macro], re.S)
        assert len(tiles) == img.tiles
        for t, body in enumerate(tiles):
            words = [int(w, 16) for w in re.findall(r"0x[0-9a-f]+", body)]
            assert words == arr[t].tolist()


def test_sha256_depends_on_contents():
    a, b = random_qm(4, 32, seed=1), random_qm(4, 32, seed=2)
    assert brom.pack(a).sha256() == brom.pack(a).sha256() != brom.pack(b).sha256()
    assert brom.pack(a, 1).sha256() != brom.pack(a, 2).sha256()


@pytest.fixture()
def image_file(tmp_path):
    return brom.write_image(brom.pack(random_qm(4, 64), 2), tmp_path, "wq")[0]


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


@pytest.mark.slow
def test_smollm2_wq_round_trip(tmp_path):
    from roma_runtime.model import load_model

    try:
        wq = load_model("smollm2-135m").weights.layers[0].wq
    except RomaError as e:
        pytest.skip(f"SmolLM2-135M is not installed: {e.message}")
    img = brom.pack(wq, tiles=4)
    assert img.rom_bytes == 576 * 576 * 4 // 8 + 2 * 2 * 576 * (576 // 32)
    back = brom.read_image(brom.write_image(img, tmp_path, "blk.0.wq")[0])
    assert same(brom.unpack(back), wq)

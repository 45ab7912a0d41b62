"""Reading images (every mode, every bad file), preprocessing values and finding image files.

Bad and unusual files are made here in ``tmp_path``; expected pixels are worked out by hand.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from camlens import images
from camlens.errors import CamlensError, ImageError, PixelLimitError
from camlens.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    PreprocessConfig,
    denormalize,
    find_images,
    load_image,
    preprocess,
    tensor_to_image,
)


def pixels(img: Image.Image) -> list[list[tuple[int, ...]]]:
    """Pixel values as nested lists, rows first, for exact comparisons."""
    assert img.mode == "RGB"
    return [[tuple(int(v) for v in px) for px in row] for row in np.asarray(img)]


def over_white(c: int, a: int) -> int:
    """One channel of ``c`` at alpha ``a`` over white, by the formula load_image documents."""
    return round(c * a / 255 + 255 * (1 - a / 255))


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, written row by row (no image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def error_of(source: Any, **kwargs: Any) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(source, **kwargs)
    return str(caught.value)


# --- bad files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.jpg"
    assert error_of(path) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    assert error_of(str(tmp_path)) == f"{tmp_path}: is a folder with no image files in it"
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert error_of(str(tmp_path)) == f"{tmp_path}: is a directory, not an image file"


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert error_of(path) == f"{path}: is empty (0 bytes)"


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image at all\n")
    assert error_of(path) == f"{path}: is not an image Pillow can read"


def test_png_signature_then_garbage(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    message = error_of(path)
    assert message.startswith(f"{path}: is corrupt (")


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "cut.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    message = error_of(path)
    assert message.startswith(f"{path}: is truncated or corrupt (")
    assert "truncated" in message.split("(", 1)[1]  # Pillow's own words follow


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)

    def denied(file: Any, mode: str = "r") -> Any:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(images, "open", denied, raising=False)  # works as root too
    assert error_of(path) == f"{path}: cannot be read (permission denied)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    assert error_of(path) == f"{path}: is not a regular file"


def test_unsupported_source_type() -> None:
    assert error_of(3.5) == (
        "<float>: is not a path, image bytes, a binary file object, a PIL image or a numpy array "
        "of pixels"
    )
    assert error_of(io.StringIO("text")).startswith("<StringIO>: is not a path")


# --- bytes and file objects ----------------------------------------------------------------------


def test_bytes_and_file_objects_read_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)).save(path)
    expected = pixels(load_image(path))
    data = path.read_bytes()
    assert pixels(load_image(data)) == expected
    assert pixels(load_image(bytearray(data))) == expected
    assert pixels(load_image(memoryview(data))) == expected
    stream = io.BytesIO(data)
    stream.seek(4)  # read from the start, as Pillow does
    assert pixels(load_image(stream)) == expected
    assert not stream.closed  # the caller's object, left open
    with open(path, "rb") as handle:
        assert pixels(load_image(handle)) == expected


def test_bytes_problems_are_named() -> None:
    assert error_of(b"") == "<bytes>: is empty (0 bytes)"
    assert error_of(b"hello, not an image") == "<bytes>: is not an image Pillow can read"
    assert error_of(io.BytesIO()) == "<file object>: is empty (0 bytes)"


def test_file_object_is_named_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with open(path, "rb") as handle:
        assert error_of(handle) == f"{path}: is not an image Pillow can read"


def test_huge_image_bytes_refused_from_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blank_png(tmp_path / "huge.png", 20000, 20000).read_bytes()
    decoded: list[bool] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(True))
    with pytest.raises(PixelLimitError) as caught:
        load_image(data)
    assert str(caught.value).startswith("<bytes>: is 20000x20000 pixels (400.0 megapixels), over")
    assert not decoded
    with pytest.raises(PixelLimitError, match="over the limit of 99 pixels"):
        load_image(
            io.BytesIO(blank_png(tmp_path / "small.png", 10, 10).read_bytes()), max_pixels=99
        )


# --- size limit ----------------------------------------------------------------------------------


def test_huge_image_refused_from_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = blank_png(tmp_path / "huge.png", 20000, 20000)  # decodes to 400 MB, about 50 kB on disk
    assert path.stat().st_size < 200_000
    decoded: list[bool] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(True))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may surface
        message = error_of(path)
    assert message == (
        f"{path}: is 20000x20000 pixels (400.0 megapixels), over the limit of 64.0 megapixels; "
        "pass max_pixels= (--max-pixels) to raise it"
    )
    assert not decoded
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's limit refused it first: restored


def test_image_in_pillows_warning_band_gets_our_error(tmp_path: Path) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    assert MAX_PIXELS < 100_000_000 < 2 * Image.MAX_IMAGE_PIXELS  # Pillow warns, does not refuse
    path = blank_png(tmp_path / "big.png", 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = error_of(path)
    assert "is 10000x10000 pixels (100.0 megapixels), over the limit of 64.0 megapixels" in message


def test_max_pixels_raised_lets_a_big_image_through(tmp_path: Path) -> None:
    path = blank_png(tmp_path / "big.png", 3000, 3000)
    message = error_of(path, max_pixels=8_999_999)
    assert "is 3000x3000 pixels (9.0 megapixels), over the limit of 9.0 megapixels" in message
    img = load_image(path, max_pixels=9_000_000)
    assert img.mode == "RGB" and img.size == (3000, 3000)
    assert not np.asarray(img).any()


def test_our_limit_governs_over_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    refused = blank_png(tmp_path / "refused.png", 50, 50)  # 2500 > 2 * 100: Pillow would refuse
    warned = blank_png(tmp_path / "warned.png", 15, 10)  # 150 > 100: Pillow would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(refused).size == (50, 50)
        assert load_image(warned).size == (15, 10)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    assert error_of(refused, max_pixels=2499).endswith(
        "is 50x50 pixels (2500 pixels), over the limit of 2499 pixels; "
        "pass max_pixels= (--max-pixels) to raise it"
    )


def test_bad_max_pixels() -> None:
    with pytest.raises(CamlensError, match="max_pixels must be a positive number"):
        load_image(np.zeros((1, 1), np.uint8), max_pixels=0)


# --- modes ---------------------------------------------------------------------------------------


def test_16_bit_png_scaled_by_its_full_range(tmp_path: Path) -> None:
    values = [0, 128, 129, 257, 385, 386, 1000, 32768, 65534, 65535]
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([values], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    expected = [0, 0, 1, 1, 1, 2, 4, 128, 255, 255]  # round(v / 257), by hand
    assert expected == [round(v / 257) for v in values]
    assert pixels(load_image(path)) == [[(v, v, v) for v in expected]]


def test_16_bit_big_endian_image() -> None:
    values = np.array([[0, 300, 65535]], dtype=">u2")
    img = Image.frombytes("I;16B", (3, 1), values.tobytes())
    assert pixels(load_image(img)) == [[(0, 0, 0), (1, 1, 1), (255, 255, 255)]]


def test_32_bit_integer_image_in_16_bit_range() -> None:
    img = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))
    assert img.mode == "I"
    assert pixels(load_image(img)) == [[(0, 0, 0), (4, 4, 4), (255, 255, 255)]]


def test_float_image_in_unit_range() -> None:
    img = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert img.mode == "F"
    assert pixels(load_image(img)) == [[(0, 0, 0), (64, 64, 64), (255, 255, 255)]]  # 63.75 -> 64


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(path)
    assert pixels(load_image(path)) == [[(0, 0, 0), (77, 77, 77), (255, 255, 255)]]


def test_bilevel_mode_1(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    img.save(path)
    assert Image.open(path).mode == "1"
    assert pixels(load_image(path)) == [[(0, 0, 0), (255, 255, 255)]]


def test_palette(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30])
    img.putpixel((1, 0), 1)
    img.save(path)
    assert Image.open(path).mode == "P"
    assert pixels(load_image(path)) == [[(0, 0, 0), (10, 200, 30)]]


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    path = tmp_path / "transparent.gif"
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30])
    img.putpixel((1, 0), 1)
    img.save(path, transparency=0)
    assert Image.open(path).info["transparency"] == 0
    assert pixels(load_image(path)) == [[(255, 255, 255), (10, 200, 30)]]


def test_palette_with_partial_alpha(tmp_path: Path) -> None:
    path = tmp_path / "alpha-palette.png"
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 10, 200, 30, 0, 0, 200])
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    img.save(path, transparency=bytes([0, 255, 128]))
    blue = tuple(over_white(c, 128) for c in (0, 0, 200))
    assert blue == (127, 127, 227)  # 255 * 127 / 255 = 127; 200 * 128 / 255 + 127 = 227.39
    assert pixels(load_image(path)) == [[(255, 255, 255), (10, 200, 30), blue]]


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    rgba = np.array([[[200, 100, 0, 128], [9, 8, 7, 0], [1, 2, 3, 255]]], dtype=np.uint8)
    Image.fromarray(rgba).save(path)
    half = (over_white(200, 128), over_white(100, 128), over_white(0, 128))
    assert half == (227, 177, 127)  # 200 * 128/255 + 127 = 227.39, 100 * 128/255 + 127 = 177.20
    assert pixels(load_image(path)) == [[half, (255, 255, 255), (1, 2, 3)]]


def test_la_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[60, 128], [60, 0], [60, 255]]], dtype=np.uint8)).save(path)
    assert Image.open(path).mode == "LA"
    assert over_white(60, 128) == 157  # 60 * 128/255 + 127 = 157.12
    assert pixels(load_image(path)) == [[(157, 157, 157), (255, 255, 255), (60, 60, 60)]]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_as_pillow_converts_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cmyk{suffix}"
    img = Image.new("CMYK", (16, 8), (0, 255, 255, 0))
    img.paste((100, 50, 0, 20), (8, 0, 16, 8))
    img.save(path)
    with Image.open(path) as opened:
        assert opened.mode == "CMYK"
        expected = np.asarray(opened.convert("RGB"))
    loaded = np.asarray(load_image(path))
    assert np.array_equal(loaded, expected)
    if suffix == ".tif":  # lossless: the values by hand, (255 - c) * (255 - k) / 255
        assert tuple(loaded[0, 0]) == (255, 0, 0)
        assert tuple(loaded[0, 8]) == (143, 189, 235)


def test_ycbcr_as_pillow_converts_it() -> None:
    img = Image.new("YCbCr", (1, 1), (128, 60, 200))
    assert pixels(load_image(img)) == pixels(img.convert("RGB"))


@pytest.mark.parametrize(("orientation", "red_on_top"), [(6, True), (8, False)])
def test_exif_rotated_jpeg_comes_out_upright(
    tmp_path: Path, orientation: int, red_on_top: bool
) -> None:
    # stored 40 wide x 20 high, red left half; tag 6 says "turn 90 degrees clockwise to view",
    # which brings the left edge to the top; tag 8 ("counter-clockwise") brings it to the bottom
    path = tmp_path / f"rotated-{orientation}.jpg"
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = loaded.getpixel((10, 5)), loaded.getpixel((10, 35))
    red, blue = (top, bottom) if red_on_top else (bottom, top)
    assert isinstance(red, tuple) and isinstance(blue, tuple)
    assert red[0] > 240 and red[2] < 15
    assert blue[2] > 240 and blue[0] < 15


def test_open_pil_image_is_loaded_into_a_new_image(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)).save(path)
    with Image.open(path) as opened:
        loaded = load_image(opened)
        assert loaded is not opened
    assert pixels(loaded) == [[(1, 2, 3), (4, 5, 6)]]


def test_pil_image_with_closed_file_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (2, 2)).save(path)
    handle = path.open("rb")
    opened = Image.open(handle)
    handle.close()
    message = error_of(opened)
    assert message.startswith("<PIL image>: is truncated or corrupt (")


# --- numpy arrays --------------------------------------------------------------------------------


def test_numpy_uint8_rgb_and_gray() -> None:
    rgb = np.array([[[1, 2, 3], [250, 251, 252]]], dtype=np.uint8)
    assert pixels(load_image(rgb)) == [[(1, 2, 3), (250, 251, 252)]]
    assert pixels(load_image(np.array([[0, 9]], dtype=np.uint8))) == [[(0, 0, 0), (9, 9, 9)]]
    rgb[0, 0] = 0  # the image does not share the caller's memory
    assert pixels(load_image(rgb[:, :1])) == [[(0, 0, 0)]]


def test_numpy_float_in_unit_range() -> None:
    array = np.array([[[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]]], dtype=np.float32)
    # 127.5 -> 128 (numpy rounds halves to even), 63.75 -> 64, 191.25 -> 191, 25.5 -> 26
    assert pixels(load_image(array)) == [[(0, 128, 255), (64, 191, 26)]]


def test_numpy_rgba_composited_over_white() -> None:
    array = np.array([[[200, 100, 0, 128]]], dtype=np.uint8)
    assert pixels(load_image(array)) == [[(227, 177, 127)]]


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((2, 2, 2), np.uint8), "has shape (2, 2, 2); expected (H, W), (H, W, 3) or"),
        (np.zeros((2, 2, 3, 1), np.uint8), "has shape (2, 2, 3, 1); expected"),
        (np.zeros((0, 5), np.uint8), "has no pixels (shape (0, 5))"),
        (np.zeros((2, 2), np.int64), "has dtype int64; expected uint8 (0..255) or float (0..1)"),
        (np.array([[0.0, 2.5]]), "has float values from 0 to 2.5; expected floats in [0, 1]"),
        (np.array([[0.0, np.nan]]), "has NaN or infinite values"),
    ],
    ids=["two-channels", "four-dims", "empty", "int64", "over-one", "nan"],
)
def test_numpy_bad_arrays(array: np.ndarray, problem: str) -> None:
    assert error_of(array).startswith(f"<numpy array>: {problem}")


# --- preprocess ----------------------------------------------------------------------------------


def test_preprocess_nearest_values_by_hand() -> None:
    source = [[(0, 51, 255), (102, 153, 204)], [(255, 0, 10), (20, 30, 40)]]
    img = Image.fromarray(np.array(source, dtype=np.uint8))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    config = PreprocessConfig(input_size=(4, 6), interpolation="nearest", mean=mean, std=std)
    x = preprocess([img, img], config)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 6) and x.is_contiguous()
    # nearest, 2 -> 4 rows and 2 -> 6 columns: rows 0-1 and columns 0-2 come from source pixel 0
    for n in range(2):
        for c in range(3):
            for y in range(4):
                for col in range(6):
                    value = source[y // 2][col // 3][c]
                    expected = (value / 255 - mean[c]) / std[c]
                    assert abs(float(x[n, c, y, col]) - expected) < 1e-6


def test_preprocess_efficientnet_lite0_maps_v_to_v_over_255_times_2_minus_1() -> None:
    config = PreprocessConfig((16, 16), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T], axis=-1))
    x = preprocess([img], config)[0]
    source = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).double()
    assert torch.allclose(x.double(), source / 255 * 2 - 1, rtol=0, atol=1e-6)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


def test_preprocess_resizes_the_whole_image_without_crop() -> None:
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 75, 100))  # red first quarter: a center crop would lose it
    config = PreprocessConfig((8, 8), "box", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = preprocess([img], config)[0]
    # box filter, 300 -> 8 columns of 37.5 pixels: columns 0 and 1 are all red, 2 to 7 all blue
    expected = torch.zeros(3, 8, 8)
    expected[0, :, :2] = 1.0
    expected[2, :, 2:] = 1.0
    assert torch.equal(x, expected)


def test_preprocess_converts_other_modes_like_load_image() -> None:
    rgba = Image.fromarray(np.array([[[200, 100, 0, 128]]], dtype=np.uint8))
    config = PreprocessConfig((1, 1), "nearest", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = preprocess([rgba], config)
    assert torch.equal(x.flatten() * 255, torch.tensor([227.0, 177.0, 127.0]))


def test_preprocess_unknown_interpolation() -> None:
    config = PreprocessConfig(interpolation="sinc")
    with pytest.raises(CamlensError, match="unknown interpolation 'sinc': use one of nearest, "):
        preprocess([Image.new("RGB", (2, 2))], config)


def test_preprocess_interpolation_names() -> None:
    img = Image.new("RGB", (5, 3), (10, 20, 30))
    for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming", "BICUBIC"):
        x = preprocess([img], PreprocessConfig((4, 4), name, (0.0,) * 3, (1.0,) * 3))
        assert torch.allclose(x[0, :, 2, 2] * 255, torch.tensor([10.0, 20.0, 30.0]), atol=1e-4)


def test_preprocess_empty_list() -> None:
    assert preprocess([], PreprocessConfig((5, 7))).shape == (0, 3, 5, 7)


def test_denormalize_inverts_preprocess() -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    config = PreprocessConfig((5, 7), "nearest")  # ImageNet mean and std
    x = preprocess([Image.fromarray(array)], config)
    expected = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(denormalize(x, config)[0], expected, rtol=0, atol=1e-6)
    assert torch.allclose(denormalize(x[0], config), expected, rtol=0, atol=1e-6)
    assert np.array_equal(np.asarray(tensor_to_image(x[0], config)), array)


def test_bgr_channel_order() -> None:
    """Blue, green, red to the model, mean and std in that order; back to RGB pictures."""
    img = Image.new("RGB", (3, 2), (10, 20, 30))
    config = PreprocessConfig((2, 3), "nearest", (0.1, 0.2, 0.3), (0.5, 0.25, 0.125), "BGR")
    x = preprocess([img], config)
    expected = (
        torch.tensor([30.0, 20.0, 10.0]) / 255 - torch.tensor([0.1, 0.2, 0.3])
    ) / torch.tensor([0.5, 0.25, 0.125])
    assert torch.allclose(x[0, :, 1, 2], expected, atol=1e-6)
    assert np.array_equal(np.asarray(tensor_to_image(x[0], config)), np.asarray(img))
    with pytest.raises(CamlensError, match="channel_order must be 'RGB' or 'BGR', not 'GBR'"):
        preprocess([img], PreprocessConfig(channel_order="GBR"))


def test_denormalize_clips_to_unit_range() -> None:
    config = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).repeat(3, 1, 1)
    assert torch.equal(denormalize(x, config)[0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_denormalize_and_tensor_to_image_check_shapes() -> None:
    config = PreprocessConfig()
    with pytest.raises(CamlensError, match=r"not \[4, 2, 2\]"):
        denormalize(torch.zeros(4, 2, 2), config)
    with pytest.raises(CamlensError, match=r"expected a \[3, H, W\] tensor, not \[1, 3, 2, 2\]"):
        tensor_to_image(torch.zeros(1, 3, 2, 2), config)


# --- finding files -------------------------------------------------------------------------------


def test_find_images(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for name in [
        "b.jpg",
        "A.PNG",
        "notes.txt",
        ".hidden.jpg",
        ".cache/x.jpg",
        "sub/c.webp",
        "sub/deeper/d.tiff",
        "sub-2/e.gif",
        "sub/readme.md",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    given = [
        root / "notes.txt",
        root,
        tmp_path / "missing.jpg",
        root / ".hidden.jpg",
        root / "b.jpg",
    ]
    assert find_images([str(p) for p in given]) == [
        root / "notes.txt",  # named: kept whatever its suffix
        root / "A.PNG",  # suffixes compare in lower case
        root / "b.jpg",
        root / "sub" / "c.webp",
        root / "sub" / "deeper" / "d.tiff",
        root / "sub-2" / "e.gif",
        tmp_path / "missing.jpg",  # does not exist: kept for the loader to report
        root / ".hidden.jpg",  # named: kept although hidden
    ]  # b.jpg, named again at the end, appears once


def test_image_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES
    assert isinstance(IMAGE_SUFFIXES, frozenset)


def test_every_suffix_loads(tmp_path: Path) -> None:
    for suffix in sorted(IMAGE_SUFFIXES):
        path = tmp_path / f"img{suffix}"
        Image.new("RGB", (3, 2), (0, 128, 255)).save(path)
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (3, 2), suffix


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_loaded_file_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)

    def open_on_path() -> int:
        fds = Path("/proc/self/fd").iterdir()
        return sum(1 for fd in fds if os.path.realpath(fd) == os.path.realpath(path))

    img = load_image(path)
    assert open_on_path() == 0
    path.unlink()  # the pixels are already in memory
    assert img.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128x68", (128, 68)),  # height 128, width 68: a tall pedestrian window
        ("68X128", (68, 128)),
        (" 224 x 160 ", (224, 160)),
        ("224", (224, 224)),
        (96, (96, 96)),
        ((120, 80), (120, 80)),
    ],
)
def test_parse_size_is_height_by_width(text: Any, expected: tuple[int, int]) -> None:
    assert images.parse_size(text) == expected
    # the order of PreprocessConfig.input_size: a batch comes out [N, 3, height, width]
    config = PreprocessConfig(images.parse_size(text))
    x = preprocess([Image.new("RGB", (50, 30))], config)
    assert tuple(x.shape) == (1, 3, *expected)


@pytest.mark.parametrize(
    "text", ["128x", "x68", "128x68x3", "12.5", "-4", "0x10", "", "ax b", True]
)
def test_parse_size_refuses_other_text(text: Any) -> None:
    with pytest.raises(CamlensError, match="input size"):
        images.parse_size(text)

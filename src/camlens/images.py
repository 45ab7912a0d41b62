"""Reading images safely and turning them into model inputs.

Reading (:func:`load_image`): a path, a PIL image or a numpy array becomes an upright 8-bit RGB
image, whatever the file's mode; every problem is an :class:`~camlens.errors.ImageError` naming the
file. Files above :data:`MAX_PIXELS` are refused from their header, before any pixel is decoded.

Preprocessing: what a model expects of its input (size, interpolation, normalization), as in timm's
pretrained config; :func:`preprocess` applies it and :func:`denormalize` undoes it.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from camlens.errors import CamlensError, ImageError, PixelLimitError
from camlens.options import MAX_PIXELS as MAX_PIXELS  # the limit, beside its other checks
from camlens.options import parse_size as parse_size

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) that :func:`find_images` picks up inside directories."""

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Interpolation names accepted in :attr:`PreprocessConfig.interpolation` (case-insensitive)."""

_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})  # more than 8 bits a sample


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB photo becomes a model input.

    The whole photo is resized to ``input_size`` (no center crop), so that every pixel of the original
    has a place in the feature grid and maps can be laid over the full photo. ``channel_order``
    ``"BGR"`` feeds the model blue, green, red (Caffe-style models, Keras's VGG and ResNet); ``mean``
    and ``std`` are then given in that order too.
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    interpolation: str = "bicubic"  # a PIL resampling name: nearest, bilinear, bicubic, lanczos
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"  # or "BGR"


# --- reading -------------------------------------------------------------------------------------


def load_image(
    source: str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | IO[bytes]
    | Image.Image
    | npt.NDArray[Any],
    *,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Read ``source`` as an upright RGB image (mode ``"RGB"``, pixels loaded, no file left open).

    ``source`` is a path, the bytes of an image file (``bytes``, ``bytearray``, ``memoryview``),
    a binary file object open for reading and seekable (``io.BytesIO``, an upload; read from its
    start, as Pillow does, and left open), a PIL image or a numpy array (HxW, HxWx3 or HxWx4;
    uint8, or float in [0, 1]). The EXIF orientation is applied. Every mode becomes RGB: grayscale
    and bilevel are repeated over the channels; 16-bit samples are scaled by their full range
    (``round(v / 257)``, not clipped); 32-bit integer and float samples by the range they fit
    (float in [0, 1], 0..255, 0..65535, else their own min..max); palette, CMYK, YCbCr, LAB and
    HSV through Pillow; images with transparency (alpha, a palette alpha or a transparent colour)
    are composited over white, each channel ``round(c * a / 255 + 255 * (1 - a / 255))``.
    Multi-frame files give their first frame.

    A file (or bytes, or file object) whose header says it has more than ``max_pixels`` pixels
    (default :data:`MAX_PIXELS`, 64 megapixels) is refused before decoding, with a
    :class:`~camlens.errors.PixelLimitError`; Pillow's own decompression-bomb limit is set aside
    for that file, so this limit is the one that governs. PIL images and arrays are already
    decoded and are not limited.

    Raises :class:`~camlens.errors.ImageError` naming the source (bytes are ``<bytes>``, a file
    object its ``name`` or ``<file object>``) and the problem: no such file, a directory, an
    empty, unreadable, unrecognized, truncated or oversized file, or an array of the wrong shape,
    dtype or range.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise CamlensError(f"max_pixels must be a positive number of pixels, not {max_pixels!r}")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        label = str(getattr(source, "filename", "") or "<PIL image>")
        _decode(source, label)
        return _to_rgb(_upright(source, label), label)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return _to_rgb(_read_file(path, max_pixels), str(path))
    if isinstance(source, bytes | bytearray | memoryview):
        data = io.BytesIO(source)
        return _to_rgb(_read_stream(data, "<bytes>", len(data.getbuffer()), max_pixels), "<bytes>")
    if _is_binary_file(source):
        name = getattr(source, "name", None)
        label = name if isinstance(name, str) and name else "<file object>"
        return _to_rgb(_read_stream(source, label, None, max_pixels), label)
    raise ImageError(
        f"<{type(source).__name__}>",
        "is not a path, image bytes, a binary file object, a PIL image or a numpy array of pixels",
    )


def _is_binary_file(source: object) -> bool:
    """A readable, seekable file object that gives bytes."""
    read = getattr(source, "read", None)
    if not callable(read) or not callable(getattr(source, "seek", None)):
        return False
    if isinstance(source, io.TextIOBase):
        return False
    mode = getattr(source, "mode", "b")
    return not isinstance(mode, str) or "b" in mode


def _read_file(path: Path, max_pixels: int) -> Image.Image:
    """The decoded, upright image in ``path``, in its own mode; the file is closed on return."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ImageError(path, _os_problem(exc)) from None
    if stat.S_ISDIR(info.st_mode):
        try:
            os.scandir(path).close()
        except OSError as exc:  # a folder that cannot be listed: its images cannot be read
            raise ImageError(path, f"is a folder that {_os_problem(exc)}") from None
        if not _images_under(path):
            raise ImageError(path, "is a folder with no image files in it")
        raise ImageError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise ImageError(path, "is not a regular file")
    if info.st_size == 0:
        raise ImageError(path, "is empty (0 bytes)")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the ``with`` below
    except OSError as exc:
        raise ImageError(path, _os_problem(exc)) from None
    with handle:
        return _read_stream(handle, str(path), info.st_size, max_pixels)


def _read_stream(handle: IO[bytes], label: str, size: int | None, max_pixels: int) -> Image.Image:
    """The decoded, upright image in the open file ``handle`` (``size`` bytes long, if known), in
    its own mode; the size limit is checked from the header before any pixel is decoded."""
    if size is None:
        try:
            size = handle.seek(0, io.SEEK_END)
            handle.seek(0)
        except (OSError, ValueError) as exc:
            raise ImageError(label, f"cannot be read ({exc})") from None
    if size == 0:
        raise ImageError(label, "is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = _open(handle)
        except UnidentifiedImageError:
            raise ImageError(label, "is not an image Pillow can read") from None
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageError(label, f"is corrupt ({_pillow_says(exc)})") from exc
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise PixelLimitError(
                    label,
                    f"is {width}x{height} pixels ({_count(width * height)}), over the limit of "
                    f"{_count(max_pixels)}; pass max_pixels= (--max-pixels) to raise it",
                )
            _decode(img, label)
            if img.format == "PNG" and (img.info.get("interlace") or _bottom_row_blank(img)):
                _check_png_data(handle, label)
            return _upright(img, label)


def _open(handle: IO[bytes]) -> Image.Image:
    """``Image.open``, reading the header again with Pillow's bomb check off if that check refused
    it, so that the caller can compare the size with its own limit."""
    try:
        return Image.open(handle)
    except Image.DecompressionBombError:
        handle.seek(0)
        with _pillow_limit_off():
            return Image.open(handle)


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's ``MAX_IMAGE_PIXELS`` check off for the duration only (restored after, even on error).

    Used only for images over Pillow's limit, once our own ``max_pixels`` has allowed them (or to
    read the size of one Pillow refused before we could see it).
    """
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(img: Image.Image, label: str) -> None:
    """Decode all the pixels now, so that a truncated or corrupt file fails here."""
    limit = Image.MAX_IMAGE_PIXELS
    over = limit is not None and img.width * img.height > limit
    try:
        with _pillow_limit_off() if over else nullcontext():
            img.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageError(label, f"is truncated or corrupt ({_pillow_says(exc)})") from exc


def _bottom_row_blank(img: Image.Image) -> bool:
    """The last row is all zero bytes: what Pillow leaves where a PNG's pixel data stopped."""
    return not img.crop((0, img.height - 1, img.width, img.height)).tobytes().strip(b"\0")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, gray+A, RGBA
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _check_png_data(handle: IO[bytes], label: str) -> None:
    """An :class:`~camlens.errors.ImageError` if the PNG in ``handle`` holds fewer rows of pixel
    data than its header says. Pillow decodes such a file without a word (its zlib stream ends
    cleanly, before the last row) and leaves the missing rows black; this inflates the data again,
    a block at a time, and counts the bytes."""
    try:
        handle.seek(8)  # the signature
        width = height = bits = interlace = 0
        inflate = zlib.decompressobj()
        found = 0
        while len(head := handle.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR" and length == 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(
                    ">IIBBBBB", handle.read(13)
                )
                bits = depth * _PNG_CHANNELS.get(colour, 1)
            elif kind == b"IDAT":
                left = length
                while left and (block := handle.read(min(left, 1 << 16))):
                    left -= len(block)
                    while block and not inflate.eof:
                        found += len(inflate.decompress(block, 1 << 20))
                        block = inflate.unconsumed_tail
                handle.seek(left, io.SEEK_CUR)
            elif kind == b"IEND":
                break
            else:
                handle.seek(length, io.SEEK_CUR)
            handle.seek(4, io.SEEK_CUR)  # the CRC
    except (OSError, ValueError, struct.error, zlib.error):
        return  # Pillow read it: what it says stands
    passes = (
        [((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in _ADAM7]
        if interlace
        else [(width, height)]
    )
    promised = sum(h * (1 + (w * bits + 7) // 8) for w, h in passes if w and h)
    if bits and found < promised:
        if interlace:
            held = f"{100 * found // promised}% of the pixel data its header promises"
        else:
            held = f"{found // (1 + (width * bits + 7) // 8)} of its {height} rows of pixels"
        raise ImageError(label, f"is truncated: its data holds {held}")


def _upright(img: Image.Image, label: str) -> Image.Image:
    """A new image turned as its EXIF orientation says; unturned (with a warning) if the EXIF data
    cannot be read."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        warnings.warn(
            f"{label}: EXIF orientation ignored, unreadable ({_pillow_says(exc)})",
            UserWarning,
            stacklevel=3,
        )
        return img.copy()


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """``img`` in mode RGB (``img`` itself if it already is and has no transparency)."""
    if img.mode in _WIDE_MODES:
        img = _wide_to_l(img)
    elif img.mode == "La":  # premultiplied: Pillow converts it to LA only
        img = img.convert("LA")
    if img.has_transparency_data:
        return Image.fromarray(_over_white(np.asarray(img.convert("RGBA"))))
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(label, f"has mode {img.mode}, which Pillow cannot convert to RGB") from exc


def _wide_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit L (LA if a sample value is the
    transparent one)."""
    samples = np.asarray(img)
    gray = _to_uint8(samples)
    key = img.info.get("transparency")
    if isinstance(key, int | float) and not isinstance(key, bool):
        alpha = np.where(samples == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=-1))
    return Image.fromarray(gray)


def _to_uint8(samples: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Wide samples scaled to 0..255 by the range of their type (16-bit: ``round(v / 257)``)."""
    if samples.dtype.kind == "u" and samples.dtype.itemsize == 2:
        return ((samples.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)
    values = np.nan_to_num(samples.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if samples.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:  # no known range: stretch what there is
        scaled = (values - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _over_white(rgba: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """RGBA pixels composited over white: ``round(c * a / 255 + 255 * (1 - a / 255))``, exactly."""
    wide = rgba.astype(np.uint32)
    rgb, alpha = wide[..., :3], wide[..., 3:]
    # (x + 127) // 255 rounds x / 255 to nearest: x / 255 is never halfway for an integer x
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _from_array(array: npt.NDArray[Any]) -> Image.Image:
    label = "<numpy array>"
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(
            label, f"has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4) pixels"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(label, f"has no pixels (shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(label, "has NaN or infinite values; expected floats in [0, 1]")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                label, f"has float values from {low:g} to {high:g}; expected floats in [0, 1]"
            )
        array = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(
            label, f"has dtype {array.dtype}; expected uint8 (0..255) or float (0..1) pixels"
        )
    array = np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return Image.fromarray(_over_white(array))
    return _to_rgb(Image.fromarray(array), label)


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "cannot be read (permission denied)"
    return f"cannot be read ({exc.strerror or exc})"


def _pillow_says(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _count(pixels: int) -> str:
    """``"400.0 megapixels"``; small counts in pixels, so that a low limit does not read as 0.0."""
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


# --- model inputs --------------------------------------------------------------------------------


def preprocess(images: Sequence[Image.Image], config: PreprocessConfig) -> torch.Tensor:
    """A float32 batch [N, 3, H, W] for the model: each whole image resized to
    ``config.input_size`` (no crop) with ``config.interpolation``, scaled to [0, 1], its channels
    in ``config.channel_order``, then ``(x - mean) / std``. Images not in RGB are converted as
    :func:`load_image` does."""
    resample = _resampling(config.interpolation)
    height, width = _input_size(config)
    mean, std = _mean_std(config)
    bgr = _is_bgr(config)
    pixels = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise CamlensError(f"image {i} is a {type(img).__name__}, not a PIL image")
        rgb = img if img.mode == "RGB" else _to_rgb(img, f"<image {i}>")
        pixels[i] = np.asarray(rgb.resize((width, height), resample))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    if bgr:
        x = x.flip(1)
    x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    x.div_(255.0).sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
    return x


def denormalize(x: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Undo the normalization of :func:`preprocess` on [N, 3, H, W] or [3, H, W]: ``x * std +
    mean``, clipped to [0, 1], with the channels back in RGB order."""
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise CamlensError(f"expected a [3, H, W] or [N, 3, H, W] tensor, not {list(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    mean, std = (t.to(x.device, x.dtype).view(3, 1, 1) for t in _mean_std(config))
    pixels = (x * std + mean).clamp(0.0, 1.0)
    return pixels.flip(-3) if _is_bgr(config) else pixels


def tensor_to_image(x3hw: torch.Tensor, config: PreprocessConfig) -> Image.Image:
    """A normalized [3, H, W] model input as an 8-bit RGB image (for inputs with no photo)."""
    if x3hw.ndim != 3:
        raise CamlensError(f"expected a [3, H, W] tensor, not {list(x3hw.shape)}")
    values = denormalize(x3hw.detach(), config).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(values.permute(1, 2, 0).cpu().numpy()))


def _resampling(name: str) -> Image.Resampling:
    try:
        return RESAMPLING[name.lower()]
    except (KeyError, AttributeError):
        raise CamlensError(
            f"unknown interpolation {name!r}: use one of {', '.join(RESAMPLING)}"
        ) from None


def _input_size(config: PreprocessConfig) -> tuple[int, int]:
    try:
        size = tuple(config.input_size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size
    ):
        raise CamlensError(f"input_size must be (height, width) in pixels, not {config.input_size}")
    return size[0], size[1]


def _is_bgr(config: PreprocessConfig) -> bool:
    order = str(config.channel_order).upper()
    if order not in ("RGB", "BGR"):
        raise CamlensError(f"channel_order must be 'RGB' or 'BGR', not {config.channel_order!r}")
    return order == "BGR"


def _mean_std(config: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mean = torch.tensor(config.mean, dtype=torch.float32)
        std = torch.tensor(config.std, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise CamlensError(
            f"mean and std need 3 numbers each, not {config.mean!r} and {config.std!r}"
        ) from None
    if mean.shape != (3,) or std.shape != (3,):
        raise CamlensError(f"mean and std need 3 values each, not {config.mean} and {config.std}")
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise CamlensError(
            f"mean and std must be finite numbers, not {config.mean} and {config.std}"
        )
    if not bool((std != 0).all()):
        raise CamlensError(f"std must not be 0: {config.std}")
    return mean, std


def check_preprocess(config: PreprocessConfig) -> PreprocessConfig:
    """``config`` when :func:`preprocess` can use it; otherwise a
    :class:`~camlens.errors.CamlensError` naming the field at fault (an input size that is not two
    positive whole numbers, an unknown interpolation, a mean or std that is not three finite
    numbers, a std of 0)."""
    if not isinstance(config, PreprocessConfig):
        raise CamlensError(f"preprocess must be a PreprocessConfig, not {type(config).__name__}")
    _input_size(config)
    _resampling(config.interpolation)
    _mean_std(config)
    return config


# --- finding files -------------------------------------------------------------------------------


def find_images(
    paths: Sequence[str | os.PathLike[str]], *, empty_folders: bool = False
) -> list[Path]:
    """The image files named by ``paths``, in the order given, each once (as first named: ``x.jpg``
    and ``a/../x.jpg``, or a link to it, are one file).

        A directory gives the files under it (recursively, sorted) whose suffix is in
        :data:`IMAGE_SUFFIXES`, skipping hidden files and directories (names starting with ``.``) and
        not following symbolic links to directories. Any other path is kept as it is, even one that
        does not exist or is not an image, so that :func:`load_image` reports the problem; with
        ``empty_folders``, so is a directory with no image file under it (``load_image`` says "is a
        folder with no image files in it"), where it would otherwise give nothing, unsaid.
    """
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        unlisted: list[Path] = []  # folders below that cannot be listed: inputs that say so
        files = _images_under(path, unlisted) if path.is_dir() else [path]
        for file in [*(files or ([path] if empty_folders else [])), *unlisted]:
            found.setdefault(os.path.realpath(file), file)  # a file named twice is one input
    return list(found.values())


def _images_under(root: Path, unlisted: list[Path] | None = None) -> list[Path]:
    """The image files under ``root``; the folders below it that cannot be listed (permission
    denied) go to ``unlisted``, never skipped unsaid."""
    files: list[Path] = []

    def missed(exc: OSError) -> None:
        if unlisted is not None and exc.filename is not None and Path(exc.filename) != root:
            unlisted.append(Path(exc.filename))

    for folder, dirs, names in os.walk(root, onerror=missed):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(
            Path(folder, name)
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(files, key=lambda file: file.relative_to(root).parts)

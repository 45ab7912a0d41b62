"""How long the image size limit takes to refuse a decompression bomb: a 20000 x 20000 PNG
(400 megapixels, about 50 kB on disk) refused from its header by ``camlens.load_image``, against
decoding a 640 x 480 JPEG, interleaved (``tests/test_images.py`` checks that no pixel is decoded;
the time is measured here, not asserted in a unit test).

    python benchmarks/limits.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from camlens.errors import ImageError
from camlens.images import load_image


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, written row by row (no image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="camlens-limits-"))
    bomb = blank_png(folder / "bomb.png", 20000, 20000)
    photo = folder / "photo.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo, quality=90)
    refused, decoded = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        try:
            load_image(bomb)
        except ImageError:
            pass
        else:
            raise SystemExit("the bomb was not refused")
        refused.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_image(photo)
        decoded.append(time.perf_counter() - start)
    r, d = statistics.median(refused), statistics.median(decoded)
    print(
        f"{bomb.stat().st_size / 1e3:.0f} kB PNG of 20000x20000 refused in {r * 1e3:.2f} ms "
        f"(median of {args.rounds}); a 640x480 JPEG decoded in {d * 1e3:.2f} ms; ratio {r / d:.2f}"
    )


if __name__ == "__main__":
    main()

"""Schemathesis hooks for ``tests/test_serve_contract.py``: the photo parts of ``POST
/api/explain`` (``image/*`` in the OpenAPI document) are real images, PNG or JPEG, of random sizes
and colours (random bytes would all be 415s, which the document already promises)."""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def encode(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def photos(fmt: str) -> st.SearchStrategy[bytes]:
    side = st.integers(min_value=1, max_value=96)
    return st.builds(encode, st.just(fmt), side, side, st.integers(0, 2**16))


schemathesis.openapi.media_type("image/png", photos("PNG"))
schemathesis.openapi.media_type("image/jpeg", photos("JPEG"))

"""Generated test pictures for the benchmarks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def screenshot(seed: int) -> bytes:
    """A 1280×720 JPEG with smooth structure (compresses like a real screenshot, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(9, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((1280, 720), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()

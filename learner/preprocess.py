"""CLIP's image preprocessing without torchvision: Pillow + numpy, following the settings of
transformers' PIL CLIP image processor (``CLIPImageProcessorPil``), which the tests check it
against. :class:`PreprocessSettings` resizes and crops one image; the encoder batches and
normalises (learner/encoder.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from learner.images import to_rgb


@dataclass(frozen=True)
class PreparedImage:
    """An image resized, cropped and normalised for one encoder: (3, H, W) float32 pixels."""

    pixels: npt.NDArray[np.float32]


MAX_RESIZED_PIXELS = 16_000_000  # larger resizes (aspect > ~318:1) resize only the crop's region


class PreprocessSettings:
    """The few numbers from a CLIP image processor that preprocessing needs."""

    def __init__(
        self,
        *,
        shortest_edge: int | None,
        resize_hw: tuple[int, int] | None,
        crop_hw: tuple[int, int],
        resample: Image.Resampling,
        rescale_factor: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.shortest_edge = shortest_edge
        self.resize_hw = resize_hw
        self.crop_height, self.crop_width = crop_hw
        self.resample = resample
        self.rescale_factor = rescale_factor
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        std_ = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        mean_ = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        # (x * rescale - mean) / std  ==  x * scale - shift: one multiply, one subtract
        self.scale = np.float32(rescale_factor) / std_
        self.shift = mean_ / std_

    @classmethod
    def from_processor(cls, processor: Any) -> PreprocessSettings:
        if not (processor.do_resize and processor.do_center_crop):
            raise ValueError("CLIP preprocessing must resize and center crop")
        size, crop = processor.size, processor.crop_size
        shortest_edge = int(size.shortest_edge) if size.shortest_edge else None
        resize_hw = None if shortest_edge else (int(size.height), int(size.width))
        rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        mean, std = processor.image_mean, processor.image_std
        if not processor.do_normalize:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(
            shortest_edge=shortest_edge,
            resize_hw=resize_hw,
            crop_hw=(int(crop.height), int(crop.width)),
            resample=Image.Resampling(int(processor.resample)),
            rescale_factor=rescale,
            mean=mean,
            std=std,
        )

    def describe(self) -> str:
        return json.dumps(
            {
                "shortest_edge": self.shortest_edge,
                "resize_hw": self.resize_hw,
                "crop_hw": [self.crop_height, self.crop_width],
                "resample": int(self.resample),
                "rescale_factor": self.rescale_factor,
                "mean": self.mean,
                "std": self.std,
            },
            sort_keys=True,
        )

    def resize_and_crop(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """Resize and center crop one image; (H, W, 3) uint8."""
        im = to_rgb(image)
        width, height = im.size
        if self.shortest_edge is not None:
            # Same rounding as transformers' get_resize_output_image_size.
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            assert self.resize_hw is not None
            new_h, new_w = self.resize_hw
        top = (new_h - self.crop_height) // 2
        left = (new_w - self.crop_width) // 2
        if new_w * new_h > MAX_RESIZED_PIXELS and top >= 0 and left >= 0:
            # A thin strip (a 1 x 60000 PNG is 318 bytes) would be resized to gigapixels only
            # for the centre crop to be kept: resize just the source region that crop covers.
            return np.asarray(self._crop_of_resize(im, new_w, new_h, left, top), dtype=np.uint8)
        if (new_w, new_h) != im.size:
            im = im.resize((new_w, new_h), resample=self.resample)
        # Pillow fills a crop box that reaches outside the image with black, as transformers'
        # center_crop pads with zeros; the offsets round the same way.
        im = im.crop((left, top, left + self.crop_width, top + self.crop_height))
        return np.asarray(im, dtype=np.uint8)

    def _crop_of_resize(
        self, im: Image.Image, new_w: int, new_h: int, left: int, top: int
    ) -> Image.Image:
        """im.resize((new_w, new_h)) cropped at (left, top), without the whole resize.

        Two one-axis passes, horizontal then vertical, as Pillow orders them when it enlarges
        (every strip thinner than the crop): the pixels of the whole resize to within 2/255.
        One resize with a box differs by up to 20/255 on tall strips. Where Pillow shrinks it
        passes vertically first, and up to 9/255 differ. The first pass reads only the rows
        that the second's filter reaches."""
        width, height = im.size
        sx, sy = width / new_w, height / new_h
        y0, y1 = top * sy, (top + self.crop_height) * sy
        reach = 3.0 * max(1.0, sy) + 1.0  # filter support (Lanczos's 3 at most), source rows
        r0, r1 = max(0, int(y0 - reach)), min(height, int(np.ceil(y1 + reach)))
        x_box = (left * sx, r0, (left + self.crop_width) * sx, r1)
        rows = im.resize((self.crop_width, r1 - r0), resample=self.resample, box=x_box)
        y_box = (0, y0 - r0, self.crop_width, y1 - r0)
        return rows.resize((self.crop_width, self.crop_height), resample=self.resample, box=y_box)

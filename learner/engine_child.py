"""The child process that converts a large CLIP to OpenVINO (``python -m learner.engine_child
SPEC``), so the bot's own peak memory stays at one copy of the weights. Apart from
learner.engines because it needs the encoder, which needs the engines."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from learner import engine_cache, engines
from learner.encoder import ClipImageEncoder


def convert_in_child(spec: dict[str, Any]) -> None:
    """The child's side of :func:`_convert_somewhere`: load the model as the encoder did, check
    that it is the same encoder version, convert it."""
    import openvino as ov

    key = engine_cache.CacheKey(**{**spec["key"], "input_size": tuple(spec["key"]["input_size"])})
    encoder = ClipImageEncoder(
        spec["name"], device="cpu", revision=spec["revision"], text_tower=False, torch_threads=0
    )
    if encoder.version != key.encoder_version:
        raise engines.EngineFailed(f"the child loaded {encoder.version}, not {key.encoder_version}")
    model = encoder.model
    graph = engines.VisionGraph(model.vision_model, model.visual_projection)
    with engines.no_telemetry():
        engines._convert(graph, key, Path(spec["out"]), str(ov.__version__))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    convert_in_child(json.loads(sys.argv[1]))

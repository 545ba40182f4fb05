"""CLIP's features from a tower's outputs: pooled output -> projection -> L2 normalisation.

The image encoder, the text encoder and the fine-tune call the towers and projections directly
(``get_image_features``' return type changed in transformers 5, and this is all it does for
CLIP), so they share this last step.
"""

from __future__ import annotations

from typing import Any

import torch


def project(outputs: Any, projection: torch.nn.Module) -> torch.Tensor:
    """``outputs``' pooled output (``pooler_output``, or the second item of a tuple) through
    ``projection``, as float32 rows of unit length; gradients flow where they are enabled."""
    pooled = outputs.pooler_output if hasattr(outputs, "pooler_output") else outputs[1]
    features: torch.Tensor = projection(pooled).float()
    return torch.nn.functional.normalize(features, dim=-1)

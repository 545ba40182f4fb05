"""bf16 linear layers pre-packed for oneDNN on a CPU (:class:`PackedLinear`), and packing the
vision tower's, checked against the plain layers first."""

from __future__ import annotations

import torch
from transformers import CLIPModel


class PackedLinear(torch.nn.Module):
    """An inference-only ``nn.Linear`` whose weight is pre-packed for oneDNN (CPU, bf16).

    ``torch.nn.functional.linear`` in bf16 reorders the weight into oneDNN's blocked layout on
    every call; packing once at load time made a ViT-B/32 forward ~1.3x faster for one image
    and no slower in batches (an A/B of both in one process, README "Benchmarks"). The packed
    weight replaces the plain one, so this costs no memory.
    """

    def __init__(self, linear: torch.nn.Linear, rows_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.packed_weight, self.bias, "none", [], ""
        )
        return out


def pack_linear_layers(module: torch.nn.Module, rows_hint: int) -> int:
    """Replace every bf16 ``nn.Linear`` under ``module`` by a :class:`PackedLinear`; returns how
    many. ``rows_hint``: the rows (tokens) a typical call multiplies, oneDNN's blocking hint."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, PackedLinear(child, rows_hint))
                replaced += 1
    return replaced


def pack_vision_tower(model: CLIPModel, image_size: int) -> int:
    """Pack the vision tower's linear layers (see :class:`PackedLinear`); 0 where this torch
    cannot, or where packed and plain layers disagree (then nothing is changed)."""
    vision = model.vision_model
    tokens = int(vision.embeddings.num_positions)  # patches + class token: rows per image
    probe = torch.randn(
        (1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0)
    ).to(torch.bfloat16)
    plain = [
        (parent, name, child)
        for parent in vision.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]
    with torch.inference_mode():
        expected = vision(pixel_values=probe).pooler_output.float()
        try:
            packed = pack_linear_layers(vision, tokens)
            got = vision(pixel_values=probe).pooler_output.float()
            agree = float(torch.nn.functional.cosine_similarity(expected, got).min()) > 0.9999
        except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN in this build
            packed, agree = 0, False
    if not agree:
        for parent, name, child in plain:
            setattr(parent, name, child)
        return 0
    return packed

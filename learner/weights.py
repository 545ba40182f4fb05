"""What the encoder does to the weights it loaded: hash them for its version (casting each
tensor as it goes, :func:`hash_and_cast`), and copy the rest out of the mapped checkpoint file
once the vision tower is gone (:func:`own_copies`)."""

from __future__ import annotations

import hashlib

import torch

from learner.memory import release_pages as _release_pages


def own_copies(model: torch.nn.Module) -> None:
    """Copy what is left of ``model`` (the text tower, logit_scale) out of the checkpoint file
    ``from_pretrained`` mapped: while one tensor points into the mapping, all of it (the
    freed vision tower's pages too, ~350 MB for ViT-B/32) stays mapped and may stay resident."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            param.data = param.data.clone()
        for name, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buffer.clone()


def hash_and_cast(
    model: torch.nn.Module, dtype: torch.dtype, *, extra: str, release: bool = False
) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (as loaded, float32), plus
    ``extra``; each floating-point tensor is cast to ``dtype`` as soon as it is hashed, and the
    pages its float32 original was read from are released.

    ``from_pretrained`` maps the checkpoint file and reads it lazily. Hashing the whole model
    first and casting it after would keep every page of the float32 file resident beside the
    reduced copy: ~600 MB more at the peak for ViT-B/32 (bench/speed.py reports peak RSS).
    ``release``: release the pages of tensors that are not cast too (for another engine).
    """
    digest = hashlib.sha256()
    state = model.state_dict()  # float32 views: tied names hash the original weights too
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
        if not t.is_floating_point() or t.dtype == dtype:
            if release:  # another engine will hold the weights: torch's pages may go
                _release_pages(t)
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr in owner._parameters:
            param = owner._parameters[attr]
            assert param is not None
            param.data = param.data.to(dtype)
        elif owner._buffers.get(attr) is not None:
            owner._buffers[attr] = t.to(dtype)
        _release_pages(t)
    digest.update(extra.encode())
    return digest.hexdigest()

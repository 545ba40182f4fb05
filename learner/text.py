"""CLIP's text tower: captions in, L2-normalised float32 embeddings in the image embeddings' space.

A caption (or the text OCR finds in a screenshot, :mod:`learner.ocr`) is embedded with the same
CLIP whose vision tower embeds the image, and :func:`combine` folds it into the vector a head
sees: ``normalise(image + weight * text)``. With ``weight == 0`` (the default until a benchmark
with real captions shows text helps) heads see exactly the image embedding.

Text is optional. A model directory without tokenizer files (a bare ``save_pretrained`` of
``CLIPModel``) or a tokenizer that cannot be loaded makes :meth:`ClipTextEncoder.from_pretrained`
return None after one warning; the bot then scores images alone. The tokenizer is transformers'
``CLIPTokenizer`` on the ``tokenizers`` backend: no ``ftfy`` needed (transformers 5 does not use
it; its normaliser is NFC + whitespace collapse + lower case).

Sharing: pass ``model=image_encoder.model`` so the weights are loaded once. The text tower then
runs in whatever dtype and device the image encoder chose (bf16 on capable CPUs); embeddings are
float32 either way.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoTokenizer, CLIPModel, CLIPTextConfig

from learner.clip_features import project
from learner.model_source import ModelUnavailable, load_kwargs, short_name

log = logging.getLogger(__name__)

# What a tokenizer directory holds: tokenizer.json (fast), or vocab.json + merges.txt (the hub's
# openai/clip-vit-base-patch32 has both).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_warned: set[str] = set()  # model names whose missing tokenizer was already logged
_warned_lock = threading.Lock()


def _warn_once(name: str, message: str, *args: object) -> None:
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    log.warning(message, *args)


class ClipTextEncoder:
    """Embeds texts with CLIP's text tower and text projection.

    ``version`` names the text tower's weights, the text projection and the tokenizer
    (``"<name>-text@<hash12>"``): caption embeddings made under one version are comparable with
    each other only. A fine-tune that trains only the vision tower keeps it, and stored caption
    embeddings stay valid; heads trained on combined vectors belong to both versions.
    The weights are hashed rounded to bfloat16, so a tower shared with a bf16 image encoder
    has the fp32 one's version (the model's fp32 weights are gone by then); an fp16 tower
    (CUDA without bf16) may get another version, which only costs re-embedding captions.
    """

    def __init__(self, model: CLIPModel, tokenizer: Any, *, name: str = "clip") -> None:
        self.model = model
        self.tokenizer = tokenizer
        text_config = model.config.text_config
        if not isinstance(text_config, CLIPTextConfig):
            raise ValueError("CLIP config has no text config")
        projection_dim = model.config.projection_dim
        if projection_dim is None:
            raise ValueError("CLIP config has no projection_dim")
        self.dim: int = int(projection_dim)
        # CLIP's context: 77 tokens, start and end of text included.
        self.max_length: int = int(text_config.max_position_embeddings)
        eos = tokenizer.eos_token_id
        if eos is None or eos >= int(text_config.vocab_size):
            raise ValueError(f"tokenizer's end-of-text id {eos} is outside the text vocabulary")
        if text_config.eos_token_id not in (2, eos):
            # transformers pools at the first eos_token_id (or, for the legacy id 2, at the
            # highest id); a mismatch would pool at position 0 and embed every text alike.
            raise ValueError(
                f"text config eos_token_id {text_config.eos_token_id} != tokenizer's {eos}"
            )
        self.version: str = f"{name}-text@{self._digest()[:12]}"
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        model: CLIPModel | None = None,
        *,
        revision: str | None = None,
    ) -> ClipTextEncoder | None:
        """Load the tokenizer (and CLIPModel, unless ``model`` is given) from a directory or hub id
        (at ``revision``; a cached hub id and a directory without touching the network).

        Returns None, logging once per name, where there is no usable tokenizer: text is then
        disabled and images are scored alone.
        """
        name = short_name(model_name_or_path)
        path = Path(model_name_or_path)
        if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            _warn_once(
                model_name_or_path,
                "%s has no tokenizer files (%s): captions and OCR text are not used",
                model_name_or_path,
                " or ".join(_TOKENIZER_FILES),
            )
            return None
        try:
            load = load_kwargs(model_name_or_path, revision)
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **load)
        except (OSError, ValueError, KeyError, ModelUnavailable) as error:
            _warn_once(
                model_name_or_path,
                "no tokenizer for %s (%s): captions and OCR text are not used",
                model_name_or_path,
                error,
            )
            return None
        if model is None:
            model = CLIPModel.from_pretrained(model_name_or_path, dtype=torch.float32, **load)
            model.requires_grad_(False)
            torch.nn.Module.eval(model)
        return cls(model, tokenizer, name=name)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as an (n, dim) float32 array of unit-length rows.

        Texts longer than CLIP's context are cut at 77 tokens (end of text kept); an empty
        string is allowed (it embeds start + end of text).
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        chunks: list[npt.NDArray[np.float32]] = []
        device = next(self.model.parameters()).device
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = [str(t) for t in texts[start : start + batch_size]]
                tokens = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                chunks.append(
                    self._embed_tokens(
                        tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
                    )
                )
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks)

    def _embed_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> npt.NDArray[np.float32]:
        # text_model + text_projection directly, as ClipImageEncoder does for images. Padding
        # follows the end of text and the mask is causal, so padding never changes an embedding.
        outputs = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        features = project(outputs, self.model.text_projection)
        result: npt.NDArray[np.float32] = features.cpu().numpy().astype(np.float32, copy=False)
        return result

    def _digest(self) -> str:
        """sha256 over the text tower's and projection's weights (as bf16) and the tokenizer."""
        digest = hashlib.sha256()
        model = self.model
        for prefix, module in (
            ("text_model", model.text_model),
            ("text_projection", model.text_projection),
        ):
            for key, tensor in sorted(module.state_dict().items()):
                # bf16: what fp32 and bf16 copies of the same weights have in common
                t = tensor.detach().to("cpu", torch.bfloat16).contiguous()
                digest.update(f"{prefix}.{key}|{tuple(t.shape)}\n".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            digest.update(backend.to_str().encode())
        else:  # a slow tokenizer: its vocabulary is what matters
            digest.update(repr(sorted(self.tokenizer.get_vocab().items())).encode())
        digest.update(f"max_length={self.max_length}".encode())
        return digest.hexdigest()


def combine(
    image: npt.NDArray[np.float32],
    text: npt.NDArray[np.float32] | None,
    weight: float,
) -> npt.NDArray[np.float32]:
    """The vector a head sees: ``normalise(image + weight * text)``; works on (d,) and (n, d).

    ``image`` unchanged when ``text`` is None or ``weight`` is 0. ``text`` may be one (d,)
    vector for every row. A zero text row means "no text for this image": that row comes back
    as the (normalised) image alone, so callers can mix captioned and uncaptioned images.
    """
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"text weight must be finite and >= 0, got {weight}")
    if text is None or weight == 0:
        return image
    image = np.asarray(image, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    if image.shape[-1] != text.shape[-1] or text.ndim > image.ndim:
        raise ValueError(f"cannot combine image {image.shape} with text {text.shape}")
    mixed = image + np.float32(weight) * text
    norms = np.linalg.norm(mixed, axis=-1, keepdims=True)
    result: npt.NDArray[np.float32] = (mixed / np.maximum(norms, 1e-12)).astype(
        np.float32, copy=False
    )
    return result

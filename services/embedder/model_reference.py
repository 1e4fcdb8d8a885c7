"""`MMRAG_ENCODER_BACKEND=flagembedding`: the published reference implementation behind our encode() interface.

For cross-checking the native encoder on real weights, not for serving: the reference encodes one item at a
time (its attention mask is built in fp16, which breaks padded batches in bf16) and reads images from paths.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

INSTALL_HINT = (
    "the reference package `visual_bge` is not installed; install it with "
    "`pip install 'git+https://github.com/FlagOpen/FlagEmbedding.git#subdirectory=research/visual_bge'` "
    "or unset MMRAG_ENCODER_BACKEND to use the native encoder"
)


class ReferenceEncoder:
    """Wraps `visual_bge.modeling.Visualized_BGE` so it answers encode(images, texts) like VisualizedBGE."""

    is_random = False
    image_size = 224  # the reference's EVA02-CLIP-B-16 preprocessing

    def __init__(self, reference: Any, model_name: str, device: torch.device, dtype: torch.dtype) -> None:
        self._reference = reference
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.dim = int(reference.visual_proj.out_features)

    def encode(
        self,
        images: Sequence[Image.Image | None],
        texts: Sequence[str | None],
        *,
        batch_size: int | None = None,  # noqa: ARG002
        after_batch: Callable[[], object] | None = None,
    ) -> np.ndarray:
        """One item at a time whatever `batch_size` says: the reference cannot batch padded items in bf16."""
        if len(images) != len(texts):
            raise ValueError(f"images and texts differ in length: {len(images)} != {len(texts)}")
        rows = []
        for index, (image, text) in enumerate(zip(images, texts, strict=True)):
            rows.append(self._encode_one(image, text, index))
            if after_batch is not None:
                after_batch()
        return np.stack(rows).astype(np.float32)

    @torch.inference_mode()
    def _encode_one(self, image: Image.Image | None, text: str | None, index: int) -> np.ndarray:
        ref = self._reference
        has_text = text is not None and bool(text.strip())
        if image is None and not has_text:
            raise ValueError(f"items [{index}] have neither an image nor a text")
        tokens = ref.tokenizer(text if has_text else "", return_tensors="pt", padding=True).to(self.device)
        if image is None:
            vector = ref.encode_text(tokens)
        else:
            pixels = ref.preprocess_val(image).unsqueeze(0).to(self.device, self.dtype)
            vector = ref.encode_mm(pixels, tokens)
        return np.asarray(vector.float().cpu().numpy()[0])


def import_reference_modeling() -> Any:
    """The reference's `visual_bge.modeling` module; ImportError (with INSTALL_HINT) when it is not installed."""
    try:
        return importlib.import_module("visual_bge.modeling")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def load_reference_model(
    modeling: Any, name: str, weights: Path, text_model: str, device: torch.device, dtype: torch.dtype
) -> ReferenceEncoder:
    reference = modeling.Visualized_BGE(model_name_bge=text_model, model_weight=str(weights))
    reference.eval()
    reference.to(device=device, dtype=dtype)
    # The reference picks its own device at construction; keep it consistent with where we moved it.
    reference.device = device
    reference.dtype = dtype
    return ReferenceEncoder(reference, name, device, dtype)

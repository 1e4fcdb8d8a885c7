"""Visualized BGE on transformers (BERT / XLM-R) and timm (EVA02-CLIP tower), loading the official checkpoints.

Input layout follows the published reference: for an item with an image the text encoder sees
``[CLS] + projected image patch tokens + text tokens (without their [CLS])`` with position ids ``0, 1..P, P+1..``;
an item without text gets the empty prompt (``[SEP]``); an item without an image is plain BERT. The embedding is
the last layer's ``[CLS]`` state, L2-normalised.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import timm
import torch
import torchvision.transforms.functional as tvf
from PIL import Image
from timm.models.eva import Eva
from torch import nn
from torchvision.transforms import InterpolationMode
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PretrainedConfig,
    XLMRobertaConfig,
    XLMRobertaModel,
)

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# EVA02-CLIP-B-16's `vision_cfg`, the tower of bge-visualized-base-en-v1.5.
EVA02_CLIP_B16: dict[str, Any] = {
    "image_size": 224,
    "layers": 12,
    "width": 768,
    "head_width": 64,
    "patch_size": 16,
    "mlp_ratio": 2.6667,
    "rope": True,
    "pt_hw_seq_len": 16,
    "subln": True,
    "naiveswiglu": True,
}
# EVA02-CLIP-L-14's `vision_cfg`, the tower of bge-visualized-m3.
EVA02_CLIP_L14: dict[str, Any] = {**EVA02_CLIP_B16, "layers": 24, "width": 1024, "patch_size": 14}


# Checkpoint entries no inference pass reads: CLIP's contrastive temperature, the tower's final norm and
# projection head (the reference takes tokens before them), BERT's pooler (pooling is the raw [CLS] state).
_UNUSED_PREFIXES = (
    "model_visual.logit_scale",
    "model_visual.visual.norm.",
    "model_visual.visual.head.",
    "bge_pooler.",
)
# Buffers a real checkpoint carries that are functions of the config; ours are computed, not loaded.
_DERIVED_SUFFIXES = ("rope.freqs_cos", "rope.freqs_sin", "rope.freqs", "position_ids", "token_type_ids")

# EVA-CLIP parameter names -> timm's `Eva` names (the tower itself is the same network).
_EVA_RENAMES = (
    ("attn.inner_attn_ln.", "attn.norm."),
    ("attn.q_bias", "attn.q_proj.bias"),
    ("attn.v_bias", "attn.v_proj.bias"),
    ("mlp.ffn_ln.", "mlp.norm."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)


class CheckpointError(ValueError):
    """The weights do not fit the architecture: keys missing or of the wrong shape."""


@dataclass(frozen=True)
class VisionConfig:
    """The EVA-CLIP tower's shape, read from an EVA-CLIP `vision_cfg` dict."""

    image_size: int = 224
    layers: int = 12
    width: int = 768
    head_width: int = 64
    patch_size: int = 16
    mlp_ratio: float = 2.6667
    pt_hw_seq_len: int = 16

    @classmethod
    def from_eva_cfg(cls, cfg: Mapping[str, Any] | None) -> VisionConfig:
        merged = {**EVA02_CLIP_B16, **(cfg or {})}
        unsupported = [flag for flag in ("rope", "subln", "naiveswiglu") if not merged.get(flag, True)]
        if unsupported:
            raise ValueError(f"vision_config: only EVA02-CLIP towers are supported; these must be true: {unsupported}")
        if merged["width"] % merged["head_width"]:
            raise ValueError("vision_config: width must be a multiple of head_width")
        return cls(
            image_size=int(merged["image_size"]),
            layers=int(merged["layers"]),
            width=int(merged["width"]),
            head_width=int(merged["head_width"]),
            patch_size=int(merged["patch_size"]),
            mlp_ratio=float(merged["mlp_ratio"]),
            pt_hw_seq_len=int(merged["pt_hw_seq_len"]),
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_eva_tower(vision: VisionConfig) -> Eva:
    """timm's EVA02-CLIP tower without head and final norm: the reference feeds pre-norm tokens to BERT."""
    variant = "eva02_large_patch14_clip_224" if vision.patch_size == 14 else "eva02_base_patch16_clip_224"
    tower = timm.create_model(
        variant,
        pretrained=False,
        img_size=vision.image_size,
        patch_size=vision.patch_size,
        embed_dim=vision.width,
        depth=vision.layers,
        num_heads=vision.width // vision.head_width,
        mlp_ratio=vision.mlp_ratio,
        ref_feat_shape=(vision.pt_hw_seq_len, vision.pt_hw_seq_len),
        num_classes=0,
    )
    tower.norm = nn.Identity()
    return cast(Eva, tower)


def eva_clip_to_timm(key: str) -> str:
    """Rename one EVA-CLIP tower key (without the ``model_visual.visual.`` prefix) to timm's name."""
    for old, new in _EVA_RENAMES:
        key = key.replace(old, new)
    return key


def official_to_module_key(key: str) -> str | None:
    """Map an official checkpoint key to this module's parameter name; None for keys inference never reads."""
    if key.startswith(_UNUSED_PREFIXES) or key.endswith(_DERIVED_SUFFIXES):
        return None
    if key.startswith("bge_embeddings."):
        return "text.embeddings." + key.removeprefix("bge_embeddings.")
    if key.startswith("bge_encoder."):
        return "text.encoder." + key.removeprefix("bge_encoder.")
    if key.startswith("model_visual.visual."):
        return "vision." + eva_clip_to_timm(key.removeprefix("model_visual.visual."))
    return key


def _unwrap_state_dict(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Checkpoints saved from training scripts nest the weights one level down."""
    for wrapper in ("state_dict", "model", "module"):
        inner = raw.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return raw


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth checkpoint without executing pickled code; mmap keeps a 800 MB file out of RAM twice."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files from torch.save's legacy (pre-zip) format cannot be memory-mapped.
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a state dict (found {type(state).__name__})")
    return dict(_unwrap_state_dict(state))


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass(frozen=True)
class PreparedBatch:
    """CPU-side inputs for one forward pass: decoded pixels and token ids, grouped by input kind."""

    size: int
    image_rows: list[int] = field(default_factory=list)
    pixels: torch.Tensor | None = None  # uint8 (n_images, 3, S, S); normalised on the device
    image_text: TokenBatch | None = None
    text_rows: list[int] = field(default_factory=list)
    text_only: TokenBatch | None = None


def _tokens_to_tensors(encoded: Mapping[str, Any]) -> TokenBatch:
    return TokenBatch(
        input_ids=torch.as_tensor(encoded["input_ids"], dtype=torch.long),
        attention_mask=torch.as_tensor(encoded["attention_mask"], dtype=torch.long),
    )


def pixels_from_image(image: Image.Image, size: int) -> torch.Tensor:
    """Reference preprocessing up to the uint8 tensor: bicubic shortest side, centre crop, then RGB.

    The reference converts to RGB after resizing, and PIL resizes RGBA with premultiplied alpha, so the order
    changes the pixels of transparent images.
    """
    resized = tvf.resize(image, size, interpolation=InterpolationMode.BICUBIC)
    cropped = tvf.center_crop(resized, [size, size])
    rgb = cropped.convert("RGB") if cropped.mode != "RGB" else cropped
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """A (B, 1, 1, L) mask to add to attention scores, in the compute dtype; None when nothing is padded.

    Filled with the compute dtype's own minimum (the reference always uses fp16's and then casts, which is
    wrong for bf16); None for unpadded batches lets SDPA take its fastest kernel.
    """
    if bool(attention_mask.all()):
        return None
    blocked = (attention_mask == 0)[:, None, None, :]
    mask = torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)


def build_text_model(config: PretrainedConfig) -> BertModel | XLMRobertaModel:
    """BERT (bge-base-en-v1.5) or XLM-R (bge-m3) without its pooler, on SDPA attention."""
    config._attn_implementation = "sdpa"
    if isinstance(config, BertConfig):
        return BertModel(config, add_pooling_layer=False)
    if isinstance(config, XLMRobertaConfig):
        return XLMRobertaModel(config, add_pooling_layer=False)
    raise ValueError(f"text model type {config.model_type!r} is not supported; use a BERT or XLM-RoBERTa config")


class VisualizedBGE(nn.Module):
    """Visualized BGE: one vector for an image, a text, or an image with an instruction."""

    model_name: str
    is_random: bool
    image_size: int

    def __init__(
        self,
        text_config: PretrainedConfig,
        tokenizer: Any,
        vision_config: Mapping[str, Any] | None = None,
        *,
        model_name: str = "custom",
        is_random: bool = False,
    ) -> None:
        super().__init__()
        self.vision_cfg = VisionConfig.from_eva_cfg(vision_config)
        self.text = build_text_model(text_config)
        self.vision = build_eva_tower(self.vision_cfg)
        self.visual_proj = nn.Linear(self.vision_cfg.width, int(text_config.hidden_size))
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.is_random = is_random
        self.dim = int(text_config.hidden_size)
        self.image_size = self.vision_cfg.image_size
        # XLM-R numbers text positions from pad_token_id + 1; BERT from 0.
        self._position_offset = int(text_config.pad_token_id) + 1 if isinstance(self.text, XLMRobertaModel) else 0
        self._max_positions = int(text_config.max_position_embeddings)
        self._pool: ThreadPoolExecutor | None = None
        self._lookahead: ThreadPoolExecutor | None = None
        self._tokenizer_lock = threading.Lock()
        self.eval()

    # ---- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | Path | Mapping[str, torch.Tensor],
        text_model: str | Path,
        vision_config: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        model_name: str = "custom",
        local_files_only: bool | None = None,
    ) -> VisualizedBGE:
        """Build the architecture from the text model's config and load weights in the official key layout."""
        offline = hub_offline() if local_files_only is None else local_files_only
        text_config = AutoConfig.from_pretrained(str(text_model), local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(str(text_model), local_files_only=offline)
        model = cls(text_config, tokenizer, vision_config, model_name=model_name)
        state = load_state_dict_file(weights) if isinstance(weights, str | Path) else _unwrap_state_dict(weights)
        model.load_official_state_dict(state)
        return model.to(device=torch.device(device), dtype=dtype)

    def load_official_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights named as in the official checkpoint; fail listing every missing or mis-shaped key."""
        ours = dict(self.named_parameters())
        converted: dict[str, torch.Tensor] = {}
        unexpected: list[str] = []
        mis_shaped: list[str] = []
        for key, tensor in state.items():
            name = official_to_module_key(key)
            if name is None:
                continue
            if name not in ours:
                unexpected.append(key)
            elif tuple(tensor.shape) != tuple(ours[name].shape):
                mis_shaped.append(f"{key}: checkpoint {tuple(tensor.shape)}, model {tuple(ours[name].shape)}")
            else:
                converted[name] = tensor
        seen = _names_seen(state)
        missing = sorted(name for name in ours if name not in seen)
        _raise_on_bad_keys(missing, mis_shaped)
        if unexpected:
            log.warning("checkpoint keys not used by this architecture: %s", ", ".join(sorted(unexpected)))
        self.load_state_dict(converted, strict=False)

    # ---- properties ------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.visual_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_proj.weight.dtype

    @property
    def max_text_tokens(self) -> int:
        """Tokens (with [CLS] and [SEP]) a text-only item may have."""
        return self._max_positions - self._position_offset

    @property
    def max_text_tokens_with_image(self) -> int:
        """Tokens (with [CLS], which the image tokens follow) left for text after the image patches."""
        return self._max_positions - self.vision_cfg.num_patches

    def compile_modules(self, mode: str | None = None) -> None:
        """torch.compile the tower (fixed shapes per batch size) and the text encoder (lengths vary)."""
        self.vision.compile(mode=mode)
        self.text.encoder.compile(mode=mode, dynamic=True)

    # ---- encode ----------------------------------------------------------------------------------------

    def encode(
        self,
        images: Sequence[Image.Image | None],
        texts: Sequence[str | None],
        *,
        batch_size: int | None = None,
        after_batch: Callable[[], object] | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 vectors (n, dim), one per (image, text) pair; either may be None, not both.

        With `batch_size`, a longer list runs as batches of that size, and each next batch is prepared (decode,
        resize, crop, tokenise) in a thread while the model computes the current one. `after_batch` runs after each
        forward pass (the worker serves waiting searches there, between the batches of an index chunk).
        """
        if batch_size is None or len(images) <= batch_size:
            vectors = self.encode_post(self.encode_core(self.encode_pre(images, texts)))
            if after_batch is not None:
                after_batch()
            return vectors
        # Checked over the whole list first, so an error names an item's place in it, not in its batch.
        _check_items(images, texts)
        spans = [slice(start, start + batch_size) for start in range(0, len(images), batch_size)]
        lookahead = self._lookahead_pool()
        upcoming = lookahead.submit(self.encode_pre, images[spans[0]], texts[spans[0]])
        parts = []
        for following in [*spans[1:], None]:
            prepared = upcoming.result()
            if following is not None:
                upcoming = lookahead.submit(self.encode_pre, images[following], texts[following])
            parts.append(self.encode_post(self.encode_core(prepared)))
            if after_batch is not None:
                after_batch()
        return np.concatenate(parts)

    def encode_pre(self, images: Sequence[Image.Image | None], texts: Sequence[str | None]) -> PreparedBatch:
        """Decode-side work (resize, crop, tokenise) that needs no model weights; safe to run in a thread."""
        _check_items(images, texts)
        image_rows = [i for i, image in enumerate(images) if image is not None]
        texts_clean = [_clean_text(t) for t in texts]
        text_rows = [i for i in range(len(images)) if images[i] is None]
        present = [image for image in images if image is not None]
        return PreparedBatch(
            size=len(images),
            image_rows=image_rows,
            pixels=self._pixels(present) if present else None,
            image_text=self._tokenize([texts_clean[i] or "" for i in image_rows], self.max_text_tokens_with_image),
            text_rows=text_rows,
            text_only=self._tokenize([texts_clean[i] or "" for i in text_rows], self.max_text_tokens),
        )

    @torch.inference_mode()
    def encode_core(self, batch: PreparedBatch) -> torch.Tensor:
        """The forward pass: (n, dim) unnormalised [CLS] states on the model's device, in input order."""
        if self.training:
            # Inference only: a caller's .train() would switch on dropout and the tower's 0.5 patch dropout.
            self.eval()
        out = torch.empty(batch.size, self.dim, device=self.device, dtype=self.dtype)
        if batch.pixels is not None and batch.image_text is not None:
            out[batch.image_rows] = self._encode_with_images(batch.pixels, batch.image_text)
        if batch.text_only is not None:
            out[batch.text_rows] = self._encode_text_only(batch.text_only)
        return out

    @staticmethod
    def encode_post(states: torch.Tensor) -> np.ndarray:
        """Normalise in float32 whatever the compute dtype, and hand back host memory."""
        vectors = nn.functional.normalize(states.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    # ---- internals -------------------------------------------------------------------------------------

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        size = self.vision_cfg.image_size
        if len(images) == 1:
            return pixels_from_image(images[0], size).unsqueeze(0)
        # PIL releases the GIL while decoding and resizing, so threads give real parallelism here. Each image
        # object goes to one thread only: a lazily decoded PIL image is not safe to load from two at once.
        unique = {id(image): image for image in images}
        pool = self._preprocess_pool()
        done = dict(zip(unique, pool.map(lambda image: pixels_from_image(image, size), unique.values()), strict=True))
        return torch.stack([done[id(image)] for image in images])

    def _lookahead_pool(self) -> ThreadPoolExecutor:
        # Its own single thread: encode_pre submits to the preprocessing pool, and waiting on a pool from
        # inside that same pool could starve it.
        if self._lookahead is None:
            self._lookahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bge-lookahead")
        return self._lookahead

    def _preprocess_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            workers = min(8, os.cpu_count() or 1)
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bge-preprocess")
        return self._pool

    def _tokenize(self, texts: list[str], max_length: int) -> TokenBatch | None:
        if not texts:
            return None
        # Fast tokenizers reconfigure their Rust state per call ("Already borrowed" when two threads overlap).
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length)
        return _tokens_to_tensors(encoded)

    def _normalised_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 whatever the model dtype: bf16 would round the CLIP mean itself by 2e-3.
        # In place, in the same order as the reference: the same numbers without two more batch-sized buffers
        # (on a CPU the allocations cost more than the arithmetic).
        scaled = pixels.to(self.device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(OPENAI_CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD, device=self.device).view(1, 3, 1, 1)
        return scaled.sub_(mean).div_(std).to(self.dtype)

    def _image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens with BERT position embeddings 1..P and the embedding LayerNorm."""
        features: torch.Tensor = self.vision.forward_features(self._normalised_pixels(pixels))
        patches = self.visual_proj(features[:, 1:])
        embeddings = self.text.embeddings
        positions = torch.arange(1, 1 + patches.shape[1], device=self.device)
        tokens: torch.Tensor = embeddings.LayerNorm(patches + embeddings.position_embeddings(positions))
        return tokens

    def _encode_with_images(self, pixels: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        image_tokens = self._image_tokens(pixels)
        input_ids = tokens.input_ids.to(self.device, non_blocking=True)
        n_patches = image_tokens.shape[1]
        text_positions = torch.arange(n_patches, n_patches + input_ids.shape[1], device=self.device)
        text_positions[0] = 0
        text = self.text.embeddings(
            input_ids=input_ids,
            token_type_ids=torch.zeros_like(input_ids),
            position_ids=text_positions.unsqueeze(0).expand_as(input_ids),
        )
        sequence = torch.cat([text[:, :1], image_tokens, text[:, 1:]], dim=1)
        mask = tokens.attention_mask
        full_mask = torch.cat([mask.new_ones(mask.shape[0], 1 + n_patches), mask[:, 1:]], dim=1)
        return self._encoder_cls(sequence, full_mask)

    def _encode_text_only(self, tokens: TokenBatch) -> torch.Tensor:
        input_ids = tokens.input_ids.to(self.device, non_blocking=True)
        embedded = self.text.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._encoder_cls(embedded, tokens.attention_mask)

    def _encoder_cls(self, sequence: torch.Tensor, host_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer [CLS] states; the padding mask is built on the host so checking it never syncs a GPU."""
        mask = additive_padding_mask(host_mask, sequence.dtype)
        device_mask = None if mask is None else mask.to(self.device, non_blocking=True)
        output = self.text.encoder(sequence, attention_mask=device_mask)
        hidden: torch.Tensor = output[0]
        return hidden[:, 0]


def _clean_text(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def _check_items(images: Sequence[Image.Image | None], texts: Sequence[str | None]) -> None:
    if len(images) != len(texts):
        raise ValueError(f"images and texts differ in length: {len(images)} != {len(texts)}")
    empty = [
        i for i, (image, text) in enumerate(zip(images, texts, strict=True)) if image is None and not _clean_text(text)
    ]
    if empty:
        raise ValueError(f"items {empty} have neither an image nor a text")


def _names_seen(state: Mapping[str, torch.Tensor]) -> set[str]:
    """Module names the checkpoint provided, including the mis-shaped ones (reported separately)."""
    return {name for key in state if (name := official_to_module_key(key)) is not None}


def _raise_on_bad_keys(missing: Iterable[str], mis_shaped: Iterable[str]) -> None:
    missing, mis_shaped = list(missing), list(mis_shaped)
    if not missing and not mis_shaped:
        return
    lines = ["checkpoint does not fit the model architecture:"]
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if mis_shaped:
        lines.append(f"mis-shaped keys ({len(mis_shaped)}): " + "; ".join(mis_shaped))
    raise CheckpointError("\n".join(lines))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE read now: huggingface_hub reads it once at import, tests and workers set it later."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def text_config_from_dict(config: Mapping[str, Any]) -> PretrainedConfig:
    """A transformers config from a plain `config.json` dict (BERT or XLM-R)."""
    values = dict(config)
    model_type = str(values.pop("model_type", "bert"))
    return AutoConfig.for_model(model_type, **values)

"""`tiny-random`: a real Visualized BGE architecture at toy size with seeded weights, for smoke runs and tests.

Everything is generated in-process (config, WordPiece vocabulary, weights), so it works on a fresh clone with
no network and no files, and every process builds bit-identical weights.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BertTokenizer

from services.embedder.visualized_bge import VisualizedBGE, text_config_from_dict

TINY_MODEL_NAME = "tiny-random"
TINY_SALT = 20240611
# Ten times the fixture's 0.02: at 0.02 a toy model maps every input to nearly the same vector (cosine > 0.99),
# which makes smoke searches meaningless; at 0.1 similar inputs land near each other and others do not.
TINY_WEIGHT_STD = 0.1

TINY_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}
TINY_VISION_CONFIG: dict[str, Any] = {
    "image_size": 224,
    "layers": 2,
    "width": 128,
    "head_width": 32,
    "patch_size": 16,
    "mlp_ratio": 2.6667,
}

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Whole-word entries make typical instructions tokenise to a realistic number of tokens; anything else falls
# back to single characters, so no input ever maps to [UNK]-only sequences.
_COMMON_WORDS = """
a an the this that these those it its is are was be with without in on of for to from by as at or and but not
same similar like more less very but into over under near same other one two three new old big small large
image photo picture style theme colour color colors colours red blue green yellow black white gray grey pink
purple orange brown gold silver dark light bright pale pattern print texture shape design logo background
phone case cover shirt dress shoe shoes bag mug cup car chair table lamp wallpaper poster sticker watch
cat dog bird flower tree leaf sky sea beach mountain road city night sunset day animal leopard tiger
wooden metal glass plastic leather cotton paper stone round square striped floral plain vintage modern
with this in blue but make it same show find search looks look want need
"""


def tiny_vocab() -> dict[str, int]:
    """A small deterministic WordPiece vocabulary: specials, characters, ##characters, common words."""
    characters = string.ascii_lowercase + string.digits + string.punctuation
    entries = [*_SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters), *_COMMON_WORDS.split()]
    vocab: dict[str, int] = {}
    for token in entries:
        vocab.setdefault(token, len(vocab))
    return vocab


def seeded_parameter(name: str, shape: Sequence[int], salt: int, std: float = 0.02) -> torch.Tensor:
    """The fixture's weight recipe: N(0, std) per tensor from crc32(name) + salt, vectors named weight at 1."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) + salt)
    tensor = torch.randn(tuple(shape), generator=generator, dtype=torch.float32) * std
    if len(shape) == 1 and name.endswith("weight"):
        tensor += 1.0
    return tensor


def build_tiny_random(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VisualizedBGE:
    vocab = tiny_vocab()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    text_config = text_config_from_dict({**TINY_TEXT_CONFIG, "vocab_size": len(vocab)})
    model = VisualizedBGE(text_config, tokenizer, TINY_VISION_CONFIG, model_name=TINY_MODEL_NAME, is_random=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(seeded_parameter(name, parameter.shape, TINY_SALT, TINY_WEIGHT_STD))
    return model.to(device=torch.device(device), dtype=dtype)

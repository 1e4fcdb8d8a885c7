"""Visualized BGE against the reference fixture, plus batching, precision, truncation and checkpoint checks."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizer

from services.embedder.model_tiny import build_tiny_random, seeded_parameter, tiny_vocab
from services.embedder.visualized_bge import (
    CheckpointError,
    VisualizedBGE,
    additive_padding_mask,
    text_config_from_dict,
)

# The parity fixture (shared/fixtures/visualized_bge) is vendored so that CI always runs it; point
# MMRAG_PARITY_FIXTURE at another case (other salt, other inputs) to check that one instead.
FIXTURES = Path(
    os.environ.get("MMRAG_PARITY_FIXTURE") or Path(__file__).resolve().parents[1] / "fixtures" / "visualized_bge"
)


def _read_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def recipe_state_dict(keys: list[Mapping[str, Any]], salt: int) -> dict[str, torch.Tensor]:
    """The fixture's weight recipe over every `parameter` key; buffers are left to the model."""
    return {k["key"]: seeded_parameter(k["key"], k["shape"], salt) for k in keys if k["kind"] == "parameter"}


def text_model_dir(tmp: Path, config: Mapping[str, Any]) -> Path:
    (tmp / "config.json").write_text(json.dumps(dict(config)))
    (tmp / "vocab.txt").write_bytes((FIXTURES / "vocab.txt").read_bytes())
    return tmp


def fixture_inputs(cases: list[Mapping[str, Any]]) -> tuple[list[Image.Image | None], list[str | None]]:
    images: list[Image.Image | None] = [
        Image.open(FIXTURES / "inputs" / c["image"]) if "image" in c else None for c in cases
    ]
    for image in images:
        if image is not None:
            image.load()
    return images, [c.get("text") for c in cases]


@pytest.fixture(scope="module")
def parity_model(tmp_path_factory: pytest.TempPathFactory) -> VisualizedBGE:
    config = _read_json("configs.json")["parity"]
    salt = _read_json("expected.json")["salt"]
    weights = recipe_state_dict(_read_json("keys.json"), salt)
    text_dir = text_model_dir(tmp_path_factory.mktemp("parity_text"), config["text_config"])
    return VisualizedBGE.from_checkpoint(weights, text_dir, config["vision_config"])


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    data: dict[str, Any] = _read_json("expected.json")
    return data


@pytest.fixture(scope="module")
def tiny() -> VisualizedBGE:
    return build_tiny_random()


def assert_matches_reference(vectors: np.ndarray, reference: np.ndarray) -> None:
    worst = float(np.abs(vectors - reference).max())
    cosines = (vectors * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert worst <= 1e-4, f"largest component difference {worst:.2e}"
    assert cosines.min() >= 0.99999, f"lowest cosine {cosines.min():.7f}"


# ---- parity with the reference -------------------------------------------------------------------------


def test_each_fixture_case_encoded_alone_matches_the_reference(
    parity_model: VisualizedBGE, expected: dict[str, Any]
) -> None:
    images, texts = fixture_inputs(expected["cases"])
    vectors = np.concatenate([parity_model.encode([image], [text]) for image, text in zip(images, texts, strict=True)])
    assert_matches_reference(vectors, np.array([c["embedding"] for c in expected["cases"]], dtype=np.float32))


def test_all_fixture_cases_in_one_mixed_batch_match_the_reference(
    parity_model: VisualizedBGE, expected: dict[str, Any]
) -> None:
    images, texts = fixture_inputs(expected["cases"])
    vectors = parity_model.encode(images, texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(expected["cases"]), parity_model.dim)
    assert_matches_reference(vectors, np.array([c["embedding"] for c in expected["cases"]], dtype=np.float32))


def test_fixture_cases_in_reversed_order_give_the_same_vectors(
    parity_model: VisualizedBGE, expected: dict[str, Any]
) -> None:
    images, texts = fixture_inputs(expected["cases"])
    forward = parity_model.encode(images, texts)
    backward = parity_model.encode(images[::-1], texts[::-1])[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)


# ---- checkpoint loading --------------------------------------------------------------------------------


def test_checkpoint_with_real_buffers_and_unused_keys_loads(parity_model: VisualizedBGE) -> None:
    keys = _read_json("keys.json")
    state = recipe_state_dict(keys, 7)
    state.update({k["key"]: torch.zeros(k["shape"]) for k in keys if k["kind"] == "buffer"})
    state["bge_embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    assert "model_visual.logit_scale" in state
    assert "bge_pooler.dense.weight" in state
    parity_model.load_official_state_dict(state)
    parity_model.load_official_state_dict(recipe_state_dict(keys, _read_json("expected.json")["salt"]))


def test_missing_keys_are_listed_in_the_error(parity_model: VisualizedBGE) -> None:
    state = recipe_state_dict(_read_json("keys.json"), 0)
    del state["visual_proj.weight"]
    del state["model_visual.visual.blocks.1.mlp.w3.bias"]
    with pytest.raises(CheckpointError) as error:
        parity_model.load_official_state_dict(state)
    message = str(error.value)
    assert "missing keys (2)" in message
    assert "visual_proj.weight" in message
    assert "vision.blocks.1.mlp.fc2.bias" in message


def test_mis_shaped_keys_are_listed_with_both_shapes(parity_model: VisualizedBGE) -> None:
    state = recipe_state_dict(_read_json("keys.json"), 0)
    state["bge_encoder.layer.0.output.dense.weight"] = torch.zeros(768, 1024)
    with pytest.raises(CheckpointError) as error:
        parity_model.load_official_state_dict(state)
    message = str(error.value)
    assert "mis-shaped keys (1)" in message
    assert "bge_encoder.layer.0.output.dense.weight: checkpoint (768, 1024), model (768, 3072)" in message
    assert "missing" not in message


def test_full_size_checkpoint_loads_and_bf16_fp16_agree_with_fp32(tmp_path: Path) -> None:
    """Compared by 1 - cosine (≤ 2e-3): per component, bf16 over 24 random full-width layers drifts ~2.5e-3."""
    config = _read_json("configs.json")["base_en_v1.5"]
    keys = _read_json("keys_full_base_en_v1.5.json")
    model = VisualizedBGE.from_checkpoint(
        recipe_state_dict(keys, 0), text_model_dir(tmp_path, config["text_config"]), config["vision_config"]
    )
    assert sum(p.numel() for p in model.parameters()) > 190_000_000
    chelsea = Image.open(FIXTURES / "inputs" / "chelsea.png").convert("RGB")
    images, texts = [chelsea, None], ["phone case with this image theme", "a red sports car"]
    reference = model.encode(images, texts)
    for dtype in (torch.bfloat16, torch.float16):
        vectors = model.to(dtype).encode(images, texts)
        assert np.isfinite(vectors).all()
        drift = 1.0 - (vectors * reference).sum(axis=1)
        assert drift.max() <= 2e-3, f"{dtype}: 1 - cosine {drift.max():.2e}"


# ---- batching, masks, precision ------------------------------------------------------------------------


def _sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [
        Image.fromarray(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 256, (224, 224, 4), dtype=np.uint8), "RGBA"),
    ]


def _mixed_items() -> tuple[list[Image.Image | None], list[str | None]]:
    a, b, c = _sample_images()
    images: list[Image.Image | None] = [a, None, b, c, None, a]
    texts: list[str | None] = [None, "cat", "a much longer instruction about the phone case colours", "red", "x y", ""]
    return images, texts


def test_mixed_batch_equals_one_at_a_time(tiny: VisualizedBGE) -> None:
    images, texts = _mixed_items()
    batched = tiny.encode(images, texts)
    alone = np.concatenate([tiny.encode([i], [t]) for i, t in zip(images, texts, strict=True)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6])
def test_batches_prepared_while_the_model_computes_give_the_same_vectors(tiny: VisualizedBGE, batch_size: int) -> None:
    images, texts = _mixed_items()
    np.testing.assert_allclose(tiny.encode(images, texts, batch_size=batch_size), tiny.encode(images, texts), atol=1e-5)


def test_an_empty_item_is_named_by_its_place_in_the_whole_list_when_batched(tiny: VisualizedBGE) -> None:
    images, texts = _mixed_items()
    with pytest.raises(ValueError, match=r"items \[7\] have neither"):
        tiny.encode([*images, None, None], [*texts, "fine", " "], batch_size=3)


def test_empty_text_with_an_image_is_the_image_alone(tiny: VisualizedBGE) -> None:
    image = _sample_images()[0]
    np.testing.assert_array_equal(tiny.encode([image], [""]), tiny.encode([image], [None]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padded_batches_stay_finite_and_consistent_in_half_precision(dtype: torch.dtype) -> None:
    model = build_tiny_random(dtype=dtype)
    images, texts = _mixed_items()
    batched = model.encode(images, texts)
    alone = np.concatenate([model.encode([i], [t]) for i, t in zip(images, texts, strict=True)])
    assert np.isfinite(batched).all()
    assert (1.0 - (batched * alone).sum(axis=1)).max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_padding_mask_blocks_padding_with_the_dtype_minimum(dtype: torch.dtype) -> None:
    mask = additive_padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]), dtype)
    assert mask is not None
    assert mask.dtype == dtype
    assert mask.shape == (2, 1, 1, 3)
    assert mask[0, 0, 0, 2] == torch.finfo(dtype).min
    assert mask[1].eq(0).all()


def test_unpadded_batch_needs_no_mask() -> None:
    assert additive_padding_mask(torch.ones(2, 5, dtype=torch.long), torch.float32) is None


def test_vectors_are_unit_length_float32(tiny: VisualizedBGE) -> None:
    vectors = tiny.encode(*_mixed_items())
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---- inputs --------------------------------------------------------------------------------------------


def test_text_longer_than_the_room_left_is_truncated(tiny: VisualizedBGE) -> None:
    image = _sample_images()[0]
    long_text = "colour " * 2000
    longer_text = "colour " * 3000
    with_image = tiny.encode([image, image], [long_text, longer_text])
    text_only = tiny.encode([None, None], [long_text, longer_text])
    np.testing.assert_allclose(with_image[0], with_image[1], atol=1e-6)
    np.testing.assert_allclose(text_only[0], text_only[1], atol=1e-6)


def test_item_with_neither_image_nor_text_is_rejected(tiny: VisualizedBGE) -> None:
    with pytest.raises(ValueError, match=r"items \[1\] have neither"):
        tiny.encode([_sample_images()[0], None], ["ok", "  "])


def test_lists_of_different_lengths_are_rejected(tiny: VisualizedBGE) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        tiny.encode([None, None], ["a"])


def test_model_stays_in_eval_mode_so_patch_dropout_never_applies(tiny: VisualizedBGE) -> None:
    image = _sample_images()[0]
    first = tiny.encode([image], [None])
    tiny.train()
    second = tiny.encode([image], [None])
    assert not tiny.training
    np.testing.assert_array_equal(first, second)


def test_preprocessing_and_forward_pass_split_gives_the_same_vectors(tiny: VisualizedBGE) -> None:
    images, texts = _mixed_items()
    prepared = tiny.encode_pre(images, texts)
    assert prepared.pixels is not None
    assert prepared.pixels.dtype == torch.uint8
    np.testing.assert_array_equal(tiny.encode_post(tiny.encode_core(prepared)), tiny.encode(images, texts))


def test_xlm_roberta_text_side_with_a_patch14_tower_encodes_mixed_batches() -> None:
    """The bge-visualized-m3 shape (XLM-R text model, EVA02-CLIP-L-14 tower) at toy size."""
    vocab = tiny_vocab()
    config = text_config_from_dict(
        {
            "model_type": "xlm-roberta",
            "vocab_size": len(vocab),
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 514,
            "pad_token_id": 0,
        }
    )
    vision = {"layers": 1, "width": 64, "head_width": 32, "patch_size": 14}
    model = VisualizedBGE(config, BertTokenizer(vocab=vocab), vision)
    # XLM-R numbers positions from pad_token_id + 1 (here 0 + 1, as the BERT tokenizer pads with 0).
    assert model.max_text_tokens == 514 - 1
    assert model.max_text_tokens_with_image == 514 - 256
    images, texts = _mixed_items()
    batched = model.encode(images, texts)
    alone = np.concatenate([model.encode([i], [t]) for i, t in zip(images, texts, strict=True)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_load_model_reads_a_local_checkpoint_file_and_text_model_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: dict[str, Any]
) -> None:
    """The whole native load path (file on disk, local text model, no hub), at the parity model's depth."""
    from services.embedder import model_loading

    config = _read_json("configs.json")["parity"]
    name = "bge-visualized-base-en-v1.5"
    spec = model_loading.MODEL_SPECS[name]
    parity_spec = model_loading.ModelSpec(spec.weights_file, spec.text_model, config["vision_config"])
    monkeypatch.setitem(model_loading.MODEL_SPECS, name, parity_spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "Visualized_base_en_v1.5.pth"
    torch.save({"state_dict": recipe_state_dict(_read_json("keys.json"), expected["salt"])}, weights)
    (tmp_path / "text").mkdir()
    text_dir = text_model_dir(tmp_path / "text", config["text_config"])
    model = model_loading.load_model(name, weights=weights, text_model=text_dir, device="cpu", dtype="float32")
    assert (model.model_name, model.is_random, model.dim) == (name, False, 768)
    case = expected["cases"][-1]
    images, texts = fixture_inputs([case])
    assert_matches_reference(model.encode(images, texts), np.array([case["embedding"]], dtype=np.float32))

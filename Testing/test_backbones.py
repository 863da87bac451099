"""Backbones: real open_clip models built offline (tiny configs, both tower styles, ViT-B-16),
local-dir round trips, the hub cache, the MiniLM text tower and missing-weights errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import open_clip
import pytest
import torch

from usvlm.errors import USVLMError
from usvlm.model.backbones import (
    Backbone,
    ModelNotFoundError,
    UnsupportedModelError,
    build_backbone,
    default_level_indices,
    load_local_dir,
    save_local_dir,
    tiny_timm_config,
    tiny_vit_config,
)

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_user_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches must not find models on the machine running the tests (~/.cache, USVLM_MODEL_DIR)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("USVLM_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return build_backbone(tiny_vit_config(image_size=112))


@pytest.fixture(scope="module")
def minilm() -> Backbone:
    return build_backbone(tiny_vit_config(image_size=64, embed_dim=512, text="minilm"))


def _images(backbone: Backbone, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))


def _assert_same_outputs(a: Backbone, b: Backbone) -> None:
    x = _images(a)
    with torch.no_grad():
        la, ea = a.encode_image_levels(x)
        lb, eb = b.encode_image_levels(x)
        ta, tb = a.encode_text(["thyroid nodule", "cyst"]), b.encode_text(["thyroid nodule", "cyst"])
    for u, v in zip(la, lb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    torch.testing.assert_close(ea, eb, rtol=0, atol=0)
    torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def test_default_level_indices_scale_with_depth() -> None:
    assert default_level_indices(12) == (2, 5, 8)  # blocks 3, 6, 9 (1-based), as in the paper
    assert default_level_indices(4) == (0, 1, 2)
    assert default_level_indices(24) == (5, 11, 17)
    assert default_level_indices(2) == (0, 0, 1)  # too shallow: repeat rather than drop a level


def test_tiny_open_clip_tower_geometry(tiny: Backbone) -> None:
    assert tiny.tower == "open_clip"
    assert (tiny.depth, tiny.width, tiny.embed_dim) == (4, 64, 64)
    assert tiny.grid_size == (7, 7) and tiny.patch_size == (16, 16) and tiny.image_size == (112, 112)
    assert tiny.num_prefix_tokens == 1 and tiny.has_class_token
    assert tiny.level_indices == (0, 1, 2)
    assert len(tiny.visual_blocks) == 4 and all(isinstance(b, torch.nn.Module) for b in tiny.visual_blocks)
    assert len(tiny.mean) == 3 and len(tiny.std) == 3
    assert float(tiny.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-4)


def test_levels_are_the_chosen_block_outputs(tiny: Backbone) -> None:
    """One pass gives the patch tokens after blocks 0, 1, 2 (checked with hooks) and the embedding."""
    x = _images(tiny)
    seen: dict[int, torch.Tensor] = {}
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o))
             for k, blk in enumerate(tiny.visual_blocks)]
    try:
        with torch.no_grad():
            levels, embedding = tiny.encode_image_levels(x)
    finally:
        for h in hooks:
            h.remove()
    assert [tuple(level.shape) for level in levels] == [(2, 64, 7, 7)] * 3
    for level, k in zip(levels, tiny.level_indices, strict=True):
        tokens = seen[k][:, 1:]  # drop the class token; row-major patch grid
        torch.testing.assert_close(level, tokens.transpose(1, 2).reshape(2, 64, 7, 7))
    with torch.no_grad():
        expected = tiny.model.encode_image(x, normalize=True)
    torch.testing.assert_close(embedding, expected)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


def test_wrong_image_size_is_a_clear_error(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 112, 112\)"):
        tiny.encode_image_levels(torch.zeros(1, 3, 100, 100))


def test_timm_trunk_tower_builds_offline() -> None:
    """BiomedCLIP's tower style: a timm ViT trunk (vit_tiny_patch16_224), random weights, no network."""
    backbone = build_backbone(tiny_timm_config())
    assert backbone.tower == "timm"
    assert (backbone.depth, backbone.width, backbone.grid_size) == (12, 192, (14, 14))
    assert backbone.num_prefix_tokens == 1 and backbone.level_indices == (2, 5, 8)
    x = _images(backbone, 1)
    with torch.no_grad():
        levels, embedding = backbone.encode_image_levels(x)
        expected = backbone.model.encode_image(x, normalize=True)
    assert [tuple(level.shape) for level in levels] == [(1, 192, 14, 14)] * 3
    torch.testing.assert_close(embedding, expected)


def test_local_dir_round_trip(tiny: Backbone, tmp_path: Path) -> None:
    folder = save_local_dir(tiny, None, tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json",
                                                        "open_clip_model.safetensors"]
    assert json.loads((folder / "open_clip_config.json").read_text())["model_cfg"] == tiny.model_cfg
    _assert_same_outputs(tiny, build_backbone(f"local-dir:{folder}"))
    _assert_same_outputs(tiny, load_local_dir(folder))
    # The folder is plain open_clip hub layout: open_clip itself reads it.
    plain = open_clip.create_model(f"local-dir:{folder}")
    torch.testing.assert_close(plain.visual.proj, tiny.model.visual.proj)


def test_save_local_dir_refuses_to_overwrite(tiny: Backbone, tmp_path: Path) -> None:
    save_local_dir(tiny, None, tmp_path / "m")
    with pytest.raises(USVLMError, match="not empty"):
        save_local_dir(tiny, None, tmp_path / "m")
    save_local_dir(tiny, None, tmp_path / "m", overwrite=True)


def test_minilm_text_tower(minilm: Backbone) -> None:
    """MiniLM-L6 from the installed package: unit vectors, paraphrases closer than unrelated text."""
    assert minilm.text.is_hf
    emb = minilm.encode_text(["hypoechoic breast mass", "a dark lump in the breast",
                              "the train leaves at noon"])
    assert emb.shape == (3, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    # Cache-friendly: a prompt's embedding does not depend on what it is batched with.
    alone = minilm.encode_text(["thyroid nodule"])
    batched = minilm.encode_text(["a much longer description of something else", "thyroid nodule"])
    torch.testing.assert_close(alone[0], batched[1], atol=1e-5, rtol=0)
    assert minilm.encode_text([]).shape == (0, 512)


def test_minilm_local_dir_is_self_contained(minilm: Backbone, tmp_path: Path) -> None:
    folder = save_local_dir(minilm, None, tmp_path / "mini")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "tokenizer_config.json", "open_clip_model.safetensors"} <= names
    # The stored config keeps the portable hub id, not this machine's path.
    text_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert text_cfg["hf_model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    _assert_same_outputs(minilm, build_backbone(f"local-dir:{folder}"))


def test_shipped_vit_b_16_builds_with_random_weights() -> None:
    backbone = build_backbone("ViT-B-16")
    assert (backbone.depth, backbone.width, backbone.embed_dim) == (12, 768, 512)
    assert backbone.grid_size == (14, 14) and backbone.level_indices == (2, 5, 8)
    with torch.no_grad():
        levels, embedding = backbone.encode_image_levels(torch.zeros(1, 3, 224, 224))
    assert [tuple(level.shape) for level in levels] == [(1, 768, 14, 14)] * 3
    assert embedding.shape == (1, 512)


def _write_hf_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lay out `source`'s files as huggingface_hub's cache does (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")


def test_hf_hub_id_loads_from_hf_cache_offline(tiny: Backbone, tmp_path: Path) -> None:
    saved = save_local_dir(tiny, None, tmp_path / "saved")
    _write_hf_cache(tmp_path / "hub", "usvlm-test/tiny-clip", saved)
    loaded = build_backbone("hf-hub:usvlm-test/tiny-clip", cache_dir=tmp_path / "hub")
    _assert_same_outputs(tiny, loaded)


def test_hf_hub_id_loads_from_usvlm_model_dir(tiny: Backbone, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    save_local_dir(tiny, None, tmp_path / "models" / "usvlm-test" / "tiny-clip")
    monkeypatch.setenv("USVLM_MODEL_DIR", str(tmp_path / "models"))
    _assert_same_outputs(tiny, build_backbone("hf-hub:usvlm-test/tiny-clip",
                                              cache_dir=tmp_path / "empty-hub"))


def test_hf_hub_id_without_cache_fails_fast(tmp_path: Path) -> None:
    model_id = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        build_backbone(f"hf-hub:{model_id}", cache_dir=tmp_path / "hub")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert isinstance(info.value, USVLMError) and "\n" not in message
    assert f"hf-hub:{model_id}" in message  # the model
    assert "USVLM_MODEL_DIR" in message and ".cache/usvlm" in message  # the places searched
    assert str(tmp_path / "hub") in message and "HF_HUB_OFFLINE" in message
    assert f"hf download {model_id}" in message and "local-dir:" in message  # how to provide it


def test_local_dir_without_weights_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_vit_config()}))
    with pytest.raises(ModelNotFoundError) as info:
        build_backbone(f"local-dir:{folder}")
    assert str(folder) in str(info.value) and "open_clip_model.safetensors" in str(info.value)
    assert build_backbone(f"local-dir:{folder}", load_weights=False).depth == 4


def test_missing_local_dir_and_config_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(USVLMError, match="no such folder"):
        build_backbone(f"local-dir:{tmp_path / 'absent'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(USVLMError, match="open_clip_config.json"):
        build_backbone(f"local-dir:{tmp_path / 'empty'}")


def test_pretrained_tag_not_cached_is_reported() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        build_backbone("ViT-B-16", "openai")
    message = str(info.value)
    assert "ViT-B-16 (openai)" in message and "Hugging Face cache" in message
    assert "pass its path as `pretrained`" in message
    with pytest.raises(ModelNotFoundError, match="missing"):
        build_backbone("ViT-B-16", "/nowhere/weights.safetensors")


@pytest.mark.parametrize("place", ["USVLM_MODEL_DIR", "hf_cache"])
def test_pretrained_tag_found_offline(place: str, tiny: Backbone, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in name + tag (like ViT-B-16 + metaclip_400m) resolves to a local file, and what
    open_clip takes from the tag (QuickGELU, mean/std) still applies."""
    from open_clip.pretrained import _pcfg
    from safetensors.torch import save_file

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "usvlm-tiny", tiny.model_cfg)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "usvlm-tiny",
                        {"fake": _pcfg(hf_hub="usvlm-test/tiny-weights/", quick_gelu=True,
                                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))})
    weights = tmp_path / "w" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    if place == "USVLM_MODEL_DIR":
        target = tmp_path / "models" / "usvlm-test" / "tiny-weights"
        target.mkdir(parents=True)
        weights.rename(target / weights.name)
        monkeypatch.setenv("USVLM_MODEL_DIR", str(tmp_path / "models"))
    else:
        _write_hf_cache(tmp_path / "hub", "usvlm-test/tiny-weights", weights.parent)
    loaded = build_backbone("usvlm-tiny", "fake", cache_dir=tmp_path / "hub")
    assert loaded.model_cfg["quick_gelu"] is True
    assert type(loaded.visual_blocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    for (name, a), b in zip(tiny.model.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_unknown_or_unsupported_models() -> None:
    with pytest.raises(UnsupportedModelError, match="not an open_clip model name"):
        build_backbone("ViT-Q-99")
    with pytest.raises(UnsupportedModelError, match="not a ViT"):
        build_backbone({"embed_dim": 64, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16,
                                                        "image_size": 64},
                        "text_cfg": {"context_length": 8, "width": 32, "heads": 2, "layers": 1}})

"""The inference engine on real images with tiny models loaded from disk."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import us_file
from models import save_tiny_model, tiny_model

from usvlm.engine import CancelToken, Cancelled, Segmenter
from usvlm.errors import InputError
from usvlm.io import read_image
from usvlm.io.image import USImage
from usvlm.model.errors import CheckpointError
from usvlm.model.manifest import write_manifest
from usvlm.model.vlm import load_model
from usvlm.postprocess import PostprocessOptions

SAMPLE = us_file("US1_UNCR.dcm")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def segmenter(model_dir):
    return Segmenter(model_dir, device="cpu")


class Counter:
    """Counts calls of a method while passing them through."""

    def __init__(self, obj, name):  # noqa: ANN001
        self.calls = 0
        original = getattr(obj, name)

        def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
            self.calls += 1
            return original(*a, **k)

        setattr(obj, name, wrapped)


def test_saved_and_loaded_model_gives_identical_outputs(model_dir):
    torch.manual_seed(0)
    model = tiny_model()
    again = load_model(model_dir)
    x = torch.rand(2, 64, 64)
    with torch.no_grad():
        f1, f2 = model.eval().encode_image(model.normalize(x)), again.encode_image(again.normalize(x))
        t = again.encode_text(["breast mass", "cyst"])
        np.testing.assert_allclose(model.segment_logits(f1, t), again.segment_logits(f2, t), atol=1e-6)


def test_segment_prompts_in_order_on_input_grid(segmenter):
    image = read_image(SAMPLE)
    out = segmenter.segment(image, ["breast mass", "cyst", "lymph node"])
    # Bank names: the segment is named, coloured and coded from the prompt bank.
    assert [r.prompt.name for r in out.results] == ["Breast mass", "Cyst", "Lymph node"]
    assert [r.prompt.matched_by for r in out.results] == ["exact"] * 3
    for r in out.results:
        assert r.probability.shape == image.frame_shape and r.mask.shape == image.frame_shape
        assert r.probability.dtype == np.float32
        assert 0.0 <= r.probability.min() and r.probability.max() <= 1.0
        assert not (r.mask & ~out.field_of_view).any()
        assert not (r.probability[~out.field_of_view] > 0).any()


def test_image_encoder_runs_once_per_image_and_text_once_per_prompt(segmenter):
    image = read_image(SAMPLE)
    images = Counter(segmenter.model, "encode_image")
    texts = Counter(segmenter.model, "encode_prompt_ensembles")
    segmenter.segment(image, "breast mass")
    segmenter.segment(image, "cyst")
    segmenter.segment(replace(image, pixels=image.pixels.copy()), ["breast mass", "cyst"])
    assert images.calls == 1, "same pixels, different object: served from the cache"
    assert texts.calls == 2
    out = segmenter.segment(image, "cyst")
    refined = Segmenter.refine(out.results[0], out, PostprocessOptions(threshold=0.9))
    assert images.calls == 1 and texts.calls == 2
    assert refined.mask.sum() <= out.results[0].mask.sum()


def test_image_cache_is_bounded(model_dir):
    seg = Segmenter(model_dir, device="cpu", image_cache_mb=0.001)
    image = read_image(SAMPLE)
    for k in range(3):
        seg.segment(replace(image, pixels=np.roll(image.pixels, k, axis=1)), "mass")
    assert seg.cached_images == 1


def test_cine_batched_equals_one_by_one(model_dir):
    cine = read_image(us_file("examples_ybr_color.dcm"))
    batched = Segmenter(model_dir, device="cpu", batch_size=8).segment(cine, "mass", frames=[0, 5, 9, 12])
    single = Segmenter(model_dir, device="cpu", batch_size=1).segment(cine, "mass", frames=[0, 5, 9, 12])
    a, b = batched.results[0].probability, single.results[0].probability
    assert a.shape == (4, 240, 320)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_frame_of_a_cine(segmenter):
    cine = read_image(us_file("examples_ybr_color.dcm"))
    out = segmenter.segment(cine, "mass", frames=3)
    assert out.frames == [3] and out.results[0].probability.shape == (240, 320)
    with pytest.raises(InputError, match="out of range"):
        segmenter.segment(cine, "mass", frames=30)


def test_cancel_between_batches_and_progress(model_dir):
    seg = Segmenter(model_dir, device="cpu", batch_size=2)
    cine = read_image(us_file("examples_ybr_color.dcm"))
    token, seen = CancelToken(), []

    def progress(done, total, stage):  # noqa: ANN001, ANN202
        seen.append((done, total, stage))
        if done >= 4:
            token.cancel()

    with pytest.raises(Cancelled):
        seg.segment(cine, "mass", progress=progress, cancel=token)
    assert seen[0] == (2, 30, "encoding image") and seen[-1][0] == 4
    assert seg.cached_images == 0, "a cancelled run leaves nothing behind"


def test_classify_trained_head_zero_shot_and_mask(segmenter):
    image = read_image(SAMPLE)
    for probs in (segmenter.classify(image), segmenter.classify(image, zero_shot=True)):
        assert set(probs) == {"benign", "malignant"}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    mask = np.zeros(image.frame_shape, bool)
    mask[200:300, 250:400] = True
    pooled = segmenter.classify(image, mask)
    assert pooled != segmenter.classify(image)
    with pytest.raises(InputError, match="does not match"):
        segmenter.classify(image, mask[:100])


@pytest.mark.parametrize("prompt, problem", [("", "empty"), ("   ", "empty"), ("x" * 10_000, "too long"),
                                             ("mass\x00", "control"), ("???", "no letters")])
def test_bad_prompts(segmenter, prompt, problem):
    with pytest.raises(InputError, match=problem):
        segmenter.segment(read_image(SAMPLE), prompt)


def test_non_ascii_prompt_is_fine(segmenter):
    out = segmenter.segment(read_image(SAMPLE), "nódulo tiroideo")
    assert out.results[0].prompt.name == "Thyroid nodule"
    out = segmenter.segment(read_image(SAMPLE), "zona hipoecoica")
    assert out.results[0].prompt.name == "zona hipoecoica" and out.results[0].prompt.matched_by == "none"


def test_image_smaller_than_a_patch(segmenter):
    tiny = USImage(pixels=np.full((12, 12), 90, np.uint8))
    with pytest.raises(InputError, match="smaller than one model patch"):
        segmenter.segment(tiny, "mass")


def test_tampered_weights_wrong_shapes_and_missing_files(tmp_path):
    path = save_tiny_model(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(path)
    other = save_tiny_model(tmp_path / "other")
    (other / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(other)
    # A checkpoint whose manifest describes a different head width than its weights.
    import json

    wrong = save_tiny_model(tmp_path / "wrong")
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["heads"]["segmentation"]["width"] = 48
    write_manifest(wrong / "manifest.json", manifest)  # a restamped edit: the shapes are checked
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(wrong)
    with pytest.raises(CheckpointError, match="not a USVLM model directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("adapter", ["none", "hybrid", "lora"])
def test_every_adapter_kind_round_trips(tmp_path, adapter):
    path = save_tiny_model(tmp_path / adapter, adapter)
    out = Segmenter(path, device="cpu").segment(read_image(SAMPLE), "mass")
    assert out.results[0].probability.shape == (480, 640)


def test_text_encoding_on_trimmed_context_is_exact():
    """Cutting the padding off the 77-token context (the fast path) changes no embedding."""
    import torch.nn.functional as F

    model = tiny_model()
    texts = ["a hypoechoic mass with posterior acoustic shadowing", "cyst"]
    tokens = model.backbone.tokenize(texts)
    with torch.no_grad():
        full = F.normalize(model.backbone.model.encode_text(tokens).float(), dim=-1)
        np.testing.assert_allclose(model.backbone.encode_text(texts), full, atol=1e-6)


def test_text_encoder_weights_are_verified_by_sha256(tmp_path):
    """A model with the packaged MiniLM text encoder records its sha256 and refuses another one."""
    import json

    from usvlm.model.backbones import small_vit_minilm_config
    from usvlm.model.vlm import build_model

    path = build_model(small_vit_minilm_config(image_size=64, layers=2, width=64), seg_width=32).save(
        tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["backbone"]["text_weights_sha256"]) == 64
    assert load_model(path).backbone.text_weights_path.name == "model.safetensors"
    manifest["backbone"]["text_weights_sha256"] = "0" * 64  # as if trained with another encoder
    write_manifest(path / "manifest.json", manifest)
    with pytest.raises(CheckpointError, match="text encoder weights differ"):
        load_model(path)

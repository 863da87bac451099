"""Task heads: text-conditioned segmentation, zero-shot and trained classification, calibration."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from usvlm.model.heads import (
    ClassificationHead,
    ClsHeadConfig,
    SegHeadConfig,
    TemperatureScaler,
    TextConditionedSegHead,
    ZeroShotClassifier,
)
from usvlm.model.heads.classification import masked_average

C, D, GRID = 24, 16, 4  # tiny ViT width, joint embedding width, patch grid


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def levels(b: int = 2, grid: int = GRID) -> list[torch.Tensor]:
    return [torch.randn(b, C, grid, grid) for _ in range(3)]


def prompts(p: int) -> torch.Tensor:
    return F.normalize(torch.randn(p, D), dim=-1)


def seg_head(**kwargs) -> TextConditionedSegHead:
    return TextConditionedSegHead([C, C, C], D, **{"width": 32, **kwargs}).eval()


# --- segmentation ---------------------------------------------------------------------------

@pytest.mark.parametrize("decoder", ["bilinear", "transposed"])
@pytest.mark.parametrize(("b", "p"), [(1, 1), (2, 3)])
def test_seg_output_is_one_map_per_prompt_at_input_resolution(decoder: str, b: int, p: int) -> None:
    out = seg_head(decoder=decoder)(levels(b), prompts(p))
    assert out.shape == (b, p, GRID * 16, GRID * 16)
    assert torch.isfinite(out).all()


def test_seg_out_size_and_patch_size() -> None:
    assert seg_head(out_size=[50, 60])(levels(), prompts(2)).shape == (2, 2, 50, 60)
    assert seg_head(out_size=40)(levels(), prompts(1)).shape == (2, 1, 40, 40)
    assert seg_head(patch_size=4)(levels(), prompts(1)).shape == (2, 1, GRID * 4, GRID * 4)


@pytest.mark.parametrize("stride", [2, 4, 16])
def test_output_stride_decodes_coarser_and_upsamples_to_the_same_size(stride: int) -> None:
    full, coarse = seg_head(), seg_head(output_stride=stride)
    assert len(coarse.upsample) == len(full.upsample) - int(math.log2(stride))
    out = coarse(levels(), prompts(3))
    assert out.shape == (2, 3, GRID * 16, GRID * 16) and torch.isfinite(out).all()
    assert coarse(levels(), prompts(1)).shape == full(levels(), prompts(1)).shape
    assert seg_head(output_stride=stride, out_size=[50, 60])(levels(), prompts(1)).shape == (2, 1, 50, 60)


def test_output_stride_defaults_to_full_resolution_for_older_configs() -> None:
    data = seg_head().config.to_dict()
    data.pop("output_stride")  # a checkpoint written before the field existed
    assert SegHeadConfig.from_dict(data).output_stride == 1
    for bad in (3, 32, 0):
        with pytest.raises(ValueError, match="output_stride"):
            seg_head(output_stride=bad)


def image(b: int = 2, grid: int = GRID, patch: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, grid * patch, grid * patch)


@pytest.mark.parametrize(("stride", "kept"), [(1, [2, 4, 8]), (4, [4, 8]), (8, [8]), (16, [])])
def test_detail_branch_feeds_the_decoder_stages_it_reaches(stride: int, kept: list[int]) -> None:
    head, x, img = seg_head(output_stride=stride, detail_channels=8), levels(), image()
    reduced = head.reduce(x, img)
    # The cache holds the levels, then the detail maps of the strides the decoder uses.
    assert [tuple(r.shape[-2:]) for r in reduced[3:]] == [(GRID * 16 // s,) * 2 for s in kept]
    assert (head.detail is None) == (not kept)
    out = head.decode(reduced, prompts(3))
    assert out.shape == (2, 3, GRID * 16, GRID * 16) and torch.isfinite(out).all()
    if kept:  # the image, not only the ViT levels, now shapes the maps
        other = head(x, prompts(3), img.flip(-1))
        assert (other - head(x, prompts(3), img)).abs().max() > 1e-4


def test_detail_branch_needs_the_image_and_checks_it() -> None:
    head = seg_head(detail_channels=8)
    with pytest.raises(ValueError, match="needs the image"):
        head.reduce(levels())
    with pytest.raises(ValueError, match=r"image must be \(B, 3, 64, 64\)"):
        head.reduce(levels(), image(patch=8))
    with pytest.raises(ValueError, match="detail maps"):
        head.decode(head.reduce(levels(), image())[:3], prompts(1))
    with pytest.raises(ValueError, match="detail_channels"):
        seg_head(detail_channels=-1)
    data = seg_head().config.to_dict()
    data.pop("detail_channels")  # a checkpoint written before the field existed
    assert SegHeadConfig.from_dict(data).detail_channels == 0


def test_different_prompts_give_different_maps() -> None:
    out = seg_head()(levels(1), prompts(2))
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("detail", [0, 8])
def test_decode_of_reduce_equals_forward(detail: int) -> None:
    head, x, t, img = seg_head(detail_channels=detail), levels(), prompts(3), image()
    with torch.no_grad():
        assert torch.equal(head.decode(head.reduce(x, img), t), head(x, t, img))


@pytest.mark.parametrize("detail", [0, 8])
def test_batched_prompts_and_images_equal_one_by_one(detail: int) -> None:
    head, x, t, img = seg_head(detail_channels=detail), levels(2), prompts(4), image(2)
    with torch.no_grad():
        batched = head(x, t, img)
        reduced = head.reduce(x, img)
        for j in range(t.shape[0]):  # one prompt at a time over the cached reduction
            torch.testing.assert_close(head.decode(reduced, t[j:j + 1])[:, 0], batched[:, j],
                                       atol=1e-5, rtol=1e-5)
        for i in range(2):  # one image at a time
            single = head([lv[i:i + 1] for lv in x], t, img[i:i + 1])
            torch.testing.assert_close(single[0], batched[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("detail", [0, 8])
def test_per_image_prompts_match_shared_prompts(detail: int) -> None:
    head, x, t, img = seg_head(detail_channels=detail), levels(2), prompts(3), image(2)
    with torch.no_grad():
        torch.testing.assert_close(head(x, t.expand(2, -1, -1), img), head(x, t, img))


def test_seg_head_rejects_wrong_inputs_clearly() -> None:
    head = seg_head()
    with pytest.raises(ValueError, match=r"expected 3 levels .* C = \[24, 24, 24\]"):
        head(levels()[:2], prompts(1))
    with pytest.raises(ValueError, match=r"text must be \(P, 16\)"):
        head(levels(), torch.randn(2, 8))
    with pytest.raises(ValueError, match="decoder"):
        SegHeadConfig([C], D, decoder="nearest")


def test_seg_config_json_round_trip_rebuilds_the_same_head() -> None:
    head = seg_head(decoder="transposed", out_size=[32, 48])
    cfg = SegHeadConfig.from_dict(json.loads(json.dumps(head.config.to_dict())))
    assert cfg == head.config
    rebuilt = TextConditionedSegHead.from_config(cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match="unknown field.*widht"):
        SegHeadConfig.from_dict({**cfg.to_dict(), "widht": 3})


# A toy task that needs the text: every image holds a disk and a square; prompt A asks for the
# disk, prompt B for the square. Without text conditioning the best Dice per prompt is ~0.67.
TOY_SIZE, TOY_PATCH = 32, 4


def toy_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(TOY_SIZE), torch.arange(TOY_SIZE), indexing="ij")
    images, masks = torch.zeros(n, 1, TOY_SIZE, TOY_SIZE), torch.zeros(n, 2, TOY_SIZE, TOY_SIZE)

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    for i in range(n):
        disk_x, square_x = (8, 24) if rand(0, 2) else (24, 8)  # sides at random
        disk_x, square_x = disk_x + rand(-1, 2), square_x + rand(-1, 2)
        disk_y, square_y = rand(9, TOY_SIZE - 9), rand(9, TOY_SIZE - 9)
        radius = 5.5 + 1.5 * float(torch.rand(1, generator=g))
        half = rand(5, 7)
        disk = (yy - disk_y) ** 2 + (xx - disk_x) ** 2 <= radius**2
        square = ((yy - square_y).abs() <= half) & ((xx - square_x).abs() <= half)
        masks[i, 0], masks[i, 1] = disk, square
        # Same brightness: only the shape tells them apart.
        images[i, 0] = (disk | square).float() + 0.1 * torch.randn(TOY_SIZE, TOY_SIZE, generator=g)
    return images, masks


def toy_levels(images: torch.Tensor) -> list[torch.Tensor]:
    patches = F.pixel_unshuffle(images, TOY_PATCH)  # a patch embedding: (n, 16, 8, 8)
    return [patches] * 3


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-prompt Dice over a batch of (n, P, H, W) masks."""
    return 2 * (pred * target).sum((0, 2, 3)) / (pred + target).sum((0, 2, 3))


def fit_toy(head: TextConditionedSegHead, batch, text: torch.Tensor, steps: int) -> None:  # noqa: ANN001
    """Train `head` on `batch(g) -> (levels, image or None, masks)` with Dice + cross-entropy."""
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        lv, img, masks = batch(g)
        logits = head(lv, text, img)
        soft = logits.sigmoid()
        soft_dice = (2 * (soft * masks).sum((2, 3)) + 1) / ((soft + masks).sum((2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, masks) + (1 - soft_dice).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_text_conditioning_tells_two_structures_apart() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    head = TextConditionedSegHead([16] * 3, D, width=32, patch_size=TOY_PATCH)
    text = prompts(2)

    def batch(g: torch.Generator) -> tuple[list[torch.Tensor], None, torch.Tensor]:
        images, masks = toy_batch(8, g)
        return toy_levels(images), None, masks

    fit_toy(head, batch, text, steps=100)
    images, masks = toy_batch(32, torch.Generator().manual_seed(99))
    with torch.no_grad():
        pred = (head(toy_levels(images), text) > 0).float()
    scores = dice(pred, masks)
    assert scores.min() > 0.8, f"Dice disk, square = {scores.tolist()}"
    # Swapping the prompts swaps the structures.
    assert dice(pred.flip(1), masks).max() < 0.5


def test_detail_branch_places_boundaries_the_patch_grid_cannot() -> None:
    """Levels that only know each patch's mean brightness (a ViT's view, coarsely) cannot place
    a disk's edge inside a patch; the detail branch sees the pixels and can."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    text = prompts(1)

    def batch(g: torch.Generator, n: int = 8) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        images, masks = toy_batch(n, g)
        coarse = F.avg_pool2d(images, 8)                                # (n, 1, 4, 4)
        return [coarse.expand(-1, 16, -1, -1)] * 3, images.expand(-1, 3, -1, -1), masks[:, :1]

    scores = {}
    for detail in (0, 8):
        torch.manual_seed(0)
        head = TextConditionedSegHead([16] * 3, D, width=32, patch_size=8, detail_channels=detail)
        fit_toy(head, batch, text, steps=80)
        lv, img, masks = batch(torch.Generator().manual_seed(99), 32)
        with torch.no_grad():
            scores[detail] = float(dice((head(lv, text, img) > 0).float(), masks)[0])
    assert scores[8] > 0.9 and scores[8] > scores[0] + 0.05, scores


# --- zero-shot classification ---------------------------------------------------------------

def test_class_embeddings_are_renormalised_means_of_normalised_prompts() -> None:
    ensembles = [torch.randn(3, D) * 5, torch.randn(1, D), torch.randn(D)]
    out = ZeroShotClassifier.class_embeddings(ensembles)
    assert out.shape == (3, D)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    expected = F.normalize(F.normalize(ensembles[0], dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(out[0], expected)
    stacked = torch.randn(4, 2, D)
    torch.testing.assert_close(ZeroShotClassifier.class_embeddings(stacked),
                               ZeroShotClassifier.class_embeddings(list(stacked)))


def test_zero_shot_picks_the_class_whose_ensemble_is_closest() -> None:
    centres = F.normalize(torch.randn(3, D), dim=-1)
    ensembles = [F.normalize(c + 0.2 * torch.randn(4, D), dim=-1) for c in centres]
    images = F.normalize(centres[[2, 0, 1]] + 0.1 * torch.randn(3, D), dim=-1) * 7  # any norm
    clf = ZeroShotClassifier()
    probs = clf(images, ensembles)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert probs.argmax(-1).tolist() == [2, 0, 1]
    # The logit scale is exp of the stored log value: a smaller scale gives softer probabilities.
    soft = ZeroShotClassifier(logit_scale_log=math.log(10.0))(images, ensembles)
    assert (soft.max(-1).values < probs.max(-1).values).all()


# --- trained classification head ------------------------------------------------------------

@pytest.mark.parametrize(("hidden", "embed_dim"), [(0, 0), (32, D)])
def test_classification_head_shapes(hidden: int, embed_dim: int) -> None:
    head = ClassificationHead([C, C, C], num_classes=2, embed_dim=embed_dim, hidden=hidden)
    embedding = torch.randn(5, D) if embed_dim else None
    mask = torch.rand(5, GRID * 16, GRID * 16) > 0.5
    assert head(levels(5), embedding).shape == (5, 2)
    assert head(levels(5), embedding, mask=mask).shape == (5, 2)
    assert head.pool(levels(5), embedding).shape == (5, 3 * C + embed_dim)
    cfg = ClsHeadConfig.from_dict(json.loads(json.dumps(head.config.to_dict())))
    assert cfg == head.config


def test_classification_head_needs_the_embedding_it_was_built_for() -> None:
    with pytest.raises(ValueError, match=r"needs the image embedding \(B, 16\)"):
        ClassificationHead([C], 2, embed_dim=D)(levels(1)[:1])


def test_masked_pooling_averages_only_inside_the_mask() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x[:, :, :2, :2] = 1.0  # the top-left 2 x 2 patches
    x[:, :, 3, 3] = -8.0
    mask = torch.zeros(2, 64, 64)
    mask[0, :32, :32] = 1  # covers exactly the top-left patches (mask at pixel resolution)
    mask[0, :8, 32:40] = 1  # a quarter of patch (0, 2), weighed by its coverage
    pooled = masked_average(x, mask)
    torch.testing.assert_close(pooled[0], torch.full((3,), 4 / 4.25))
    # An empty mask falls back to the global average, never NaN.
    torch.testing.assert_close(pooled[1], x[1].mean((1, 2)))
    torch.testing.assert_close(masked_average(x, None), x.mean((2, 3)))
    with pytest.raises(ValueError, match="mask must be"):
        masked_average(x, torch.ones(3, 64, 64))


# --- calibration ------------------------------------------------------------------------------

def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            gap = (confidence[inside].mean() - correct[inside].mean()).abs()
            ece += float(inside.float().mean() * gap)
    return ece


def test_temperature_scaling_fixes_over_confident_logits() -> None:
    g = torch.Generator().manual_seed(3)
    true_logits = torch.randn(2000, 3, generator=g)
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=g)[:, 0]
    over_confident = 4.0 * true_logits
    scaler = TemperatureScaler()
    with torch.no_grad():  # fitting must work where inference code runs
        temperature = scaler.fit(over_confident, labels)
    assert temperature > 0 and scaler.temperature == temperature
    assert 3.0 < temperature < 5.5
    before, after = over_confident.softmax(-1), scaler(over_confident)
    torch.testing.assert_close(after.sum(-1), torch.ones(2000))
    assert F.nll_loss(after.log(), labels) < F.nll_loss(before.log(), labels)
    ece_before, ece_after = (expected_calibration_error(p, labels) for p in (before, after))
    assert ece_after < ece_before / 2
    # The argmax (accuracy) is unchanged by a temperature.
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaler(0.0)

"""Model checkpoints: safetensors + manifest.json, checked on load, written atomically."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from usvlm.errors import OutputError, USVLMError
from usvlm.model.checkpoint import file_sha256, load_checkpoint, save_checkpoint, shapes_of
from usvlm.model.errors import CheckpointError
from usvlm.model.heads import ClassificationHead, SegHeadConfig, TextConditionedSegHead
from usvlm.model.manifest import FORMAT_VERSION, SCHEMA, validate_manifest, write_manifest

CORE = Path(__file__).resolve().parents[1] / "USVLMCore" / "usvlm"


def make_manifest() -> dict:
    seg = TextConditionedSegHead([8, 8, 8], 4, width=8).config.to_dict()
    cls = ClassificationHead([8, 8, 8], 2).config.to_dict()
    return {
        "name": "tiny-test-model",
        "backbone": {"id": "local-dir:/models/tiny", "weights_sha256": "ab" * 32,
                     "config": {"embed_dim": 4, "text_cfg": {}, "vision_cfg": {
                         "width": 8, "head_width": 8, "layers": 12, "patch_size": 16}}},
        "adapter": {"type": "mona", "blocks": "all", "hidden": 4},
        "heads": {"segmentation": seg, "classification": cls},
        "preprocessing": {"input_size": [64, 64], "mean": [0.5], "std": [0.25], "color": "grey"},
        "prompts": {"default": ["breast mass"], "bank": "breast"},
        "class_names": ["benign", "malignant"],
        "thresholds": {"segmentation": 0.5},
        "temperature": 1.3,
        "provenance": {"dataset": "phantom", "split_sizes": {"train": 10, "val": 2}, "seed": 0,
                       "git_revision": None, "created": "2025-01-01T00:00:00Z",
                       "software": {"usvlm": "0.1.0", "torch": torch.__version__}},
        "metrics": {"dice": 0.9},
    }


def make_parts() -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "heads.segmentation": TextConditionedSegHead([8, 8, 8], 4, width=8).state_dict(),
        "heads.classification": ClassificationHead([8, 8, 8], 2).state_dict(),
        "adapters": {"block0.down.weight": torch.randn(4, 8, dtype=torch.bfloat16),
                     "block0.gain": torch.randn(3, dtype=torch.float16),
                     "block0.steps": torch.tensor([1, 2, 3])},
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "model", make_parts(), make_manifest())


def rewrite_manifest(model: Path, change) -> None:
    path = model / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rehash(manifest: dict, model: Path) -> None:
    weights = model / "model.safetensors"
    manifest["files"]["model.safetensors"] = {"sha256": file_sha256(weights),
                                              "bytes": weights.stat().st_size}


# --- round trip ---------------------------------------------------------------------------------

def test_round_trip_is_bit_exact(model: Path) -> None:
    parts = make_parts()
    manifest, loaded = load_checkpoint(model)
    assert loaded.keys() == parts.keys()
    for name, state in parts.items():
        assert loaded[name].keys() == state.keys()
        for key, tensor in state.items():
            assert loaded[name][key].dtype == tensor.dtype
            assert torch.equal(loaded[name][key], tensor), (name, key)
    expected = make_manifest()
    assert {k: v for k, v in manifest.items() if k not in ("format_version", "files")} == expected
    assert list(manifest)[0] == "format_version" and manifest["format_version"] == FORMAT_VERSION
    weights = model / "model.safetensors"
    assert manifest["files"] == {"model.safetensors": {"sha256": file_sha256(weights),
                                                       "bytes": weights.stat().st_size}}
    # The manifest path works as well as the directory; the weights load into real heads.
    assert load_checkpoint(model / "manifest.json")[0] == manifest
    head = TextConditionedSegHead.from_config(
        SegHeadConfig.from_dict(manifest["heads"]["segmentation"]))
    head.load_state_dict(loaded["heads.segmentation"])


def test_file_sha256_streams_in_chunks(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk_size=7) == hashlib.sha256(data).hexdigest()


def test_tied_weights_and_extra_files_are_saved(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    bank = tmp_path / "bank.json"
    bank.write_text('{"mass": ["hypoechoic mass"]}')
    manifest = {**make_manifest(), "prompts": {"bank": "prompt_bank.json"}}
    out = save_checkpoint(tmp_path / "m", {"heads.a": {"w": shared, "w_tied": shared}}, manifest,
                          extra_files={"prompt_bank.json": bank})
    loaded_manifest, parts = load_checkpoint(out)
    assert torch.equal(parts["heads.a"]["w_tied"], shared)
    assert (out / "prompt_bank.json").read_bytes() == bank.read_bytes()
    assert loaded_manifest["files"]["prompt_bank.json"]["sha256"] == file_sha256(bank)
    with pytest.raises(CheckpointError, match=r"nope\.json: missing \(to be stored in the model"):
        save_checkpoint(tmp_path / "m2", {}, manifest,
                        extra_files={"bank.json": tmp_path / "nope.json"})
    (out / "prompt_bank.json").write_text('{"mass": ["anything"]}')
    with pytest.raises(CheckpointError, match=r"prompt_bank\.json: does not match manifest"):
        load_checkpoint(out)


def test_overlapping_part_names_are_refused(tmp_path: Path) -> None:
    parts = {"heads": {"segmentation.w": torch.ones(1)}, "heads.segmentation": {"w": torch.ones(1)}}
    with pytest.raises(ValueError, match="overlap"):
        save_checkpoint(tmp_path / "m", parts, make_manifest())
    assert not (tmp_path / "m").exists()


def test_manifest_values_are_normalised_to_json(tmp_path: Path) -> None:
    manifest = make_manifest()
    manifest["preprocessing"]["input_size"] = (64, 64)  # tuples are fine, stored as lists
    out = save_checkpoint(tmp_path / "m", make_parts(), manifest)
    assert load_checkpoint(out)[0]["preprocessing"]["input_size"] == [64, 64]
    manifest["metrics"] = {"dice": torch.tensor(0.9)}
    with pytest.raises(CheckpointError, match="manifest.json: not JSON-serialisable"):
        save_checkpoint(tmp_path / "m2", make_parts(), manifest)


def test_saved_files_honour_the_umask(model: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (model, model / "manifest.json", model / "model.safetensors"):
        assert path.stat().st_mode & 0o777 & umask == 0
        assert path.stat().st_mode & 0o044 == 0o044 & ~umask, path


def test_manifest_updated_in_place(model: Path) -> None:
    manifest, _ = load_checkpoint(model)
    manifest["thresholds"]["segmentation"] = 0.35
    manifest["temperature"] = 1.7
    write_manifest(model / "manifest.json", manifest)
    assert load_checkpoint(model)[0]["thresholds"]["segmentation"] == 0.35
    before = (model / "manifest.json").read_text()
    manifest["thresholds"]["segmentation"] = 2.0
    with pytest.raises(CheckpointError, match="thresholds.segmentation"):
        write_manifest(model / "manifest.json", manifest)
    assert (model / "manifest.json").read_text() == before


# --- manifest validation ------------------------------------------------------------------------

def test_schema_is_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("backbone"), r"manifest\.json: 'backbone' is a required property"),
    (lambda m: m["thresholds"].update(segmentation=1.5),
     r"manifest\.json: thresholds\.segmentation: 1\.5 is greater than the maximum of 1"),
    (lambda m: m["preprocessing"].update(color="cmyk"),
     r"preprocessing\.color: 'cmyk' is not one of"),
    (lambda m: m.pop("class_names"), r"'class_names' is a required property"),
    (lambda m: m.update(threshold=0.5), r"Additional properties are not allowed \('threshold'"),
    (lambda m: m.update(temperature=0), r"temperature: 0 is less than the minimum of 1e-06"),
    (lambda m: m.update(temperature=1e-300), r"temperature: 1e-300 is less than the minimum"),
    (lambda m: m["files"]["model.safetensors"].update(sha256="xyz"),
     r"files\.model\.safetensors\.sha256"),
])
def test_invalid_manifest_is_refused_with_a_clear_message(model: Path, change,
                                                          message: str) -> None:
    rewrite_manifest(model, change)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(model)
    assert isinstance(caught.value, USVLMError)
    assert "\n" not in str(caught.value)


def test_invalid_manifest_is_refused_before_saving(tmp_path: Path) -> None:
    manifest = make_manifest()
    del manifest["name"]
    with pytest.raises(CheckpointError, match=r"manifest\.json: 'name' is a required property"):
        save_checkpoint(tmp_path / "m", make_parts(), manifest)
    assert list(tmp_path.iterdir()) == []


def test_not_json_and_not_an_object(model: Path) -> None:
    (model / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest\.json: not valid JSON"):
        load_checkpoint(model)
    with pytest.raises(CheckpointError, match="is not of type 'object'"):
        validate_manifest([1, 2])


def test_newer_format_version_is_refused(model: Path, tmp_path: Path) -> None:
    rewrite_manifest(model, lambda m: m.update(format_version=FORMAT_VERSION + 1, new_field=1))
    with pytest.raises(CheckpointError, match="made by a newer USVLM .*upgrade USVLM"):
        load_checkpoint(model)
    with pytest.raises(CheckpointError, match="writes format_version 1, not 2"):
        save_checkpoint(tmp_path / "m2", make_parts(), {**make_manifest(), "format_version": 2})


# --- damaged, missing and foreign files ---------------------------------------------------------

def test_tampered_weights_are_refused(model: Path) -> None:
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) - 10] ^= 0x01  # one bit inside the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError,
                       match=r"model\.safetensors: does not match manifest\.json \(different "
                             r"sha256\).*refusing"):
        load_checkpoint(model)


def test_truncated_weights_are_refused(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*bytes"):
        load_checkpoint(model)


def test_missing_files(model: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model"):
        load_checkpoint(tmp_path / "nowhere")
    (model / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing \(listed in manifest"):
        load_checkpoint(model)
    (model / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"not a USVLM model directory \(manifest\.json is"):
        load_checkpoint(model)


def test_pickle_renamed_to_safetensors_is_refused_without_unpickling(model: Path) -> None:
    weights = model / "model.safetensors"

    class Boom:  # unpickling this would raise: proves the loader never unpickles
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    torch.save({"w": torch.ones(2), "boom": Boom()}, weights)
    # Even with a matching hash (a foreign file, not a damaged one) it is refused.
    rewrite_manifest(model, lambda m: rehash(m, model))
    with pytest.raises(CheckpointError, match="pickle.*never unpickles"):
        load_checkpoint(model)
    weights.write_bytes(b"\x00" * 64)
    rewrite_manifest(model, lambda m: rehash(m, model))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(model)


def test_foreign_safetensors_without_parts_is_refused(model: Path) -> None:
    safetensors.torch.save_file({"w": torch.ones(2)}, str(model / "model.safetensors"))
    rewrite_manifest(model, lambda m: rehash(m, model))
    with pytest.raises(CheckpointError, match="not written by USVLM"):
        load_checkpoint(model)


def test_shape_mismatch_lists_the_first_mismatching_keys(model: Path) -> None:
    wanted = shapes_of({"heads.segmentation": TextConditionedSegHead([8, 8, 8], 4, width=16),
                              "adapters": {"block0.gain": torch.zeros(3)}})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, expected_shapes=wanted)
    message = str(caught.value)
    assert "model.safetensors: does not fit this model: heads.segmentation." in message
    assert "has shape (8, 8, 1, 1), expected (16, 8, 1, 1)" in message
    assert "more)" in message and message.count(";") == 4  # the first five, then a count
    wanted = {"adapters.block0.gain": (3,), "adapters.absent": (1,)}
    with pytest.raises(CheckpointError, match="adapters.absent is missing"):
        load_checkpoint(model, expected_shapes=wanted)
    # Matching shapes (a subset of the keys) load.
    load_checkpoint(model, expected_shapes={"adapters.block0.gain": (3,)})


# --- atomic saving ----------------------------------------------------------------------------

def test_existing_model_is_not_overwritten_unless_asked(model: Path) -> None:
    before = file_sha256(model / "model.safetensors")
    parts = make_parts()
    parts["adapters"]["block0.gain"] += 1
    with pytest.raises(OutputError, match="already exists; pass overwrite=True"):
        save_checkpoint(model, parts, make_manifest())
    assert file_sha256(model / "model.safetensors") == before
    save_checkpoint(model, parts, make_manifest(), overwrite=True)
    assert torch.equal(load_checkpoint(model)[1]["adapters"]["block0.gain"],
                       parts["adapters"]["block0.gain"])
    assert sorted(p.name for p in model.parent.iterdir()) == ["model"]


def test_a_folder_that_is_not_a_model_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a USVLM model directory; refusing"):
        save_checkpoint(folder, make_parts(), make_manifest(), overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("existing", [False, True])
def test_failure_while_saving_leaves_nothing_behind(tmp_path: Path, monkeypatch,
                                                    existing: bool) -> None:
    target = tmp_path / "model"
    if existing:
        save_checkpoint(target, make_parts(), make_manifest())
    before = {p: p.read_bytes() for p in target.glob("*")} if existing else {}
    real_save = safetensors.torch.save_file

    def save_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)  # the weights are written, then...
        raise KeyboardInterrupt  # ...the user presses Ctrl-C

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, make_parts(), make_manifest(), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == (["model"] if existing else [])
    assert ({p: p.read_bytes() for p in target.glob("*")} if existing else {}) == before


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "model", make_parts(), make_manifest())


# --- never unpickle -----------------------------------------------------------------------------

def _unsafe_torch_loads(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords)
            if not safe:
                lines.append(node.lineno)
    return lines


def test_no_torch_load_without_weights_only_in_the_core(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"  # the scan itself finds what it must
    probe.write_text("import torch\ntorch.load('a')\ntorch.load('b', weights_only=True)\n"
                     "torch.load('c', weights_only=False)\n")
    assert _unsafe_torch_loads(probe) == [2, 4]
    sources = sorted(CORE.rglob("*.py"))
    assert len(sources) > 10
    unsafe = {str(p.relative_to(CORE)): lines for p in sources if (lines := _unsafe_torch_loads(p))}
    assert unsafe == {}, f"torch.load( without weights_only=True: {unsafe}"

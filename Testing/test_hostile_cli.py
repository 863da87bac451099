"""The command line against a careless or hostile user (issue 13, second hardening round):
outputs never touch inputs or existing files, one input's outputs land all together or not at all,
every option is checked when parsed, every error is one line (exit 2) and a batch goes on.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.io
from conftest import us_file
from models import save_tiny_model

from usvlm.cli import main
from usvlm.errors import OutputError
from usvlm.io import read_seg_nrrd
from usvlm.io.atomic import AtomicGroup

ROOT = Path(__file__).resolve().parents[1]
USVLM = [sys.executable, "-m", "usvlm"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) with its digest."""
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path, array: np.ndarray) -> Path:
    skimage.io.imsave(path, array, check_contrast=False)
    return path


def _one_error_line(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines, err
    assert "Traceback" not in err, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _refused(capsys, argv: list[str], folder: Path, *names: str) -> str:  # noqa: ANN001
    """`argv` exits with 2, prints one error line naming `names`, and changes nothing in `folder`."""
    before = _listing(folder)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, *names)
    assert _listing(folder) == before, "a refused command changed files"
    return line


# -- 1. Outputs never touch inputs or existing files -----------------------------------------------

def test_the_guides_first_example_keeps_the_source(tmp_path, model_dir, capsys):
    """`segment scan.dcm -o scan.seg.nrrd --dicom-seg --overlay --json` wrote the SEG to scan.dcm."""
    scan = tmp_path / "scan.dcm"
    shutil.copy(us_file("US1_UNCR.dcm"), scan)
    before = _digest(scan)
    code = main(["segment", str(scan), "--prompt", "mass", "--model", str(model_dir), "-o",
                 str(tmp_path / "scan.seg.nrrd"), "--dicom-seg", "--overlay", "--json"])
    assert code == 0, capsys.readouterr().err
    assert _digest(scan) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scan.dcm", "scan.overlay.png", "scan.seg.dcm", "scan.seg.json", "scan.seg.nrrd"]


def test_an_output_named_like_an_input_is_refused(tmp_path, model_dir, capsys):
    image = _png(tmp_path / "img.overlay.png", np.full((64, 64), 90, np.uint8))
    _refused(capsys, ["segment", str(image), "--prompt", "mass", "--model", str(model_dir), "--overlay",
                      "-o", str(tmp_path / "img.seg.nrrd")], tmp_path, "img.overlay.png", "input")


def test_a_hard_link_to_the_input_is_refused_even_with_force(tmp_path, model_dir, capsys):
    scan = tmp_path / "scan.dcm"
    shutil.copy(us_file("US1_UNCR.dcm"), scan)
    os.link(scan, tmp_path / "scan.seg.dcm")
    _refused(capsys, ["segment", str(scan), "--prompt", "mass", "--model", str(model_dir), "--dicom-seg",
                      "--force", "-o", str(tmp_path / "scan.seg.nrrd")], tmp_path, "scan.seg.dcm", "input")


def test_a_symlink_to_the_input_is_refused_even_with_force(tmp_path, model_dir, capsys):
    scan = tmp_path / "scan.dcm"
    shutil.copy(us_file("US1_UNCR.dcm"), scan)
    (tmp_path / "out.seg.nrrd").symlink_to(scan)
    _refused(capsys, ["segment", str(scan), "--prompt", "mass", "--model", str(model_dir), "--force",
                      "-o", str(tmp_path / "out.seg.nrrd")], tmp_path, "out.seg.nrrd", "input")


def test_mask2seg_never_writes_over_its_reference(tmp_path, capsys):
    reference = tmp_path / "ref.dcm"
    shutil.copy(us_file("US1_UNCR.dcm"), reference)
    mask = np.zeros((480, 640), np.uint8)
    mask[100:200, 100:200] = 255
    mask_png = _png(tmp_path / "mask.png", mask)
    _refused(capsys, ["mask2seg", str(mask_png), "--reference", str(reference), "-o",
                      str(tmp_path / "m.seg.nrrd"), "--dicom-seg", str(reference), "--force"],
             tmp_path, "ref.dcm", "input")


def test_classify_never_writes_json_over_an_image_or_into_a_folder(tmp_path, model_dir, capsys):
    scan = tmp_path / "scan.dcm"
    shutil.copy(us_file("US1_UNCR.dcm"), scan)
    _refused(capsys, ["classify", str(scan), "--model", str(model_dir), "--json", str(scan), "--force"],
             tmp_path, "scan.dcm", "input")
    (tmp_path / "folder").mkdir()
    _refused(capsys, ["classify", str(scan), "--model", str(model_dir), "--json", str(tmp_path / "folder")],
             tmp_path, "folder")


def test_folder_mode_into_the_input_folder_leaves_the_inputs(tmp_path, model_dir, capsys):
    shutil.copy(us_file("US1_UNCR.dcm"), tmp_path / "a.dcm")
    _png(tmp_path / "b.png", np.full((64, 64), 90, np.uint8))
    inputs = _listing(tmp_path)
    argv = ["segment", str(tmp_path), "--prompt", "mass", "--model", str(model_dir), "--overlay", "--json",
            "--no-progress", "-o", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    after = _listing(tmp_path)
    assert {k: after[k] for k in inputs} == inputs
    assert set(after) - set(inputs) == {"a.seg.nrrd", "a.overlay.png", "a.seg.json",
                                        "b.seg.nrrd", "b.overlay.png", "b.seg.json"}
    # Run again: the outputs are not read as inputs, and they are not replaced without --force.
    _refused(capsys, argv, tmp_path, "a.seg.nrrd", "--force")
    assert main([*argv, "--force"]) == 0, capsys.readouterr().err


def test_existing_results_need_force(tmp_path, model_dir, capsys):
    out = tmp_path / "r.seg.nrrd"
    argv = ["segment", str(us_file("US1_UNCR.dcm")), "--prompt", "mass", "--model", str(model_dir), "--json",
            "-o", str(out)]
    (tmp_path / "r.seg.json").write_text("the user's own notes\n")
    _refused(capsys, argv, tmp_path, "r.seg.json", "already exists", "--force")
    assert main([*argv, "--force"]) == 0, capsys.readouterr().err
    assert "segments" in (tmp_path / "r.seg.json").read_text()


# -- 9. One input's outputs land all together or not at all ---------------------------------------

def _chattr(flag: str, path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    proc = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"the file system does not take immutable flags here ({proc.stderr.strip()})")


def _old_set(folder: Path) -> dict[str, str]:
    for name in ("a.seg.nrrd", "a.seg.json"):
        (folder / name).write_text(f"old {name}\n")
    return _listing(folder)


def test_a_rename_that_fails_midway_restores_the_old_set(tmp_path):
    """The second file cannot be moved into place (immutable): the first, already replaced, is
    put back, so the old .seg.nrrd never sits beside a new JSON or the reverse."""
    old = _old_set(tmp_path)
    stuck = None
    try:
        with pytest.raises(OutputError) as caught:
            with AtomicGroup() as group:
                group.path(tmp_path / "a.seg.nrrd").write_text("new\n")
                stuck = group.path(tmp_path / "a.seg.json")
                stuck.write_text("new\n")
                _chattr("+i", stuck)
        assert "\n" not in str(caught.value) and "a.seg.nrrd" in str(caught.value)
        assert {k: v for k, v in _listing(tmp_path).items() if not k.startswith(".")} == old
    finally:
        if stuck is not None and stuck.exists():
            subprocess.run(["chattr", "-i", str(stuck)], check=False)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p != stuck]
    assert hidden == [], hidden


def test_a_target_that_cannot_be_replaced_leaves_no_temporary_file(tmp_path):
    old = _old_set(tmp_path)
    _chattr("+i", tmp_path / "a.seg.json")
    try:
        with pytest.raises(OutputError):
            with AtomicGroup() as group:
                group.path(tmp_path / "a.seg.nrrd").write_text("new\n")
                group.path(tmp_path / "a.seg.json").write_text("new\n")
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "a.seg.json")], check=False)
    assert _listing(tmp_path) == old  # no hidden temporary or backup file either


def test_a_signal_during_the_commit_waits_until_the_set_is_whole(tmp_path):
    """SIGTERM while outputs are put in place is raised after the last rename."""
    from usvlm.cli import _on_signal
    from usvlm.interrupts import Terminated, uninterruptible

    previous = signal.signal(signal.SIGTERM, _on_signal)
    finished = []
    try:
        with pytest.raises(Terminated):
            with uninterruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between bytecodes: give it the chance
                    pass
                finished.append(True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert finished == [True]


def test_a_write_error_is_one_line_and_leaves_nothing(tmp_path):
    """A file-size limit (EFBIG, as a full disk gives ENOSPC) while writing: one line, exit 2, no
    output, no hidden temporary file."""
    rng = np.random.default_rng(0)
    reference = _png(tmp_path / "ref.png", rng.integers(0, 255, (256, 256), dtype=np.uint8))
    mask = _png(tmp_path / "mask.png", (rng.random((256, 256)) > 0.5).astype(np.uint8) * 255)
    out = tmp_path / "out"
    out.mkdir()

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([*USVLM, "mask2seg", str(mask), "--reference", str(reference), "-o",
                           str(out / "m.seg.nrrd")], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr, "m.seg.nrrd", "cannot write")
    assert "File too large" in line
    assert list(out.iterdir()) == []


# -- 10. Options are checked when parsed; errors are one line ---------------------------------------

BAD_OPTIONS = {
    "threshold above 1": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--threshold", "2"],
    "threshold NaN": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--threshold", "nan"],
    "negative min area": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--min-area", "-5"],
    "NaN min area": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--min-area", "nan"],
    "unknown device": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--device", "bogus"],
    "meta device": ["classify", "x.png", "--device", "meta"],
    "negative frame": ["segment", "x.png", "--prompt", "mass", "-o", "o.seg.nrrd", "--frames", "-1"],
    "NaN spacing": ["info", "x.png", "--spacing", "nan,0.1"],
    "zero spacing": ["info", "x.png", "--spacing", "0,0.1"],
    "NaN colour": ["mask2seg", "m.png", "--reference", "x.png", "-o", "o.seg.nrrd", "--color", "nan,0,0"],
    "negative classify frame": ["classify", "x.png", "--frame", "-1"],
    "zero phantoms": ["phantom", "--out", "p", "--count", "0"],
    "tiny bench image": ["bench", "--size", "4x4"],
    "zero bench repeats": ["bench", "--repeats", "0"],
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_refused_when_parsed(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(BAD_OPTIONS[case])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("usvlm")
    assert list(tmp_path.iterdir()) == []


TRAINING_BAD_OPTIONS = {
    "NaN learning rate": ("usvlm_training.train.cli", ["finetune", "--data", "d", "--out", "o", "--model", "m",
                                                       "--lr", "nan"]),
    "zero epochs": ("usvlm_training.train.cli", ["finetune", "--data", "d", "--out", "o", "--model", "m",
                                                 "--epochs", "0"]),
    "few-shot above 1": ("usvlm_training.train.cli", ["finetune", "--data", "d", "--out", "o", "--model", "m",
                                                      "--few-shot", "1.5"]),
    "negative batch": ("usvlm_training.train.cli", ["pretrain", "--data", "d", "--out", "o", "--batch-size", "-2"]),
    "evaluate threshold": ("usvlm_training.evaluate", ["--data", "d", "-o", "o", "--threshold", "inf"]),
    "infer device": ("usvlm_training.infer", ["x.png", "--prompt", "mass", "-o", "o", "--device", "tpu"]),
}


@pytest.mark.parametrize("case", sorted(TRAINING_BAD_OPTIONS))
def test_bad_training_options_are_refused_when_parsed(case, tmp_path, capsys, monkeypatch):
    import importlib

    module, argv = TRAINING_BAD_OPTIONS[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["abc", "1e9", "-5", "12"])
def test_a_bad_pixel_limit_setting_is_one_line(value, capsys, monkeypatch):
    monkeypatch.setenv("USVLM_MAX_PIXEL_BYTES", value)
    assert main(["info", str(us_file("US1_UNCR.dcm"))]) == 2
    _one_error_line(capsys.readouterr().err, "USVLM_MAX_PIXEL_BYTES")


def test_a_device_that_is_not_here_is_one_line(tmp_path, model_dir, capsys):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has Apple MPS")
    _refused(capsys, ["segment", str(us_file("US1_UNCR.dcm")), "--prompt", "mass", "--model", str(model_dir),
                      "--device", "mps", "-o", str(tmp_path / "o.seg.nrrd")], tmp_path, "mps")


PERSIAN = "توده\u200cی پستان"  # "breast mass"; the zero-width non-joiner is part of the spelling


@pytest.mark.parametrize("prompt", [PERSIAN, "mass\u200f", "nódulo tiroideo"])
def test_prompts_in_any_script_are_named_and_saved(prompt, tmp_path, model_dir, capsys):
    out = tmp_path / "o.seg.nrrd"
    code = main(["segment", str(us_file("US1_UNCR.dcm")), "--prompt", prompt, "--model", str(model_dir),
                 "-o", str(out), "--dicom-seg"])
    assert code == 0, capsys.readouterr().err
    name = read_seg_nrrd(out).segments[0].name
    assert name.casefold() == prompt.casefold() or prompt not in (PERSIAN,)  # banks may rename
    if prompt == PERSIAN:
        assert name == PERSIAN and PERSIAN.encode("utf-8") in out.read_bytes()


@pytest.mark.parametrize("prompt", ["mass\u2028cyst", "mass\u202ecyst", "mass\x1b[31m"])
def test_prompts_that_break_a_line_or_reorder_text_are_refused(prompt, tmp_path, model_dir, capsys):
    _refused(capsys, ["segment", str(us_file("US1_UNCR.dcm")), "--prompt", prompt, "--model", str(model_dir),
                      "-o", str(tmp_path / "o.seg.nrrd")], tmp_path, "prompt")


def test_messages_never_print_terminal_escapes(tmp_path, capsys):
    name = str(tmp_path / "\x1b[31mred\x1b[0m.png")
    assert main(["info", name]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31mred" in err


def test_an_empty_mask_is_not_classified(tmp_path, model_dir, capsys):
    mask = _png(tmp_path / "empty.png", np.zeros((480, 640), np.uint8))
    _refused(capsys, ["classify", str(us_file("US1_UNCR.dcm")), "--mask", str(mask), "--model", str(model_dir)],
             tmp_path, "empty.png", "empty")


def test_a_closed_pipe_ends_quietly(tmp_path):
    files = [str(us_file("US1_UNCR.dcm"))] * 40
    proc = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -c 10 >/dev/null; echo "${PIPESTATUS[0]}" >&2',
                           "_", *USVLM, "info", *files], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] in ("0", "141"), proc.stderr


def test_a_batch_goes_on_after_an_unexpected_error(tmp_path, capsys):
    from usvlm.cli._common import for_each

    done: list[str] = []

    def work(path: Path) -> None:
        if path.name == "b":
            raise ValueError("a defect")
        done.append(path.name)

    assert for_each([Path("a"), Path("b"), Path("c")], work) == 1
    assert done == ["a", "c"]
    _one_error_line(capsys.readouterr().err, "b:", "ValueError", "defect of USVLM")


# -- 11. phantom --overwrite never deletes the user's folders --------------------------------------

def test_phantom_never_replaces_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "thesis.docx").write_text("years of work\n")
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["phantom", "--out", ".", "--count", "1", "--overwrite", "--no-progress"], tmp_path,
             "current folder")


def test_phantom_overwrite_replaces_only_a_phantom_data_set(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    _refused(capsys, ["phantom", "--out", str(mine), "--count", "1", "--overwrite", "--no-progress"],
             tmp_path, "not a phantom data set")
    data = tmp_path / "data"
    assert main(["phantom", "--out", str(data), "--count", "1", "--no-progress"]) == 0
    assert main(["phantom", "--out", str(data), "--count", "2", "--overwrite", "--no-progress"]) == 0
    assert len((data / "samples.jsonl").read_text().splitlines()) == 2


# -- A model folder saved before manifests had checksums -------------------------------------------

def test_models_trust_signs_off_a_checked_folder_only(tmp_path, model_dir, capsys):
    from usvlm.model.vlm import load_model

    legacy = tmp_path / "legacy"
    shutil.copytree(model_dir, legacy)
    (legacy / "manifest.sha256").unlink()
    assert main(["models", "--trust", str(legacy)]) == 0, capsys.readouterr().err
    load_model(legacy)  # loads again
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    (tampered / "manifest.sha256").unlink()
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    _refused(capsys, ["models", "--trust", str(tampered)], tmp_path, "model.safetensors")
    assert not (tampered / "manifest.sha256").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_prompt_bank_that_is_not_a_file_is_refused_at_once(kind, tmp_path):
    from usvlm.errors import InputError
    from usvlm.text.banks import load_banks

    bank = tmp_path / "bank.json"
    if kind == "fifo":
        os.mkfifo(bank)
    else:
        bank.symlink_to("/dev/zero")
    code = ("import sys; from usvlm.text.banks import load_banks\n"
            "try: load_banks(extra=[sys.argv[1]])\nexcept Exception as e: print(type(e).__name__, e)")
    proc = subprocess.run([sys.executable, "-c", code, str(bank)], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    assert proc.stdout.startswith("InputError") and "not a regular file" in proc.stdout, proc.stdout + proc.stderr
    with pytest.raises(InputError):
        load_banks(extra=[bank])


_FINALIZER_RUN = """
import usvlm.cli as cli

class HalfBuilt:
    def __del__(self):
        raise AttributeError("'HalfBuilt' object has no attribute 'images_to_write'")

def run(argv):
    HalfBuilt()  # collected at once: its finalizer fails while the command runs
    return 0

cli._main = run
raise SystemExit(cli.main([]))
"""


def test_a_failing_finalizer_prints_no_traceback():
    """A library object half built when SIGTERM arrived fails in its __del__ (imageio's Pillow
    plugin did, during `phantom`): the command's output stays one line, no traceback. In a child
    process: pytest installs an unraisable-exception hook of its own."""
    proc = subprocess.run([sys.executable, "-c", _FINALIZER_RUN], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "images_to_write" not in proc.stderr, proc.stderr

"""The bad-input corpus (Testing/Data/bad, made by Testing/Data/make_bad_corpus.py) against every
reader, loader and CLI command.

Each corpus file must give the project's own error (InputError / CheckpointError, both USVLMError)
with a one-line message naming the file; the CLI must exit with 2, print one `error:` line and no
traceback, write no file, never unpickle anything, and never hang or run out of memory.

The CLI cases run in one child process (this file with --driver): `usvlm.cli.main` is called per
case with a time limit (SIGALRM), under an address-space limit, with stdout/stderr captured at the
file-descriptor level (so C libraries' output is checked too). A crash of the child is reported
with the case it was running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "Data" / "bad"
LISTING = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
FILES: dict[str, dict[str, str]] = LISTING["files"]
IMAGE_KINDS = {"dicom", "nrrd", "nifti", "png", "jpeg", "bmp", "tiff"}
CASE_SECONDS = 60  # per reader call or CLI command; every case takes well under a second
DRIVER_SECONDS = 900


def _names(*kinds: str) -> list[str]:
    return sorted(n for n, e in FILES.items() if e["kind"] in kinds)


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past its time limit (a hang)."""


@contextlib.contextmanager
def time_limit(seconds: int):  # noqa: ANN201
    def expire(signum, frame):  # noqa: ANN001
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_error(exc: BaseException, path: Path, entry: dict[str, str]) -> None:
    from usvlm.errors import USVLMError

    assert isinstance(exc, USVLMError), f"{path.name}: {type(exc).__name__}: {exc}"
    assert type(exc).__name__ == entry["expect"] or entry["expect"] in [c.__name__ for c in type(exc).__mro__], \
        f"{path.name}: expected {entry['expect']}, got {type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message, f"{path.name}: message spans lines: {message!r}"
    assert str(path) in message, f"{path.name}: message does not name the file: {message}"
    if entry.get("match"):
        assert re.search(entry["match"], message, re.IGNORECASE), f"{path.name}: {message!r} !~ {entry['match']!r}"
    assert LISTING["patient_name"] not in message and LISTING["patient_id"] not in message


def expect_refusal(call, path: Path, entry: dict[str, str], *, check=None,  # noqa: ANN001
                   accepted: str | None = None, limit: float = 10) -> None:
    """`call(path)` must raise within `limit` seconds an error that `check(exc)` accepts (default:
    `check_error` on `path`); `accepted` names what it means when nothing is raised."""
    start = time.perf_counter()
    try:
        with time_limit(CASE_SECONDS):
            call(path)
    except CaseTimeout as exc:
        pytest.fail(f"{path.name}: hang ({exc})")
    except BaseException as exc:  # noqa: BLE001 - anything else is checked to be our error
        if check is None:
            check_error(exc, path, entry)
        else:
            check(exc)
    else:
        pytest.fail(f"{path.name}: {accepted or 'read without an error'} ({entry['exercises']})")
    assert time.perf_counter() - start < limit, f"{path.name}: took {time.perf_counter() - start:.1f} s"


@pytest.fixture(autouse=True)
def _pickle_marker(tmp_path_factory, monkeypatch):  # noqa: ANN001, ANN202
    marker = tmp_path_factory.getbasetemp() / "pickle-marker"
    monkeypatch.setenv(LISTING["pickle_marker_env"], str(marker))
    yield
    assert not marker.exists(), "a corpus pickle was unpickled"


# -- The corpus itself -----------------------------------------------------------------------------

def test_corpus_is_broad_and_small():
    kinds = {e["kind"] for e in FILES.values()}
    assert len(FILES) >= 40
    assert {"dicom", "nrrd", "nifti", "png", "tiff", "seg", "model", "bank"} <= kinds
    on_disk = {p.name for p in CORPUS.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(FILES), f"unlisted: {on_disk - set(FILES)}, missing: {set(FILES) - on_disk}"
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 2 * 1024**2, f"corpus is {size / 1024:.0f} KiB"


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_corpus_matches_the_script(tmp_path):
    out = tmp_path / "bad"
    proc = subprocess.run([sys.executable, str(HERE / "Data" / "make_bad_corpus.py"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    made, committed = _digests(out), _digests(CORPUS)
    differ = sorted(k for k in made.keys() | committed.keys() if made.get(k) != committed.get(k))
    assert not differ, f"Testing/Data/bad differs from make_bad_corpus.py output ({differ[:5]}); " \
                       "rerun python Testing/Data/make_bad_corpus.py"


def test_pickle_payload_is_live(tmp_path):
    """The pickle files really would run code if unpickled (so the marker checks mean something)."""
    marker = tmp_path / "marker"
    code = ("import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())")
    env = {**os.environ, LISTING["pickle_marker_env"]: str(marker)}
    subprocess.run([sys.executable, "-c", code, str(CORPUS / "model_pickle_as_safetensors" / "model.safetensors")],
                   env=env, timeout=60, check=True)
    assert marker.exists()


# -- Readers and loaders ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", _names(*IMAGE_KINDS))
def test_read_image_refuses(name):
    from usvlm.io import read_image

    expect_refusal(read_image, CORPUS / name, FILES[name])
    expect_refusal(lambda p: read_image(p, as_cine=True), CORPUS / name, FILES[name])


@pytest.mark.parametrize("name", _names("seg"))
def test_read_seg_nrrd_refuses(name):
    from usvlm.io import read_seg_nrrd

    expect_refusal(read_seg_nrrd, CORPUS / name, FILES[name])


@pytest.mark.parametrize("name", _names("model"))
def test_model_loaders_refuse(name):
    from usvlm.model.checkpoint import load_checkpoint
    from usvlm.model.vlm import load_model

    folder = CORPUS / name
    entry = FILES[name]

    def names_the_file_at_fault(exc: BaseException) -> None:
        # The message names the file at fault inside the folder (manifest or weights).
        check_error(exc, Path(getattr(exc, "source", "") or folder), entry)
        assert str(folder) in str(exc)

    for loader in ([load_model] if entry.get("stage") == "model" else [load_checkpoint, load_model]):
        expect_refusal(loader, folder, entry, check=names_the_file_at_fault,
                       accepted=f"{loader.__name__} loaded it", limit=20)


@pytest.mark.parametrize("name", _names("bank"))
def test_load_banks_refuses(name):
    from usvlm.text.banks import load_banks

    expect_refusal(lambda p: load_banks(extra=[p]), CORPUS / name, FILES[name])


# -- CLI (one child process runs every case) -------------------------------------------------------

def _cli_cases(fixtures: dict[str, str]) -> dict[str, list[str]]:
    """case id -> argv; "{out}" is replaced by a fresh, empty output folder per case."""
    model, png, dcm, mask = fixtures["model"], fixtures["png"], fixtures["dicom"], fixtures["mask"]
    cases: dict[str, list[str]] = {}
    for name in _names(*IMAGE_KINDS):
        path = str(CORPUS / name)
        cases[f"info/{name}"] = ["info", path]
        cases[f"info-cine/{name}"] = ["info", "--cine", "--json", path]
        cases[f"segment/{name}"] = ["segment", path, "--model", model, "--prompt", "mass", "--no-progress",
                                    "--overlay", "--json", "-o", "{out}/result.seg.nrrd"]
        cases[f"mask2seg-mask/{name}"] = ["mask2seg", path, "--reference", dcm, "-o", "{out}/m.seg.nrrd",
                                          "--dicom-seg", "{out}/m.dcm"]
        cases[f"mask2seg-reference/{name}"] = ["mask2seg", mask, "--reference", path, "-o", "{out}/m.seg.nrrd"]
    cases["classify/all-images"] = ["classify", *(str(CORPUS / n) for n in _names(*IMAGE_KINDS)),
                                    "--model", model]
    cases["segment/all-images"] = ["segment", *(str(CORPUS / n) for n in _names(*IMAGE_KINDS)),
                                   "--model", model, "--prompt", "mass", "--no-progress", "-o", "{out}"]
    for name in _names("seg"):
        if not name.endswith(".seg.nrrd"):
            continue  # classify reads other masks as images
        cases[f"classify-mask/{name}"] = ["classify", png, "--mask", str(CORPUS / name), "--model", model]
    for name in _names("model"):
        cases[f"segment-model/{name}"] = ["segment", png, "--model", str(CORPUS / name), "--prompt", "mass",
                                          "--no-progress", "-o", "{out}/result.seg.nrrd"]
        cases[f"classify-model/{name}"] = ["classify", png, "--model", str(CORPUS / name)]
    for name in _names("bank"):
        cases[f"refine-bank/{name}"] = ["refine", "--bank", str(CORPUS / name), "--no-cache", "mass"]
    return cases


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict:  # noqa: ANN001
    """Run every CLI case in one child process; returns {"results": {case: result}, ...}."""
    import numpy as np
    import skimage.io
    from models import save_tiny_model
    from usvlm_training.us_dicom import write_us_dicom

    root = tmp_path_factory.mktemp("cli-corpus")
    image = (np.add.outer(np.arange(64), np.arange(64)) % 256).astype(np.uint8)
    fixtures = {"model": str(save_tiny_model(root / "tiny")), "png": str(root / "good.png"),
                "dicom": str(root / "good.dcm"), "mask": str(root / "mask.png")}
    skimage.io.imsave(fixtures["png"], image, check_contrast=False)
    skimage.io.imsave(fixtures["mask"], ((image > 100) * 255).astype(np.uint8), check_contrast=False)
    write_us_dicom(fixtures["dicom"], image, (0.2, 0.2))
    cases = _cli_cases(fixtures)
    (root / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    marker = root / "pickle-marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1", LISTING["pickle_marker_env"]: str(marker),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--driver", str(root / "cases.json"), str(root / "results.json"),
                           str(root / "runs")], capture_output=True, text=True, env=env, timeout=DRIVER_SECONDS)
    progress = root / "results.json.running"
    assert proc.returncode == 0, (f"CLI driver died (exit {proc.returncode}) while running "
                                  f"{progress.read_text() if progress.exists() else '?'}:\n{proc.stderr[-3000:]}")
    results = json.loads((root / "results.json").read_text(encoding="utf-8"))
    return {"results": results, "cases": cases, "marker": marker, "driver_stderr": proc.stderr}


def _cli_case_ids() -> list[str]:
    dummy = {"model": "M", "png": "P", "dicom": "D", "mask": "K"}
    return sorted(_cli_cases(dummy))


@pytest.mark.parametrize("case", _cli_case_ids())
def test_cli_refuses(cli_results, case):
    result = cli_results["results"][case]
    assert not result.get("crash"), f"{case}: {result['crash']}"
    assert result["rc"] == 2, f"{case}: exit code {result['rc']}; stderr: {result['stderr'][-800:]}"
    stderr = result["stderr"]
    assert "Traceback" not in stderr, f"{case}: {stderr[-1500:]}"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors, f"{case}: no error line: {stderr[-800:]}"
    if case.startswith(("classify/", "segment/all")):  # every file reported, each on its own line
        for name in _names(*IMAGE_KINDS):
            assert any(str(CORPUS / name) in line for line in errors), f"{case}: nothing said about {name}"
    elif case.startswith(("segment-model/", "classify-model/")):
        assert len(errors) >= 1 and str(CORPUS / case.split("/", 1)[1]) in errors[0], errors
    else:
        assert str(CORPUS / case.split("/", 1)[1]) in errors[0], f"{case}: {errors[0]}"
        assert len(errors) == 1 or errors[1].startswith("error: 1 of 1 input"), errors
    for secret in (LISTING["patient_name"], LISTING["patient_id"], "Quillfeather"):
        assert secret not in stderr and secret not in result["stdout"], f"{case}: patient data printed"
    assert result["written"] == [], f"{case}: wrote {result['written']}"
    assert result["seconds"] < CASE_SECONDS


def test_cli_never_unpickles(cli_results):
    assert not cli_results["marker"].exists()


def test_cli_memory_stays_low(cli_results):
    """The driver ran every case (20000 x 20000 and 2,000-frame claims included) under an
    address-space limit; its peak resident memory stays far below what any claim would need."""
    peak = max(r["maxrss_mb"] for r in cli_results["results"].values())
    assert peak < 3000, f"peak RSS {peak:.0f} MiB"


# -- Driver (runs in the child process) -------------------------------------------------------------

def _capture_fds(stdout_file: Path, stderr_file: Path):  # noqa: ANN202
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.open(stdout_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(stderr_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    return saved


def _restore_fds(saved) -> None:  # noqa: ANN001
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


def _drive(cases_file: str, results_file: str, runs: str) -> int:
    import resource
    import traceback

    # A claim that slipped through would fail to allocate here instead of exhausting the machine.
    limit = 8 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from usvlm.cli import main

    cases = json.loads(Path(cases_file).read_text(encoding="utf-8"))
    progress = Path(results_file + ".running")
    results = {}
    for index, (case, argv) in enumerate(sorted(cases.items())):
        work = Path(runs) / f"{index:04d}"
        out = work / "out"
        out.mkdir(parents=True)
        argv = [a.replace("{out}", str(out)) for a in argv]
        progress.write_text(case, encoding="utf-8")
        crash = None
        saved = _capture_fds(work / "stdout", work / "stderr")
        start = time.perf_counter()
        try:
            with time_limit(CASE_SECONDS):
                rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - a crash, a hang or an out-of-memory
            rc = None
            crash = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"
        finally:
            seconds = time.perf_counter() - start
            _restore_fds(saved)
        results[case] = {
            "rc": rc, "crash": crash, "seconds": seconds,
            "stdout": (work / "stdout").read_text(errors="replace"),
            "stderr": (work / "stderr").read_text(errors="replace"),
            "written": sorted(str(p.relative_to(out)) for p in out.rglob("*")),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    Path(results_file).write_text(json.dumps(results), encoding="utf-8")
    progress.unlink()
    return 0


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--driver":
    sys.exit(_drive(*sys.argv[2:]))

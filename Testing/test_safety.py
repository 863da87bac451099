"""Safe handling: no unpickling or eval in the code, no patient data in messages or logs, size claims
refused without large allocations, and interrupted runs (SIGINT, SIGTERM) leave no partial output."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "Testing"
CORPUS = HERE / "Data" / "bad"
LISTING = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
SCANNED = [REPO / "USVLMCore" / "usvlm", REPO / "training"]

PATIENT_NAME = "Zebulon^Quartermaine^Xavierre"
PATIENT_ID = "PID-5589-QQZX"
SECRETS = (PATIENT_NAME, PATIENT_ID, "Zebulon", "Quartermaine", "5589-QQZX",
           LISTING["patient_name"], LISTING["patient_id"], "Quillfeather")


# -- No pickle, no eval ----------------------------------------------------------------------------

def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """`torch.load` without weights_only=True, pickle/marshal loading, numpy allow_pickle=True,
    and the builtins eval/exec, found in the syntax tree (so `model.eval()` is fine)."""
    problems = []
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> "module.attr" for `from pickle import loads as x`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "_pickle", "dill", "marshal"):
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, where = node.func, f"{filename}:{node.lineno}"
        if isinstance(func, ast.Name):
            name = aliases.get(func.id, func.id)
            if name in ("eval", "exec"):
                problems.append(f"{where}: {name}()")
            elif name.split(".")[-1] in ("load", "loads", "Unpickler") and "." in name:
                problems.append(f"{where}: {name}()")
            continue
        if not isinstance(func, ast.Attribute):
            continue
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if owner == "torch" and func.attr == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}: torch.load() without weights_only=True")
        elif owner in ("pickle", "cPickle", "_pickle", "dill", "marshal", "joblib") and \
                func.attr in ("load", "loads", "Unpickler"):
            problems.append(f"{where}: {owner}.{func.attr}()")
        elif owner in ("np", "numpy") and func.attr == "load":
            flag = keywords.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                problems.append(f"{where}: numpy.load(allow_pickle=True)")
        elif owner == "builtins" and func.attr in ("eval", "exec"):
            problems.append(f"{where}: builtins.{func.attr}()")
    return problems


def test_scanner_finds_what_it_should():
    bad = ("import torch, pickle\nfrom pickle import loads as l\nimport builtins\n"
           "torch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\npickle.load(f)\npickle.loads(b)\n"
           "l(b)\neval('1')\nexec('x=1')\nbuiltins.eval('2')\nnp.load('a.npy', allow_pickle=True)\n")
    good = "import torch\ntorch.load('m.pt', weights_only=True)\nmodel.eval()\nnp.load('a.npy')\njson.loads(s)\n"
    assert len(unsafe_calls(bad)) == 9, unsafe_calls(bad)
    assert unsafe_calls(good) == []


def test_no_pickle_eval_or_exec_in_the_code():
    files = [p for root in SCANNED for p in sorted(root.rglob("*.py"))]
    assert len(files) > 20
    problems = [problem for path in files
                for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert problems == [], "\n".join(problems)


# -- Patient data ----------------------------------------------------------------------------------

def _phi_dicom(path: Path, edit=None, *, frames: int = 1) -> Path:  # noqa: ANN001
    from usvlm_training.us_dicom import write_us_dicom

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (frames, 64, 64) if frames > 1 else (64, 64), dtype=np.uint8)
    write_us_dicom(path, pixels, (0.2, 0.2))
    ds = pydicom.dcmread(path)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = PATIENT_ID
    ds.PatientBirthDate = "19310517"
    if edit is not None:
        edit(ds)
    ds.save_as(path, enforce_file_format=False)
    return path


def _overlong_name(ds: pydicom.Dataset) -> None:
    # Invalid PN (a component over 64 characters): pydicom warns with the value when it is used.
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    value = (PATIENT_NAME + "^" + "Q" * 80).encode()
    ds._dict[Tag(0x00100010)] = RawDataElement(Tag(0x00100010), "PN", len(value), value, 0, False, True)


def _bad_dicoms(tmp_path: Path) -> list[Path]:
    def short(ds):  # noqa: ANN001, ANN202
        ds.PixelData = ds.PixelData[:100]

    def frames(ds):  # noqa: ANN001, ANN202
        ds.NumberOfFrames = 2000

    def bits(ds):  # noqa: ANN001, ANN202
        ds.BitsAllocated = 12

    def syntax(ds):  # noqa: ANN001, ANN202
        ds.file_meta.TransferSyntaxUID = "1.2.3.4"

    made = [_phi_dicom(tmp_path / f"{e.__name__}.dcm", e) for e in (short, bits, syntax)]
    made.append(_phi_dicom(tmp_path / "frames.dcm", frames, frames=3))
    made.append(_phi_dicom(tmp_path / "overlong_short.dcm", lambda ds: (_overlong_name(ds), short(ds))))
    return made


def test_reader_errors_never_name_the_patient(tmp_path):
    from usvlm.errors import InputError
    from usvlm.io import read_image

    for path in _bad_dicoms(tmp_path):
        with pytest.raises(InputError) as info:
            read_image(path)
        assert not any(s in str(info.value) for s in SECRETS), str(info.value)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:  # noqa: ANN001
    from models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _usvlm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "usvlm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "always"})


def test_cli_logs_never_name_the_patient(tmp_path, tiny_model):
    """Verbose logs (-v: DEBUG, warnings shown) of info, segment (with DICOM SEG, whose writer reads
    the patient module) and mask2seg, on bad and good DICOMs with patient attributes, some invalid."""
    bad = [str(p) for p in _bad_dicoms(tmp_path)]
    good = _phi_dicom(tmp_path / "good.dcm")
    invalid_name = _phi_dicom(tmp_path / "invalid_name.dcm", _overlong_name)
    corpus_dicoms = [str(p) for p in sorted(CORPUS.glob("dicom_*.dcm"))]
    out = tmp_path / "out"
    out.mkdir()
    mask = tmp_path / "mask.nrrd"
    import SimpleITK as sitk

    labels = np.zeros((64, 64), np.uint8)
    labels[20:40, 20:40] = 1
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(mask))
    runs = [
        _usvlm("-v", "info", *bad, *corpus_dicoms),
        _usvlm("-v", "info", "--json", str(good), str(invalid_name)),
        _usvlm("-v", "segment", str(good), str(invalid_name), *bad, "--model", str(tiny_model), "--prompt", "mass",
               "--dicom-seg", "--json", "--no-progress", "-o", str(out)),
        _usvlm("-v", "mask2seg", str(mask), "--reference", str(invalid_name), "-o", str(out / "m.seg.nrrd"),
               "--dicom-seg", str(out / "m.dcm")),
        _usvlm("-v", "classify", str(invalid_name), *bad, "--model", str(tiny_model)),
    ]
    assert runs[0].returncode == 2 and runs[1].returncode == 0
    assert runs[2].returncode == 2 and (out / "good.seg.nrrd").exists() and (out / "invalid_name.seg.dcm").exists()
    assert runs[3].returncode == 0, runs[3].stderr
    for run in runs:
        text = run.stdout + run.stderr
        assert "Traceback" not in text, text[-2000:]
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"{run.args[3:5]} printed {leaked}:\n{text[-3000:]}"


# -- Memory: size claims -----------------------------------------------------------------------------

def _claims(tmp_path: Path) -> list[Path]:
    """Files claiming gigabytes in kilobytes: 20000 x 20000, 2,000-frame cines (native, RLE, NRRD), and
    claims just inside the limits (16384 x 16384; 2,000 frames of 640 x 480 RGB = 1.8 GB)."""
    made = [CORPUS / n for n in ("dicom_claims_20000x20000.dcm", "dicom_cine_claims_2000_frames.dcm",
                                 "dicom_rle_cine_claims_2000_frames.dcm", "nrrd_claims_20000x20000.nrrd",
                                 "png_claims_20000x20000.png", "nifti_claims_20000x20000.nii",
                                 "nrrd_cine_claims_2000_frames.nrrd")]

    def big(ds):  # noqa: ANN001, ANN202
        ds.Rows = ds.Columns = 16384

    def rgb_cine(ds):  # noqa: ANN001, ANN202
        ds.Rows, ds.Columns, ds.NumberOfFrames = 480, 640, 2000
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    made += [_phi_dicom(tmp_path / "big.dcm", big), _phi_dicom(tmp_path / "rgb_cine.dcm", rgb_cine, frames=2)]
    header = "NRRD0004\ntype: uint8\ndimension: {d}\nsizes: {s}\nencoding: {e}\n\n"
    for name, dims, sizes, encoding in (("big.nrrd", 2, "16384 16384", "raw"),
                                        ("cine.nrrd", 3, "640 480 2000", "raw"),
                                        ("bomb.nrrd", 3, "640 480 2000", "gzip")):
        path = tmp_path / name
        path.write_bytes(header.format(d=dims, s=sizes, e=encoding).encode() + bytes(4096))
        made.append(path)
    return made


def test_size_claims_are_refused_fast_without_allocating(tmp_path):
    files = _claims(tmp_path)
    code = """
import json, resource, sys, time
from usvlm.errors import InputError
from usvlm.io import read_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for path in sys.argv[1:]:
    start = time.perf_counter()
    for cine in (False, True):
        try:
            read_image(path, as_cine=cine)
            out[path] = "read"
        except InputError as exc:
            out[path] = str(exc)
    out[path + ":seconds"] = time.perf_counter() - start
out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""
    # Under a 3 GiB address-space limit, an attempt to allocate a claim fails instead of swapping.
    proc = subprocess.run([sys.executable, "-c", "import resource; resource.setrlimit(resource.RLIMIT_AS, "
                           "(3 * 1024**3, 3 * 1024**3))\n" + code, *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for path in map(str, files):
        assert result[path] != "read", f"{path} was read"
        assert path in result[path] and "\n" not in result[path]
        assert result[path + ":seconds"] < 3, f"{path}: {result[path + ':seconds']:.1f} s"
    assert result["rss_growth_mb"] < 100, result


# -- Interrupted runs --------------------------------------------------------------------------------

def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and children inherit that: the child
    gets the default disposition back, as a command run in a terminal has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("never started writing")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_phantom_leaves_nothing(tmp_path, sig):
    out = tmp_path / "phantoms"
    proc = subprocess.Popen([sys.executable, "-m", "usvlm", "phantom", "--count", "200", "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)

    def writing() -> bool:
        return any(p.name.startswith(f".{out.name}.tmp") and any((p / "images").glob("*.png"))
                   for p in tmp_path.iterdir())

    _wait_for(writing, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert list(tmp_path.iterdir()) == [] or (out.exists() and not any(out.iterdir()) and
                                              [p.name for p in tmp_path.iterdir()] == [out.name])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_segment_leaves_only_whole_files(tmp_path, tiny_model, sig):
    from usvlm.io import read_seg_nrrd
    from usvlm_training.us_dicom import write_us_dicom

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        write_us_dicom(inputs / f"img{i:03d}.dcm", rng.integers(0, 255, (192, 192), dtype=np.uint8), (0.2, 0.2),
                       seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "usvlm", "segment", str(inputs), "--model", str(tiny_model),
                             "--prompt", "mass", "--dicom-seg", "--overlay", "--json", "--no-progress",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for(lambda: out.is_dir() and any(out.iterdir()), proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "interrupted" in stderr
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".") or ".tmp" in n], f"temporary files left: {names}"
    finished = sorted(p for p in out.glob("*.seg.nrrd"))
    assert len(finished) < 60, "finished before the signal"
    for seg in finished:  # every result is whole, with all of its group
        stem = seg.name[: -len(".seg.nrrd")]
        assert {f"{stem}.dcm", f"{stem}.png", f"{stem}.json"} <= set(names), names
        read_seg_nrrd(seg)
        pydicom.dcmread(out / f"{stem}.dcm")
        json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
    assert len(names) == 4 * len(finished), names

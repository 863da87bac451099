"""Mutation fuzzer for the DICOM, NRRD and .seg.nrrd readers.

    python Testing/fuzz/fuzz_readers.py --seconds 60 --json report.json --crash-dir crashes/
    python Testing/fuzz/fuzz_readers.py --make-seeds     # rewrite Testing/fuzz/seeds/ (deterministic)

Starting from the valid seed files in `seeds/`, each execution mutates one seed (bit flips,
interesting bytes, truncation, chunk insertion/deletion, DICOM header field edits in place, NRRD
header field edits) and reads it with `usvlm.io.read_image` (and `read_seg_nrrd` for .seg.nrrd
seeds). The outcome must be an image or a `USVLMError`; anything else is a crash, and so is an
execution running past --hang-seconds. Crashing inputs are saved with their traceback.

The time budget defaults to $USVLM_FUZZ_SECONDS (CI: 60) or 10 s. The process runs with a lower
decoded-pixel limit (USVLM_MAX_PIXEL_BYTES, 256 MiB) and an 8 GiB address-space limit, so a size
claim that slipped past the checks fails loudly instead of exhausting the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
os.environ.setdefault("USVLM_MAX_PIXEL_BYTES", str(256 * 1024**2))  # before usvlm reads it

INTERESTING_U16 = (0, 1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 24, 32, 33, 64, 255, 256, 4096, 16383, 16384,
                   16385, 20000, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x5C, 0x0A)
# Explicit VR little endian US elements: (group, element) of the image pixel module.
US_TAGS = {"Rows": (0x0028, 0x0010), "Columns": (0x0028, 0x0011), "BitsAllocated": (0x0028, 0x0100),
           "BitsStored": (0x0028, 0x0101), "HighBit": (0x0028, 0x0102), "SamplesPerPixel": (0x0028, 0x0002),
           "PixelRepresentation": (0x0028, 0x0103), "PlanarConfiguration": (0x0028, 0x0006),
           "RegionLocationMaxX1": (0x0018, 0x601C)}
STRING_TAGS = {"NumberOfFrames": (0x0028, 0x0008), "PhotometricInterpretation": (0x0028, 0x0004),
               "TransferSyntaxUID": (0x0002, 0x0010), "PixelSpacing": (0x0028, 0x0030),
               "FrameTime": (0x0018, 0x1063)}
STRING_VALUES = (b"0", b"-1", b"2000", b"99999999999", b"1e309", b"nan", b"inf", b"abc", b"", b"\\",
                 b"MONOCHROME1", b"RGB", b"YBR_FULL_422", b"PALETTE COLOR", b"1.2.840.10008.1.2.5",
                 b"1.2.840.10008.1.2.4.50", b"1.2.3", b"0.1\\0.1", b"0\\0", b"-5\\1e9")
NRRD_FIELDS = {
    "type": ["uint8", "int16", "uint16", "float", "double", "int64", "block", "banana", "unsigned char"],
    "dimension": ["0", "1", "2", "3", "4", "5", "-1", "17"],
    "sizes": ["32 32", "0 32", "-1 32", "20000 20000", "16384 16384", "1 1", "32 32 2000", "32 32 1 1",
              "99999999999 2", "32", "3 32 32", "32 32 32 32 32"],
    "encoding": ["raw", "gzip", "ascii", "hex", "bzip2", "rot13", ""],
    "endian": ["little", "big", "middle"],
    "spacings": ["0.2 0.2", "nan nan", "0 0", "-1 1", "1e300 1e300", "0.2", "a b"],
    "space directions": ["(0.2,0,0) (0,0.2,0) (0,0,1)", "(0,0,0) (0,0,0) (0,0,0)", "none (1,0,0) (0,1,0) (0,0,1)",
                         "(nan,0,0) (0,1,0) (0,0,1)", "(1,0) (0,1)"],
    "kinds": ["domain domain domain", "list domain domain domain", "RGB-color domain domain", "space space"],
    "space": ["left-posterior-superior", "right-anterior-superior", "3D-right-handed", "banana"],
    "Segment0_LabelValue:": ["1", "0", "-1", "300", "x"],
    "Segment0_Layer:": ["0", "1", "5", "-1", "x"],
}


class Hang(BaseException):
    pass


# -- Seeds -----------------------------------------------------------------------------------------

def make_seeds(folder: Path = SEEDS) -> list[Path]:
    """Small valid files (deterministic bytes) for the fuzzer to start from."""
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless
    from usvlm_training.us_dicom import write_us_dicom

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:32, 0:32]
    frame = ((x * 7 + y * 3) % 251).astype(np.uint8)

    def dicom(name: str, pixels, compress: bool = False, **attrs) -> None:  # noqa: ANN001
        path = folder / name
        write_us_dicom(path, pixels, (0.2, 0.2), seed=11)
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1473.98.1"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1473.98.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1473.98.3"
        ds.file_meta.ImplementationVersionName = "USVLM_FUZZSEED"
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        if compress:
            ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)

    dicom("us_mono.dcm", frame)
    dicom("us_cine3.dcm", np.stack([frame, frame[::-1], frame.T]))
    dicom("us_rle_cine2.dcm", np.stack([frame, frame.T]), compress=True)
    dicom("us_spacing.dcm", frame, PixelSpacing=[0.3, 0.3])

    def nrrd(name: str, fields: list[str], data: bytes) -> None:
        (folder / name).write_bytes(("NRRD0004\n" + "".join(f + "\n" for f in fields) + "\n").encode() + data)

    base = ["type: uint8", "dimension: 2", "sizes: 32 32", "spacings: 0.2 0.2", "endian: little", "encoding: raw"]
    nrrd("grey.nrrd", base, frame.tobytes())
    nrrd("float.nrrd", ["type: float" if f.startswith("type") else f for f in base],
         frame.astype("<f4").tobytes())
    nrrd("cine3.nrrd", ["type: uint8", "dimension: 3", "sizes: 32 32 3", "spacings: 0.2 0.2 1", "endian: little",
                        "encoding: raw"], frame.tobytes() * 3)
    nrrd("rgb.nrrd", ["type: uint8", "dimension: 3", "sizes: 3 32 32", "kinds: RGB-color domain domain",
                      "space dimension: 2", "space directions: none (0.2,0) (0,0.2)", "endian: little",
                      "encoding: raw"], np.repeat(frame[..., None], 3, axis=2).tobytes())
    labels = np.zeros((16, 16), np.uint8)
    labels[4:10, 4:10] = 1
    labels[10:14, 10:14] = 2
    nrrd("two.seg.nrrd", ["type: unsigned char", "dimension: 3", "space: left-posterior-superior", "sizes: 16 16 1",
                          "space directions: (0.2,0,0) (0,0.2,0) (0,0,1)", "kinds: domain domain domain",
                          "endian: little", "encoding: raw", "space origin: (0,0,0)",
                          "Segment0_ID:=Segment_1", "Segment0_Name:=mass", "Segment0_LabelValue:=1",
                          "Segment0_Layer:=0", "Segment0_Color:=1 0 0",
                          "Segment1_ID:=Segment_2", "Segment1_Name:=cyst", "Segment1_LabelValue:=2",
                          "Segment1_Layer:=0", "Segment1_Color:=0 1 0"], labels.tobytes())
    # NIfTI and MetaImage, whose headers USVLM now parses itself (vox_offset, pixdim, data files).
    nifti = bytearray(348)
    struct.pack_into("<i", nifti, 0, 348)
    struct.pack_into("<8h", nifti, 40, 2, 32, 32, 1, 1, 1, 1, 1)
    struct.pack_into("<hh", nifti, 70, 2, 8)  # uint8
    struct.pack_into("<8f", nifti, 76, 1.0, 0.2, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<fff", nifti, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    nifti[123] = 2  # mm
    nifti[344:348] = b"n+1\x00"
    (folder / "itk2_grey.nii").write_bytes(bytes(nifti) + b"\x00" * 4 + frame.tobytes())
    (folder / "itk2_grey.mha").write_bytes(
        b"ObjectType = Image\nNDims = 2\nDimSize = 32 32\nElementSpacing = 0.2 0.2\n"
        b"ElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + frame.tobytes())
    # The second hardening round's corpus modules add seeds of the encodings they guard.
    import importlib

    sys.path.insert(0, str(HERE.parent / "Data"))
    for module in ("corpus_dicom2", "corpus_itk2", "corpus_models2"):
        make = getattr(importlib.import_module(module), "make_seeds", None)
        if make is not None:
            make(folder)
    return sorted(folder.iterdir())


# -- Mutations -------------------------------------------------------------------------------------

def flip_bits(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def interesting_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] = rng.choice(INTERESTING_BYTES)
    return bytes(buf)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def chunk_edit(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    n = rng.choice((1, 2, 4, 16, 128))
    if rng.random() < 0.5:
        return data[:i] + data[i + n:]
    return data[:i] + (data[i:i + n] if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(n))) + data[i:]


def dicom_field(rng: random.Random, data: bytes) -> bytes:
    """Edit a pixel-module attribute in place (explicit VR little endian)."""
    if rng.random() < 0.6:
        group, element = rng.choice(list(US_TAGS.values()))
        at = data.find(struct.pack("<HH", group, element) + b"US\x02\x00")
        if at < 0 or len(data) < at + 10:
            return flip_bits(rng, data)
        value = struct.pack("<H", rng.choice(INTERESTING_U16))
        return data[:at + 8] + value + data[at + 10:]
    group, element = rng.choice(list(STRING_TAGS.values()))
    at = data.find(struct.pack("<HH", group, element))
    if at < 0 or len(data) < at + 8 or data[at + 4:at + 6] not in (b"IS", b"CS", b"UI", b"DS"):
        return flip_bits(rng, data)  # (a tag's bytes found too near the end are no element)
    length = struct.unpack("<H", data[at + 6:at + 8])[0]
    value = rng.choice(STRING_VALUES)
    value += b" " * (len(value) % 2)
    if rng.random() < 0.3:  # keep the element length, as a damaged value would
        value = value[:length].ljust(length, b" ")
    return data[:at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length:]


def nrrd_field(rng: random.Random, data: bytes) -> bytes:
    end = data.find(b"\n\n")
    if end < 0:
        return flip_bits(rng, data)
    lines = data[:end].decode("latin-1").split("\n")
    choice = rng.random()
    if choice < 0.15 and len(lines) > 2:
        del lines[rng.randrange(1, len(lines))]
    elif choice < 0.25:
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(lines[1:] or lines))
    else:
        field = rng.choice(list(NRRD_FIELDS))
        separator = "=" if field.endswith(":") else ": "
        key = field.rstrip(":")
        new = f"{key}{':=' if separator == '=' else ': '}{rng.choice(NRRD_FIELDS[field])}"
        index = next((i for i, ln in enumerate(lines) if re.match(re.escape(key) + r"\s*:", ln)), None)
        if index is None:
            lines.insert(rng.randrange(1, len(lines) + 1), new)
        else:
            lines[index] = new
    return "\n".join(lines).encode("latin-1") + data[end:]


GENERIC = (flip_bits, interesting_bytes, truncate, chunk_edit)


def mutate(rng: random.Random, name: str, data: bytes) -> tuple[bytes, str]:
    special = dicom_field if name.endswith(".dcm") else nrrd_field
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = special if rng.random() < 0.5 else rng.choice(GENERIC)
        if data:
            data = op(rng, data)
        steps.append(op.__name__)
    return data, "+".join(steps)


# -- Running ---------------------------------------------------------------------------------------

def _targets(name: str):  # noqa: ANN202
    from usvlm.io import read_image, read_seg_nrrd

    if name.endswith(".seg.nrrd"):
        return [("read_seg_nrrd", read_seg_nrrd), ("read_image", read_image)]
    if name.endswith(".nrrd"):
        return [("read_image", read_image), ("read_image(as_cine)", lambda p: read_image(p, as_cine=True))]
    return [("read_image", read_image)]


def run(seconds: float, seed: int, crash_dir: Path | None, hang_seconds: float = 5.0) -> dict:
    import resource

    from usvlm.errors import USVLMError

    limit = 8 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rng = random.Random(seed)
    seeds = {p.name: p.read_bytes() for p in sorted(SEEDS.iterdir()) if p.is_file()}
    if not seeds:
        raise SystemExit(f"no seeds in {SEEDS}; run with --make-seeds")

    def on_alarm(signum, frame):  # noqa: ANN001
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    executions, outcomes, crashes, slowest = 0, {"ok": 0, "refused": 0}, {}, (0.0, "")
    with tempfile.TemporaryDirectory(prefix="usvlm-fuzz-") as tmp:
        # Seeds must read cleanly, or mutations would only ever exercise error paths.
        for name, data in seeds.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            read = []
            for target, call in _targets(name):
                try:
                    call(path)
                    read.append(target)
                except USVLMError:
                    pass
            if not read:
                raise SystemExit(f"seed {name} is not readable by any target; run with --make-seeds")
        names = sorted(seeds)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            name = rng.choice(names)
            data, how = mutate(rng, name, seeds[name])
            path = Path(tmp) / f"case{executions % 2}_{name}"
            path.write_bytes(data)
            for target, call in _targets(name):
                executions += 1
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, hang_seconds)
                try:
                    call(path)
                    outcomes["ok"] += 1
                except USVLMError as exc:
                    outcomes["refused"] += 1
                    if "\n" in str(exc):
                        _record(crashes, crash_dir, name, data, target, how, "multi-line error message",
                                str(exc))
                except Hang:
                    _record(crashes, crash_dir, name, data, target, how, f"hang (> {hang_seconds} s)", "")
                except BaseException as exc:  # noqa: BLE001 - a crash
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    tb = traceback.format_exc()
                    _record(crashes, crash_dir, name, data, target, how, f"{type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}", tb)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                elapsed = time.perf_counter() - t0
                if elapsed > slowest[0]:
                    slowest = (elapsed, f"{target} on {name} ({how})")
        total = time.perf_counter() - start
    import resource as r

    return {"seconds": round(total, 2), "executions": executions,
            "executions_per_second": round(executions / total, 1) if total else 0.0,
            "outcomes": outcomes, "seeds": names, "rng_seed": seed,
            "slowest_execution": {"seconds": round(slowest[0], 3), "case": slowest[1]},
            "max_rss_mb": round(r.getrusage(r.RUSAGE_SELF).ru_maxrss / 1024),
            "crashes": list(crashes.values())}


def _record(crashes: dict, crash_dir: Path | None, name: str, data: bytes, target: str, how: str,
            what: str, detail: str) -> None:
    # One entry per distinct failure (type and innermost frame), counting repeats.
    where = re.findall(r'File "([^"]+)", line (\d+)', detail)
    key = (target, what.split(":")[0], where[-1] if where else "")
    if key in crashes:
        crashes[key]["count"] += 1
        return
    digest = hashlib.sha1(data).hexdigest()[:12]
    entry = {"target": target, "seed": name, "mutation": how, "error": what, "count": 1,
             "where": f"{where[-1][0]}:{where[-1][1]}" if where else ""}
    if crash_dir is not None:
        crash_dir.mkdir(parents=True, exist_ok=True)
        saved = crash_dir / f"crash-{digest}-{name}"
        saved.write_bytes(data)
        saved.with_name(saved.name + ".txt").write_text(f"{target} ({how}): {what}\n\n{detail}", encoding="utf-8")
        entry["input"] = str(saved)
    crashes[key] = entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("USVLM_FUZZ_SECONDS", "10")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("USVLM_FUZZ_SEED", "0")))
    parser.add_argument("--hang-seconds", type=float, default=5.0)
    parser.add_argument("--crash-dir", type=Path)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--make-seeds", action="store_true", help="rewrite the seed files and exit")
    args = parser.parse_args(argv)
    if args.make_seeds:
        for path in make_seeds():
            print(path)
        return 0
    report = run(args.seconds, args.seed, args.crash_dir, args.hang_seconds)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(f"fuzz: {report['executions']} executions in {report['seconds']} s "
          f"({report['executions_per_second']}/s), {report['outcomes']['refused']} refused, "
          f"{report['outcomes']['ok']} read, {len(report['crashes'])} distinct crash(es)")
    for crash in report["crashes"]:
        print(f"  CRASH {crash['target']} on {crash['seed']} ({crash['mutation']}): {crash['error']} "
              f"[{crash['where']}] x{crash['count']}")
    return 1 if report["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())

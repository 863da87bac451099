"""Make the bundled samples in Resources/Samples from the phantom generator (deterministic).

    python training/make_samples.py [--out Resources/Samples]

- phantom_breast_us.dcm: a convex-probe breast phantom as a US DICOM with a calibrated ultrasound
  region (so `usvlm info` reports real spacing), and phantom_breast_us_mask.png, its first
  structure's mask; phantom_breast_us.json: the structures and their descriptions.
- `--golden MODEL` writes only phantom_breast_us_golden.seg.nrrd: the masks the engine makes on the
  existing sample with that model for GOLDEN_PROMPTS (the regression the tests and the Slicer
  self-test check; the default model's recipe renews it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import skimage.io

from usvlm.io import write_seg_nrrd
from usvlm.io.atomic import atomic_output
from usvlm_training.phantom import generate_sample
from usvlm_training.us_dicom import write_us_dicom

SEED, INDEX = 2026, 4
GOLDEN_PROMPTS = ["breast mass", "cyst"]


def make_breast_sample(out: Path) -> None:
    sample = generate_sample(SEED, INDEX, size=(400, 480), organ="breast", probe="convex",
                             kinds=["malignant mass", "cyst"])
    rows, cols = np.nonzero(sample.fov_mask)
    region = (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))
    write_us_dicom(out / "phantom_breast_us.dcm", sample.image, (sample.spacing_mm, sample.spacing_mm),
                   region=region, seed=SEED, description="USVLM phantom breast")
    with atomic_output(out / "phantom_breast_us_mask.png") as tmp:
        skimage.io.imsave(tmp, sample.masks[0].astype(np.uint8) * 255, check_contrast=False)
    meta = {"generator": "USVLM-Phantom v1", "seed": SEED, "index": INDEX, "organ": sample.organ,
            "probe": sample.probe, "spacing_mm": sample.spacing_mm,
            "structures": [{k: s[k] for k in ("class", "malignancy", "description")}
                           for s in sample.structures],
            "mask": "phantom_breast_us_mask.png (structure 0)"}
    with atomic_output(out / "phantom_breast_us.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def make_golden(out: Path, model: str) -> None:
    from usvlm.engine import Segmenter
    from usvlm.io import read_image
    from usvlm.model.registry import resolve_model
    from usvlm.report import to_segments

    image = read_image(out / "phantom_breast_us.dcm")
    output = Segmenter(resolve_model(model), device="cpu").segment(image, GOLDEN_PROMPTS)
    write_seg_nrrd(out / "phantom_breast_us_golden.seg.nrrd", to_segments(output), image.geometry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "Resources" / "Samples")
    parser.add_argument("--golden", metavar="MODEL", help="only (re)write the golden masks, made with this model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.golden:
        make_golden(args.out, args.golden)
    else:
        make_breast_sample(args.out)
    print(f"samples written to {args.out}")


if __name__ == "__main__":
    main()

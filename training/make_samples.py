"""Make the bundled samples in Resources/Samples from the phantom generator (deterministic).

    python training/make_samples.py [--out Resources/Samples]

- phantom_breast_us.dcm: a convex-probe breast phantom as a US DICOM with a calibrated ultrasound
  region (so `usvlm info` reports real spacing), and phantom_breast_us_mask.png, its first
  structure's mask; phantom_breast_us.json: the structures and their descriptions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import skimage.io

from usvlm.io.atomic import atomic_output
from usvlm_training.phantom import generate_sample
from usvlm_training.us_dicom import write_us_dicom

SEED, INDEX = 2026, 4


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "Resources" / "Samples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_breast_sample(args.out)
    print(f"samples written to {args.out}")


if __name__ == "__main__":
    main()

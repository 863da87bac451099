#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the main job on the bundled sample data.
# Output goes to ./out/demo (override with USVLM_DEMO_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY="${USVLM_VENV:-.venv}/bin"
OUT="${USVLM_DEMO_OUT:-out/demo}"
mkdir -p "$OUT"

echo "== 1. describe the bundled ultrasound DICOM sample"
"$PY/usvlm" info Resources/Samples/phantom_breast_us.dcm

echo; echo "== 2. render a small synthetic phantom data set (USVLM-Phantom v1)"
"$PY/usvlm" phantom --out "$OUT/phantom" --count 24 --seed 7 --size 256 --overwrite

echo; echo "== 3. bring the sample's reference mask into Slicer formats (.seg.nrrd + DICOM SEG)"
"$PY/usvlm" mask2seg Resources/Samples/phantom_breast_us_mask.png \
  --reference Resources/Samples/phantom_breast_us.dcm --name "breast mass" --organ breast \
  -o "$OUT/phantom_breast_us.seg.nrrd" --dicom-seg "$OUT/phantom_breast_us_seg.dcm"
echo "wrote $OUT/phantom_breast_us.seg.nrrd and $OUT/phantom_breast_us_seg.dcm (open them in 3D Slicer over the DICOM image)"

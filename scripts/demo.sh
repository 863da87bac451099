#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the main job on the bundled sample: contour a breast
# ultrasound DICOM with the bundled default model by text prompt, and write a Slicer segmentation
# (.seg.nrrd), a DICOM SEG, an overlay PNG and the measurements (JSON).
# Output goes to ./out/demo (override with USVLM_DEMO_OUT); a rerun replaces the demo's own outputs
# there (--force), never anything else.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY="${USVLM_VENV:-.venv}/bin"
OUT="${USVLM_DEMO_OUT:-out/demo}"
SAMPLE=Resources/Samples/phantom_breast_us.dcm
mkdir -p "$OUT"

echo "== the bundled sample"
"$PY/usvlm" info "$SAMPLE"

echo; echo "== contour 'breast mass' and 'cyst' with the bundled default model"
"$PY/usvlm" segment "$SAMPLE" --prompt "breast mass" --prompt cyst \
  -o "$OUT/phantom_breast_us.seg.nrrd" --dicom-seg --overlay --json --force

echo; echo "== measurements and classification ($OUT/phantom_breast_us.seg.json)"
"$PY/python" - "$OUT/phantom_breast_us.seg.json" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
for s in report["segments"]:
    m = s["measurements"]
    line = (f"{s['name']:<12} score {s['score']:.2f}  area {m['area']:.1f} {m['unit']}^2  "
            f"long {m['long_axis']:.1f} {m['unit']}  short {m['short_axis']:.1f} {m['unit']}  "
            f"taller-than-wide {m['taller_than_wide']}")
    if "classification" in s:
        line += f"  malignant {s['classification']['malignant']:.2f}"
    print(line)
PYEOF
echo; echo "wrote $OUT/phantom_breast_us.seg.nrrd (open it in 3D Slicer over the DICOM image),"
echo "      $OUT/phantom_breast_us.seg.dcm (DICOM SEG), $OUT/phantom_breast_us.overlay.png (overlay)"

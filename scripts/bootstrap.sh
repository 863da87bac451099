#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install USVLM with its test extras.
# torch is pinned to the pair that works on CPU and GPU here: torch==2.14.1 / torchvision==0.29.1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${USVLM_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[usvlm] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.usvlm-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[usvlm] installing dependencies (torch==2.14.1, torchvision==0.29.1, usvlm[test])"
  # (pip's notes about this machine's local index folders are noise: filter them out)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" \
    2> >(grep -v "^WARNING: Location" >&2)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
    2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
# dciodvfy (dicom3tools) validates the DICOM SEG files the tests write.
if ! command -v dciodvfy >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[usvlm] installing dicom3tools (dciodvfy) with apt"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools) >/dev/null 2>&1 \
      || echo "[usvlm] warning: could not install dicom3tools; DICOM SEG validation tests will be skipped"
  else
    echo "[usvlm] warning: dciodvfy not found (install Debian package dicom3tools); DICOM SEG validation tests will be skipped"
  fi
fi

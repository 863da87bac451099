"""Bounded fuzzing of the DICOM, NRRD and .seg.nrrd readers (Testing/fuzz/fuzz_readers.py).

The budget is $USVLM_FUZZ_SECONDS (CI sets 60) or 10 s; the seed of the mutation sequence is
$USVLM_FUZZ_SEED (default 0). Any exception that is not a USVLMError, a multi-line message or a hang
is a crash; the test fails listing each, with the crashing input saved under the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parent / "fuzz" / "fuzz_readers.py"
SECONDS = float(os.environ.get("USVLM_FUZZ_SECONDS", "10"))


def test_fuzz_readers_find_no_crash(tmp_path, record_property):
    report_path = tmp_path / "fuzz.json"
    crashes = tmp_path / "crashes"
    proc = subprocess.run([sys.executable, str(HARNESS), "--seconds", str(SECONDS), "--json", str(report_path),
                           "--crash-dir", str(crashes)],
                          capture_output=True, text=True, timeout=SECONDS + 180)
    assert report_path.exists(), f"fuzzer died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(proc.stdout)  # executions, rate and crashes (visible with -s, and in CI logs on failure)
    record_property("fuzz_executions", report["executions"])
    record_property("fuzz_executions_per_second", report["executions_per_second"])
    assert not report["crashes"], "crashes found:\n" + json.dumps(report["crashes"], indent=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Both outcomes occur: mutations are not all fatal, and not all harmless.
    assert report["outcomes"]["ok"] > 0 and report["outcomes"]["refused"] > 0
    assert report["executions"] >= 20 * min(SECONDS, 10), report


def test_seeds_are_committed_and_deterministic(tmp_path):
    """The committed seeds are what --make-seeds writes (and every seed reads cleanly: the harness
    checks that before fuzzing)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fuzz_readers as f; "
            "from pathlib import Path; f.make_seeds(Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(HARNESS.parent), str(tmp_path)], check=True, timeout=120)
    committed = {p.name: p.read_bytes() for p in (HARNESS.parent / "seeds").iterdir()}
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert committed == made, "rerun python Testing/fuzz/fuzz_readers.py --make-seeds"

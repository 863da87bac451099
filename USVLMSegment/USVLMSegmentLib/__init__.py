"""Slicer-side helpers of the USVLMSegment module.

Pure Python (tested outside Slicer): `dependencies`, `resources`, `worker`.
Needs Slicer: `scene` (MRML <-> arrays), `install` (first-run package install), `results` (table).
Nothing here imports torch at import time; the worker thread loads it on its first job.
"""

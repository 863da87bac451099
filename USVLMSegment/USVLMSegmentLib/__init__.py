"""Slicer-side helpers of the USVLMSegment module (scene <-> arrays, dependency install)."""

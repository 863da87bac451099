"""Split counts of data set folders: images (and groups) per set, organ, label and split.

    python -m usvlm_training.data.report_splits /path/to/real            # busi/ and hc18/ inside
    python -m usvlm_training.data.report_splits real/busi real/hc18 --val-fraction 0.2 --seed 2026 --json

For the real layout the split is the group split `open_dataset` makes (whole groups of
near-duplicates, stratified by label, no test split); other layouts show their own split.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from usvlm.errors import USVLMError

from .layouts import group_leaks, split_counts
from .samples import DEFAULT_VAL_FRACTION, REAL_SPLIT_SEED, SampleSet, open_dataset


def report(data: SampleSet) -> dict:
    """{"summary": ..., "counts": {split: {organ: {label: [images, groups]}}}, "leaks": [...]}."""
    leaks = group_leaks(data.samples, data.splits)
    return {"summary": data.summary(), "counts": split_counts(data),
            "leaks": [f"{where}: {what}" for where, what in leaks]}


def format_report(data: SampleSet) -> str:
    """A table: organ, label, then images (groups) per split and in all."""
    counts = split_counts(data)
    splits = [name for name in data.splits if data.splits[name] or name != "test"]
    rows = sorted({(o, lab) for per in counts.values() for o, labs in per.items() for lab in labs})
    header = ["organ", "label", *splits, "all"]
    lines = []
    totals = {name: 0 for name in [*splits, "all"]}
    for organ, label in rows:
        cells = []
        images_all = groups_all = 0
        for name in splits:
            n, g = counts.get(name, {}).get(organ, {}).get(label, [0, 0])
            images_all, groups_all = images_all + n, groups_all + g
            totals[name] += n
            cells.append(f"{n} ({g})")
        totals["all"] += images_all
        lines.append([organ, label, *cells, f"{images_all} ({groups_all})"])
    by_id = {s.id: s for s in data.samples}
    distinct = {n: len({by_id[i].group or i for i in data.splits[n]}) for n in splits}
    distinct["all"] = len({s.group or s.id for s in data.samples})
    lines.append(["all", "", *(f"{totals[n]} ({distinct[n]})" for n in [*splits, "all"])])
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    text = [f"{data.root} ({data.layout}, split: {data.split_source}); images (groups; a group "
            "of mixed labels counts under each)"]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    leaks = group_leaks(data.samples, data.splits)
    text.append(f"groups in two splits: {len(leaks)}")
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m usvlm_training.data.report_splits",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="data set folders (each reported on its own)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="share of the groups in val (real layout)")
    parser.add_argument("--seed", type=int, help=f"split seed (real layout default: {REAL_SPLIT_SEED})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    out = {}
    try:
        for path in args.data:
            data = open_dataset(path, seed=args.seed or 0, split_seed=args.seed,
                                val_fraction=args.val_fraction, on_error="skip")
            if args.json:
                out[path] = report(data)
            else:
                print(format_report(data))
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

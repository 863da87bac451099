"""usvlm info: what an image file holds (size, frames, colour, spacing and its source, field of view)."""

from __future__ import annotations

import argparse
import json

from usvlm.cli._common import for_each, spacing_arg


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="describe an ultrasound image file",
                       description="Describe ultrasound image files: DICOM (single frame or cine), "
                                   "NRRD/NIfTI/MHA, PNG/JPEG/BMP/TIFF.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (a list of objects for several files)")
    p.add_argument("--cine", action="store_true", help="read a 3D NRRD/NIfTI volume as cine frames")
    p.add_argument("--spacing", type=spacing_arg, metavar="X,Y",
                   help="pixel spacing in mm to use instead of the file's")
    return p


def run(args: argparse.Namespace) -> int:
    from usvlm.io.describe import describe_image, format_description
    from usvlm.io.readers import read_image

    if len(args.files) == 1:  # one file: its error is the command's (one line, exit 2)
        results = [describe_image(read_image(args.files[0], as_cine=args.cine, spacing_mm=args.spacing))]
        failed = 0
    else:
        results = []
        failed = for_each(args.files, lambda path: results.append(
            describe_image(read_image(path, as_cine=args.cine, spacing_mm=args.spacing))))
    if args.json:
        print(json.dumps(results[0] if len(args.files) == 1 else results, indent=2))
    else:
        print("\n\n".join(format_description(d) for d in results))
    return 2 if failed else 0

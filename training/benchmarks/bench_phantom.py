"""Throughput of the phantom generator on one core: `python training/benchmarks/bench_phantom.py`.

Threads are pinned to 1 before numpy / scipy load, so the number is per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

from usvlm_training.phantom import generate_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default="256", help="side in px, or 'random'")
    parser.add_argument("--probe", choices=("linear", "convex"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = None if args.size == "random" else int(args.size)
    generate_sample(args.seed, 10**6, size=size, probe=args.probe)   # warm-up: imports, caches
    start = time.perf_counter()
    for index in range(args.count):
        generate_sample(args.seed, index, size=size, probe=args.probe)
    elapsed = time.perf_counter() - start
    print(f"{args.count} images, size {args.size}, probe {args.probe or 'mixed'}: "
          f"{args.count / elapsed:.1f} images/s ({1000 * elapsed / args.count:.1f} ms/image, 1 thread)")


if __name__ == "__main__":
    main()

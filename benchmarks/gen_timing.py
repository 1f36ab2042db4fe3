"""Time the synthetic dataset: generation per preset, TSV/gzip writing, post-filter sizes.

Usage::

    python benchmarks/gen_timing.py --presets tiny default full --write full --json gen.json

Prints one line per measurement and writes them all as JSON. Peak memory is the process's
maximum resident set size so far (Linux ``ru_maxrss``), so run one large preset per process
for a per-preset figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys.data.synthetic import generate_reviews, write_reviews_tsv


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def post_filter_sizes(df, min_customer: int = 18, min_product: int = 95) -> dict[str, int]:
    """The lab's long-tail filter: counts once on (customer, video)-deduplicated data."""
    dedup = df.drop_duplicates(subset=["customer_id", "product_id"], keep="last")
    c = dedup["customer_id"].map(dedup["customer_id"].value_counts())
    p = dedup["product_id"].map(dedup["product_id"].value_counts())
    kept = dedup[(c >= min_customer) & (p >= min_product)]
    return {
        "customers": int(kept["customer_id"].nunique()),
        "videos": int(kept["product_id"].nunique()),
        "ratings": len(kept),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "default"])
    parser.add_argument(
        "--write", nargs="*", default=[], help="presets to also write (.tsv, .tsv.gz)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats for tiny")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    results: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "numpy": np.__version__,
        },  # fmt: skip
        "runs": [],
    }
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="recsys-gen-"))
    for preset in args.presets:
        repeats = args.repeat if preset == "tiny" else 1
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            df = generate_reviews(preset, seed=args.seed)
            times.append(time.perf_counter() - start)
        run = {
            "preset": preset,
            "rows": len(df),
            "generate_s": round(min(times), 3),
            "peak_rss_mb": round(peak_rss_mb()),
            "post_filter": post_filter_sizes(df),
            "star_shares": {
                int(k): round(float(v), 4)
                for k, v in df["star_rating"].value_counts(normalize=True).sort_index().items()
            },  # fmt: skip
        }
        if preset in args.write:
            for suffix in (".tsv", ".tsv.gz"):
                path = out_dir / f"{preset}{suffix}"
                start = time.perf_counter()
                info = write_reviews_tsv(df, path, seed=args.seed)
                run[f"write{suffix}_s"] = round(time.perf_counter() - start, 2)
                run[f"write{suffix}_mb"] = round(path.stat().st_size / 2**20, 1)
                run["malformed_lines"] = len(info.malformed_line_numbers)
        run["peak_rss_mb"] = round(peak_rss_mb())
        results["runs"].append(run)
        print(json.dumps(run))
        del df
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

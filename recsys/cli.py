"""The ``recsys`` command line.

    recsys run                      the whole workflow on the built-in dataset
    recsys run --data reviews.tsv.gz --out results/
    recsys eda --data reviews.tsv   exploration only
    recsys train ...                load, prepare, train and save the FMs (no recommendations)
    recsys recommend --run results/ --customer-id 12345 -k 10
    recsys evaluate --run results/
    recsys serve --model-dir results/

User mistakes (missing file, bad format, unknown config key, ...) print one line starting with
``error:`` and exit with status 2; ``--debug`` shows the traceback. Ctrl-C exits with 130 and
leaves no half-written outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import RecsysError

__all__ = ["main", "build_parser"]

log = logging.getLogger("recsys")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", dest="data_path", metavar="PATH",
                   help="ratings file: Amazon reviews TSV/TSV.GZ, MovieLens (u.data, ratings.dat, ratings.csv), "
                        "or CSV/Parquet with --user-col/--item-col/--rating-col (default: the built-in dataset)")  # fmt: skip
    g.add_argument("--format", dest="data_format", choices=("amazon", "movielens", "csv", "parquet"),
                   help="format of --data (default: detected from the file)")  # fmt: skip
    g.add_argument("--preset", choices=("tiny", "default", "full"), help="built-in dataset size when no --data (default: default)")
    g.add_argument("--test-data", dest="test_path", metavar="PATH", help="explicit test ratings instead of leave-last-out")
    g.add_argument("--user-col", dest="user_column", metavar="NAME", help="CSV/Parquet: customer id column")
    g.add_argument("--item-col", dest="item_column", metavar="NAME", help="CSV/Parquet: video id column")
    g.add_argument("--rating-col", dest="rating_column", metavar="NAME", help="CSV/Parquet: rating column")
    g.add_argument("--timestamp-col", dest="timestamp_column", metavar="NAME", help="CSV/Parquet: time column (unix seconds or dates)")
    g.add_argument("--title-col", dest="title_column", metavar="NAME", help="CSV/Parquet: title column")
    g.add_argument("--sep", help="CSV separator (default: sniffed)")


def _add_run_options(p: argparse.ArgumentParser, *, out_default_hint: str) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML or YAML file with any run parameters (flags override it)")
    _add_data_options(p)
    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=("torch", "sagemaker"), help="where to train (default: torch, on this machine)")
    g.add_argument("--out", metavar="DIR", help=f"output directory (default: {out_default_hint})")
    g.add_argument("--min-customer-ratings", type=int, metavar="N", help="drop customers with fewer ratings (default 18)")
    g.add_argument("--min-product-ratings", type=int, metavar="N", help="drop videos with fewer ratings (default 95)")
    g.add_argument("-k", "--k", type=int, metavar="N", help="recommendations per customer (default 100)")
    g.add_argument("--objective", choices=("ranking", "classifier"),
                   help="what the recommendations come from: the ranking FM (default, measures better) or the lab's "
                        "5-star classifier + k-NN")  # fmt: skip
    g.add_argument("--seed", type=int, help="seed for every stage (default 0)")
    g.add_argument("--csv", action="store_true", default=None, help="also write recommendations.csv")
    g.add_argument("--dry-run", action="store_true", help="SageMaker: print every job it would create, call nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="What to watch next: factorization machines + k-NN over rating histories, locally or on SageMaker.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", parents=[common], help="the whole workflow: data -> report and recommendations",
                       description="Load, explore, prepare, train the FM regressor and classifier (and the ranking FM), "
                                   "recommend the top-K videos for every customer with k-NN, evaluate, and write a report.")  # fmt: skip
    _add_run_options(p, out_default_hint="recsys-output")

    p = sub.add_parser("train", parents=[common], help="load, prepare, train and save the FMs (no recommendations)")
    _add_run_options(p, out_default_hint="recsys-output")

    p = sub.add_parser("eda", parents=[common], help="explore a dataset: statistics and plots")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config (its [data] section)")
    _add_data_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: recsys-eda)")
    p.add_argument("--seed", type=int, help="seed of the built-in dataset (default 0)")

    p = sub.add_parser("recommend", parents=[common], help="recommendations for customers, from a saved run")
    p.add_argument("--run", "--model-dir", dest="run_dir", default="recsys-output", metavar="DIR",
                   help="output directory of `recsys run` (default: recsys-output)")  # fmt: skip
    p.add_argument("--customer-id", action="append", required=True, metavar="ID", help="customer id (repeatable)")
    p.add_argument("-k", "--k", type=int, default=10, metavar="N", help="how many (default 10)")
    p.add_argument("--include-seen", action="store_true", help="do not exclude videos the customer already rated")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    p = sub.add_parser("evaluate", parents=[common], help="evaluate a saved run's models on its test split (or --test-data)")
    p.add_argument("--run", "--model-dir", dest="run_dir", default="recsys-output", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("serve", parents=[common], help="serve a saved run over HTTP (SageMaker-compatible /invocations)")
    p.add_argument("--model-dir", "--run", dest="run_dir", default="recsys-output", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", choices=("regressor", "classifier", "ranking"), default=None,
                   help="the FM /invocations serves (default: classifier)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--max-body-bytes", type=int, default=6 * 1024 * 1024, metavar="N",
                   help="largest request body; bigger ones get 413 (default 6 MB, SageMaker's limit)")  # fmt: skip
    return parser


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if debug else "%(message)s"))
    root = logging.getLogger("recsys")
    root.handlers = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)
    root.propagate = False
    if not debug:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_RUN_FLAGS = (
    "out", "backend", "objective", "data_path", "data_format", "preset", "test_path", "user_column", "item_column",
    "rating_column", "timestamp_column", "title_column", "sep", "min_customer_ratings", "min_product_ratings", "k",
    "csv", "seed",
)  # fmt: skip


def _cmd_run(args: argparse.Namespace, *, train_only: bool = False) -> int:
    from .pipeline import run

    result = run(args.config, show_progress=not args.quiet, dry_run=args.dry_run, until="train" if train_only else None,
                 **_overrides(args, _RUN_FLAGS))  # fmt: skip
    if result.plan is not None:
        print(result.plan)
        if "plan" in result.files:
            print(f"requests in {result.files['plan']}")
        return 0
    for line in result.summary_lines():
        print(line)
    out = result.out_dir
    if out is not None:
        print(f"outputs in {out}/:")
        for key in ("report", "metrics", "recommendations", "recommendations_csv", "config"):
            if key in result.files:
                print(f"  {result.files[key]}")
        models = [v for k, v in result.files.items() if k.startswith("model_")]
        if models:
            print(f"  models: {', '.join(models)}" + (f"; k-NN index: {result.files['knn_index']}" if "knn_index" in result.files else ""))
        if "plots" in result.files:
            print(f"  plots: {len(result.files['plots'])} PNGs in plots/")
    return 0


def _cmd_eda(args: argparse.Namespace) -> int:
    from .pipeline import eda

    result = eda(args.config, **_overrides(args, ("out", "data_path", "data_format", "preset", "user_column", "item_column",
                                                  "rating_column", "timestamp_column", "title_column", "sep", "seed")))  # fmt: skip
    for line in result.exploration.summary_lines():
        print(line)
    print(f"exploration.json and {len(result.files['plots'])} plots in {result.out_dir}/")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from .saved_run import SavedRun

    saved = SavedRun(args.run_dir)
    rec = saved.recommender()
    frame = rec.recommendations(args.customer_id, k=args.k, exclude_seen=not args.include_seen)
    if args.json:
        for row in frame.to_dict(orient="records"):
            print(json.dumps(row, default=str))
        return 0
    for cid in args.customer_id:
        part = frame[frame["customer_id"].astype(str) == str(cid)]
        flag = " (unknown customer: most popular videos)" if len(part) and bool(part["fallback"].iloc[0]) else ""
        print(f"customer {cid}{flag}:")
        for row in part.itertuples(index=False):
            title = row.product_title if isinstance(row.product_title, str) else ""
            print(f"  {row.rank:>3}. {row.product_id}  {title}  ({row.score:.4f})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_saved

    metrics = evaluate_saved(args.run_dir)
    if args.json:
        print(json.dumps(metrics, indent=2, default=float))
        return 0
    for section, values in metrics.items():
        shown = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(f"{section}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving import serve

    serve(args.run_dir, host=args.host, port=args.port, model=args.model, workers=args.workers,
          log_level="warning" if args.quiet else "info", max_body_bytes=args.max_body_bytes)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.quiet, args.debug)
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "train":
            return _cmd_run(args, train_only=True)
        if args.command == "eda":
            return _cmd_eda(args)
        if args.command == "recommend":
            return _cmd_recommend(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        if args.command == "serve":
            return _cmd_serve(args)
        parser.error(f"unknown command {args.command!r}")
    except KeyboardInterrupt:
        print("interrupted; no outputs were left half-written", file=sys.stderr)
        return 130
    except RecsysError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

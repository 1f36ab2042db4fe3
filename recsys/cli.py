"""The ``recsys`` command line.

    recsys run                      the whole workflow on the built-in dataset
    recsys run --data reviews.tsv.gz --out results/
    recsys eda --data reviews.tsv   exploration only
    recsys train ...                load, prepare, train and save the FMs (no recommendations)
    recsys recommend --run results/ --customer-id 12345 -k 10
    recsys evaluate --run results/
    recsys serve --model-dir results/

Every failure a user can cause (missing file, bad format, unknown config key, an output folder
recsys did not write, a damaged saved run, a full disk, ...) prints one line ``error: <what,
where, the fix>`` and exits with status 2; ``--debug`` shows the traceback. Ctrl-C exits with
130, SIGTERM with 143; neither leaves half-written outputs. An unexpected internal error exits
with 1 and names no file content.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import ConfigError, RecsysError

__all__ = ["main", "build_parser"]

log = logging.getLogger("recsys")

_RUN_DIR_HELP = ("a folder written by `recsys run` (or `recsys train`: its models, with an exact k-NN index built "
                 "on the fly) (default: recsys-output)")  # fmt: skip


def _add_data_options(p: argparse.ArgumentParser, *, test_data: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", dest="data_path", metavar="PATH",
                   help="ratings file: Amazon reviews TSV/TSV.GZ, MovieLens (u.data, ratings.dat, ratings.csv), "
                        "or CSV/Parquet with --user-col/--item-col/--rating-col (default: the built-in dataset)")  # fmt: skip
    g.add_argument("--format", dest="data_format", choices=("amazon", "movielens", "csv", "parquet"),
                   help="format of --data (default: detected from the file)")  # fmt: skip
    g.add_argument("--preset", choices=("tiny", "default", "full"),
                   help="size of the built-in dataset; only without --data (default: default)")  # fmt: skip
    if test_data:
        g.add_argument("--test-data", dest="test_path", metavar="PATH", help="explicit test ratings instead of leave-last-out")
    g.add_argument("--user-col", dest="user_column", metavar="NAME", help="CSV/Parquet: customer id column")
    g.add_argument("--item-col", dest="item_column", metavar="NAME", help="CSV/Parquet: video id column")
    g.add_argument("--rating-col", dest="rating_column", metavar="NAME", help="CSV/Parquet: rating column")
    g.add_argument("--timestamp-col", dest="timestamp_column", metavar="NAME", help="CSV/Parquet: time column (unix seconds or dates)")
    g.add_argument("--title-col", dest="title_column", metavar="NAME", help="CSV/Parquet: title column")
    g.add_argument("--sep", help="CSV separator (default: sniffed)")


def _add_run_options(p: argparse.ArgumentParser, *, train_only: bool) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML, YAML or JSON file with any run parameters (flags override it)")
    _add_data_options(p)
    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=("torch", "sagemaker"), help="where to train (default: torch, on this machine)")
    g.add_argument("--out", metavar="DIR", help=(
        "output folder (default: recsys-train). It may replace an earlier `recsys train` output, never a `recsys run` "
        "output or a folder recsys did not write" if train_only else "output folder (default: recsys-output). It may "
        "replace an earlier recsys output, never a folder holding anything recsys did not write"))  # fmt: skip
    g.add_argument("--min-customer-ratings", type=int, metavar="N", help="drop customers with fewer ratings (default 18)")
    g.add_argument("--min-product-ratings", type=int, metavar="N", help="drop videos with fewer ratings (default 95)")
    if not train_only:
        g.add_argument("-k", "--k", type=int, metavar="N", help="recommendations per customer (default 100)")
    g.add_argument("--objective", choices=("ranking", "classifier"),
                   help="the ranking FM (default, measures better) or the lab's 5-star classifier + k-NN"
                        + ("; `ranking` also trains the ranking FM" if train_only else ""))  # fmt: skip
    g.add_argument("--lab", action="store_true", default=None,
                   help="the lab's exact SageMaker settings for the rating models (SGD FM: 64 / 128 factors, "
                        "25 epochs) instead of the best measured locally (Bayesian FM)")  # fmt: skip
    g.add_argument("--seed", type=int, help="seed for every stage, 0 to 4294967295 (default 0)")
    if not train_only:
        g.add_argument("--csv", action="store_true", default=None, help="also write recommendations.csv")
    g.add_argument("--dry-run", action="store_true", help="SageMaker only: print every job it would create, call nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="What to watch next: factorization machines + k-NN over rating histories, locally or on SageMaker.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the final summary")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", parents=[common], help="the whole workflow: data -> report and recommendations",
                       description="Load, explore, prepare, train the FM regressor and classifier (and the ranking FM), "
                                   "recommend the top-K videos for every customer with k-NN, evaluate, and write a report "
                                   "into --out.")  # fmt: skip
    _add_run_options(p, train_only=False)

    p = sub.add_parser("train", parents=[common], help="load, prepare, train and save the FMs (no recommendations)",
                       description="Load, prepare and train the FM regressor and classifier (and the ranking FM with "
                                   "--objective ranking), evaluate them on the test split and save them into --out "
                                   "(default recsys-train): models, metrics, the split, config. No k-NN, "
                                   "recommendations or report; `recsys run` does everything.")  # fmt: skip
    _add_run_options(p, train_only=True)

    p = sub.add_parser("eda", parents=[common], help="explore a dataset: statistics and plots",
                       description="Load a dataset and write its statistics (exploration.json) and plots into --out.")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="TOML, YAML or JSON config (its [data] section)")
    _add_data_options(p, test_data=False)
    p.add_argument("--out", metavar="DIR", help="output folder (default: recsys-eda)")
    p.add_argument("--seed", type=int, help="seed of the built-in dataset (default 0)")

    p = sub.add_parser("recommend", parents=[common], help="recommendations for customers, from a saved run",
                       description="Top-K videos for the given customers from a saved run (its k-NN index). "
                                   "Customers the long-tail filter kept out of training are folded in from what they "
                                   "watched; unknown ones get the most popular videos (source popularity, no score).")  # fmt: skip
    p.add_argument("--run", "--model-dir", dest="run_dir", default="recsys-output", metavar="DIR", help=_RUN_DIR_HELP)
    p.add_argument("--customer-id", action="append", required=True, metavar="ID", help="customer id (repeatable)")
    p.add_argument("-k", "--k", type=int, default=10, metavar="N", help="how many (default 10)")
    p.add_argument("--include-seen", action="store_true", help="do not exclude videos the customer already rated")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    p = sub.add_parser("evaluate", parents=[common], help="evaluate a saved run's models on its test split",
                       description="Re-evaluate the models of a saved run on the test split saved with it: rating "
                                   "metrics of the regressor and classifier, ranking metrics of the recommending model, "
                                   "each next to its baseline.")  # fmt: skip
    p.add_argument("--run", "--model-dir", dest="run_dir", default="recsys-output", metavar="DIR", help=_RUN_DIR_HELP)
    p.add_argument("--json", action="store_true", help="print every metric as JSON instead of the table")

    p = sub.add_parser("serve", parents=[common], help="serve a saved run over HTTP (SageMaker-compatible /invocations)")
    p.add_argument("--model-dir", "--run", dest="run_dir", default="recsys-output", metavar="DIR", help=_RUN_DIR_HELP)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", default=None, help="the FM /invocations serves: regressor, classifier (default) or ranking")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                   help="largest request body; bigger ones get 413 (default 6 MB, SageMaker's limit)")  # fmt: skip
    p.add_argument("--body-timeout", type=float, default=None, metavar="SECONDS",
                   help="a request body must arrive whole within this long, else 408 (default 10)")  # fmt: skip
    p.add_argument("--reload-root", metavar="DIR", default=None,
                   help="let POST /reload load another run folder, only below DIR (default: only the served one)")  # fmt: skip
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


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides among the flags given (see :data:`recsys.config.OVERRIDES`)."""
    from .config import OVERRIDES

    names = {*OVERRIDES, "seed"}
    return {n: v for n, v in vars(args).items() if n in names and v is not None}


def _cmd_run(args: argparse.Namespace, *, train_only: bool = False) -> int:
    from .pipeline import run

    result = run(args.config, show_progress=not args.quiet, dry_run=args.dry_run, until="train" if train_only else None,
                 **_overrides(args))  # fmt: skip
    if result.plan is not None:
        print(result.plan)
        if "plan" in result.files:
            print(f"requests in {result.files['plan']}")
        return 0
    for line in result.summary_lines():
        print(line)
    if result.out_dir is not None:
        print(f"outputs in {result.out_dir}/:")
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

    result = eda(args.config, **_overrides(args))
    for line in result.exploration.summary_lines():
        print(line)
    print(f"exploration.json and {len(result.files['plots'])} plots in {result.out_dir}/")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from .saved_run import SavedRun

    frame = SavedRun(args.run_dir).recommender().recommendations(args.customer_id, k=args.k,
                                                                 exclude_seen=not args.include_seen)
    if args.json:
        for row in frame.to_dict(orient="records"):
            print(json.dumps(row, default=str))
        return 0
    for cid in args.customer_id:
        part = frame[frame["customer_id"].astype(str) == str(cid)]
        source = part["source"].iloc[0] if len(part) else "popularity"
        flag = {"model": "", "fold_in": " (folded in from what they watched)",
                "popularity": " (unknown customer: most popular videos)"}[source]  # fmt: skip
        print(f"customer {cid}{flag}:")
        for row in part.itertuples(index=False):
            title = row.product_title if isinstance(row.product_title, str) else ""
            score = "" if row.score != row.score else f"  ({row.score:.4f})"
            print(f"  {row.rank:>3}. {row.product_id}  {title}{score}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_saved
    from .summary import evaluation_table

    metrics = evaluate_saved(args.run_dir)
    for line in [json.dumps(metrics, indent=2, default=float)] if args.json else evaluation_table(metrics):
        print(line)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving import serve

    serve(args.run_dir, host=args.host, port=args.port, model=args.model, workers=args.workers,
          log_level="warning" if args.quiet else "info", max_body_bytes=args.max_body_bytes,
          body_timeout=args.body_timeout, reload_root=args.reload_root)  # fmt: skip
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup that runs for Ctrl-C runs for it too."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _failure(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for what stopped a command."""
    if isinstance(exc, KeyboardInterrupt):
        terminated = isinstance(exc, Terminated)
        return (143 if terminated else 130), (f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; "
                                              "no outputs were left half-written")  # fmt: skip
    if isinstance(exc, RecsysError):
        return 2, f"error: {exc}"
    if isinstance(exc, OSError):  # a file the user named could not be read or written
        return 2, f"error: {exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")
    if isinstance(exc, MemoryError):
        return 2, "error: not enough memory for this run; use a smaller dataset, fewer factors or a bigger machine"
    # a bug: say where, never the message (it may quote input)
    last = traceback.extract_tb(exc.__traceback__, limit=-1)
    where = f" in {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
    return 1, (f"internal error: {type(exc).__name__}{where} (a bug in recsys {__version__}); run again with --debug "
               "for the traceback and report it")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet, args.debug)
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    commands = {"run": _cmd_run, "train": lambda a: _cmd_run(a, train_only=True), "eda": _cmd_eda,
                "recommend": _cmd_recommend, "evaluate": _cmd_evaluate, "serve": _cmd_serve}  # fmt: skip
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        if getattr(args, "preset", None) is not None and getattr(args, "data_path", None) is not None:
            raise ConfigError("--preset chooses a built-in dataset and cannot be combined with --data; drop one of them")
        return commands[args.command](args)
    except (KeyboardInterrupt, Exception) as exc:
        if args.debug:
            raise
        status, message = _failure(exc)
        print(message, file=sys.stderr)
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

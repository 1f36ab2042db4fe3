"""The epoch loop every local trainer shares: a trainer supplies one epoch (``epoch_fn``) and
optionally a held-out measure (``eval_fn``); :func:`run_epochs` does threads, progress, the
divergence check, history, callbacks, early stopping and restoring the best epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from backends.base import EpochInfo, TrainOptions
from recsys.errors import ModelFitError
from recsys.params import FMParams

__all__ = ["run_epochs", "torch_threads", "diverged", "PROGRESS_EVERY"]

log = logging.getLogger("recsys")

#: Seconds between two progress lines in the log when no progress bar can be shown.
PROGRESS_EVERY = 10.0

#: ``eval_fn()`` returns (metric name, value, higher is better), or None when there is nothing
#: to measure yet (an MCMC sampler during burn-in).
EvalFn = Callable[[], "tuple[str, float, bool] | None"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: one thread: a step is many
    small ops, and on a busy machine extra threads slowed a 25-epoch regressor from 8.9 s to
    135 s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1 if n is None else int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def diverged(where: str, params: FMParams) -> ModelFitError:
    return ModelFitError(f"training diverged ({where} is not finite). Lower the learning rates (factors_lr={params.factors_lr}, "
                         f"linear_lr={params.linear_lr}, bias_lr={params.bias_lr}) or set clip_gradient (e.g. 5.0).")  # fmt: skip


def run_epochs(
    model: Any,
    params: FMParams,
    epoch_fn: Callable[[], float],
    *,
    loss_name: str,
    eval_fn: EvalFn | None = None,
    options: TrainOptions,
    desc: str,
) -> dict[str, Any]:
    """Train for ``params.epochs`` epochs, fewer if a callback or early stopping (that many
    epochs after the best ``eval_fn`` value; the best epoch is restored) says so.
    ``epoch_fn()`` returns the epoch's mean training loss (NaN once not finite); ``model`` has
    ``finite()``, ``snapshot()`` and ``restore(snapshot)``.

    Returns ``history`` (per epoch: ``epoch``, ``train_<loss_name>``, ``eval_<metric>``),
    ``train_seconds`` and, with early stopping, ``best_epoch`` and ``best_eval_<metric>``.
    """
    patience = params.early_stopping_patience
    history: list[dict[str, float]] = []
    best: tuple[float, int, Any] | None = None  # (value, epoch, snapshot)
    t_start = last_line = time.perf_counter()
    with torch_threads(params.threads), torch.no_grad():
        bar = tqdm(total=params.epochs, desc=desc, unit="epoch", disable=None if options.show_progress else True, leave=False)
        log_lines = options.show_progress and bar.disable  # no terminal: lines in the log instead
        for epoch in range(1, params.epochs + 1):
            t0 = time.perf_counter()
            train_loss = epoch_fn()
            if not math.isfinite(train_loss):
                raise diverged(f"the training loss in epoch {epoch}", params)
            if not model.finite():
                raise diverged(f"a model parameter after epoch {epoch}", params)
            info = EpochInfo(epoch=epoch, train_loss=train_loss, seconds=time.perf_counter() - t0)
            row = {"epoch": epoch, f"train_{loss_name}": train_loss}
            measured = eval_fn() if eval_fn is not None else None  # None: nothing to measure this epoch
            if measured is not None:
                name, value, higher_is_better = measured
                info.eval_metric = {name: value}
                if not higher_is_better:
                    info.eval_loss = value
                row[f"eval_{name}"] = value
                better = best is None or (value > best[0] if higher_is_better else value < best[0])
                if patience and better:
                    best = (value, epoch, model.snapshot())
            history.append(row)
            shown = {key: f"{v:.4f}" for key, v in row.items() if key != "epoch"}
            bar.set_postfix(shown)
            bar.update()
            log.debug("%s epoch %d: %s", desc, epoch, shown)
            stop = any(bool(cb(info)) for cb in options.callbacks)
            early = bool(patience and best is not None and epoch - best[1] >= patience)
            now = time.perf_counter()
            if log_lines and (now - last_line >= PROGRESS_EVERY or stop or early or epoch == params.epochs):
                last_line = now
                log.info("%s: epoch %d/%d, %s, %.0f s", desc, epoch, params.epochs,
                         ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items()), now - t_start)  # fmt: skip
            if early:
                log.info("%s: early stop after epoch %d (best eval %s %.4f at epoch %d)", desc, epoch, name, best[0], best[1])
            if stop or early:
                break
        bar.close()
    meta: dict[str, Any] = {"history": history, "train_seconds": time.perf_counter() - t_start}
    if best is not None:
        model.restore(best[2])
        meta["best_epoch"], meta[f"best_eval_{name}"] = best[1], best[0]
    return meta

"""Rank 0's per-epoch log: DVCLive (a tracked output) and the timing TSV (untracked).

Everything DVCLive writes is hashed into ``dvc.lock``, so it holds only what the run computed;
seconds and images per second differ between identical runs and go to the timing file instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_core.files import contract, missing, read_csv

_PRODUCER = "the train stage (train@<model>-<seed>)"

#: Per-epoch values logged to DVCLive and kept in the history, in this order.
EPOCH_METRICS: tuple[str, ...] = ("train_loss", "val_loss", "val_macro_auc", "lr")
#: Columns of the untracked per-epoch timing file (machine facts: they differ between identical runs).
TIMING_COLUMNS: tuple[str, ...] = ("epoch", "epoch_seconds", "images_per_second")


@contract(
    "metrics/train/<model>/seed<k>/",
    writer="train@<model>-<k>",
    fields=("metrics.json", "plots/metrics/<metric>.tsv (step, <metric>)"),
)
class EpochLog:
    """The DVCLive log in ``live_dir`` and the timing TSV ``timing_log``; either may be None (not kept)."""

    @staticmethod
    def read(live_dir: str | os.PathLike) -> pd.DataFrame:
        """Per-epoch values of a DVCLive folder as one frame indexed by epoch (``val_loss`` required)."""
        folder = Path(live_dir) / "plots" / "metrics"
        frame: pd.DataFrame | None = None
        for metric in EPOCH_METRICS:
            path = folder / f"{metric}.tsv"
            if not path.is_file():
                continue
            tsv = read_csv(path, _PRODUCER, ("step", metric), sep="\t")
            tsv = tsv[["step", metric]].drop_duplicates("step", keep="last").set_index("step")
            frame = tsv if frame is None else frame.join(tsv, how="outer")
        if frame is None or "val_loss" not in frame.columns:
            raise missing(folder / "val_loss.tsv", _PRODUCER)
        frame.index.name = "epoch"
        return frame.sort_index()

    def __init__(
        self,
        live_dir: str | os.PathLike | None = None,
        timing_log: str | os.PathLike | None = None,
        history: Sequence[Mapping[str, float]] = (),
    ) -> None:
        self.live: Any = None
        self.timing_log = Path(timing_log) if timing_log is not None else None
        if live_dir is not None:
            from dvclive import Live

            # A fresh log replayed from last.pt's history always matches the checkpoint, wherever a
            # kill landed between writing last.pt and logging the epoch.
            self.live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=False)
            for row in history:
                _log_epoch(self.live, row)

    def epoch(self, row: Mapping[str, float], seconds: float, images_per_second: float) -> None:
        """Log one epoch's history row, and its timing."""
        if self.live is not None:
            _log_epoch(self.live, row)
        if self.timing_log is not None:
            _append_timing(self.timing_log, int(row["epoch"]), seconds, images_per_second)

    def finish(self, summary: Mapping[str, float | int | bool]) -> None:
        """Write the run's summary (``metrics.json``; non-finite values left out) and close the log."""
        if self.live is None:
            return
        self.live.summary.update(
            {k: v for k, v in summary.items() if not isinstance(v, float) or math.isfinite(v)}
        )
        try:
            self.live.end()
        except FileNotFoundError as exc:
            # dvclive's last step removes its VS Code signal file after checking it exists; two queued
            # experiments (`dvc queue start -j 2`) share that file, so the other may remove it first.
            # Everything else end() does has been done by then.
            if "DVCLIVE_STEP_COMPLETED" not in str(exc):
                raise


def _log_epoch(live: Any, row: Mapping[str, float]) -> None:
    live.step = int(row["epoch"])
    for name in EPOCH_METRICS:
        value = row.get(name)
        if value is not None and math.isfinite(value):
            live.log_metric(name, float(value))
    live.next_step()


def _append_timing(path: Path, epoch: int, seconds: float, images_per_second: float) -> None:
    """One TSV row per epoch: machine facts kept out of every tracked output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or epoch == 1
    with path.open("w" if new else "a") as fh:
        if new:
            fh.write("\t".join(TIMING_COLUMNS) + "\n")
        fh.write(f"{epoch}\t{seconds:.3f}\t{images_per_second:.2f}\n")

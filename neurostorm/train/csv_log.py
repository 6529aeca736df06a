"""The CSV log of a run (RUN/logs/metrics.csv), continued rather than restarted when the run resumes.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts, and writes rows only every 100
steps and at the end. Here the rows are written at every checkpoint and every epoch start
(:class:`FlushLogs`), and a resumed run keeps the rows of every epoch its checkpoint completed (rows of a
half-finished epoch after it are dropped: that epoch is trained again), writing them back at once, so a
second crash loses nothing either.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from neurostorm.models.weights import load_checkpoint


def completed_epoch(checkpoint: Path) -> int:
    """The epoch (0-based) during which a Lightning checkpoint was saved (its tensors are mapped, not read:
    Lightning reads the file itself to resume)."""
    return int(load_checkpoint(checkpoint, mmap=True)["epoch"])


def _number(text: str) -> float | int:
    try:
        return int(text)  # epoch, step
    except ValueError:
        return float(text)


class ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, started with the earlier rows of epochs ≤ ``last_epoch``."""

    def __init__(self, log_dir: str, last_epoch: int) -> None:
        path = Path(log_dir) / self.NAME_METRICS_FILE
        earlier = []
        if path.is_file():
            with path.open(newline="") as handle:
                earlier = [{k: _number(v) for k, v in row.items() if v not in ("", None)}
                           for row in csv.DictReader(handle)]
        super().__init__(log_dir)  # removes metrics.csv
        self.metrics = [row for row in earlier if "epoch" in row and row["epoch"] <= last_epoch]
        self.save()


class FlushLogs(Callback):
    """Writes the loggers' pending rows to disk at every checkpoint and at the start of every epoch (when the
    previous epoch's end-of-epoch rows have been logged), so a crash loses at most the rows since then."""

    def _flush(self, trainer) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self._flush(trainer)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._flush(trainer)


class RunCSVLogger(CSVLogger):
    """``RUN/logs/metrics.csv``; with ``resumed_after`` (the checkpoint's epoch) the earlier rows are kept."""

    def __init__(self, run_dir: Path, resumed_after: int | None = None) -> None:
        super().__init__(run_dir, name="logs", version="")
        self.resumed_after = resumed_after

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.resumed_after is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(self.log_dir, self.resumed_after)
        return super().experiment

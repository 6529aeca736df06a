"""What the families that predict a value per clip share: a head on the encoder (or a linear model on fixed
features) whose clip outputs are scored with 95 % CIs over subjects, one row per test clip in
``predictions.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from neurostorm.data.store import Store
from neurostorm.evaluation.report import write_scored_predictions
from neurostorm.evaluation.target import Target
from neurostorm.tasks.base import TaskFamily
from neurostorm.train.config import ExperimentConfig
from neurostorm.train.data import sites_of
from neurostorm.train.run import train_and_test


class PredictionTask(TaskFamily):
    """Trained and tested by :func:`~neurostorm.train.run.train_and_test` on its :attr:`target`; the folds'
    predictions pooled are scored as one run's."""

    target: ClassVar[Target]
    trains_head = True

    @property
    def stratified(self) -> bool:
        return self.target.stratified

    def run(self, config: ExperimentConfig, run_dir: Path, checkpoint: Path | None = None) -> dict:
        return train_and_test(config, run_dir, self.target, checkpoint)

    def score_folds(self, pooled: pd.DataFrame, task: dict, run_dir: Path, store: Store) -> dict:
        return write_scored_predictions(run_dir, pooled, task, sites_of(store))

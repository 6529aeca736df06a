"""What a task family is: the protocol every ``task.kind`` implements.

A family answers, for one kind of question asked of fMRI: which models and adaptation modes apply, how one run
(one split) is trained and tested into a run folder, how the test rows of several cross-validation folds
are scored together, and which metrics say how well it went (the headline first). ``finetune``,
cross-validation, ``compare``, label-efficiency curves and the command line ask the family; none of them
names a kind. Families are registered in :mod:`neurostorm.tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from neurostorm.data.store import Store
from neurostorm.evaluation.target import Target
from neurostorm.models import model_input
from neurostorm.train.config import ExperimentConfig

CLIP_HEAD_MODES = ("full", "prompt", "lora")  # modes that train a head on an encoder of clips


class TaskFamily:
    """The protocol of a task family (subclass it, set the class attributes, implement :meth:`run` and
    :meth:`score_folds`).

    Attributes
    ----------
    kind : str
        The ``task.kind`` value that selects the family.
    metrics : tuple of str
        The metrics a run's ``metrics.json`` holds as ``{value, ci_low, ci_high}``, the headline first
        (comparison figures, paired differences and curves use the headline).
    predictions : str
        The file of a run folder with one row per scored test unit (``predictions.csv``, ``queries.csv``);
        cross-validation pools the folds' files, with a ``fold`` column, into :meth:`score_folds`.
    subject_labels : bool
        Whether it predicts one label per subject from the store's labels: what label-efficiency curves,
        leave-site-out splits, run-level pooling, ComBat of fixed features and the connectome models need.
    target : Target or None
        The label a prediction family predicts: whether it is a value or a class, per subject or per clip,
        stratified or not (:class:`~neurostorm.evaluation.target.Target`). Training, scoring, the figures and
        a saved model's ``task.json`` read it; two methods' test rows are compared subject by subject by it
        (paired bootstrap differences). None for a family scored its own way (retrieval).
    stratified : bool
        Whether subject splits keep the label's classes balanced (the target's, where there is one).
    trains_head : bool
        Whether full, prompt and LoRA adaptation train a classifier or regressor head on the encoder (what
        ``head_standardise`` is for).
    """

    kind: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    predictions: ClassVar[str] = "predictions.csv"
    subject_labels: ClassVar[bool] = False
    target: ClassVar[Target | None] = None
    stratified: ClassVar[bool] = False
    trains_head: ClassVar[bool] = False

    @property
    def headline(self) -> str:
        return self.metrics[0]

    def model_applies(self, model: str, mode: str) -> bool:
        """Whether the registry model ``model`` runs this family in adaptation ``mode``: models that read clips
        run every mode; connectome models learn subject labels by their own training (``full``)."""
        return model_input(model) == "clips" or (self.subject_labels and mode == "full")

    def reads_fixed_features(self, model: str, mode: str) -> bool:
        """Whether ``model`` in ``mode`` learns from fixed features (FC, or a frozen encoder's embeddings)
        that ``data.harmonize`` can harmonise by site."""
        return self.subject_labels and (model_input(model) == "fc" or mode == "probe")

    def trains_head_on_clips(self, model: str, mode: str) -> bool:
        """Whether ``model`` in ``mode`` trains this family's head on an encoder of clips."""
        return self.trains_head and model_input(model) == "clips" and mode in CLIP_HEAD_MODES

    def stratify_by(self, config: ExperimentConfig) -> str | None:
        """The label whose classes subject splits balance (None: not stratified)."""
        return config.task.label if self.stratified else None

    def run(self, config: ExperimentConfig, run_dir: Path, checkpoint: Path | None = None) -> dict:
        """Train and test on one subject split, writing the run folder (``metrics.json``, :attr:`predictions`,
        figures); returns the metrics. ``run_dir`` exists and holds ``config.yaml``; ``checkpoint``: the
        Lightning checkpoint to resume training from (``--resume``)."""
        raise NotImplementedError

    def score_folds(self, pooled: pd.DataFrame, task: dict, run_dir: Path, store: Store) -> dict:
        """Score the folds' test rows together (``pooled``: every fold's :attr:`predictions` with a ``fold``
        column; ``task``: the last fold's task record plus ``folds``); writes RUN_DIR's ``metrics.json``, the
        pooled table and figures; returns the metrics."""
        raise NotImplementedError

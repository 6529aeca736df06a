"""What a predicted label is: the description that training, scoring and the figures read instead of a task
kind's name.

A prediction family (:mod:`neurostorm.tasks`) hands its :class:`Target` down; a fine-tuned model folder keeps
it in ``task.json`` (``"target"``), so evaluating, predicting and explaining a saved model rebuild the same
head and scoring without knowing which family trained it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    """How a label is learned and scored.

    Attributes
    ----------
    values : bool
        The model outputs one value in the label's units (regression, standardised while training); else
        logits over the label's classes.
    per_clip : bool
        Each clip is labelled by the condition its run's events give it and is scored on its own (the
        bootstrap resampling subjects with all their clips); else the clips inherit their subject's label
        and their outputs are averaged per subject before scoring.
    stratified : bool
        Subject splits keep the label's classes balanced.
    """

    values: bool = False
    per_clip: bool = False
    stratified: bool = False

    @property
    def estimator(self) -> str:
        """``"regression"`` or ``"classification"``: the kind of linear model or dataset label it needs."""
        return "regression" if self.values else "classification"

    @property
    def unit(self) -> str:
        """What one scored row is: ``"clip"`` or ``"subject"``."""
        return "clip" if self.per_clip else "subject"

    def record(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def of_task(cls, task: dict) -> Target:
        """The target of a task record (``task.json``, ``metrics.json["task"]``). Records written before the
        target was saved name only their built-in kind, which fixes it."""
        if "target" in task:
            return cls(**task["target"])
        return _BEFORE_RECORDED.get(task.get("kind", ""), cls(stratified=True))


_BEFORE_RECORDED = {"regression": Target(values=True), "task_state": Target(per_clip=True)}

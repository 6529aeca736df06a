"""Task state: the condition of each clip of task runs (BIDS events), classified clip by clip and scored over
clips, the bootstrap resampling subjects with all their clips."""

from neurostorm.evaluation.target import Target
from neurostorm.tasks.prediction import PredictionTask


class TaskState(PredictionTask):
    kind = "task_state"
    metrics = ("balanced_accuracy", "accuracy", "f1_macro", "auroc")
    target = Target(per_clip=True)

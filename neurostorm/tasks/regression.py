"""Regression of a subject label (age, a cognitive score, …): a value per clip in the label's units, averaged
per subject, scored by Pearson's r, MAE and MSE."""

from neurostorm.evaluation.target import Target
from neurostorm.tasks.prediction import PredictionTask


class Regression(PredictionTask):
    kind = "regression"
    metrics = ("pearson_r", "mae", "mse")
    target = Target(values=True)
    subject_labels = True

"""Classification of a subject label (sex, diagnosis, …): logits per clip, averaged per subject, scored by
balanced accuracy, AUROC, accuracy and macro F1 with their chance levels."""

from neurostorm.evaluation.target import Target
from neurostorm.tasks.prediction import PredictionTask


class Classification(PredictionTask):
    kind = "classification"
    metrics = ("balanced_accuracy", "auroc", "accuracy", "f1_macro")
    target = Target(stratified=True)
    subject_labels = True

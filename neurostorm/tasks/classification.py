"""Classification of a subject label (sex, diagnosis, …): logits per clip, averaged per subject, scored by
balanced accuracy, AUROC, accuracy and macro F1 with their chance levels."""

from neurostorm.tasks.prediction import PredictionTask


class Classification(PredictionTask):
    kind = "classification"
    metrics = ("balanced_accuracy", "auroc", "accuracy", "f1_macro")
    subject_labels = True
    stratified = True

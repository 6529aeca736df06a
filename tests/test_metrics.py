"""Per-subject metrics with bootstrap CIs, and paired differences between two methods."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from neurostorm.evaluation.metrics import classification_metrics, probabilities
from neurostorm.evaluation.scores import metrics_with_ci, paired_difference
from neurostorm.evaluation.target import Target

CLASSES = Target(stratified=True)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_classification_metrics_equal_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    for n in (7, 40):
        targets = rng.integers(0, n_classes, n)
        logits = np.round(rng.standard_normal((n, 1 if n_classes == 2 else n_classes)), 1)  # ties included
        logits[: n // 3] += 1.5 * np.eye(n_classes)[targets[: n // 3]][:, -logits.shape[1]:]
        ours = classification_metrics(logits, targets, n_classes)
        predicted = probabilities(logits).argmax(1)
        expected = {"accuracy": skm.accuracy_score(targets, predicted),
                    "balanced_accuracy": skm.balanced_accuracy_score(targets, predicted),
                    "f1_macro": skm.f1_score(targets, predicted, average="macro", labels=list(range(n_classes)),
                                             zero_division=0)}
        if len(np.unique(targets)) == n_classes:
            prob = probabilities(logits)
            expected["auroc"] = (skm.roc_auc_score(targets, prob[:, 1]) if n_classes == 2 else
                                 skm.roc_auc_score(targets, prob, multi_class="ovr"))
        assert ours.keys() == expected.keys()
        assert ours == pytest.approx(expected, abs=1e-12)


def predictions(logits: np.ndarray, targets: np.ndarray, clips_per_subject: int = 3) -> pd.DataFrame:
    """Binary logits per subject, repeated over its clips, as a predictions.csv table."""
    n = len(targets)
    return pd.DataFrame({"subject": np.repeat([f"{i:02d}" for i in range(n)], clips_per_subject),
                         "run_id": 0, "start": np.tile(np.arange(clips_per_subject), n),
                         "y": np.repeat(targets, clips_per_subject), "out_0": np.repeat(logits, clips_per_subject)})


def test_paired_difference_is_tighter_than_either_interval():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 20)
    noisy = np.where(rng.random(40) < 0.7, 2 * y - 1, 1 - 2 * y).astype(float)  # about 70 % right
    better = noisy.copy()
    wrong = np.flatnonzero(np.sign(noisy) != 2 * y - 1)[:3]
    better[wrong] *= -1  # three subjects corrected, all else identical
    a, b = predictions(better, y), predictions(noisy, y)
    difference = paired_difference(CLASSES, 2, a, b, "accuracy")
    each = [metrics_with_ci(CLASSES, 2, f)["accuracy"] for f in (a, b)]
    assert difference["value"] == pytest.approx(3 / 40)
    assert 0 <= difference["ci_low"] <= difference["value"] <= difference["ci_high"]
    assert difference["ci_high"] - difference["ci_low"] < min(e["ci_high"] - e["ci_low"] for e in each)
    same = paired_difference(CLASSES, 2, a, a, "accuracy")
    assert same == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_difference_refuses_different_test_subjects():
    y = np.array([0, 1, 0, 1])
    b = predictions(np.ones(4), y)
    b["subject"] = b["subject"].str.replace("03", "99")
    with pytest.raises(ValueError, match="same test subjects"):
        paired_difference(CLASSES, 2, predictions(np.ones(4), y), b, "accuracy")


def test_scores_that_rank_well_but_fall_on_one_side_of_the_threshold_are_flagged():
    """The quick demo's FC + linear case: AUROC 1.0 beside balanced accuracy 0.5. A model that predicts the
    training prior (7 of 13 subjects in class 0) gives every test subject a negative logit; tiny differences
    still rank the subjects perfectly. The metrics say so instead of leaving the reader to guess."""
    y = np.array([0, 1, 1])
    logits = np.array([-0.2031, -0.2027, -0.2025])  # log(6/7) ± what a C = 1e-4 model adds
    metrics = metrics_with_ci(CLASSES, 2, predictions(logits, y), n_boot=50)
    assert metrics["auroc"]["value"] == 1.0 and metrics["balanced_accuracy"]["value"] == 0.5
    assert "every test subject is decided as class 0" in metrics["note"]
    assert "note" not in metrics_with_ci(CLASSES, 2, predictions(np.array([-1.0, 1.0, 2.0]), y), n_boot=50)


def test_a_compare_row_with_a_note_keeps_its_figures_and_the_note_goes_under_the_table():
    from neurostorm.tasks import task_family
    from neurostorm.workflows.compare import markdown_table

    figures = {f"{m}{suffix}": 0.5 for m in task_family("classification").metrics
               for suffix in ("", "_ci_low", "_ci_high", "_chance")}
    table = pd.DataFrame([{"method": "FC + linear", **figures, "test_subjects": 12, "trainable_parameters": 10,
                           "seconds": 3.0, "note": "every test subject is decided as class 0"},
                          {"method": "bnt", "note": "not applicable to task_state / mode full"}])
    text = markdown_table(table, "classification")
    assert "| FC + linear | 0.500 [0.500, 0.500]" in text
    assert "- FC + linear: every test subject is decided as class 0" in text
    assert "| bnt | — |" in text and "not applicable" in text


def test_the_checkpoint_score_breaks_balanced_accuracy_ties_by_ranking_only():
    """Two checkpoints that both decide every validation subject as one class tie at balanced accuracy 0.5:
    the one whose scores rank the subjects is kept; a better balanced accuracy always wins over ranking."""
    from neurostorm.evaluation.scores import subject_metrics
    from neurostorm.train.modules import checkpoint_score

    subjects, y = np.array(["a", "b", "c", "d"]), np.array([0, 0, 1, 1])
    def score(logits):
        return checkpoint_score(CLASSES, subject_metrics(CLASSES, 2, subjects, np.array(logits)[:, None], y))
    one_class_ranking, one_class_shuffled = [-3.0, -2.9, -2.1, -2.0], [-2.0, -2.1, -2.9, -3.0]
    assert score(one_class_ranking) > score(one_class_shuffled)
    assert abs(score(one_class_ranking) - 0.5) < 2e-3
    assert score([-1.0, 1.0, 1.0, 2.0]) > score(one_class_ranking)  # balanced accuracy 0.75 beats a tie at 0.5
    assert checkpoint_score(Target(values=True), {"mse": 4.0}) == -4.0

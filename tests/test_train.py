"""Training from the command line on a generated cohort: fine-tuning modes, metrics with CIs, evaluation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from neurostorm.cli import main
from neurostorm.evaluation.target import Target
from neurostorm.models import build_model
from neurostorm.models.heads import ClassificationHead, Standardise
from neurostorm.models.weights import load_encoder
from neurostorm.tasks import task_family
from neurostorm.train.config import load_config, parse_override
from neurostorm.train.data import LabelledClips
from neurostorm.train.modules import AdaptModule, adaptation_optim, make_optimizer
from neurostorm.train.probe import embed_split
from neurostorm.workflows.compare import Method


def run_cli(kind, store, out, *overrides):
    argv = [kind, "--config", "tiny", "--out", str(out), "--quiet", f"data.stores=[{store}]",
            "data.split_fractions=[0.5,0.1,0.4]", *overrides]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_config_overrides_and_validation(tmp_path):
    assert parse_override("data.batch_size=2") == {"data": {"batch_size": 2}}
    config = load_config("tiny", ["optim.lr=1e-4", "optim.epochs=3", "data.stores=[a, {path: b, weight: 2}]",
                                  "mode=prompt"])
    assert config.optim.epochs == 3 and config.mode == "prompt" and config.optim.lr == 1e-4
    assert [s.path for s in config.data.stores] == ["a", "b"] and config.data.stores[1].weight == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(Exception, match=r"bad.yaml: .*unknown setting\(s\) \['learning_rate'\]"):
        load_config(bad)


def test_full_finetuning_learns_sex_and_evaluate_reproduces_it(labelled_store, tmp_path, capsys):
    run = tmp_path / "sex"
    metrics = run_cli("finetune", labelled_store, run, "task.label=sex", "optim.epochs=8")
    assert metrics["n_subjects"] == 16
    accuracy = metrics["balanced_accuracy"]
    assert accuracy["ci_low"] > 0.5, accuracy
    for name in ("config.yaml", "split.json", "predictions.csv", "model/model.safetensors", "model/head.safetensors",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "logs/metrics.csv", "figures/roc.png",
                 "figures/confusion_matrix.png", "figures/loss_curves.png"):
        assert (run / name).exists(), name
    assert "logging interval" not in capsys.readouterr().err  # Lightning's log_every_n_steps warning
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"balanced_accuracy  {accuracy['value']:.3f}  95% CI [{accuracy['ci_low']:.3f}" in printed

    # the exported model predicts on a store; its labels are not needed
    assert main(["predict", "--config", "tiny", f"model.init={run / 'model'}", f"data.stores=[{labelled_store}]",
                 "--out", str(tmp_path / "predicted"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "predicted" / "subject_predictions.csv", dtype={"subject": str})
    assert list(table.columns) == ["subject", "sex", "p_F", "p_M"] and len(table) == 40
    truth = pd.read_parquet(labelled_store / "manifest.parquet").drop_duplicates("subject").set_index("subject")
    test_subjects = json.loads((run / "split.json").read_text())["test"]
    rows = table.set_index("subject").loc[test_subjects]
    assert (rows["sex"] == truth.loc[test_subjects, "sex"]).mean() == accuracy["value"]


def test_embed_writes_clip_and_subject_embeddings(labelled_store, tmp_path):
    assert main(["embed", "--config", "tiny", f"data.stores=[{labelled_store}]", "--out", str(tmp_path / "emb"),
                 "--quiet"]) == 0
    with np.load(tmp_path / "emb" / "embeddings.npz") as saved:
        assert saved["embedding"].shape == (40, 128) and saved["subject_embedding"].shape == (40, 128)
        assert np.isfinite(saved["embedding"]).all()


def test_linear_probe_predicts_age(labelled_store, tmp_path):
    metrics = run_cli("finetune", labelled_store, tmp_path / "age", "task.label=age", "task.kind=regression",
                      "mode=probe")
    assert metrics["pearson_r"]["ci_low"] > 0, metrics["pearson_r"]
    assert (tmp_path / "age" / "embeddings.npz").exists()
    assert (tmp_path / "age" / "figures" / "predicted_vs_true.png").exists()


def test_prompt_tuning_runs_end_to_end(labelled_store, tmp_path):
    metrics = run_cli("finetune", labelled_store, tmp_path / "prompt", "task.label=sex", "mode=prompt",
                      "prompt_tokens=4", "optim.epochs=1")
    assert metrics["task"]["trainable_parameters"] == 4 * sum(16 * 2**i * 2 for i in range(4)) + 129


def test_a_standardising_head_reads_embeddings_scaled_by_the_training_clips(labelled_store, tmp_path, capsys):
    """``head_standardise``: statistics of the training clips' embeddings, saved with the head and used again by
    evaluate — fitted as training starts for prompt tuning, refitted to the encoder before each validation in
    full fine-tuning, so the exported head holds those of the exported encoder; refused for a probe; a
    comparison passes it to the methods that train a head on clips."""
    run = tmp_path / "prompt"
    metrics = run_cli("finetune", labelled_store, run, "task.label=sex", "mode=prompt", "prompt_tokens=2",
                      "optim.epochs=1", "head_standardise=true")
    assert json.loads((run / "model" / "task.json").read_text())["head_standardised"]
    head = load_file(str(run / "model" / "head.safetensors"))
    assert sorted(head) == ["fc.bias", "fc.weight", "scale.mean", "scale.sd"]
    assert (head["scale.sd"] > 0).all() and torch.isfinite(head["scale.mean"]).all()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert f"balanced_accuracy  {metrics['balanced_accuracy']['value']:.3f}" in capsys.readouterr().out

    full = tmp_path / "full"
    run_cli("finetune", labelled_store, full, "task.label=sex", "optim.epochs=2", "head_standardise=true")
    config = load_config(full / "config.yaml")
    data = LabelledClips(config, full, task_family(config.task.kind).target)
    embeddings = torch.as_tensor(embed_split(load_encoder(full / "model"), data, "train")["output"])
    head = load_file(str(full / "model" / "head.safetensors"))
    assert torch.allclose(head["scale.mean"], embeddings.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(head["scale.sd"], embeddings.std(0), rtol=1e-3, atol=1e-6)

    argv = ["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "mode=probe",
            "head_standardise=true", "--out", str(tmp_path / "probe")]
    assert main(argv) == 2 and not (tmp_path / "probe").exists()
    assert "head_standardise: a standardising head is for a head trained on an encoder of clips" \
        in capsys.readouterr().err
    config = load_config("tiny", ["task.label=sex", "head_standardise=true"])
    assert [Method.parse(spec).configure(config).head_standardise
            for spec in ("neurostorm-tiny", "neurostorm-tiny:prompt", "neurostorm-tiny:lora", "neurostorm-tiny:probe",
                         "fc-linear")] == [True, True, True, False, False]


def test_a_head_tracking_its_encoder_centres_each_training_batch_by_its_own_mean():
    """A step of a fully fine-tuned encoder shifts every embedding by nearly one vector: in training such a
    shift leaves the standardised batch unchanged; in evaluation the fitted statistics centre it."""
    embeddings = torch.randn(6, 4) * 0.01 + 10.0
    tracking, fixed = Standardise(4, track_encoder=True), Standardise(4)
    for scale in (tracking, fixed):
        scale.fit(embeddings)
    shifted = embeddings + torch.tensor([5.0, -3.0, 1.0, 2.0])
    assert torch.allclose(tracking.train()(shifted), tracking(embeddings), atol=1e-3)
    assert torch.allclose(tracking.train()(embeddings), fixed.train()(embeddings), atol=1e-3)
    assert not torch.allclose(fixed.train()(shifted), fixed(embeddings), atol=1.0)
    assert torch.allclose(tracking.eval()(shifted), fixed.eval()(shifted))


def test_a_pretrained_encoder_fine_tunes_at_its_own_rate_and_new_parameters_at_the_run_s():
    config = load_config("tiny", ["task.label=sex", "optim.lr=1e-3", "optim.pretrained_lr=5e-5"])
    module = AdaptModule(build_model("neurostorm-tiny"), ClassificationHead(128, 2), Target(), 2,
                         config.optim)
    optimizer = make_optimizer(module, config.optim, steps_per_epoch=1)
    encoder_parameters = {id(p) for p in module.encoder.parameters()}
    rates = {(id(p) in encoder_parameters, group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    assert rates == {(True, 5e-5), (False, 1e-3)}
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in module.parameters())
    for overrides in (["mode=prompt", "model.init=/a/pretrained/folder"], ["mode=full"]):  # new parameters only
        assert adaptation_optim(load_config("tiny", ["optim.pretrained_lr=5e-5", *overrides])).pretrained_lr is None
    assert adaptation_optim(load_config("tiny", ["optim.pretrained_lr=5e-5", "model.init=/a/pretrained/folder"])
                            ).pretrained_lr == 5e-5


def test_standardise_fits_each_dimension_and_leaves_a_constant_one_unscaled():
    scale = Standardise(3)
    embeddings = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0], [5.0, 5.0, 2.0]]) + torch.tensor([0.0, 0.0, 100.0])
    scale.fit(embeddings)
    assert torch.allclose(scale.mean, torch.tensor([3.0, 5.0, 102.0])) and torch.equal(scale.sd[1:], torch.ones(2))
    assert torch.allclose(scale(embeddings)[:, 0], torch.tensor([-1.0, 0.0, 1.0]))


def test_task_state_from_events_is_classified_per_clip(task_store, tmp_path):
    metrics = run_cli("finetune", task_store, tmp_path / "state", "task.kind=task_state", "data.sequence_length=8",
                      "data.split_fractions=[0.5,0.25,0.25]", "optim.epochs=6")
    assert metrics["task"]["classes"] == ["faces", "houses", "tools"]
    assert metrics["n_subjects"] == 2 and metrics["n_clips"] == 2 * 12
    assert metrics["chance"]["balanced_accuracy"] == 1 / 3
    assert metrics["balanced_accuracy"]["ci_low"] > 1 / 3, metrics["balanced_accuracy"]
    assert (tmp_path / "state" / "figures" / "confusion_matrix.png").exists()


@pytest.mark.parametrize("mode", ["probe", "full"])
def test_fmri_to_image_retrieval_beats_chance(retrieval_store, tmp_path, mode):
    store, stimuli = retrieval_store
    metrics = run_cli("finetune", store, tmp_path / mode, "task.kind=image_retrieval", f"task.stimuli={stimuli}",
                      "data.sequence_length=4", "data.split_fractions=[0.4,0.2,0.4]", f"mode={mode}",
                      "optim.epochs=4")
    assert metrics["n_images"] == 6 and metrics["chance"]["top1"] == 1 / 6
    assert metrics["top1"]["ci_low"] > 1 / 6, metrics["top1"]
    assert (tmp_path / mode / "figures" / "rank_histogram.png").exists()


@pytest.mark.parametrize("mode", ["probe", "full"])
def test_subject_reidentification(retrieval_store, tmp_path, mode):
    store, _ = retrieval_store
    metrics = run_cli("finetune", store, tmp_path / "reid", "task.kind=reidentification", f"mode={mode}",
                      "data.split_fractions=[0.4,0.2,0.4]", "optim.epochs=2")
    assert metrics["n_queries"] == 4 and metrics["n_gallery"] == 4
    assert metrics["rank1"]["value"] > metrics["chance"]["rank1"] and metrics["mAP"]["value"] > 0.5
    if mode == "full":  # the contrastively trained encoder is exported for later fine-tuning
        assert load_encoder(tmp_path / "reid" / "model").out_dim == 128


@pytest.mark.parametrize("kind", ["reidentification", "image_retrieval"])
def test_cross_validated_retrieval_scores_every_subjects_queries_once(retrieval_store, tmp_path, kind):
    store, stimuli = retrieval_store
    metrics = run_cli("finetune", store, tmp_path / kind, f"task.kind={kind}", f"task.stimuli={stimuli}",
                      "data.sequence_length=4", "mode=probe", "data.cv_folds=2")
    queries = pd.read_csv(tmp_path / kind / "queries.csv", dtype={"subject": str})
    assert metrics["task"]["folds"] == 2 and metrics["n_subjects"] == 10 and queries["subject"].nunique() == 10
    for k in range(2):  # each fold's queries were ranked among its own test subjects or stimuli only
        fold = json.loads((tmp_path / kind / f"fold-{k}" / "metrics.json").read_text())
        assert set(queries.loc[queries["fold"] == k, "subject"]) == \
            set(json.loads((tmp_path / kind / f"fold-{k}" / "split.json").read_text())["test"])
        assert fold["n_subjects"] == 5
    if kind == "reidentification":  # one query run per subject, against the other 4 runs of its fold
        assert metrics["n_queries"] == 10 and (queries["n_gallery"] == 5).all()
        assert metrics["chance"]["rank1"] == pytest.approx(0.2) and metrics["rank1"]["value"] > 0.2
    else:
        assert metrics["n_images"] == 6 and metrics["chance"]["top1"] == pytest.approx(1 / 6)
        assert metrics["top1"]["value"] > 1 / 6 and (tmp_path / kind / "figures" / "rank_histogram.png").exists()


def test_diagnosis_three_classes_with_class_weights(labelled_store, tmp_path):
    metrics = run_cli("finetune", labelled_store, tmp_path / "dx", "task.label=diagnosis", "task.class_weights=true",
                      "mode=probe")
    assert metrics["task"]["classes"] == ["ADHD", "CN", "SZ"] and metrics["chance"]["balanced_accuracy"] == 1 / 3
    assert metrics["balanced_accuracy"]["ci_low"] > 1 / 3 and "auroc" in metrics


def test_phenotype_score_regression(labelled_store, tmp_path):
    metrics = run_cli("finetune", labelled_store, tmp_path / "score", "task.label=score", "task.kind=regression",
                      "mode=probe")
    assert metrics["pearson_r"]["ci_low"] > 0


def test_cross_validation_tests_every_subject_once(labelled_store, tmp_path):
    metrics = run_cli("finetune", labelled_store, tmp_path / "cv", "task.label=sex", "mode=probe", "data.cv_folds=4")
    assert metrics["task"]["folds"] == 4 and metrics["n_subjects"] == 40
    folds = [json.loads((tmp_path / "cv" / f"fold-{k}" / "split.json").read_text())["test"] for k in range(4)]
    assert sorted(s for f in folds for s in f) == sorted(f"{i:02d}" for i in range(40))
    assert metrics["balanced_accuracy"]["ci_low"] > 0.5


def test_a_split_whose_training_subjects_lack_a_class_is_scored_over_every_class(labelled_store, tmp_path,
                                                                                  capsys):
    """Classes come from the whole label column: a fold (or split) without SZ among its training subjects
    still scores 3 classes, SZ never predicted, and says so."""
    diagnosis = {f"{i:02d}": ["CN", "CN", "ADHD", "SZ"][i % 4] for i in range(40)}
    sz = [s for s, d in diagnosis.items() if d == "SZ"]
    others = [s for s, d in diagnosis.items() if d != "SZ"]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": others[:20], "val": others[20:25], "test": others[25:] + sz}))
    metrics = run_cli("finetune", labelled_store, tmp_path / "dx", "task.label=diagnosis", "mode=probe",
                      f"data.split_file={split}")
    assert metrics["task"]["n_classes"] == 3 and metrics["chance"]["balanced_accuracy"] == 1 / 3
    assert "training subjects hold no SZ of 'diagnosis'" in capsys.readouterr().err
    predictions = pd.read_csv(tmp_path / "dx" / "predictions.csv")
    assert np.isneginf(predictions["out_2"]).all()  # SZ (class 2) was never seen: probability 0
    assert (tmp_path / "dx" / "figures" / "roc.png").exists()


def test_a_split_with_too_few_test_subjects_is_refused(labelled_store, tmp_path, capsys):
    argv = ["finetune", "--config", "tiny", "--out", str(tmp_path / "r"), "--quiet", f"data.stores=[{labelled_store}]",
            "task.label=sex", "data.split_fractions=[0.96,0.02,0.02]"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and "leaves 1 test subject(s); a metric with a 95 % CI needs at least 2" in err[0], err
    assert not (tmp_path / "r" / "split.json").exists()


def test_a_split_that_cannot_be_stratified_warns_once():
    from neurostorm.data.splits import make_split

    subjects = pd.DataFrame({"subject": [f"{i}" for i in range(8)], "dx": ["a"] * 7 + ["b"]})
    with pytest.warns(UserWarning, match="to stratify the test and val split") as caught:
        make_split(subjects, stratify="dx")
    assert len(caught) == 1


def test_a_one_epoch_loss_plot_has_whole_epoch_ticks_and_its_legend_beside_the_axes():
    from neurostorm.evaluation.figures import loss_figure

    log = pd.DataFrame({"epoch": [0, 0], "step": [3, 3], "train_loss_epoch": [1.0, np.nan], "val_loss": [np.nan, 0.5]})
    fig = loss_figure(log)
    ax = fig.axes[0]
    assert [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]] == [1.0]
    assert ax.get_legend() is None and len(fig.legends) == 1

"""What a new user meets first: one-line errors where a traceback used to be, nothing written by a refused
run, help that names every adaptation mode and setting, and figures that show every method that ran."""

import signal
import subprocess
import sys
import time

import matplotlib.image
import pandas as pd
import pytest
from matplotlib.figure import Figure

from neurostorm.cli import main
from neurostorm.train.config import CLASSES_AT_MOST, load_config
from neurostorm.workflows.compare import plot_comparison


def errors_of(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]


def finetune(store, out, *overrides) -> int:
    return main(["finetune", "--config", "tiny", f"data.stores=[{store}]", "task.label=sex", "optim.epochs=1",
                 "--quiet", "--out", str(out), *overrides])


def test_a_one_subject_store_is_one_line(cohort, tmp_path, capsys):
    run = sorted(cohort.glob("sub-*/func/*_bold.nii.gz"))[0]
    store = tmp_path / "one"
    assert main(["preprocess", str(run), "--out", str(store), "--grid", "mni152-fsl-4mm-48", "--quiet", "--no-report",
                 "--labels", str(cohort / "participants.tsv"), "--labels-policy", "lenient"]) == 0
    capsys.readouterr()
    assert finetune(store, tmp_path / "run") == 2
    assert errors_of(capsys) == ["neurostorm finetune: data.stores: 1 subject(s) to split; a train / validation / "
                                 "test split needs at least 3 (preprocess more subjects into the store)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("optim.epochs=abc", "optim.epochs: expected an integer, got 'abc'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("head_standardise=maybe", "head_standardise: expected true or false, got 'maybe'"),
    ("data.stores=store", "data.stores: expected a list such as [store], got 'store'"),
])
def test_a_setting_of_the_wrong_type_is_one_line(tmp_path, capsys, setting, message):
    assert finetune(tmp_path / "store", tmp_path / "run", setting) == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and errors[0].endswith(message), errors
    assert not (tmp_path / "run").exists()


def test_refused_runs_leave_nothing_and_an_existing_file_is_not_a_run_folder(labelled_store, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert finetune(labelled_store, taken) == 2
    assert errors_of(capsys) == [f"neurostorm finetune: {taken}: is a file: give --out a new folder or a run folder"]
    assert taken.read_text() == "mine"
    assert finetune(labelled_store, tmp_path / "a", f"model.init={tmp_path / 'missing.ckpt'}") == 2
    assert errors_of(capsys) == [f"neurostorm finetune: {tmp_path / 'missing.ckpt'}: model.init: no such "
                                 "checkpoint file"]
    assert finetune(labelled_store, tmp_path / "b", "--resume") == 2
    assert "nothing to resume" in errors_of(capsys)[0]
    assert finetune(labelled_store, tmp_path / "c", "data.split_fractions=[0.98,0.01,0.01]") == 2  # split refused
    assert "test subject(s)" in errors_of(capsys)[0]
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_numeric_label_with_many_values_is_a_regression_unless_told(labelled_store):
    with pytest.warns(UserWarning, match="task.label=age: a number with [0-9]+ values, read as a regression target"):
        assert load_config("tiny", [f"data.stores=[{labelled_store}]", "task.label=age"]).task.kind == "regression"
    told = load_config("tiny", [f"data.stores=[{labelled_store}]", "task.label=age", "task.kind=classification"])
    assert told.task.kind == "classification" and CLASSES_AT_MOST < 40
    assert load_config("tiny", [f"data.stores=[{labelled_store}]", "task.label=sex"]).task.kind == "classification"


def test_help_names_every_mode_and_config_prints_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(mode in text for mode in ("mode=full", "mode=prompt", "LoRA (mode=lora)", "mode=probe"))
    assert "neurostorm config --config tiny" in text
    assert main(["config", "--config", "tiny", "mode=lora", "optim.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "mode: lora" in printed and "epochs: 3" in printed and "lora_rank: 8" in printed


def test_evaluate_and_explain_say_which_runs_they_read(labelled_store, tmp_path, capsys):
    probe = tmp_path / "probe"
    assert main(["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex", "mode=probe",
                 "data.split_fractions=[0.5,0.1,0.4]", "--quiet", "--out", str(probe)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(probe)]) == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and "a classification run with mode=probe exports no network" in errors[0], errors
    assert "its test metrics are in metrics.json" in errors[0]
    assert main(["explain", str(probe), "--out", str(tmp_path / "maps")]) == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and "explain maps the predictions of classification, regression and task-state" in \
        errors[0], errors


def test_the_comparison_figure_draws_methods_that_carry_a_note(tmp_path, monkeypatch):
    note = "every test subject is decided as class 0"
    table = pd.DataFrame({"method": ["scratch", "fine-tuned", "not run"], "balanced_accuracy": [0.5, 0.5, None],
                          "balanced_accuracy_ci_low": [0.5, 0.5, None], "balanced_accuracy_ci_high": [0.5, 0.5, None],
                          "balanced_accuracy_chance": [0.5, 0.5, None], "note": [note, note, "not applicable"]})
    figures, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kw: (figures.append(figure),
                                                                         savefig(figure, *args, **kw))[1])
    path = plot_comparison(table, "classification", tmp_path / "comparison.png")
    axes = figures[0].axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["scratch *", "fine-tuned *"]
    assert [bar.get_height() for bar in axes.patches] == [0.5, 0.5]  # both drawn, hatched for their note
    assert matplotlib.image.imread(path).shape[0] > 100


def test_sigterm_stops_finetune_in_one_line_and_resume_finishes(labelled_store, tmp_path):
    """A scheduler's SIGTERM mid-training: one line saying how to go on, exit 143; --resume completes the run."""
    run = tmp_path / "run"
    settings = ["finetune", "--config", "tiny", f"data.stores=[{labelled_store}]", "task.label=sex",
                "data.split_fractions=[0.5,0.1,0.4]", "--quiet", "--out", str(run)]
    process = subprocess.Popen([sys.executable, "-m", "neurostorm.cli", *settings, "optim.epochs=40"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert process.returncode == 143 and lines == [
        "neurostorm finetune: stopped by SIGTERM; run it again with --resume to go on from the last finished epoch "
        "(checkpoints/last.ckpt)"], err
    assert not (run / "metrics.json").exists()
    assert main([*settings, "optim.epochs=2", "--resume"]) == 0
    assert (run / "metrics.json").exists()

"""The command line: help with defaults, version, and the simulate → preprocess → roi flow."""

import subprocess
import sys

import pytest

from neurostorm import __version__
from neurostorm.cli import build_parser, main

COMMANDS = ("preprocess", "roi", "simulate", "atlases", "info")


def test_help_lists_subcommands_and_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "usage: neurostorm" in help_text
        if command == "preprocess":
            assert "(default: 0.8)" in help_text and "(default: int8)" in help_text
        if command == "simulate":
            for default in ("--subjects SUBJECTS subjects", "(default: 8)", "(default: 3)", "(default: 0)"):
                assert default in help_text, default
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--outDIRoutputfolder(report.md,metrics.json)(default:demo-out)" in "".join(capsys.readouterr().out.split())


def test_version():
    result = subprocess.run([sys.executable, "-m", "neurostorm.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"neurostorm {__version__}"


def test_simulate_preprocess_roi_flow(tmp_path, capsys):
    bids, store, roi = tmp_path / "bids", tmp_path / "store", tmp_path / "roi"
    assert main(["simulate", "--out", str(bids), "--subjects", "3", "--frames", "12", "--voxel-mm", "4",
                 "--orientation", "LAS", "--quiet"]) == 0
    assert main(["preprocess", str(bids), "--out", str(store), "--tr", "keep", "--min-frames", "10",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "3 runs, 3 subjects, 36 frames" in printed
    assert f"report: {store / 'report' / 'index.html'} (" in printed  # the quality report, unless --no-report
    assert len(list((store / "report" / "runs").glob("*.html"))) == 3
    assert main(["roi", str(store), "--atlas", "seitzman300", "--out", str(roi), "--quiet"]) == 0
    assert (roi / "fc.npz").exists()
    assert build_parser().parse_args(["atlases"]).command == "atlases"
    assert main(["atlases"]) == 0
    assert "power264" in capsys.readouterr().out


def test_info_prints_parameter_counts_and_input_shape(capsys, tmp_path):
    assert main(["info", "neurostorm-base"]) == 0
    text = capsys.readouterr().out
    assert "5,173,020" in text and "(B, 1, 96, 96, 96, T)" in text and "320 windows of 256 tokens" in text
    assert main(["info", "neurostorm-mae-base"]) == 0
    assert "7,712,892" in capsys.readouterr().out
    assert main(["info", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["info", "swift-tiny"]) == 0
    text = capsys.readouterr().out
    assert "SwiFT encoder" in text and "NeuroSTORM" not in text and "635,440" in text
    assert main(["info", "fc-linear"]) == 0
    assert "34,717 per output at Power-264" in capsys.readouterr().out
    assert main(["info", "bnt"]) == 0
    assert "input (B, 264, 264) FC" in capsys.readouterr().out


def test_overrides_are_accepted_in_any_position():
    from neurostorm.cli import parse_args

    parser = build_parser()
    args = parse_args(parser, ["finetune", "--config", "tiny", "a=1", "--out", "R", "b=2", "--quiet", "c=3"])
    assert args.overrides == ["a=1", "b=2", "c=3"] and args.out == "R" and args.quiet
    assert parse_args(parser, ["preprocess", "x.nii", "--out", "S", "y.nii"]).inputs == ["x.nii", "y.nii"]
    with pytest.raises(SystemExit):
        parse_args(parser, ["finetune", "--config", "tiny", "--out", "R", "--no-such-flag"])


def test_a_store_the_model_cannot_read_is_one_line_not_a_traceback(labelled_store, tmp_path, capsys):
    code = main(["embed", "--config", "base", f"data.stores=[{labelled_store}]", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"neurostorm embed: {labelled_store}: its clips of (48, 48, 48) voxels")
    code = main(["finetune", "--config", "tiny", "model.name=neurostorm-huge", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown model.name 'neurostorm-huge'" in err[0], err


def test_preprocess_like_a_model_uses_the_preprocessing_saved_with_its_weights(cohort, tmp_path, capsys):
    import json

    from neurostorm import build_model, save_pretrained

    recorded = {"grid": {"name": "mni152-fsl-4mm-48", "shape": [48, 48, 48]},
                "params": {"tr": 1.6, "normalization": "minmax", "storage": "float16"}}
    model = save_pretrained(build_model("neurostorm-tiny", embed_dim=8), tmp_path / "model", preprocessing=recorded)
    run = sorted(cohort.glob("sub-*/func/*_bold.nii.gz"))[0]
    assert main(["preprocess", str(run), "--out", str(tmp_path / "store"), "--like", str(model), "--quiet",
                 "--no-report"]) == 0
    assert "preprocessing as" in capsys.readouterr().out
    store_info = json.loads((tmp_path / "store" / "store.json").read_text())
    assert store_info["grid"]["name"] == "mni152-fsl-4mm-48"
    from neurostorm.data.store import Store

    params = json.loads(Store(tmp_path / "store").manifest["params"].iloc[0])
    assert (params["tr"], params["normalization"], params["storage"]) == (1.6, "minmax", "float16")
    # an option that contradicts the model is refused before anything is written
    assert main(["preprocess", str(run), "--out", str(tmp_path / "other"), "--like", str(model),
                 "--tr", "2.0", "--normalization", "minmax"]) == 2
    assert "--like contradicted by --tr 2.0 (the model's: 1.6)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_fill_floor_is_checked_and_followed_by_like(cohort, tmp_path, capsys):
    import json

    from neurostorm import build_model, save_pretrained
    from neurostorm.data.store import Store

    run = str(sorted(cohort.glob("sub-*/func/*_bold.nii.gz"))[0])
    assert main(["preprocess", run, "--out", str(tmp_path / "bad"), "--fill-floor", "1", "--quiet", "--no-report"]) == 2
    assert "fill_floor must be a negative z value" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    grid = {"name": "mni152-fsl-4mm-48", "shape": [48, 48, 48]}
    floored = {"grid": grid, "params": {"tr": 0.8, "normalization": "zscore", "storage": "int8", "fill_floor": -3.0}}
    model = save_pretrained(build_model("neurostorm-tiny", embed_dim=8), tmp_path / "floored", preprocessing=floored)
    assert main(["preprocess", run, "--out", str(tmp_path / "store"), "--like", str(model), "--quiet",
                 "--no-report"]) == 0
    assert json.loads(Store(tmp_path / "store").manifest["params"].iloc[0])["fill_floor"] == -3.0
    reference = {"grid": grid, "params": {"tr": 0.8, "normalization": "zscore", "storage": "int8"}}
    model = save_pretrained(build_model("neurostorm-tiny", embed_dim=8), tmp_path / "ref", preprocessing=reference)
    assert main(["preprocess", run, "--out", str(tmp_path / "other"), "--like", str(model),
                 "--fill-floor", "-3"]) == 2
    assert "--like contradicted by --fill-floor -3.0 (the model's: None)" in capsys.readouterr().err

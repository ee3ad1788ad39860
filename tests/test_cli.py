import json
import subprocess
import sys

import pytest

from densenets.cli import main

from .fakedata import write_cifar10


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_prints_exact_parameter_match(capsys):
    code, out, _ = run_cli(capsys, "summary", "densenet_bc100_k12")
    assert code == 0
    assert "769,162 (paper: 769,162, exact match)" in out
    assert "denseblock3" in out and "216" in out


def test_summary_json_and_overrides(capsys):
    code, out, _ = run_cli(capsys, "summary", "densenet40_k12", "--num-classes", "100", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["params"] == summary["paper_params"] == 1_060_132
    code, out, _ = run_cli(capsys, "summary", "densenet121", "--input-size", "64", "--set", "growth_rate=16", "--json")
    assert json.loads(out)["config"]["growth_rate"] == 16 and json.loads(out)["input_size"] == 64


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list", "densenet_bc*")
    assert out.split() == ["densenet_bc100_k12", "densenet_bc190_k40", "densenet_bc250_k24"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["summary", "densnet121"], "did you mean densenet121"),
        (["summary", "densenet_bc101_k12"], "depth 101 is impossible"),
        (["summary", "densenet121", "--set", "compression=2"], "compression must be in (0, 1]"),
        (["train", "--data", "cifar10", "--data-dir", "/nonexistent"], "CIFAR-10 not found"),
        (["train", "--data", "mnist"], "unknown data set 'mnist'"),
        (["train", "--set", "epochs=ten"], "'epochs' must be int"),
        (["train", "--resume", "/nonexistent/run"], "config.json: no such file"),
    ],
)
def test_user_errors_are_one_line_with_status_2(capsys, args, expected):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_console_script_has_no_traceback_for_unknown_model():
    done = subprocess.run([sys.executable, "-m", "densenets", "summary", "densenet_x"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("densenets: error: unknown model 'densenet_x'")
    assert "Traceback" not in done.stderr


def test_train_command_end_to_end(tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=40, n_test=20)
    args = ["train", "--model", "densenet_bc16_k4", "--data", "cifar10", "--data-dir", str(tmp_path / "data")]
    args += ["--epochs", "1", "--batch-size", "20", "--workers", "0", "--run-dir", str(tmp_path / "run")]
    args += ["--no-progress", "--lr-milestones", "0.5", "--no-nesterov"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    assert "epoch   1/1" in out and "final test error" in out
    # no validation split: best.pt is the final epoch (never chosen on the test set), and says so
    assert "best.pt: the final epoch (1); validation cannot rank epochs: no validation split" in out
    assert "best test error" not in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reported"]["rule"] == "final epoch" and summary["reported"]["epoch"] == 1
    recipe = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]
    assert recipe["nesterov"] is False and recipe["lr_milestones"] == [0.5] and recipe["dropout"] == 0.2
    code, _, err = run_cli(capsys, *args)  # same folder again: refused
    assert code == 2 and "--resume" in err


def test_config_reads_yaml_and_dry_run_prints_the_resolved_recipe(tmp_path, capsys):
    import json as _json

    from densenets.cli import main as cli_main

    (tmp_path / "r.yaml").write_text(
        "model: densenet_bc16_k4\nepochs: 3\nlr_milestones: [0.4, 0.8]\nschedule: cosine\n"
    )
    assert cli_main(["train", "--config", str(tmp_path / "r.yaml"), "--lr", "0.05", "--dry-run"]) == 0
    recipe = _json.loads(capsys.readouterr().out)
    assert (recipe["model"], recipe["epochs"], recipe["lr"], recipe["schedule"]) == (
        "densenet_bc16_k4",
        3,
        0.05,
        "cosine",
    )
    assert recipe["lr_milestones"] == [0.4, 0.8] and recipe["dropout"] == 0.0  # resolved: digits+ is augmented
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    assert cli_main(["train", "--config", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and err.count("\n") == 1

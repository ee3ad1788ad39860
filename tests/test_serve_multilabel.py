"""``densenets serve`` over a multi-label model (issue 28): per-class probabilities and the
positives at the thresholds saved with the model, equal to ``densenets predict --json``."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

from densenets.cli.main import main as cli_main  # noqa: E402

from .test_multilabel_round4 import CLASSES, every_combination, train, write_csv_data  # noqa: E402
from .test_serve import Server, post, upload  # noqa: E402


def test_multilabel_answers_carry_probabilities_and_positives_at_the_saved_thresholds(tmp_path, capsys):
    data = write_csv_data(tmp_path / "data", {"train": every_combination(16), "val": every_combination(8),
                                              "test": every_combination(8)})  # fmt: skip
    run = tmp_path / "run"
    assert train(data, run) == 0
    paths = sorted((data / "img").glob("*.png"))[:5]
    capsys.readouterr()
    assert cli_main(["predict", str(run), *map(str, paths), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    s = Server(run)
    try:
        model = requests.get(s.url + "/v1/model", timeout=10).json()
        answer = post(s, [upload(p) for p in paths], params={"top_k": 2})
    finally:
        s.stop()
    assert model["multilabel"] and set(model["thresholds"]) == set(CLASSES)
    assert all(0 < t < 1 for t in model["thresholds"].values()) and model["threshold_source"]
    assert any(t != 0.5 for t in model["thresholds"].values()), "thresholds tuned on validation, not 0.5"
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["filename"] for p in predictions] == [p.name for p in paths]
    for ours, theirs in zip(predictions, expected, strict=True):
        assert set(ours["probabilities"]) == set(CLASSES) == set(theirs["probabilities"])
        for name in CLASSES:
            assert ours["probabilities"][name] == pytest.approx(theirs["probabilities"][name], abs=1e-5)
        assert ours["positives"] == theirs["positives"]
        expected_positives = [c for c in CLASSES if ours["probabilities"][c] >= model["thresholds"][c]]
        assert sorted(ours["positives"]) == sorted(expected_positives)
        assert len(ours["top_k"]) == 2
        assert ours["top_k"][0]["probability"] == max(ours["probabilities"].values())

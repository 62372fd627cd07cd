"""tools.bench_train_naip --resume: finished rows are kept, only missing (variant, seed) pairs train."""

import json

import pytest

from tools import bench_train_naip as bench
from train.config import apply_overrides, preset


def _row(variant, seed=None, r1=10.0):
    row = {"variant": variant, "R@1": r1, "R@5": 2 * r1, "median_error_m": 900.0,
           "per_altitude_R@1": {"150": r1 / 2, "200": r1, "250": r1, "300": r1}, "train_seconds": 5.0}
    if seed is not None:
        row["seed"] = seed
    return row


def _saved(out, rows, overrides):
    config = apply_overrides(preset("demo"), overrides).to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"rows": rows, "config": config}))


def test_pending_lists_only_missing_pairs_in_running_order():
    rows = [_row("frozen ImageNet"), _row("InfoNCE, random batches", 0), _row("+ GPS neighbours", 0)]
    names = list(bench.VARIANTS)
    assert bench._pending(rows, [0, 1], names) == [
        (0, "+ similarity mining"), (1, "InfoNCE, random batches"), (1, "+ GPS neighbours"),
        (1, "+ similarity mining")]
    assert bench._pending(rows, [0], names[:2]) == []


def test_resume_with_every_row_done_trains_nothing_and_keeps_rows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"
    rows = [_row(name, seed, r1=10.0 + 3 * seed + i) for seed in (1, 0) for i, name in enumerate(bench.VARIANTS)]
    rows.append(_row("frozen ImageNet", r1=2.0))
    _saved(out, rows, ["eval.max_queries=60"])

    def no_training(*a, **k):
        raise AssertionError("--resume retrained a finished row")

    monkeypatch.setattr(bench, "train", no_training)
    monkeypatch.setattr(bench, "evaluate_config", no_training)
    assert bench.main(["--out", str(out), "--seeds", "0", "1", "--resume", "--set", "eval.max_queries=60"]) == 0
    saved = json.loads((out / "ablation.json").read_text())["rows"]
    assert sorted(map(json.dumps, saved)) == sorted(map(json.dumps, rows))
    assert saved[0]["variant"] == "frozen ImageNet"  # frozen first, then by seed and variant order
    assert [(r["seed"], r["variant"]) for r in saved[1:]] == [(s, n) for s in (0, 1) for n in bench.VARIANTS]
    table = (out / "ablation.md").read_text()
    assert "| + similarity mining | 2 | 13.5 | 12.0..15.0 |" in table
    assert "+ similarity mining" in capsys.readouterr().out


def test_resume_refuses_rows_of_another_configuration(tmp_path):
    out = tmp_path / "abl"
    _saved(out, [_row("InfoNCE, random batches", 0)], ["eval.max_queries=60"])
    with pytest.raises(SystemExit, match=r"another configuration \(differs in \['eval'\]\).*--set"):
        bench.main(["--out", str(out), "--seeds", "0", "--resume", "--set", "eval.max_queries=30"])


def test_comparable_ignores_where_the_checkout_lies():
    a = {"data": {"reference": "/tmp/x/data/naip/m_2018.tif", "max_locations": 480}}
    b = {"data": {"reference": "/work/wt/y/data/naip/m_2018.tif", "max_locations": 480}}
    assert bench._comparable(a) == bench._comparable(b)
    assert bench._comparable(a) != bench._comparable({"data": {**b["data"], "max_locations": 160}})

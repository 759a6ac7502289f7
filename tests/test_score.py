"""`data.eval_root` replaces only the test split (classification), and `s4mi_jax.score` re-scores a
finished classifier: its own test split exactly as the run did, an external folder as a run trained with
it as `eval_root`, and `predict`'s output as the checkpoint; bad inputs are one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s4mi_jax import predict, score
from s4mi_jax.data.sources import SAMPLE_ROOT
from s4mi_jax.trainers import classify
from tests.helpers import classification_config

ROOT = Path(__file__).resolve().parents[1]
N_EVAL = 12  # Labeled images of the external folder (+ 2 unlabeled ones, which are not scored).


def _same(a: dict, b: dict) -> None:
    """Exactly equal metric dicts (NaN equals NaN)."""
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, list):
            assert len(x) == len(y) and all(
                u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(x, y, strict=True)
            ), k
        else:
            assert x == y or (math.isnan(x) and math.isnan(y)), (k, x, y)


def _eval_folder(root: Path) -> Path:
    """12 labeled sample X-rays (their own labels) and 2 unlabeled ones: an external test folder."""
    (root / "images").mkdir(parents=True)
    rows = (Path(SAMPLE_ROOT) / "labels.csv").read_text().splitlines()[1:]
    labeled = [r for r in rows if r.endswith(",0")][:6] + [r for r in rows if r.endswith(",1")][:6]
    for r in labeled:
        name = r.split(",")[0]
        shutil.copy(Path(SAMPLE_ROOT) / "images" / name, root / "images" / name)
    for r in [r for r in rows if r not in labeled][:2]:
        name = r.split(",")[0]
        shutil.copy(Path(SAMPLE_ROOT) / "images" / name, root / "images" / f"unlabeled_{name}")
    (root / "labels.csv").write_text("filename,label\n" + "\n".join(labeled) + "\n")
    return root


def _config(**overrides):
    settings = dict(
        total_steps=2, eval_every=2, log_every=2, ckpt_every=2, **{"eval.bootstrap": 10}
    )
    return classification_config("supervised", **{**settings, **overrides})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 2-step supervised runs, without and with `data.eval_root`, and the folder."""
    tmp = tmp_path_factory.mktemp("score")
    folder = str(_eval_folder(tmp / "external"))
    plain, external = str(tmp / "plain"), str(tmp / "external_run")
    r_plain = classify.train_and_evaluate(_config(), plain)
    r_ext = classify.train_and_evaluate(_config(**{"data.eval_root": folder}), external)
    return dict(folder=folder, plain=plain, external=external, r_plain=r_plain, r_ext=r_ext)


def test_eval_root_replaces_only_the_test_split(runs):
    r_plain, r_ext = runs["r_plain"], runs["r_ext"]
    assert r_plain["manifest_hash"] == r_ext["manifest_hash"]
    with open(os.path.join(runs["plain"], "manifest.json")) as f:
        m_plain = json.load(f)
    with open(os.path.join(runs["external"], "manifest.json")) as f:
        m_ext = json.load(f)
    assert m_plain == m_ext  # Train, val, test, unlabeled: the same images.
    for k in ("num_train", "num_val"):
        assert r_plain[k] == r_ext[k]
    assert r_plain["num_test"] == len(m_plain["splits"]["test"]) == 64
    assert r_ext["num_test"] == N_EVAL  # The folder's labeled images only.
    assert "eval_dataset" in r_ext["provenance"]


def test_score_reproduces_the_runs_own_test_metrics(runs):
    for run, results in ((runs["plain"], runs["r_plain"]), (runs["external"], runs["r_ext"])):
        scored = score.score(run, log=lambda m: None)
        assert scored["num_test"] == results["num_test"]
        _same(scored["test"], results["test"])
        for k, ci in results["test_ci95"].items():
            _same({k: scored["test_ci95"][k]}, {k: ci})


def test_score_on_a_folder_equals_a_run_trained_with_it_as_eval_root(runs):
    scored = score.score(runs["plain"], data_root=runs["folder"], log=lambda m: None)
    assert scored["num_test"] == N_EVAL
    _same(scored["test"], runs["r_ext"]["test"])  # Same manifest, same training: same numbers.


def test_score_of_predict_output_equals_the_checkpoint(runs, tmp_path):
    folder = runs["folder"]
    report = predict.run(runs["plain"], [folder], str(tmp_path), log=lambda m: None)
    assert len(report.predicted) == N_EVAL + 2  # Unlabeled images are predicted, not scored.
    from_files = score.score(
        runs["plain"], data_root=folder, predictions_dir=str(tmp_path), log=lambda m: None
    )
    from_model = score.score(runs["plain"], data_root=folder, log=lambda m: None)
    _same(from_files["test"], from_model["test"])
    print(score.table(from_files))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "s4mi_jax.score", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_writes_json_and_table(runs, tmp_path):
    out = tmp_path / "scores.json"
    done = _cli(f"--workdir={runs['plain']}", f"--output={out}")
    assert done.returncode == 0, done.stderr
    assert "balanced_accuracy" in done.stdout and "95% CI" in done.stdout
    _same(json.loads(out.read_text())["test"], runs["r_plain"]["test"])


def _main(args, capsys) -> tuple[int, list[str]]:
    """`python -m s4mi_jax.score ARGS` in this process: (exit status, stderr lines)."""
    from absl import flags

    fv = flags.FlagValues()
    score.define_flags(fv)
    fv(["score", *args])
    with pytest.raises(SystemExit) as exit_info:
        score.main(["score"], fv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_are_one_line_and_exit_2(runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(os.path.join(runs["plain"], "config.json"), unfinished / "config.json")
    no_labels = tmp_path / "no_labels" / "images"
    no_labels.mkdir(parents=True)
    for p in sorted((Path(runs["folder"]) / "images").iterdir())[:3]:
        shutil.copy(p, no_labels / p.name)
    cases = {
        "does not exist": [f"--workdir={tmp_path / 'missing'}"],
        "has not finished": [f"--workdir={unfinished}"],
        "no labeled images": [f"--workdir={runs['plain']}", f"--data_root={no_labels.parent}"],
        "no predictions.csv": [f"--workdir={runs['plain']}", f"--predictions={tmp_path}"],
        "is not a folder": [f"--workdir={runs['plain']}", f"--data_root={tmp_path / 'nope'}"],
        "--workdir is required": [],
    }
    for expected, args in cases.items():
        status, lines = _main(args, capsys)
        assert status == 2, (expected, lines)
        assert len(lines) == 1 and expected in lines[0], (expected, lines)
        assert lines[0].startswith("score: error: ")

"""`s4mi_jax.predict` on a tiny trained classifier, and the provenance of its results.json."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax
import jax
import numpy as np
import pytest

import s4mi_jax
from s4mi_jax import predict, provenance
from s4mi_jax.data.sources import SAMPLE_ROOT
from s4mi_jax.errors import ConfigError
from s4mi_jax.evaluators import predictions
from s4mi_jax.trainers import classify
from tests.helpers import classification_config

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(SAMPLE_ROOT) / "images"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished `:local` supervised run: 2 steps, validated (best/) at step 2, tested."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = classification_config(
        "supervised",
        total_steps=2,
        eval_every=2,
        log_every=2,
        ckpt_every=2,
        **{"eval.bootstrap": 10},
    )
    results = classify.train_and_evaluate(config, workdir)
    return workdir, results


def _test_predictions(workdir):
    files, probs, classes = predictions.read_csv(os.path.join(workdir, "test_predictions.csv"))
    return dict(zip(files, probs, strict=True)), classes


def test_predict_reproduces_the_test_evaluation(run, tmp_path):
    workdir, results = run
    expected, classes = _test_predictions(workdir)
    assert len(expected) == results["num_test"] == 64
    names = sorted(expected)[:61]  # Not a multiple of the batch: the last batch is padded.
    report = predict.run(
        workdir, [str(IMAGES / n) for n in names], str(tmp_path), batch_size=8, log=lambda m: None
    )
    assert report.skipped == [] and len(report.predicted) == 61
    files, probs, got_classes = predictions.read_csv(str(tmp_path / "predictions.csv"))
    assert got_classes == classes == results["class_names"]
    assert [Path(f).name for f in files] == names
    want = np.stack([expected[n] for n in names])
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    assert np.ptp(want[:, 1]) > 1e-4  # Not a constant output: the images do differ.


def _corrupt_folder(tmp_path: Path, good: list[str]) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for n in good:
        shutil.copy(IMAGES / n, folder / n)
    (folder / "bad.png").write_bytes((IMAGES / good[0]).read_bytes()[:300])  # Truncated.
    (folder / "notes.txt").write_text("not an image")  # Ignored: not an image extension.
    return folder


def test_cli_skips_a_corrupt_file_and_writes_the_others(run, tmp_path):
    workdir, _ = run
    expected, _ = _test_predictions(workdir)
    good = sorted(expected)[:3]
    folder = _corrupt_folder(tmp_path, good)
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "s4mi_jax.predict", f"--workdir={workdir}", f"--output={out}"]
    proc = subprocess.run(
        [*cmd, f"--input={folder}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 image(s) predicted, 1 skipped" in proc.stdout
    assert f"cannot read image {folder / 'bad.png'}" in proc.stderr
    files, probs, _ = predictions.read_csv(str(out / "predictions.csv"))
    assert files == [str(folder / n) for n in good]
    np.testing.assert_allclose(probs, np.stack([expected[n] for n in good]), atol=1e-6)
    with open(out / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [r["file"] for r in skipped] == [str(folder / "bad.png")]

    # Nothing readable: exit status 1 (the CLI exits with `exit_status`).
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(folder / "bad.png", only_bad / "bad.png")
    report = predict.run(workdir, [str(only_bad)], str(tmp_path / "o"), log=lambda m: None)
    assert report.predicted == [] and len(report.skipped) == 1
    assert predict.exit_status(report) == 1 and not (tmp_path / "o" / "predictions.csv").exists()


def test_checkpoint_choice_and_bad_arguments(run, tmp_path):
    workdir, _ = run
    assert predict.resolve_checkpoint(workdir, "best") == (os.path.join(workdir, "best"), 2)
    assert predict.resolve_checkpoint(workdir, "latest") == (
        os.path.join(workdir, "checkpoints"),
        2,
    )
    with pytest.raises(ConfigError, match=r"--checkpoint=7: no such step .*\[2\]"):
        predict.resolve_checkpoint(workdir, "7")
    with pytest.raises(ConfigError, match="expected best, latest or a step"):
        predict.resolve_checkpoint(workdir, "last")
    with pytest.raises(ConfigError, match="no config.json"):
        predict.run(str(tmp_path), [str(IMAGES)], str(tmp_path / "o"))
    pretraining = tmp_path / "simclr_run"
    pretraining.mkdir()
    (pretraining / "config.json").write_text(json.dumps({"trainer": "simclr"}))
    with pytest.raises(ConfigError, match="does not support config.trainer='simclr'"):
        predict.run(str(pretraining), [str(IMAGES)], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="neither a folder nor a file"):
        predict.run(workdir, [str(tmp_path / "nope")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"--batch_size=-4 must be > 0"):
        predict.run(workdir, [str(IMAGES)], str(tmp_path / "o"), batch_size=-4)


def test_unreadable_names_and_files_are_skipped_and_listed(run, tmp_path):
    """A name that is not valid UTF-8 and a decompression-bomb-sized PNG are skipped and listed in
    skipped.csv; the other images are predicted."""
    workdir, _ = run
    expected, _ = _test_predictions(workdir)
    good = sorted(expected)[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for n in good:
        shutil.copy(IMAGES / n, folder / n)
    shutil.copy(IMAGES / good[0], os.fsencode(folder) + b"/caf\xe9.png")
    from tests.test_bad_inputs_catalogue import png_bomb

    png_bomb(folder / "huge.png")
    report = predict.run(workdir, [str(folder)], str(tmp_path / "out"), log=lambda m: None)
    assert sorted(Path(p).name for p in report.predicted) == good
    reasons = dict(report.skipped)
    assert reasons["b'" + str(folder) + "/caf\\xe9.png'"].endswith("is not valid UTF-8; rename it.")
    assert "is too large to read safely" in reasons[str(folder / "huge.png")]
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    files, probs, _ = predictions.read_csv(str(tmp_path / "out" / "predictions.csv"))
    np.testing.assert_allclose(probs, np.stack([expected[n] for n in good]), atol=1e-6)


def test_finished_predictions_survive_an_interruption(run, tmp_path, monkeypatch):
    """Predictions are written chunk by chunk: a failure in the second chunk keeps the first's rows
    in predictions.csv (no .tmp left), and skipped.csv is still written."""
    import dataclasses

    workdir, _ = run
    expected, _ = _test_predictions(workdir)
    names = sorted(expected)[:12]
    folder = _corrupt_folder(tmp_path, names)
    monkeypatch.setattr(predict, "CHUNK_BATCHES", 1)
    load = predict.TASKS["classify"]
    calls = []

    def interrupted(*args):
        predictor = load(*args)

        def fn(images):
            calls.append(len(images))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return predictor.predict(images)

        return dataclasses.replace(predictor, predict=fn)

    monkeypatch.setitem(predict.TASKS, "classify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict.run(workdir, [str(folder)], str(tmp_path / "out"), batch_size=8, log=lambda m: None)
    files, probs, _ = predictions.read_csv(str(tmp_path / "out" / "predictions.csv"))
    assert [Path(f).name for f in files] == names[:8] and calls == [8, 4]
    np.testing.assert_allclose(probs, np.stack([expected[n] for n in names[:8]]), atol=1e-6)
    assert (tmp_path / "out" / "skipped.csv").exists()  # bad.png, read before the failure.
    assert not list((tmp_path / "out").glob("*.tmp"))


def _expected_fingerprint(root: Path) -> tuple[int, str]:
    """Independent of provenance.py: every file of the folder tree, relative path + size."""
    lines = sorted(
        f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}"
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in (".png", ".csv")
    )
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_results_json_records_every_provenance_field(run):
    workdir, results = run
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    prov = saved["provenance"]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert prov["code"]["git_commit"] == commit and len(commit) == 40
    assert isinstance(prov["code"]["git_dirty"], bool)
    assert prov["code"]["package_version"] == s4mi_jax.__version__
    with open(os.path.join(workdir, "config.json")) as f:
        assert prov["config"] == json.load(f)
    digest = hashlib.sha256(json.dumps(prov["config"], sort_keys=True).encode()).hexdigest()
    assert prov["config_sha256"] == digest
    with open(os.path.join(workdir, "manifest.json")) as f:
        assert prov["manifest_hash"] == json.load(f)["hash"] == saved["manifest_hash"]
    count, sha = _expected_fingerprint(Path(SAMPLE_ROOT))
    assert prov["dataset"]["file_count"] == count == 322  # 320 images, labels.csv, metadata.csv
    assert prov["dataset"]["sha256"] == sha and prov["dataset"]["records"] == 320
    env = prov["environment"]
    assert env["device_kind"] == jax.devices()[0].device_kind and env["device_count"] == 8
    assert env["jax_version"] == jax.__version__ and env["flax_version"] == flax.__version__
    assert env["process_count"] == 1 and env["optax_version"] and env["orbax_checkpoint_version"]
    assert 0 < prov["wall_time_s"] == saved["wall_time_s"]
    assert prov["device_hours"] == pytest.approx(prov["wall_time_s"] * 8 / 3600)
    assert prov["started_at"] <= prov["finished_at"] and prov["resumed_from_step"] is None
    # The keys results.json always had (launch/report.py, test_multihost) are still there.
    for key in ("s4mi_jax_version", "jax_version", "flax_version", "device_kind", "device_count"):
        assert saved["environment"][key] == env[key]
    # One flat row for the sweep report.
    row = provenance.flatten(prov)
    assert row["git_commit"] == commit and row["dataset_sha256"] == sha
    assert row["device_hours"] == prov["device_hours"] and None not in row.values()


def test_code_version_without_git_or_outside_a_checkout(monkeypatch, tmp_path):
    provenance.code_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # No git executable.
    assert provenance.code_version() == {
        "git_commit": None,
        "git_dirty": None,
        "package_version": s4mi_jax.__version__,
    }
    provenance.code_version.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(s4mi_jax, "__file__", str(tmp_path / "s4mi_jax" / "__init__.py"))
    assert provenance.code_version()["git_commit"] is None  # Not a git checkout.
    provenance.code_version.cache_clear()


def test_dataset_fingerprint_follows_the_files_not_their_location(tmp_path):
    from s4mi_jax.data.sources import open_source

    names = sorted(os.listdir(IMAGES))[:4]
    for folder in ("a", "b"):
        (tmp_path / folder / "images").mkdir(parents=True)
        for n in names:
            shutil.copy(IMAGES / n, tmp_path / folder / "images" / n)
        (tmp_path / folder / "labels.csv").write_text(
            "filename,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names))
        )
    a = provenance.fingerprint(open_source(str(tmp_path / "a")))
    assert a == {**provenance.fingerprint(open_source(str(tmp_path / "b"))), "root": a["root"]}
    assert a["file_count"] == 5 and a["records"] == 4
    with open(tmp_path / "b" / "labels.csv", "a") as f:  # Labels edited: another dataset.
        f.write("\n")
    assert provenance.fingerprint(open_source(str(tmp_path / "b")))["sha256"] != a["sha256"]

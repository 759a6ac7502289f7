"""Label-fraction manifests: nested, stratified, patient-grouped, order-independent, reproducible."""

import json
import math

import numpy as np
import pytest

from s4mi_jax.data.manifests import SPLITS, Manifest, make_manifest
from s4mi_jax.data.sources import UNLABELED, open_source
from s4mi_jax.errors import DataError

FRACTIONS = (0.01, 0.1, 0.5, 1.0)


def _synthetic(n=600, seed=0):
    """~240 patients, 1-4 images each, classes 70/25/5% by patient; ~10% images unlabeled."""
    rng = np.random.default_rng(seed)
    keys, labels, groups = [], [], []
    p = 0
    while len(keys) < n:
        cls = int(rng.choice(3, p=[0.7, 0.25, 0.05]))
        for j in range(int(rng.integers(1, 5))):
            keys.append(f"p{p:04d}_{j}.png")
            labels.append(cls)
            groups.append(f"p{p:04d}")
        p += 1
    labels = np.array(labels[:n])
    labels[rng.random(n) < 0.1] = UNLABELED
    return keys[:n], labels, groups[:n]


KEYS, LABELS, GROUPS = _synthetic()


def _make(fraction, seed=0, keys=KEYS, labels=LABELS, groups=GROUPS, **kw):
    return make_manifest(keys, labels, groups, fraction=fraction, seed=seed, **kw)


def _groups_of(m, split, groups=GROUPS):
    return {groups[i] for i in getattr(m, split)}


def _pool_groups_per_class(m, labels=LABELS, groups=GROUPS):
    return {c: {groups[i] for i in m.train_pool if labels[i] == c} for c in range(3)}


def test_synthetic_data_is_imbalanced_grouped_and_partly_unlabeled():
    counts = np.bincount(LABELS[LABELS >= 0], minlength=3) / (LABELS >= 0).sum()
    assert counts[0] > 0.6 and 0.15 < counts[1] < 0.35 and 0.02 < counts[2] < 0.1
    assert len(set(GROUPS)) < len(KEYS) and (LABELS == UNLABELED).any()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested_across_fractions(seed):
    trains = [set(_make(f, seed).keys("train")) for f in FRACTIONS]
    for small, large in zip(trains, trains[1:], strict=False):
        assert small < large  # Strictly growing and nested.


def test_train_takes_ceil_fraction_of_pool_patients_per_class_and_min_per_class():
    for fraction in FRACTIONS:
        for min_per_class in (1, 3):
            m = _make(fraction, min_per_class=min_per_class)
            pool = _pool_groups_per_class(m)
            for c in range(3):
                in_train = {GROUPS[i] for i in m.train if LABELS[i] == c}
                want = max(min_per_class, math.ceil(round(fraction * len(pool[c]), 9)))
                assert len(in_train) == min(want, len(pool[c])) and in_train <= pool[c]
    # 1%: every class, the 5% one included, is in train with exactly min_per_class patients.
    m = _make(0.01, min_per_class=2)
    assert [len({GROUPS[i] for i in m.train if LABELS[i] == c}) for c in (1, 2)] == [2, 2]


def test_rounding_is_not_fooled_by_float_error():
    # 0.07 * 100 == 7.000000000000001 in floating point: a plain ceil would take 8 of 100 patients.
    keys = [f"k{i}" for i in range(100)]
    labels = np.zeros(100, int)
    m = make_manifest(keys, labels, None, fraction=0.07, seed=0, test_fraction=0, val_fraction=0)
    assert len(m.train) == 7 and len(m.train_pool) == 100
    # 0.7 * 45 == 31.499999999999996: test rounds 31.5 half up to 32 patients.
    m = make_manifest(keys[:45], labels[:45], None, fraction=1.0, seed=0, test_fraction=0.7)
    assert len(m.test) == 32


def test_small_class_gets_one_patient_in_test_val_and_train():
    keys = [f"k{i}" for i in range(43)]
    labels = np.array([0] * 40 + [1] * 3)  # Class 1: 3 patients; 0.1 * 3 rounds to 0 for val.
    m = make_manifest(keys, labels, None, fraction=0.01, seed=0)
    assert [int((labels[getattr(m, s)] == 1).sum()) for s in ("test", "val", "train")] == [1, 1, 1]
    two = make_manifest(
        keys[:42], labels[:42], None, fraction=0.01, seed=0
    )  # Both stay in the pool.
    assert (labels[two.train_pool] == 1).sum() == 2 and (labels[two.test] == 1).sum() == 0


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_train_is_stratified_like_the_pool(fraction):
    for seed in range(3):
        m = _make(fraction, seed)
        pool_share = np.bincount(LABELS[m.train_pool], minlength=3) / len(m.train_pool)
        train_share = np.bincount(LABELS[m.train], minlength=3) / len(m.train)
        np.testing.assert_allclose(train_share, pool_share, atol=0.06)
        assert m.counts["train"]["per_class"] == {
            str(c): int((LABELS[m.train] == c).sum()) for c in range(3)
        }


def test_test_and_val_are_fixed_by_split_seed_only():
    ref = _make(0.1, 0)
    for fraction in FRACTIONS:
        for seed in (0, 1, 2):
            m = _make(fraction, seed)
            np.testing.assert_array_equal(m.test, ref.test)
            np.testing.assert_array_equal(m.val, ref.val)
            np.testing.assert_array_equal(m.train_pool, ref.train_pool)
    other = _make(0.1, 0, split_seed=1)
    assert not np.array_equal(other.test, ref.test)
    # ~20% / ~10% of each class's labeled patients; every class (>= 3 patients) is in both.
    labeled_groups = {c: {GROUPS[i] for i in np.flatnonzero(LABELS == c)} for c in range(3)}
    for c in range(3):
        n_test = len({GROUPS[i] for i in ref.test if LABELS[i] == c})
        n_val = len({GROUPS[i] for i in ref.val if LABELS[i] == c})
        assert n_test == max(1, math.floor(0.2 * len(labeled_groups[c]) + 0.5))
        assert n_val == max(1, math.floor(0.1 * len(labeled_groups[c]) + 0.5))


def test_no_test_split_when_test_fraction_is_zero():
    m = _make(0.1, test_fraction=0)
    assert len(m.test) == 0 and len(m.val) > 0
    assert len(m.train_pool) > len(_make(0.1).train_pool)


def test_no_patient_in_two_splits_and_unlabeled_images_of_held_out_patients_are_unused():
    for fraction in (0.1, 1.0):
        m = _make(fraction)
        train, val, test = (_groups_of(m, s) for s in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert not _groups_of(m, "unlabeled") & (val | test)
        # A test patient with an unlabeled image exists, and that image is in no split.
        held_unlabeled = [i for i in range(len(KEYS)) if LABELS[i] < 0 and GROUPS[i] in test | val]
        assert held_unlabeled
        assert not set(held_unlabeled) & {int(i) for s in SPLITS for i in getattr(m, s)}


def test_unlabeled_split_holds_unlabeled_and_unselected_pool_images():
    m = _make(0.1)
    used = np.concatenate([m.train, m.val, m.test])
    assert (LABELS[used] >= 0).all()  # -1 images never in train/val/test.
    unlabeled = set(m.unlabeled.tolist())
    assert set(np.setdiff1d(m.train_pool, m.train).tolist()) <= unlabeled
    assert not unlabeled & set(m.train.tolist())
    minus_one = {
        i
        for i in range(len(KEYS))
        if LABELS[i] < 0 and GROUPS[i] not in _groups_of(m, "test") | _groups_of(m, "val")
    }
    assert unlabeled == minus_one | set(np.setdiff1d(m.train_pool, m.train).tolist())


def test_fraction_one_trains_on_the_whole_pool():
    m = _make(1.0)
    np.testing.assert_array_equal(m.train, m.train_pool)
    assert (LABELS[m.unlabeled] == UNLABELED).all()
    assert m.counts["train"]["share_of_pool"] == 1.0


def test_deterministic_and_independent_of_input_order():
    ref = _make(0.1, 3)
    again = _make(0.1, 3)
    assert again.hash == ref.hash and all(
        np.array_equal(getattr(again, s), getattr(ref, s)) for s in SPLITS
    )
    perm = np.random.default_rng(0).permutation(len(KEYS))
    shuffled = _make(
        0.1, 3, keys=[KEYS[i] for i in perm], labels=LABELS[perm], groups=[GROUPS[i] for i in perm]
    )
    assert shuffled.hash == ref.hash
    for split in SPLITS:
        assert sorted(shuffled.keys(split)) == sorted(ref.keys(split))
        assert np.all(np.diff(getattr(shuffled, split)) > 0)  # Sorted indices into the new order.
    # groups=None: each image its own patient, named by its key (not its position).
    alone = _make(0.1, 3, groups=None)
    alone_shuffled = _make(0.1, 3, keys=[KEYS[i] for i in perm], labels=LABELS[perm], groups=None)
    assert alone.hash == alone_shuffled.hash != ref.hash


def test_other_seed_other_subset_same_evaluation_split():
    a, b = _make(0.1, 0), _make(0.1, 1)
    assert set(a.keys("train")) != set(b.keys("train")) and a.hash != b.hash
    assert len(a.train) > 0 and a.keys("test") == b.keys("test")


def test_multilabel_is_stratified_by_label_set_and_nested():
    rng = np.random.default_rng(1)
    label_sets = [(), (0,), (1,), (0, 2), (1, 2, 3)]
    patient_set = rng.choice(len(label_sets), 150, p=[0.4, 0.25, 0.2, 0.1, 0.05])
    keys, groups, rows, group_set = [], [], [], {}
    for p, s in enumerate(patient_set):
        group_set[f"m{p}"] = label_sets[s]
        for j in range(int(rng.integers(1, 3))):
            keys.append(f"m{p}_{j}")
            groups.append(f"m{p}")
            rows.append(np.isin(np.arange(4), label_sets[s]).astype(np.int32))
    labels = np.stack(rows)
    labels[::25] = UNLABELED  # Whole rows of -1: unlabeled.
    ms = [make_manifest(keys, labels, groups, fraction=f, seed=2) for f in FRACTIONS]
    for small, large in zip(ms, ms[1:], strict=False):
        assert set(small.keys("train")) < set(large.keys("train"))
    m = ms[1]  # 10%
    for s in label_sets:
        pool = {g for g in (groups[i] for i in m.train_pool) if group_set[g] == s}
        train = {g for g in (groups[i] for i in m.train) if group_set[g] == s}
        assert len(train) == max(1, math.ceil(round(0.1 * len(pool), 9))) and len(pool) > 0
    assert not any((labels[i] < 0).any() for i in np.concatenate([m.train, m.val, m.test]))
    assert m.counts["train"]["per_class"] == {
        str(c): int(labels[m.train, c].sum()) for c in range(4)
    }


def test_embedded_sample():
    source = open_source(None)
    keys = [p.name for p in source.files]
    ms = [make_manifest(keys, source.labels, source.groups, fraction=f, seed=0) for f in FRACTIONS]
    for small, large in zip(ms, ms[1:], strict=False):
        assert set(small.keys("train")) < set(large.keys("train"))
    m = ms[0]  # 1%: 112 pool patients per class -> ceil(1.12) = 2 each.
    assert np.bincount(source.labels[m.train]).tolist() == [2, 2]
    assert np.bincount(source.labels[m.test]).tolist() == [32, 32]  # 20% of 160 per class.
    assert np.bincount(source.labels[m.val]).tolist() == [16, 16]
    # Pinned: the same images on every machine and Python version (and a deliberate change shows up).
    assert ms[1].hash == "7f4f00c9dc184e054d45ae4d88847394f1b8390823e74d35794304e61d59e6d6"


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(DataError, match=r"label fraction .* is not in \(0, 1\]"):
        _make(fraction)


def test_class_with_no_patient_left_for_train_is_named():
    keys = [f"k{i}" for i in range(40)]
    labels = np.array([0] * 38 + [1, 1])  # Class 1: two patients; test and val take one each.
    with pytest.raises(
        DataError, match=r"class 1 \(2 patient\(s\)\).*Lower test_fraction/val_fraction"
    ):
        make_manifest(keys, labels, None, fraction=0.1, seed=0, test_fraction=0.5, val_fraction=0.3)
    assert (
        len(make_manifest(keys, labels, None, fraction=0.1, seed=0).train) > 0
    )  # Defaults keep it.


def test_bad_inputs_are_rejected():
    with pytest.raises(DataError, match="duplicate key 'p0000_0.png'"):
        _make(0.1, keys=[KEYS[0]] + KEYS[:-1])
    with pytest.raises(DataError, match="groups has"):
        _make(0.1, groups=GROUPS[:-1])
    with pytest.raises(DataError, match="leaves nothing to train on"):
        _make(0.1, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="no labeled samples"):
        _make(0.1, labels=np.full(len(KEYS), UNLABELED))


def test_save_load_round_trip_and_tamper_check(tmp_path):
    m = _make(0.1, 4)
    path = tmp_path / "sub" / "manifest.json"
    m.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # No temp file left behind.
    loaded = Manifest.load(path)
    assert loaded.hash == m.hash and loaded.counts == m.counts and loaded.fraction == 0.1
    for split in SPLITS:
        np.testing.assert_array_equal(getattr(loaded, split), getattr(m, split))
    # Loading against a re-listed (shuffled) folder maps the same images to the new indices.
    shuffled = list(reversed(KEYS))
    relisted = Manifest.load(path, keys=shuffled)
    assert sorted(relisted.keys("train")) == sorted(m.keys("train"))
    d = json.loads(path.read_text())
    assert d["counts"]["train"]["per_class"] == m.counts["train"]["per_class"]
    d["splits"]["train"] = d["splits"]["train"][1:]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="was modified"):
        Manifest.load(path)
    m.save(path)
    dropped = m.keys("train")[0]
    with pytest.raises(DataError, match=f"1 image\\(s\\) not in the data, e.g. \\['{dropped}'\\]"):
        Manifest.load(path, keys=[k for k in KEYS if k != dropped])


def test_patient_with_images_of_two_classes_forms_its_own_stratum():
    # Class 1 exists only in patients who also have class-0 images: stratum (0, 1) keeps it in train.
    keys = [f"a{p}" for p in range(30)] + [f"b{p}_{j}" for p in range(6) for j in range(2)]
    groups = [f"a{p}" for p in range(30)] + [f"b{p}" for p in range(6) for j in range(2)]
    labels = np.array([0] * 30 + [0, 1] * 6)
    m = make_manifest(keys, labels, groups, fraction=0.01, seed=0)
    assert {groups[i] for i in m.train if labels[i] == 1}  # A mixed patient, both images.
    assert sorted(labels[m.train].tolist()) == [0, 0, 1]

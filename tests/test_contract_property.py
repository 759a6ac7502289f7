"""The contract of issue 25 on random small data folders and configs, through the real commands.

Each seed is one case of `tests/contract_cases.py`: a random dataset (CSV encodings, delimiters,
label spellings, image modes and bit depths, masks of every value scheme, `.npz`, config values in
and out of range, workdirs, predict/score/reruns on a finished run) and the commands to run on it.
Asserted for every command: exit 0 with the data read as intended, or the refusal status with one
line naming the file, row or key; never a traceback; data folders byte-identical; the latest
checkpoint intact. A small budget here (most cases are refused before anything compiles; a few
are full tiny runs); `benchmarks/contract_property.py` runs a large one. A failure names its seed:
`make_case(seed, root)` rebuilds the case.
"""

from __future__ import annotations

import pytest

from tests import contract_cases

# The small budget: seeds of every family, most refused before anything compiles (seconds each),
# one full tiny training run with its counts checked (26), and three cases on a copy of one finished
# run (64 predict on a damaged config.json, 66 a rerun with batch_size=0, 74 a rerun on a damaged
# config.json; the run is built once). About 3 minutes on an idle 2-core CPU.
SEEDS = [3, 6, 9, 14, 15, 18, 20, 21, 24, 26, 27, 35, 49, 52, 63, 64, 66, 74]
N = len(SEEDS)

# Known open bugs (reported, being fixed in s4mi_jax/): seed -> reason. Not strict: a fix passes.
KNOWN: dict[int, str] = {}
# Seed 63 (class-id masks 0/1/2 that inspect_data called usable and the trainer refused) was xfail
# until 6a6a581 gave the inspector --num_classes.


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    return contract_cases.BaseRuns(tmp_path_factory.mktemp("base_runs"))


def _params():
    for seed in SEEDS:
        marks = [pytest.mark.xfail(reason=KNOWN[seed], strict=False)] if seed in KNOWN else []
        yield pytest.param(seed, marks=marks, id=f"seed{seed}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", _params())
def test_contract(seed, tmp_path, base_runs):
    case = contract_cases.make_case(seed, tmp_path / "case")
    result = contract_cases.run_case(case, base_runs)
    report = "\n".join(
        [f"seed {seed}: {case.description}"]
        + [
            f"  $ {s.command}\n    exit {s.code}: {contract_cases.tail(s.stderr, 3)}"
            for s in result.steps
        ]
        + [f"  PROBLEM {p}" for p in result.problems]
    )
    assert not result.problems, report


def test_generator_is_deterministic(tmp_path):
    for seed in (0, 7, 123):
        a = contract_cases.make_case(seed, tmp_path / f"a{seed}")
        b = contract_cases.make_case(seed, tmp_path / f"b{seed}")
        assert a.family == b.family and a.description == b.description
        for da, db in zip(a.data_dirs, b.data_dirs, strict=True):
            assert contract_cases.tree_digest(da) == contract_cases.tree_digest(db)
        commands = [[s.short().replace(c.root, "ROOT") for s in c.steps] for c in (a, b)]
        assert commands[0] == commands[1]


def test_generator_covers_every_family(tmp_path):
    families = {contract_cases.make_case(s, tmp_path / str(s)).family for s in range(60)}
    assert families == {name for name, *_ in contract_cases.FAMILIES}

"""Fit before paying: a step that does not fit is one line saying what would.

The out-of-memory text is XLA:TPU's own, as `python -m s4mi_jax.aot
--config=configs/simclr_chest.py:research --topology=v5e:2x2` raised it (a `JaxRuntimeError` from
`compile()`); the rest of the handler (parsing, the batch search by real compiles, the message)
runs for real. The last test compiles for a real TPU topology where libtpu is installed.
"""

from __future__ import annotations

import importlib.util
import types

import jax
import pytest

from s4mi_jax import aot
from tests.helpers import local_config

XLA_TPU_OOM = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
    "(43.08G) exceeds available HBM (15.75G)."
)


def _oom_above(per_chip: int, calls: list[int]):
    """`aot._compile` that raises XLA:TPU's error when the per-device batch exceeds `per_chip`."""
    real = aot._compile

    def compile_(lowered):
        global_batch = jax.tree.leaves(lowered.args_info[0][1])[0].shape[0]
        calls.append(global_batch // jax.device_count())
        if global_batch // jax.device_count() > per_chip:
            raise jax.errors.JaxRuntimeError(XLA_TPU_OOM)
        return real(lowered)

    return compile_


def test_oom_at_compile_is_one_line_with_what_fits(monkeypatch, capsys):
    config = local_config(batch_size=8 * jax.device_count())  # Per-device batch 8 on 8 devices.
    calls: list[int] = []
    monkeypatch.setattr(aot, "_compile", _oom_above(2, calls))
    for name, value in dict(_CONFIG=config, _DEVICES=None, _TOPOLOGY=None, _FIT_SEARCH=3).items():
        monkeypatch.setattr(aot, name, types.SimpleNamespace(value=value))
    with pytest.raises(SystemExit) as exit_:
        aot.main(["aot"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("s4mi_jax.aot: error: does not fit: HLO temporaries need 43.08 GiB per ")
    assert "15.75 GiB available (per-device batch 8 on 8 device(s))" in err
    assert "~32 devices at this global batch 64 (estimate)" in err  # 43.08 / 15.75 -> x4.
    assert "a per-chip batch <= 2 (global 16; compiled: fits)" in err
    assert "--config.model.remat=True" in err
    assert calls == [8, 2]  # The step as asked, then 8 / 2.73 -> 2: one real compile that fits.


def test_search_reports_each_failing_size_and_no_search_gives_an_estimate(monkeypatch):
    config = local_config(batch_size=16 * jax.device_count())
    calls: list[int] = []
    monkeypatch.setattr(aot, "_compile", _oom_above(1, calls))
    with pytest.raises(aot.DoesNotFit) as e:
        aot.analyze(config, None)
    assert (e.value.needed, e.value.available) == (int(43.08 * 2**30), int(15.75 * 2**30))
    msg = str(aot.explain_fit(config, None, e.value, search=2))
    assert "a per-chip batch < 2 (compiled [4, 2]: none fits)" in msg
    assert str(aot.explain_fit(config, None, e.value, search=0)).count("estimate") == 2
    assert calls == [16, 4, 2]


def test_other_compile_errors_are_not_swallowed(monkeypatch):
    def fail(lowered):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(aot, "_compile", fail)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        aot.analyze(local_config(), None)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (700 MB)")
def test_real_tpu_compile_that_does_not_fit():
    """XLA:TPU itself: the research-width SimCLR step at a batch no 4-chip v5e holds."""
    from configs import simclr_chest

    config = simclr_chest.get_config("research")
    config.batch_size = 4096
    config.data.verify = False
    with pytest.raises(aot.DoesNotFit) as e:
        aot.analyze(config, aot.topology_devices("v5e:2x2"))
    assert e.value.needed > e.value.available > 0
    assert "per-device batch 1024 on 4 device(s)" in str(aot.explain_fit(config, None, e.value, 0))

"""The persistent compilation cache: where it goes, what overrides it, and that commands use it."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from s4mi_jax.core import compile_cache
from tests.helpers import HANG_GUARD_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flag_beats_env_beats_jax_setting_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.default_dir() == str(tmp_path / "xdg" / "s4mi_jax" / "jax")
    # The tests' conftest configured JAX's own folder: it wins over the default.
    assert jax.config.jax_compilation_cache_dir
    assert compile_cache.resolve() == jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    assert compile_cache.resolve() == str(tmp_path / "env")
    assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert compile_cache.resolve("off") is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None
    assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # Tiny programs compile in < 1 s.
    for key in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS"):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.mark.slow
def test_main_fills_the_default_cache_and_off_disables_it(tmp_path):
    """The real command, with no cache configured anywhere: it writes under the user's cache folder."""
    args = [
        sys.executable,
        "-m",
        "s4mi_jax.main",
        "--config=configs/simclr_chest.py:local",
        "--config.total_steps=1",
        "--config.eval.linear_probe=False",
    ]
    run = subprocess.run(
        [*args, f"--workdir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    default = tmp_path / "xdg" / "s4mi_jax" / "jax"
    assert default.is_dir() and any(default.iterdir())
    off = subprocess.run(
        [*args, f"--workdir={tmp_path / 'run_off'}"],
        cwd=ROOT,
        env=_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg2"), S4MI_COMPILE_CACHE="off"),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "xdg2" / "s4mi_jax").exists()

"""A persistent XLA compilation cache, on by default for every command that compiles.

Without it every run compiles its steps from scratch (the default SimCLR command: about 4x longer to the
first step cold than warm, BENCHMARKS.md). Where the cache lives, first match wins:

1. the command's `--compile_cache=PATH` flag (`off` disables it);
2. the environment variable `S4MI_COMPILE_CACHE=PATH` (`off` disables it), which `launch/sweep.py`
   passes to every process of a sweep so they share one cache;
3. a cache folder already configured for JAX (`JAX_COMPILATION_CACHE_DIR`, or `jax.config` set by the
   caller, as the tests' conftest does): left exactly as it is;
4. `$XDG_CACHE_HOME/s4mi_jax/jax`, else `~/.cache/s4mi_jax/jax`.

JAX keys each entry by the program, the devices and the compiler flags, so one folder safely serves
different configs, device counts and backends; concurrent processes write entries atomically.
"""

from __future__ import annotations

import os

import jax

ENV = "S4MI_COMPILE_CACHE"
OFF = ("off", "none", "0", "false", "")


def default_dir() -> str:
    """The user's cache folder for s4mi_jax's compiled programs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s4mi_jax", "jax")


def resolve(flag: str | None = None) -> str | None:
    """The cache folder to use (None: disabled, or left to what JAX is already configured with)."""
    for value in (flag, os.environ.get(ENV)):
        if value is not None:
            return None if value.strip().lower() in OFF else os.path.abspath(value)
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    return default_dir()


def enable(flag: str | None = None) -> str | None:
    """Points JAX's persistent compilation cache at `resolve(flag)`; returns the folder (None: off).

    Call before the first compile. An explicit `off` also clears a folder set through JAX's own
    variable, so `--compile_cache=off` always means a cold compile."""
    path = resolve(flag)
    explicit = flag is not None or os.environ.get(ENV) is not None
    if path is None:
        if explicit:
            jax.config.update("jax_compilation_cache_dir", None)
        return None
    if path != jax.config.jax_compilation_cache_dir:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:  # A read-only home: run without a cache rather than fail.
            return None
        jax.config.update("jax_compilation_cache_dir", path)
    return path


def define_flag() -> None:
    """Defines `--compile_cache` once, whichever of the commands' modules is imported first."""
    from absl import flags

    if "compile_cache" not in flags.FLAGS:
        flags.DEFINE_string(
            "compile_cache",
            None,
            f"Persistent compilation cache folder, or 'off'. Default: ${ENV}, else JAX's own "
            f"setting, else {default_dir()}.",
        )


def enable_from_flag() -> str | None:
    """`enable()` with the value of `--compile_cache` (defined by `define_flag`)."""
    from absl import flags

    return enable(flags.FLAGS["compile_cache"].value if "compile_cache" in flags.FLAGS else None)

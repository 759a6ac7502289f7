"""Test setup: 8 simulated CPU devices, fast compiles, parsed absl flags (Grain needs them)."""

import os
import sys

# Must happen before the first JAX operation (and before jax picks its backend).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Tiny test models: optimisation passes cost more than they save (flax examples do the same).
jax.config.update("jax_disable_most_optimizations", True)
_CACHE = os.environ.get(
    "S4MI_TEST_COMPILE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Commands the tests start as subprocesses use the same cache, not the user's (core/compile_cache.py).
os.environ.setdefault("S4MI_COMPILE_CACHE", os.path.abspath(_CACHE))
# ... and cache every program, as the in-process tests do (JAX's default skips those compiled in < 1 s,
# most of a tiny test run): a subprocess test's second compile of a program is then a cache read.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# ... and compile as the in-process tests do: half the time of a tiny command (22 s, was 46), and the
# programs they share with in-process tests hit the same cache entries.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])

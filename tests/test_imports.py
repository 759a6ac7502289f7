"""The package's import graph has no cycle and no upward import (models/ never reaches into losses/),
and the one shared `l2_normalize` keeps the numerics both former copies had.

The graph is read from the source with `ast` (every `import`, also those inside functions: a lazy
import that closes a circle is still a circle), so the check is instant and imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from s4mi_jax.ops import l2_normalize

PACKAGE = Path(__file__).resolve().parents[1] / "s4mi_jax"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports. `from a import b` counts as importing `a.b` when that
    is a module; a parent package is never an edge (Python imports it before its children anyway)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = {f"{base}.{a.name}" for a in node.names} & mods.keys()
                targets |= subs or {base}
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in mods and t != name and t not in ancestors}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert "s4mi_jax.data.tfds_builders" in graph["s4mi_jax.data.sources"]  # The graph is read.
    assert cycles(graph) == []


def test_models_and_data_do_not_import_upward():
    upward = ("s4mi_jax.losses", "s4mi_jax.trainers", "s4mi_jax.main")
    for name, targets in import_graph().items():
        if name.startswith(("s4mi_jax.models", "s4mi_jax.data", "s4mi_jax.ops")):
            bad = sorted(t for t in targets if t.startswith(upward))
            assert not bad, f"{name} imports {bad}"


def _reference(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """The former losses/picie.py version (torch `F.normalize`), in float64."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def test_l2_normalize_values_zero_rows_and_bf16_under_jit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype(np.float32) * np.array([[1], [1e-3], [1e3], [0], [1e-20]])
    f = jax.jit(l2_normalize)
    y = f(jnp.asarray(x))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), _reference(x), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(y[3]), 0.0)  # A zero row stays zero, not NaN.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y[:3]), axis=-1), 1.0, rtol=1e-6)

    yb = f(jnp.asarray(x, jnp.bfloat16))  # bf16 in: normalised in float32.
    assert yb.dtype == jnp.float32 and bool(jnp.isfinite(yb).all())
    np.testing.assert_allclose(np.asarray(yb[:3]), _reference(x[:3]), atol=1e-2)
    np.testing.assert_array_equal(np.asarray(yb[3]), 0.0)

    # The gradient is finite at a zero row too (a sqrt-based norm gives NaN there).
    grad = jax.jit(jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(7.0))))(jnp.asarray(x))
    assert bool(jnp.isfinite(grad).all())

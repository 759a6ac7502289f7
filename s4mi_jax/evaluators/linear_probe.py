"""A quick linear probe: multinomial logistic regression on frozen features, fit with L-BFGS.

Used to score a representation without fine-tuning: the features are standardized with the
train split's mean and std, then a softmax classifier is fit full-batch. The problem is convex and
the solver deterministic, so the same features always give the same probe (no seed to report), and
the whole optimization runs inside one jitted `lax.while_loop`, compiled once per input shape.

The objective is ``mean(cross_entropy) + 0.5 * l2 * ||w||^2`` (bias not penalized). This is
scikit-learn's multinomial ``LogisticRegression(C=1 / (l2 * N))`` on the same standardized
features. For two classes the softmax keeps two weight columns ``w1 = -w0``, so its penalty is half
that of sklearn's single-vector binary model: there the match is ``C = 2 / (l2 * N)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from s4mi_jax.evaluators.metrics import classification_metrics

# Standard deviations below this are treated as constant features: they are centred but not scaled,
# so a dead feature dimension does not blow up into noise / inf.
_MIN_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: ``softmax(((x - mean) / std) @ w + b)``. Arrays are host NumPy float32."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    w: np.ndarray  # (D, C)
    b: np.ndarray  # (C,)

    @property
    def num_classes(self) -> int:
        return int(self.w.shape[1])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` in float64 (computed on the host; probing is cheap)."""
        x = _as_features(x, "x")
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"probe was fit on {self.mean.shape[0]} features, got {x.shape[1]}")
        z = (x.astype(np.float64) - self.mean) / self.std
        return z @ self.w.astype(np.float64) + self.b.astype(np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)``, float64, rows summing to 1."""
        logits = self.logits(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class ids ``(N,)``."""
        return np.argmax(self.logits(x), axis=1)


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D feature matrix (N, D), got shape {x.shape}")
    return x


def _objective(
    params: dict[str, jax.Array], x: jax.Array, y: jax.Array, l2: jax.Array
) -> jax.Array:
    logits = x @ params["w"] + params["b"]
    nll = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return nll + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit(
    x: jax.Array,
    y: jax.Array,
    l2: jax.Array,
    max_steps: jax.Array,
    tol: jax.Array,
    *,
    num_classes: int,
) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """L-BFGS from zero until the gradient norm is below ``tol`` or ``max_steps`` is reached.

    ``l2``, ``max_steps`` and ``tol`` are traced so changing them does not recompile. Returns the
    parameters, the number of steps taken and the final gradient norm.
    """
    fun = functools.partial(_objective, x=x, y=y, l2=l2)
    params = {
        "w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
        # A non-finite value means the line search broke down in float32: stop rather than spin.
        finite = jnp.isfinite(otu.tree_get(state, "value"))
        return (count == 0) | ((count < max_steps) & (grad_norm >= tol) & finite)

    params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
    return params, otu.tree_get(state, "count"), otu.tree_norm(otu.tree_get(state, "grad"))


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    num_classes: int,
    *,
    l2: float = 1e-4,
    steps: int = 500,
    tol: float = 1e-6,
) -> LinearProbe:
    """Fit a softmax classifier on standardized ``train_x`` (N, D) with labels ``train_y`` (N,).

    ``l2`` weights ``0.5 * ||w||^2`` against the *mean* cross-entropy, so its strength does not
    change with N. ``steps`` caps the L-BFGS iterations; ``tol`` stops earlier once the gradient
    norm is that small (float32 rarely gets much below 1e-6).
    """
    x = _as_features(train_x, "train_x").astype(np.float64)
    y = np.asarray(train_y)
    if y.shape != (x.shape[0],):
        raise ValueError(f"train_y must have shape ({x.shape[0]},), got {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a linear probe on an empty train split")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"train_y must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(x)):
        raise ValueError("train_x contains NaN or inf")

    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std < _MIN_STD, 1.0, std)
    z = ((x - mean) / std).astype(np.float32)

    params, _, _ = _fit(
        jnp.asarray(z),
        jnp.asarray(y, jnp.int32),
        jnp.float32(l2),
        jnp.int32(steps),
        jnp.float32(tol),
        num_classes=num_classes,
    )
    params = jax.device_get(params)
    return LinearProbe(
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        w=np.asarray(params["w"], np.float32),
        b=np.asarray(params["b"], np.float32),
    )


def evaluate_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    **kw,
) -> dict[str, float]:
    """Fit a probe on the train split and report `classification_metrics` on the test split.

    ``kw`` goes to `fit_linear_probe` (``l2``, ``steps``, ``tol``). Adds ``num_train`` and
    ``num_test`` so that logged numbers say how much data they came from.
    """
    probe = fit_linear_probe(train_x, train_y, num_classes, **kw)
    metrics = classification_metrics(test_y, probe.predict_proba(test_x))
    metrics["num_train"] = len(train_y)
    metrics["num_test"] = len(test_y)
    return metrics

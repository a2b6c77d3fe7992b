"""Training loops on a wall-clock or accuracy budget, for examples and benchmarks.

Every method is a jitted ``step(model, state, x, y) -> (model, state, loss)``; the loop
times only the steps (evaluation is excluded) and never times compilation: each step
function is compiled on warm-up batches first, with a throw-away state.

``"kfac"`` is kfac-jax's K-FAC through `modopt.nn.kfac` (kfac-jax is in the ``tests`` extra); its
options go in ``MethodConfig.extra`` (see `modopt.nn.kfac.kfac_optimizer`), and
``learning_rate=None`` / ``momentum=None`` select kfac-jax's adaptive values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .. import metrics
from .._module import mlp
from ..flow import flow
from ..losses import softmax_cross_entropy
from ..steps import AdaptiveMass, RiemannianSteps

METHODS = ("riemannian_steps", "riemannian_flow", "sgd", "adam", "kfac")


@dataclass
class MethodConfig:
    """Hyperparameters of one method (defaults tuned on digits)."""

    name: str
    learning_rate: float | None = 1.0
    mass: float = 1.0
    metric: str = "gauss_newton"
    adaptive_mass: bool = True
    flow_s1: float = 1.0
    flow_rtol: float = 1e-2
    flow_solver: str = "bosh3"
    momentum: float | None = 0.9
    extra: dict = field(default_factory=dict)


def _metric(name):
    if name == "gauss_newton":
        return metrics.GaussNewton()
    if name == "identity":
        return metrics.Identity()
    raise ValueError(f"unknown metric {name!r}; use 'gauss_newton' or 'identity'.")


def _ode_solver(name):
    solvers = {"heun": diffrax.Heun, "bosh3": diffrax.Bosh3, "tsit5": diffrax.Tsit5}
    if name not in solvers:
        raise ValueError(f"unknown flow_solver {name!r}; choose from {sorted(solvers)}.")
    return solvers[name]()


def make_step(cfg: MethodConfig, example=None, seed: int = 0):
    """``(init(model) -> state, step(model, state, x, y) -> (model, state, loss))``.

    `example`, a batch ``(x, y)`` of the training batch size, and `seed` are used by
    ``"kfac"`` only (kfac-jax traces its step with the example batch).
    """
    loss_fn = softmax_cross_entropy
    if cfg.name == "kfac":
        if example is None:
            raise ValueError("make_step('kfac') needs example=(x, y), a training batch.")
        from .kfac import make_kfac_step

        return make_kfac_step(example, seed=seed, loss_fn=loss_fn,
                              learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                              **cfg.extra)
    if cfg.name in ("sgd", "adam"):
        opt = (
            optax.sgd(cfg.learning_rate, momentum=cfg.momentum)
            if cfg.name == "sgd"
            else optax.adam(cfg.learning_rate)
        )

        def init(model):
            return opt.init(eqx.filter(model, eqx.is_inexact_array))

        @eqx.filter_jit
        def step(model, state, x, y):
            def loss_of(m):
                return loss_fn(jax.vmap(m)(x), y)

            loss, grads = eqx.filter_value_and_grad(loss_of)(model)
            updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
            return eqx.apply_updates(model, updates), state, loss

        return init, step
    if cfg.name == "riemannian_steps":
        opt = RiemannianSteps(
            cfg.learning_rate, output_metric=_metric(cfg.metric), mass=cfg.mass,
            adaptive_mass=AdaptiveMass() if cfg.adaptive_mass else None,
        )

        @eqx.filter_jit
        def step(model, state, x, y):
            updates, state = opt.update(model, state, loss_fn, x, y)
            return eqx.apply_updates(model, updates), state, state.value

        return opt.init, step
    if cfg.name == "riemannian_flow":

        def init(model):
            return None

        @eqx.filter_jit
        def step(model, state, x, y):
            sol = flow(
                model, loss_fn, x, y, output_metric=_metric(cfg.metric), mass=cfg.mass,
                s1=cfg.flow_s1, max_steps=64, ts=jnp.zeros(1),
                ode_solver=_ode_solver(cfg.flow_solver),
                stepsize_controller=diffrax.PIDController(rtol=cfg.flow_rtol, atol=1e-4),
            )
            return sol.model, state, sol.value

        return init, step
    raise ValueError(f"unknown method {cfg.name!r}; choose from {METHODS}.")


@eqx.filter_jit
def _accuracy(model, x, y):
    logits = jax.vmap(model)(x)
    return jnp.mean(jnp.argmax(logits, -1) == y)


def accuracy(model, x, y) -> float:
    """Fraction of `x` whose largest logit is the label `y` (jitted; not timed)."""
    return float(_accuracy(model, x, y))


def time_to_targets(hist: dict, targets: Sequence[float]) -> dict:
    """First evaluation at which the test accuracy reached each target.

    **Arguments:** `hist` with equal-length lists ``time_s``, ``step`` and
    ``test_accuracy``; `targets`, accuracies in [0, 1].

    **Returns:** ``{str(target): {"time_s": ..., "step": ...} or None}`` (``None``: never
    reached). Times and steps are those of the evaluation, so their resolution is the
    evaluation interval.
    """
    out = {}
    for target in targets:
        hit = next((i for i, a in enumerate(hist["test_accuracy"]) if a >= target), None)
        out[str(target)] = (None if hit is None else
                            {"time_s": hist["time_s"][hit], "step": hist["step"][hit]})
    return out


def train(
    cfg: MethodConfig,
    data,
    *,
    seed: int = 0,
    sizes=(64, 128, 128, 10),
    batch_size: int = 64,
    budget_s: float = 20.0,
    max_steps: int = 100_000,
    target_accuracy: float | None = None,
    targets: Sequence[float] = (),
    eval_every: int = 25,
    progress=None,
    model=None,
) -> dict:
    """Train one method until `budget_s` seconds of stepping, `max_steps`, or
    `target_accuracy` on the test set.

    `targets` are test accuracies whose first time and step are recorded (training does
    not stop there). `model` replaces the default ``mlp(sizes)`` (e.g. a
    `modopt.nn.layers.normalisation_free_mlp`).

    **Returns:** a history dict with lists ``time_s``, ``step``, ``loss``,
    ``test_accuracy`` (at step 0 and every `eval_every` steps; times are seconds of
    stepping, compilation and evaluation excluded) and the keys ``compile_s``,
    ``reached`` (time and step at which `target_accuracy` was first reached, or
    ``None``), ``targets`` (`time_to_targets` of `targets`), ``nonfinite_loss`` (the
    first evaluated step whose minibatch loss was not finite, or ``None``).
    """
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in data)
    key = jr.PRNGKey(seed)
    if model is None:
        model = mlp(list(sizes), key=key, dtype=x_tr.dtype)
    init, step = make_step(cfg, example=(x_tr[:batch_size], y_tr[:batch_size]), seed=seed)
    state = init(model)
    rng = np.random.default_rng(seed)
    n = x_tr.shape[0]

    # Warm-up on a throw-away state (kfac-jax donates its state to its step): compiles
    # every variant of the step (`warmup_steps`, 1 unless the step says otherwise).
    warm_model, warm_state = model, init(model)
    t0 = time.perf_counter()
    for _ in range(getattr(step, "warmup_steps", 1)):
        warm_model, warm_state, warm = step(warm_model, warm_state, x_tr[:batch_size],
                                            y_tr[:batch_size])
        jax.block_until_ready(warm)
    compile_s = time.perf_counter() - t0
    del warm_model, warm_state

    hist = {"time_s": [0.0], "step": [0], "loss": [float("nan")],
            "test_accuracy": [accuracy(model, x_te, y_te)], "compile_s": compile_s,
            "reached": None, "targets": None, "nonfinite_loss": None, "method": cfg.name,
            "seed": seed}
    elapsed, k = 0.0, 0
    order = rng.permutation(n)
    pos = 0
    while elapsed < budget_s and k < max_steps:
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        # The minibatch is gathered before the clock starts: only the step is timed.
        xb, yb = jax.block_until_ready((x_tr[idx], y_tr[idx]))
        t = time.perf_counter()
        model, state, loss = step(model, state, xb, yb)
        jax.block_until_ready(loss)
        elapsed += time.perf_counter() - t
        k += 1
        if k % eval_every == 0 or elapsed >= budget_s or k >= max_steps:
            acc = accuracy(model, x_te, y_te)
            hist["time_s"].append(elapsed)
            hist["step"].append(k)
            hist["loss"].append(float(loss))
            if hist["nonfinite_loss"] is None and not math.isfinite(float(loss)):
                hist["nonfinite_loss"] = k
            hist["test_accuracy"].append(acc)
            if progress is not None:
                progress(cfg.name, elapsed, budget_s, acc)
            if target_accuracy is not None and acc >= target_accuracy:
                hist["reached"] = {"time_s": elapsed, "step": k}
                break
    hist["targets"] = time_to_targets(hist, targets)
    return hist

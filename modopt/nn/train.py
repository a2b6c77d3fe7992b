"""Training loops on a wall-clock or accuracy budget, for examples and benchmarks.

Every method is a jitted ``step(model, state, x, y) -> (model, state, loss)``; the loop
times only the steps (evaluation is excluded) and never times compilation: each step
function is compiled on a warm-up batch first.
"""

from __future__ import annotations

import time
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

METHODS = ("riemannian_steps", "riemannian_flow", "sgd", "adam")


@dataclass
class MethodConfig:
    """Hyperparameters of one method (defaults tuned on digits)."""

    name: str
    learning_rate: float = 1.0
    mass: float = 1.0
    metric: str = "gauss_newton"
    adaptive_mass: bool = True
    flow_s1: float = 1.0
    flow_rtol: float = 1e-2
    flow_solver: str = "bosh3"
    momentum: float = 0.9
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


def make_step(cfg: MethodConfig):
    """``(init(model) -> state, step(model, state, x, y) -> (model, state, loss))``."""
    loss_fn = softmax_cross_entropy
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
                s1=cfg.flow_s1, max_steps=64, ts=jnp.zeros(1), ode_solver=_ode_solver(cfg.flow_solver),
                stepsize_controller=diffrax.PIDController(rtol=cfg.flow_rtol, atol=1e-4),
            )
            return sol.model, state, sol.value

        return init, step
    raise ValueError(f"unknown method {cfg.name!r}; choose from {METHODS}.")


def accuracy(model, x, y) -> float:
    logits = jax.vmap(model)(x)
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


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
    eval_every: int = 25,
    progress=None,
) -> dict:
    """Train one method until `budget_s` seconds of stepping, `max_steps`, or
    `target_accuracy` on the test set.

    **Returns:** a history dict with lists ``time_s``, ``step``, ``loss``,
    ``test_accuracy`` and the keys ``compile_s``, ``reached`` (time and step at which
    `target_accuracy` was first reached, or ``None``).
    """
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in data)
    key = jr.PRNGKey(seed)
    model = mlp(list(sizes), key=key, dtype=x_tr.dtype)
    init, step = make_step(cfg)
    state = init(model)
    rng = np.random.default_rng(seed)
    n = x_tr.shape[0]

    t0 = time.perf_counter()
    warm = step(model, state, x_tr[:batch_size], y_tr[:batch_size])
    jax.block_until_ready(warm)
    compile_s = time.perf_counter() - t0

    hist = {"time_s": [0.0], "step": [0], "loss": [float("nan")],
            "test_accuracy": [accuracy(model, x_te, y_te)], "compile_s": compile_s,
            "reached": None, "method": cfg.name, "seed": seed}
    elapsed, k = 0.0, 0
    order = rng.permutation(n)
    pos = 0
    while elapsed < budget_s and k < max_steps:
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        t = time.perf_counter()
        model, state, loss = step(model, state, x_tr[idx], y_tr[idx])
        jax.block_until_ready(loss)
        elapsed += time.perf_counter() - t
        k += 1
        if k % eval_every == 0 or elapsed >= budget_s:
            acc = accuracy(model, x_te, y_te)
            hist["time_s"].append(elapsed)
            hist["step"].append(k)
            hist["loss"].append(float(loss))
            hist["test_accuracy"].append(acc)
            if progress is not None:
                progress(cfg.name, elapsed, budget_s, acc)
            if target_accuracy is not None and acc >= target_accuracy:
                hist["reached"] = {"time_s": elapsed, "step": k}
                break
    return hist

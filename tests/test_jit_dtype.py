"""Works inside the user's jit and vmap; no recompilation; dtypes are kept."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt


def _problem(dtype, seed=0, batch=6):
    model = modopt.mlp([4, 7, 3], key=jr.PRNGKey(seed), dtype=dtype)
    x = jr.normal(jr.PRNGKey(seed + 1), (batch, 4), dtype)
    y = jr.normal(jr.PRNGKey(seed + 2), (batch, 3), dtype)
    return model, x, y


OPT = modopt.RiemannianSteps(
    0.5, output_metric=modopt.metrics.Identity(), mass=0.1, adaptive_mass=modopt.AdaptiveMass()
)


@eqx.filter_jit
def _step(model, state, x, y):
    updates, state = OPT.update(model, state, modopt.losses.squared_error, x, y)
    return eqx.apply_updates(model, updates), state


class _CompileLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "Finished XLA compilation" in message or "Compiling" in message:
            self.messages.append(message)


def test_jitted_step_does_not_recompile_on_new_values():
    traces = []

    @eqx.filter_jit
    def step(model, state, x, y):
        traces.append(1)
        updates, state = OPT.update(model, state, modopt.losses.squared_error, x, y)
        return eqx.apply_updates(model, updates), state

    model, x, y = _problem(jnp.float64)
    state = OPT.init(model)
    model, state = step(model, state, x, y)
    handler = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    try:
        model, state = step(model, state, x + 1.0, y * 2.0)  # new values, same shapes
        model, state = step(model, state, x - 3.0, y)
        jax.block_until_ready(state)
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)
    assert len(traces) == 1
    assert [m for m in handler.messages if "step" in m] == []


@pytest.mark.parametrize(
    "jacobian", [modopt.Forward(), modopt.Reverse(), modopt.Reverse(structured=False),
                 modopt.Forward(chunk_size=5), modopt.AutoJacobian()],
)
def test_every_jacobian_strategy_under_jit(jacobian):
    model, x, y = _problem(jnp.float64)
    kw = dict(output_metric=modopt.metrics.Identity(), mass=0.3, jacobian=jacobian)
    jitted = eqx.filter_jit(
        lambda m, x, y: modopt.riemannian_gradient(m, modopt.losses.squared_error, x, y, **kw)
    )
    _, got = jitted(model, x, y)
    _, want = modopt.riemannian_gradient(
        model, modopt.losses.squared_error, x, y, output_metric=modopt.metrics.Identity(),
        mass=0.3, jacobian=modopt.Reverse(structured=False),
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_no_recompile_counted_by_trace():
    traces = []

    @eqx.filter_jit
    def grad(model, x, y):
        traces.append(1)
        return modopt.riemannian_gradient(
            model, modopt.losses.squared_error, x, y,
            output_metric=modopt.metrics.Identity(), mass=0.3,
        )

    model, x, y = _problem(jnp.float64)
    grad(model, x, y)
    shifted = jax.tree.map(lambda a: a + 1.0, eqx.filter(model, eqx.is_inexact_array))
    grad(eqx.apply_updates(model, shifted), 2 * x, y + 1)
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(dtype):
    model, x, y = _problem(dtype)
    value, direction = modopt.riemannian_gradient(
        model, modopt.losses.squared_error, x, y,
        output_metric=modopt.metrics.GaussNewton(), mass=0.1,
    )
    assert value.dtype == dtype
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(direction))
    state = OPT.init(model)
    new_model, state = _step(model, state, x, y)
    leaves = jax.tree.leaves(eqx.filter(new_model, eqx.is_inexact_array))
    assert all(leaf.dtype == dtype for leaf in leaves)
    assert state.mass_scale.dtype == dtype and state.value.dtype == dtype


def test_float32_agrees_with_float64():
    m64, x64, y64 = _problem(jnp.float64)
    m32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, m64)
    kw = dict(output_metric=modopt.metrics.Identity(), mass=1.0)
    _, d64 = modopt.riemannian_gradient(m64, modopt.losses.squared_error, x64, y64, **kw)
    _, d32 = modopt.riemannian_gradient(
        m32, modopt.losses.squared_error, x64.astype(jnp.float32), y64.astype(jnp.float32), **kw
    )
    for a, b in zip(jax.tree.leaves(d32), jax.tree.leaves(d64)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_inside_user_jit_and_vmap():
    # vmap over independent problems (e.g. multi-start) of the whole step, inside jit.
    models = [_problem(jnp.float64, seed=s)[0] for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a) if eqx.is_array(a[0]) else a[0], *models)
    params, static = eqx.partition(stacked, eqx.is_inexact_array)
    _, x, y = _problem(jnp.float64)

    @jax.jit
    def batched(params):
        def one(p):
            model = eqx.combine(p, static)
            return modopt.riemannian_gradient(
                model, modopt.losses.squared_error, x, y,
                output_metric=modopt.metrics.Identity(), mass=0.2,
            )[1]

        return jax.vmap(one)(params)

    out = batched(params)
    for i, model in enumerate(models):
        _, want = modopt.riemannian_gradient(
            model, modopt.losses.squared_error, x, y,
            output_metric=modopt.metrics.Identity(), mass=0.2,
        )
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
            np.testing.assert_allclose(a[i], b, rtol=1e-12, atol=1e-14)


def test_steps_reject_nonfinite_and_keep_parameters():
    model, x, y = _problem(jnp.float64)
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1)

    def nan_loss(p, t):
        return jnp.sum(p) * jnp.nan

    updates, state = opt.update(model, opt.init(model), nan_loss, x, y)
    assert state.result == modopt.RESULTS.nonfinite_step
    assert not bool(state.accepted)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))


def test_adaptive_mass_rejects_a_rising_step_then_recovers():
    model, x, y = _problem(jnp.float64)
    # A huge learning rate overshoots: the step is rejected and the mass raised.
    opt = modopt.RiemannianSteps(
        50.0, output_metric=modopt.metrics.Identity(), mass=1e-3,
        adaptive_mass=modopt.AdaptiveMass(),
    )
    state = opt.init(model)
    losses = []
    for _ in range(30):
        updates, state = opt.update(model, state, modopt.losses.squared_error, x, y)
        model = eqx.apply_updates(model, updates)
        losses.append(float(state.value))
    assert float(state.mass_scale) > 1.0  # raised after rejections
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))  # never rises
    assert losses[-1] < 0.5 * losses[0]


def test_discrete_steps_match_levenberg_marquardt_closed_form():
    # One block, linear model: the step is exactly the LM step (A^T A + mu I)^-1 A^T r.
    a = jr.normal(jr.PRNGKey(0), (12, 4))
    b = jr.normal(jr.PRNGKey(1), (12, 1))
    model = modopt.Linear(4, 1, key=jr.PRNGKey(2), use_bias=False)
    mu = 0.7
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=mu)
    updates, _ = opt.update(model, opt.init(model), modopt.losses.squared_error, a, b)
    w = np.asarray(model.weight[0])
    A = np.asarray(a)
    r = A @ w - np.asarray(b)[:, 0]
    want = -np.linalg.solve(A.T @ A + mu * np.eye(4), A.T @ r)
    np.testing.assert_allclose(updates.weight[0], want, rtol=1e-12)


def test_adaptive_mass_scales_module_declared_masses_too():
    # A module's own mass overrides the global one; the adaptive scale must still apply.
    key = jr.PRNGKey(0)
    model = modopt.Sequential([modopt.Linear(3, 4, key=key, mass=2.0), modopt.Pointwise(jnp.tanh),
                               modopt.Linear(4, 2, key=jr.PRNGKey(1))])
    x = jr.normal(jr.PRNGKey(2), (5, 3))
    y = jr.normal(jr.PRNGKey(3), (5, 2))
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.5,
                                 adaptive_mass=modopt.AdaptiveMass())
    state = eqx.tree_at(lambda s: s.mass_scale, opt.init(model), jnp.asarray(8.0))
    d = modopt.riemannian_direction(
        model, modopt.losses.squared_error, x, y, output_metric=modopt.metrics.Identity(),
        mass=0.5, mass_scale=state.mass_scale,
    )
    per_array = jax.tree.map(lambda _: 4.0, eqx.filter(model, eqx.is_inexact_array))
    per_array = eqx.tree_at(lambda m: (m.modules[0].weight, m.modules[0].bias), per_array,
                            (16.0, 16.0))
    _, want = modopt.riemannian_gradient(
        model, modopt.losses.squared_error, x, y, output_metric=modopt.metrics.Identity(),
        mass=per_array,
    )
    for a, b in zip(jax.tree.leaves(d.direction), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_norm_shortens_long_steps_along_the_same_direction(dtype):
    # Reference: the closed-form LM step of a linear model, scaled to the cap by hand.
    a = jr.normal(jr.PRNGKey(0), (12, 4), dtype)
    b = 10 * jr.normal(jr.PRNGKey(1), (12, 1), dtype)
    model = modopt.Linear(4, 1, key=jr.PRNGKey(2), use_bias=False, dtype=dtype)
    A, w = np.asarray(a, float), np.asarray(model.weight[0], float)
    full = -np.linalg.solve(A.T @ A + 0.1 * np.eye(4), A.T @ (A @ w - np.asarray(b, float)[:, 0]))
    cap = 0.25 * np.linalg.norm(full)
    adaptive = modopt.AdaptiveMass()
    opt = modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1,
                                 adaptive_mass=adaptive, max_norm=float(cap))
    updates, state = opt.update(model, opt.init(model), modopt.losses.squared_error, a, b)
    assert updates.weight.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(updates.weight[0], full * cap / np.linalg.norm(full), rtol=tol)
    assert bool(state.accepted) and float(state.mass_scale) == 1.0  # the cap set the step
    short = eqx.tree_at(lambda o: o.max_norm, opt, float(10 * cap))
    updates, state = short.update(model, short.init(model), modopt.losses.squared_error, a, b)
    np.testing.assert_allclose(updates.weight[0], full, rtol=tol)  # under the cap: untouched
    assert float(state.mass_scale) == adaptive.decrease
    with pytest.raises(ValueError, match="max_norm must be positive"):
        modopt.RiemannianSteps(1.0, output_metric=modopt.metrics.Identity(), mass=0.1,
                               max_norm=0.0)

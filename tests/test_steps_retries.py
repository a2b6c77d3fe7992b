"""`AdaptiveMass(retries=...)`: a rejected step retried inside one update, from the same
Jacobian, is the step that plain updates reach after the same rejections."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt


def _problem():
    model = modopt.mlp([2, 16, 1], key=jr.PRNGKey(0), activation=jnp.tanh,
                       dtype=jnp.float64)
    inputs = jr.normal(jr.PRNGKey(1), (40, 2), jnp.float64)
    targets = jnp.sin(3 * inputs[:, :1]) * jnp.cos(2 * inputs[:, 1:])
    return model, inputs, targets


def _optimizer(retries, max_norm=None):
    return modopt.RiemannianSteps(
        1.0, output_metric=modopt.metrics.Identity(), mass=1e-2, max_norm=max_norm,
        adaptive_mass=modopt.AdaptiveMass(min_scale=1e-8, retries=retries))


@pytest.mark.parametrize("max_norm", [None, 2.0])
def test_retries_give_the_step_after_the_same_rejections(max_norm):
    model, inputs, targets = _problem()
    loss = modopt.losses.squared_error
    plain, retrying = _optimizer(0, max_norm), _optimizer(6, max_norm)
    update = eqx.filter_jit(lambda opt, m, s: opt.update(m, s, loss, inputs, targets))
    # The reference: plain updates (each a new pass through the model) until one is
    # accepted; the tiny mass makes the first Gauss-Newton steps overshoot.
    state, rejected = plain.init(model), 0
    for _ in range(7):
        want, state = update(plain, model, state)
        if bool(state.accepted):
            break
        rejected += 1
    assert bool(state.accepted) and rejected >= 2  # the test needs rejections to retry
    got, got_state = update(retrying, model, retrying.init(model))
    assert bool(got_state.accepted)
    np.testing.assert_allclose(float(got_state.mass_scale), float(state.mass_scale), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(got_state.riemannian_norm2),
                               float(state.riemannian_norm2), rtol=1e-9)


def test_retries_that_all_fail_reject_the_update_and_raise_the_mass():
    model, inputs, targets = _problem()
    loss = modopt.losses.squared_error
    opt = _optimizer(1)
    updates, state = eqx.filter_jit(opt.update)(model, opt.init(model), loss, inputs, targets)
    # From the first, overshooting step: both tries rejected (see the test above).
    assert not bool(state.accepted)
    assert all(float(jnp.max(jnp.abs(u))) == 0 for u in jax.tree.leaves(updates))
    np.testing.assert_allclose(float(state.mass_scale), 16.0)


@pytest.mark.parametrize("retries", [-1, 1.5])
def test_bad_retries_are_a_clear_error(retries):
    with pytest.raises(ValueError, match="retries"):
        modopt.AdaptiveMass(retries=retries)

"""Inputs that cannot work must fail loudly, with a useful message, never silently."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import modopt
from modopt import Linear, Parallel, Pointwise, Sequential, metrics
from modopt.losses import squared_error

K = list(jr.split(jr.PRNGKey(0), 4))


def _small():
    model = Sequential([Linear(3, 4, key=K[0]), Pointwise(jnp.tanh), Linear(4, 2, key=K[1])])
    rng = np.random.default_rng(0)
    return model, jnp.asarray(rng.standard_normal((5, 3))), jnp.asarray(rng.standard_normal((5, 2)))


def test_sequential_shape_mismatch_names_modules_and_shapes():
    with pytest.raises(ValueError) as info:
        Sequential([Linear(3, 4, key=K[0]), Linear(5, 2, key=K[1])])
    msg = str(info.value)
    assert msg.count("Linear") >= 2 and "(4,)" in msg and "(5,)" in msg


def test_matmul_shape_mismatch_names_modules_and_shapes():
    m0, m1 = Linear(3, 4, key=K[0]), Linear(5, 2, key=K[1])
    with pytest.raises(ValueError) as info:
        m1 @ m0
    msg = str(info.value)
    assert msg.count("Linear") >= 2 and "(4,)" in msg and "(5,)" in msg


def test_parallel_wrong_in_sizes():
    with pytest.raises(ValueError, match=r"in_sizes\[1\] = 5"):
        Parallel([Linear(3, 2, key=K[0]), Linear(4, 2, key=K[1])], in_sizes=[3, 5])
    with pytest.raises(ValueError, match="in_sizes"):
        Parallel([Linear(3, 2, key=K[0]), Linear(4, 2, key=K[1])], in_sizes=[3])


def test_dense_non_psd_matrix():
    with pytest.raises(ValueError, match="positive semidefinite"):
        metrics.Dense(np.diag([1.0, 2.0, -0.5]))


def test_diagonal_negative_weight():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.Diagonal(jnp.array([1.0, -1e-3, 2.0]))


def test_dense_function_indefinite_raises_inside_jit():
    model, x, y = _small()
    bad = np.eye(10)
    bad[3, 3] = -1.0

    @eqx.filter_jit
    def run(model):
        return modopt.riemannian_gradient(
            model, squared_error, x, y, output_metric=metrics.Dense(lambda p: jnp.asarray(bad)),
            mass=1.0, jacobian=modopt.Reverse(),
        )

    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)) as info:
        out = run(model)
        jax.block_until_ready(out)
        # reaching here means no error: make the failure say whether NaNs came back
        finite = [bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(out)]
        pytest.fail(f"no error raised; finite={finite}")
    assert "positive semidefinite" in str(info.value)


def test_dense_function_psd_inside_jit_is_fine():
    """Control for the test above: a PSD function goes through jit."""
    model, x, y = _small()
    good = np.eye(10) * 2.0

    @eqx.filter_jit
    def run(model):
        return modopt.riemannian_gradient(
            model, squared_error, x, y, output_metric=metrics.Dense(lambda p: jnp.asarray(good)),
            mass=1.0, jacobian=modopt.Reverse(),
        )

    value, u = run(model)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(u))


@pytest.mark.parametrize("mass", [0.0, -1.0, 0])
def test_non_positive_float_mass(mass):
    model, x, y = _small()
    with pytest.raises(ValueError, match="mass"):
        modopt.riemannian_gradient(model, squared_error, x, y,
                                   output_metric=metrics.Identity(), mass=mass)


@pytest.mark.parametrize("kind", ["jax_scalar", "numpy_float32"])
def test_non_positive_array_scalar_mass(kind):
    model, x, y = _small()
    mass = jnp.asarray(-1.0) if kind == "jax_scalar" else np.float32(-1.0)
    with pytest.raises(ValueError, match="mass"):
        modopt.riemannian_gradient(model, squared_error, x, y,
                                   output_metric=metrics.Identity(), mass=mass)


def test_non_positive_pytree_mass():
    model, x, y = _small()
    mass = jax.tree.map(lambda a: 1.0, eqx.filter(model, eqx.is_inexact_array))
    mass = eqx.tree_at(lambda t: t.modules[2].bias, mass, -1.0)
    with pytest.raises(ValueError, match="mass"):
        modopt.riemannian_gradient(model, squared_error, x, y,
                                   output_metric=metrics.Identity(), mass=mass)


def test_module_mass_must_be_positive():
    with pytest.raises(ValueError, match="mass"):
        Linear(2, 2, key=K[0], mass=0.0)


def test_non_scalar_loss():
    model, x, y = _small()
    with pytest.raises(ValueError, match="scalar"):
        modopt.riemannian_gradient(
            model, lambda p, t: (p - t) ** 2, x, y, output_metric=metrics.Identity(), mass=1.0
        )


def test_wrong_metric_type():
    model, x, y = _small()
    with pytest.raises(TypeError, match="output_metric"):
        modopt.riemannian_gradient(model, squared_error, x, y, output_metric=np.eye(10), mass=1.0)


def test_blocks_of_wrong_structure():
    model, x, y = _small()
    with pytest.raises(ValueError, match="blocks"):
        modopt.riemannian_gradient(
            model, squared_error, x, y, output_metric=metrics.Identity(), mass=1.0, blocks=[0, 1]
        )

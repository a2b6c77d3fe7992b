"""Steady-state modules against closed forms: values and implicit-function-theorem
derivatives (forward and reverse) against the closed-form derivatives and central finite
differences, forward/reverse consistency, the settling fallback from a guess where Newton
alone fails, and a system with no root (result code, NaN, throw)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modopt
from modopt.systems.steady import SteadyState

NAMES = ("k", "p", "q")
THETA0 = np.array([0.7, 1.3, 2.0])  # k, p, q


def _cardano(p, q):
    """The real root of ``x^3 + p x + q = 0`` when ``(q/2)^2 + (p/3)^3 > 0``."""
    root = np.sqrt((q / 2) ** 2 + (p / 3) ** 3)
    return np.cbrt(-q / 2 + root) + np.cbrt(-q / 2 - root)


def _cubic_residual(x, u, params):
    # x0^3 + p x0 - q u = 0 (one real root for p > 0), and x1 = k x0^2.
    return jnp.stack([
        x[0] ** 3 + params["p"] * x[0] - params["q"] * u,
        x[1] - params["k"] * x[0] ** 2,
    ])


def _closed_form(theta, u):
    """The steady state and its Jacobian in ``(k, p, q)``, by hand."""
    k, p, q = theta
    x0 = _cardano(p, -q * u)
    slope = 3 * x0**2 + p  # dF0/dx0
    dx0 = np.array([0.0, -x0 / slope, u / slope])  # d x0 / d(k, p, q)
    dx1 = 2 * k * x0 * dx0 + np.array([x0**2, 0.0, 0.0])
    return np.array([x0, k * x0**2]), np.stack([dx0, dx1])


def _module(**options):
    params = {n: jnp.array(v) for n, v in zip(NAMES, THETA0)}
    return SteadyState(_cubic_residual, params, np.array([1.0, 1.0]), **options)


def _flat(module, u):
    def f(theta):
        return eqx.tree_at(lambda m: m.params, module, dict(zip(NAMES, theta)))(u)

    return f


def _central_differences(f, theta, h=1e-6):
    columns = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        columns.append((np.asarray(f(theta + e)) - np.asarray(f(theta - e))) / (2 * h))
    return np.stack(columns, axis=-1)


@pytest.mark.parametrize("u", [0.5, 3.0])
def test_values_and_derivatives_match_closed_form_and_differences(u):
    f = _flat(_module(), jnp.array(u))
    theta = jnp.asarray(THETA0)
    expected, expected_jac = _closed_form(THETA0, u)
    np.testing.assert_allclose(jax.jit(f)(theta), expected, rtol=1e-12)
    forward = np.asarray(jax.jit(jax.jacfwd(f))(theta))
    reverse = np.asarray(jax.jit(jax.jacrev(f))(theta))
    differences = _central_differences(jax.jit(f), THETA0)
    scale = np.max(np.abs(expected_jac))
    for computed in (forward, reverse):
        assert np.max(np.abs(computed - expected_jac)) <= 1e-10 * scale
        assert np.max(np.abs(computed - differences)) <= 1e-6 * scale


def test_jvp_and_vjp_are_consistent_and_vmap_works():
    module = _module()
    inputs = jnp.array([0.5, 1.0, 3.0])

    def f(params):
        return jax.vmap(eqx.tree_at(lambda m: m.params, module, params))(inputs)

    params = module.params
    rng = np.random.default_rng(0)
    tangent = {n: jnp.asarray(rng.standard_normal()) for n in NAMES}
    cotangent = jnp.asarray(rng.standard_normal((3, 2)))
    values, jvp_out = jax.jit(lambda t: jax.jvp(f, (params,), (t,)))(tangent)
    _, pullback = jax.vjp(f, params)
    (vjp_out,) = pullback(cotangent)
    lhs = float(jnp.sum(cotangent * jvp_out))
    rhs = float(sum(vjp_out[n] * tangent[n] for n in NAMES))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    expected = np.stack([_closed_form(THETA0, u)[0] for u in np.asarray(inputs)])
    np.testing.assert_allclose(values, expected, rtol=1e-12)


# x^3 - 2x + 2 = 0 has one real root, x* = -1.7693; Newton from x = 0 cycles 0 -> 1 -> 0.
# The root is stable for x' = -F (F'(x*) > 0), so the fallback settles with sign -1.
def _cycling_residual(x, u, params):
    return x**3 + params["p"] * x + params["q"]


def _cycling_module(**options):
    params = {"p": jnp.array(-2.0), "q": jnp.array(2.0)}
    return SteadyState(_cycling_residual, params, np.array([0.0]), **options)


def test_newton_alone_fails_from_a_poor_guess():
    solution = eqx.filter_jit(lambda m: m.solve())(_cycling_module(fallback=False))
    assert solution.result == modopt.RESULTS.steady_state_not_found
    assert np.all(np.isnan(solution.outputs))


def test_fallback_settles_then_newton_and_derivatives_come_from_the_root():
    module = _cycling_module(settle_field=-1.0)
    solution = eqx.filter_jit(lambda m: m.solve())(module)
    assert solution.result == modopt.RESULTS.successful
    assert bool(solution.stats["settled"])  # the fallback was needed
    root = _cardano(-2.0, 2.0)
    np.testing.assert_allclose(solution.outputs, [root], rtol=1e-13)

    def f(theta):
        params = {"p": theta[0], "q": theta[1]}
        return eqx.tree_at(lambda m: m.params, module, params)()[0]

    theta = jnp.array([-2.0, 2.0])
    expected = np.array([-root, -1.0]) / (3 * root**2 - 2.0)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(theta), expected, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(theta), expected, rtol=1e-10)
    differences = _central_differences(jax.jit(f), np.array([-2.0, 2.0]))
    np.testing.assert_allclose(differences, expected, rtol=1e-6)


def test_callable_initial_guess_and_observable():
    module = SteadyState(
        _cubic_residual, {n: jnp.array(v) for n, v in zip(NAMES, THETA0)},
        initial_guess=lambda u, p: jnp.stack([u, u]),
        observable=lambda x, u, p: jnp.sum(x),
    )
    expected = _closed_form(THETA0, 2.0)[0].sum()
    np.testing.assert_allclose(module(jnp.array(2.0)), expected, rtol=1e-12)


def test_no_root_gives_result_code_nan_and_throw():
    # x^2 + c = 0 with c > 0 has no real root: Newton fails and settling runs away.
    def residual(x, u, params):
        return x**2 + params["c"]

    module = SteadyState(residual, {"c": jnp.array(1.0)}, np.array([0.5]))
    solution = eqx.filter_jit(lambda m: m.solve())(module)
    assert solution.result == modopt.RESULTS.steady_state_not_found
    assert np.all(np.isnan(solution.outputs)) and np.all(np.isnan(solution.states))
    # Its derivative is that of the NaN poison: no error from the singular derivative solve.
    gradient = jax.jit(jax.grad(
        lambda c: eqx.tree_at(lambda m: m.params["c"], module, c)()[0]
    ))(jnp.array(1.0))
    assert gradient.shape == ()
    throwing = SteadyState(residual, {"c": jnp.array(1.0)}, np.array([0.5]), throw=True)
    with pytest.raises(Exception, match="stable equilibrium"):
        jax.block_until_ready(eqx.filter_jit(lambda m: m())(throwing))


def test_bad_shapes_and_options_are_errors():
    with pytest.raises(ValueError, match="shape of the state"):
        SteadyState(lambda x, u, p: x[:1], {"c": jnp.array(1.0)}, np.zeros(2))
    # A guess that needs the input is checked when the module is called.
    lazy = SteadyState(lambda x, u, p: x[:1], {}, lambda u, p: u * jnp.ones(2))
    with pytest.raises(ValueError, match="shape of the state"):
        lazy(jnp.array(1.0))
    with pytest.raises(TypeError, match="settle_field"):
        SteadyState(_cycling_residual, {}, np.zeros(1), settle_field="minus")
    with pytest.raises(ValueError, match="sensitivity"):
        SteadyState(_cycling_residual, {}, np.zeros(1), sensitivity="sideways")

"""Index-1 DAE modules against CasADi's IDAS on two circuits with algebraic node voltages
(values and parameter sensitivities, forward and reverse), against central finite
differences, and failures: a singular algebraic Jacobian (result code, NaN, throw) and
mismatched shapes (ValueError)."""

import casadi
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modopt
from modopt.systems.dae import IndexOneDAE

TIGHT = dict(rtol=1e-10, atol=1e-12, max_steps=100_000)
IDAS = {"abstol": 1e-12, "reltol": 1e-12}


# ------------------------------------------------------------------ the two circuits
#
# Ladder: a source E = u charges two capacitors through a resistive ladder with two
# internal nodes whose voltages z1, z2 are algebraic (Kirchhoff's current law):
#
#   E -R1- z1 -R2- x1 -R4- z2 -R6- x2,   z1 -R3- ground, z2 -R5- ground,
#   x1 -C1- ground, x2 -C2- ground.

LADDER = dict(R1=1.0, R2=0.5, R3=2.0, R4=0.8, R5=1.5, R6=0.3, C1=0.4, C2=0.9)


def _ladder_equations(x, z, u, p):
    (x1, x2), (z1, z2) = x, z
    i2, i4, i6 = (z1 - x1) / p["R2"], (x1 - z2) / p["R4"], (z2 - x2) / p["R6"]
    ode = [(i2 - i4) / p["C1"], i6 / p["C2"]]
    alg = [(u - z1) / p["R1"] - z1 / p["R3"] - i2, i4 - z2 / p["R5"] - i6]
    return ode, alg


def _ladder_module(times, sensitivity="auto", **options):
    def vector_field(t, x, z, u, p):
        return jnp.stack(_ladder_equations(x, z, u, p)[0])

    def algebraic(t, x, z, u, p):
        return jnp.stack(_ladder_equations(x, z, u, p)[1])

    return IndexOneDAE(
        vector_field, algebraic, {k: jnp.array(v) for k, v in LADDER.items()},
        np.zeros(2), np.zeros(2), times, sensitivity=sensitivity, **options,
    )


# Nonlinear: a sinusoidal source E(t) = u sin(2t) drives, through a resistor R, a node z
# (algebraic) joined to a capacitor x by a saturating (tanh) conductance; the capacitor
# leaks through R_L. KCL at the node: (E - z)/R = g tanh((z - x)/V0).

TANH = dict(R=1.0, g=2.0, V0=0.5, C=0.3, RL=2.0)


def _tanh_equations(t, x, z, u, p, tanh, sin):
    through = p["g"] * tanh((z - x) / p["V0"])
    ode = (through - x / p["RL"]) / p["C"]
    alg = (u * sin(2.0 * t) - z) / p["R"] - through
    return ode, alg


def _tanh_module(times, sensitivity="auto", **options):
    def vector_field(t, x, z, u, p):
        return _tanh_equations(t, x, z, u, p, jnp.tanh, jnp.sin)[0]

    def algebraic(t, x, z, u, p):
        return _tanh_equations(t, x, z, u, p, jnp.tanh, jnp.sin)[1]

    return IndexOneDAE(
        vector_field, algebraic, {k: jnp.array(v) for k, v in TANH.items()},
        np.array([0.1]), np.array([0.0]), times, sensitivity=sensitivity, **options,
    )


def _casadi_ladder(u):
    x, z, p = casadi.SX.sym("x", 2), casadi.SX.sym("z", 2), casadi.SX.sym("p", len(LADDER))
    params = dict(zip(LADDER, [p[i] for i in range(len(LADDER))]))
    ode, alg = _ladder_equations([x[0], x[1]], [z[0], z[1]], u, params)
    return {"x": x, "z": z, "p": p, "ode": casadi.vertcat(*ode), "alg": casadi.vertcat(*alg)}


def _casadi_tanh(u):
    x, z, p, t = (casadi.SX.sym(n, k) for n, k in (("x", 1), ("z", 1), ("p", 5), ("t", 1)))
    params = dict(zip(TANH, [p[i] for i in range(len(TANH))]))
    ode, alg = _tanh_equations(t, x, z, u, params, casadi.tanh, casadi.sin)
    return {"x": x, "z": z, "p": p, "t": t, "ode": ode, "alg": alg}


def _idas_reference(dae, x0, z_guess, theta, times):
    """IDAS values and forward sensitivities of ``[x; z]`` at `times`, flattened
    time-major like the module's ``(T, nx + nz)`` outputs."""
    integrator = casadi.integrator("F", "idas", dae, 0.0, list(times), IDAS)
    p = casadi.MX.sym("p", len(theta))
    result = integrator(x0=x0, z0=z_guess, p=p)
    outputs = casadi.vec(casadi.vertcat(result["xf"], result["zf"]))
    function = casadi.Function("f", [p], [outputs, casadi.jacobian(outputs, p)])
    values, jacobian = function(theta)
    return np.array(values).ravel(), np.array(jacobian)


CASES = {
    "ladder": (_ladder_module, LADDER, _casadi_ladder, np.zeros(2), np.zeros(2), 1.5),
    "tanh": (_tanh_module, TANH, _casadi_tanh, [0.1], [0.0], 1.5),
}


def _flat(build, names, times, u, sensitivity):
    module = build(times, sensitivity, **TIGHT)

    def f(theta):
        y = eqx.tree_at(lambda m: m.params, module, dict(zip(names, theta)))(u).reshape(-1)
        return y, y

    return f


def _relative_error(computed, reference):
    scale = np.max(np.abs(reference), axis=0)  # per parameter (column) or output
    return np.max(np.abs(computed - reference) / scale)


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_sensitivities_match_idas(case):
    build, nominal, casadi_dae, x0, z_guess, u = CASES[case]
    times = np.linspace(0.25, 5.0, 20)
    names = list(nominal)
    theta = np.array([nominal[n] for n in names])
    ref_values, ref_jacobian = _idas_reference(casadi_dae(u), x0, z_guess, theta, times)

    forward, values = jax.jit(jax.jacfwd(_flat(build, names, times, u, "forward"), has_aux=True))(
        jnp.asarray(theta)
    )
    reverse, _ = jax.jit(jax.jacrev(_flat(build, names, times, u, "reverse"), has_aux=True))(
        jnp.asarray(theta)
    )
    assert _relative_error(np.asarray(values), ref_values) <= 1e-6
    assert _relative_error(np.asarray(forward), ref_jacobian) <= 1e-6
    assert _relative_error(np.asarray(reverse), ref_jacobian) <= 1e-6


def test_sensitivities_match_central_differences():
    times = np.linspace(0.5, 4.0, 8)
    names = list(TANH)
    theta = np.array([TANH[n] for n in names])
    f = _flat(_tanh_module, names, times, 1.5, "forward")
    jacobian, _ = jax.jit(jax.jacfwd(f, has_aux=True))(jnp.asarray(theta))
    value = jax.jit(lambda th: f(th)[0])
    h = 1e-5
    columns = []
    for j in range(theta.size):
        step = np.zeros_like(theta)
        step[j] = h * theta[j]
        columns.append((value(theta + step) - value(theta - step)) / (2 * step[j]))
    assert _relative_error(np.asarray(jacobian), np.stack(columns, axis=1)) <= 1e-6


def test_solution_holds_consistent_states_and_vmaps_over_inputs():
    times = np.linspace(0.5, 2.0, 4)
    module = _ladder_module(times, **TIGHT)
    solve = eqx.filter_jit(lambda m, us: jax.vmap(lambda u: m.solve(u))(us))
    solutions = solve(module, jnp.array([1.5, 3.0]))
    assert np.all(solutions.succeeded)
    xs, zs = solutions.states
    assert xs.shape == (2, 4, 2) and zs.shape == (2, 4, 2)
    residual = jax.vmap(lambda x, z: jnp.stack(_ladder_equations(x, z, 1.5, module.params)[1]))
    assert np.max(np.abs(residual(xs[0], zs[0]))) <= 1e-12
    # The ladder is linear with zero initial state: outputs scale with the source.
    np.testing.assert_allclose(solutions.outputs[1], 2 * solutions.outputs[0], rtol=1e-8)


def _singular_module(**options):
    # The algebraic equation does not involve z: dG/dz = 0, so the DAE is not index 1.
    return IndexOneDAE(
        lambda t, x, z, u, p: -p["k"] * x + z,
        lambda t, x, z, u, p: x - p["k"],
        {"k": jnp.array(1.0)}, np.array([1.0]), np.array([0.0]), [0.5, 1.0], **options,
    )


def test_singular_algebraic_jacobian_gives_result_code_nan_and_throw():
    solution = eqx.filter_jit(lambda m: m.solve(None))(_singular_module())
    assert solution.result == modopt.RESULTS.singular_algebraic_jacobian
    assert np.all(np.isnan(solution.outputs))
    assert all(np.all(np.isnan(s)) for s in solution.states)
    # Differentiating a failed solve gives (zero) derivatives of the NaN outputs; it
    # must not raise from a singular linear solve inside the derivative rules.
    forward = _singular_module(sensitivity="forward")
    jacobian = eqx.filter_jit(
        jax.jacfwd(lambda k: eqx.tree_at(lambda m: m.params["k"], forward, k)(None))
    )(jnp.array(1.0))
    assert jacobian.shape == (2, 2)
    with pytest.raises(Exception, match="not of index 1"):
        jax.block_until_ready(eqx.filter_jit(lambda m: m(None))(_singular_module(throw=True)))


def test_algebraic_solve_failing_during_integration_gives_nan():
    # z = sqrt(x) while x = 1 - t: dG/dz = 2z vanishes at t = 1 and there is no real
    # root after it, so the integration cannot reach t = 2.
    module = IndexOneDAE(
        lambda t, x, z, u, p: -p["k"] + 0 * z, lambda t, x, z, u, p: z**2 - x,
        {"k": jnp.array(1.0)}, np.array([1.0]), np.array([1.0]), [0.5, 2.0],
    )
    solution = eqx.filter_jit(lambda m: m.solve(None))(module)
    assert solution.result == modopt.RESULTS.integration_failed
    assert np.all(np.isnan(solution.outputs))


def test_mismatched_shapes_are_value_errors():
    field = lambda t, x, z, u, p: -x  # noqa: E731
    with pytest.raises(ValueError, match="one algebraic equation per algebraic variable"):
        IndexOneDAE(
            field, lambda t, x, z, u, p: jnp.concatenate([z, z]),
            {}, np.zeros(1), np.zeros(2), [1.0],
        )
    with pytest.raises(ValueError, match="shape of x"):
        IndexOneDAE(lambda t, x, z, u, p: z, lambda t, x, z, u, p: z, {}, np.zeros(1),
                    np.zeros(2), [1.0])
    # Initial values that need the input are checked when the module is called.
    lazy = IndexOneDAE(
        field, lambda t, x, z, u, p: jnp.concatenate([z, z]), {},
        lambda u, p: u * jnp.ones(1), np.zeros(2), [1.0],
    )
    with pytest.raises(ValueError, match="shape of z"):
        lazy(jnp.array(1.0))
    with pytest.raises(ValueError, match="before t0"):
        IndexOneDAE(field, lambda t, x, z, u, p: z, {}, np.zeros(1), np.zeros(1), [1.0], t0=2.0)

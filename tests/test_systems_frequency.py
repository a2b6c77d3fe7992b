"""Frequency responses against closed forms: the series RLC transfer function (from the
matrices, from an ODE module and from a Brayton-Moser circuit in descriptor form), a
singular descriptor system against its explicit reduction, derivatives against central
finite differences (also through a Newton operating point), dtypes, and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dense_reference_direction, tree_rel_error

import modopt
from modopt.systems import ODEModule
from modopt.systems.brayton_moser import BraytonMoser
from modopt.systems.frequency import (
    FrequencyResponse,
    LinearSystem,
    frequency_response,
    linearize,
    linearize_module,
    operating_point,
)

R, L, C = 10.0, 10e-3, 2.53303e-6
OMEGAS = np.logspace(1, 7, 241)  # rad/s, through the resonance at 2 pi kHz


def _rlc_closed_form(omegas, r=R, ind=L, cap=C):
    s = 1j * omegas
    return 1.0 / (ind * cap * s**2 + r * cap * s + 1.0)


def _rlc_matrices(r=R, ind=L, cap=C):
    # x = (i, v): L i' = E - R i - v, C v' = i; output the capacitor voltage.
    A = jnp.array([[-r / ind, -1.0 / ind], [1.0 / cap, 0.0]])
    B = jnp.array([1.0 / ind, 0.0])
    Cout = jnp.array([0.0, 1.0])
    return A, B, Cout


def _max_rel(h, ref):
    return float(np.max(np.abs(np.asarray(h) - ref) / np.abs(ref)))


def test_series_rlc_transfer_function_from_matrices():
    A, B, Cout = _rlc_matrices()
    h = frequency_response(A, B, Cout, omegas=OMEGAS)
    assert h.shape == OMEGAS.shape and h.dtype == jnp.complex128
    assert _max_rel(h, _rlc_closed_form(OMEGAS)) <= 1e-10


def _rlc_potential(i, v, u, p):
    return jnp.sum(0.5 * p["R"] * i**2 - u * i + v * i)


def _rlc_circuit(r=R, ind=L, cap=C):
    params = {"R": jnp.array(r), "L": jnp.array(ind), "C": jnp.array(cap)}
    return BraytonMoser(
        _rlc_potential, lambda i, p: p["L"], lambda v, p: p["C"], params,
        (np.zeros(1), np.zeros(1)), [1e-3], observable=lambda t, i, v, u, p: v[0],
    )


def _rlc_ode():
    def field(t, x, u, p):
        i, v = x
        return jnp.stack([(u - p["R"] * i - v) / p["L"], i / p["C"]])

    params = {"R": jnp.array(R), "L": jnp.array(L), "C": jnp.array(C)}
    return ODEModule(field, params, np.array([0.3, -0.2]), [1e-3],
                     observable=lambda t, x, u, p: x[1])


def test_series_rlc_transfer_function_from_modules():
    reference = _rlc_closed_form(OMEGAS)
    # Brayton-Moser: descriptor form E = blockdiag(L, C) at the equilibrium i = 0, v = E.
    circuit = linearize_module(_rlc_circuit(), 2.0)
    np.testing.assert_allclose(circuit.x_op, [0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(circuit.E, np.diag([L, C]), rtol=1e-15)
    np.testing.assert_allclose(circuit.A, [[-R, -1.0], [1.0, 0.0]], rtol=1e-15)
    assert _max_rel(circuit.frequency_response(OMEGAS), reference) <= 1e-10
    # ODE module: explicit form, the equilibrium found by Newton from the initial state.
    ode = linearize_module(_rlc_ode(), 2.0)
    assert ode.E is None
    np.testing.assert_allclose(ode.x_op, [0.0, 2.0], atol=1e-12)
    assert _max_rel(ode.frequency_response(OMEGAS), reference) <= 1e-10
    # A given operating point is used as is.
    given = linearize_module(_rlc_ode(), 2.0, x_op=jnp.array([0.0, 2.0]))
    np.testing.assert_allclose(given.A, ode.A, rtol=1e-15)


def test_descriptor_forms_match_explicit_ones():
    # Non-identity E: the RLC loop as L i' = E - R i - v, C v' = i.
    A, B, Cout = _rlc_matrices()
    explicit = frequency_response(A, B, Cout, omegas=OMEGAS)
    descriptor = frequency_response(
        jnp.array([[-R, -1.0], [1.0, 0.0]]), jnp.array([1.0, 0.0]), Cout,
        E=jnp.diag(jnp.array([L, C])), omegas=OMEGAS,
    )
    assert _max_rel(descriptor, explicit) <= 1e-12

    # Singular E: a source u -> R1 -> node w -> R2 -> capacitor v. The node voltage w is
    # algebraic: (u - w)/R1 = (w - v)/R2. Eliminating it leaves C v' = (u - v)/(R1 + R2)
    # and w = (R2 u + R1 v)/(R1 + R2), an explicit system with feedthrough D.
    r1, r2, cap = 3.0, 7.0, 1e-3
    E = jnp.array([[cap, 0.0], [0.0, 0.0]])
    A_d = jnp.array([[-1 / r2, 1 / r2], [1 / r2, -1 / r1 - 1 / r2]])
    B_d = jnp.array([[0.0], [1 / r1]])
    h_descriptor = frequency_response(A_d, B_d, jnp.eye(2), E=E, omegas=OMEGAS)
    A_e = jnp.array([[-1 / ((r1 + r2) * cap)]])
    B_e = jnp.array([[1 / ((r1 + r2) * cap)]])
    C_e = jnp.array([[1.0], [r1 / (r1 + r2)]])
    D_e = jnp.array([[0.0], [r2 / (r1 + r2)]])
    h_explicit = frequency_response(A_e, B_e, C_e, D_e, omegas=OMEGAS)
    assert h_descriptor.shape == (OMEGAS.size, 2, 1)
    assert _max_rel(h_descriptor, np.asarray(h_explicit)) <= 1e-12
    # And the closed form 1 / ((R1 + R2) C s + 1) for v.
    ref_v = 1 / ((r1 + r2) * cap * 1j * OMEGAS + 1)
    assert _max_rel(h_descriptor[:, 0, 0], ref_v) <= 1e-12


def _central_differences(f, theta, h):
    columns = []
    for j in range(theta.size):
        e = jnp.zeros_like(theta).at[j].set(h)
        columns.append((f(theta + e) - f(theta - e)) / (2 * h))
    return np.stack(columns, axis=-1)


def test_gradient_of_magnitude_matches_central_differences():
    omegas = jnp.array([2e3, 6.2e3, 6.3e3, 2e4])

    def magnitude(theta):
        r, ind, cap = jnp.exp(theta)
        return jnp.abs(frequency_response(*_rlc_matrices(r, ind, cap), omegas=omegas))

    theta0 = jnp.log(jnp.array([R, L, C]))
    reference = _central_differences(jax.jit(magnitude), theta0, 1e-5)
    scale = np.max(np.abs(reference))
    for jac in (jax.jacfwd, jax.jacrev):
        computed = np.asarray(jax.jit(jac(magnitude))(theta0))
        assert np.max(np.abs(computed - reference)) <= 1e-6 * scale
    # The scalar gradient of a loss on |H|, too.
    grad = jax.grad(lambda th: jnp.sum(magnitude(th) ** 2))(theta0)
    np.testing.assert_allclose(grad, 2 * magnitude(theta0) @ reference, rtol=1e-6)


def test_gradient_through_newton_operating_point_matches_central_differences():
    # The cubic-resistor circuit driven by E: its equilibrium moves with the parameters,
    # and operating_point differentiates it by the implicit function theorem.
    def potential(i, v, u, p):
        i, v = i[0], v[0]
        a, b, r = jnp.exp(p["theta"][:3])
        return 0.5 * r * i**2 - u * i - (a * v**4 / 4 - b * v**2 / 2) + v * i

    def circuit(theta):
        return BraytonMoser(
            potential, lambda i, p: jnp.exp(p["theta"][3]), 1e-6, {"theta": theta},
            (np.zeros(1), np.zeros(1)), [1e-3],
        )

    omegas = jnp.array([3e3, 1e4, 3e4])

    def magnitude(theta):
        system = linearize_module(circuit(theta), 1.5)
        return jnp.abs(system.frequency_response(omegas)).reshape(-1)

    theta0 = jnp.log(jnp.array([1e-3, 0.5e-3, 10.0, 10e-3]))
    reference = _central_differences(jax.jit(magnitude), theta0, 1e-5)
    computed = np.asarray(jax.jit(jax.jacfwd(magnitude))(theta0))
    scale = np.max(np.abs(reference), axis=0)
    assert np.max(np.abs(computed - reference) / scale) <= 1e-6
    # The equilibrium really is one: i = a v^3 - b v and R i + v = E.
    x = operating_point(circuit(theta0), 1.5)
    a, b, r = 1e-3, 0.5e-3, 10.0
    v = float(x[1][0])
    assert float(x[0][0]) == pytest.approx(a * v**3 - b * v, rel=1e-10)
    assert r * float(x[0][0]) + v == pytest.approx(1.5, rel=1e-12)


@pytest.mark.parametrize(
    "real, complex_", [(jnp.float32, jnp.complex64), (jnp.float64, jnp.complex128)]
)
def test_dtypes(real, complex_):
    A, B, Cout = (x.astype(real) for x in _rlc_matrices())
    h = frequency_response(A, B, Cout, omegas=OMEGAS)
    assert h.dtype == complex_
    tol = 1e-4 if real == jnp.float32 else 1e-10
    assert _max_rel(h, _rlc_closed_form(OMEGAS)) <= tol
    # Through a module with parameters of that dtype, and Newton in that dtype.
    params = {k: jnp.asarray(v, real) for k, v in {"R": R, "L": L, "C": C}.items()}
    circuit = eqx.tree_at(lambda m: m.params, _rlc_circuit(), params)
    system = linearize_module(circuit, 1.0)
    assert system.A.dtype == real
    h = system.frequency_response(OMEGAS)
    assert h.dtype == complex_
    assert _max_rel(h, _rlc_closed_form(OMEGAS)) <= tol


def test_linearize_shapes_and_mimo():
    def field(t, x, u, p):
        return p["A"] @ x + p["B"] @ u

    rng = np.random.default_rng(1)
    params = {"A": jnp.asarray(rng.standard_normal((3, 3)) - 3 * np.eye(3)),
              "B": jnp.asarray(rng.standard_normal((3, 2)))}
    obs = lambda t, x, u, p: jnp.stack([x[0] + u[1], x[2]])  # noqa: E731
    A, B, Cm, D = linearize(field, jnp.zeros(3), jnp.zeros(2), params, observable=obs)
    np.testing.assert_allclose(A, params["A"])
    np.testing.assert_allclose(B, params["B"])
    np.testing.assert_allclose(Cm, [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(D, [[0, 1], [0, 0]])
    h = LinearSystem(A, B, Cm, D).frequency_response(jnp.array([[0.5, 1.0], [2.0, 4.0]]))
    assert h.shape == (2, 2, 2, 2)
    w = 2.0
    ref = np.asarray(Cm) @ np.linalg.solve(1j * w * np.eye(3) - np.asarray(A), np.asarray(B))
    np.testing.assert_allclose(h[1, 0], ref + np.asarray(D), rtol=1e-12)
    # Default observable: the state, C = I, D = 0; a scalar input drops the input axis.
    A, B, Cm, D = linearize(lambda t, x, u, p: -x + u, jnp.zeros(2), 0.0, None)
    assert B.shape == (2,) and Cm.shape == (2, 2) and D.shape == (2,)


def _log_rlc_circuit(r):
    # Log-parameters, so that the Jacobian's columns have comparable sizes.
    def potential(i, v, u, p):
        return _rlc_potential(i, v, u, {"R": jnp.exp(p["logR"])})

    params = {k: jnp.log(jnp.array(x)) for k, x in {"logR": r, "logL": L, "logC": C}.items()}
    return BraytonMoser(
        potential, lambda i, p: jnp.exp(p["logL"]), lambda v, p: jnp.exp(p["logC"]), params,
        (np.zeros(1), np.zeros(1)), [1e-3], observable=lambda t, i, v, u, p: v[0],
    )


def test_frequency_response_module_fits_with_riemannian_gradient():
    module = FrequencyResponse(_log_rlc_circuit(R), 1.0)
    omegas = jnp.array([1e3, 5e3, 6.3e3, 8e3, 2e4])
    batch = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    out = batch(module, omegas)
    ref = _rlc_closed_form(np.asarray(omegas))
    np.testing.assert_allclose(out[:, 0] + 1j * out[:, 1], ref, rtol=1e-10)
    targets = batch(FrequencyResponse(_log_rlc_circuit(14.0), 1.0), omegas)
    loss = modopt.losses.squared_error
    value, direction = eqx.filter_jit(
        lambda m: modopt.riemannian_gradient(
            m, loss, omegas, targets, output_metric=modopt.metrics.Identity(), mass=1e-3,
        )
    )(module)
    ref_value, ref_direction = dense_reference_direction(
        module, loss, omegas, targets, np.eye(targets.size), 1e-3,
    )
    assert abs(float(value) - ref_value) <= 1e-10 * abs(ref_value)
    assert tree_rel_error(direction, ref_direction) <= 1e-8


def test_bad_inputs_give_clear_errors():
    A, B, Cout = _rlc_matrices()
    with pytest.raises(ValueError, match="A must be square"):
        frequency_response(jnp.zeros((2, 3)), B, Cout, omegas=OMEGAS)
    with pytest.raises(ValueError, match="B must have shape"):
        frequency_response(A, jnp.zeros(3), Cout, omegas=OMEGAS)
    with pytest.raises(ValueError, match="D must have the shape"):
        frequency_response(A, B, Cout, jnp.zeros((2,)), omegas=OMEGAS)
    with pytest.raises(ValueError, match="E must have shape"):
        frequency_response(A, B, Cout, E=jnp.eye(3), omegas=OMEGAS)
    with pytest.raises(ValueError, match="u_op"):
        linearize(lambda t, x, u, p: -x, jnp.zeros(2), jnp.zeros((2, 2)), None)
    with pytest.raises(TypeError, match="ODEModule or a BraytonMoser"):
        linearize_module(modopt.Pointwise(jnp.tanh), 0.0)
    with pytest.raises(ValueError, match="pair"):
        linearize_module(_rlc_circuit(), 1.0, x_op=jnp.zeros(2))
    # No equilibrium (x' = 1 + x^2): NaN without throw, an error with it.
    no_root = ODEModule(lambda t, x, u, p: 1 + p["k"] * x**2, {"k": jnp.array(1.0)},
                        np.array([0.5]), [1.0])
    assert np.all(np.isnan(operating_point(no_root, 0.0, throw=False)))
    with pytest.raises(Exception, match="Newton"):
        jax.block_until_ready(operating_point(no_root, 0.0))

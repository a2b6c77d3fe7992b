"""CasADi Functions as JAX functions and modopt modules, against independent references:
JAX-native twins written directly in jax.numpy (SX and MX Functions), a Diffrax twin
of a CVODES/IDAS integrator, a Python loop for vmap, and the same network with an
all-JAX twin for the Riemannian gradient."""

import casadi
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_rel_error

import modopt
from modopt.systems import ODEModule
from modopt.systems.casadi import CasadiCallable, CasadiModule, casadi_callable

RTOL = 1e-8


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


def _max_rel(tree_a, tree_b) -> float:
    la, lb = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
    assert len(la) == len(lb)
    return max(_rel(a, b) for a, b in zip(la, lb))


# ------------------------------------------------------------------ a small algebraic map
# f(x, W, b) = (y, Z) with x (3,), W (2, 3), b scalar; y (2,), Z (2, 3):
#   y = tanh(W x) * b + sin(x_0),  Z = exp(b) W + y x^T


def _casadi_map(kind: str) -> casadi.Function:
    sym = casadi.SX.sym if kind == "SX" else casadi.MX.sym
    x, w, b = sym("x", 3), sym("W", 2, 3), sym("b")
    y = casadi.tanh(casadi.mtimes(w, x)) * b + casadi.sin(x[0])
    z = casadi.exp(b) * w + casadi.mtimes(y, x.T)
    return casadi.Function("f", [x, w, b], [y, z], ["x", "W", "b"], ["y", "Z"])


def _jax_map(x, w, b):
    y = jnp.tanh(w @ x) * b + jnp.sin(x[0])
    return y, jnp.exp(b) * w + jnp.outer(y, x)


def _point(seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=3), dtype),
        jnp.asarray(rng.normal(size=(2, 3)), dtype),
        jnp.asarray(rng.normal(), dtype),
    )


@pytest.mark.parametrize("kind", ["SX", "MX"])
@pytest.mark.parametrize("mode", ["jacobian", "forward", "reverse"])
def test_values_jvps_and_vjps_match_jax_twin(kind, mode):
    g = casadi_callable(_casadi_map(kind), mode)
    primals = _point(0)
    tangents = _point(1)
    cotangents = (jnp.asarray([0.3, -1.2]),
                  jnp.asarray(np.random.default_rng(2).normal(size=(2, 3))))
    assert _max_rel(g(*primals), _jax_map(*primals)) <= RTOL
    if mode != "reverse":
        out, tan = jax.jvp(g, primals, tangents)
        ref_out, ref_tan = jax.jvp(_jax_map, primals, tangents)
        assert _max_rel(out, ref_out) <= RTOL
        assert _max_rel(tan, ref_tan) <= RTOL
        jac = jax.jit(jax.jacfwd(g, argnums=(0, 1, 2)))(*primals)
        assert _max_rel(jac, jax.jacfwd(_jax_map, argnums=(0, 1, 2))(*primals)) <= RTOL
    else:
        with pytest.raises(TypeError):
            jax.jvp(g, primals, tangents)
    if mode != "forward":
        out, pullback = jax.vjp(g, *primals)
        ref_out, ref_pullback = jax.vjp(_jax_map, *primals)
        assert _max_rel(out, ref_out) <= RTOL
        assert _max_rel(pullback(cotangents), ref_pullback(cotangents)) <= RTOL
        jac = jax.jit(jax.jacrev(g, argnums=(0, 1, 2)))(*primals)
        assert _max_rel(jac, jax.jacrev(_jax_map, argnums=(0, 1, 2))(*primals)) <= RTOL
    else:
        with pytest.raises(ValueError, match="transpose"):  # JAX's: no reverse of a JVP callback
            jax.vjp(g, *primals)[1](cotangents)


def test_named_call_defaults_and_derivative_functions_are_cached():
    f = _casadi_map("SX")
    g = casadi_callable(f)
    x, w, b = _point(0)
    named = g(x=x, W=w)  # b takes CasADi's default, 0
    ref = _jax_map(x, w, jnp.asarray(0.0))
    assert set(named) == {"y", "Z"}
    assert _rel(named["y"], ref[0]) <= RTOL and _rel(named["Z"], ref[1]) <= RTOL
    jax.jvp(g, (x, w, b), _point(1))
    jax.jvp(g, (x, w, b), _point(2))
    assert g.derivative("jacobian", (0, 1, 2)) is g.derivative("jacobian", (0, 1, 2))
    forward = casadi_callable(f, "forward")
    jax.jvp(forward, (x, w, b), _point(1))
    assert forward.derivative("forward") is forward.derivative("forward")
    assert g == casadi_callable(f) and hash(g) == hash(casadi_callable(f))
    assert g != casadi_callable(f, "reverse")


def test_sparse_output_is_returned_dense():
    x = casadi.SX.sym("x", 3)
    f = casadi.Function("d", [x], [casadi.diag(x**2)], ["x"], ["D"])
    assert not f.sparsity_out(0).is_dense()
    g = casadi_callable(f)
    x0 = jnp.asarray([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(g(x0), jnp.diag(x0**2))
    batch = jnp.stack([x0, 2 * x0])
    np.testing.assert_array_equal(jax.vmap(g)(batch), jax.vmap(lambda v: jnp.diag(v**2))(batch))
    jac = jax.jacrev(g)(x0)
    assert _rel(jac, jax.jacrev(lambda v: jnp.diag(v**2))(x0)) <= RTOL


# ------------------------------------------------------------------ integrators vs Diffrax

TIMES = np.linspace(0.2, 2.0, 6)
P0 = jnp.asarray([0.8, 1.5])
X0 = jnp.asarray([1.0, -0.5])


def _integrator(plugin: str) -> casadi.Function:
    x, p = casadi.SX.sym("x", 2), casadi.SX.sym("p", 2)
    ode = casadi.vertcat(-p[0] * x[0] + x[1], p[1] * casadi.sin(x[0]) - 0.5 * x[1])
    options = {"abstol": 1e-12, "reltol": 1e-12}
    return casadi.integrator("F", plugin, {"x": x, "p": p, "ode": ode}, 0.0, list(TIMES), options)


def _diffrax_twin():
    def field(t, x, u, p):
        return jnp.stack([-p[0] * x[0] + x[1], p[1] * jnp.sin(x[0]) - 0.5 * x[1]])

    return ODEModule(field, P0, lambda u, p: u, TIMES, rtol=1e-11, atol=1e-12,
                     max_steps=100_000, sensitivity="forward")


@pytest.fixture(scope="module")
def diffrax_reference():
    twin = _diffrax_twin()

    def f(p, x0):  # (2, T): the integrator's layout, states by time
        return eqx.tree_at(lambda m: m.params, twin, p)(x0).T

    tangents = (jnp.asarray([0.3, -0.7]), jnp.asarray([1.0, 0.4]))
    out, tan = jax.jit(lambda p, x: jax.jvp(f, (p, x), tangents))(P0, X0)
    jac = jax.jit(jax.jacfwd(f, argnums=(0, 1)))(P0, X0)
    return dict(f=f, out=out, tangents=tangents, tangent_out=tan, jac=jac)


@pytest.mark.parametrize("plugin", ["cvodes", "idas"])
@pytest.mark.parametrize("derivatives,sensitivity", [
    ("jacobian", "auto"), ("directional", "forward"), ("directional", "reverse"),
])
def test_integrator_matches_diffrax_twin(plugin, derivatives, sensitivity, diffrax_reference):
    ref = diffrax_reference
    module = CasadiModule(_integrator(plugin), {"p": P0}, input_name="x0", output_name="xf",
                          sensitivity=sensitivity, derivatives=derivatives)
    assert module.in_shape == (2,)
    params = jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))
    assert len(params) == 1 and params[0] is module.params["p"]  # the only trainable array

    def f(p, x0):
        return eqx.tree_at(lambda m: m.params["p"], module, p)(x0)

    assert _rel(f(P0, X0), ref["out"]) <= 1e-6
    if sensitivity != "reverse":
        out, tan = jax.jvp(f, (P0, X0), ref["tangents"])
        assert _rel(out, ref["out"]) <= 1e-6
        assert _rel(tan, ref["tangent_out"]) <= 1e-6
    if sensitivity != "forward":
        cot = jnp.asarray(np.random.default_rng(3).normal(size=ref["out"].shape))
        computed = jax.vjp(f, P0, X0)[1](cot)
        expected = [jnp.tensordot(cot, j, axes=2) for j in ref["jac"]]
        assert _max_rel(computed, expected) <= 1e-6


def test_fixed_inputs_and_a_module_without_sample_input(diffrax_reference):
    module = CasadiModule(_integrator("cvodes"), {"p": P0}, fixed={"x0": X0})
    assert module.in_shape is None
    assert _rel(module(None), diffrax_reference["out"]) <= 1e-6
    grad = jax.grad(lambda m: jnp.sum(m(None) ** 2))(module).params["p"]
    ref = jnp.tensordot(2 * diffrax_reference["out"], diffrax_reference["jac"][0], axes=2)
    assert _rel(grad, ref) <= 1e-6


def test_failed_integration_gives_nan_only_for_failing_samples_or_raises():
    x, p = casadi.SX.sym("x"), casadi.SX.sym("p")
    # x' = p x^2 from x0 = 0.1 blows up at t = 10 / p: p = 20 fails before t = 1.
    integrator = casadi.integrator("F", "cvodes", {"x": x, "p": p, "ode": p * x**2}, 0.0,
                                   [0.25, 0.5], {"max_num_steps": 200})
    module = CasadiModule(integrator, {"p": jnp.asarray(1.0)}, input_name="x0")
    out = eqx.filter_jit(jax.vmap(module))(jnp.asarray([0.1, 20.0, 0.2]))
    assert np.all(np.isfinite(out[0])) and np.all(np.isfinite(out[2]))
    assert np.all(np.isnan(out[1]))
    assert out.shape == (3, 1, 2)  # a 1x2 CasADi output (one state, two times)
    np.testing.assert_allclose(out[0, 0], 0.1 / (1 - 0.1 * np.array([0.25, 0.5])), rtol=1e-5)
    strict = CasadiModule(casadi_callable(integrator, on_failure="raise"),
                          {"p": jnp.asarray(1.0)}, input_name="x0")
    with pytest.raises(Exception, match="CV_TOO_MUCH_WORK"):
        jax.block_until_ready(eqx.filter_jit(strict)(jnp.asarray(20.0)))


# ------------------------------------------------------------------ jit, vmap, dtypes


def _layer_function(kind="SX") -> casadi.Function:
    sym = casadi.SX.sym if kind == "SX" else casadi.MX.sym
    x, w, b = sym("x", 4), sym("w", 3, 4), sym("b", 3)
    return casadi.Function("layer", [x, w, b], [casadi.sin(casadi.mtimes(w, x) + b)],
                           ["x", "w", "b"], ["y"])


class _JaxLayer(modopt.AbstractModule):
    """The all-JAX twin of `_layer_function` as a module (same parameter dict)."""

    params: dict
    in_shape: tuple = eqx.field(static=True, kw_only=True, default=(4,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __call__(self, x):
        return jnp.sin(self.params["w"] @ x + self.params["b"])


def _layer_params(seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype),
            "b": jnp.asarray(rng.normal(size=3), dtype)}


def test_jit_does_not_retrace_and_vmap_matches_a_loop():
    traces = []

    @eqx.filter_jit
    def run(module, xs):
        traces.append(1)
        return jax.vmap(module)(xs)

    module = CasadiModule(_layer_function(), _layer_params(0), input_name="x")
    xs = jnp.asarray(np.random.default_rng(5).normal(size=(7, 4)))
    batched = run(module, xs)
    loop = jnp.stack([module(x) for x in xs])
    np.testing.assert_allclose(batched, loop, rtol=1e-14, atol=1e-14)
    twin = _JaxLayer(_layer_params(0))
    assert _rel(batched, jax.vmap(twin)(xs)) <= RTOL
    # New values, same structure (a new module on the same Function): no retrace.
    other = CasadiModule(module.function, _layer_params(1), input_name="x")
    assert _rel(run(other, 2 * xs), jax.vmap(_JaxLayer(_layer_params(1)))(2 * xs)) <= RTOL
    assert len(traces) == 1
    # vmap over parameters as well as inputs (every sample its own w), and nested vmap.
    g = casadi_callable(_layer_function())
    ws = jnp.asarray(np.random.default_rng(6).normal(size=(7, 3, 4)))
    b = _layer_params(0)["b"]
    per_sample = jax.jit(jax.vmap(g, in_axes=(0, 0, None)))(xs, ws, b)
    loop = jnp.stack([g(x, w, b) for x, w in zip(xs, ws)])
    np.testing.assert_allclose(per_sample, loop, rtol=1e-14, atol=1e-14)
    nested = jax.vmap(jax.vmap(g, in_axes=(0, None, None)), in_axes=(None, 0, None))(xs, ws, b)
    assert nested.shape == (7, 7, 3)
    np.testing.assert_allclose(nested[2, 4], g(xs[4], ws[2], b), rtol=1e-14)


def test_float32_in_float32_out():
    module = CasadiModule(_layer_function("MX"), _layer_params(0, jnp.float32), input_name="x")
    x = jnp.asarray([0.1, -0.2, 0.3, 0.4], jnp.float32)
    out = eqx.filter_jit(module)(x)
    assert out.dtype == jnp.float32
    twin = _JaxLayer(_layer_params(0, jnp.float32))
    np.testing.assert_allclose(out, twin(x), rtol=1e-5)
    grads = jax.grad(lambda m: jnp.sum(m(x)))(module)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    _, tangent = jax.jvp(module, (x,), (jnp.ones(4, jnp.float32),))
    assert tangent.dtype == jnp.float32
    g = casadi_callable(_casadi_map("SX"))
    assert all(o.dtype == jnp.float32 for o in g(*_point(0, jnp.float32)))
    assert all(o.dtype == jnp.float64 for o in g(*_point(0, jnp.float64)))


# ------------------------------------------------------------------ the engine


@pytest.mark.parametrize("derivatives", ["jacobian", "directional"])
@pytest.mark.parametrize("jacobian", [modopt.Forward(), modopt.Reverse(), modopt.AutoJacobian()],
                         ids=["forward", "reverse", "auto"])
def test_riemannian_gradient_matches_all_jax_twin(jacobian, derivatives):
    keys = jax.random.split(jax.random.key(0), 2)

    def network(middle):
        return modopt.Sequential([
            modopt.Linear(3, 4, key=keys[0]), modopt.Pointwise(jnp.tanh), middle,
            modopt.Linear(3, 2, key=keys[1]),
        ])

    cas = network(CasadiModule(_layer_function(), _layer_params(0), input_name="x",
                               derivatives=derivatives))
    twin = network(_JaxLayer(_layer_params(0)))
    rng = np.random.default_rng(7)
    inputs = jnp.asarray(rng.normal(size=(6, 3)))
    targets = jnp.asarray(rng.normal(size=(6, 2)))
    options = dict(output_metric=modopt.metrics.Identity(), mass=1e-2, jacobian=jacobian)
    loss = modopt.losses.squared_error
    value, direction = eqx.filter_jit(
        lambda m: modopt.riemannian_gradient(m, loss, inputs, targets, **options))(cas)
    ref_value, ref_direction = modopt.riemannian_gradient(twin, loss, inputs, targets, **options)
    assert abs(float(value) - float(ref_value)) <= 1e-12 * abs(float(ref_value))
    # Same parameter leaves in the same order (the modules differ, so do the trees).
    assert tree_rel_error(jax.tree.leaves(direction), jax.tree.leaves(ref_direction)) <= 1e-8


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_clear_errors():
    f = _layer_function()
    good = _layer_params(0)
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(4, 3\).*3x4"):
        CasadiModule(f, {**good, "w": jnp.zeros((4, 3))}, input_name="x")
    with pytest.raises(ValueError, match=r"no input 'weights' \(in params\).*\['x', 'w', 'b'\]"):
        CasadiModule(f, {"weights": good["w"], "b": good["b"]}, input_name="x")
    with pytest.raises(ValueError, match=r"no input 'u' \(in input_name\)"):
        CasadiModule(f, good, input_name="u")
    with pytest.raises(ValueError, match=r"no output 'z'.*\['y'\]"):
        CasadiModule(f, good, input_name="x", output_name="z")
    with pytest.raises(ValueError, match=r"inputs \['b'\].*not assigned"):
        CasadiModule(f, {"w": good["w"]}, input_name="x")
    with pytest.raises(ValueError, match=r"'x' is given both in input_name and in params"):
        CasadiModule(f, {**good, "x": jnp.zeros(4)}, input_name="x")
    with pytest.raises(ValueError, match=r"in_shape=\(5,\)"):
        CasadiModule(f, good, input_name="x", in_shape=(5,))
    with pytest.raises(ValueError, match="sensitivity must be one of"):
        CasadiModule(f, good, input_name="x", sensitivity="sideways")
    with pytest.raises(ValueError, match="derivatives must be one of"):
        CasadiModule(f, good, input_name="x", derivatives="numeric")
    with pytest.raises(TypeError, match="casadi.Function.*got function"):
        CasadiModule(lambda x: x, good, input_name="x")
    module = CasadiModule(f, good, input_name="x")
    with pytest.raises(ValueError, match=r"sample of shape \(4,\), got \(3,\)"):
        module(jnp.zeros(3))
    g = casadi_callable(f)
    assert isinstance(g, CasadiCallable)
    with pytest.raises(ValueError, match=r"Input 'w' of Function 'layer' is a 3x4.*shape \(12,\)"):
        g(jnp.zeros(4), jnp.zeros(12), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"takes 3 inputs"):
        g(jnp.zeros(4))
    with pytest.raises(ValueError, match=r"no input\(s\) \['bias'\]"):
        g(x=jnp.zeros(4), bias=jnp.zeros(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        casadi_callable(f, "sideways")

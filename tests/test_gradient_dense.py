"""modopt.riemannian_gradient against an independent dense float64 reference.

For every block ``a`` the direction must be ``(D_a + J_a^T M J_a)^-1 g_a`` with ``J``
from ``jax.jacfwd`` and ``M`` formed directly (see ``helpers.py``), to a relative error
of at most 1e-9, for every metric, both solve forms and every Jacobian strategy.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import (
    blocks_from_labels,
    dense_full_metric,
    dense_reference_direction,
    leaf_slices,
    mass_diagonal,
    metric_matrix_for,
    reference_blocks,
    tree_rel_error,
)

import modopt
from modopt import Group, Linear, Parallel, Pointwise, Sequential, metrics
from modopt.losses import softmax_cross_entropy, squared_error

RTOL = 1e-9
MASS = 0.7


# --------------------------------------------------------------------------- losses


def logcosh_loss(predictions, targets):
    """Separable, non-quadratic, and without a ``hessian_factor``."""
    r = predictions - targets
    return jnp.sum(jnp.logaddexp(r, -r) - jnp.log(2.0))


def coupled_loss(predictions, targets):
    """Couples all samples; its Hessian can have a negative eigenvalue (PSD part kept)."""
    r = (predictions - targets).reshape(-1)
    return 0.5 * jnp.sum(r**2) + jnp.log1p(jnp.sum(r) ** 2)


# --------------------------------------------------------------------------- networks


def _keys(seed, n):
    return list(jr.split(jr.PRNGKey(seed), n))


def _net(seed):
    """(model, in_dim, batch) for network number `seed` (fixed, deterministic)."""
    k = _keys(1000 + seed, 12)
    tanh, sin, softplus = Pointwise(jnp.tanh), Pointwise(jnp.sin), Pointwise(jax.nn.softplus)
    L = Linear
    if seed == 0:  # d = 1, blocks of 1 and 2 parameters
        return Sequential([L(1, 1, key=k[0], use_bias=False), tanh, L(1, 1, key=k[1])]), 1, 1
    if seed == 1:  # d = 500, blocks of 1968 and 490 parameters
        return Sequential([L(40, 48, key=k[0]), tanh, L(48, 10, key=k[1])]), 40, 50
    if seed == 2:
        return Parallel([L(3, 2, key=k[0]), L(4, 3, key=k[1])]), 7, 4
    if seed == 3:
        layers = [L(5, 8, key=k[0]), tanh, L(8, 8, key=k[1]), sin, L(8, 3, key=k[2])]
        return Sequential(layers), 5, 6
    if seed == 4:  # 5 blocks
        return Sequential([
            L(4, 6, key=k[0]), tanh, L(6, 6, key=k[1]), tanh, L(6, 5, key=k[2], use_bias=False),
            softplus, L(5, 4, key=k[3]), tanh, L(4, 3, key=k[4]),
        ]), 4, 10
    if seed == 5:  # Parallel inside Sequential, 4 blocks
        par = Parallel([Sequential([L(3, 4, key=k[0]), tanh, L(4, 2, key=k[1])]),
                        L(2, 3, key=k[2])])
        return Sequential([par, tanh, L(5, 4, key=k[3])]), 5, 5
    if seed == 6:
        layers = [L(2, 30, key=k[0]), tanh, L(30, 30, key=k[1]), tanh, L(30, 1, key=k[2])]
        return Sequential(layers), 2, 40
    if seed == 7:
        return Sequential([L(6, 10, key=k[0]), tanh, L(10, 4, key=k[1])]), 6, 12
    if seed == 8:  # blocks of 1, 6 and 4 parameters
        parts = [L(1, 1, key=k[0], use_bias=False), L(2, 2, key=k[1]), L(3, 1, key=k[2])]
        return Parallel(parts), 6, 7
    if seed == 9:  # blocks of 440, 1845 and 92 parameters
        layers = [L(10, 40, key=k[0]), tanh, L(40, 45, key=k[1]), tanh, L(45, 2, key=k[2])]
        return Sequential(layers), 10, 30
    if seed == 10:  # batch 1
        return Sequential([L(3, 5, key=k[0]), tanh, L(5, 2, key=k[1])]), 3, 1
    if seed == 11:  # d = 120
        layers = [L(8, 8, key=k[0]), tanh, L(8, 8, key=k[1]), tanh, L(8, 8, key=k[2])]
        return Sequential(layers), 8, 15
    if seed == 12:  # Parallel of Sequentials, 5 blocks
        par = Parallel([
            Sequential([L(4, 3, key=k[0]), tanh, L(3, 3, key=k[1])]),
            Sequential([L(2, 2, key=k[2]), sin, L(2, 2, key=k[3])]),
        ])
        return Sequential([par, tanh, L(5, 3, key=k[4])]), 6, 8
    if seed == 13:  # d = 120
        return Sequential([L(20, 25, key=k[0]), tanh, L(25, 6, key=k[1])]), 20, 20
    if seed == 14:
        return Sequential([L(1, 1, key=k[0], use_bias=False), tanh, L(1, 3, key=k[1])]), 1, 3
    if seed == 15:  # top-level Parallel with activations inside
        return Parallel([
            Sequential([L(3, 3, key=k[0]), tanh]),
            Sequential([L(2, 4, key=k[1]), sin, L(4, 2, key=k[2])]),
        ]), 5, 9
    if seed == 16:
        return Sequential([L(30, 40, key=k[0]), tanh, L(40, 3, key=k[1])]), 30, 25
    if seed == 17:  # no biases at all
        return Sequential([
            L(6, 6, key=k[0], use_bias=False), tanh, L(6, 6, key=k[1], use_bias=False), tanh,
            L(6, 2, key=k[2], use_bias=False),
        ]), 6, 50
    if seed == 18:  # d = 300
        return Sequential([L(4, 7, key=k[0]), tanh, L(7, 10, key=k[1])]), 4, 30
    if seed == 19:  # purely linear Parallel
        return Parallel([L(5, 5, key=k[0]), L(5, 5, key=k[1])]), 10, 2
    if seed == 20:
        return Sequential([
            L(12, 16, key=k[0]), softplus, L(16, 16, key=k[1]), tanh, L(16, 16, key=k[2]), tanh,
            L(16, 5, key=k[3]),
        ]), 12, 11
    if seed == 21:  # built with @ (nested Sequentials)
        return (L(4, 2, key=k[1]) @ tanh) @ L(3, 4, key=k[0]), 3, 6
    raise KeyError(seed)


NETWORKS = list(range(22))
_NET_CACHE: dict = {}


def network(seed):
    if seed not in _NET_CACHE:
        # built under one jit: eager construction compiles every random op separately
        dims = []

        def build():
            model, in_dim, batch = _net(seed)
            dims.extend([in_dim, batch])
            return model

        model = eqx.filter_jit(build)()
        in_dim, batch = dims
        rng = np.random.default_rng(2000 + seed)
        inputs = jnp.asarray(rng.standard_normal((batch, in_dim)))
        out_shape = jax.eval_shape(jax.vmap(model), inputs).shape
        _NET_CACHE[seed] = (model, inputs, out_shape)
    return _NET_CACHE[seed]


# --------------------------------------------------------------------------- metrics

METRICS = ["identity", "diagonal", "dense", "gn_se", "gn_ce", "gn_sep", "gn_full"]


def metric_allowed(name, out_shape):
    d = int(np.prod(out_shape))
    if name in ("dense", "gn_full"):
        return d <= 120
    if name == "gn_ce":
        return out_shape[-1] >= 2
    return True


def problem(seed, name):
    """(model, inputs, targets, loss_fn, metric) for network `seed` and metric `name`."""
    model, inputs, out_shape = network(seed)
    d = int(np.prod(out_shape))
    rng = np.random.default_rng(3000 + seed * 17 + METRICS.index(name))
    targets = jnp.asarray(rng.standard_normal(out_shape))
    loss_fn = squared_error
    if name == "identity":
        metric = metrics.Identity()
    elif name == "diagonal":
        metric = metrics.Diagonal(jnp.asarray(rng.uniform(0.5, 2.0, (d,))))
    elif name == "dense":
        a = rng.standard_normal((d, d))
        metric = metrics.Dense(a @ a.T / d + 0.5 * np.eye(d))
    elif name == "gn_se":
        metric = metrics.GaussNewton()
    elif name == "gn_ce":
        loss_fn = softmax_cross_entropy
        targets = jnp.asarray(rng.integers(0, out_shape[-1], out_shape[:1]))
        metric = metrics.GaussNewton()
    elif name == "gn_sep":
        loss_fn = logcosh_loss
        metric = metrics.GaussNewton(separable=True)
    elif name == "gn_full":
        loss_fn = coupled_loss
        metric = metrics.GaussNewton()
    else:
        raise KeyError(name)
    return model, inputs, targets, loss_fn, metric


_REF_CACHE: dict = {}


def reference(seed, name, mass=MASS):
    key = (seed, name)
    if mass is not MASS or key not in _REF_CACHE:
        model, inputs, targets, loss_fn, metric = problem(seed, name)
        preds = jax.vmap(model)(inputs)
        m = metric_matrix_for(metric, preds, targets, loss_fn)
        ref = dense_reference_direction(model, loss_fn, inputs, targets, m, mass)
        if mass is not MASS:
            return ref
        _REF_CACHE[key] = ref
    return _REF_CACHE[key]


# --------------------------------------------------------------------------- strategies

SOLVES = {"woodbury": modopt.Woodbury(), "primal": modopt.Primal()}
JACOBIANS = {
    "rev_structured": modopt.Reverse(structured=True),
    "rev_plain": modopt.Reverse(structured=False),
    "forward": modopt.Forward(),
}
CHUNKED = {
    "rev_structured_chunk3": modopt.Reverse(structured=True, chunk_size=3),
    "rev_plain_chunk3": modopt.Reverse(structured=False, chunk_size=3),
    "forward_chunk3": modopt.Forward(chunk_size=3),
}


def solve_direction(model, loss_fn, inputs, targets, metric, mass, jacobian, solver, blocks=None):
    """riemannian_gradient, jitted (one compile is much cheaper than eager dispatch)."""

    def run(model, inputs, targets, metric, mass):
        return modopt.riemannian_gradient(
            model, loss_fn, inputs, targets, output_metric=metric, mass=mass,
            jacobian=jacobian, solver=solver, blocks=blocks,
        )

    return eqx.filter_jit(run)(model, inputs, targets, metric, mass)

# Full sweep metric x solve x jacobian on one network; the others rotate.
SWEEP_NETS = [3]
SWEEP = [
    (net, m, s, j)
    for net in SWEEP_NETS
    for m, s, j in itertools.product(METRICS, SOLVES, JACOBIANS)
]


def _rotating_cases():
    """Every other network: one allowed metric with a rotating (solve, jacobian).

    Static shapes only (no JAX work at collection time).
    """
    cases = []
    combos = list(itertools.product(SOLVES, JACOBIANS))
    counter = 0
    for net in NETWORKS:
        if net in SWEEP_NETS:
            continue

        def out(net=net):
            model, in_dim, batch = _net(net)
            return jax.vmap(model)(jnp.zeros((batch, in_dim)))

        out_shape = jax.eval_shape(out).shape
        allowed = [m for m in METRICS if metric_allowed(m, out_shape)]
        m = allowed[net % len(allowed)]
        s, j = combos[counter % len(combos)]
        counter += 1
        cases.append((net, m, s, j))
    return cases


ROTATING = _rotating_cases()


def _check(net, metric_name, solve, jac, mass=MASS, **kwargs):
    model, inputs, targets, loss_fn, metric = problem(net, metric_name)
    jacobian = {**JACOBIANS, **CHUNKED}[jac] if isinstance(jac, str) else jac
    value, direction = solve_direction(
        model, loss_fn, inputs, targets, metric, mass, jacobian,
        SOLVES[solve] if isinstance(solve, str) else solve, **kwargs,
    )
    ref_value, ref_direction = reference(net, metric_name, mass)
    err = tree_rel_error(direction, ref_direction)
    assert err <= RTOL, f"relative error {err:.3e}"
    assert abs(float(value) - ref_value) <= 1e-12 * max(1.0, abs(ref_value))


def test_case_table_is_broad():
    """The table covers what the contract promises: sizes, d, kinds, strategies."""
    assert len(NETWORKS) >= 20
    sizes, ds, nblocks, kinds = [], [], [], set()
    for net in NETWORKS:
        model, inputs, out_shape = network(net)
        kinds.add(type(model).__name__)
        blocks = reference_blocks(model)
        nblocks.append(len(blocks))
        slices = leaf_slices(model)
        sizes += [sum(slices[i].stop - slices[i].start for i in b) for b in blocks]
        ds.append(int(np.prod(out_shape)))
    assert kinds == {"Sequential", "Parallel"}
    assert min(nblocks) == 2 and max(nblocks) == 5
    assert min(sizes) == 1 and max(sizes) == 1968
    assert min(ds) == 1 and max(ds) == 500
    triples = {(m, s, j) for _, m, s, j in SWEEP + ROTATING}
    assert triples == set(itertools.product(METRICS, SOLVES, JACOBIANS))
    assert {n for n, _, _, _ in SWEEP + ROTATING} == set(NETWORKS)
    assert {m for n, m, _, _ in ROTATING} == set(METRICS)


@pytest.mark.parametrize("net,metric_name,solve,jac", SWEEP, ids=lambda v: str(v))
def test_sweep_against_dense_reference(net, metric_name, solve, jac):
    _check(net, metric_name, solve, jac)


@pytest.mark.parametrize("net,metric_name,solve,jac", ROTATING, ids=lambda v: str(v))
def test_networks_against_dense_reference(net, metric_name, solve, jac):
    _check(net, metric_name, solve, jac)


@pytest.mark.parametrize("jac", list(CHUNKED))
def test_chunked_against_dense_reference(jac):
    _check(12, "gn_sep", "woodbury" if "plain" in jac else "primal", jac)
    _check(12, "dense", "primal" if "plain" in jac else "woodbury", jac)


def test_forward_under_jit():
    """Forward() must be traceable like Reverse(): riemannian_gradient under eqx.filter_jit."""
    model, inputs, targets, loss_fn, metric = problem(3, "gn_se")
    run = eqx.filter_jit(lambda m: modopt.riemannian_gradient(
        m, loss_fn, inputs, targets, output_metric=metric, mass=MASS, jacobian=modopt.Forward()))
    _, u = run(model)
    assert tree_rel_error(u, reference(3, "gn_se")[1]) <= RTOL


@pytest.mark.parametrize("net", [12])
def test_default_strategies(net):
    """AutoJacobian and AutoSolve (the defaults) give the same direction."""
    model, inputs, targets, loss_fn, metric = problem(net, "gn_se")
    value, direction = solve_direction(
        model, loss_fn, inputs, targets, metric, MASS, modopt.AutoJacobian(), modopt.AutoSolve()
    )
    assert tree_rel_error(direction, reference(net, "gn_se")[1]) <= RTOL


# --------------------------------------------------------------------------- mass


def _mass_tree(model, seed, full_leaf=None):
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    masses = [float(rng.uniform(0.3, 3.0)) for _ in leaves]
    if full_leaf is not None:
        masses[full_leaf] = jnp.asarray(rng.uniform(0.3, 3.0, leaves[full_leaf].shape))
    return treedef.unflatten(masses)


@pytest.mark.parametrize("metric_name,full_leaf,solve,jac", [
    ("gn_se", None, "woodbury", "rev_structured"),
    ("gn_se", 2, "primal", "rev_structured"),
    ("dense", None, "primal", "rev_structured"),
    ("dense", 2, "woodbury", "rev_plain"),
    ("gn_se", 2, "woodbury", "forward"),
])
def test_mass_pytree(metric_name, full_leaf, solve, jac):
    """A different positive scalar per array (weight and bias differ), and one full-shape array."""
    net = 4
    model = network(net)[0]
    mass = _mass_tree(model, 77, full_leaf)
    scalars = [m for m in jax.tree.leaves(mass) if np.ndim(m) == 0]
    assert len(set(scalars)) == len(scalars)
    _check(net, metric_name, solve, jac, mass=mass)


def test_mass_pytree_differs_from_float():
    """Sanity: the per-array mass really changes the answer (the test above is not vacuous)."""
    net = 4
    model = network(net)[0]
    mass = _mass_tree(model, 77, 2)
    a = reference(net, "gn_se", mass)[1]
    b = reference(net, "gn_se")[1]
    assert tree_rel_error(a, b) > 1e-3


def test_module_declared_mass_overrides_float():
    k = _keys(5, 3)
    model = eqx.filter_jit(lambda: Sequential(
        [Linear(3, 4, key=k[0], mass=2.5), Pointwise(jnp.tanh), Linear(4, 2, key=k[1])]))()
    inputs = jnp.asarray(np.random.default_rng(5).standard_normal((6, 3)))
    targets = jnp.zeros((6, 2))
    params = eqx.filter(model, eqx.is_inexact_array)
    mass_tree = jax.tree.map(lambda _: 0.4, params)
    mass_tree = eqx.tree_at(lambda t: (t.modules[0].weight, t.modules[0].bias), mass_tree,
                            (2.5, 2.5))
    m = np.eye(12)
    _, ref = dense_reference_direction(model, squared_error, inputs, targets, m, mass_tree)
    for jac, solve in [("rev_structured", "woodbury"), ("rev_plain", "primal")]:
        for _ in [0]:
            _, u = solve_direction(
                model, squared_error, inputs, targets, metrics.Identity(), 0.4,
                JACOBIANS[jac], SOLVES[solve],
            )
            assert tree_rel_error(u, ref) <= RTOL, (jac, solve)


# --------------------------------------------------------------------------- kfac-style


def _pullback_gram(model, inputs, targets, loss_fn, metric, mass, jac):
    """``K_a^T K_a + D_a`` for every block, from modopt's own pullback."""
    from modopt._blocks import block_diagonal, partition, resolve_mass
    from modopt.gradient import _per_sample_linear_matrix, _structured_blocks
    from modopt.jacobian import compute_pullback

    preds = jax.vmap(model)(inputs)
    factor = metric.factor(preds, targets, loss_fn)
    part = partition(model)
    dtype = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))[0].dtype
    masses = resolve_mass(model, mass, part, dtype)
    structured = _structured_blocks(model, part, masses) if jac.mode(0, 1) == "structured" else {}
    pull = compute_pullback(model, inputs, factor, part, structured, jac)
    grams = []
    for b, members in enumerate(part.members):
        if pull.delta[b] is not None:
            has_bias = structured[b][1].bias is not None
            k = _per_sample_linear_matrix(pull.delta[b], pull.inputs[b], has_bias)
        else:
            k = pull.dense[b]
        k = np.asarray(k, np.float64)
        dvec = np.asarray(block_diagonal(masses[b], [part.shapes[i] for i in members]))
        grams.append(k.T @ k + np.diag(dvec))
    return grams


@pytest.mark.parametrize("metric_name,jac", [
    ("dense", "rev_plain"), ("dense", "rev_structured"), ("gn_ce", "forward"),
    ("gn_sep", "rev_structured"), ("gn_full", "rev_plain"),
])
def test_block_metric_is_diagonal_block_of_full_metric(metric_name, jac):
    """kfac-jax style: the G_a modopt uses is exactly the a-th diagonal block of J^T M J + D."""
    net = 5
    model, inputs, targets, loss_fn, metric = problem(net, metric_name)
    mass = _mass_tree(model, 11)
    preds = jax.vmap(model)(inputs)
    m = metric_matrix_for(metric, preds, targets, loss_fn)
    full = dense_full_metric(model, inputs, m, mass)
    # sanity: the full metric has non-negligible couplings between blocks
    groups = reference_blocks(model)
    slices = leaf_slices(model)
    cols = [np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in g]) for g in groups]
    assert np.abs(full[np.ix_(cols[0], cols[-1])]).max() > 1e-3
    grams = _pullback_gram(model, inputs, targets, loss_fn, metric, mass, JACOBIANS[jac])
    assert len(grams) == len(cols) == 4
    for gram, c in zip(grams, cols):
        block = full[np.ix_(c, c)]
        assert np.max(np.abs(gram - block)) <= 1e-10 * np.max(np.abs(block))


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("net", [8, 21])
def test_direction_structure_and_value(net):
    model, inputs, targets, loss_fn, metric = problem(net, "gn_se")
    value, direction = solve_direction(
        model, loss_fn, inputs, targets, metric, MASS, modopt.AutoJacobian(), modopt.AutoSolve()
    )
    params = eqx.filter(model, eqx.is_inexact_array)
    assert jax.tree.structure(direction) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(direction), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype == jnp.float64
    expected = loss_fn(jax.vmap(model)(inputs), targets)
    assert jnp.ndim(value) == 0
    assert float(value) == pytest.approx(float(expected), rel=1e-14, abs=0)


def test_default_block_labels_match_reference_partition():
    for net in NETWORKS:
        model = network(net)[0]
        assert blocks_from_labels(model, modopt.block_labels(model)) == reference_blocks(model)


# --------------------------------------------------------------------------- Group / blocks


def _group_model():
    k = _keys(42, 5)

    def build():
        inner = Sequential([Linear(3, 5, key=k[0]), Pointwise(jnp.tanh), Linear(5, 4, key=k[1])])
        return Sequential([Group(inner), Pointwise(jnp.sin), Linear(4, 2, key=k[2])])

    model = eqx.filter_jit(build)()
    rng = np.random.default_rng(42)
    inputs = jnp.asarray(rng.standard_normal((7, 3)))
    targets = jnp.asarray(rng.standard_normal((7, 2)))
    return model, inputs, targets


def test_group_is_one_block():
    model, inputs, targets = _group_model()
    labels = jax.tree.leaves(modopt.block_labels(model))
    assert labels == [0, 0, 0, 0, 1, 1]
    assert reference_blocks(model) == [[0, 1, 2, 3], [4, 5]]


@pytest.mark.parametrize("metric_name,solve,jac", [
    ("identity", "woodbury", "rev_structured"), ("dense", "primal", "rev_structured"),
    ("dense", "woodbury", "rev_plain"), ("identity", "primal", "forward"),
])
def test_group_against_reference(metric_name, solve, jac):
    model, inputs, targets = _group_model()
    d = targets.size
    if metric_name == "identity":
        metric = metrics.Identity()
    else:
        a = np.random.default_rng(9).standard_normal((d, d))
        metric = metrics.Dense(a @ a.T / d + 0.3 * np.eye(d))
    m = metric_matrix_for(metric, jax.vmap(model)(inputs), targets, squared_error)
    _, ref = dense_reference_direction(model, squared_error, inputs, targets, m, MASS)
    _, u = solve_direction(
        model, squared_error, inputs, targets, metric, MASS, JACOBIANS[jac], SOLVES[solve]
    )
    assert tree_rel_error(u, ref) <= RTOL
    # the grouping matters: the ungrouped model gives a different direction
    ungrouped = Sequential([model.modules[0].module, model.modules[1], model.modules[2]])
    _, u2 = solve_direction(
        ungrouped, squared_error, inputs, targets, metric, MASS, JACOBIANS[jac], SOLVES[solve]
    )
    a = jax.tree.leaves(u)
    b = jax.tree.leaves(u2)
    assert max(float(np.linalg.norm(x - y) / np.linalg.norm(x)) for x, y in zip(a, b)) > 1e-3


def _custom_labels(model, kind):
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    n = len(leaves)
    if kind == "one_block":
        labels = [0] * n
    elif kind == "per_array":  # weight and bias of every Linear in separate blocks
        labels = list(range(n))
    elif kind == "interleaved":  # non-contiguous blocks, string labels
        labels = ["even" if i % 2 == 0 else "odd" for i in range(n)]
    elif kind == "first_two_layers":
        labels = ["a"] * 4 + ["b"] * (n - 4)
    else:
        raise KeyError(kind)
    return treedef.unflatten(labels)


@pytest.mark.parametrize("kind,solve,jac", [
    ("one_block", "woodbury", "rev_structured"), ("per_array", "primal", "rev_structured"),
    ("interleaved", "woodbury", "rev_plain"), ("first_two_layers", "primal", "forward"),
])
def test_custom_blocks(kind, solve, jac):
    net = 3
    model, inputs, targets, loss_fn, metric = problem(net, "diagonal")
    labels = _custom_labels(model, kind)
    m = metric_matrix_for(metric, jax.vmap(model)(inputs), targets, loss_fn)
    _, ref = dense_reference_direction(model, loss_fn, inputs, targets, m, MASS, blocks=labels)
    _, u = solve_direction(
        model, loss_fn, inputs, targets, metric, MASS, JACOBIANS[jac], SOLVES[solve], blocks=labels
    )
    assert tree_rel_error(u, ref) <= RTOL


def test_one_block_equals_full_natural_gradient():
    """With a single block the direction is the full (J^T M J + D)^-1 g."""
    net = 3
    model, inputs, targets, loss_fn, metric = problem(net, "gn_se")
    labels = _custom_labels(model, "one_block")
    _, u = solve_direction(
        model, loss_fn, inputs, targets, metric, MASS, modopt.Reverse(), modopt.AutoSolve(),
        blocks=labels
    )
    from jax.flatten_util import ravel_pytree

    params = eqx.filter(model, eqx.is_inexact_array)
    g = ravel_pytree(eqx.filter_grad(lambda m: loss_fn(jax.vmap(m)(inputs), targets))(model))[0]
    full = dense_full_metric(model, inputs, np.eye(targets.size), MASS)
    expected = np.linalg.solve(full, np.asarray(g))
    got = np.asarray(ravel_pytree(u)[0])
    assert ravel_pytree(params)[0].shape == got.shape
    assert np.linalg.norm(got - expected) <= RTOL * np.linalg.norm(expected)
    assert np.allclose(mass_diagonal(model, MASS), MASS, rtol=0, atol=0)

"""The training loop's target bookkeeping and the K-FAC adapter (`modopt.nn.kfac`)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import modopt
from modopt.nn.data import load_digits_split
from modopt.nn.kfac import KFACMLP, kfac_optimizer, make_kfac_step
from modopt.nn.train import MethodConfig, time_to_targets, train

with warnings.catch_warnings():
    # kfac-jax 0.0.8 reads names that jax 0.10 deprecates while it is imported; it is in
    # the tests extra, so a missing package fails here rather than skipping.
    warnings.simplefilter("ignore", DeprecationWarning)
    import kfac_jax  # noqa: F401

SIZES = [64, 32, 10]


@pytest.fixture(scope="module")
def digits():
    """A small float32 subset of digits: 256 training and 128 test samples."""
    x_tr, y_tr, x_te, y_te = load_digits_split(0)
    return x_tr[:256], y_tr[:256], x_te[:128], y_te[:128]


def _model(seed=0, dtype=jnp.float32):
    return modopt.mlp(SIZES, key=jax.random.PRNGKey(seed), dtype=dtype)


# ------------------------------------------------------------------ targets bookkeeping


def test_time_to_targets_hand_made_history():
    hist = {
        "time_s": [0.0, 0.5, 1.0, 1.5, 2.0],
        "step": [0, 5, 10, 15, 20],
        "test_accuracy": [0.1, 0.94, 0.951, 0.93, 0.97],
    }
    got = time_to_targets(hist, (0.95, 0.97, 0.99, 0.1))
    assert got == {
        "0.95": {"time_s": 1.0, "step": 10},  # first evaluation at or above the target
        "0.97": {"time_s": 2.0, "step": 20},  # reached exactly counts
        "0.99": None,
        "0.1": {"time_s": 0.0, "step": 0},
    }
    assert time_to_targets(hist, ()) == {}


def test_train_records_targets(digits):
    cfg = MethodConfig("sgd", learning_rate=0.1, momentum=0.9)
    h = train(cfg, digits, sizes=SIZES, batch_size=32, budget_s=60.0, max_steps=30,
              eval_every=5, targets=(0.0, 0.5, 1.01))
    assert h["step"] == [0, 5, 10, 15, 20, 25, 30]
    assert len(h["time_s"]) == len(h["test_accuracy"]) == len(h["step"])
    assert all(b >= a for a, b in zip(h["time_s"], h["time_s"][1:]))
    assert h["targets"] == time_to_targets(h, (0.0, 0.5, 1.01))
    assert h["targets"]["0.0"] == {"time_s": 0.0, "step": 0}
    assert h["targets"]["1.01"] is None
    assert h["nonfinite_loss"] is None


# ------------------------------------------------------------------ K-FAC adapter

# kfac-jax 0.0.8 reads names that jax 0.10 deprecates (e.g. jax.core.no_effects).
KFAC_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:kfac_jax.*")


def _loss(model, x, y):
    return modopt.losses.softmax_cross_entropy(jax.vmap(model)(x), y)


@KFAC_WARNINGS
def test_kfacmlp_round_trip(digits):
    model = _model()
    x = jnp.asarray(digits[0][:16])
    k = KFACMLP.from_modopt(model)
    assert [w.shape for w in k.weights] == [(64, 32), (32, 10)]  # kfac-jax's (in, out)
    np.testing.assert_allclose(jax.vmap(k)(x), jax.vmap(model)(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k.batched(x), jax.vmap(model)(x), rtol=1e-5, atol=1e-6)
    back = k.to_modopt(model)
    for a, b in zip(jax.tree.leaves(eqx.filter(back, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="Sequential"):
        KFACMLP.from_modopt(modopt.Linear(3, 2, key=jax.random.PRNGKey(0)))
    grouped = modopt.Sequential([modopt.Linear(3, 2, key=jax.random.PRNGKey(0)),
                                 modopt.Group(modopt.Linear(2, 2, key=jax.random.PRNGKey(1)))])
    with pytest.raises(TypeError, match="Linear and Pointwise"):
        KFACMLP.from_modopt(grouped)


@KFAC_WARNINGS
def test_kfac_blocks_are_kronecker_factored(digits):
    """Every Linear is one Kronecker-factored dense block (not kfac-jax's diagonal
    fallback, which its graph matcher picks for modopt's (out, in) layout)."""
    opt = kfac_optimizer(learning_rate=0.1, momentum=0.9)
    params = KFACMLP.from_modopt(_model())
    batch = (jnp.asarray(digits[0][:32]), jnp.asarray(digits[1][:32]))
    opt.init(params, jax.random.PRNGKey(0), batch)
    blocks = opt._estimator.blocks  # kfac-jax internals; no public accessor
    assert [type(b).__name__ for b in blocks] == ["DenseTwoKroneckerFactored"] * 2
    assert [tuple(map(tuple, b.parameters_shapes)) for b in blocks] == [
        ((64, 32), (32,)), ((32, 10), (10,))]


@KFAC_WARNINGS
def test_kfac_first_update_with_large_damping_is_a_gradient_step(digits):
    """With damping lam >> curvature, K-FAC's update is -(lr / lam) * gradient: checks
    the sign, the layout and that kfac-jax minimises modopt's loss. Float64, so that
    the tiny update is not lost to rounding."""
    lam, lr = 1e6, 0.5
    model = _model(dtype=jnp.float64)
    x, y = jnp.asarray(digits[0][:64], jnp.float64), jnp.asarray(digits[1][:64])
    opt = kfac_optimizer(learning_rate=lr, momentum=0.0, initial_damping=lam,
                         adaptive_damping=False, dtype=jnp.float64)
    params = KFACMLP.from_modopt(model)
    state = opt.init(params, jax.random.PRNGKey(0), (x, y))
    new, _, _ = opt.step(KFACMLP.from_modopt(model), state, jax.random.PRNGKey(1),
                         batch=(x, y), global_step_int=0)
    update = jax.tree.map(lambda a, b: a - b, new.to_modopt(model), model)
    grad = eqx.filter_grad(_loss)(model, x, y)
    for u, g in zip(jax.tree.leaves(eqx.filter(update, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(grad, eqx.is_inexact_array))):
        np.testing.assert_allclose(u, -(lr / lam) * g, rtol=2e-2, atol=1e-3 * lr / lam
                                   * float(jnp.max(jnp.abs(g))))


@KFAC_WARNINGS
@pytest.mark.parametrize("options", [
    dict(learning_rate=0.1, momentum=0.9),  # the stochastic configuration
    dict(learning_rate=None, momentum=None),  # adaptive (full batch here)
])
def test_kfac_reduces_loss_float32(digits, options):
    model = _model()
    x, y = jnp.asarray(digits[0][:128]), jnp.asarray(digits[1][:128])
    assert x.dtype == jnp.float32
    init, step = make_kfac_step((x, y), seed=0, initial_damping=1.0, **options)
    state = init(model)
    first = float(_loss(model, x, y))
    m, losses = model, []
    for _ in range(20):
        m, state, loss = step(m, state, x, y)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    final = float(_loss(m, x, y))
    assert final < 0.5 * first, (first, losses)
    assert {leaf.dtype for leaf in jax.tree.leaves(m)} == {jnp.dtype(jnp.float32)}
    assert isinstance(m, KFACMLP)


@KFAC_WARNINGS
def test_train_runs_kfac(digits):
    cfg = MethodConfig("kfac", learning_rate=0.1, momentum=0.9,
                       extra={"initial_damping": 1.0})
    h = train(cfg, digits, sizes=SIZES, batch_size=32, budget_s=60.0, max_steps=20,
              eval_every=10, targets=(0.5,))
    assert h["step"] == [0, 10, 20]
    assert h["test_accuracy"][-1] > 0.5
    assert h["targets"]["0.5"] is not None
    assert h["nonfinite_loss"] is None


@KFAC_WARNINGS
def test_make_step_kfac_needs_an_example():
    from modopt.nn.train import make_step

    with pytest.raises(ValueError, match="example"):
        make_step(MethodConfig("kfac"))

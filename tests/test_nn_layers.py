"""modopt.nn.layers against independent references.

- `Conv2d` against an explicit numpy loop over output positions (padding computed here
  from XLA's SAME rule), for SAME, VALID, explicit padding and strides; `AvgPool2d`
  against numpy means of the windows.
- The Riemannian gradient of a tiny convnet against the dense float64 reference of
  ``helpers.py`` (identity metric), with every block a whole `Conv2d` or `Linear`.
- `normalisation_free_mlp`: unit pre-activation variance at init on Gaussian inputs.
- Shape errors raised when a `Sequential` is built.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import blocks_from_labels, dense_reference_direction, reference_blocks, tree_rel_error

import modopt
from modopt import Linear, Pointwise, Sequential
from modopt.losses import squared_error
from modopt.nn import (
    AvgPool2d,
    Conv2d,
    Flatten,
    activation_gain,
    normalisation_free_mlp,
    small_convnet,
)

KEY = jr.PRNGKey(0)


def build(constructor, *args, seed=0, **kwargs):
    """``constructor(*args, **kwargs)`` with every array replaced by numpy draws, uniform
    in [-1, 1] (its structure comes from ``eqx.filter_eval_shape``: no JAX random
    number is drawn, which saves one compile per array shape)."""
    struct = eqx.filter_eval_shape(constructor, *args, **kwargs)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.uniform(-1.0, 1.0, leaf.shape), leaf.dtype)
        return leaf

    return jax.tree.map(draw, struct)


# ----------------------------------------------------------------------------- Conv2d


def reference_conv(x, weight, bias, stride, padding):
    """Cross-correlation of one HWC image by loops over the output positions."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    kh, kw, _, cout = w.shape
    pads = []
    for size, k, s, axis in zip(x.shape[:2], (kh, kw), stride, range(2)):
        if padding == "SAME":
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "VALID":
            pads.append((0, 0))
        else:
            pads.append(padding[axis])
    xp = np.pad(x, (*pads, (0, 0)))
    out_h = (xp.shape[0] - kh) // stride[0] + 1
    out_w = (xp.shape[1] - kw) // stride[1] + 1
    y = np.zeros((out_h, out_w, cout))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw]
            for o in range(cout):
                y[i, j, o] = np.sum(patch * w[..., o])
    return y if bias is None else y + np.asarray(bias, np.float64)


CONV_CASES = [
    # (input shape, out channels, kernel, stride, padding, use_bias)
    ((7, 6, 2), 3, 3, 1, "SAME", True),
    ((7, 6, 2), 3, (3, 2), 1, "VALID", True),
    ((7, 6, 2), 2, 3, 2, "SAME", True),
    ((8, 5, 1), 2, (2, 3), 2, "VALID", False),
    ((6, 6, 3), 2, (4, 4), (2, 1), "SAME", True),
    ((5, 6, 2), 2, 3, (2, 1), ((1, 0), (2, 1)), True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_loop_reference(case):
    shape, cout, kernel, stride, padding, use_bias = case
    conv = build(Conv2d, shape[2], cout, kernel, stride=stride, padding=padding, key=KEY,
                 use_bias=use_bias)
    x = np.random.default_rng(0).standard_normal(shape)
    y = conv(jnp.asarray(x))
    strides = (stride, stride) if isinstance(stride, int) else stride
    expected = reference_conv(x, conv.weight, conv.bias, strides, padding)
    assert y.dtype == jnp.float64 and y.shape == expected.shape
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-13)


def test_conv2d_init_and_dtype():
    conv = Conv2d(3, 4, 3, key=KEY, dtype=jnp.float32)
    assert conv.weight.shape == (3, 3, 3, 4) and conv.bias.shape == (4,)
    bound = 1 / math.sqrt(27)
    assert conv.weight.dtype == jnp.float32
    assert 0.5 * bound <= float(jnp.max(jnp.abs(conv.weight))) <= bound
    assert float(jnp.max(jnp.abs(conv.bias))) <= bound
    y = conv(jnp.ones((5, 5, 3), jnp.float32))
    assert y.dtype == jnp.float32 and y.shape == (5, 5, 4)
    net = build(small_convnet, (8, 8, 1), 3, key=KEY, channels=(2, 3), dtype=jnp.float32)
    assert {leaf.dtype for leaf in jax.tree.leaves(eqx.filter(net, eqx.is_array))} == {
        np.dtype(np.float32)
    }
    out = eqx.filter_jit(lambda net, x: jax.vmap(net)(x))(net, jnp.ones((2, 8, 8, 1), jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (2, 3)


def test_conv2d_input_errors():
    conv = build(Conv2d, 2, 3, 3, padding="VALID", key=KEY)
    with pytest.raises(ValueError, match="2 input channels"):
        conv(jnp.ones((5, 5, 3)))
    with pytest.raises(ValueError, match="one image"):
        conv(jnp.ones((4, 5, 5, 2)))
    with pytest.raises(ValueError, match="smaller than the 3 x 3 kernel"):
        conv(jnp.ones((2, 4, 2)))
    with pytest.raises(ValueError, match="padding"):
        Conv2d(2, 3, 3, padding="FULL", key=KEY)
    with pytest.raises(ValueError, match="stride"):
        Conv2d(2, 3, 3, stride=0, key=KEY)
    with pytest.raises(ValueError, match="in_shape"):
        Conv2d(2, 3, 3, key=KEY, in_shape=(5, 5, 1))


def test_sequential_input_shape_is_the_first_modules():
    head = Linear(2 * 2 * 3, 1, key=KEY)
    open_conv = Sequential([Conv2d(1, 3, 3, stride=2, key=KEY), Flatten(), head])
    assert open_conv.in_shape is None  # not the Linear's (12,): the convolution changes it
    assert open_conv(jnp.ones((4, 4, 1))).shape == (1,)
    sized = Sequential([Conv2d(1, 3, 3, stride=2, key=KEY, in_shape=(4, 4, 1)), Flatten(), head])
    assert sized.in_shape == (4, 4, 1)
    assert Sequential([Pointwise(jnp.tanh), head]).in_shape == (12,)  # shape-preserving


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("window, stride", [(2, None), ((2, 3), None), (3, 1), (2, (1, 2))])
def test_avgpool_and_flatten(window, stride):
    x = np.random.default_rng(1).standard_normal((7, 6, 2))
    pool = AvgPool2d(window, stride)
    wh, ww = (window, window) if isinstance(window, int) else window
    steps = window if stride is None else stride
    sh, sw = (steps, steps) if isinstance(steps, int) else steps
    rows, cols = range(0, 7 - wh + 1, sh), range(0, 6 - ww + 1, sw)
    expected = np.array(
        [[x[i : i + wh, j : j + ww].mean(axis=(0, 1)) for j in cols] for i in rows]
    )
    np.testing.assert_allclose(np.asarray(pool(jnp.asarray(x))), expected, rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(Flatten()(jnp.asarray(x))), x.reshape(-1))
    with pytest.raises(ValueError, match="smaller than the"):
        AvgPool2d(8)(jnp.asarray(x))


# ----------------------------------------------------------------------------- gradient


MASS = 0.7


@pytest.fixture(scope="module")
def convnet_problem():
    """A tiny convnet (6x6x1 input, 2 channels, 3 outputs), a batch of 4 and the dense
    reference direction for the identity metric."""
    model = build(small_convnet, (6, 6, 1), 3, key=KEY, channels=(2, 2))
    rng = np.random.default_rng(7)
    inputs = jnp.asarray(rng.standard_normal((4, 6, 6, 1)))
    targets = jnp.asarray(rng.standard_normal((4, 3)))
    reference = dense_reference_direction(
        model, squared_error, inputs, targets, np.eye(12), MASS
    )
    return model, inputs, targets, reference


def test_convnet_blocks(convnet_problem):
    model = convnet_problem[0]
    blocks = reference_blocks(model)
    # conv 1 (weight, bias), conv 2 (weight, bias), linear (weight, bias)
    assert blocks_from_labels(model, modopt.block_labels(model)) == blocks
    assert blocks == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize(
    "jacobian", [modopt.Reverse(structured=True), modopt.Forward()], ids=["reverse", "forward"]
)
def test_convnet_gradient_matches_dense_reference(convnet_problem, jacobian):
    model, inputs, targets, (ref_value, ref_direction) = convnet_problem

    def run(model, inputs, targets):
        return modopt.riemannian_gradient(
            model, squared_error, inputs, targets, output_metric=modopt.metrics.Identity(),
            mass=MASS, jacobian=jacobian,
        )

    value, direction = eqx.filter_jit(run)(model, inputs, targets)
    assert tree_rel_error(direction, ref_direction) <= 1e-9
    assert abs(float(value) - ref_value) <= 1e-12 * max(1.0, abs(ref_value))


# ----------------------------------------------------------------------------- init scale


def linear_outputs(model, x):
    """The output of every Linear of a Sequential (the pre-activations)."""
    outs = []
    for module in model.modules:
        x = jax.vmap(module)(x)
        if isinstance(module, Linear):
            outs.append(x)
    return outs


SIZES = [256] * 7  # one width: fewer random-number kernels to compile


@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh], ids=["relu", "tanh"])
def test_normalisation_free_mlp_keeps_unit_variance(activation):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((512, 256)))
    model = normalisation_free_mlp(SIZES, key=KEY, activation=activation)
    outs = linear_outputs(model, x)
    assert len(outs) == 6
    for out in outs:  # every pre-activation, and the output
        assert 0.5 <= np.var(out) <= 2.0, np.var(out)
    gain = activation_gain(activation)
    for i, layer in enumerate(model.modules[::2]):  # N(0, g^2 / fan_in), zero biases
        expected = (1.0 if i == 0 else gain) / math.sqrt(layer.weight.shape[1])
        assert np.std(np.asarray(layer.weight)) == pytest.approx(expected, rel=0.05)
        assert not np.any(np.asarray(layer.bias))
    if activation is jax.nn.relu:  # the uniform init of modopt.mlp shrinks the signal
        plain = linear_outputs(modopt.mlp(SIZES, key=KEY, activation=activation), x)
        assert np.var(plain[3]) < 0.5


def test_activation_gain():
    assert activation_gain(jax.nn.relu) == pytest.approx(math.sqrt(2), rel=1e-9)
    scipy_integrate = pytest.importorskip("scipy.integrate")
    second, _ = scipy_integrate.quad(
        lambda z: math.tanh(z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
        -math.inf, math.inf,
    )
    assert activation_gain(jnp.tanh) == pytest.approx(1 / math.sqrt(second), rel=1e-6)
    with pytest.raises(ValueError, match="non-zero"):
        activation_gain(jnp.zeros_like)


# ----------------------------------------------------------------------------- shapes


def test_sequential_shape_errors():
    conv = build(Conv2d, 1, 2, 3, key=KEY, in_shape=(6, 6, 1))
    relu = Pointwise(jax.nn.relu)
    linear = build(Linear, 50, 3, key=KEY)
    with pytest.raises(ValueError, match=r"Flatten produces .*\(72,\).*Linear expects .*\(50,"):
        Sequential([conv, relu, Flatten(), linear])
    with pytest.raises(ValueError, match=r"Conv2d cannot take an input of shape \(6, 6, 2\)"):
        Sequential([conv, build(Conv2d, 3, 2, 3, key=KEY), Flatten()])
    with pytest.raises(ValueError, match=r"Linear produces .*\(36,\).*Conv2d expects .*\(6, 6,"):
        Sequential([build(Linear, 4, 36, key=KEY), conv])
    model = eqx.filter_eval_shape(small_convnet, key=KEY)  # shapes only
    x = jax.ShapeDtypeStruct((28, 28, 1), jnp.float32)
    assert eqx.filter_eval_shape(lambda m, x: m(x), model, x).shape == (10,)
    assert model.modules[-1].in_shape == (7 * 7 * 16,)
    with pytest.raises(ValueError, match="too small"):
        small_convnet((3, 3, 1), key=KEY)

"""Convolution, pooling and flattening modules, and the networks of the NN benchmarks.

Every module here acts on **one** sample; images are ``(height, width, channels)``
(HWC). `Conv2d` is one block of the layerwise metric, like `modopt.Linear`; `Flatten`
and `AvgPool2d` have no parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._module import AbstractModule, Linear, Pointwise, Sequential, _check_mass

Padding = str | int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


def _pair(value, what: str, where: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{where}: {what} must be a positive int or a pair of them, got {value}.")
    return int(pair[0]), int(pair[1])


def _padding(padding) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """``"SAME"``, ``"VALID"`` or explicit ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"Conv2d: padding must be 'SAME' or 'VALID', got {padding!r}.")
        return padding.upper()
    if isinstance(padding, (int, np.integer)):
        padding = (padding, padding)
    pads = tuple((p, p) if isinstance(p, (int, np.integer)) else tuple(p) for p in padding)
    ok = len(pads) == 2 and all(
        len(p) == 2 and all(isinstance(v, (int, np.integer)) and v >= 0 for v in p) for p in pads
    )
    if not ok:
        raise ValueError(
            "Conv2d: padding must be 'SAME', 'VALID', an int, a pair (rows, columns) or "
            f"((top, bottom), (left, right)) of non-negative ints, got {padding!r}."
        )
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def _check_image(x, where: str, channels: int | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(
            f"{where} acts on one image of shape (height, width, channels), got an input "
            f"of shape {x.shape}; vmap over the batch."
        )
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(
            f"{where} expects {channels} input channels (the last axis), got an input of "
            f"shape {x.shape}."
        )


class Conv2d(AbstractModule):
    """A 2-D convolution (cross-correlation) ``y = conv(x, W) + b`` of one HWC image.

    ``W`` has shape ``(kernel_h, kernel_w, in_channels, out_channels)`` (HWIO) and ``b``
    shape ``(out_channels,)``; together they form one block. Computed by
    ``jax.lax.conv_general_dilated`` on a batch of one, with NHWC dimension numbers.
    ``"SAME"`` padding follows XLA: an output of size ``ceil(size / stride)``, with the
    odd padding pixel at the bottom/right.

    **Arguments:**

    - `in_channels`, `out_channels`: channels of ``x`` and ``y``.
    - `kernel_size`: an int or ``(kernel_h, kernel_w)``.
    - `stride`: an int or ``(stride_h, stride_w)``.
    - `padding`: ``"SAME"``, ``"VALID"``, an int, ``(rows, columns)`` or
      ``((top, bottom), (left, right))``.
    - `key`: a JAX PRNG key; ``W`` and ``b`` are uniform in +-1/sqrt(fan_in) with
      ``fan_in = kernel_h * kernel_w * in_channels`` (as `modopt.Linear`).
    - `use_bias`: whether there is a ``b``.
    - `mass`: the block's mass, or ``None`` for the global one.
    - `dtype`: the parameters' dtype (default: JAX's default float).
    - `in_shape`: optionally the full input shape ``(height, width, in_channels)``, so
      that `modopt.Sequential` can check the shapes that follow when the network is
      built; ``None`` (default) accepts any height and width.

    **Raises:** `ValueError` for sizes, strides or paddings that are not valid, and, when
    called, for an input that is not one image with `in_channels` channels or that is
    smaller than the kernel.
    """

    weight: Array
    bias: Array | None
    stride: tuple[int, int] = eqx.field(static=True)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)
    in_shape: tuple[int, int, int] | None = eqx.field(static=True)
    mass: float | None = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: Padding = "SAME",
        key: PRNGKeyArray,
        use_bias: bool = True,
        mass: float | None = None,
        dtype=None,
        in_shape: tuple[int, int, int] | None = None,
    ):
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(
                f"Conv2d needs positive channel counts, got in={in_channels}, "
                f"out={out_channels}."
            )
        kh, kw = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _pair(stride, "stride", "Conv2d")
        self.padding = _padding(padding)
        if in_shape is not None:
            in_shape = tuple(int(s) for s in in_shape)
            if len(in_shape) != 3 or in_shape[2] != int(in_channels) or min(in_shape) < 1:
                raise ValueError(
                    f"Conv2d: in_shape must be (height, width, {in_channels}), got {in_shape}."
                )
        self.in_shape = in_shape
        dtype = jnp.result_type(float) if dtype is None else dtype
        wkey, bkey = jr.split(key)
        bound = 1.0 / np.sqrt(kh * kw * int(in_channels))
        shape = (kh, kw, int(in_channels), int(out_channels))
        self.weight = jr.uniform(wkey, shape, dtype, minval=-bound, maxval=bound)
        self.bias = (
            jr.uniform(bkey, (int(out_channels),), dtype, minval=-bound, maxval=bound)
            if use_bias
            else None
        )
        self.mass = _check_mass(mass, "Conv2d")

    def __call__(self, x):
        _check_image(x, "Conv2d", self.weight.shape[2])
        dtype = jnp.result_type(x, self.weight)
        y = jax.lax.conv_general_dilated(
            x[None].astype(dtype),
            self.weight.astype(dtype),
            window_strides=self.stride,
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )[0]
        if 0 in y.shape:
            raise ValueError(
                f"Conv2d: an input of shape {x.shape} is smaller than the "
                f"{self.weight.shape[0]} x {self.weight.shape[1]} kernel with padding "
                f"{self.padding}."
            )
        return y if self.bias is None else y + self.bias


class Flatten(AbstractModule):
    """Flattens one sample to a vector (row-major, as ``jnp.ravel``); no parameters."""

    in_shape: None = eqx.field(static=True)
    mass: None = eqx.field(static=True)

    def __init__(self):
        self.in_shape = None
        self.mass = None

    def __call__(self, x):
        return jnp.ravel(x)


class AvgPool2d(AbstractModule):
    """Average pooling of one HWC image over ``window`` patches; no parameters.

    No padding: a trailing row or column that does not fill a window is dropped, so the
    output size is ``(size - window) // stride + 1``.

    **Arguments:** `window`, an int or ``(window_h, window_w)``; `stride`, the same,
    defaulting to `window` (non-overlapping windows).

    **Raises:** `ValueError` for an invalid window or stride, and, when called, for an
    input that is not one image or is smaller than the window.
    """

    window: tuple[int, int] = eqx.field(static=True)
    stride: tuple[int, int] = eqx.field(static=True)
    in_shape: None = eqx.field(static=True)
    mass: None = eqx.field(static=True)

    def __init__(self, window: int | tuple[int, int], stride: int | tuple[int, int] | None = None):
        self.window = _pair(window, "window", "AvgPool2d")
        self.stride = self.window if stride is None else _pair(stride, "stride", "AvgPool2d")
        self.in_shape = None
        self.mass = None

    def __call__(self, x):
        _check_image(x, "AvgPool2d")
        if x.shape[0] < self.window[0] or x.shape[1] < self.window[1]:
            raise ValueError(
                f"AvgPool2d: an input of shape {x.shape} is smaller than the "
                f"{self.window[0]} x {self.window[1]} window."
            )
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        # a concrete zero: JAX then uses its differentiable windowed sum
        total = jax.lax.reduce_window(
            x, np.zeros((), x.dtype), jax.lax.add, (*self.window, 1), (*self.stride, 1), "VALID"
        )
        return total / (self.window[0] * self.window[1])


def activation_gain(activation: Callable[[Array], Array]) -> float:
    """``1 / sqrt(E[activation(z)^2])`` for ``z ~ N(0, 1)``: ``sqrt(2)`` for relu.

    Computed by the trapezoidal rule on [-12, 12] (error below 1e-6 for the usual
    activations), in float64 when JAX has 64-bit floats enabled and float32 otherwise.

    **Raises:** `ValueError` when ``E[activation(z)^2]`` is zero or not finite.
    """
    z, dz = np.linspace(-12.0, 12.0, 24001, retstep=True)
    with jax.ensure_compile_time_eval():  # concrete even while a model is built under jit
        phi = np.asarray(activation(jnp.asarray(z)), np.float64)
    density = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
    f = density * phi**2
    second_moment = float(dz * (np.sum(f) - 0.5 * (f[0] + f[-1])))
    if not (np.isfinite(second_moment) and second_moment > 0):
        raise ValueError(
            f"activation_gain: E[activation(z)^2] = {second_moment} for z ~ N(0, 1); the "
            "activation must be non-zero and finite on a standard normal input."
        )
    return float(1.0 / np.sqrt(second_moment))


def normalisation_free_mlp(
    sizes: Sequence[int],
    *,
    key: PRNGKeyArray,
    activation: Callable[[Array], Array] = jax.nn.relu,
    gain: float | None = None,
    dtype=None,
) -> Sequential:
    """An MLP without normalisation layers, scaled to keep unit variance at init.

    The layers are ``Linear, activation, ..., Linear`` (no final activation), as
    `modopt.mlp`, with zero biases and weights drawn from ``N(0, g^2 / fan_in)``:
    ``g = 1`` for the first layer and ``g = gain`` for every later layer (each follows
    an activation), where ``gain = 1 / sqrt(E[activation(z)^2])`` for ``z ~ N(0, 1)``
    (`activation_gain`; ``sqrt(2)`` for relu, i.e. He initialisation). Then, for inputs
    whose entries have unit second moment (e.g. standardised data), every Linear's
    output -- every pre-activation and the final output -- has unit second moment per
    unit at initialisation, in the limit of wide layers: by induction each
    pre-activation is close to ``N(0, 1)``, so ``E[activation^2] = 1 / gain^2``, which
    the next layer's weights multiply back by ``gain^2``.

    **Arguments:**

    - `sizes`: such as ``[784, 256, 256, 10]``.
    - `key`: a JAX PRNG key.
    - `activation`: the elementwise activation.
    - `gain`: overrides the computed gain of the layers after an activation.
    - `dtype`: the parameters' dtype (default: JAX's default float).

    **Returns:** a `modopt.Sequential` of `modopt.Linear` and `modopt.Pointwise`.

    **Raises:** `ValueError` for fewer than two sizes or a gain that is not positive.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"normalisation_free_mlp needs at least two sizes, got {sizes}.")
    gain = activation_gain(activation) if gain is None else float(gain)
    if not gain > 0:
        raise ValueError(f"normalisation_free_mlp: gain must be positive, got {gain}.")
    keys = jr.split(key, len(sizes) - 1)
    layers: list[AbstractModule] = []
    for i, k in enumerate(keys):
        init_key, weight_key = jr.split(k)
        layer = Linear(sizes[i], sizes[i + 1], key=init_key, dtype=dtype)
        scale = (1.0 if i == 0 else gain) / np.sqrt(sizes[i])
        weight = scale * jr.normal(weight_key, layer.weight.shape, layer.weight.dtype)
        layer = eqx.tree_at(
            lambda m: (m.weight, m.bias), layer, (weight, jnp.zeros_like(layer.bias))
        )
        layers.append(layer)
        if i < len(keys) - 1:
            layers.append(Pointwise(activation))
    return Sequential(layers)


def small_convnet(
    in_shape: tuple[int, int, int] = (28, 28, 1),
    classes: int = 10,
    *,
    key: PRNGKeyArray,
    channels: Sequence[int] = (8, 16),
    kernel_size: int = 3,
    activation: Callable[[Array], Array] = jax.nn.relu,
    dtype=None,
) -> Sequential:
    """A small convolutional classifier of one HWC image.

    For every entry of `channels` a stage ``Conv2d(kernel_size, "SAME"), activation,
    AvgPool2d(2)``, then `Flatten` and a `modopt.Linear` to `classes` logits; with the
    default two stages, ``Conv-relu-AvgPool-Conv-relu-AvgPool-Flatten-Linear``. Each
    pooling halves the height and width (rounding down). Feed MNIST as
    ``x.reshape(-1, 28, 28, 1)``.

    **Arguments:**

    - `in_shape`: ``(height, width, channels)`` of one input.
    - `classes`: the number of outputs.
    - `key`: a JAX PRNG key.
    - `channels`: the output channels of the convolutions.
    - `kernel_size`: the convolutions' kernel size.
    - `activation`: the elementwise activation.
    - `dtype`: the parameters' dtype (default: JAX's default float).

    **Returns:** a `modopt.Sequential`.

    **Raises:** `ValueError` for an `in_shape` that is not ``(height, width, channels)``
    or is too small for the poolings, or empty `channels`.
    """
    in_shape = tuple(int(s) for s in in_shape)
    channels = [int(c) for c in channels]
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(
            f"small_convnet: in_shape must be (height, width, channels), got {in_shape}."
        )
    if not channels:
        raise ValueError("small_convnet needs at least one entry in channels.")
    side = min(in_shape[:2])
    if side < 2 ** len(channels):
        raise ValueError(
            f"small_convnet: an input of shape {in_shape} is too small for "
            f"{len(channels)} 2 x 2 poolings (each halves height and width)."
        )
    keys = jr.split(key, len(channels) + 1)
    layers: list[AbstractModule] = []
    previous = in_shape[2]
    for i, (k, c) in enumerate(zip(keys, channels)):
        layers.append(
            Conv2d(previous, c, kernel_size, key=k, dtype=dtype,
                   in_shape=in_shape if i == 0 else None)
        )
        layers += [Pointwise(activation), AvgPool2d(2)]
        previous = c
    layers.append(Flatten())
    features = jax.eval_shape(Sequential(layers), jax.ShapeDtypeStruct(in_shape, jnp.float32))
    layers.append(Linear(features.shape[0], int(classes), key=keys[-1], dtype=dtype))
    return Sequential(layers)

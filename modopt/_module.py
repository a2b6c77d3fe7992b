"""Riemannian modules and their composition (DESIGN section 1)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray


class AbstractModule(eqx.Module):
    """A Riemannian module: a smooth map ``f(x; w)`` with trainable arrays ``w``.

    The trainable arrays are the module's inexact-array leaves. A leaf module (one that
    is not `Sequential`, `Parallel` or `Group`) forms one block of the layerwise metric;
    its diagonal mass is `mass` when that is set, and otherwise the ``mass`` given to
    `riemannian_gradient`.

    Subclasses implement `__call__` for **one** sample and declare `in_shape` and
    `out_shape` (``None`` where the module accepts any shape, as `Pointwise` does).
    """

    in_shape: eqx.AbstractVar[tuple[int, ...] | None]
    mass: eqx.AbstractVar[float | None]

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array:
        """Apply the module to one sample."""

    def __matmul__(self, other: AbstractModule) -> Sequential:
        """``m1 @ m0`` is the sequential composition that applies ``m0`` first."""
        if not isinstance(other, AbstractModule):
            return NotImplemented
        return Sequential([other, self])


def _describe(module) -> str:
    return type(module).__name__


def _out_struct(module, in_struct, where: str):
    try:
        return jax.eval_shape(module, in_struct)
    except Exception as error:  # the module's own error says what went wrong
        shape = jax.tree.map(lambda s: s.shape, in_struct)
        raise ValueError(
            f"{where}: {_describe(module)} cannot take an input of shape {shape} "
            f"({type(error).__name__}: {error})."
        ) from None


def _check_join(prev, prev_out, module, where: str) -> None:
    if module.in_shape is not None and prev_out is not None:
        got = tuple(prev_out.shape)
        if got != tuple(module.in_shape):
            raise ValueError(
                f"{where}: {_describe(prev)} produces outputs of shape {got} but "
                f"{_describe(module)} expects inputs of shape {tuple(module.in_shape)}."
            )


def _leading_shape(leading, shape):
    """`shape` if the `leading` modules (which declare no input shape) map inputs of that
    shape to that shape (e.g. `Pointwise`), so that it is also the composition's input
    shape; ``None`` (unknown) when they change it or cannot take it."""
    struct = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    try:
        for module in leading:
            struct = jax.eval_shape(module, struct)
    except Exception:  # noqa: BLE001 - any failure means the shape is not theirs
        return None
    return tuple(shape) if getattr(struct, "shape", None) == tuple(shape) else None


class Sequential(AbstractModule):
    """Sequential composition: ``Sequential([m0, m1, m2])(x) == m2(m1(m0(x)))``.

    Shapes are checked here, when the composition is built: a mismatch raises a
    `ValueError` that names both modules and both shapes.

    **Arguments:**

    - `modules`: the modules in the order they are applied.

    **Raises:** `ValueError` for an empty list, a non-module entry, or a shape mismatch.
    """

    modules: tuple[AbstractModule, ...]
    in_shape: tuple[int, ...] | None = eqx.field(static=True)
    mass: None = eqx.field(static=True)

    def __init__(self, modules: Sequence[AbstractModule]):
        modules = tuple(modules)
        if not modules:
            raise ValueError("Sequential needs at least one module.")
        for module in modules:
            if not isinstance(module, AbstractModule):
                raise TypeError(
                    f"Sequential takes modopt modules, got {type(module).__name__}; "
                    "wrap plain functions in modopt.Pointwise."
                )
        self.modules = modules
        self.mass = None
        first = next((i for i, m in enumerate(modules) if m.in_shape is not None), None)
        self.in_shape = None if first is None else _leading_shape(modules[:first],
                                                                  modules[first].in_shape)
        if first is None:
            return
        struct = jax.ShapeDtypeStruct(modules[first].in_shape, jnp.float32)
        for prev, module in zip(modules[first:], modules[first + 1 :]):
            struct = _out_struct(prev, struct, "Sequential")
            _check_join(prev, struct, module, "Sequential")

    def __call__(self, x):
        return self.apply_children(x, lambda i, module, x: module(x))

    def apply_children(self, x, call):
        """Evaluate with ``call(index, child, input)`` in place of ``child(input)``."""
        for i, module in enumerate(self.modules):
            x = call(i, module, x)
        return x


class Parallel(AbstractModule):
    """Parallel composition: the cartesian product of modules.

    Two layouts of inputs and outputs:

    - ``layout="concat"`` (default): the input is one vector, the concatenation
      ``[x_0, x_1, ..., x_k]`` of the modules' inputs in order (module ``i`` reads the
      ``in_sizes[i]`` entries after those of modules ``0..i-1``); the output is the
      concatenation ``[f_0(x_0), ..., f_k(x_k)]`` of their (flattened) outputs.
      Each module needs a known 1-D `in_shape`, or give `in_sizes`.
    - ``layout="tuple"``: the input is a tuple ``(x_0, ..., x_k)`` and the output is
      the tuple ``(f_0(x_0), ..., f_k(x_k))``.

    Each module keeps its own blocks; parameters do not interact.

    **Raises:** `ValueError` when a layout cannot be determined.
    """

    modules: tuple[AbstractModule, ...]
    layout: Literal["concat", "tuple"] = eqx.field(static=True)
    in_sizes: tuple[int, ...] | None = eqx.field(static=True)
    in_shape: tuple[int, ...] | None = eqx.field(static=True)
    mass: None = eqx.field(static=True)

    def __init__(
        self,
        modules: Sequence[AbstractModule],
        *,
        layout: Literal["concat", "tuple"] = "concat",
        in_sizes: Sequence[int] | None = None,
    ):
        modules = tuple(modules)
        if not modules:
            raise ValueError("Parallel needs at least one module.")
        if layout not in ("concat", "tuple"):
            raise ValueError(f"Parallel layout must be 'concat' or 'tuple', got {layout!r}.")
        self.modules = modules
        self.layout = layout
        self.mass = None
        if layout == "tuple":
            self.in_sizes = None
            self.in_shape = None
            return
        if in_sizes is None:
            sizes = []
            for i, module in enumerate(modules):
                if module.in_shape is None or len(module.in_shape) != 1:
                    raise ValueError(
                        f"Parallel(layout='concat'): module {i} ({_describe(module)}) "
                        f"has in_shape {module.in_shape}; a 1-D input shape is needed, "
                        "so pass in_sizes=[...] or use layout='tuple'."
                    )
                sizes.append(module.in_shape[0])
            in_sizes = sizes
        if len(in_sizes) != len(modules):
            raise ValueError(
                f"Parallel: {len(in_sizes)} in_sizes for {len(modules)} modules."
            )
        for i, (module, size) in enumerate(zip(modules, in_sizes)):
            if module.in_shape is not None and tuple(module.in_shape) != (size,):
                raise ValueError(
                    f"Parallel: in_sizes[{i}] = {size} but module {i} "
                    f"({_describe(module)}) expects inputs of shape {module.in_shape}."
                )
        self.in_sizes = tuple(int(s) for s in in_sizes)
        self.in_shape = (sum(self.in_sizes),)

    def __call__(self, x):
        return self.apply_children(x, lambda i, module, x: module(x))

    def apply_children(self, x, call):
        """Evaluate with ``call(index, child, input)`` in place of ``child(input)``."""
        if self.layout == "tuple":
            if not isinstance(x, (tuple, list)) or len(x) != len(self.modules):
                raise ValueError(
                    f"Parallel(layout='tuple') needs a tuple of {len(self.modules)} inputs."
                )
            return tuple(call(i, m, xi) for i, (m, xi) in enumerate(zip(self.modules, x)))
        if x.shape != self.in_shape:
            raise ValueError(
                f"Parallel expects inputs of shape {self.in_shape}, got {x.shape}."
            )
        pieces, start = [], 0
        for i, (module, size) in enumerate(zip(self.modules, self.in_sizes)):
            pieces.append(jnp.ravel(call(i, module, x[start : start + size])))
            start += size
        return jnp.concatenate(pieces)


class Group(AbstractModule):
    """Wraps a module so that all of its trainable arrays form **one** block.

    **Arguments:**

    - `module`: any modopt module (often a `Sequential`).
    - `mass`: the block's mass, or ``None`` for the global one.
    """

    module: AbstractModule
    in_shape: tuple[int, ...] | None = eqx.field(static=True)
    mass: float | None = eqx.field(static=True)

    def __init__(self, module: AbstractModule, *, mass: float | None = None):
        if not isinstance(module, AbstractModule):
            raise TypeError(f"Group takes a modopt module, got {type(module).__name__}.")
        self.module = module
        self.in_shape = module.in_shape
        self.mass = _check_mass(mass, "Group")

    def __call__(self, x):
        return self.module(x)


def _check_mass(mass, where):
    if mass is not None and not (float(mass) > 0):
        raise ValueError(f"{where}: mass must be a positive float or None, got {mass}.")
    return None if mass is None else float(mass)


class Linear(AbstractModule):
    """The affine atom ``y = W x + b``, with ``W`` of shape ``(out, in)``.

    ``W`` and ``b`` form one block. Its Jacobian has per-sample Kronecker structure,
    which `riemannian_gradient` exploits (see `modopt.Reverse`).

    **Arguments:**

    - `in_features`, `out_features`: sizes of x and y.
    - `key`: a JAX PRNG key for the initial weights (uniform in +-1/sqrt(in)).
    - `use_bias`: whether there is a ``b``.
    - `mass`: the block's mass, or ``None`` for the global one.
    - `dtype`: the parameters' dtype (default: JAX's default float).
    """

    weight: Array
    bias: Array | None
    in_shape: tuple[int, ...] = eqx.field(static=True)
    mass: float | None = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        key: PRNGKeyArray,
        use_bias: bool = True,
        mass: float | None = None,
        dtype=None,
    ):
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(
                f"Linear needs positive sizes, got in={in_features}, out={out_features}."
            )
        dtype = jnp.result_type(float) if dtype is None else dtype
        wkey, bkey = jr.split(key)
        bound = 1.0 / jnp.sqrt(in_features)
        self.weight = jr.uniform(
            wkey, (out_features, in_features), dtype, minval=-bound, maxval=bound
        )
        self.bias = (
            jr.uniform(bkey, (out_features,), dtype, minval=-bound, maxval=bound)
            if use_bias
            else None
        )
        self.in_shape = (int(in_features),)
        self.mass = _check_mass(mass, "Linear")

    def __call__(self, x):
        y = self.weight @ x
        return y if self.bias is None else y + self.bias


class Pointwise(AbstractModule):
    """An elementwise map with no parameters, e.g. ``Pointwise(jax.nn.relu)``."""

    fn: Callable[[Array], Array] = eqx.field(static=True)
    in_shape: None = eqx.field(static=True)
    mass: None = eqx.field(static=True)

    def __init__(self, fn: Callable[[Array], Array]):
        if not callable(fn):
            raise TypeError(f"Pointwise takes a function, got {type(fn).__name__}.")
        self.fn = fn
        self.in_shape = None
        self.mass = None

    def __call__(self, x):
        return self.fn(x)


def mlp(
    sizes: Sequence[int],
    *,
    key: PRNGKeyArray,
    activation: Callable[[Array], Array] = jax.nn.relu,
    dtype=None,
) -> Sequential:
    """A multilayer perceptron ``Linear, activation, ..., Linear`` (no final activation).

    **Arguments:** `sizes` such as ``[64, 128, 128, 10]``; `key`; `activation`; `dtype`.
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least two sizes, got {sizes}.")
    keys = jr.split(key, len(sizes) - 1)
    layers: list[AbstractModule] = []
    for i, k in enumerate(keys):
        layers.append(Linear(sizes[i], sizes[i + 1], key=k, dtype=dtype))
        if i < len(keys) - 1:
            layers.append(Pointwise(activation))
    return Sequential(layers)


SENSITIVITY_MODES = ("auto", "forward", "reverse")


class AbstractSystemModule(AbstractModule):
    """A module whose map can be differentiated in only one mode at a time.

    A Diffrax solve with a reverse adjoint cannot be pushed forward (it is a
    ``custom_vjp``), and one with ``diffrax.ForwardMode()`` cannot be pulled back. Such a
    module declares `sensitivity`:

    - ``"auto"`` (default): the engine picks per call, by shape (see `AutoJacobian`):
      forward mode when the model has fewer parameters than output rows per pass.
      Called outside the engine, an ``"auto"`` module is reverse-differentiable.
    - ``"forward"`` or ``"reverse"``: forced by the user.

    Subclasses are dataclass-like (no custom ``__init__``), so that
    `with_sensitivity` can rebuild them with another mode.
    """

    sensitivity: eqx.AbstractVar[str]

    def __check_init__(self):
        if self.sensitivity not in SENSITIVITY_MODES:
            raise ValueError(
                f"{type(self).__name__}: sensitivity must be one of {SENSITIVITY_MODES}, "
                f"got {self.sensitivity!r}."
            )

    def with_sensitivity(self, mode: str):
        """A copy differentiated in `mode` (``"forward"`` or ``"reverse"``)."""
        return dataclasses.replace(self, sensitivity=mode)


def _is_system(node) -> bool:
    return isinstance(node, AbstractSystemModule)


def forced_sensitivities(model) -> set[str]:
    """The modes that modules of `model` force (``"auto"`` ones are left out)."""
    nodes = jax.tree.leaves(model, is_leaf=_is_system)
    return {n.sensitivity for n in nodes if _is_system(n) and n.sensitivity != "auto"}


def has_auto_systems(model) -> bool:
    """Whether `model` holds dynamical-system modules left on ``"auto"``."""
    nodes = jax.tree.leaves(model, is_leaf=_is_system)
    return any(_is_system(n) and n.sensitivity == "auto" for n in nodes)


def resolve_sensitivity(model, mode: str):
    """`model` with every ``sensitivity="auto"`` module set to `mode`."""
    return jax.tree.map(
        lambda n: n.with_sensitivity(mode) if _is_system(n) and n.sensitivity == "auto" else n,
        model,
        is_leaf=_is_system,
    )

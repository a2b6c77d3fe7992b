"""K-FAC (kfac-jax) on modopt MLP classifiers: a thin adapter for the benchmarks.

kfac-jax is in the ``tests`` extra (``pip install modopt[tests]``); this module imports
it lazily, so ``import modopt.nn.kfac`` works without it.

Two facts about kfac-jax shape the adapter:

- **Layer detection.** kfac-jax finds layers by pattern-matching the traced graph, and
  its dense pattern is ``x @ w + b`` with ``w`` of shape ``(in, out)``. modopt's
  `Linear` computes ``W x`` with ``W`` of shape ``(out, in)`` for one sample; traced
  under ``vmap`` that does not match, and kfac-jax silently falls back to *diagonal*
  curvature blocks (its log then lists ``NaiveDiagonal`` blocks for every weight), which
  is not K-FAC. So the model is converted once to `KFACMLP`, kfac-jax's layout, and
  every dense layer is registered by hand with ``kfac_jax.register_dense``: the
  Kronecker-factored blocks follow from the module structure, nothing is guessed.
- **jax >= 0.9.2.** kfac-jax 0.0.8 (the latest release) evaluates traced equations with
  ``subfuns, params = primitive.get_bind_params(params)``; since jax 0.9.2 that method
  returns the parameters only, and the first ``Optimizer.step`` fails with
  ``ValueError: too many values to unpack (expected 2)`` (or "not enough values").
  kfac-jax's main branch fixed this (``eval_jaxpr_eqn`` in ``tag_graph_matcher.py``
  checks ``jax_version >= (0, 9, 2)``); `kfac_optimizer` applies the same fix to the
  installed kfac-jax when, and only when, a probe shows the old function failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array

from .._module import Linear, Pointwise, Sequential
from ..losses import softmax_cross_entropy


def _import_kfac():
    try:
        import kfac_jax
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "K-FAC needs kfac-jax: pip install 'modopt[tests]' (or pip install kfac-jax)."
        ) from error
    _backport_bind_params(kfac_jax)
    return kfac_jax


def _backport_bind_params(kfac_jax) -> None:
    """Apply kfac-jax's own fix for jax >= 0.9.2 if the installed version lacks it."""
    from kfac_jax._src import tag_graph_matcher as tgm

    if getattr(tgm.eval_jaxpr_eqn, "_modopt_backport", False):
        return
    eqn = jax.make_jaxpr(lambda x: x + 1)(1.0).eqns[0]
    try:
        tgm.eval_jaxpr_eqn(eqn, [jnp.asarray(1.0)])
        return  # the installed kfac-jax works with this jax
    except ValueError:
        pass
    user_context = jax.extend.source_info_util.user_context

    def eval_jaxpr_eqn(eqn, in_values):
        bind_params = eqn.primitive.get_bind_params(eqn.params)
        with user_context(eqn.source_info.traceback):
            output = eqn.primitive.bind(*in_values, **bind_params)
        return output if isinstance(output, list) else [output]

    eval_jaxpr_eqn._modopt_backport = True
    tgm.eval_jaxpr_eqn = eval_jaxpr_eqn


class KFACMLP(eqx.Module):
    """An MLP in kfac-jax's layout: ``y = x @ w + b`` with ``w`` of shape ``(in, out)``.

    Built from a modopt `Sequential` of `Linear` and `Pointwise` (such as `modopt.mlp`)
    by `from_modopt`; `to_modopt` converts back. Calling it on one sample gives the same
    output as the modopt model it came from.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array | None, ...]
    plan: tuple[int | Callable, ...] = eqx.field(static=True)

    @classmethod
    def from_modopt(cls, model: Sequential) -> KFACMLP:
        """Convert (copying every array, so that kfac-jax may donate them)."""
        if not isinstance(model, Sequential):
            raise TypeError(
                f"K-FAC takes a modopt Sequential of Linear and Pointwise modules (such as "
                f"modopt.mlp), got {type(model).__name__}."
            )
        weights, biases, plan = [], [], []
        for module in model.modules:
            if isinstance(module, Linear):
                plan.append(len(weights))
                weights.append(jnp.transpose(module.weight))
                biases.append(None if module.bias is None else jnp.copy(module.bias))
            elif isinstance(module, Pointwise):
                plan.append(module.fn)
            else:
                raise TypeError(
                    f"K-FAC supports Linear and Pointwise modules only, got "
                    f"{type(module).__name__}."
                )
        return cls(tuple(weights), tuple(biases), tuple(plan))

    def to_modopt(self, like: Sequential) -> Sequential:
        """The modopt model with the structure of `like` and these parameters."""
        linears = [i for i, m in enumerate(like.modules) if isinstance(m, Linear)]
        if len(linears) != len(self.weights):
            raise ValueError(
                f"`like` has {len(linears)} Linear modules, this KFACMLP {len(self.weights)}."
            )
        modules = list(like.modules)
        for j, i in enumerate(linears):
            modules[i] = eqx.tree_at(
                lambda m: (m.weight, m.bias), modules[i], (self.weights[j].T, self.biases[j]),
                is_leaf=lambda x: x is None,
            )
        return Sequential(modules)

    def batched(self, x: Array, register: bool = False) -> Array:
        """Outputs of a batch ``x`` of shape ``(batch, in)``; `register` tags every dense
        layer for kfac-jax (only inside the loss that kfac-jax differentiates)."""
        kfac_jax = _import_kfac() if register else None
        for item in self.plan:
            if callable(item):
                x = item(x)
                continue
            w, b = self.weights[item], self.biases[item]
            y = x @ w if b is None else x @ w + b
            if register:
                y = kfac_jax.register_dense(y, x, w, b)
            x = y
        return x

    def __call__(self, x: Array) -> Array:
        return self.batched(x[None])[0]


def kfac_optimizer(
    loss_fn: Callable = softmax_cross_entropy,
    *,
    learning_rate: float | None = None,
    momentum: float | None = None,
    initial_damping: float = 1.0,
    adaptive_damping: bool = True,
    l2_reg: float = 0.0,
    dtype=None,
    **options: Any,
):
    """A ``kfac_jax.Optimizer`` for a `KFACMLP` classifier trained with `loss_fn`.

    **Arguments:**

    - `loss_fn`: ``loss(logits, labels)``, the mean over the batch of the softmax
      cross-entropy (kfac-jax's registered loss; the optimizer assumes a batch mean).
    - `learning_rate`, `momentum`: constants; ``None`` uses kfac-jax's adaptive learning
      rate / momentum (from the quadratic model; its authors recommend them for full-batch
      training only, and a fixed momentum of 0.9 with a learning-rate schedule for
      stochastic training).
    - `initial_damping`: the damping (initial value if `adaptive_damping`).
    - `adaptive_damping`: Levenberg-Marquardt adaptation of the damping.
    - `l2_reg`: weight decay ``l2_reg / 2 * |params|^2``, added to the loss as kfac-jax
      requires.
    - `dtype`: the parameters' dtype. The learning rate, momentum and damping are passed
      to kfac-jax as arrays of this dtype: with ``jax_enable_x64`` on, float64 scalars
      make kfac-jax 0.0.8's step fail on float32 parameters ("cond branches must have
      equal output types"). Its initial state also holds the damping as float64 then;
      `make_kfac_step` casts it (do the same if you call ``init`` yourself).
    - `options`: any other ``kfac_jax.Optimizer`` keyword (e.g. ``inverse_update_period``,
      ``curvature_ema``, ``damping_adaptation_interval``).

    **Returns:** the optimizer (its ``step`` jits itself; do not call it inside ``jit``).
    """
    kfac_jax = _import_kfac()

    def loss(params: KFACMLP, batch):
        x, y = batch
        logits = params.batched(x, register=True)
        kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        value = loss_fn(logits, y)
        if l2_reg:
            value = value + 0.5 * l2_reg * kfac_jax.utils.inner_product(params, params)
        return value

    as_array = lambda value: jnp.asarray(value, dtype)
    schedule = lambda value: None if value is None else (lambda step: as_array(value))
    kwargs = dict(
        value_and_grad_func=jax.value_and_grad(loss),
        l2_reg=l2_reg,
        use_adaptive_learning_rate=learning_rate is None,
        learning_rate_schedule=schedule(learning_rate),
        use_adaptive_momentum=momentum is None,
        momentum_schedule=schedule(momentum),
        use_adaptive_damping=adaptive_damping,
        damping_schedule=None if adaptive_damping else schedule(initial_damping),
        initial_damping=as_array(initial_damping) if adaptive_damping else None,
        num_burnin_steps=0,
        multi_device=False,
        # Every layer is registered by hand (`KFACMLP.batched`).
        use_automatic_registration=False,
    )
    kwargs.update(options)
    return kfac_jax.Optimizer(**kwargs)


class KFACState(NamedTuple):
    """State of `make_kfac_step`: kfac-jax's state, a pool of PRNG keys, the step count."""

    opt_state: Any
    keys: np.ndarray
    count: int


def make_kfac_step(example, *, seed: int = 0, loss_fn=softmax_cross_entropy, **kwargs):
    """``(init(model) -> state, step(model, state, x, y) -> (model, state, loss))``.

    `example` is a batch ``(x, y)`` of the size every step will use (kfac-jax traces
    with it); `kwargs` go to `kfac_optimizer`. `step` takes a modopt MLP (converted
    once) or a `KFACMLP` and returns a `KFACMLP`, which evaluates like the modopt model.
    kfac-jax donates the parameters and the state to its step: do not reuse a state
    after passing it to `step`.
    """
    example = tuple(jnp.asarray(a) for a in example)
    kwargs.setdefault("dtype", example[0].dtype)
    opt = kfac_optimizer(loss_fn, **kwargs)

    def as_kfac(model):
        return model if isinstance(model, KFACMLP) else KFACMLP.from_modopt(model)

    def init(model) -> KFACState:
        params = as_kfac(model)
        key_init, key_steps = jr.split(jr.PRNGKey(seed))
        opt_state = opt.init(params, key_init, example)
        # kfac-jax 0.0.8 creates the damping with ``dtype=float`` (float64 under
        # ``jax_enable_x64``), which breaks its step on float32 parameters; keep it in
        # the parameters' dtype.
        opt_state.damping = opt_state.damping.astype(kwargs["dtype"])
        return KFACState(opt_state, np.asarray(jr.split(key_steps, 4096)), 0)

    def step(model, state: KFACState, x, y):
        params = as_kfac(model)
        key = state.keys[state.count % len(state.keys)]
        params, opt_state, stats = opt.step(
            params, state.opt_state, key, batch=(x, y), global_step_int=state.count
        )
        return params, KFACState(opt_state, state.keys, state.count + 1), stats["loss"]

    # kfac-jax compiles one step per combination of its static flags; damping adaptation
    # runs every `damping_adaptation_interval` steps (default 5), so warming up on that
    # many steps plus one compiles every variant.
    step.warmup_steps = int(kwargs.get("damping_adaptation_interval", 5)) + 1
    return init, step

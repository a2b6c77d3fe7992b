"""Brayton-Moser circuits: a mixed potential and two metrics (DESIGN section 7).

The state is the inductor currents ``i`` and the capacitor voltages ``v``; the circuit
is described by its *mixed potential* ``P(i, v; u, w)`` and by the inductance matrix
``L(i)`` and the capacitance matrix ``C(v)``:

    L(i) di/dt = -dP/di,        C(v) dv/dt = dP/dv.

``P`` is the current potential (resistor content) minus the voltage potential plus the
coupling of currents and voltages; Brayton and Moser (1964) write it with the opposite
sign. A series R-L-C loop driven by a source ``E`` has ``P = R i^2 / 2 - E i + v i``,
which gives ``L di/dt = E - R i - v`` and ``C dv/dt = i``. The dynamics are a saddle
point gradient flow: descent in the currents with metric ``L``, ascent in the voltages
with metric ``C``.

Besides the module itself this file provides

- `EnergyMetric` / `energy_metric`: the output metric that weighs current outputs by
  ``L`` and voltage outputs by ``C`` (the circuit's energy norm);
- `stability_test`: Brayton and Moser's first stability theorem checked on a region;
- `power_balance`: the identity ``dP/dt = -i'^T L i' + v'^T C v'`` along a trajectory.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._module import AbstractSystemModule
from ..metrics import AbstractOutputMetric, SampleFactor, _psd_root
from ._common import Constant, SystemSolution, as_times, params_dtype
from .ode import ODEModule

# ----------------------------------------------------------------------------- helpers


def state_observable(t, i, v, u, params):
    """The default observable: the state, ``concatenate([i, v])``."""
    return jnp.concatenate([i, v])


def as_matrix_fn(value):
    """A callable ``(x, params) -> matrix``: callables pass, arrays become `Constant`."""
    return value if callable(value) else Constant(value)


class _ConstantPair:
    """A fixed initial state ``(i0, v0)`` as hashable static data."""

    def __init__(self, i0, v0):
        self.i0 = Constant(np.atleast_1d(np.asarray(i0, dtype=np.float64)))
        self.v0 = Constant(np.atleast_1d(np.asarray(v0, dtype=np.float64)))

    def __call__(self, u, params):
        return self.i0(u, params), self.v0(u, params)

    def __hash__(self):
        return hash((self.i0, self.v0))

    def __eq__(self, other):
        return isinstance(other, _ConstantPair) and (self.i0, self.v0) == (other.i0, other.v0)

    def __repr__(self):
        return f"Constant(i0={self.i0.value.tolist()}, v0={self.v0.value.tolist()})"


def as_pair_fn(value):
    """The initial state as ``(u, params) -> (i0, v0)``: a fixed pair becomes constant."""
    if callable(value):
        return value
    try:
        i0, v0 = value
    except (TypeError, ValueError):
        raise ValueError(
            "BraytonMoser: initial_state must be a pair (i0, v0) of arrays or a function "
            "(u, params) -> (i0, v0)."
        ) from None
    return _ConstantPair(i0, v0)


def square_matrix(value, n: int, name: str) -> Array:
    """`value` as an ``n x n`` matrix: a scalar is ``value * I``, a vector a diagonal.

    **Raises:** `ValueError` for any other shape.
    """
    m = jnp.asarray(value)
    if m.ndim == 0:
        return m * jnp.eye(n, dtype=m.dtype)
    if m.ndim == 1 and m.shape[0] == n:
        return jnp.diag(m)
    if m.shape == (n, n):
        return m
    raise ValueError(
        f"BraytonMoser: the {name} must be a scalar, a length-{n} diagonal or an "
        f"{n} x {n} matrix, got shape {m.shape}."
    )


def _check_vector(x, name: str) -> Array:
    if jnp.ndim(x) != 1:
        raise ValueError(
            f"BraytonMoser: the {name} must be a 1-D array, got shape {jnp.shape(x)}."
        )
    return x


def _scalar_potential(potential):
    def wrapped(i, v, u, params):
        p = potential(i, v, u, params)
        if jnp.shape(p) != ():
            raise ValueError(
                f"BraytonMoser: the potential must return a scalar, got shape {jnp.shape(p)}."
            )
        return p

    return wrapped


@dataclasses.dataclass(frozen=True)
class _Field:
    """``(t, (i, v), u, params) -> (di/dt, dv/dt)``, hashable (static data only)."""

    potential: Callable
    inductance: Callable
    capacitance: Callable

    def gradients(self, i, v, u, params):
        return jax.grad(_scalar_potential(self.potential), argnums=(0, 1))(i, v, u, params)

    def matrices(self, i, v, params):
        lmat = square_matrix(self.inductance(i, params), i.shape[0], "inductance")
        cmat = square_matrix(self.capacitance(v, params), v.shape[0], "capacitance")
        return lmat, cmat

    def rates(self, i, v, u, params):
        p_i, p_v = self.gradients(i, v, u, params)
        lmat, cmat = self.matrices(i, v, params)
        return jnp.linalg.solve(lmat, -p_i), jnp.linalg.solve(cmat, p_v)

    def __call__(self, t, x, u, params):
        i, v = x
        return self.rates(i, v, u, params)


@dataclasses.dataclass(frozen=True)
class _PairObservable:
    """``(t, (i, v), u, params) -> observable(t, i, v, u, params)``, hashable."""

    observable: Callable

    def __call__(self, t, x, u, params):
        return self.observable(t, x[0], x[1], u, params)


@dataclasses.dataclass(frozen=True)
class _CheckedInitialState:
    initial_state: Callable

    def __call__(self, u, params):
        state = self.initial_state(u, params)
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError(
                "BraytonMoser: initial_state(u, params) must return a pair (i0, v0)."
            )
        return (
            _check_vector(jnp.asarray(state[0]), "initial current i0"),
            _check_vector(jnp.asarray(state[1]), "initial voltage v0"),
        )


# ----------------------------------------------------------------------------- module


class BraytonMoser(AbstractSystemModule):
    """A circuit in Brayton-Moser form, observed at fixed times.

    For one input ``u`` (a source value, a drive amplitude; any pytree the potential
    understands) the module integrates

        L(i) di/dt = -dP/di,     C(v) dv/dt = dP/dv

    from ``(i, v)(t0) = initial_state`` and returns ``observable(t, i, v, u, params)``
    stacked over `times`, shape ``(T, ...)`` (by default ``(T, n_i + n_v)``: the
    currents, then the voltages). ``dP`` comes from `jax.grad`; the rates come from
    linear solves with ``L`` and ``C`` (never their inverses).

    **Arguments:**

    - `potential`: the mixed potential ``(i, v, u, params) -> scalar`` (current
      potential minus voltage potential plus coupling; see the module docstring for
      the sign convention).
    - `inductance`: ``(i, params) -> L`` or a fixed value. A scalar means ``L I``, a
      vector a diagonal matrix; ``L`` must be symmetric positive definite.
    - `capacitance`: ``(v, params) -> C`` or a fixed value, likewise.
    - `params`: a pytree of float arrays (the block's parameters).
    - `initial_state`: a pair ``(i0, v0)`` of 1-D arrays, or ``(u, params) -> (i0, v0)``
      (for a trainable initial state put it in `params`).
    - `times`: observation times, strictly increasing, all ``>= t0``.
    - `observable`: ``(t, i, v, u, params) -> y``; default ``concatenate([i, v])``.
    - `t0`, `solver` (``Tsit5()`` by default, ``Kvaerno5()`` for stiff circuits),
      `rtol`, `atol`, `dt0`, `max_steps`, `sensitivity`, `throw`, `in_shape`, `mass`:
      as for `modopt.systems.ODEModule`.

    A failed integration gives NaN outputs and a result code (see `solve`).
    """

    potential: Callable = eqx.field(static=True)
    inductance: Callable = eqx.field(static=True, converter=as_matrix_fn)
    capacitance: Callable = eqx.field(static=True, converter=as_matrix_fn)
    params: object
    initial_state: Callable = eqx.field(static=True, converter=as_pair_fn)
    times: tuple[float, ...] = eqx.field(static=True, converter=as_times)
    observable: Callable = eqx.field(static=True, default=state_observable)
    t0: float = eqx.field(static=True, default=0.0)
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    throw: bool = eqx.field(static=True, default=False)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        if not callable(self.potential):
            raise TypeError("BraytonMoser: potential must be callable (i, v, u, params).")
        if not callable(self.observable):
            raise TypeError("BraytonMoser: observable must be callable (t, i, v, u, params).")
        if self.times[0] < self.t0:
            raise ValueError(
                f"BraytonMoser: the first observation time {self.times[0]} is before "
                f"t0={self.t0}."
            )

    # -- the pieces of the dynamics, at this module's parameters

    @property
    def field(self) -> _Field:
        """The vector field ``(t, (i, v), u, params) -> (di/dt, dv/dt)``."""
        return _Field(self.potential, self.inductance, self.capacitance)

    def initial(self, u=None) -> tuple[Array, Array]:
        """The initial state ``(i0, v0)`` for input `u`."""
        return _CheckedInitialState(self.initial_state)(u, self.params)

    def potential_gradients(self, i, v, u=None) -> tuple[Array, Array]:
        """``(dP/di, dP/dv)`` at ``(i, v)``."""
        return self.field.gradients(i, v, u, self.params)

    def inductance_matrix(self, i) -> Array:
        """``L(i)`` as an ``n_i x n_i`` matrix."""
        return square_matrix(self.inductance(i, self.params), i.shape[0], "inductance")

    def capacitance_matrix(self, v) -> Array:
        """``C(v)`` as an ``n_v x n_v`` matrix."""
        return square_matrix(self.capacitance(v, self.params), v.shape[0], "capacitance")

    def rates(self, i, v, u=None) -> tuple[Array, Array]:
        """``(di/dt, dv/dt)`` at ``(i, v)``."""
        return self.field.rates(i, v, u, self.params)

    def as_ode(self) -> ODEModule:
        """The same circuit as an `ODEModule` with state ``(i, v)`` (a tuple pytree)."""
        return ODEModule(
            self.field, self.params, _CheckedInitialState(self.initial_state), self.times,
            _PairObservable(self.observable), self.t0, self.solver, self.rtol, self.atol,
            self.dt0, self.max_steps, sensitivity=self.sensitivity, throw=self.throw,
            in_shape=self.in_shape, mass=self.mass,
        )

    def solve(self, u=None) -> SystemSolution:
        """Integrate for input `u`.

        **Returns:** a `SystemSolution` whose `states` is the pair ``(i, v)`` of arrays
        of shapes ``(T, n_i)`` and ``(T, n_v)``, with a result code; NaN on failure.

        **Raises:** with ``throw=True``, a runtime error when the integration fails.
        """
        return self.as_ode().solve(u)

    def __call__(self, u=None):
        return self.solve(u).outputs


# ----------------------------------------------------------------------------- metric


class EnergyMetric(AbstractOutputMetric):
    """The circuit's energy metric on state outputs: ``L(i)`` on currents, ``C(v)`` on
    voltages.

    Predictions of shape ``(batch, T, n_i + n_v)`` (or ``(batch, n_i + n_v)``), each row
    a state ``[i, v]`` as the default `BraytonMoser` observable returns, get the metric
    ``M = blockdiag over samples and times of blockdiag(L(i), C(v))`` with ``L`` and
    ``C`` evaluated at the *predicted* state. ``y^T M y / 2`` is then the magnetic plus
    electric energy of an output error ``y``. The factor is per sample
    (`modopt.metrics.SampleFactor`), an exact eigh root of every ``L`` and ``C``.

    **Arguments:**

    - `n_currents`: ``n_i``, the number of currents at the start of each state row.
    - `inductance`, `capacitance`: as for `BraytonMoser` (functions or fixed values).
    - `params`: the parameters the two functions are evaluated at. They are fixed in
      the metric; when ``L`` or ``C`` is trained, rebuild the metric each step
      (`energy_metric(module)` is cheap).
    - `tol`: eigenvalues down to ``-tol * max|eigenvalue|`` count as zero.

    **Raises:** `ValueError` for predictions whose last axis is not longer than
    `n_currents`; a runtime error when ``L`` or ``C`` is not positive semidefinite.
    """

    n_currents: int = eqx.field(static=True)
    inductance: Callable = eqx.field(static=True, converter=as_matrix_fn)
    capacitance: Callable = eqx.field(static=True, converter=as_matrix_fn)
    params: object = None
    tol: float = eqx.field(static=True, default=1e-10)

    def __check_init__(self):
        if int(self.n_currents) < 0:
            raise ValueError(f"EnergyMetric: n_currents must be >= 0, got {self.n_currents}.")

    def block(self, state: Array) -> Array:
        """``blockdiag(L(i), C(v))`` for one state row ``[i, v]``."""
        i, v = state[: self.n_currents], state[self.n_currents :]
        lmat = square_matrix(self.inductance(i, self.params), i.shape[0], "inductance")
        cmat = square_matrix(self.capacitance(v, self.params), v.shape[0], "capacitance")
        return jax.scipy.linalg.block_diag(lmat, cmat).astype(state.dtype)

    def factor(self, predictions, targets, loss_fn) -> SampleFactor:
        batch = predictions.shape[0]
        n = predictions.shape[-1] if predictions.ndim > 1 else 0
        if predictions.ndim < 2 or n <= self.n_currents:
            raise ValueError(
                "EnergyMetric: predictions must have shape (batch, T, n_i + n_v) or "
                f"(batch, n_i + n_v) with n_i = {self.n_currents} currents and at least "
                f"one voltage, got shape {predictions.shape}."
            )
        states = predictions.reshape(batch, -1, n)
        steps = states.shape[1]
        blocks = jax.vmap(jax.vmap(self.block))(states)  # (batch, T, n, n)
        roots = _psd_root(blocks, "EnergyMetric", self.tol)
        eye = jnp.eye(steps, dtype=roots.dtype)
        rows = jnp.einsum("btkp,ts->btksp", roots, eye).reshape(batch, steps * n, steps * n)
        return SampleFactor(rows)


def _state_sizes(module: BraytonMoser, u=None) -> tuple[int, int]:
    try:
        i0, v0 = jax.eval_shape(lambda: module.initial(u))
    except Exception as error:
        raise ValueError(
            "BraytonMoser: cannot tell the numbers of currents and voltages from "
            f"initial_state with u={u!r} ({type(error).__name__}: {error}); pass the "
            "input u (or n_currents) explicitly."
        ) from None
    return i0.shape[0], v0.shape[0]


def energy_metric(module: BraytonMoser, u=None, *, n_currents: int | None = None) -> EnergyMetric:
    """The `EnergyMetric` of `module`'s state outputs, at its current parameters.

    Use it as ``output_metric=`` in `modopt.riemannian_gradient` (or the steps and the
    flow) when the module observes its state (the default observable).

    **Arguments:**

    - `module`: a `BraytonMoser` module with the default observable.
    - `u`: an input, only needed when ``initial_state`` depends on it (to learn
      ``n_i``).
    - `n_currents`: ``n_i`` given directly instead.

    **Raises:** `ValueError` when the module observes something other than its state.
    """
    if not isinstance(module, BraytonMoser):
        raise TypeError(f"energy_metric takes a BraytonMoser module, got {type(module).__name__}.")
    if module.observable is not state_observable:
        raise ValueError(
            "energy_metric: the module has a custom observable, so its outputs are not the "
            "state [i, v]. Use the default observable, or build EnergyMetric(n_currents, "
            "inductance, capacitance, params) for outputs laid out as states."
        )
    if n_currents is None:
        n_currents = _state_sizes(module, u)[0]
    return EnergyMetric(n_currents, module.inductance, module.capacitance, module.params)


# ----------------------------------------------------------------------------- power


class PowerBalance(eqx.Module):
    """Both sides of ``dP/dt = -i'^T L i' + v'^T C v'`` along a trajectory.

    - `ts`: the times.
    - `potential`: ``P(i(t), v(t))``.
    - `dpdt`: ``P_i . di/dt + P_v . dv/dt`` (the chain rule).
    - `balance`: ``-(di/dt)^T L di/dt + (dv/dt)^T C dv/dt`` (inductive minus capacitive
      "power"; the saddle-point structure of the dynamics).
    - `scale`: ``|i'^T L i'| + |v'^T C v'|`` at each time, the size of the terms.
    """

    ts: Array
    potential: Array
    dpdt: Array
    balance: Array
    scale: Array

    @property
    def residual(self) -> Array:
        """``|dpdt - balance|`` at each time."""
        return jnp.abs(self.dpdt - self.balance)

    @property
    def max_residual(self) -> Array:
        """``max_t |dpdt - balance| / max_t scale`` (relative; ~ machine precision)."""
        tiny = jnp.finfo(self.scale.dtype).tiny
        return jnp.max(self.residual) / jnp.maximum(jnp.max(self.scale), tiny)


def power_balance(module: BraytonMoser, solution: SystemSolution, u=None) -> PowerBalance:
    """The ``dP/dt`` identity evaluated at every saved state of `solution`.

    Along a solution ``dP/dt = P_i . i' + P_v . v' = -i'^T L i' + v'^T C v'``. Both
    sides are evaluated exactly at the saved states (the rates from the vector field),
    and the saved ``P(t)`` lets one compare with a finite-difference ``dP/dt``.

    **Arguments:** `module`, the `solution` from ``module.solve(u)``, and the same `u`.

    **Returns:** a `PowerBalance`.
    """
    if not isinstance(module, BraytonMoser):
        raise TypeError(f"power_balance takes a BraytonMoser module, got {type(module).__name__}.")
    currents, voltages = solution.states
    params = module.params
    field = module.field

    def at(i, v):
        p_i, p_v = field.gradients(i, v, u, params)
        lmat, cmat = field.matrices(i, v, params)
        di = jnp.linalg.solve(lmat, -p_i)
        dv = jnp.linalg.solve(cmat, p_v)
        inductive = di @ lmat @ di
        capacitive = dv @ cmat @ dv
        return (
            module.potential(i, v, u, params),
            p_i @ di + p_v @ dv,
            -inductive + capacitive,
            jnp.abs(inductive) + jnp.abs(capacitive),
        )

    potential, dpdt, balance, scale = jax.vmap(at)(currents, voltages)
    return PowerBalance(solution.ts, potential, dpdt, balance, scale)


# ----------------------------------------------------------------------------- stability


@dataclasses.dataclass(frozen=True)
class StabilityReport:
    """The outcome of `stability_test` (Brayton-Moser theorem 1 on a region).

    - `stable`: the test certifies that solutions tend to equilibria.
    - `margin`: ``mu1_min + mu2_min`` (the theorem's ``delta``; must be ``> 0``).
    - `mu1_min`, `mu2_min`: the smallest ``mu1`` and ``mu2`` over the points (rates,
      1/time).
    - `pointwise_margin`: ``min over points of mu1 + mu2`` (``>= margin``).
    - `worst_point`: ``(i, v)`` where ``mu1 + mu2`` is smallest.
    - `constant_metrics`: whether ``L`` and ``C`` were the same at every point (the
      theorem assumes constant ``L`` and ``C``).
    - `pstar_boundary_min`, `pstar_interior_min`: the smallest ``P*`` on the region's
      boundary and inside it (``None`` when points were given instead of a box).
    - `pstar_grows`: ``pstar_boundary_min > pstar_interior_min`` (``None`` if unknown).
    - `num_points`: how many points were checked.
    - `verdict`: a sentence saying what was found.
    """

    stable: bool
    margin: float
    mu1_min: float
    mu2_min: float
    pointwise_margin: float
    worst_point: tuple[np.ndarray, np.ndarray]
    constant_metrics: bool
    pstar_boundary_min: float | None
    pstar_interior_min: float | None
    pstar_grows: bool | None
    num_points: int
    verdict: str

    def __str__(self):
        return self.verdict


def _smallest_generalized_eigenvalue(a, m):
    """Smallest eigenvalue of ``M^-1/2 A M^-1/2`` (``M`` SPD), via Cholesky of ``M``."""
    chol = jnp.linalg.cholesky(0.5 * (m + m.T))
    x = jax.scipy.linalg.solve_triangular(chol, 0.5 * (a + a.T), lower=True)
    y = jax.scipy.linalg.solve_triangular(chol, x.T, lower=True)
    return jnp.linalg.eigvalsh(0.5 * (y + y.T))[0]


def _box(bounds, n: int, name: str) -> np.ndarray:
    if bounds is None:
        raise ValueError(
            f"stability_test: give {name} (a (low, high) pair) or points=(i_points, v_points)."
        )
    array = np.asarray(bounds, dtype=np.float64)
    if array.shape == (2,):
        array = np.repeat(array[:, None], n, axis=1)
    if array.shape != (2, n) or not np.all(array[0] <= array[1]):
        raise ValueError(
            f"stability_test: {name} must be (low, high) with low <= high, as scalars or "
            f"length-{n} arrays; got {bounds!r}."
        )
    return array


def stability_test(
    module: BraytonMoser,
    u=None,
    *,
    i_range=None,
    v_range=None,
    num: int = 21,
    points=None,
    max_points: int = 200_000,
) -> StabilityReport:
    """Brayton and Moser's first stability theorem (1964), checked on a region.

    With ``A = d^2P/di^2`` (the Hessian of the current potential) and
    ``B = -d^2P/dv^2`` (that of the voltage potential), let ``mu1`` be the smallest
    eigenvalue of ``L^-1/2 A L^-1/2`` and ``mu2`` that of ``C^-1/2 B C^-1/2``. If
    ``mu1 >= mu1_min``, ``mu2 >= mu2_min`` everywhere with
    ``delta = mu1_min + mu2_min > 0``, then

        P* = (mu2_min - mu1_min)/2 P + 1/2 P_i^T L^-1 P_i + 1/2 P_v^T C^-1 P_v

    satisfies ``dP*/dt <= -delta/2 (i'^T L i' + v'^T C v')`` along solutions, so when
    ``P*`` grows without bound every solution tends to an equilibrium. For a series
    R-L branch feeding a capacitor shunted by ``g(v) = a v^3 - b v`` this reads
    ``b < R C / L``.

    The theorem asks for this everywhere; the test checks it on a grid over a box (or on
    given points), and checks that ``P*`` is larger on the box's boundary than inside it
    (then solutions starting in ``{P* < min over the boundary}`` stay in the box and
    converge). That is evidence, not a proof: a grid can miss a thin bad region.

    **Arguments:**

    - `module`: a `BraytonMoser` module (its parameters are used).
    - `u`: the input (source values) at which the circuit is tested.
    - `i_range`, `v_range`: ``(low, high)`` bounds of the currents and voltages, scalars
      (the same for every component) or per component.
    - `num`: grid points per axis (``num ** (n_i + n_v)`` points in all).
    - `points`: instead of a box, a pair ``(i_points, v_points)`` of shapes
      ``(N, n_i)``, ``(N, n_v)``.
    - `max_points`: a grid larger than this is an error.

    **Returns:** a `StabilityReport`; ``str(report)`` is its verdict.

    **Raises:** `ValueError` for a missing or malformed region, a too large grid, or an
    ``L``/``C`` that is not positive definite at some point.
    """
    if not isinstance(module, BraytonMoser):
        raise TypeError(f"stability_test takes a BraytonMoser module, got {type(module).__name__}.")
    params = module.params
    dtype = params_dtype(params)
    boundary = None
    if points is not None:
        try:
            i_pts, v_pts = points
        except (TypeError, ValueError):
            raise ValueError(
                "stability_test: points must be a pair (i_points, v_points)."
            ) from None
        i_pts = np.atleast_2d(np.asarray(i_pts, np.float64))
        v_pts = np.atleast_2d(np.asarray(v_pts, np.float64))
        if i_pts.shape[0] != v_pts.shape[0]:
            raise ValueError(
                f"stability_test: {i_pts.shape[0]} current points but {v_pts.shape[0]} "
                "voltage points."
            )
        n_i = i_pts.shape[1]
    else:
        n_i, n_v = _state_sizes(module, u)
        if int(num) < 3:
            raise ValueError(f"stability_test: num must be >= 3, got {num}.")
        num = int(num)
        total = num ** (n_i + n_v)
        if total > max_points:
            raise ValueError(
                f"stability_test: a grid of {num}^{n_i + n_v} = {total} points is larger "
                f"than max_points={max_points}; lower num or pass points=(i, v)."
            )
        box = np.concatenate([_box(i_range, n_i, "i_range"), _box(v_range, n_v, "v_range")], 1)
        axes = [np.linspace(lo, hi, num) for lo, hi in box.T]
        grid = np.array(list(itertools.product(*axes))).reshape(total, n_i + n_v)
        index = np.array(list(itertools.product(range(num), repeat=n_i + n_v)))
        boundary = np.any((index == 0) | (index == num - 1), axis=1)
        i_pts, v_pts = grid[:, :n_i], grid[:, n_i:]

    field = module.field
    potential = _scalar_potential(module.potential)

    def at(i, v):
        lmat, cmat = field.matrices(i, v, params)
        a = jax.hessian(potential, argnums=0)(i, v, u, params)
        b = -jax.hessian(potential, argnums=1)(i, v, u, params)
        mu1 = _smallest_generalized_eigenvalue(a, lmat)
        mu2 = _smallest_generalized_eigenvalue(b, cmat)
        p_i, p_v = field.gradients(i, v, u, params)
        q = 0.5 * p_i @ jnp.linalg.solve(lmat, p_i) + 0.5 * p_v @ jnp.linalg.solve(cmat, p_v)
        return mu1, mu2, potential(i, v, u, params), q, lmat, cmat

    evaluate = jax.jit(jax.vmap(at))
    mu1, mu2, pot, q, lmats, cmats = (
        np.asarray(x, np.float64)
        for x in evaluate(jnp.asarray(i_pts, dtype), jnp.asarray(v_pts, dtype))
    )
    bad = ~(np.isfinite(mu1) & np.isfinite(mu2))
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(
            "stability_test: L or C is not symmetric positive definite (or the potential "
            f"is not finite) at i={i_pts[k].tolist()}, v={v_pts[k].tolist()}."
        )
    mu1_min, mu2_min = float(mu1.min()) + 0.0, float(mu2.min()) + 0.0  # no -0
    margin = mu1_min + mu2_min
    worst = int(np.argmin(mu1 + mu2))
    worst_point = (i_pts[worst].copy(), v_pts[worst].copy())
    constant = bool(
        np.allclose(lmats, lmats[:1], rtol=1e-12, atol=0.0)
        and np.allclose(cmats, cmats[:1], rtol=1e-12, atol=0.0)
    )
    pstar = 0.5 * (mu2_min - mu1_min) * pot + q
    if boundary is not None and np.any(~boundary):
        b_min, in_min = float(pstar[boundary].min()), float(pstar[~boundary].min())
        grows = b_min > in_min
    else:
        b_min = in_min = grows = None

    stable = margin > 0 and grows is not False
    where = f"i={worst_point[0].tolist()}, v={worst_point[1].tolist()}"
    if margin > 0:
        verdict = (
            f"mu1 + mu2 >= {margin:.4g} > 0 on all {len(mu1)} points (mu1 >= {mu1_min:.4g}, "
            f"mu2 >= {mu2_min:.4g}; the tightest point is {where})"
        )
        if grows:
            verdict = (
                f"Stable: {verdict}, and P* is larger on the region's boundary (min "
                f"{b_min:.4g}) than inside it (min {in_min:.4g}), so every solution "
                f"starting in {{P* < {b_min:.4g}}} stays in the region and tends to an "
                "equilibrium (Brayton-Moser theorem 1)."
            )
        elif grows is None:
            verdict = (
                f"Stable on the given points: {verdict}; the growth of P* was not checked "
                "(pass i_range and v_range for that)."
            )
        else:
            verdict = (
                f"Not certified: {verdict}, but P* is not larger on the region's boundary "
                f"(min {b_min:.4g}) than inside it (min {in_min:.4g}); enlarge the region."
            )
    else:
        verdict = (
            f"Not certified: mu1 + mu2 = {margin:.4g} <= 0 (mu1 >= {mu1_min:.4g}, "
            f"mu2 >= {mu2_min:.4g}; the worst point is {where}). Brayton-Moser theorem 1 "
            "does not apply: the circuit may oscillate (a limit cycle) or have other "
            "non-convergent solutions, or be stable for a reason this test cannot see."
        )
    if not constant:
        verdict += (
            " Note: L or C varies over the region, and theorem 1 assumes constant L and "
            "C, so this is a heuristic."
        )
    return StabilityReport(
        stable=bool(stable), margin=margin, mu1_min=mu1_min, mu2_min=mu2_min,
        pointwise_margin=float((mu1 + mu2).min()), worst_point=worst_point,
        constant_metrics=constant, pstar_boundary_min=b_min, pstar_interior_min=in_min,
        pstar_grows=grows, num_points=int(len(mu1)), verdict=verdict,
    )

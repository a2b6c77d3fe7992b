"""Frequency responses of linear(ised) systems (DESIGN section 7).

For the descriptor system ``E x' = A x + B u``, ``y = C x + D u`` the response at the
angular frequency ``w`` is

    H(jw) = C (jw E - A)^-1 B + D,

computed by one complex linear solve per frequency (vmapped), never by an inverse. It is
differentiable in every real array that built ``A, B, C, D, E``, forward or reverse.

- `frequency_response`: ``H`` from the matrices.
- `linearize`: ``(A, B, C, D)`` of ``x' = f(t, x, u)``, ``y = h(t, x, u)`` at an
  operating point, by `jax.jacfwd`.
- `operating_point`: an equilibrium of an `ODEModule` or a `BraytonMoser` circuit, by
  Optimistix's Newton (differentiable by the implicit function theorem).
- `linearize_module`: the `LinearSystem` of such a module at an operating point (for a
  circuit the descriptor form ``E = blockdiag(L, C)``).
- `FrequencyResponse`: a modopt module mapping a frequency to the response of a system
  module, so that measured response curves can be fitted.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from .._module import AbstractModule
from .._results import RESULTS
from ._common import params_dtype, poison
from .brayton_moser import BraytonMoser
from .ode import ODEModule

# ----------------------------------------------------------------------------- response


def _system_dtypes(*arrays):
    """The real dtype of the matrices and the complex dtype of the response."""
    present = [jnp.asarray(a) for a in arrays if a is not None]
    dtype = jnp.result_type(*present)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.result_type(float)
    complex_dtype = jnp.promote_types(dtype, jnp.complex64)
    real_dtype = jnp.finfo(complex_dtype).dtype
    return real_dtype, complex_dtype


def frequency_response(A, B, C, D=None, E=None, *, omegas) -> Array:
    """``H(jw) = C (jw E - A)^-1 B + D`` at every angular frequency in `omegas`.

    **Arguments:**

    - `A`: ``(n, n)``.
    - `B`: ``(n, m)``, or ``(n,)`` for one input (the input axis is then dropped).
    - `C`: ``(p, n)``, or ``(n,)`` for one output (the output axis is then dropped).
    - `D`: the feedthrough, shaped like ``C @ B`` (default zero).
    - `E`: ``(n, n)``, the descriptor matrix (default the identity). It may be singular
      (algebraic equations) as long as ``jw E - A`` is not.
    - `omegas`: angular frequencies (rad per time unit), any shape.

    **Returns:** a complex array of shape ``omegas.shape + (p, m)`` (without the axes
    dropped above): complex64 for float32 matrices, complex128 for float64. Frequencies
    where ``jw E - A`` is singular (a pole on the imaginary axis) give inf or NaN.

    **Raises:** `ValueError` when the shapes do not fit together.
    """
    A, B, C = jnp.asarray(A), jnp.asarray(B), jnp.asarray(C)
    D = None if D is None else jnp.asarray(D)
    E = None if E is None else jnp.asarray(E)
    real_dtype, complex_dtype = _system_dtypes(A, B, C, D, E)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"frequency_response: A must be square (n, n), got shape {A.shape}.")
    n = A.shape[0]
    if E is not None and E.shape != (n, n):
        raise ValueError(f"frequency_response: E must have shape ({n}, {n}), got {E.shape}.")
    if B.ndim not in (1, 2) or B.shape[0] != n:
        raise ValueError(
            f"frequency_response: B must have shape ({n}, m) or ({n},), got {B.shape}."
        )
    if C.ndim not in (1, 2) or C.shape[-1] != n:
        raise ValueError(
            f"frequency_response: C must have shape (p, {n}) or ({n},), got {C.shape}."
        )
    out_shape = C.shape[:-1] + B.shape[1:]
    if D is not None and D.shape != out_shape:
        raise ValueError(
            f"frequency_response: D must have the shape {out_shape} of C @ B, got {D.shape}."
        )
    omegas = jnp.asarray(omegas, real_dtype)
    a = A.astype(complex_dtype)
    b = B.astype(complex_dtype)
    c = C.astype(complex_dtype)
    e = jnp.eye(n, dtype=complex_dtype) if E is None else E.astype(complex_dtype)
    d = jnp.zeros(out_shape, complex_dtype) if D is None else D.astype(complex_dtype)

    def one(omega):
        s = (1j * omega).astype(complex_dtype)
        return c @ jnp.linalg.solve(s * e - a, b) + d

    flat = jax.vmap(one)(omegas.reshape(-1))
    return flat.reshape(omegas.shape + out_shape)


# ----------------------------------------------------------------------------- linearize


def _input_array(u_op, where: str) -> Array:
    try:
        u = jnp.asarray(u_op)
    except TypeError:
        raise ValueError(
            f"{where}: the operating input u_op must be a scalar or a 1-D array (the "
            f"inputs the response is taken to), got {type(u_op).__name__}."
        ) from None
    if u.ndim > 1:
        raise ValueError(
            f"{where}: the operating input u_op must be a scalar or a 1-D array, got "
            f"shape {u.shape}."
        )
    if not jnp.issubdtype(u.dtype, jnp.inexact):
        u = u.astype(jnp.result_type(float))
    return u


def linearize(
    vector_field: Callable,
    x_op,
    u_op,
    params,
    *,
    observable: Callable | None = None,
    t: float = 0.0,
) -> tuple[Array, Array, Array, Array]:
    """``(A, B, C, D)`` of ``x' = f(t, x, u, params)``, ``y = h(t, x, u, params)`` at
    ``(x_op, u_op)``, by `jax.jacfwd`.

    **Arguments:**

    - `vector_field`: ``f(t, x, u, params)`` (the `ODEModule` signature). `x` may be any
      pytree of arrays; it is flattened (``jax.flatten_util.ravel_pytree`` order).
    - `x_op`: the operating state (usually an equilibrium, ``f(x_op, u_op) = 0``).
    - `u_op`: the operating input, a scalar (single input: ``B`` is ``(n,)``) or a 1-D
      array (``B`` is ``(n, m)``).
    - `params`: passed to `vector_field` and `observable`.
    - `observable`: ``h(t, x, u, params)``, scalar or 1-D output; default the state
      (``C = I``, ``D = 0``).
    - `t`: the time at which an explicitly time-dependent system is linearised.

    **Returns:** ``(A, B, C, D)``, shaped as `frequency_response` takes them.
    """
    x_flat, unravel = ravel_pytree(x_op)
    u = _input_array(u_op, "linearize")
    if jnp.issubdtype(x_flat.dtype, jnp.inexact):
        u = u.astype(x_flat.dtype)

    def f(x, u):
        return ravel_pytree(vector_field(t, unravel(x), u, params))[0]

    dx = jax.eval_shape(f, x_flat, u)
    if dx.shape != x_flat.shape:
        raise ValueError(
            f"linearize: the vector field returns {dx.shape[0]} rates for a state of "
            f"{x_flat.shape[0]} entries."
        )
    A = jax.jacfwd(f, argnums=0)(x_flat, u)
    B = jax.jacfwd(f, argnums=1)(x_flat, u)
    if observable is None:
        n = x_flat.shape[0]
        C = jnp.eye(n, dtype=A.dtype)
        D = jnp.zeros((n,) + u.shape, A.dtype)
        return A, B, C, D

    def h(x, u):
        y = jnp.asarray(observable(t, unravel(x), u, params))
        return y if y.ndim <= 1 else y.reshape(-1)

    return A, B, jax.jacfwd(h, argnums=0)(x_flat, u), jax.jacfwd(h, argnums=1)(x_flat, u)


class LinearSystem(eqx.Module):
    """The descriptor system ``E x' = A x + B u``, ``y = C x + D u``.

    ``E`` is ``None`` for an explicit system (``E = I``). `x_op` and `u_op` record the
    operating point it was linearised at (flattened state; ``None`` if not known).
    """

    A: Array
    B: Array
    C: Array
    D: Array
    E: Array | None = None
    x_op: Array | None = None
    u_op: Array | None = None

    def frequency_response(self, omegas) -> Array:
        """``H(jw) = C (jw E - A)^-1 B + D``; see `modopt.systems.frequency_response`."""
        return frequency_response(self.A, self.B, self.C, self.D, self.E, omegas=omegas)


def _module_residual(module):
    """``(x, u) -> residual`` whose roots are the module's equilibria, and ``x`` guess."""
    if isinstance(module, BraytonMoser):
        # The equilibria are the stationary points of P (L and C are nonsingular).
        return lambda x, u: module.potential_gradients(x[0], x[1], u), module.initial
    if isinstance(module, ODEModule):
        return (
            lambda x, u: module.vector_field(module.t0, x, u, module.params),
            lambda u: module.initial_state(u, module.params),
        )
    raise TypeError(
        "operating_point/linearize_module take an ODEModule or a BraytonMoser module, got "
        f"{type(module).__name__}; for other systems call linearize(vector_field, ...)."
    )


def operating_point(
    module,
    u_op,
    x_guess=None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
    throw: bool = True,
):
    """An equilibrium ``f(x, u_op) = 0`` of `module`, by Newton's method (Optimistix).

    For a `BraytonMoser` circuit the equilibria are the stationary points of the
    potential, ``dP/di = 0`` and ``dP/dv = 0``. The result is differentiable in the
    module's parameters by the implicit function theorem (not by unrolling Newton).

    **Arguments:**

    - `module`: an `ODEModule` (at time ``t0``) or a `BraytonMoser` module.
    - `u_op`: the input.
    - `x_guess`: the starting point (default the module's initial state); a pair
      ``(i, v)`` for a circuit.
    - `rtol`, `atol`: Newton's tolerances (default 1e-10, 1e-12 in float64; 1e-5, 1e-7
      in float32).
    - `max_steps`: Newton iterations.
    - `throw`: raise when Newton fails; else the state is NaN.

    **Returns:** the operating state, structured like the module's state.
    """
    residual, guess = _module_residual(module)
    x0 = guess(u_op) if x_guess is None else x_guess
    dtype = params_dtype(module.params)
    x0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), x0)
    double = jnp.finfo(dtype).bits >= 64
    rtol = (1e-10 if double else 1e-5) if rtol is None else rtol
    atol = (1e-12 if double else 1e-7) if atol is None else atol
    sol = optx.root_find(
        lambda x, u: residual(x, u), optx.Newton(rtol=rtol, atol=atol), x0, u_op,
        max_steps=max_steps, throw=False,
    )
    ok = sol.result == optx.RESULTS.successful
    x = poison(sol.value, ok)
    if throw:
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.steady_state_not_found)
        x = result.error_if(x, ~ok)
    return x


def linearize_module(module, u_op, x_op=None, **newton) -> LinearSystem:
    """The `LinearSystem` of an `ODEModule` or a `BraytonMoser` circuit at an equilibrium.

    - `ODEModule`: ``x' = f(t0, x, u)``, ``y = observable(t0, x, u)``; explicit (``E`` is
      ``None``).
    - `BraytonMoser`: the descriptor form of ``L(i) i' = -P_i``, ``C(v) v' = P_v``:
      ``E = blockdiag(L(i_op), C(v_op))``, ``A`` the Jacobian of ``(-P_i, P_v)`` in
      ``(i, v)``, ``B`` that in ``u``; ``C``, ``D`` from the observable. (At an
      equilibrium the derivatives of ``L(i)`` and ``C(v)`` drop out, so this is the
      exact linearisation.) The state is ``[i, v]``.

    **Arguments:**

    - `module`: the module (its parameters are used, so the result is differentiable in
      them).
    - `u_op`: the operating input (scalar or 1-D: the inputs of ``H``).
    - `x_op`: the operating state; default: found by `operating_point` (keyword
      arguments `newton` go there).

    **Returns:** a `LinearSystem`; ``.frequency_response(omegas)`` gives ``H``.
    """
    _module_residual(module)  # type check
    u = _input_array(u_op, "linearize_module").astype(params_dtype(module.params))
    if x_op is None:
        x_op = operating_point(module, u, **newton)
    if isinstance(module, BraytonMoser):
        if not (isinstance(x_op, (tuple, list)) and len(x_op) == 2):
            raise ValueError("linearize_module: for a BraytonMoser circuit x_op is a pair (i, v).")
        i_op, v_op = (jnp.asarray(a) for a in x_op)
        params = module.params
        field = module.field

        def rates_times_metric(t, x, u, p):
            p_i, p_v = field.gradients(x[0], x[1], u, p)
            return -p_i, p_v

        def observable(t, x, u, p):
            return module.observable(t, x[0], x[1], u, p)

        A, B, C, D = linearize(
            rates_times_metric, (i_op, v_op), u, params, observable=observable, t=module.t0
        )
        lmat, cmat = field.matrices(i_op, v_op, params)
        E = jax.scipy.linalg.block_diag(lmat, cmat).astype(A.dtype)
        return LinearSystem(A, B, C, D, E, jnp.concatenate([i_op, v_op]), u)
    A, B, C, D = linearize(
        module.vector_field, x_op, u, module.params, observable=module.observable,
        t=module.t0,
    )
    return LinearSystem(A, B, C, D, None, ravel_pytree(x_op)[0], u)


# ----------------------------------------------------------------------------- module


def _static_input(u):
    """A fixed input as hashable static data: a float, or a tuple of floats."""
    array = np.asarray(u, dtype=np.float64)
    if array.ndim > 1:
        raise ValueError(f"FrequencyResponse: u_op must be a scalar or 1-D, got {array.shape}.")
    return float(array) if array.ndim == 0 else tuple(array.tolist())


class FrequencyResponse(AbstractModule):
    """A module: frequency ``w`` -> the response ``H(jw)`` of a system module, as reals.

    The system (`ODEModule` or `BraytonMoser`) is linearised at its equilibrium for the
    input `u_op` (Newton, every call), and the output is ``[Re H, Im H]`` flattened, or
    ``[|H|, arg H]`` with ``polar=True``, so that measured response curves can be fitted
    with `modopt.riemannian_gradient` (the inputs are the frequencies). The system's
    parameters are this module's parameters (one block). Where no equilibrium is found
    the output is NaN, which the steps and the flow reject.

    **Arguments:**

    - `system`: the `ODEModule` or `BraytonMoser` module.
    - `u_op`: the operating input (a fixed array; a scalar for one input).
    - `polar`: output magnitude and phase instead of real and imaginary parts.
    - `in_shape`, `mass`: as for every module.
    """

    system: AbstractModule
    u_op: float | tuple[float, ...] = eqx.field(static=True, converter=_static_input)
    polar: bool = eqx.field(static=True, default=False)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=())
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        _module_residual(self.system)

    def __call__(self, omega):
        dtype = params_dtype(self.system.params)
        u = jnp.asarray(self.u_op, dtype)
        # A failed Newton gives NaN (a rejected step), never an exception mid-optimisation.
        h = linearize_module(self.system, u, throw=False).frequency_response(omega)
        if self.polar:
            parts = (jnp.abs(h), jnp.angle(h))
        else:
            parts = (jnp.real(h), jnp.imag(h))
        return jnp.concatenate([jnp.ravel(p) for p in parts])

"""CasADi-defined maps as JAX functions and as modopt modules (DESIGN section 7).

`casadi_callable` turns a ``casadi.Function`` (SX, MX, or an integrator such as
``casadi.integrator("F", "cvodes", ...)``) into a JAX function that runs under
``jax.jit`` and ``jax.vmap`` and is differentiable with CasADi's own derivatives.
`CasadiModule` makes such a Function a trainable modopt module.

Layout. CasADi values are 2-D matrices; on the JAX side a ``1 x 1`` input or output is
a scalar ``()``, an ``n x 1`` column a vector ``(n,)`` and any other ``r x c`` matrix
an ``(r, c)`` array (row-major, so ``a[i, j]`` is entry ``(i, j)``). Sparse outputs come
back dense. Inputs must be dense.

Numbers. CasADi computes in double precision; inputs are cast to float64 on the way in
and results back to the inputs' (common) dtype, so float32 in gives float32 out.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

import casadi
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .._module import AbstractSystemModule, _check_mass

CALLABLE_MODES = ("jacobian", "forward", "reverse")
FAILURE_MODES = ("nan", "raise")
DERIVATIVES = ("jacobian", "directional")
# With derivatives="directional", how a module's `sensitivity` maps to a callable mode.
_DIRECTIONAL_MODE = {"auto": "reverse", "forward": "forward", "reverse": "reverse"}
_MAX_CACHED_MAPS = 32


def _jax_shape(rows: int, cols: int) -> tuple[int, ...]:
    """JAX shape of an ``rows x cols`` CasADi matrix: ``()``, ``(n,)`` or ``(r, c)``."""
    if (rows, cols) == (1, 1):
        return ()
    if cols == 1:
        return (rows,)
    return (rows, cols)


def _describe_matrix(rows: int, cols: int) -> str:
    return f"a {rows}x{cols} CasADi matrix, so a JAX array of shape {_jax_shape(rows, cols)}"


class CasadiCallable:
    """A ``casadi.Function`` as a JAX function (build it with `casadi_callable`).

    Calling it mirrors calling the Function in CasADi's Python API: positional arguments
    (one per input, in order) return the single output, or a tuple when there are
    several; keyword arguments (input names; missing ones take CasADi's default value)
    return a dict ``{output name: array}``. Inputs are JAX arrays of the shapes
    described in this module's docstring; the computation happens on the host through
    ``jax.pure_callback``, so it works under ``jax.jit`` and ``jax.vmap`` (a batch is
    evaluated in one call of ``function.map(n)``).

    Derivatives come from CasADi (second derivatives are not supported); `mode` picks
    how:

    - ``"jacobian"`` (default): a ``jax.custom_jvp`` whose rule asks CasADi for the
      outputs and the Jacobian blocks of the inputs that carry a tangent (one host call)
      and returns ``J @ tangent`` as ordinary JAX operations. JAX transposes that
      product, so `jax.jvp`, `jax.jacfwd`, `jax.vjp`, `jax.grad` and `jax.jacrev` all
      work. One Jacobian per differentiated point: ideal when inputs or outputs are few,
      or when the whole Jacobian is wanted anyway (as `modopt.riemannian_gradient`
      does).
    - ``"forward"``: a ``jax.custom_jvp`` whose rule calls ``function.forward(1)``: one
      directional derivative per tangent. Reverse mode (`jax.vjp`, `jax.grad`) raises.
    - ``"reverse"``: a ``jax.custom_vjp`` whose backward pass calls
      ``function.reverse(1)``: one adjoint sweep per cotangent. Forward mode raises.

    Derivative Functions (``forward(1)``, ``reverse(1)``, the Jacobian Functions) and
    the mapped Functions for batches are built once and cached on this object.

    Two `CasadiCallable` objects are equal (and hash equally) when they wrap the same
    Function object with the same options: this is what makes it usable as static data
    in an Equinox module without retracing.
    """

    def __init__(self, function, mode: str = "jacobian", *, on_failure: str = "nan",
                 _root=None, _selection: tuple[int, ...] | None = None):
        if not isinstance(function, casadi.Function):
            raise TypeError(
                f"casadi_callable takes a casadi.Function, got {type(function).__name__}."
            )
        if mode not in CALLABLE_MODES:
            raise ValueError(
                f"casadi_callable: mode must be one of {CALLABLE_MODES}, got {mode!r}."
            )
        if on_failure not in FAILURE_MODES:
            raise ValueError(
                f"casadi_callable: on_failure must be one of {FAILURE_MODES}, got {on_failure!r}."
            )
        self.function = function
        self.mode = mode
        self.on_failure = on_failure
        self.name = function.name()
        self.names_in = tuple(function.name_in())
        self.names_out = tuple(function.name_out())
        self.matrix_in = tuple(tuple(function.size_in(i)) for i in range(function.n_in()))
        self.matrix_out = tuple(tuple(function.size_out(i)) for i in range(function.n_out()))
        self.shapes_in = tuple(_jax_shape(*s) for s in self.matrix_in)
        self.shapes_out = tuple(_jax_shape(*s) for s in self.matrix_out)
        for i, name in enumerate(self.names_in):
            if not function.sparsity_in(i).is_dense():
                raise ValueError(
                    f"casadi_callable: input {name!r} of Function {self.name!r} is sparse "
                    f"({function.nnz_in(i)} nonzeros in {self.matrix_in[i][0]}x"
                    f"{self.matrix_in[i][1]}); only dense inputs are supported (wrap the "
                    "Function so that it takes a dense matrix)."
                )
        self._is_sx = function.is_a("SXFunction")
        # Identity of the wrapped computation (the root Function is kept alive by
        # `_root`, so its id cannot be reused while this object exists).
        self._root = function if _root is None else _root
        self._selection = _selection
        self._lock = threading.RLock()
        self._cache: dict = {}
        self._maps: dict = {}

        self._by_jacobian = jax.custom_jvp(self._primal)
        self._by_jacobian.defjvp(self._jvp_by_jacobian, symbolic_zeros=True)
        self._by_forward = jax.custom_jvp(self._primal)
        self._by_forward.defjvp(self._jvp_by_forward, symbolic_zeros=True)
        self._by_reverse = jax.custom_vjp(self._primal)
        self._by_reverse.defvjp(self._vjp_fwd, self._vjp_bwd)

    # ------------------------------------------------------------------ identity

    def _key(self):
        return (id(self._root), self._selection, self.mode, self.on_failure)

    def __eq__(self, other):
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        ins = ", ".join(f"{n}{list(s)}" for n, s in zip(self.names_in, self.shapes_in))
        outs = ", ".join(f"{n}{list(s)}" for n, s in zip(self.names_out, self.shapes_out))
        return f"CasadiCallable({self.name}: ({ins}) -> ({outs}), mode={self.mode!r})"

    def with_mode(self, mode: str) -> CasadiCallable:
        """The same Function differentiated in another `mode` (shares the caches)."""
        if mode == self.mode:
            return self
        with self._lock:
            key = ("mode", mode)
            self._cache.setdefault(("mode", self.mode), self)
            if key not in self._cache:
                other = CasadiCallable(self.function, mode, on_failure=self.on_failure,
                                       _root=self._root, _selection=self._selection)
                other._cache = self._cache
                other._maps = self._maps
                other._lock = self._lock
                self._cache[key] = other
            return self._cache[key]

    def select(self, output: int | str) -> CasadiCallable:
        """A callable of the same inputs that computes only `output` (an index or name).

        Derivatives are then taken of that output alone. Cached.
        """
        index = self.output_index(output)
        if len(self.names_out) == 1:
            return self
        with self._lock:
            key = ("select", index, self.mode)
            if key not in self._cache:
                syms = self._symbols()
                out = self.function.call(syms)[index]
                name = f"{self.name}_{self.names_out[index]}"
                fn = casadi.Function(name, syms, [out], list(self.names_in),
                                     [self.names_out[index]])
                selection = (self._selection or tuple(range(len(self.names_out))))
                self._cache[key] = CasadiCallable(
                    fn, self.mode, on_failure=self.on_failure, _root=self._root,
                    _selection=(selection[index],),
                )
            return self._cache[key]

    def input_index(self, name: str) -> int:
        """Position of the input called `name`. **Raises:** `ValueError` if unknown."""
        if name not in self.names_in:
            raise ValueError(
                f"Function {self.name!r} has no input {name!r}; its inputs are "
                f"{list(self.names_in)}."
            )
        return self.names_in.index(name)

    def output_index(self, output: int | str) -> int:
        """Position of an output given by name or index. **Raises:** `ValueError`."""
        if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
            if not 0 <= output < len(self.names_out):
                raise ValueError(
                    f"Function {self.name!r} has {len(self.names_out)} outputs, got index "
                    f"{output}."
                )
            return int(output)
        if output not in self.names_out:
            raise ValueError(
                f"Function {self.name!r} has no output {output!r}; its outputs are "
                f"{list(self.names_out)}."
            )
        return self.names_out.index(output)

    # ------------------------------------------------------------------ calling

    def __call__(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError(
                f"Call {self.name!r} with positional inputs or with named inputs, not both "
                "(as in CasADi)."
            )
        if kwargs:
            unknown = [k for k in kwargs if k not in self.names_in]
            if unknown:
                raise ValueError(
                    f"Function {self.name!r} has no input(s) {unknown}; its inputs are "
                    f"{list(self.names_in)}."
                )
            inputs = [kwargs[n] if n in kwargs else self.default_input(i)
                      for i, n in enumerate(self.names_in)]
            return dict(zip(self.names_out, self.apply(inputs)))
        outputs = self.apply(args)
        return outputs[0] if len(outputs) == 1 else outputs

    def default_input(self, index: int) -> np.ndarray:
        """CasADi's default value of input `index`, as a float64 array of its shape."""
        value = float(self.function.default_in(index))
        return np.full(self.shapes_in[index], value, np.float64)

    def apply(self, inputs: Sequence, mode: str | None = None) -> tuple[jax.Array, ...]:
        """All outputs for all `inputs` (one per Function input, in order).

        **Arguments:**

        - `inputs`: arrays of the shapes in `shapes_in`.
        - `mode`: ``"jacobian"``, ``"forward"`` or ``"reverse"``; default `self.mode`.

        **Returns:** a tuple of arrays of the shapes in `shapes_out`, in the inputs'
        common floating dtype.

        **Raises:** `ValueError` for a wrong number of inputs or a wrong shape,
        `TypeError` for complex inputs.
        """
        mode = self.mode if mode is None else mode
        if mode not in CALLABLE_MODES:
            raise ValueError(f"mode must be one of {CALLABLE_MODES}, got {mode!r}.")
        inputs = list(inputs)
        if len(inputs) != len(self.names_in):
            raise ValueError(
                f"Function {self.name!r} takes {len(self.names_in)} inputs "
                f"{list(self.names_in)}, got {len(inputs)}."
            )
        arrays = [jnp.asarray(x) for x in inputs]
        for array, name, shape, matrix in zip(
            arrays, self.names_in, self.shapes_in, self.matrix_in
        ):
            if array.shape != shape:
                raise ValueError(
                    f"Input {name!r} of Function {self.name!r} is {_describe_matrix(*matrix)}; "
                    f"got shape {array.shape}."
                )
            if jnp.issubdtype(array.dtype, jnp.complexfloating):
                raise TypeError(f"Input {name!r}: CasADi is real-valued, got {array.dtype}.")
        inexact = [a for a in arrays if jnp.issubdtype(a.dtype, jnp.inexact)]
        dtype = jnp.result_type(*inexact) if inexact else jnp.result_type(float)
        arrays = [a.astype(dtype) for a in arrays]
        fn = {"jacobian": self._by_jacobian, "forward": self._by_forward,
              "reverse": self._by_reverse}[mode]
        return tuple(fn(*arrays))

    # ------------------------------------------------------------------ JAX rules

    def _callback(self, host, shapes, dtype, *args):
        result = tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)
        return jax.pure_callback(host, result, *args, vmap_method="expand_dims")

    def _primal(self, *xs):
        dtype = xs[0].dtype if xs else jnp.result_type(float)
        host = _Host(self, "primal", dtype)
        return self._callback(host, self.shapes_out, dtype, *xs)

    def _jvp_by_jacobian(self, primals, tangents):
        wrt = tuple(i for i, t in enumerate(tangents) if not isinstance(t, SymbolicZero))
        dtype = primals[0].dtype
        shapes = list(self.shapes_out) + [
            self.shapes_out[o] + self.shapes_in[i] for o in range(len(self.shapes_out)) for i in wrt
        ]
        host = _Host(self, "jacobian", dtype, wrt=wrt)
        results = self._callback(host, shapes, dtype, *primals)
        n_out = len(self.shapes_out)
        outs, jacs = results[:n_out], results[n_out:]
        tangents_out = []
        for o in range(n_out):
            total = jnp.zeros(self.shapes_out[o], dtype)
            for k, i in enumerate(wrt):
                block = jacs[o * len(wrt) + k]
                total = total + jnp.tensordot(block, tangents[i].astype(dtype),
                                              axes=len(self.shapes_in[i]))
            tangents_out.append(total)
        return tuple(outs), tuple(tangents_out)

    def _jvp_by_forward(self, primals, tangents):
        wrt = tuple(i for i, t in enumerate(tangents) if not isinstance(t, SymbolicZero))
        outs = self._primal(*primals)
        dtype = primals[0].dtype
        if not wrt:
            return outs, tuple(jnp.zeros(s, dtype) for s in self.shapes_out)
        host = _Host(self, "forward", dtype, wrt=wrt)
        seeds = [tangents[i].astype(dtype) for i in wrt]
        tangents_out = self._callback(host, self.shapes_out, dtype, *primals, *outs, *seeds)
        return tuple(outs), tuple(tangents_out)

    def _vjp_fwd(self, *xs):
        outs = self._primal(*xs)
        return outs, (xs, outs)

    def _vjp_bwd(self, residuals, cotangents):
        xs, outs = residuals
        dtype = xs[0].dtype
        host = _Host(self, "reverse", dtype)
        cotangents = [c.astype(dtype) for c in cotangents]
        return tuple(self._callback(host, self.shapes_in, dtype, *xs, *outs, *cotangents))

    # ------------------------------------------------------------------ CasADi side

    def _symbols(self):
        sym = casadi.SX.sym if self._is_sx else casadi.MX.sym
        return [sym(name, *matrix) for name, matrix in zip(self.names_in, self.matrix_in)]

    def derivative(self, kind: str, wrt: tuple[int, ...] = ()) -> casadi.Function:
        """The cached CasADi Function behind a derivative.

        - ``"forward"``: ``function.forward(1)``, inputs ``[inputs, outputs, seeds]``.
        - ``"reverse"``: ``function.reverse(1)``, inputs ``[inputs, outputs, seeds]``.
        - ``"jacobian"``: inputs as the Function's, outputs ``[outputs, J_(o, i) for
          every output o and every input i in wrt]`` (blocks of the densified output
          in the column-major vectorisations, from ``casadi.jacobian``, which uses the
          Function's own derivatives: CVODES/IDAS sensitivities for an integrator).
        """
        key = (kind, wrt)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            if kind == "forward":
                fn = self.function.forward(1)
            elif kind == "reverse":
                fn = self.function.reverse(1)
            elif kind == "jacobian":
                syms = self._symbols()
                outs = self.function.call(syms)
                blocks = [
                    casadi.jacobian(casadi.densify(out), syms[i]) for out in outs for i in wrt
                ]
                names = [f"jac_{o}_{self.names_in[i]}" for o in self.names_out for i in wrt]
                fn = casadi.Function(f"jac_{self.name}", syms, list(outs) + blocks,
                                     list(self.names_in), list(self.names_out) + names)
            else:
                raise ValueError(f"unknown derivative kind {kind!r}")
            self._cache[key] = fn
            return fn

    def _mapped(self, fn: casadi.Function, n: int, shared: tuple[int, ...]) -> casadi.Function:
        """``fn`` mapped over `n` samples, the inputs in `shared` passed once. Cached."""
        key = (id(fn), n, shared)
        with self._lock:
            mapped = self._maps.get(key)
            if mapped is None:
                if len(self._maps) >= _MAX_CACHED_MAPS:
                    self._maps.pop(next(iter(self._maps)))
                mapped = fn.map(f"map{n}_{fn.name()}", "serial", n, list(shared), [])
                self._maps[key] = mapped
            return mapped

    def evaluate(self, fn: casadi.Function, mats: list[np.ndarray]) -> list[np.ndarray]:
        """Evaluate `fn` on a batch of float64 matrices.

        `mats[k]` has shape ``batch_k + (r_k, c_k)`` with ``(r_k, c_k)`` the size of
        input ``k``; the batch shapes broadcast. The whole batch is one call of
        ``fn.map(n)`` (inputs without a batch are passed once), through CasADi's
        buffer interface (no ``DM`` conversions). **Returns:** dense outputs of shape
        ``batch + (r, c)``. A failed evaluation gives NaN for the failing samples (or
        raises with ``on_failure="raise"``).
        """
        batch = np.broadcast_shapes(*[m.shape[:-2] for m in mats])
        n = math.prod(batch)
        sizes_out = [tuple(fn.size_out(i)) for i in range(fn.n_out())]
        if n == 0:
            return [np.zeros(batch + s) for s in sizes_out]
        shared = tuple(
            k for k, m in enumerate(mats) if math.prod(m.shape[:-2]) == 1 or m.size == 0
        )
        flat = [
            m.reshape((math.prod(m.shape[:-2]),) + m.shape[-2:]) if n == 1 or k in shared
            else np.broadcast_to(m, batch + m.shape[-2:]).reshape((n,) + m.shape[-2:])
            for k, m in enumerate(mats)
        ]
        try:
            call = fn if n == 1 else self._mapped(fn, n, shared)
            outs = self._run(call, fn, flat, n, sizes_out)
        except RuntimeError:
            if self.on_failure == "raise":
                raise
            if n == 1:
                outs = [np.full((1,) + s, np.nan) for s in sizes_out]
            else:  # one by one, so that only the failing samples become NaN
                per = [self.evaluate(fn, [f[0] if k in shared else f[j]
                                          for k, f in enumerate(flat)]) for j in range(n)]
                outs = [np.stack([p[i] for p in per]) for i in range(len(sizes_out))]
        return [o.reshape(batch + s) for o, s in zip(outs, sizes_out)]

    def _run(self, fn, base, flat, n, sizes_out):
        """One buffered call of `fn` (`base` mapped `n` times, or `base` itself).

        `flat[k]` is ``(n_k, r, c)`` (``n_k`` is 1 or `n`); returns ``(n, r, c)`` arrays.
        """
        with self._lock:
            buffer, call = fn.buffer()
            keep = []
            for k, m in enumerate(flat):
                if m.size == 0:
                    continue
                # column-major nonzeros, sample after sample
                data = np.ascontiguousarray(m.transpose(0, 2, 1), np.float64).reshape(-1)
                keep.append(data)
                buffer.set_arg(k, memoryview(data))
            results = []
            for i in range(fn.n_out()):
                data = np.empty(fn.nnz_out(i), np.float64)
                results.append(data)
                if data.size:
                    buffer.set_res(i, memoryview(data))
            call()
        outs = []
        for i, ((r, c), data) in enumerate(zip(sizes_out, results)):
            sparsity = self._sparsity_out(base, i)
            if sparsity is None:
                outs.append(data.reshape(n, c, r).transpose(0, 2, 1))
            else:
                rows, cols = sparsity
                dense = np.zeros((n, r, c))
                dense[:, rows, cols] = data.reshape(n, rows.size)
                outs.append(dense)
        return outs

    def _sparsity_out(self, fn, i):
        """``None`` for a dense output ``i`` of `fn`, else its nonzeros' (rows, cols)."""
        key = ("sparsity", id(fn), i)
        if key not in self._cache:
            sp = fn.sparsity_out(i)
            if sp.is_dense():
                self._cache[key] = None
            else:
                rows, cols = sp.get_triplet()
                self._cache[key] = (np.asarray(rows, np.intp), np.asarray(cols, np.intp))
        return self._cache[key]


class _Host:
    """The host side of one ``pure_callback``: JAX layout <-> CasADi matrices."""

    def __init__(self, owner: CasadiCallable, kind: str, dtype, wrt: tuple[int, ...] = ()):
        self.owner = owner
        self.kind = kind
        self.dtype = np.dtype(dtype)
        self.wrt = wrt

    def __call__(self, *arrays):
        o = self.owner
        n_in, n_out = len(o.shapes_in), len(o.shapes_out)
        arrays = [np.asarray(a, np.float64) for a in arrays]
        if self.kind == "primal":
            layout = list(zip(o.shapes_in, o.matrix_in))
            results = o.evaluate(o.function, _to_matrices(arrays, layout))
            return self._finish(results, o.shapes_out)
        if self.kind == "jacobian":
            fn = o.derivative("jacobian", self.wrt)
            layout = list(zip(o.shapes_in, o.matrix_in))
            results = o.evaluate(fn, _to_matrices(arrays, layout))
            outs = self._finish(results[:n_out], o.shapes_out)
            blocks = []
            for k, block in enumerate(results[n_out:]):
                out, inp = divmod(k, len(self.wrt))
                i = self.wrt[inp]
                blocks.append(_jacobian_to_jax(block, o.matrix_out[out], o.matrix_in[i],
                                               o.shapes_out[out] + o.shapes_in[i]))
            return outs + tuple(b.astype(self.dtype) for b in blocks)
        if self.kind == "forward":
            fn = o.derivative("forward")
            xs, ys, seeds = arrays[:n_in], arrays[n_in:n_in + n_out], arrays[n_in + n_out:]
            given = dict(zip(self.wrt, seeds))
            all_seeds = [given.get(i, np.zeros(o.shapes_in[i])) for i in range(n_in)]
            layout = (list(zip(o.shapes_in, o.matrix_in)) + list(zip(o.shapes_out, o.matrix_out))
                      + list(zip(o.shapes_in, o.matrix_in)))
            results = o.evaluate(fn, _to_matrices(xs + ys + all_seeds, layout))
            return self._finish(results, o.shapes_out)
        if self.kind == "reverse":
            fn = o.derivative("reverse")
            layout = (list(zip(o.shapes_in, o.matrix_in)) + list(zip(o.shapes_out, o.matrix_out))
                      + list(zip(o.shapes_out, o.matrix_out)))
            results = o.evaluate(fn, _to_matrices(arrays, layout))
            return self._finish(results, o.shapes_in)
        raise AssertionError(self.kind)

    def _finish(self, results, shapes):
        out = []
        for r, shape in zip(results, shapes):
            batch = r.shape[:-2]
            out.append(r.reshape(batch + shape).astype(self.dtype))
        return tuple(out)


def _to_matrices(arrays, layout):
    """JAX-layout arrays (leading batch dims allowed) -> ``batch + (r, c)`` matrices."""
    mats = []
    for a, (shape, (r, c)) in zip(arrays, layout):
        batch = a.shape[: a.ndim - len(shape)]
        mats.append(a.reshape(batch + (r, c)))
    return mats


def _jacobian_to_jax(block, matrix_out, matrix_in, shape):
    """A ``batch + (ro*co, ri*ci)`` column-major Jacobian block -> ``batch + shape``."""
    (ro, co), (ri, ci) = matrix_out, matrix_in
    batch = block.shape[:-2]
    b = len(batch)
    block = block.reshape(batch + (co, ro, ci, ri))
    block = block.transpose(tuple(range(b)) + (b + 1, b, b + 3, b + 2))
    return block.reshape(batch + shape)


def casadi_callable(
    function, mode: str = "jacobian", *, on_failure: str = "nan"
) -> CasadiCallable:
    """A ``casadi.Function`` as a JAX function, differentiable with CasADi's derivatives.

    **Arguments:**

    - `function`: a ``casadi.Function``: SX, MX, an integrator
      (``casadi.integrator(..., "cvodes" | "idas", ...)``), or any other with dense
      inputs.
    - `mode`: how JAX differentiates it: ``"jacobian"`` (default; forward and reverse
      mode through the Jacobian CasADi computes), ``"forward"`` (``function.forward(1)``
      directional derivatives; forward mode only) or ``"reverse"``
      (``function.reverse(1)`` adjoints; reverse mode only). See `CasadiCallable`.
    - `on_failure`: ``"nan"`` (default) returns NaN for the samples whose evaluation
      raised in CasADi (a failed integration, say), as the other modopt systems do,
      so that an optimizer can reject the step; ``"raise"`` lets the error through
      (as an error of the jitted computation).

    **Returns:** a `CasadiCallable`: ``g(x, w)`` returns the Function's output (a tuple
    when several), ``g(x=..., w=...)`` a dict, ``g.apply([x, w], mode=...)`` always a
    tuple.

    **Raises:** `TypeError` if `function` is not a ``casadi.Function``; `ValueError`
    for an unknown mode or a sparse input.

    Example:

    ```python
    x = casadi.SX.sym("x", 2); w = casadi.SX.sym("w", 3, 2)
    f = casadi.Function("f", [x, w], [casadi.tanh(w @ x)], ["x", "w"], ["y"])
    g = casadi_callable(f)
    y = jax.jit(jax.vmap(g, in_axes=(0, None)))(xs, w0)   # xs: (batch, 2), w0: (3, 2)
    ```
    """
    return CasadiCallable(function, mode, on_failure=on_failure)


# ---------------------------------------------------------------------------- module


class _Fixed:
    """Fixed (non-trainable) input values, hashable: ``((name, array), ...)``."""

    def __init__(self, items):
        self.items = tuple(
            (str(name), np.asarray(value, np.float64)) for name, value in items
        )
        for _, value in self.items:
            value.setflags(write=False)

    def __hash__(self):
        return hash(tuple((n, v.shape, v.tobytes()) for n, v in self.items))

    def __eq__(self, other):
        return isinstance(other, _Fixed) and len(self.items) == len(other.items) and all(
            n == m and v.shape == w.shape and np.array_equal(v, w)
            for (n, v), (m, w) in zip(self.items, other.items)
        )

    def __iter__(self):
        return iter(self.items)

    def names(self):
        return [n for n, _ in self.items]

    def __repr__(self):
        return "{" + ", ".join(f"{n!r}: array{list(v.shape)}" for n, v in self.items) + "}"


def _as_fixed(value):
    if isinstance(value, _Fixed):
        return value
    if value is None:
        return _Fixed(())
    if not isinstance(value, Mapping):
        raise TypeError(
            f"CasadiModule: fixed must be a dict {{input name: array}}, got {type(value).__name__}."
        )
    return _Fixed(sorted(value.items()))


def _as_param(name, value):
    if value is None or not hasattr(value, "shape") and not isinstance(
        value, (int, float, list, tuple, np.number)
    ):
        return value  # a placeholder of a filtered/partitioned module
    if isinstance(value, jax.ShapeDtypeStruct):
        return value
    array = jnp.asarray(value)
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise TypeError(f"CasadiModule: parameter {name!r} is complex; CasADi is real-valued.")
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        array = array.astype(jnp.result_type(float))
    return array


class CasadiModule(AbstractSystemModule):
    """A module whose map is a ``casadi.Function``, with some inputs trainable.

    For one sample ``u`` the module evaluates the Function with input `input_name` set
    to ``u``, each input named in `params` set to its (trainable) parameter array and
    each input named in `fixed` to its fixed value, and returns the output
    `output_name`. Derivatives are CasADi's (see `casadi_callable`); the computation
    runs on the host, under ``jax.jit`` and ``jax.vmap`` (a batch is one call of
    ``function.map(n)``).

    ```python
    x = casadi.SX.sym("x", 3); w = casadi.SX.sym("w", 4, 3); b = casadi.SX.sym("b", 4)
    f = casadi.Function("f", [x, w, b], [casadi.tanh(w @ x + b)], ["x", "w", "b"], ["y"])
    module = CasadiModule(f, {"w": w0, "b": b0}, input_name="x")
    ```

    **Arguments:**

    - `function`: a ``casadi.Function`` (SX, MX, an integrator from
      ``casadi.integrator``), or a `CasadiCallable` to choose ``on_failure``.
    - `params`: ``{input name: initial value}``, the module's trainable arrays (shapes
      as in `casadi_callable`: ``()`` for ``1x1``, ``(n,)`` for ``n x 1``, else
      ``(r, c)``).
    - `input_name`: the input that receives the sample, or ``None`` for a module whose
      output does not depend on a sample (it then ignores its argument).
    - `output_name`: the output returned (default: the first one); only it is
      differentiated.
    - `fixed`: ``{input name: value}`` for inputs held constant (e.g. an integrator's
      ``x0``). Every input of nonzero size must be the sample input, a parameter or
      fixed; empty inputs (an integrator's unused ``u``, ``z0``, ``adj_*``) are
      filled in.
    - `sensitivity`: ``"auto"`` (default), ``"forward"`` or ``"reverse"``: which mode
      the engine must use for this module (see `modopt.AbstractSystemModule`).
    - `derivatives`: where derivatives come from (see `casadi_callable`):

        - ``"jacobian"`` (default): CasADi's Jacobian of the output, one per sample;
          forward and reverse mode both work whatever `sensitivity` says. This is what
          `modopt.riemannian_gradient` wants: it needs the whole Jacobian anyway.
        - ``"directional"``: ``function.forward(1)`` when `sensitivity` is
          ``"forward"`` (forward mode only), ``function.reverse(1)`` otherwise (reverse
          mode only; the engine switches an ``"auto"`` module to ``"forward"`` when it
          forms Jacobians in forward mode). One directional derivative per tangent or
          cotangent: cheaper for a single `jax.grad` of a Function with many inputs
          and outputs, dearer for whole Jacobians.
    - `in_shape`: the sample shape; defaults to (and must equal) the JAX shape of the
      input `input_name` (``None`` without one).
    - `mass`: the block's mass, or ``None`` for the global one.

    **Raises:** `ValueError` for unknown input or output names, a name used twice,
    parameter or fixed values whose shapes do not match the Function's inputs,
    inputs left unassigned; `TypeError` for a `function` that is not a CasADi Function.
    """

    function: CasadiCallable = eqx.field(static=True)
    params: dict
    input_name: str | None = eqx.field(static=True, default=None)
    output_name: str | None = eqx.field(static=True, default=None)
    fixed: _Fixed = eqx.field(static=True, default=None)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    derivatives: str = eqx.field(static=True, kw_only=True, default="jacobian")
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __post_init__(self):
        if isinstance(self.function, casadi.Function):
            self.function = CasadiCallable(self.function)
        elif not isinstance(self.function, CasadiCallable):
            raise TypeError(
                "CasadiModule takes a casadi.Function (or a CasadiCallable), got "
                f"{type(self.function).__name__}."
            )
        fn = self.function
        if self.derivatives not in DERIVATIVES:
            raise ValueError(
                f"CasadiModule: derivatives must be one of {DERIVATIVES}, got "
                f"{self.derivatives!r}."
            )
        if not isinstance(self.params, Mapping):
            raise TypeError(
                "CasadiModule: params must be a dict {input name: initial array}, got "
                f"{type(self.params).__name__}."
            )
        self.params = {str(k): _as_param(k, v) for k, v in self.params.items()}
        self.fixed = _as_fixed(self.fixed)
        if self.output_name is None:
            self.output_name = fn.names_out[0]
        fn.output_index(self.output_name)  # raises for an unknown name

        roles: dict[str, str] = {}
        claims = ([(self.input_name, "input_name")] if self.input_name is not None else [])
        claims += [(k, "params") for k in self.params] + [(k, "fixed") for k in self.fixed.names()]
        unknown = [(name, role) for name, role in claims if name not in fn.names_in]
        if unknown:
            listed = ", ".join(f"{name!r} (in {role})" for name, role in unknown)
            raise ValueError(
                f"CasadiModule: Function {fn.name!r} has no input {listed}; its inputs are "
                f"{list(fn.names_in)}."
            )
        for name, role in claims:
            if name in roles:
                raise ValueError(
                    f"CasadiModule: input {name!r} is given both in {roles[name]} and in {role}."
                )
            roles[name] = role
        missing = [
            n for i, n in enumerate(fn.names_in)
            if n not in roles and math.prod(fn.matrix_in[i]) > 0
        ]
        if missing:
            raise ValueError(
                f"CasadiModule: inputs {missing} of Function {fn.name!r} are not assigned; "
                "name each one as input_name, in params (trainable) or in fixed (constant)."
            )
        for name, value in list(self.params.items()) + list(self.fixed):
            i = fn.input_index(name)
            shape = getattr(value, "shape", None)
            if shape is not None and tuple(shape) != fn.shapes_in[i]:
                kind = "parameter" if name in self.params else "fixed value"
                raise ValueError(
                    f"CasadiModule: {kind} {name!r} has shape {tuple(shape)} but input "
                    f"{name!r} of Function {fn.name!r} is {_describe_matrix(*fn.matrix_in[i])}."
                )
        expected = (
            None if self.input_name is None else fn.shapes_in[fn.input_index(self.input_name)]
        )
        if self.in_shape is None:
            self.in_shape = expected
        else:
            self.in_shape = tuple(int(s) for s in self.in_shape)
            if self.in_shape != expected:
                raise ValueError(
                    f"CasadiModule: in_shape={self.in_shape} but input {self.input_name!r} "
                    f"of Function {fn.name!r} has shape {expected}."
                )
        self.mass = _check_mass(self.mass, "CasadiModule")

    @property
    def jax_callable(self) -> CasadiCallable:
        """The callable of the selected output, in this module's differentiation mode."""
        if self.derivatives == "jacobian":
            mode = "jacobian"
        else:
            mode = _DIRECTIONAL_MODE.get(self.sensitivity, "reverse")
        return self.function.select(self.output_name).with_mode(mode)

    def __call__(self, u=None):
        fn = self.function
        params = self.params
        leaves = [v for v in params.values() if eqx.is_inexact_array(v)]
        dtype = leaves[0].dtype if leaves else jnp.result_type(float)
        values = {}
        if self.input_name is not None:
            if u is None:
                raise ValueError(
                    f"CasadiModule: the Function's input {self.input_name!r} takes the "
                    "sample; got None."
                )
            u = jnp.asarray(u)
            if u.shape != self.in_shape:
                raise ValueError(
                    f"CasadiModule: input {self.input_name!r} expects a sample of shape "
                    f"{self.in_shape}, got {u.shape}."
                )
            values[self.input_name] = u
        values.update(params)
        for name, value in self.fixed:
            values[name] = jnp.asarray(value, dtype)
        inputs = [
            values[n] if n in values else jnp.zeros(fn.shapes_in[i], dtype)
            for i, n in enumerate(fn.names_in)
        ]
        (out,) = self.jax_callable.apply(inputs)
        return out

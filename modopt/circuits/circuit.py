"""`Circuit`: a netlist with differentiable analyses (DC operating point, DC sweep, AC,
transient), all in JAX and differentiable in the element values."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .._results import RESULTS
from ..systems import IndexOneDAE
from ..systems._common import as_times, poison
from ..systems.steady import all_finite, implicit_root
from . import mna
from .netlist import GROUND, Netlist, NetlistError, parse_netlist
from .waveforms import breakpoints

_GMIN_STEPS = tuple(10.0 ** -k for k in range(2, 13)) + (0.0,)
_SOURCE_STEPS = tuple(np.linspace(0.05, 1.0, 20))


class OperatingPoint(eqx.Module):
    """A DC solution: `x` the unknowns (NaN on failure), `result` a `modopt.RESULTS`
    code, `method` 0 for plain Newton, 1 for gmin stepping, 2 for source stepping."""

    x: jax.Array
    result: RESULTS
    method: jax.Array


class Circuit(eqx.Module):
    """A circuit whose element values are parameters.

    Build it with `Circuit.from_netlist`. `params` holds the free element values (in
    log scale when ``scale="log"``, so that they stay positive), keyed by lower-case
    element name (``"r1"``, ``"x1.c2"``); the other values are fixed.

    Analyses (each returns ``{"v_<node>": ..., "i_<element>": ...}`` with the branch
    currents of voltage sources, inductors and E/H/B-V sources, positive from the
    element's first node through it to its second, as ngspice):

    - `op()`: the DC operating point.
    - `dc_sweep(source, values)`: operating points as a source's DC value is swept.
    - `ac(frequencies_hz)`: small-signal response at the operating point (complex).
    - `transient(times, uic=False)`: the time response.

    Failures give NaN values; `operating_point` and `simulate` also return the result
    code, and every analysis raises instead with ``throw=True``.
    """

    params: dict
    topology: mna.Topology = eqx.field(static=True)
    fixed: tuple = eqx.field(static=True)
    scale: str = eqx.field(static=True)
    signs: tuple = eqx.field(static=True)

    @classmethod
    def from_netlist(
        cls, text: str | Netlist, *, free: Sequence[str] | None = None, scale: str = "linear",
        dtype=None,
    ) -> Circuit:
        """Read a netlist (text or a parsed `Netlist`).

        **Arguments:**

        - `free`: the element names whose values are trainable; default all R, C, L and
          controlled-source gains.
        - `scale`: ``"linear"`` or ``"log"`` (free values stored as ``log|value|``).
        - `dtype`: of the parameters; default JAX's default float.

        **Raises:** `modopt.circuits.NetlistError` for a malformed or unsupported netlist,
        a voltage-source loop or a floating node; `ValueError` for an unknown free
        element, or a zero value in log scale.
        """
        netlist = text if isinstance(text, Netlist) else parse_netlist(text)
        topology = mna.build_topology(netlist)
        values = mna.element_values(topology)
        free = list(values) if free is None else [name.lower() for name in free]
        unknown = [name for name in free if name not in values]
        if unknown:
            raise ValueError(
                f"Circuit: {', '.join(unknown)} are not elements with a value; elements "
                f"with values: {', '.join(values)}."
            )
        if scale not in ("linear", "log"):
            raise ValueError(f"Circuit: scale must be 'linear' or 'log', got {scale!r}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        if scale == "log":
            zero = [name for name in free if values[name] == 0]
            if zero:
                raise ValueError(f"Circuit: {', '.join(zero)} are zero; not in log scale.")
            params = {n: jnp.asarray(np.log(abs(values[n])), dtype) for n in free}
        else:
            params = {n: jnp.asarray(values[n], dtype) for n in free}
        return cls(
            params=params, topology=topology,
            fixed=tuple((n, v) for n, v in values.items() if n not in free), scale=scale,
            signs=tuple((n, float(np.sign(values[n]))) for n in free),
        )

    @classmethod
    def from_subcircuit(cls, text: str, name: str, *, drive: str = "vdrive",
                        **options) -> Circuit:
        """One instance of the subcircuit `name` of a netlist as a circuit of its own, so
        that stages compose as modules (see `TransientResponse` with ``drive=``).

        The new circuit holds the netlist's ``.model``, ``.param`` and ``.subckt`` cards,
        the instance ``x<name>`` with its ports on nodes of the same names, and a source
        `drive` (DC 0) from the first port to ground. Element names carry the instance
        prefix (``x<name>.r1``). `options` go to `from_netlist`.

        **Raises:** `NetlistError` when the netlist has no such subcircuit.
        """
        ports = None
        for line in text.splitlines()[1:]:
            words = line.split()
            if len(words) > 1 and words[0].lower() == ".subckt" \
                    and words[1].lower() == name.lower():
                ports = []
                for word in words[2:]:
                    if word.lower() == "params:" or "=" in word:
                        break
                    ports.append(word.lower())
        if ports is None:
            raise NetlistError(f"from_subcircuit: the netlist has no .subckt {name!r}.")
        definitions = _definitions(text)
        netlist = "\n".join([
            f"* subcircuit {name} as a circuit", *definitions,
            f"{drive} {ports[0]} 0 DC 0", f"x{name} {' '.join(ports)} {name}", ".end",
        ])
        return cls.from_netlist(netlist, **options)

    # ------------------------------------------------------------------ values

    @property
    def dtype(self):
        leaves = jax.tree.leaves(self.params)
        return leaves[0].dtype if leaves else jnp.result_type(float)

    def values(self) -> dict:
        """Every element value in linear scale (free and fixed)."""
        values = dict(self.fixed)
        signs = dict(self.signs)
        for name, p in self.params.items():
            values[name] = signs[name] * jnp.exp(p) if self.scale == "log" else p
        return values

    def with_values(self, **values) -> Circuit:
        """A copy with some free values replaced (given in linear scale)."""
        params = dict(self.params)
        for name, value in values.items():
            name = name.lower()
            if name not in params:
                raise ValueError(f"Circuit.with_values: {name!r} is not a free element.")
            value = jnp.asarray(value, self.dtype)
            params[name] = jnp.log(jnp.abs(value)) if self.scale == "log" else value
        return dataclasses.replace(self, params=params)

    def is_physical(self) -> jax.Array:
        """Whether every R, C and L value is positive and finite."""
        values = self.values()
        checks = [jnp.isfinite(values[name]) & (values[name] > 0)
                  for name in self.topology.element_names
                  if mna.name_kind(self.topology, name) in "rcl"]
        return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for n in self.topology.nodes if n not in self.topology.internal)

    # ------------------------------------------------------------------ DC

    def _dc_residual(self, values, b):
        topology = self.topology

        def fn(x, args):
            scale, shunt, values, b = args
            return mna.residual(topology, values, x, scale * b, None, shunt=shunt)

        return fn

    def _initial_guess(self, dtype):
        x = jnp.zeros(self.topology.size, dtype)
        for node, value in self.topology.netlist.initial_conditions:
            if node in self.topology.nodes:
                x = x.at[self.topology.index(node)].set(value)
        return x

    def operating_point(self, *, guess=None, source=None, time=None,
                        throw: bool = False) -> OperatingPoint:
        """The DC operating point: Newton (Optimistix) from `guess`; if that fails, gmin
        stepping, then source stepping, each warm-starting a final Newton solve whose
        derivative is the implicit function theorem's.

        **Arguments:**

        - `guess`: a starting point for the unknowns (default zeros and ``.ic``).
        - `source`: ``(name, value)`` to override one independent source's DC value.
        - `time`: take the sources' waveform values at this time instead of their DC
          values (a transient starts from the operating point at t = 0, as in ngspice).
        - `throw`: raise if no operating point is found.
        """
        values = self.values()
        dtype = self.dtype
        b = mna.source_vector(self.topology, time, dc=time is None, dtype=dtype,
                              override=source)
        fn = self._dc_residual(values, b)
        newton = optx.Newton(rtol=1e-10, atol=1e-12)
        one, zero = jnp.asarray(1.0, dtype), jnp.asarray(0.0, dtype)
        start = self._initial_guess(dtype) if guess is None else jnp.asarray(guess, dtype)
        stopped = jax.lax.stop_gradient((values, b))

        def attempt(x, scale, shunt):
            root, ok, _ = implicit_root(fn, newton, x, (scale, shunt, *stopped), 60)
            return jnp.where(ok, root, x), ok

        def homotopy(stages):
            def body(carry, stage):
                x, ok = carry
                x_new, ok_new = attempt(x, *stage)
                return (x_new, ok & ok_new), None

            scales = jnp.asarray([s for s, _ in stages], dtype)
            shunts = jnp.asarray([g for _, g in stages], dtype)
            (x, ok), _ = jax.lax.scan(body, (start, jnp.array(True)), (scales, shunts))
            return x, ok

        x_plain, plain_ok = attempt(start, one, zero)
        x_gmin, gmin_ok = jax.lax.cond(
            plain_ok, lambda: (x_plain, plain_ok),
            lambda: homotopy([(1.0, g) for g in _GMIN_STEPS]),
        )
        x_source, source_ok = jax.lax.cond(
            gmin_ok, lambda: (x_gmin, gmin_ok),
            lambda: homotopy([(s, 0.0) for s in _SOURCE_STEPS]),
        )
        x, ok, _ = implicit_root(fn, newton, x_source, (one, zero, values, b), 60)
        ok = ok & source_ok & all_finite(x)
        method = jnp.where(plain_ok, 0, jnp.where(gmin_ok, 1, 2))
        result = RESULTS.where(ok, RESULTS.successful, RESULTS.operating_point_not_found)
        physical = self.is_physical()
        result = RESULTS.where(physical, result, RESULTS.nonphysical_element)
        ok = ok & physical
        point = OperatingPoint(x=poison(x, ok), result=result, method=method)
        if throw:
            point = result.error_if(point, ~ok)
        return point

    def op(self, *, throw: bool = False) -> dict:
        """The DC operating point as ``{"v_<node>": ..., "i_<element>": ...}``."""
        return mna.named(self.topology, self.operating_point(throw=throw).x)

    def dc_sweep(self, source: str, values, *, throw: bool = False) -> dict:
        """Operating points as the DC value of the independent source `source` takes each
        of `values` (in order; each solve starts from the previous solution).

        **Returns:** the named unknowns, each of shape ``(len(values),)``.

        **Raises:** `ValueError` if `source` is not an independent V or I source.
        """
        name = source.lower()
        if name not in [e.name for e, _ in self.topology.sources]:
            raise ValueError(
                f"dc_sweep: {source!r} is not an independent source; sources: "
                f"{', '.join(e.name for e, _ in self.topology.sources)}."
            )
        values = jnp.asarray(values, self.dtype)

        def step(guess, value):
            point = self.operating_point(guess=guess, source=(name, value), throw=throw)
            ok = point.result == RESULTS.successful
            return jnp.where(ok, point.x, guess), point.x

        first = self.operating_point(source=(name, values[0]), throw=throw).x
        start = jnp.where(all_finite(first), first, jnp.zeros_like(first))
        _, xs = jax.lax.scan(step, start, values)
        return mna.named(self.topology, xs)

    # ------------------------------------------------------------------ AC

    def small_signal(self, point: OperatingPoint | None = None):
        """``(Jf, Jq, b_ac)``: the conductance and capacitance Jacobians at the operating
        point and the AC excitation, so that ``(Jf + jw Jq) X = b_ac``."""
        point = self.operating_point() if point is None else point
        values = self.values()
        dtype = self.dtype
        b = mna.source_vector(self.topology, dc=True, dtype=dtype)
        jf = jax.jacfwd(lambda x: mna.residual(self.topology, values, x, b, None))(point.x)
        jq = jax.jacfwd(lambda x: mna.charge(self.topology, values, x))(point.x)
        return jf, jq, jnp.asarray(self.topology.ac_vector, jnp.promote_types(dtype, jnp.complex64))

    def ac(self, frequencies_hz, *, throw: bool = False) -> dict:
        """The small-signal response at the operating point to the netlist's AC sources.

        **Returns:** complex arrays of shape ``(len(frequencies_hz),)``.
        """
        jf, jq, b_ac = self.small_signal(self.operating_point(throw=throw))
        omegas = 2 * jnp.pi * jnp.asarray(frequencies_hz, self.dtype)

        def solve(omega):
            return jnp.linalg.solve(jf + 1j * omega * jq, b_ac)

        return mna.named(self.topology, jax.vmap(solve)(jnp.atleast_1d(omegas)))

    # ------------------------------------------------------------------ transient

    def dae(self, times, *, uic: bool = False, drive: str | None = None,
            **dae_options) -> IndexOneDAE:
        """The transient as a semi-explicit index-1 DAE module (see `transient`).

        With `drive` naming an independent source, the module's input is that source's
        waveform sampled at `times` (linear in between; before the first time, the first
        value, which also sets the operating point); otherwise it takes no input.
        """
        if drive is not None and drive not in [e.name for e, _ in self.topology.sources]:
            raise ValueError(f"dae: {drive!r} is not an independent source.")
        return _transient_dae(self, as_times(times), uic, drive, dae_options)

    def simulate(self, times, *, uic: bool = False, **dae_options):
        """The transient's `modopt.systems.SystemSolution`; its `outputs` are the unknowns
        at `times`, shape ``(T, N)``, and its `result` the code."""
        return self.dae(times, uic=uic, **dae_options).solve(None)

    def transient(self, times, *, uic: bool = False, throw: bool = False, **dae_options) -> dict:
        """The time response at `times` (all ``>= 0``).

        From the DC operating point at t = 0 (``uic=False``), or from the initial
        conditions (``uic=True``: ``IC=`` on capacitors and inductors and ``.ic`` node
        voltages; zero where none is given). Integrated by `modopt.systems.IndexOneDAE`
        (default ``Kvaerno5``, ``rtol=1e-6``, ``atol=1e-9``; pass `solver`, `rtol`,
        `atol`, `max_steps` ... to change them).
        """
        solution = self.simulate(times, uic=uic, throw=throw, **dae_options)
        return mna.named(self.topology, solution.outputs)


def _definitions(text: str) -> list[str]:
    """The ``.model``, ``.param`` and ``.subckt ... .ends`` lines of a netlist (with
    their continuations), without the title, elements and analyses."""
    out, inside, keeping = [], False, False
    for line in text.splitlines()[1:]:
        card = line.strip().split()[0].lower() if line.strip() else ""
        if card.startswith("+"):
            if keeping:
                out.append(line)
            continue
        keeping = inside or card in (".model", ".param", ".subckt")
        if card == ".subckt":
            inside = True
        if card == ".ends":
            inside, keeping = False, True
        if keeping:
            out.append(line)
    return out


def _orthonormal_split(incidence: np.ndarray):
    """Bases of the range of `incidence` (n x m) and of its orthogonal complement."""
    n = incidence.shape[0]
    if incidence.size == 0:
        return np.zeros((n, 0)), np.eye(n)
    u, s, _ = np.linalg.svd(incidence, full_matrices=True)
    rank = int(np.sum(s > 1e-10 * max(s.max(), 1.0)))
    return u[:, :rank], u[:, rank:]


def _transient_dae(circuit: Circuit, times, uic: bool, drive, options: dict) -> IndexOneDAE:
    """Split the unknowns into differential ones (the node-voltage combinations that
    capacitors see, ``y = V1^T v``, and inductor currents) and algebraic ones (the rest
    of the node voltages, ``w = V2^T v``, and the other branch currents). Because the
    charges depend on ``v`` only through ``A_C^T v``, ``dq/dt = Jq V1 y'``: the
    projected KCL ``V1^T (dq/dt + f) = 0`` gives ``y'``, and ``V2^T f = 0`` together with
    the branch equations are the algebraic equations (index 1 unless capacitors and
    voltage sources form a loop, or inductors and current sources a cut set)."""
    topology = circuit.topology
    n, size = topology.num_nodes, topology.size
    v1, v2 = _orthonormal_split(topology.capacitive)
    inductors = [topology.branch(e.name) for e in topology.netlist.elements if e.kind == "l"]
    others = [i for i in range(n, size) if i not in inductors]
    rank = v1.shape[1]
    stop = times[-1]
    jumps = sorted({t for e, _ in topology.sources if e.name != drive
                    for t in breakpoints(e, stop)})

    def assemble(xd, z, dtype):
        y, i_l = xd[:rank], xd[rank:]
        w, i_other = z[: n - rank], z[n - rank:]
        x = jnp.zeros(size, dtype)
        x = x.at[:n].set(jnp.asarray(v1, dtype) @ y + jnp.asarray(v2, dtype) @ w)
        return x.at[jnp.asarray(inductors, int)].set(i_l).at[jnp.asarray(others, int)].set(i_other)

    sample_times = np.asarray(times)

    def forcing(t, u, dtype):
        override = None if drive is None else (drive, jnp.interp(t, sample_times, u))
        return mna.source_vector(topology, t, dc=False, dtype=dtype, override=override)

    def vector_field(t, xd, z, u, params):
        values = circuit_values(params)
        dtype = xd.dtype
        x = assemble(xd, z, dtype)
        f = mna.residual(topology, values, x, forcing(t, u, dtype), t)
        jq = jax.jacfwd(lambda x_: mna.charge(topology, values, x_))(x)
        basis = jnp.asarray(v1, dtype)
        mass = basis.T @ jq[:n, :n] @ basis
        dy = -jnp.linalg.solve(mass, basis.T @ f[:n]) if rank else jnp.zeros((0,), dtype)
        index = jnp.asarray(inductors, int)
        di = (-jnp.linalg.solve(jq[index][:, index], f[index]) if inductors
              else jnp.zeros((0,), dtype))
        return jnp.concatenate([dy, di])

    def algebraic(t, xd, z, u, params):
        values = circuit_values(params)
        dtype = xd.dtype
        f = mna.residual(topology, values, assemble(xd, z, dtype), forcing(t, u, dtype), t)
        return jnp.concatenate([jnp.asarray(v2, dtype).T @ f[:n], f[jnp.asarray(others, int)]])

    def circuit_values(params):
        return dataclasses.replace(circuit, params=params).values()

    def operating_point(u, params):
        source = None if drive is None else (drive, u[0])
        return dataclasses.replace(circuit, params=params).operating_point(
            source=source, time=0.0).x

    def initial_state(u, params):
        if uic:
            return _uic_state(topology, circuit.dtype, v1)
        x = operating_point(u, params)
        y = jnp.asarray(v1, x.dtype).T @ x[:n]
        return jnp.concatenate([y, x[jnp.asarray(inductors, int)]])

    def initial_algebraic(u, params):
        # Only Newton's starting point for the consistent algebraic state.
        if uic:
            return jnp.zeros(size - rank - len(inductors), circuit.dtype)
        x = jax.lax.stop_gradient(operating_point(u, params))
        w = jnp.asarray(v2, x.dtype).T @ x[:n]
        return jnp.concatenate([w, x[jnp.asarray(others, int)]])

    def observable(t, xd, z, u, params):
        return assemble(xd, z, xd.dtype)

    # Tighter tolerances make the stiff solver's chord iterations fail on diodes.
    defaults = {"rtol": 1e-6, "atol": 1e-9, "max_steps": 100_000}
    return IndexOneDAE(
        vector_field, algebraic, circuit.params, initial_state, initial_algebraic, times,
        observable=observable, jump_ts=tuple(jumps),
        in_shape=None if drive is None else (len(times),), **(defaults | options),
    )


def _uic_state(topology: mna.Topology, dtype, v1):
    """The differential unknowns ``(y, i_L)`` from ``IC=`` and ``.ic``: every
    capacitive element's voltage from its ``IC=``, or from the ``.ic`` node voltages
    (zero where none is given); inductor currents from their ``IC=``."""
    node_ic = dict(topology.netlist.initial_conditions)
    targets = []
    for e in topology.netlist.elements:
        stores_charge = e.kind == "d" and (dict(e.model)["cjo"] > 0 or dict(e.model)["tt"] > 0)
        if e.kind == "c" or stores_charge:
            if e.kind == "c" and e.ic is not None:
                targets.append(e.ic)
            else:
                a, b = e.nodes
                targets.append(node_ic.get(a, 0.0) - (0.0 if b == GROUND else node_ic.get(b, 0.0)))
    currents = [e.ic or 0.0 for e in topology.netlist.elements if e.kind == "l"]
    if v1.shape[1]:
        y, *_ = np.linalg.lstsq(topology.capacitive.T @ v1, np.array(targets), rcond=None)
    else:
        y = np.zeros(0)
    return jnp.asarray(np.concatenate([y, np.array(currents, float)]), dtype)

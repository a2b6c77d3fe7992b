"""Circuit analyses as modopt modules, so that the engine's flow and steps can design
element values: the free element values of the `Circuit` are the module's parameters
(one block), a sample is a frequency, a source value or a drive waveform."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._module import AbstractModule, AbstractSystemModule
from ..systems._common import as_times
from .circuit import Circuit


def _check_output(circuit: Circuit, name: str, where: str) -> str:
    name = name.lower()
    known = [f"v_{n}" for n in circuit.nodes] + [f"i_{b}" for b in circuit.topology.branches]
    if name not in known:
        raise ValueError(f"{where}: unknown output {name!r}; known: {', '.join(known)}.")
    return name


class ACResponse(AbstractModule):
    """Frequency (Hz, shape ``(1,)``) -> the AC response of `output`.

    `form` is ``"db"`` (``20 log10 |gain * H|``, shape ``(1,)``), ``"magnitude"``
    (``|gain * H|``) or ``"complex"`` (``(Re, Im)``, shape ``(2,)``). With ``gain=2`` the
    response of a doubly terminated filter (equal terminations) driven by a 1 V AC
    source is its S21.

    **Raises:** `ValueError` for an unknown output or form.
    """

    circuit: Circuit
    output: str = eqx.field(static=True)
    form: str = eqx.field(static=True, default="db")
    gain: float = eqx.field(static=True, default=1.0)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=(1,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        _check_output(self.circuit, self.output, "ACResponse")
        if self.form not in ("db", "magnitude", "complex"):
            raise ValueError(
                f"ACResponse: form must be db, magnitude or complex, got {self.form!r}."
            )

    def __call__(self, frequency):
        response = self.gain * self.circuit.ac(frequency)[self.output.lower()][0]
        if self.form == "complex":
            return jnp.stack([response.real, response.imag])
        power = (response.real**2 + response.imag**2)[None]
        return 10 * jnp.log10(power) if self.form == "db" else jnp.sqrt(power)


_S_QUANTITIES = ("s21_db", "s11_db", "s21_re", "s21_im", "s11_re", "s11_im")


class SParameters(AbstractModule):
    """Frequency (Hz, shape ``(1,)``) -> scattering parameters of a doubly terminated
    two-port driven by a 1 V AC source through `source_resistance` into
    `load_resistance`: ``S11 = 2 v(input) - 1`` and ``S21 = 2 sqrt(Rs / RL) v(output)``.

    `quantities` picks the outputs (shape ``(len(quantities),)``) from ``s21_db``,
    ``s11_db`` (``20 log10 |S|``), ``s21_re``, ``s21_im``, ``s11_re``, ``s11_im``.

    Why S11: the magnitude ``|S21|`` alone pins the element values of a maximally flat
    filter only very weakly (see the circuits docs); the input reflection's phase makes
    the design problem well posed, as it is in synthesis by continued fractions.

    **Raises:** `ValueError` for unknown nodes or quantities.
    """

    circuit: Circuit
    input: str = eqx.field(static=True)
    output: str = eqx.field(static=True)
    source_resistance: float = eqx.field(static=True)
    load_resistance: float = eqx.field(static=True)
    quantities: tuple[str, ...] = eqx.field(static=True, converter=tuple,
                                            default=("s21_db",))
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=(1,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        _check_output(self.circuit, self.input, "SParameters")
        _check_output(self.circuit, self.output, "SParameters")
        unknown = [q for q in self.quantities if q not in _S_QUANTITIES]
        if unknown or not self.quantities:
            raise ValueError(f"SParameters: unknown quantities {unknown}; choose from "
                             f"{', '.join(_S_QUANTITIES)}.")

    def __call__(self, frequency):
        response = self.circuit.ac(frequency)
        s = {
            "s11": 2 * response[self.input.lower()][0] - 1,
            "s21": 2 * (self.source_resistance / self.load_resistance) ** 0.5
            * response[self.output.lower()][0],
        }
        out = []
        for quantity in self.quantities:
            value = s[quantity[:3]]
            part = quantity[4:]
            if part == "db":
                out.append(10 * jnp.log10(value.real**2 + value.imag**2))
            else:
                out.append(value.real if part == "re" else value.imag)
        return jnp.stack(out)


class DCResponse(AbstractModule):
    """The DC value of the independent source `source` (shape ``(1,)``) -> the operating
    point's `outputs` (shape ``(len(outputs),)``).

    **Raises:** `ValueError` for an unknown source or output.
    """

    circuit: Circuit
    source: str = eqx.field(static=True)
    outputs: tuple[str, ...] = eqx.field(static=True, converter=tuple)
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=(1,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        for name in self.outputs:
            _check_output(self.circuit, name, "DCResponse")
        sources = [e.name for e, _ in self.circuit.topology.sources]
        if self.source.lower() not in sources:
            raise ValueError(f"DCResponse: {self.source!r} is not an independent source; "
                             f"sources: {', '.join(sources)}.")

    def __call__(self, value):
        point = self.circuit.operating_point(source=(self.source.lower(), value[0]))
        named = _named(self.circuit, point.x)
        return jnp.stack([named[name.lower()] for name in self.outputs])


class TransientResponse(AbstractSystemModule):
    """The transient of `output` at `times` (shape ``(T,)``), from the operating point
    (or the initial conditions with ``uic=True``).

    With `drive` naming an independent source, the input is that source's waveform
    sampled at `times` (shape ``(T,)``, linear in between, the first value before), so
    that circuit stages compose sequentially: one stage's output samples drive the
    next. Without `drive` the input is ignored (shape ``(1,)``).
    """

    circuit: Circuit
    times: tuple[float, ...] = eqx.field(static=True, converter=as_times)
    output: str = eqx.field(static=True)
    drive: str | None = eqx.field(static=True, default=None)
    uic: bool = eqx.field(static=True, default=False)
    options: tuple = eqx.field(static=True, default=(), converter=lambda d: tuple(dict(d).items()))
    sensitivity: str = eqx.field(static=True, kw_only=True, default="auto")
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=None)
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __check_init__(self):
        _check_output(self.circuit, self.output, "TransientResponse")
        if self.drive is not None:
            sources = [e.name for e, _ in self.circuit.topology.sources]
            if self.drive.lower() not in sources:
                raise ValueError(f"TransientResponse: {self.drive!r} is not an independent "
                                 f"source; sources: {', '.join(sources)}.")

    def __call__(self, u):
        drive = None if self.drive is None else self.drive.lower()
        dae = self.circuit.dae(self.times, uic=self.uic, drive=drive,
                               sensitivity=self.sensitivity, **dict(self.options))
        index = _index(self.circuit, self.output.lower())
        return dae.solve(None if drive is None else u).outputs[:, index]


def _named(circuit: Circuit, x):
    from . import mna

    return mna.named(circuit.topology, x)


def _index(circuit: Circuit, name: str) -> int:
    topology = circuit.topology
    if name.startswith("v_"):
        return topology.index(name[2:])
    return topology.branch(name[2:])

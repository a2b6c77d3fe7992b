"""Butterworth prototypes: the doubly terminated LC ladder and its closed-form response."""

from __future__ import annotations

import numpy as np


def prototype(order: int) -> np.ndarray:
    """Butterworth low-pass prototype values ``g_k = 2 sin((2k - 1) pi / (2n))``."""
    k = np.arange(1, order + 1)
    return 2 * np.sin((2 * k - 1) * np.pi / (2 * order))


def ladder_values(order: int, cutoff_hz: float, resistance: float) -> dict:
    """Element values of the shunt-C-first ladder ``C1 L2 C3 ...`` scaled to `cutoff_hz`
    and `resistance`: ``C = g / (2 pi fc R)``, ``L = g R / (2 pi fc)``."""
    omega = 2 * np.pi * cutoff_hz
    values = {}
    for k, g in enumerate(prototype(order), start=1):
        if k % 2:
            values[f"c{k}"] = g / (omega * resistance)
        else:
            values[f"l{k}"] = g * resistance / omega
    return values


def ladder_netlist(order: int, cutoff_hz: float, resistance: float,
                   values: dict | None = None) -> str:
    """The SPICE netlist of the doubly terminated ladder (source ``v1`` with AC 1 into
    ``rs``, nodes ``n1 ... n{m}``, load ``rl`` on the last node)."""
    values = ladder_values(order, cutoff_hz, resistance) if values is None else values
    lines = [
        f"* {order}th-order doubly terminated Butterworth LC ladder, {cutoff_hz:g} Hz, "
        f"{resistance:g} ohm",
        "V1 in 0 DC 0 AC 1",
        f"Rs in n1 {float(resistance)!r}",
    ]
    node = 1
    for k in range(1, order + 1):
        name = f"c{k}" if k % 2 else f"l{k}"
        if k % 2:
            lines.append(f"C{k} n{node} 0 {float(values[name])!r}")
        else:
            lines.append(f"L{k} n{node} n{node + 1} {float(values[name])!r}")
            node += 1
    lines += [f"RL n{node} 0 {float(resistance)!r}", ".end", ""]
    return "\n".join(lines)


def output_node(order: int) -> str:
    return f"v_n{order // 2 + 1}"


def scattering(frequencies_hz, order: int, cutoff_hz: float):
    """Closed-form ``(S11, S21)`` of the shunt-C-first Butterworth ladder between equal
    terminations: ``S21 = 1 / B(s)`` and ``S11 = -s^n / B(s)`` with ``s = j f / fc`` and
    ``B`` the Butterworth polynomial (poles ``exp(j pi (2k + n - 1) / (2n))``). The sign
    of S11 is that of a ladder whose first element is a shunt capacitor (S11 -> -1 as
    f -> infinity)."""
    s = 1j * np.asarray(frequencies_hz, float) / cutoff_hz
    k = np.arange(1, order + 1)
    poles = np.exp(1j * np.pi * (2 * k + order - 1) / (2 * order))
    b = np.prod(s[..., None] - poles, axis=-1)
    return -(s**order) / b, 1 / b

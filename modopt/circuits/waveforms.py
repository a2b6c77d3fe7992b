"""Independent-source waveforms (PULSE, SIN, PWL) as ngspice defines them, in JAX."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .netlist import Element, Waveform


def waveform_value(waveform: Waveform, t):
    """The source value at time `t` (any array shape)."""
    a = waveform.args
    if waveform.kind == "pulse":
        v1, v2, td, tr, tf, pw, per = a
        local = t - td
        if math.isfinite(per):
            local = jnp.where(local > 0, jnp.mod(local, per), local)
        rising = v1 + (v2 - v1) * local / tr
        falling = v2 + (v1 - v2) * (local - tr - pw) / tf
        return jnp.where(local <= 0, v1, jnp.where(
            local < tr, rising, jnp.where(
                local <= tr + pw, v2, jnp.where(local < tr + pw + tf, falling, v1))))
    if waveform.kind == "sin":
        vo, va, freq, td, theta, phase = a
        local = jnp.maximum(t - td, 0.0)
        return vo + va * jnp.exp(-theta * local) * jnp.sin(
            2 * jnp.pi * freq * local + phase * jnp.pi / 180
        )
    times, values = np.asarray(a[0::2]), np.asarray(a[1::2])
    return jnp.interp(t, times, values)


def source_value(element: Element, t=None, *, dc: bool = False):
    """An independent source's value: its DC value when `dc` (or when it has no
    waveform), else its waveform at `t`. A source with a waveform and no DC value takes
    the waveform's value at t = 0 for DC analyses, as ngspice does."""
    if element.waveform is None:
        return element.value
    if dc:
        return element.value if element.dc_given else waveform_value(element.waveform, 0.0)
    return waveform_value(element.waveform, t)


def breakpoints(element: Element, stop: float) -> list[float]:
    """Times in ``(0, stop)`` where the waveform has a corner (for the step controller)."""
    waveform = element.waveform
    if waveform is None:
        return []
    a = waveform.args
    if waveform.kind == "pulse":
        v1, v2, td, tr, tf, pw, per = a
        corners = [0.0, tr, tr + pw, tr + pw + tf]
        points, start = [], td
        while start < stop and len(points) < 4000:
            points += [start + c for c in corners]
            if not math.isfinite(per):
                break
            start += per
    elif waveform.kind == "sin":
        points = [a[3]]
    else:
        points = list(a[0::2])
    return [p for p in points if 0 < p < stop]

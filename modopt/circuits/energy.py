"""The circuit's energy metrics as output metrics: capacitances on node voltages,
inductances on inductor currents (``E = 1/2 v^T C v + 1/2 i^T L i``)."""

from __future__ import annotations

import jax
import numpy as np

from .. import metrics
from . import mna
from .circuit import Circuit


def energy_matrix(circuit: Circuit, outputs) -> np.ndarray:
    """The energy metric on `outputs` (names ``v_<node>`` / ``i_<inductor>``) at the
    operating point: the block of the charge Jacobian ``dq/dx`` (the capacitance
    matrix on node voltages; ``L`` on inductor currents, whose charge is ``-L i``).

    **Raises:** `ValueError` for an output that stores no energy (a node without
    capacitance to the others, a branch that is not an inductor's).
    """
    point = circuit.operating_point(throw=True)
    values = circuit.values()
    jq = np.asarray(jax.jacfwd(lambda x: mna.charge(circuit.topology, values, x))(point.x))
    index, signs = [], []
    for name in outputs:
        name = name.lower()
        kind, _, what = name.partition("_")
        if kind == "v":
            index.append(circuit.topology.index(what))
            signs.append(1.0)
        elif kind == "i" and circuit.topology.netlist.element(what).kind == "l":
            index.append(circuit.topology.branch(what))
            signs.append(-1.0)  # an inductor's charge is -L i
        else:
            raise ValueError(f"energy_matrix: {name!r} stores no energy (only node voltages "
                             "and inductor currents do).")
    block = np.asarray(signs)[:, None] * jq[np.ix_(index, index)]
    empty = [outputs[k] for k in range(len(index)) if block[k, k] == 0]
    if empty:
        raise ValueError(f"energy_matrix: {empty} see no capacitance or inductance, so their "
                         "energy metric is zero; weight them another way.")
    return block


def energy_metric(circuit: Circuit, outputs, batch: int) -> metrics.Dense:
    """`energy_matrix` for every sample of a batch of `batch` (block diagonal), as the
    output metric of a module whose outputs are `outputs`."""
    return metrics.Dense(np.kron(np.eye(batch), energy_matrix(circuit, outputs)))

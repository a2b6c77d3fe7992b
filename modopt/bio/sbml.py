"""SBML models as JAX ODEs: read once with libsbml, generate array code once, simulate
inside ``jit``/``vmap``/``grad`` with Diffrax.

```python
model = modopt.bio.read_sbml("repressilator.xml")
sol = model.simulate(jnp.linspace(0, 1000, 101), params={"beta": 0.3})
sol.values["PX"], sol.amounts["PX"], sol.result
```

Every number a fit may change is an *input* of the generated code, not a constant:
parameter values, compartment sizes, species initial values and stoichiometries
(`SBMLModel.defaults`), plus an optional set of *overrides* (the value a symbol takes at
the initial time, replacing its initial assignment: PEtab's condition table). So one
model compiles once for every parameter set and every condition.

Semantics (checked on the 521 ODE cases of the SBML Test Suite, see
`modopt.bio.sbml_suite`): every species without a rule is a state holding its
*amount*; every symbol with a rate rule is a state holding its value. The value of a
species in mathematics is its concentration (amount / compartment size) unless it has
only substance units or lives in a 0-D compartment. Assignment rules are evaluated at
every right-hand-side call, initial assignments once; both are ordered by their
dependencies (a cycle is an algebraic loop and an error).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._results import RESULTS
from ..systems._common import integration_result, poison
from ._mathml import RUNTIME, MathTranslator, number
from .errors import SBMLError, SBMLUnsupportedError


def _libsbml():
    try:
        import libsbml
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError(
            "modopt.bio needs python-libsbml: pip install 'modopt[bio]'") from error
    return libsbml


@dataclass(frozen=True)
class SpeciesInfo:
    """What the simulator needs to know of one species.

    - `compartment`: its compartment's id.
    - `substance_only`: its value in mathematics is an amount (``hasOnlySubstanceUnits``,
      or a 0-D compartment), otherwise a concentration.
    - `fixed`: boundary condition or constant: reactions do not change it.
    - `initial`: ``"amount"``, ``"concentration"`` or ``None``: what its default value in
      `SBMLModel.defaults` means.
    """

    compartment: str
    substance_only: bool
    fixed: bool
    initial: str | None


class SBMLSimulation(eqx.Module):
    """A simulation of an `SBMLModel` at times `ts`.

    - `values`: every symbol's value, ``{id: (T,)}`` (species as they appear in
      mathematics: concentration, or amount when substance-only).
    - `amounts`, `concentrations`: ``{species id: (T,)}``.
    - `states`: the ODE state, shape ``(T, n)`` (`SBMLModel.state_ids` names the columns).
    - `result`: a `modopt.RESULTS` code. On failure every array is NaN.
    """

    ts: jax.Array
    values: dict
    amounts: dict
    concentrations: dict
    states: jax.Array
    result: RESULTS


def _reject_unsupported(model, libsbml) -> None:
    for event in model.getListOfEvents():
        raise SBMLUnsupportedError(
            f"event {event.getId() or '(no id)'!r}: SBML events are not supported")
    for rule in model.getListOfRules():
        if rule.isAlgebraic():
            raise SBMLUnsupportedError(
                "algebraic rule (the model is a DAE in SBML form): algebraic rules are not "
                "supported")
    for reaction in model.getListOfReactions():
        if reaction.isSetFast() and reaction.getFast():
            raise SBMLUnsupportedError(
                f"fast reaction {reaction.getId()!r}: fast reactions are not supported")
    if model.getNumConstraints():
        constraint = model.getConstraint(0)
        raise SBMLUnsupportedError(
            f"constraint {constraint.getMetaId() or '(no id)'!r}: constraints are not supported")


def _convert(document, libsbml, source: str) -> None:
    if (document.getLevel(), document.getVersion()) != (3, 2):
        props = libsbml.ConversionProperties(libsbml.SBMLNamespaces(3, 2))
        props.addOption("setLevelAndVersion", True)
        props.addOption("strict", False)
        if document.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
            raise SBMLError(f"{source}: conversion from SBML level {document.getLevel()} "
                            f"version {document.getVersion()} to level 3 version 2 failed")
    for option in ("expandFunctionDefinitions", "promoteLocalParameters"):
        props = libsbml.ConversionProperties()
        props.addOption(option, True)
        if document.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
            raise SBMLError(f"{source}: libsbml's {option} converter failed")


def read_sbml(source, *, overridable=()) -> SBMLModel:
    """Read an SBML file (any level and version) into an `SBMLModel`.

    **Arguments:**

    - `source`: a path, or the XML text itself.
    - `overridable`: ids whose initial value a condition may set (see
      `SBMLModel.simulate`'s `overrides`).

    **Returns:** an `SBMLModel`.

    **Raises:** `SBMLError` when libsbml reports errors in the file or an id is unknown;
    `SBMLUnsupportedError` naming the element for events, delays, algebraic rules, fast
    reactions and constraints.
    """
    libsbml = _libsbml()
    text = str(source)
    if text.lstrip().startswith("<"):
        document, where = libsbml.readSBMLFromString(text), "SBML text"
    else:
        if not Path(text).is_file():
            raise FileNotFoundError(f"read_sbml: no SBML file at {text}")
        document, where = libsbml.readSBMLFromFile(text), text
    if document.getNumErrors(libsbml.LIBSBML_SEV_ERROR) + document.getNumErrors(
            libsbml.LIBSBML_SEV_FATAL):
        raise SBMLError(f"{where}: libsbml reports errors:\n"
                        f"{document.getErrorLog().toString()[:2000]}")
    if document.getModel() is None:
        raise SBMLError(f"{where}: the document holds no model")
    # Before conversion: converting to L3V2 drops the `fast` attribute.
    _reject_unsupported(document.getModel(), libsbml)
    _convert(document, libsbml, where)
    # The document must stay alive while its SWIG objects are used; _Builder copies all
    # it needs into plain Python data.
    return _Builder(document, libsbml, where, tuple(overridable)).build()


class _Builder:
    """Turns a converted libsbml document into generated code (one dependency graph)."""

    def __init__(self, document, libsbml, where, overridable):
        self.document = document
        self.libsbml = libsbml
        self.where = where
        m = document.getModel()
        self.m = m
        self.translate = MathTranslator(libsbml)
        zero_d = {c.getId() for c in m.getListOfCompartments() if c.getSpatialDimensions() == 0}
        self.compartments = [c.getId() for c in m.getListOfCompartments()]
        self.parameters = [p.getId() for p in m.getListOfParameters()]
        self.reactions = {r.getId(): r for r in m.getListOfReactions()}
        self.species: dict[str, SpeciesInfo] = {}
        self.defaults: dict[str, float] = {}
        nan = math.nan
        for c in m.getListOfCompartments():
            self.defaults[c.getId()] = c.getSize() if c.isSetSize() else nan
        for p in m.getListOfParameters():
            self.defaults[p.getId()] = p.getValue() if p.isSetValue() else nan
        for s in m.getListOfSpecies():
            if s.isSetInitialConcentration():
                initial, value = "concentration", s.getInitialConcentration()
            elif s.isSetInitialAmount():
                initial, value = "amount", s.getInitialAmount()
            else:
                initial, value = None, nan
            self.species[s.getId()] = SpeciesInfo(
                s.getCompartment(), bool(s.getHasOnlySubstanceUnits())
                or s.getCompartment() in zero_d,
                bool(s.getBoundaryCondition() or s.getConstant()), initial)
            self.defaults[s.getId()] = value
        self.conversion = {s.getId(): s.getConversionFactor() for s in m.getListOfSpecies()
                           if s.isSetConversionFactor()}
        model_factor = m.getConversionFactor() if m.isSetConversionFactor() else None
        self.srefs = {}
        for r in m.getListOfReactions():
            for sr in list(r.getListOfReactants()) + list(r.getListOfProducts()):
                if sr.isSetId():
                    self.srefs[sr.getId()] = sr
                    self.defaults[sr.getId()] = (sr.getStoichiometry() if sr.isSetStoichiometry()
                                                 else nan)
        self.assignment = {r.getVariable(): r.getMath() for r in m.getListOfRules()
                           if r.isAssignment() and r.isSetMath()}
        self.rate_rule = {r.getVariable(): r.getMath() for r in m.getListOfRules()
                          if r.isRate() and r.isSetMath()}
        self.initial_assignment = {a.getSymbol(): a.getMath()
                                   for a in m.getListOfInitialAssignments() if a.isSetMath()}
        known = set(self.defaults) | set(self.reactions)
        for sid in list(self.assignment) + list(self.rate_rule) + list(self.initial_assignment):
            if sid not in known:
                raise SBMLError(f"{where}: a rule or initial assignment targets the unknown "
                                f"id {sid!r}")
        unknown = [o for o in overridable if o not in self.defaults]
        if unknown:
            raise SBMLError(f"{where}: cannot override {unknown}: not a parameter, "
                            "compartment, species or stoichiometry of the model")
        self.overridable = overridable
        self.amount_states = [s for s in self.species
                              if s not in self.rate_rule and s not in self.assignment]
        self.states = [("amount", s) for s in self.amount_states] + [
            ("rate_rule", v) for v in self.rate_rule]
        self.index = {sid: i for i, (_, sid) in enumerate(self.states)}
        self.changes = defaultdict(list)  # species -> [(reaction, sign, stoichiometry source)]
        for rid, r in self.reactions.items():
            for sign, refs in (("-1.0", r.getListOfReactants()), ("1.0", r.getListOfProducts())):
                for sr in refs:
                    sref_id = sr.getId() if sr.isSetId() else None
                    if sref_id and (sref_id in self.assignment or sref_id in self.rate_rule
                                    or sref_id in self.initial_assignment
                                    or not sr.getConstant()):
                        stoichiometry = f"s_{sref_id}"
                    else:
                        stoichiometry = number(sr.getStoichiometry() if sr.isSetStoichiometry()
                                               else nan)
                    self.changes[sr.getSpecies()].append((rid, sign, stoichiometry))
        self.model_factor = model_factor
        self.model_id = m.getId()

    # -- nodes: name -> (source, names read); None = unsupported if reached
    def _tx(self, ast, where):
        return self.translate(ast, f"{where} of model {self.model_id!r}")

    def _kinetic_law(self, rid):
        law = self.reactions[rid].getKineticLaw()
        if law is None or not law.isSetMath():
            return "0.0", set()
        return self._tx(law.getMath(), f"the kinetic law of reaction {rid!r}")

    def _symbol_rhs(self, sid):
        if sid in self.assignment:
            return self._tx(self.assignment[sid], f"the assignment rule for {sid!r}")
        if sid in self.rate_rule:
            return f"x[{self.index[sid]}]", set()
        if sid in self.species:
            info = self.species[sid]
            amount = f"x[{self.index[sid]}]"
            if info.substance_only:
                return amount, set()
            return f"({amount} / s_{info.compartment})", {f"s_{info.compartment}"}
        if sid in self.reactions:
            return self._kinetic_law(sid)
        return f"I['s_{sid}']", set()

    def _symbol_init(self, sid):
        source, names = self._symbol_init_default(sid)
        if sid in self.overridable:
            return f"_override(O['{sid}'], {source})", names
        return source, names

    def _symbol_init_default(self, sid):
        if sid in self.initial_assignment:
            return self._tx(self.initial_assignment[sid], f"the initial assignment of {sid!r}")
        if sid in self.assignment:
            return self._tx(self.assignment[sid], f"the assignment rule for {sid!r}")
        if sid in self.species:
            info = self.species[sid]
            size = f"s_{info.compartment}"
            if info.initial == "concentration":
                return ((f"(P['{sid}'] * {size})", {size}) if info.substance_only
                        else (f"P['{sid}']", set()))
            if info.initial == "amount":
                return ((f"P['{sid}']", set()) if info.substance_only
                        else (f"(P['{sid}'] / {size})", {size}))
            return "NAN", set()
        if sid in self.reactions:
            return self._kinetic_law(sid)
        return f"P['{sid}']", set()

    def _derivative(self, kind, sid):
        if kind == "rate_rule":
            return self._tx(self.rate_rule[sid], f"the rate rule for {sid!r}")
        if self.species[sid].fixed:
            return "0.0", set()
        terms, names = [], set()
        for rid, sign, stoichiometry in self.changes[sid]:
            terms.append(f"({sign} * {stoichiometry} * s_{rid})")
            names.add(f"s_{rid}")
            if stoichiometry.startswith("s_"):
                names.add(stoichiometry)
        source = "(" + " + ".join(terms) + ")" if terms else "0.0"
        factor = self.conversion.get(sid, self.model_factor)
        if factor:
            source, names = f"({source} * s_{factor})", names | {f"s_{factor}"}
        return source, names

    def _rate_of(self, sid):
        if sid in self.rate_rule:
            return f"d_{sid}", {f"d_{sid}"}
        if sid in self.species and sid in self.index:
            info = self.species[sid]
            if info.substance_only:
                return f"d_{sid}", {f"d_{sid}"}
            c = info.compartment
            return (f"(d_{sid} / s_{c} - s_{sid} * rate_{c} / s_{c})",
                    {f"d_{sid}", f"s_{c}", f"s_{sid}", f"rate_{c}"})
        if sid in self.assignment:
            return None
        return "0.0", set()

    def _graph(self, mode):
        symbol = self._symbol_init if mode == "init" else self._symbol_rhs
        ids = list(self.defaults) + list(self.reactions)
        graph = {f"s_{sid}": symbol(sid) for sid in ids}
        for kind, sid in self.states:
            graph[f"d_{sid}"] = self._derivative(kind, sid)
        for sid in ids:
            graph[f"rate_{sid}"] = self._rate_of(sid)
        return graph

    def _order(self, graph, roots):
        out, done, active = [], set(), []

        def visit(name):
            if name in done:
                return
            if name in active:
                loop = " -> ".join(n.split("_", 1)[1] for n in active[active.index(name):])
                raise SBMLError(f"{self.where}: the rules form an algebraic loop: {loop}")
            if name not in graph:
                raise SBMLError(f"{self.where}: the mathematics uses the unknown id "
                                f"{name.split('_', 1)[1]!r}")
            if graph[name] is None:
                raise SBMLUnsupportedError(
                    f"rateOf({name.split('_', 1)[1]}) of an assignment-rule target is not "
                    "supported")
            active.append(name)
            for dependency in sorted(graph[name][1]):
                visit(dependency)
            active.pop()
            done.add(name)
            out.append(name)

        for root in roots:
            visit(root)
        return [(name, graph[name][0]) for name in out]

    def _initial_state_sources(self):
        sources, names = [], set()
        for kind, sid in self.states:
            names.add(f"s_{sid}")
            if kind == "rate_rule":
                sources.append(f"s_{sid}")
                continue
            info = self.species[sid]
            size = f"s_{info.compartment}"
            from_symbol = f"s_{sid}" if info.substance_only else f"(s_{sid} * {size})"
            if not info.substance_only:
                names.add(size)
            if info.initial == "amount" and sid not in self.initial_assignment:
                # Size-less and 0-D compartments make symbol * size NaN; take the amount.
                default = f"P['{sid}']"
                sources.append(f"jnp.where(jnp.isnan(O['{sid}']), {default}, {from_symbol})"
                               if sid in self.overridable else default)
            else:
                sources.append(from_symbol)
        return sources, names

    def build(self) -> SBMLModel:
        ids = list(self.defaults) + list(self.reactions)
        symbols = [f"s_{sid}" for sid in ids]
        init_graph, rhs_graph = self._graph("init"), self._graph("rhs")
        x0_sources, x0_names = self._initial_state_sources()

        def body(lines, ordered):
            lines.extend(f"    {name} = {source}" for name, source in ordered)

        init = ["def _init(t, P, O):"]
        body(init, self._order(init_graph, symbols + sorted(x0_names)))
        init.append("    return {" + ", ".join(f"{s!r}: {s}" for s in symbols) + "}, ["
                    + ", ".join(x0_sources) + "]")
        derivatives = [f"d_{sid}" for _, sid in self.states]
        rhs = ["def _rhs(t, x, I):"]
        body(rhs, self._order(rhs_graph, derivatives))
        rhs.append("    return [" + ", ".join(derivatives) + "]")
        out = ["def _out(t, x, I):"]
        body(out, self._order(rhs_graph, symbols))
        pairs = [f"{sid!r}: s_{sid}" for sid in ids]
        for sid, info in self.species.items():
            size = f"s_{info.compartment}"
            amount = (f"x[{self.index[sid]}]" if sid in self.amount_states
                      else f"s_{sid}" if info.substance_only else f"(s_{sid} * {size})")
            concentration = f"jnp.divide(s_{sid}, {size})" if info.substance_only else f"s_{sid}"
            pairs += [f"'amount:{sid}': {amount}", f"'concentration:{sid}': {concentration}"]
        out.append("    return {" + ", ".join(pairs) + "}")
        source = "\n".join(init + [""] + rhs + [""] + out) + "\n"
        namespace = dict(RUNTIME, _override=_override)
        exec(compile(source, f"<sbml {self.model_id}>", "exec"), namespace)  # noqa: S102
        return SBMLModel(
            model_id=self.model_id, source=source, defaults=dict(self.defaults),
            species=dict(self.species), compartments=tuple(self.compartments),
            parameters=tuple(self.parameters), reactions=tuple(self.reactions),
            state_ids=tuple(sid for _, sid in self.states),
            assignment_rules=tuple(self.assignment),
            initial_assignments=tuple(self.initial_assignment),
            overridable=self.overridable,
            functions=(namespace["_init"], namespace["_rhs"], namespace["_out"]),
        )


def _override(value, default):
    return jnp.where(jnp.isnan(value), default, value)


class SBMLModel:
    """An SBML model compiled to JAX functions (made by `read_sbml`).

    Attributes: `model_id`; `source` (the generated Python, for reading and debugging);
    `defaults` (``{id: value}`` of every input: compartment sizes, parameter values,
    species initial values as the file states them, see `species`, and
    stoichiometries); `species` (``{id: SpeciesInfo}``); `compartments`, `parameters`,
    `reactions`; `state_ids` (the ODE state's symbols); `assignment_rules`,
    `initial_assignments` (target ids); `overridable` (ids a condition may set).

    Hashable by identity, so it may be a static field of an Equinox module.
    """

    def __init__(self, *, model_id, source, defaults, species, compartments, parameters,
                 reactions, state_ids, assignment_rules, initial_assignments, overridable,
                 functions):
        self.model_id = model_id
        self.source = source
        self.defaults = defaults
        self.species = species
        self.compartments = compartments
        self.parameters = parameters
        self.reactions = reactions
        self.state_ids = state_ids
        self.assignment_rules = assignment_rules
        self.initial_assignments = initial_assignments
        self.overridable = overridable
        self._init, self._rhs, self._out = functions

    def __repr__(self):
        return (f"SBMLModel({self.model_id!r}: {len(self.species)} species, "
                f"{len(self.reactions)} reactions, {len(self.state_ids)} states)")

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every id whose value `simulate` reports."""
        return tuple(self.defaults) + self.reactions

    def inputs(self, params=None, dtype=None) -> dict:
        """`defaults` updated by `params`, as arrays of one dtype.

        **Raises:** `KeyError` naming ids that are not inputs of the model.
        """
        params = {} if params is None else dict(params)
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise KeyError(f"{self.model_id}: {unknown} are not parameters, compartments, "
                           f"species or stoichiometries of the model")
        ruled = sorted(set(params) & (set(self.assignment_rules) | set(self.initial_assignments)))
        if ruled:
            raise KeyError(
                f"{self.model_id}: {ruled} are set by assignment rules or initial assignments, "
                "so a value given for them would be ignored; change the rule's inputs, or "
                "declare them overridable (read_sbml(..., overridable=...)) and pass overrides")
        if dtype is None:
            leaves = [v for v in params.values() if eqx.is_inexact_array(v)]
            dtype = leaves[0].dtype if leaves else jnp.result_type(float)
        return {k: jnp.asarray(params.get(k, v), dtype) for k, v in self.defaults.items()}

    def _overrides(self, overrides, dtype) -> dict:
        overrides = {} if overrides is None else dict(overrides)
        unknown = sorted(set(overrides) - set(self.overridable))
        if unknown:
            raise KeyError(f"{self.model_id}: {unknown} were not declared overridable "
                           f"(read_sbml(..., overridable=...)); declared: {self.overridable}")
        return {k: jnp.asarray(overrides.get(k, jnp.nan), dtype) for k in self.overridable}

    def initial(self, params=None, overrides=None, t0=0.0):
        """The symbols' values and the state at `t0`.

        **Arguments:** `params` (``{id: value}`` replacing `defaults`); `overrides`
        (``{id: value at t0}`` for `overridable` ids, replacing initial assignments;
        NaN keeps the model's own value); `t0`.

        **Returns:** ``(constants, x0)``: ``{"s_<id>": value}`` and the state vector.
        """
        inputs = self.inputs(params)
        dtype = next(iter(inputs.values())).dtype if inputs else jnp.result_type(float)
        constants, x0 = self._init(jnp.asarray(t0, dtype), inputs,
                                   self._overrides(overrides, dtype))
        x0 = jnp.stack([jnp.asarray(v, dtype) for v in x0]) if x0 else jnp.zeros((0,), dtype)
        return constants, x0

    def vector_field(self, t, x, constants):
        """``dx/dt`` for the state `x` (`constants` from `initial`).

        Non-finite values are replaced by a huge finite one: the step is then rejected by
        the error control, as a NaN would be, but the implicit solvers' linear solves
        (and their derivatives, which Lineax checks and raises on) stay finite.
        """
        if x.shape[0] == 0:
            return x
        dx = jnp.stack([jnp.asarray(v, x.dtype) for v in self._rhs(t, x, constants)])
        return jnp.where(jnp.isfinite(dx), dx, jnp.sqrt(jnp.finfo(x.dtype).max))

    def observe(self, t, x, constants) -> dict:
        """Every symbol's value at one time, plus ``"amount:<species>"`` and
        ``"concentration:<species>"``."""
        return {k: jnp.asarray(v, x.dtype) for k, v in self._out(t, x, constants).items()}

    def steady_state(self, params=None, overrides=None, *, t0=0.0,
                     solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-10, max_steps=100_000,
                     adjoint=diffrax.RecursiveCheckpointAdjoint()):
        """Integrate from the initial state until ``|dx/dt|`` falls below the tolerances
        (Diffrax's steady-state event). Integration, not Newton: conservation laws make
        the Jacobian singular, but the trajectory still settles.

        **Returns:** ``(state, result)``; NaN state and ``integration_failed`` when no
        steady state is reached within `max_steps`.
        """
        constants, state = self.initial(params, overrides, t0)
        if state.shape[0] == 0:
            return state, RESULTS.where(jnp.array(True), RESULTS.successful,
                                        RESULTS.successful)
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, x, c: self.vector_field(t, x, c)), solver, t0, jnp.inf,
            1e-3, state, args=constants, saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            event=diffrax.Event(diffrax.steady_state_event(rtol=rtol, atol=atol)),
            max_steps=max_steps, adjoint=adjoint, throw=False,
        )
        settled = solution.result == diffrax.RESULTS.event_occurred
        result = RESULTS.where(settled, RESULTS.successful, RESULTS.steady_state_not_found)
        return poison(solution.ys[-1], settled), result

    def simulate(self, times, params=None, overrides=None, *, x0=None, t0=0.0,
                 solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-10, max_steps=100_000,
                 adjoint=diffrax.RecursiveCheckpointAdjoint(), throw=False) -> SBMLSimulation:
        """Simulate and observe every symbol at `times`.

        **Arguments:** `times` (increasing, ``>= t0``); `params`, `overrides` as for
        `initial`; `x0` (a state replacing the initial one, e.g. a pre-equilibrated
        state); `solver` (default ``Kvaerno5()``: biological models are often stiff),
        `rtol`, `atol`, `max_steps`, `adjoint` (Diffrax's); `throw` (raise on failure).

        **Returns:** an `SBMLSimulation`; a failed integration gives
        ``RESULTS.integration_failed`` and NaN values.
        """
        constants, initial_state = self.initial(params, overrides, t0)
        state = initial_state if x0 is None else jnp.asarray(x0, initial_state.dtype)
        ts = jnp.asarray(times, state.dtype)
        if state.shape[0] == 0:
            states = jnp.zeros((ts.shape[0], 0), state.dtype)
            result = RESULTS.where(jnp.array(True), RESULTS.successful, RESULTS.successful)
        else:
            solution = diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, x, c: self.vector_field(t, x, c)), solver, t0,
                ts[-1], None, state, args=constants, saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                max_steps=max_steps, adjoint=adjoint, throw=False,
            )
            result = integration_result(solution.result)
            states = solution.ys
        ok = result == RESULTS.successful
        observed = poison(jax.vmap(lambda t, x: self.observe(t, x, constants))(ts, states), ok)
        simulation = SBMLSimulation(
            ts=ts,
            values={k: v for k, v in observed.items() if ":" not in k},
            amounts={k[7:]: v for k, v in observed.items() if k.startswith("amount:")},
            concentrations={k[14:]: v for k, v in observed.items()
                            if k.startswith("concentration:")},
            states=poison(states, ok), result=result,
        )
        if throw:
            simulation = result.error_if(simulation, ~ok)
        return simulation

"""A reader for the SPICE netlist subset that engineers use most.

`parse_netlist(text)` returns a flat `Netlist`: subcircuit instances are expanded
(element ``r1`` of instance ``x1`` becomes ``x1.r1``, its internal node ``n`` becomes
``x1.n``; ground ``0`` is global), ``.param`` expressions are evaluated, values carry
SI suffixes. SPICE is case-insensitive: every name is lower-cased. As in SPICE, the first
line is the title.

Supported elements: R, C, L (``IC=``), V and I (``DC``, ``AC mag [phase]``, ``PULSE``,
``SIN``, ``PWL``), D (``.model ... D(IS N RS CJO VJ M TT FC)``), E, G, F, H, B (``I=`` or
``V=`` expressions) and X. Cards: ``.model``, ``.param``, ``.subckt``/``.ends``, ``.ic``,
``.end``; ``.options``, ``.control ... .endc`` and analysis cards (``.op .dc .ac .tran``,
``.print`` ...) are kept as text or skipped. Anything else raises `NetlistError` naming the
line and the element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .expressions import Expression, ExpressionError, parse_number

GROUND = "0"
_TOKEN = re.compile(r"\{[^}]*\}|'[^']*'|[(),=]|[^\s(),={}']+")
_SKIPPED_CARDS = {".options", ".option", ".opt", ".temp", ".print", ".plot", ".save",
                  ".probe", ".meas", ".measure", ".four", ".width", ".title", ".nodeset",
                  ".op", ".dc", ".ac", ".tran", ".noise", ".tf", ".sens", ".disto", ".pz"}
DIODE_DEFAULTS = {"is": 1e-14, "n": 1.0, "rs": 0.0, "cjo": 0.0, "vj": 1.0, "m": 0.5,
                  "tt": 0.0, "fc": 0.5}
_NODE_COUNTS = {"r": 2, "c": 2, "l": 2, "v": 2, "i": 2, "d": 2, "e": 4, "g": 4, "f": 2,
                "h": 2, "b": 2}


class NetlistError(ValueError):
    """A netlist that cannot be read; the message names the line and the element."""


@dataclass(frozen=True)
class Waveform:
    """A source's time dependence: ``kind`` in ``pulse``, ``sin``, ``pwl``; `args` as
    written (numbers)."""

    kind: str
    args: tuple[float, ...]


@dataclass(frozen=True)
class Element:
    """One circuit element after expansion.

    `value` is R, C, L, a controlled source's gain, an I/V source's DC value; `control`
    the controlling voltage source of F and H; `expression` and `expression_kind`
    (``"i"`` or ``"v"``) those of a B source, with `bindings` the parameter values it
    reads and `expression_nodes` its node names mapped to circuit nodes; `model` a
    diode's parameters (area applied).
    """

    name: str
    kind: str
    nodes: tuple[str, ...]
    line: int
    value: float | None = None
    ic: float | None = None
    control: str | None = None
    expression: Expression | None = field(default=None, compare=False)
    expression_kind: str | None = None
    bindings: tuple[tuple[str, float], ...] = ()
    expression_nodes: tuple[tuple[str, str], ...] = ()
    dc_given: bool = True
    ac: tuple[float, float] = (0.0, 0.0)
    waveform: Waveform | None = None
    model: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Netlist:
    title: str
    elements: tuple[Element, ...]
    initial_conditions: tuple[tuple[str, float], ...] = ()
    analyses: tuple[str, ...] = ()
    params: tuple[tuple[str, float], ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node but ground, in order of first appearance."""
        seen = {}
        for element in self.elements:
            for node in element.nodes:
                if node != GROUND:
                    seen.setdefault(node, None)
        return tuple(seen)

    def element(self, name: str) -> Element:
        for element in self.elements:
            if element.name == name.lower():
                return element
        raise KeyError(f"no element {name!r} in the netlist; elements: "
                       f"{', '.join(e.name for e in self.elements)}.")


@dataclass
class _Subcircuit:
    name: str
    ports: list[str]
    defaults: dict
    lines: list  # (line number, text)


def _logical_lines(text: str):
    """(line number, text) with comments removed, continuations joined and the
    ``.control`` blocks dropped; the title line is returned separately."""
    raw = text.splitlines()
    title = raw[0].strip() if raw else ""
    lines: list[list] = []
    in_control = False
    for number, line in enumerate(raw[1:], start=2):
        stripped = line.strip()
        lowered = stripped.lower()
        if in_control:
            in_control = not lowered.startswith(".endc")
            continue
        if lowered.startswith(".control"):
            in_control = True
            continue
        if not stripped or stripped.startswith("*"):
            continue
        stripped = re.split(r";|\s\$\s|\s\$$", stripped)[0].strip()
        if stripped.startswith("+"):
            if not lines:
                raise NetlistError(f"line {number}: a '+' continuation with nothing before it.")
            lines[-1][1] += " " + stripped[1:]
            continue
        if stripped:
            lines.append([number, stripped])
    return title, [(n, t) for n, t in lines]


def _value(token: str, scope: dict, where: str) -> float:
    number = parse_number(token)
    if number is not None:
        return number
    try:
        if token.startswith(("{", "'")) or token.lower() in scope:
            return float(Expression(token)(scope))
    except ExpressionError as error:
        raise NetlistError(f"{where}: {error}") from None
    raise NetlistError(f"{where}: {token!r} is not a number or a {{expression}}.")


def _assignments(tokens: list[str], scope: dict, where: str) -> dict:
    """``k = v`` pairs (parentheses ignored) into a dict of floats."""
    return {key: _value(text, scope, where) for key, text in _assignments_raw(tokens, where)}


def _parse_params(tokens, scope, where) -> dict:
    """``.param a=1 b={2*a}``: evaluated in order, later ones seeing earlier ones."""
    values = {}
    for name, value in _assignments_raw(tokens, where):
        values[name] = _value(value, scope | values, where)
    return values


def _assignments_raw(tokens, where):
    tokens = [t for t in tokens if t not in "(),"]
    if len(tokens) % 3 or any(tokens[i + 1] != "=" for i in range(0, len(tokens), 3)):
        raise NetlistError(f"{where}: expected name=value pairs, got {' '.join(tokens)!r}.")
    return [(tokens[i].lower(), tokens[i + 2]) for i in range(0, len(tokens), 3)]


def _source(tokens, scope, where, tstep):
    """The value part of a V or I card."""
    dc, dc_given, ac, waveform = 0.0, False, (0.0, 0.0), None
    i = 0
    while i < len(tokens):
        word = tokens[i].lower()
        if word == "dc":
            dc, dc_given = _value(tokens[i + 1], scope, where), True
            i += 2
        elif word == "ac":
            numbers = []
            i += 1
            while i < len(tokens) and len(numbers) < 2 and parse_number(tokens[i]) is not None:
                numbers.append(parse_number(tokens[i]))
                i += 1
            if not numbers:
                numbers = [1.0]
            ac = (numbers[0], numbers[1] if len(numbers) > 1 else 0.0)
        elif word in ("pulse", "sin", "pwl"):
            i += 1
            args = []
            depth = 0
            while i < len(tokens):
                token = tokens[i]
                if token == "(":
                    depth += 1
                elif token == ")":
                    depth -= 1
                    if depth <= 0:
                        i += 1
                        break
                elif token != ",":
                    if parse_number(token) is None and not token.startswith(("{", "'")):
                        break
                    args.append(_value(token, scope, where))
                i += 1
            waveform = _waveform(word, args, where, tstep)
        elif parse_number(tokens[i]) is not None or tokens[i].startswith(("{", "'")):
            dc, dc_given = _value(tokens[i], scope, where), True
            i += 1
        else:
            raise NetlistError(f"{where}: unsupported source specification {tokens[i]!r} "
                               "(supported: DC, AC, PULSE, SIN, PWL).")
    return dc, dc_given, ac, waveform


def _waveform(kind, args, where, tstep) -> Waveform:
    if kind == "pulse":
        if len(args) < 2:
            raise NetlistError(f"{where}: PULSE needs at least v1 and v2.")
        v1, v2, td, tr, tf, pw, per = (list(args) + [0.0, 0.0, 0.0, float("inf"),
                                                     float("inf")][len(args) - 2:])[:7]
        if not (tr > 0 and tf > 0):
            if tstep is None:
                raise NetlistError(
                    f"{where}: PULSE with a zero rise or fall time; give both (ngspice "
                    "would use the .tran step, and this netlist has no .tran card)."
                )
            tr, tf = tr if tr > 0 else tstep, tf if tf > 0 else tstep
        return Waveform("pulse", (v1, v2, td, tr, tf, pw, per))
    if kind == "sin":
        if len(args) < 3:
            raise NetlistError(f"{where}: SIN needs vo, va and freq.")
        vo, va, freq, td, theta, phase = (list(args) + [0.0, 0.0, 0.0][len(args) - 3:])[:6]
        return Waveform("sin", (vo, va, freq, td, theta, phase))
    if len(args) < 2 or len(args) % 2:
        raise NetlistError(f"{where}: PWL needs pairs of time and value.")
    times = args[0::2]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise NetlistError(f"{where}: PWL times must increase strictly.")
    return Waveform("pwl", tuple(args))


def parse_netlist(text: str) -> Netlist:
    """Read a SPICE netlist.

    **Returns:** a flat `Netlist`.

    **Raises:** `NetlistError` for anything malformed or unsupported, naming the line
    number and the element.
    """
    title, lines = _logical_lines(text)
    models: dict[str, dict] = {}
    subcircuits: dict[str, _Subcircuit] = {}
    params: dict[str, float] = {}
    ics: dict[str, float] = {}
    analyses: list[str] = []
    top: list = []
    tstep = None
    current: _Subcircuit | None = None
    for number, line in lines:
        tokens = _TOKEN.findall(line)
        card = tokens[0].lower()
        where = f"line {number} ({tokens[0]})"
        if card == ".end":
            break
        if card == ".subckt":
            if current is not None:
                raise NetlistError(f"{where}: nested .subckt definitions are not supported.")
            rest = tokens[2:]
            ports, defaults = rest, []
            if "params:" in [t.lower() for t in rest]:
                k = [t.lower() for t in rest].index("params:")
                ports, defaults = rest[:k], rest[k + 1:]
            elif "=" in rest:
                k = rest.index("=") - 1
                ports, defaults = rest[:k], rest[k:]
            current = _Subcircuit(tokens[1].lower(), [p.lower() for p in ports],
                                  dict(_assignments_raw(defaults, where)), [])
            continue
        if card == ".ends":
            if current is None:
                raise NetlistError(f"{where}: .ends without .subckt.")
            subcircuits[current.name] = current
            current = None
            continue
        if current is not None:
            current.lines.append((number, line))
            continue
        if card == ".model":
            if len(tokens) < 3 or tokens[2].lower() != "d":
                raise NetlistError(
                    f"{where}: only diode models (.model NAME D(...)) are supported."
                )
            values = _assignments(tokens[3:], params, where)
            unknown = set(values) - set(DIODE_DEFAULTS)
            if unknown:
                raise NetlistError(f"{where}: unsupported diode model parameters "
                                   f"{sorted(unknown)}; supported: {sorted(DIODE_DEFAULTS)}.")
            models[tokens[1].lower()] = DIODE_DEFAULTS | values
        elif card == ".param":
            params.update(_parse_params(tokens[1:], params, where))
        elif card == ".ic":
            for k in range(1, len(tokens), 6):
                group = tokens[k:k + 6]
                if [g.lower() for g in group[:2]] != ["v", "("] or group[3:5] != [")", "="]:
                    raise NetlistError(f"{where}: expected v(node)=value, got {' '.join(group)!r}.")
                ics[group[2].lower()] = _value(group[5], params, where)
        elif card in _SKIPPED_CARDS:
            analyses.append(line)
            if card == ".tran" and len(tokens) > 1:
                tstep = _value(tokens[1], params, where)
        elif card.startswith("."):
            raise NetlistError(f"{where}: the card {tokens[0]} is not supported.")
        else:
            top.append((number, line))
    if current is not None:
        raise NetlistError(f".subckt {current.name} has no .ends.")

    elements: list[Element] = []
    context = _Context(models, subcircuits, tstep)
    for number, line in top:
        context.expand(number, line, params, "", {}, elements, ())
    names = [e.name for e in elements]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NetlistError(f"duplicate element names: {', '.join(duplicates)}.")
    return Netlist(title, tuple(elements), tuple(ics.items()), tuple(analyses),
                   tuple(params.items()))


@dataclass
class _Context:
    models: dict
    subcircuits: dict
    tstep: float | None

    def expand(self, number, line, scope, prefix, node_map, out, stack):
        tokens = _TOKEN.findall(line)
        name = tokens[0].lower()
        kind = name[0]
        where = f"line {number} ({prefix}{tokens[0]})"

        def node(n):
            n = n.lower()
            if n in (GROUND, "gnd"):
                return GROUND
            return node_map.get(n, prefix + n)

        if kind == "x":
            self._instance(tokens, number, where, scope, prefix, node, out, stack)
            return
        if kind not in _NODE_COUNTS:
            raise NetlistError(
                f"{where}: element type {kind.upper()!r} is not supported (supported: "
                "R, C, L, V, I, D, E, G, F, H, B, X)."
            )
        count = _NODE_COUNTS[kind]
        if len(tokens) < 1 + count + (kind != "b"):
            raise NetlistError(f"{where}: too few fields for a {kind.upper()} element.")
        nodes = tuple(node(n) for n in tokens[1:1 + count])
        rest = tokens[1 + count:]
        full = prefix + name
        if kind in "rcl":
            value = _value(rest[0], scope, where)
            extra = _assignments(rest[1:], scope, where) if len(rest) > 1 else {}
            allowed = {"ic"} if kind in "cl" else set()
            if set(extra) - allowed:
                raise NetlistError(f"{where}: unsupported options {sorted(set(extra) - allowed)}.")
            out.append(Element(full, kind, nodes, number, value=value, ic=extra.get("ic")))
        elif kind in "vi":
            dc, given, ac, waveform = _source(rest, scope, where, self.tstep)
            out.append(Element(full, kind, nodes, number, value=dc, dc_given=given, ac=ac,
                               waveform=waveform))
        elif kind in "eg":
            if len(rest) != 1:
                raise NetlistError(f"{where}: expected 'n+ n- nc+ nc- gain' (only the "
                                   "linear form is supported).")
            out.append(Element(full, kind, nodes, number, value=_value(rest[0], scope, where)))
        elif kind in "fh":
            if len(rest) != 2:
                raise NetlistError(f"{where}: expected 'n+ n- vcontrol gain'.")
            out.append(Element(full, kind, nodes, number, value=_value(rest[1], scope, where),
                               control=prefix + rest[0].lower()))
        elif kind == "d":
            if not rest or rest[0].lower() not in self.models:
                raise NetlistError(f"{where}: unknown diode model "
                                   f"{rest[0] if rest else ''!r} (define it with .model).")
            area = _value(rest[1], scope, where) if len(rest) > 1 else 1.0
            model = dict(self.models[rest[0].lower()])
            model["is"] *= area
            model["cjo"] *= area
            model["rs"] /= area
            out.append(Element(full, kind, nodes, number, model=tuple(sorted(model.items()))))
        else:  # b
            match = re.match(r"\s*\S+\s+\S+\s+\S+\s+([iv])\s*=\s*(.+)$", line, re.IGNORECASE)
            if match is None:
                raise NetlistError(f"{where}: expected 'n+ n- I=expression' or 'V=expression'.")
            try:
                expression = Expression(match.group(2))
                for param in expression.names - {"time"}:
                    if param not in scope:
                        raise ExpressionError(f"unknown parameter {param!r}")
            except ExpressionError as error:
                raise NetlistError(f"{where}: {error}") from None
            out.append(Element(
                full, kind, nodes, number, expression=expression,
                expression_kind=match.group(1).lower(),
                bindings=tuple((k, v) for k, v in scope.items() if k in expression.names),
                expression_nodes=tuple((n, node(n)) for n in sorted(expression.nodes)),
            ))

    def _instance(self, tokens, number, where, scope, prefix, node, out, stack):
        lowered = [t.lower() for t in tokens]
        if "params:" in lowered:
            k = lowered.index("params:")
            head, assigns = tokens[1:k], tokens[k + 1:]
        elif "=" in tokens:
            k = tokens.index("=") - 1
            head, assigns = tokens[1:k], tokens[k:]
        else:
            head, assigns = tokens[1:], []
        if not head:
            raise NetlistError(f"{where}: an X instance needs nodes and a subcircuit name.")
        sub_name = head[-1].lower()
        if sub_name not in self.subcircuits:
            raise NetlistError(f"{where}: unknown subcircuit {head[-1]!r}.")
        if sub_name in stack:
            raise NetlistError(f"{where}: subcircuit {sub_name!r} instantiates itself.")
        sub = self.subcircuits[sub_name]
        ports = head[:-1]
        if len(ports) != len(sub.ports):
            raise NetlistError(f"{where}: subcircuit {sub_name!r} has {len(sub.ports)} ports "
                               f"({' '.join(sub.ports)}), the instance gives {len(ports)}.")
        local = dict(scope)
        for key, text in sub.defaults.items():
            local[key] = _value(text, local, where)
        for key, text in _assignments_raw(assigns, where):
            local[key] = _value(text, scope, where)
        instance = prefix + tokens[0].lower() + "."
        node_map = {p: node(n) for p, n in zip(sub.ports, ports)}
        for sub_number, sub_line in sub.lines:
            self.expand(sub_number, sub_line, local, instance, node_map, out,
                        stack + (sub_name,))

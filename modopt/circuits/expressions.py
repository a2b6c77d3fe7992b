"""SPICE arithmetic expressions (``.param`` values, ``{...}`` element values and
B-source expressions), parsed once into a Python syntax tree of a whitelisted subset and
evaluated with `jax.numpy`, so that B sources are traced like any other element.

Accepted: numbers with SI suffixes (``2.2k``, ``10u``, ``1meg``), names of parameters,
``+ - * / **`` and ``^`` (a power of the absolute value, as in ngspice: ``v**3`` is
``|v|^3``; ``pwr(x, y)`` is also ``|x|^y`` and ``pwrs(x, y)`` is ``sign(x) |x|^y``),
parentheses, the functions of
`FUNCTIONS`, and in B sources ``v(node)``, ``v(node1, node2)`` and ``time``.
"""

from __future__ import annotations

import ast
import re

import jax.numpy as jnp

SUFFIXES = {"t": 1e12, "g": 1e9, "meg": 1e6, "k": 1e3, "mil": 25.4e-6, "m": 1e-3,
            "u": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15}
_NUMBER = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(meg|mil|[tgkmunpf])?([a-z]*)$", re.IGNORECASE
)
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(meg|mil|[tgkmunpf])?[a-z]*(?![\w(])",
    re.IGNORECASE,
)

_VOLTAGE = re.compile(r"\bv\(([^()]*)\)", re.IGNORECASE)

FUNCTIONS = {
    "abs": jnp.abs, "exp": jnp.exp, "log": jnp.log, "ln": jnp.log, "log10": jnp.log10,
    "sqrt": jnp.sqrt, "sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan, "atan": jnp.arctan,
    "sinh": jnp.sinh, "cosh": jnp.cosh, "tanh": jnp.tanh, "min": jnp.minimum,
    "max": jnp.maximum, "pow": jnp.power, "pwr": lambda x, y: jnp.power(jnp.abs(x), y),
    "pwrs": lambda x, y: jnp.sign(x) * jnp.power(jnp.abs(x), y), "sgn": jnp.sign,
    "u": lambda x: jnp.where(x > 0, 1.0, 0.0),
}
def _power(base, exponent):
    # ngspice evaluates both ``**`` and ``^`` as pow(|base|, exponent): v**3 is |v|^3.
    return jnp.power(jnp.abs(base), exponent)


_BINARY = {ast.Add: jnp.add, ast.Sub: jnp.subtract, ast.Mult: jnp.multiply,
           ast.Div: jnp.divide, ast.Pow: _power}


class ExpressionError(ValueError):
    """An expression that is malformed or uses something outside the supported subset."""


def parse_number(token: str) -> float | None:
    """``"2.2k" -> 2200.0``, ``"10uF" -> 1e-5``, ``"1Meg" -> 1e6``; ``None`` if `token` is
    not a number. Letters after the suffix (units) are ignored, as SPICE does."""
    match = _NUMBER.match(token.strip())
    if match is None:
        return None
    mantissa, suffix, _ = match.groups()
    return float(mantissa) * (SUFFIXES[suffix.lower()] if suffix else 1.0)


def _python_syntax(text: str) -> str:
    def number(match):
        return repr(parse_number(match.group(0)))

    text = text.strip().strip("'").replace("^", "**").replace("{", "(").replace("}", ")")
    # Node names are not Python names ("in", "1"): set them aside, quoted, while numbers
    # with suffixes are rewritten.
    voltages = [
        "v(" + ", ".join(repr(n.strip().lower()) for n in m.group(1).split(",")) + ")"
        for m in _VOLTAGE.finditer(text)
    ]
    text = _VOLTAGE.sub(lambda m: " __voltage__ ", text)
    text = _NUMBER_IN_TEXT.sub(number, text)
    for voltage in voltages:
        text = text.replace("__voltage__", voltage, 1)
    return text


class Expression:
    """A parsed expression: `names` are the free names it reads (parameters, ``time``),
    `nodes` the node voltages it reads; `__call__` evaluates it."""

    def __init__(self, text: str):
        self.text = text
        try:
            tree = ast.parse(_python_syntax(text), mode="eval")
        except SyntaxError as error:
            raise ExpressionError(f"cannot parse the expression {text!r}: {error.msg}.") from None
        self.names: set[str] = set()
        self.nodes: set[str] = set()
        self._check(tree.body)
        self._tree = tree.body

    def _check(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return
        if isinstance(node, ast.Name):
            self.names.add(node.id.lower())
            return
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left)
            self._check(node.right)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self._check(node.operand)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id.lower()
            if name == "v":
                if not 1 <= len(node.args) <= 2:
                    raise ExpressionError(f"{self.text!r}: v() takes one or two node names.")
                self.nodes.update(_node_name(a) for a in node.args)
                return
            if name in FUNCTIONS:
                for arg in node.args:
                    self._check(arg)
                return
            raise ExpressionError(
                f"{self.text!r}: unknown function {name!r}; supported: v, "
                f"{', '.join(sorted(FUNCTIONS))}."
            )
        raise ExpressionError(
            f"{self.text!r}: unsupported syntax ({ast.unparse(node)!r}); expressions take "
            "numbers, names, + - * / ** ^, parentheses and functions."
        )

    def __call__(self, values: dict, voltage=None):
        """Evaluate with `values` (name -> number or array) and ``voltage(node)`` for v().

        **Raises:** `ExpressionError` for a name that `values` lacks.
        """
        return self._eval(self._tree, values, voltage)

    def _eval(self, node, values, voltage):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            name = node.id.lower()
            if name not in values:
                raise ExpressionError(f"{self.text!r}: unknown parameter {name!r}.")
            return values[name]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](
                self._eval(node.left, values, voltage), self._eval(node.right, values, voltage)
            )
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, values, voltage)
            return -operand if isinstance(node.op, ast.USub) else operand
        name = node.func.id.lower()
        if name == "v":
            if voltage is None:
                raise ExpressionError(f"{self.text!r}: v() is only allowed in B sources.")
            nodes = [_node_name(a) for a in node.args]
            return voltage(nodes[0]) - (voltage(nodes[1]) if len(nodes) == 2 else 0.0)
        return FUNCTIONS[name](*(self._eval(a, values, voltage) for a in node.args))


def _node_name(arg) -> str:
    return arg.value

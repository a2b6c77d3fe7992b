"""SBML MathML (a libsbml ``ASTNode``) -> a Python expression over ``jax.numpy``.

The translation walks the AST by node type, never by printed formula: csymbols such as
``time`` may carry any name, and a model may name its own parameters ``time``, ``pi`` or
``inf``. Every SBML id ``X`` becomes the Python name ``s_X`` (no clash with keywords or
the runtime below); ``rateOf(X)`` becomes ``rate_X``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jss

from .errors import SBMLUnsupportedError


def number(value: float) -> str:
    """A float literal; non-finite values as runtime names."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "(-INF)"
    return repr(float(value))


def _truth(x):
    return jnp.asarray(x) != 0


def _as_float(condition):
    return jnp.where(condition, 1.0, 0.0)


def _power(base, exponent):
    """``base ** exponent`` whose derivative in the exponent is 0, not NaN, at base 0.

    ``d(a^b)/db = a^b log a`` is ``0 * -inf`` at ``a = 0``: Hill functions of a species
    that starts at zero would make every sensitivity NaN. Non-positive bases get no
    derivative in the exponent (it is 0 or undefined there).
    """
    positive = base > 0
    return jnp.where(positive, jnp.power(jnp.where(positive, base, 1.0), exponent),
                     jnp.power(base, jax.lax.stop_gradient(exponent)))


RUNTIME = {
    "jnp": jnp,
    "NAN": math.nan,
    "INF": math.inf,
    "_gamma": jss.gamma,
    "_truth": _truth,
    "_float": _as_float,
    "_power": _power,
}
"""Names the generated code may use besides ``s_*``, ``d_*``, ``rate_*``, ``t`` and ``x``."""


def _table(libsbml):
    unary = {
        "ABS": "jnp.abs", "ARCCOS": "jnp.arccos", "ARCCOSH": "jnp.arccosh",
        "ARCSIN": "jnp.arcsin", "ARCSINH": "jnp.arcsinh", "ARCTAN": "jnp.arctan",
        "ARCTANH": "jnp.arctanh", "CEILING": "jnp.ceil", "COS": "jnp.cos",
        "COSH": "jnp.cosh", "EXP": "jnp.exp", "FLOOR": "jnp.floor", "LN": "jnp.log",
        "SIN": "jnp.sin", "SINH": "jnp.sinh", "TAN": "jnp.tan", "TANH": "jnp.tanh",
    }
    reciprocal = {"SEC": "jnp.cos", "CSC": "jnp.sin", "COT": "jnp.tan",
                  "SECH": "jnp.cosh", "CSCH": "jnp.sinh", "COTH": "jnp.tanh"}
    arc_reciprocal = {"ARCSEC": "jnp.arccos", "ARCCSC": "jnp.arcsin", "ARCCOT": "jnp.arctan",
                      "ARCSECH": "jnp.arccosh", "ARCCSCH": "jnp.arcsinh",
                      "ARCCOTH": "jnp.arctanh"}
    relational = {"LT": "<", "LEQ": "<=", "GT": ">", "GEQ": ">=", "EQ": "==", "NEQ": "!="}

    def code(prefix, name):
        return getattr(libsbml, f"AST_{prefix}_{name}")

    return (
        {code("FUNCTION", k): v for k, v in unary.items()},
        {code("FUNCTION", k): v for k, v in reciprocal.items()},
        {code("FUNCTION", k): v for k, v in arc_reciprocal.items()},
        {code("RELATIONAL", k): v for k, v in relational.items()},
    )


class MathTranslator:
    """Translates ASTs to source; records the SBML ids and ``rateOf`` targets read.

    **Arguments:** `libsbml`: the imported module (imported lazily by the caller).
    """

    def __init__(self, libsbml):
        self.L = libsbml
        self.unary, self.reciprocal, self.arc_reciprocal, self.relational = _table(libsbml)

    def __call__(self, ast, where: str) -> tuple[str, set[str]]:
        """**Returns:** ``(source, names)``: the expression and the node names it reads.

        **Raises:** `SBMLUnsupportedError` naming `where` for ``delay`` and unknown nodes.
        """
        names: set[str] = set()
        return self._walk(ast, where, names), names

    def _walk(self, a, where, names):  # noqa: C901 - one branch per MathML node type
        L = self.L
        t = a.getType()
        if t == L.AST_FUNCTION_RATE_OF:
            child = a.getChild(0) if a.getNumChildren() == 1 else None
            if child is None or child.getType() != L.AST_NAME:
                raise SBMLUnsupportedError(f"rateOf of an expression (not a symbol) in {where}")
            names.add(f"rate_{child.getName()}")
            return f"rate_{child.getName()}"
        if t == L.AST_FUNCTION_DELAY:
            raise SBMLUnsupportedError(f"delay in {where}: delay differential equations "
                                       "are not supported")
        c = [self._walk(a.getChild(i), where, names) for i in range(a.getNumChildren())]
        if t == L.AST_INTEGER:
            return repr(float(a.getInteger()))
        if t in (L.AST_REAL, L.AST_REAL_E, L.AST_RATIONAL, L.AST_NAME_AVOGADRO):
            return number(a.getReal())
        if t == L.AST_NAME:
            names.add(f"s_{a.getName()}")
            return f"s_{a.getName()}"
        if t == L.AST_NAME_TIME:
            return "t"
        if t == L.AST_CONSTANT_E:
            return number(math.e)
        if t == L.AST_CONSTANT_PI:
            return number(math.pi)
        if t == L.AST_CONSTANT_TRUE:
            return "1.0"
        if t == L.AST_CONSTANT_FALSE:
            return "0.0"
        if t == L.AST_PLUS:
            return "(" + " + ".join(c) + ")" if c else "0.0"
        if t == L.AST_TIMES:
            return "(" + " * ".join(c) + ")" if c else "1.0"
        if t == L.AST_MINUS:
            return f"(-{c[0]})" if len(c) == 1 else f"({c[0]} - {c[1]})"
        if t == L.AST_DIVIDE:
            return f"jnp.divide({c[0]}, {c[1]})"
        if t in (L.AST_POWER, L.AST_FUNCTION_POWER):
            child = a.getChild(1)
            if child.getType() == L.AST_INTEGER:  # integer powers keep exact gradients at 0
                return f"({c[0]} ** {child.getInteger()})"
            return f"_power({c[0]}, {c[1]})"
        if t in self.unary:
            return f"{self.unary[t]}({c[0]})"
        if t in self.reciprocal:
            return f"jnp.divide(1.0, {self.reciprocal[t]}({c[0]}))"
        if t in self.arc_reciprocal:
            return f"{self.arc_reciprocal[t]}(jnp.divide(1.0, {c[0]}))"
        if t == L.AST_FUNCTION_FACTORIAL:
            return f"_gamma({c[0]} + 1.0)"
        if t == L.AST_FUNCTION_LOG:
            return f"jnp.log10({c[0]})" if len(c) == 1 else f"(jnp.log({c[1]}) / jnp.log({c[0]}))"
        if t == L.AST_FUNCTION_ROOT:
            return f"jnp.sqrt({c[0]})" if len(c) == 1 else f"_power({c[1]}, 1.0 / {c[0]})"
        if t in (L.AST_FUNCTION_MAX, L.AST_FUNCTION_MIN):
            fold = "jnp.maximum" if t == L.AST_FUNCTION_MAX else "jnp.minimum"
            out = c[0]
            for item in c[1:]:
                out = f"{fold}({out}, {item})"
            return out
        if t == L.AST_FUNCTION_QUOTIENT:
            return f"jnp.trunc({c[0]} / {c[1]})"
        if t == L.AST_FUNCTION_REM:
            return f"jnp.fmod({c[0]}, {c[1]})"
        if t in self.relational:
            if len(c) < 2:
                return "1.0"
            op = self.relational[t]
            return "_float(" + " & ".join(f"({c[i]} {op} {c[i + 1]})"
                                          for i in range(len(c) - 1)) + ")"
        if t in (L.AST_LOGICAL_AND, L.AST_LOGICAL_OR, L.AST_LOGICAL_XOR):
            op, empty = {L.AST_LOGICAL_AND: ("&", "1.0"), L.AST_LOGICAL_OR: ("|", "0.0"),
                         L.AST_LOGICAL_XOR: ("^", "0.0")}[t]
            return "_float(" + f" {op} ".join(f"_truth({x})" for x in c) + ")" if c else empty
        if t == L.AST_LOGICAL_NOT:
            return f"_float(~_truth({c[0]}))"
        if t == L.AST_LOGICAL_IMPLIES:
            return f"_float(~_truth({c[0]}) | _truth({c[1]}))"
        if t == L.AST_FUNCTION_PIECEWISE:
            out = c[-1] if len(c) % 2 == 1 else "NAN"
            for i in range(len(c) - (len(c) % 2) - 2, -1, -2):
                out = f"jnp.where(_truth({c[i + 1]}), {c[i]}, {out})"
            return out
        raise SBMLUnsupportedError(
            f"MathML element {a.getName() or a.getType()!r} in {where} is not supported")

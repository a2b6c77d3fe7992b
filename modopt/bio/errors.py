"""Errors of `modopt.bio`: each names the file element it is about."""

from __future__ import annotations


class SBMLError(ValueError):
    """An SBML file that cannot be read (libsbml reports errors) or is inconsistent."""


class SBMLUnsupportedError(SBMLError):
    """An SBML construct that modopt does not simulate (events, delays, algebraic rules,
    fast reactions, constraints): an error, never a silently wrong answer."""


class PetabError(ValueError):
    """A PEtab problem that is malformed or uses a feature modopt does not support."""

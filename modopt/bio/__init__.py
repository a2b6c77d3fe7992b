"""Biological models: gene-regulatory and developmental systems as modopt modules."""

from .toggle import TOGGLE_NOMINAL, toggle_switch

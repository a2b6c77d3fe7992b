"""Data sets that ship with dependencies (nothing is downloaded)."""

from __future__ import annotations

import numpy as np


def load_digits_split(seed: int = 0, test_fraction: float = 0.2, dtype=np.float32):
    """scikit-learn's 8x8 digits, pixels scaled to [0, 1], split reproducibly.

    **Returns:** ``(x_train, y_train, x_test, y_test)`` with ``x`` of shape ``(n, 64)``
    and integer labels.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(dtype)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]

"""Matplotlib for the examples' figures, imported on first use (it is optional and slow
to import) with the file-only Agg backend, so that plotting works without a display."""


def pyplot():
    """**Returns:** ``matplotlib.pyplot`` with the Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

"""Result codes with advice, shared by the steps and the flow."""

import diffrax


class RESULTS(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """modopt's result codes; they extend Diffrax's (``RESULTS.promote`` maps them)."""

    nonfinite_step = (
        "A non-finite loss or Riemannian direction (NaN or inf) was met; the last finite "
        "state was kept. Try a smaller learning rate or first step, a larger mass, or "
        "check the model for overflow (a metric that is not positive definite shows up "
        "here too)."
    )

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
    integration_failed = (
        "The ODE/DAE solver did not reach the last observation time (it hit max_steps, or "
        "its step size collapsed because the state blew up or the system is stiff). Try a "
        "stiff implicit solver (diffrax.Kvaerno5()), a larger max_steps, or looser "
        "rtol/atol; inside an optimisation this usually means the parameters went where "
        "the system is stiff or unstable, and the step is rejected."
    )
    singular_algebraic_jacobian = (
        "The algebraic Jacobian dG/dz of the DAE is singular (or Newton on 0 = G(x, z) "
        "failed), so the DAE is not of index 1 here. Check that every algebraic variable "
        "appears in the algebraic equations, give a consistent initial guess for z, or "
        "reformulate the model."
    )
    steady_state_not_found = (
        "Neither Newton nor integrating to steady state found a root of F(x; w) = 0. Give "
        "a better initial guess, a longer settling time (t_settle), or check that the "
        "system has a stable equilibrium for these parameters."
    )
    operating_point_not_found = (
        "No DC operating point was found: Newton, gmin stepping and source stepping all "
        "failed. Check for a node without a DC path to ground, a loop of voltage sources "
        "and inductors, or element values that make the circuit singular (zero or "
        "negative R, L or C); give a starting guess with .ic if the circuit has several "
        "operating points."
    )
    nonphysical_element = (
        "An element value is not physical (a resistance, capacitance or inductance that "
        "is zero, negative or not finite). Optimise such values in log scale "
        "(Circuit.from_netlist(..., scale='log')) or bound them."
    )

"""Numerical checks of the book's identities: an exact value against a Monte Carlo estimate."""


def assert_agree(name, reference, estimate, standard_error, labels=("closed form", "Monte Carlo"), tolerance=5):
    """Print a reference value beside an estimate and assert they lie within `tolerance` standard errors.

    A Monte Carlo mean lands more than 5 standard errors from the truth with
    probability below one in a million, so the default tolerance fails only
    when the identity is wrong.
    """
    reference, estimate, standard_error = float(reference), float(estimate), float(standard_error)
    gap = abs(reference - estimate)
    print(
        f"{name}: {labels[0]} {reference:.5f}, {labels[1]} {estimate:.5f} +- {standard_error:.5f} "
        f"({gap / standard_error:.1f} standard errors apart)"
    )
    assert gap < tolerance * standard_error, f"{name}: {labels[0]} and {labels[1]} disagree"

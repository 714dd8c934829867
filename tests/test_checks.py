"""assert_agree passes within the tolerance and fails outside it."""

import pytest

from diffusion_lib.checks import assert_agree


def test_agreement_within_the_tolerance_passes_and_prints_both_values(capsys):
    assert_agree("x", 1.0, 1.04, 0.01)
    assert "closed form 1.00000, Monte Carlo 1.04000 +- 0.01000 (4.0 standard errors apart)" in capsys.readouterr().out


def test_disagreement_beyond_the_tolerance_fails_and_names_the_check():
    with pytest.raises(AssertionError, match="variance: closed form and Monte Carlo disagree"):
        assert_agree("variance", 1.0, 1.06, 0.01)
    with pytest.raises(AssertionError):
        assert_agree("variance", 1.0, 1.03, 0.01, tolerance=2)

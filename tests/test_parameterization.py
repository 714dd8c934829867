"""The predictions (parameterization.py): eps, x_0 and v, their conversions, the training target of each, the
callable (x_t, t) -> eps that as_eps_model makes of a network, and the errors for bad input.

The conversions are checked against x_t and v written out by hand, v against
a central finite difference of x_t along the angle phi with cos(phi) =
sqrt(alpha_bar), and against diffusers' DDPMScheduler run in float64
(conftest.py); the targets against a network that knows (x_0, t, eps).
"""

import math

import pytest
import torch
from step_index_checks import step_index_tests

from diffusion_lib import NoiseSchedule
from diffusion_lib.engine import TrainConfig, train
from diffusion_lib.losses import denoising_loss
from diffusion_lib.parameterization import (
    PREDICTIONS,
    as_eps_model,
    eps_from_v,
    eps_from_x0,
    prediction_target,
    score_from_eps,
    v_from_eps,
    x0_from_eps,
    x0_from_v,
)

# Conversions -----------------------------------------------------------------------------------------


def test_eps_x0_v_conversions_agree_with_definitions():
    """x0-from-eps and v-prediction and their inverses, against x_t and v written out by hand."""
    schedule = NoiseSchedule.cosine(T=1000)
    g = torch.Generator().manual_seed(4)
    B = 256
    x0 = 2 * torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64) - 1
    eps = torch.randn(B, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, schedule.T, (B,), generator=g)
    betas = schedule.betas.tolist()
    a = torch.tensor([math.prod(1 - b for b in betas[: k + 1]) for k in t.tolist()], dtype=torch.float64)
    a = a.reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    # x0 from eps divides by sqrt(alpha_bar), as small as 5e-5 here: rounding grows by up to 2e4.
    torch.testing.assert_close(schedule.q_sample(x0, t, eps), xt, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x0_from_eps(schedule, xt, t, eps), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_from_x0(schedule, xt, t, x0), eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(v_from_eps(schedule, x0, t, eps), v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x0_from_v(schedule, xt, t, v), x0, rtol=0, atol=1e-13)
    torch.testing.assert_close(eps_from_v(schedule, xt, t, v), eps, rtol=0, atol=1e-13)


def test_v_is_the_derivative_of_x_t_along_the_angle():
    """v-prediction: v = d x_t / d phi with cos(phi) = sqrt(alpha_bar), by a central finite difference."""
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    schedule = NoiseSchedule.from_alpha_bars([math.cos(phi) ** 2 for phi in (0.3, 0.9, 1.4)])
    for t, phi in enumerate((0.3, 0.9, 1.4)):
        h = 1e-6
        derivative = math.cos(phi + h) * x0 + math.sin(phi + h) * eps - math.cos(phi - h) * x0 - math.sin(phi - h) * eps
        v = v_from_eps(schedule, x0[None], t, eps[None])[0]
        torch.testing.assert_close(v, derivative / (2 * h), rtol=0, atol=1e-8)


def test_score_from_the_optimal_eps_is_the_gradient_of_log_q_t():
    """score-eps on Gaussian data x_0 ~ N(mu, s^2 I), where everything is known in closed form: x_t ~ N(sqrt(abar) mu,
    v I) with v = abar s^2 + 1 - abar, and the optimal eps* = E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / v
    by Gaussian regression (Cov(eps, x_t) = sqrt(1 - abar) I). The score is checked against autograd of log q_t."""
    schedule = NoiseSchedule.cosine(T=1000)
    g = torch.Generator().manual_seed(6)
    mu, s = torch.randn(3, dtype=torch.float64, generator=g), 0.7
    t = torch.tensor([0, 1, 250, 700, 999])
    x = 3 * torch.randn(len(t), 3, dtype=torch.float64, generator=g)
    abar = schedule.alpha_bars[t][:, None]
    mean, v = abar.sqrt() * mu, abar * s**2 + 1 - abar
    optimal_eps = (1 - abar).sqrt() * (x - mean) / v
    x.requires_grad_(True)
    log_q = torch.distributions.Normal(mean, v.sqrt()).log_prob(x).sum()
    (autograd_score,) = torch.autograd.grad(log_q, x)
    # float64 rounding in both: the score is O(|x - mean| / v) <= 1e3 here, computed in a few operations.
    torch.testing.assert_close(score_from_eps(schedule, t, optimal_eps), autograd_score, rtol=1e-12, atol=1e-12)


# Training targets and as_eps_model -------------------------------------------------------------------


def perfect_setup():
    schedule = NoiseSchedule.linear(T=1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    return schedule, x0, t, eps


def perfect_model(schedule, x0, t, eps, prediction):
    """A network that knows (x0, t, eps) and returns the exact target at x_t."""
    xt = schedule.q_sample(x0, t, eps)

    def model(x, steps):
        assert torch.equal(x, xt) and torch.equal(steps, t)
        return prediction_target(schedule, x0, t, eps, prediction)

    return model


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_perfect_model_has_zero_loss_and_recovers_eps(prediction):
    schedule, x0, t, eps = perfect_setup()
    model = perfect_model(schedule, x0, t, eps, prediction)
    loss = denoising_loss(model, schedule, x0, t, eps, prediction)
    assert loss.dtype == torch.float64
    assert loss.item() < 1e-12
    for other in PREDICTIONS:
        if other != prediction:  # the targets really differ: the same network is wrong under another prediction
            assert denoising_loss(model, schedule, x0, t, eps, other).item() > 1e-2
    xt = schedule.q_sample(x0, t, eps)
    recovered = as_eps_model(model, schedule, prediction)(xt, t)
    assert recovered.dtype == torch.float64
    assert (recovered - eps).abs().max().item() < 1e-10


def test_unknown_prediction_raises(tmp_path, tiny_training):
    schedule, x0, t, eps = perfect_setup()
    with pytest.raises(ValueError, match="unknown prediction 'score'; allowed: eps, x0, v"):
        prediction_target(schedule, x0, t, eps, "score")
    with pytest.raises(ValueError, match="unknown prediction 'score'; allowed: eps, x0, v"):
        denoising_loss(lambda x, steps: x, schedule, x0, t, eps, "score")
    with pytest.raises(ValueError, match="unknown prediction 'score'; allowed: eps, x0, v"):
        as_eps_model(lambda x, steps: x, schedule, "score")
    with pytest.raises(ValueError, match="prediction must be one of eps, x0, v, got 'score'"):
        train(TrainConfig(**tiny_training, prediction="score", out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


# Against diffusers' DDPMScheduler --------------------------------------------------------------------


T_STEP = 1000  # the steps of the oracle_schedule fixture (conftest.py)
SHAPE = (6, 1, 3, 3)  # NCHW, so that the per-example tables broadcast over channels and pixels


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_as_eps_model_passes_the_labels_through_to_the_network(prediction):
    schedule, x0, t, eps = perfect_setup()
    labels, seen = torch.tensor([2, 0, 1, 3]), []

    def conditional(x, steps, y):
        seen.append(y)
        return prediction_target(schedule, x0, t, eps, prediction)

    recovered = as_eps_model(conditional, schedule, prediction)(schedule.q_sample(x0, t, eps), t, labels)
    assert seen == [labels] and (recovered - eps).abs().max().item() < 1e-10


def test_v_from_eps_matches_get_velocity(oracle_schedule, float64_scheduler, randn, assert_close64):
    scheduler = float64_scheduler(oracle_schedule)
    x0, eps = randn(SHAPE, 9), randn(SHAPE, 10)
    t = torch.tensor([0, 1, 17, T_STEP // 2, T_STEP - 2, T_STEP - 1])
    assert_close64(v_from_eps(oracle_schedule, x0, t, eps), scheduler.get_velocity(x0, eps, t))


@pytest.mark.parametrize("t", [0, 1, T_STEP // 2, T_STEP - 1])
def test_x0_from_v_matches_diffusers_v_prediction(
    oracle_schedule, t, float64_scheduler, diffusers_step, randn, assert_close64
):
    """diffusers' step with prediction_type="v_prediction" returns its estimate of x_0 from v."""
    scheduler = float64_scheduler(oracle_schedule, prediction_type="v_prediction")
    xt, v = randn(SHAPE, 11), randn(SHAPE, 12)
    _, x0_expected = diffusers_step(scheduler, v, t, xt, seed=13)
    assert_close64(x0_from_v(oracle_schedule, xt, t, v), x0_expected)


# Bad input -------------------------------------------------------------------------------------------


T = 10  # the steps of the schedule fixture (conftest.py)


X = torch.zeros(4, 2, dtype=torch.float64)


# Every conversion that takes a step index, as a function of (schedule, t).
T_USERS = {
    "x0_from_eps": lambda s, t: x0_from_eps(s, X, t, X),
    "eps_from_x0": lambda s, t: eps_from_x0(s, X, t, X),
    "v_from_eps": lambda s, t: v_from_eps(s, X, t, X),
    "x0_from_v": lambda s, t: x0_from_v(s, X, t, X),
    "eps_from_v": lambda s, t: eps_from_v(s, X, t, X),
}


test_t_out_of_range, test_t_must_have_one_entry_per_example, test_t_must_be_an_integer = step_index_tests(T_USERS)


A, B, ROW = torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(1, 2)


SHAPE_USERS = {
    "x0_from_eps": (lambda s, a, b: x0_from_eps(s, a, 1, b), "xt", "eps"),
    "eps_from_x0": (lambda s, a, b: eps_from_x0(s, a, 1, b), "xt", "x0"),
    "v_from_eps": (lambda s, a, b: v_from_eps(s, a, 1, b), "x0", "eps"),
    "x0_from_v": (lambda s, a, b: x0_from_v(s, a, 1, b), "xt", "v"),
    "eps_from_v": (lambda s, a, b: eps_from_v(s, a, 1, b), "xt", "v"),
}


@pytest.mark.parametrize("other", [B, ROW], ids=["different", "broadcastable"])
@pytest.mark.parametrize("use, first, second", SHAPE_USERS.values(), ids=SHAPE_USERS.keys())
def test_shape_mismatch_names_both_arguments(schedule, use, first, second, other, mentions):
    """Even shapes that would broadcast are refused: a silently broadcast noise is a bug."""
    with pytest.raises(ValueError, match=mentions(first, second, "(4, 2)", str(tuple(other.shape)))):
        use(schedule, A, other)

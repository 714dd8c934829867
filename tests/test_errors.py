"""Bad input gets a clear error that names the argument, the offending value and what is allowed.

Each check asserts on the message: it must mention every listed fragment
(in any order), so the wording may change but the content may not.
"""

import math
import re

import pytest
import torch

from diffusion_lib import NoiseSchedule, ddpm_step, sample, sample_loop
from diffusion_lib.data import mnist, mnist_images, toy_data
from diffusion_lib.elbo import step_loss
from diffusion_lib.fit import fit
from diffusion_lib.metrics import mmd, sliced_wasserstein
from diffusion_lib.models import MLPDenoiser, sinusoidal_embedding
from diffusion_lib.parameterization import eps_from_v, eps_from_x0, v_from_eps, x0_from_eps, x0_from_v

T = 10


def mentions(*fragments):
    """A regex that matches a message containing every fragment as a whole token, in any order.

    A token is not part of a longer word or number: "0" does not match inside "10" or "1.0".
    """
    return "".join(rf"(?=.*(?<!\w)(?<!\d\.){re.escape(fragment)}(?!\w)(?!\.\d))" for fragment in fragments)


@pytest.fixture
def schedule():
    return NoiseSchedule.linear(T)


def zero_model(x, t):
    return torch.zeros_like(x)


# Constructing a schedule ----------------------------------------------------------


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match=mentions("'quadratic'", "linear", "cosine")):
        NoiseSchedule.named("quadratic")


@pytest.mark.parametrize("bad_T", [0, -3, 2.5, "10", None])
@pytest.mark.parametrize(
    "make",
    [NoiseSchedule.linear, NoiseSchedule.cosine, lambda T: NoiseSchedule.named("cosine", T)],
    ids=["linear", "cosine", "named"],
)
def test_T_must_be_a_positive_integer(make, bad_T):
    with pytest.raises(ValueError, match=mentions("T", repr(bad_T))):
        make(bad_T)


@pytest.mark.parametrize("bad_beta", [0.0, 1.0, -0.01, 1.5, math.nan])
def test_betas_must_lie_strictly_between_0_and_1(bad_beta):
    with pytest.raises(ValueError, match=mentions("beta", "(0, 1)", str(bad_beta))):
        NoiseSchedule([0.1, bad_beta, 0.2])


def test_linear_schedule_with_a_zero_beta_start_is_refused():
    with pytest.raises(ValueError, match=mentions("beta", "(0, 1)", "0.0")):
        NoiseSchedule.linear(T, beta_start=0.0)


@pytest.mark.parametrize("betas, shape", [([], "(0,)"), (0.1, "()"), (torch.full((2, 3), 0.1), "(2, 3)")])
def test_betas_must_be_a_non_empty_1d_sequence(betas, shape):
    with pytest.raises(ValueError, match=mentions("betas", "1-D", shape)):
        NoiseSchedule(betas)


def test_alpha_bars_must_decrease():
    with pytest.raises(ValueError, match=mentions("alpha_bars", "0.95")):
        NoiseSchedule.from_alpha_bars([0.9, 0.95, 0.5])


# The step index t -----------------------------------------------------------------

X = torch.zeros(4, 2, dtype=torch.float64)

# Every lookup that takes a step index, as a function of (schedule, t).
T_USERS = {
    "q_sample": lambda s, t: s.q_sample(X, t, X),
    "q_step": lambda s, t: s.q_step(X, t, X),
    "posterior": lambda s, t: s.posterior(X, X, t),
    "x0_from_eps": lambda s, t: x0_from_eps(s, X, t, X),
    "eps_from_x0": lambda s, t: eps_from_x0(s, X, t, X),
    "v_from_eps": lambda s, t: v_from_eps(s, X, t, X),
    "x0_from_v": lambda s, t: x0_from_v(s, X, t, X),
    "eps_from_v": lambda s, t: eps_from_v(s, X, t, X),
}


@pytest.mark.parametrize("use", T_USERS.values(), ids=T_USERS.keys())
@pytest.mark.parametrize(
    "t, bad", [(-1, -1), (T, T), (torch.tensor([0, 3, T, 1]), T), (torch.tensor([0, -2, 1, 1]), -2)], ids=str
)
def test_t_out_of_range(schedule, use, t, bad):
    with pytest.raises(ValueError, match=mentions("t", str(bad), str(T - 1))):
        use(schedule, t)


@pytest.mark.parametrize("use", T_USERS.values(), ids=T_USERS.keys())
@pytest.mark.parametrize(
    "t, shape", [(torch.tensor([0, 1, 2]), "(3,)"), (torch.zeros(4, 1, dtype=torch.long), "(4, 1)")]
)
def test_t_must_have_one_entry_per_example(schedule, use, t, shape):
    with pytest.raises(ValueError, match=mentions("t", "(4,)", shape)):
        use(schedule, t)


@pytest.mark.parametrize("use", T_USERS.values(), ids=T_USERS.keys())
@pytest.mark.parametrize("t, shown", [(torch.tensor([1.0, 2.0, 3.0, 4.0]), "1."), (1.5, "1.5")])
def test_t_must_be_an_integer(schedule, use, t, shown):
    with pytest.raises(TypeError, match=mentions("t", "int", shown)):
        use(schedule, t)


# Shapes that must agree -----------------------------------------------------------

A, B, ROW = torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(1, 2)

SHAPE_USERS = {
    "q_sample": (lambda s, a, b: s.q_sample(a, 1, b), "x0", "noise"),
    "q_step": (lambda s, a, b: s.q_step(a, 1, b), "x_prev", "noise"),
    "posterior": (lambda s, a, b: s.posterior(a, b, 1), "x0", "xt"),
    "x0_from_eps": (lambda s, a, b: x0_from_eps(s, a, 1, b), "xt", "eps"),
    "eps_from_x0": (lambda s, a, b: eps_from_x0(s, a, 1, b), "xt", "x0"),
    "v_from_eps": (lambda s, a, b: v_from_eps(s, a, 1, b), "x0", "eps"),
    "x0_from_v": (lambda s, a, b: x0_from_v(s, a, 1, b), "xt", "v"),
    "eps_from_v": (lambda s, a, b: eps_from_v(s, a, 1, b), "xt", "v"),
    "ddpm_step eps": (lambda s, a, b: ddpm_step(s, b, 1, a, a), "xt", "eps"),
    "ddpm_step noise": (lambda s, a, b: ddpm_step(s, a, 1, a, b), "xt", "noise"),
}


@pytest.mark.parametrize("other", [B, ROW], ids=["different", "broadcastable"])
@pytest.mark.parametrize("use, first, second", SHAPE_USERS.values(), ids=SHAPE_USERS.keys())
def test_shape_mismatch_names_both_arguments(schedule, use, first, second, other):
    """Even shapes that would broadcast are refused: a silently broadcast noise is a bug."""
    with pytest.raises(ValueError, match=mentions(first, second, "(4, 2)", str(tuple(other.shape)))):
        use(schedule, A, other)


# Sampling -------------------------------------------------------------------------


def test_unknown_reverse_variance(schedule):
    with pytest.raises(ValueError, match=mentions("variance", "'learned'", "posterior", "beta")):
        ddpm_step(schedule, X, 3, X, X, variance="learned")


@pytest.mark.parametrize("bad", [-1, T])
def test_ddpm_step_t_out_of_range(schedule, bad):
    with pytest.raises(ValueError, match=mentions("t", str(bad), str(T - 1))):
        ddpm_step(schedule, X, bad, X, X)


def test_ddpm_step_t_must_be_an_int(schedule):
    with pytest.raises(TypeError, match=mentions("t", "int")):
        ddpm_step(schedule, X, torch.tensor([3, 3, 3, 3]), X, X)


@pytest.mark.parametrize("timesteps", [[0, 5, 5], [7, 3], [2, 6, 4], []], ids=str)
def test_respaced_needs_increasing_timesteps(schedule, timesteps):
    with pytest.raises(ValueError, match=mentions("timesteps", "increasing", str(timesteps))):
        schedule.respaced(timesteps)


@pytest.mark.parametrize("timesteps, bad", [([0, 4, T], T), ([-1, 4], -1)], ids=str)
def test_respaced_timesteps_out_of_range(schedule, timesteps, bad):
    with pytest.raises(ValueError, match=mentions("timesteps", str(bad), str(T - 1))):
        schedule.respaced(timesteps)


@pytest.mark.parametrize("num_steps", [0, -2, T + 1, 2.0])
def test_spaced_timesteps_bounds(schedule, num_steps):
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps), str(T))):
        schedule.spaced_timesteps(num_steps)


@pytest.mark.parametrize("num_steps", [0, T + 1])
def test_sampling_refuses_a_bad_number_of_steps(schedule, num_steps):
    """num_steps=0 must not silently fall back to all T steps."""
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps))):
        sample(zero_model, schedule, (4, 2), num_steps=num_steps)
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps))):
        next(sample_loop(zero_model, schedule, torch.zeros(4, 2), num_steps=num_steps))


# Losses, training, metrics, models ------------------------------------------------


def test_unknown_decoder(schedule):
    with pytest.raises(ValueError, match=mentions("decoder", "'poisson'", "discrete", "gaussian")):
        step_loss(zero_model, schedule, X, 0, X, decoder="poisson")


@pytest.mark.parametrize("steps, batch_size, name, value", [(0, 8, "steps", "0"), (5, 0, "batch_size", "0")])
def test_fit_needs_positive_steps_and_batch_size(schedule, steps, batch_size, name, value):
    model = MLPDenoiser(dim=2, width=8, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=mentions(name, value)):
        fit(model, schedule, torch.zeros(16, 2), steps=steps, batch_size=batch_size)


def test_metrics_refuse_mismatched_samples():
    with pytest.raises(ValueError, match=mentions("x", "y", "(5, 2)", "(5, 3)")):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=mentions("x", "y", "(5, 2)", "(6, 3)")):
        mmd(torch.zeros(5, 2), torch.zeros(6, 3))


def test_time_embedding_needs_an_even_dimension():
    with pytest.raises(ValueError, match=mentions("dim", "7")):
        sinusoidal_embedding(torch.arange(3), 7)


def test_mlp_denoiser_checks_the_data_dimension():
    model = MLPDenoiser(dim=2, width=8, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=mentions("x", "(4, 3)", "2")):
        model(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


# Data -----------------------------------------------------------------------------


def test_unknown_toy_data_set():
    with pytest.raises(ValueError, match=mentions("'spiral'", "moons", "swiss_roll", "gaussian_mixture")):
        toy_data("spiral", 10)


def test_missing_mnist_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist_images(10, root=tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist(train=False, root=tmp_path)


def test_missing_mnist_under_diffusion_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist_images(10)


@pytest.mark.parametrize("n", [0, -5, 2.5])
def test_mnist_images_needs_a_positive_count(tmp_path, n):
    with pytest.raises(ValueError, match=mentions("n", repr(n))):
        mnist_images(n, root=tmp_path)

"""What a denoising network predicts, and how each prediction converts into the others.

At step t the noisy point is x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
(eq. `q-marginal`). Given x_t, knowing any one of the noise eps, the clean
point x_0, the velocity v or the score grad log q(x_t) determines the others.
A network is trained to output one of them (its *prediction*); the samplers
take the callable (x_t, t) -> eps that :func:`as_eps_model` makes of it.
"""

from .schedules import check_same_shape

PREDICTIONS = ("eps", "x0", "v")


def x0_from_eps(schedule, xt, t, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), eq. `x0-from-eps`."""
    check_same_shape(xt=xt, eps=eps)
    alpha_bar = schedule.at(schedule.alpha_bars, t, xt)
    return (xt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(schedule, xt, t, x0):
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t), eq. `q-marginal` solved for eps."""
    check_same_shape(xt=xt, x0=x0)
    alpha_bar = schedule.at(schedule.alpha_bars, t, xt)
    return (xt - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def v_from_eps(schedule, x0, t, eps):
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans and Ho 2022), eq. `v-prediction`."""
    check_same_shape(x0=x0, eps=eps)
    alpha_bar = schedule.at(schedule.alpha_bars, t, x0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def x0_from_v(schedule, xt, t, v):
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v, eq. `fw-v-inverse`."""
    check_same_shape(xt=xt, v=v)
    alpha_bar = schedule.at(schedule.alpha_bars, t, xt)
    return alpha_bar.sqrt() * xt - (1 - alpha_bar).sqrt() * v


def eps_from_v(schedule, xt, t, v):
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v, eq. `fw-v-inverse`."""
    check_same_shape(xt=xt, v=v)
    alpha_bar = schedule.at(schedule.alpha_bars, t, xt)
    return (1 - alpha_bar).sqrt() * xt + alpha_bar.sqrt() * v


def score_from_eps(schedule, t, eps):
    """grad log q_t(x_t) = -eps* / sqrt(1 - alpha_bar_t), eq. `score-eps`; exact for the optimal eps*."""
    return -eps / (1 - schedule.at(schedule.alpha_bars, t, eps)).sqrt()


def prediction_target(schedule, x0, t, eps, prediction="eps"):
    """What the network is trained to output at x_t: the noise eps, the clean x_0, or v (eq. `v-prediction`)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps(schedule, x0, t, eps)
    raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")


def as_eps_model(model, schedule, prediction):
    """Turn a network that predicts eps, x_0 or v into the callable (x_t, t, ...) -> eps that the samplers take.

    x_0 predictions convert by eq. `q-marginal` solved for eps, v predictions by
    eq. `fw-v-inverse`; extra arguments (a class label) pass through to the network.
    """
    conversions = {"x0": eps_from_x0, "v": eps_from_v}
    if prediction == "eps":
        return model
    if prediction not in conversions:
        raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")

    def eps(x, t, *labels):
        return conversions[prediction](schedule, x, t, model(x, t, *labels).to(x.dtype))

    return eps

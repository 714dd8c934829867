"""The checks every function that takes a step index t must pass, shared by the test modules of those functions.

``step_index_tests(users)`` returns three test functions over ``users``, a dict name -> (schedule, t) -> result,
for a schedule of T = 10 steps (the ``schedule`` fixture of conftest.py): t out of range, t with other than one
entry per example (of 4), and t that is not an integer, each refused with an error naming t and what is allowed.
"""

import pytest
import torch

T = 10


def step_index_tests(users):
    over_users = pytest.mark.parametrize("use", users.values(), ids=users.keys())

    @over_users
    @pytest.mark.parametrize(
        "t, bad", [(-1, -1), (T, T), (torch.tensor([0, 3, T, 1]), T), (torch.tensor([0, -2, 1, 1]), -2)], ids=str
    )
    def test_t_out_of_range(schedule, use, t, bad, mentions):
        with pytest.raises(ValueError, match=mentions("t", str(bad), str(T - 1))):
            use(schedule, t)

    @over_users
    @pytest.mark.parametrize(
        "t, shape", [(torch.tensor([0, 1, 2]), "(3,)"), (torch.zeros(4, 1, dtype=torch.long), "(4, 1)")]
    )
    def test_t_must_have_one_entry_per_example(schedule, use, t, shape, mentions):
        with pytest.raises(ValueError, match=mentions("t", "(4,)", shape)):
            use(schedule, t)

    @over_users
    @pytest.mark.parametrize("t, shown", [(torch.tensor([1.0, 2.0, 3.0, 4.0]), "1."), (1.5, "1.5")])
    def test_t_must_be_an_integer(schedule, use, t, shown, mentions):
        with pytest.raises(TypeError, match=mentions("t", "int", shown)):
            use(schedule, t)

    return test_t_out_of_range, test_t_must_have_one_entry_per_example, test_t_must_be_an_integer

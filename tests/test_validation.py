"""The shared argument checks: accepted values come back typed, rejected ones name the argument."""

import numpy as np
import pytest

from hf_recperc.validation import (
    check_finite_number,
    check_positive_int,
    check_positive_number,
    is_finite_number,
)


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_check_positive_int_returns_a_python_int(value):
    result = check_positive_int("n", value)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [0, -2, 1.0, True, "3", None, 9])
def test_check_positive_int_rejects(value):
    with pytest.raises(ValueError, match=r"^n: expected an integer"):
        check_positive_int("n", value, maximum=8)


def test_check_positive_int_bounds_and_none():
    assert check_positive_int("k", 8, maximum=8) == 8
    assert check_positive_int("k", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, 8\] or None, got 9"):
        check_positive_int("k", 9, allow_none=True, maximum=8)


def test_number_checks():
    assert check_finite_number("g", 0, minimum=0) == 0.0 and check_finite_number("g", np.float32(2.5)) == 2.5
    assert check_positive_number("lr", 1e-3) == 1e-3
    assert not is_finite_number(True) and not is_finite_number(float("nan")) and is_finite_number(np.int8(1))
    with pytest.raises(ValueError, match="g: expected a finite number >= 0, got -1"):
        check_finite_number("g", -1, minimum=0)
    for bad in (0, -1e-3, float("inf"), "1e-3"):
        with pytest.raises(ValueError, match="lr: expected a finite number > 0"):
            check_positive_number("lr", bad)

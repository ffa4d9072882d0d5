"""The calculator bounds every step before computing it: nothing it accepts can pin the event loop."""

from __future__ import annotations

import time

import pytest

from app.agent.tools.base import ToolError
from app.agent.tools.calculator import MAX_BITS, evaluate

# Each of these took seconds of pure CPU (or never finished) when only the right operand of ** was
# bounded; each must now be refused at once with an error the model can read.
EXPENSIVE = [
    "((10**1000)**1000)**3",
    "(10**1000)**1000",
    "(2**1000)**1000",
    "9**9**9",
    "2**(2**20)",
    "(10**999)*(10**999)*(10**999)*(10**999)",
    "((10**1000)**10)*((10**1000)**10)",
    "(3**1000)**5*(3**1000)**5",
    "round(1, -10**7)",
]


@pytest.mark.parametrize("expression", EXPENSIVE)
def test_expensive_expressions_are_refused_at_once(expression: str) -> None:
    started = time.process_time()
    with pytest.raises(ToolError, match=r"too large|at most \d+ digits"):
        evaluate(expression)
    # Generous, to stay far from flaky on a loaded machine: the refusal costs microseconds.
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("expression", ["1 << 10**9", "(10**1000) << (10**6)", "1 >> 1", "5 & 3", "~5"])
def test_shifts_and_bitwise_operators_are_refused(expression: str) -> None:
    started = time.process_time()
    with pytest.raises(ToolError, match="Unsupported"):
        evaluate(expression)
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    "expression",
    ["10.0 ** 400", "1e308 * 10", "1e308 + 1e308", "exp(1000)", "(10**400) * 1.5", "sqrt(10**3000)", "(10**400) / 3"],
)
def test_float_overflow_is_an_error_the_model_can_read(expression: str) -> None:
    with pytest.raises(ToolError, match="overflow|out of range|too large"):
        evaluate(expression)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 ** 1000", 2**1000),
        ("3 ** 6000", 3**6000),  # 9,510 bits: within the bound
        ("10 ** 3000 // 10 ** 2999", 10),
        ("(2**64) * (2**64)", 2**128),
        ("(-1) ** (10**100)", 1),
        ("1 ** (10**50)", 1),
        ("2 ** -2", 0.25),
        ("round(123456, -3)", 123000),
        ("round(2.675, 2)", 2.67),
        ("max(2**500, 3) - min(1, 2)", 2**500 - 1),
    ],
)
def test_normal_arithmetic_is_unchanged(expression: str, value: float) -> None:
    assert evaluate(expression) == value


def test_the_bound_is_exact_at_the_limit() -> None:
    assert evaluate(f"2 ** {MAX_BITS - 1}") == 2 ** (MAX_BITS - 1)
    with pytest.raises(ToolError, match="too large"):
        evaluate(f"2 ** {MAX_BITS}")
    with pytest.raises(ToolError, match="too large"):
        evaluate(f"(2 ** {MAX_BITS - 1}) * 2")

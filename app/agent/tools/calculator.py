"""Arithmetic by parsing the expression into an AST and walking it: never eval.

A tool runs on the event loop, so every step's cost is bounded *before* it is computed: an
integer result may have at most MAX_BITS bits (estimated from the operands' bit lengths, which
is free), floats must stay finite, and `round`'s digits are capped. `((10**1000)**1000)**3`
is refused in microseconds instead of pinning a core for seconds.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from app.agent.tools.base import Tool, ToolContext, ToolError

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
# About 3,000 decimal digits: far beyond any useful answer, and cheap to compute and print
# (and below Python's 4,300-digit limit on int-to-str conversion).
MAX_BITS = 10_000
MAX_ROUND_DIGITS = 1000  # round(x, -n) computes 10**n
MAX_LENGTH = 500
TOO_LARGE = f"The result would be too large (more than {MAX_BITS} bits); simplify the expression."


def evaluate(expression: str) -> float | int:
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"Expression longer than {MAX_LENGTH} characters.")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
        result = _eval(tree.body)
    except SyntaxError as exc:
        raise ToolError(f"Not an arithmetic expression: {exc.msg}.") from exc
    except (RecursionError, MemoryError) as exc:
        raise ToolError("The expression is nested too deeply.") from exc
    if not isinstance(result, int | float):
        raise ToolError("The expression did not produce a number.")
    return result


def _check_cost(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an operation whose integer result would exceed MAX_BITS, before computing it."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # float arithmetic is constant-time; overflow is an OverflowError or inf, checked after
    if isinstance(op, ast.Pow):
        # |a**b| has about b * log2|a| bits; 0, 1 and -1 stay small whatever the exponent.
        if right > 0 and abs(left) > 1 and (right > MAX_BITS or right * math.log2(abs(left)) > MAX_BITS):
            raise ToolError(TOO_LARGE)
    elif isinstance(op, ast.Mult):
        if left.bit_length() + right.bit_length() > MAX_BITS:
            raise ToolError(TOO_LARGE)


def _checked(value: Any) -> Any:
    """Every intermediate result: a real number, finite, within MAX_BITS."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("The expression does not produce a real number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("The result is out of range (overflow).")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError(TOO_LARGE)
    return value


def _call(name: str, args: list[Any]) -> Any:
    if name == "round" and len(args) == 2 and isinstance(args[1], int) and abs(args[1]) > MAX_ROUND_DIGITS:
        raise ToolError(f"round: at most {MAX_ROUND_DIGITS} digits.")
    try:
        return _FUNCTIONS[name](*args)
    except OverflowError as exc:
        raise ToolError(f"{name}: the result is out of range (overflow).") from exc
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{name}: {exc}.") from exc


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        _check_cost(node.op, left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise ToolError("Division by zero.") from exc
        except OverflowError as exc:
            raise ToolError("The result is out of range (overflow).") from exc
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ToolError("Keyword arguments are not supported.")
        return _checked(_call(node.func.id, [_eval(arg) for arg in node.args]))
    raise ToolError(f"Unsupported element in expression: {ast.dump(node)[:60]}")


class CalculatorInput(BaseModel):
    expression: str = Field(description="An arithmetic expression, e.g. '(2 + 3) * sqrt(16) / 2'.")


async def calculate(data: CalculatorInput, _: ToolContext) -> str:
    result = evaluate(data.expression)
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        result = int(result)
    return str(result)


calculator = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression exactly: + - * / // % ** (or ^), parentheses, "
    "and sqrt, abs, round, min, max, log, log10, exp, sin, cos, tan, floor, ceil, pi, e.",
    input_model=CalculatorInput,
    run=calculate,
    untrusted_output=False,
)

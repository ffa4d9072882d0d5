"""Arithmetic by parsing the expression into an AST and walking it: never eval."""

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
MAX_EXPONENT = 1000
MAX_LENGTH = 500


def evaluate(expression: str) -> float | int:
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"Expression longer than {MAX_LENGTH} characters.")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"Not an arithmetic expression: {exc.msg}.") from exc
    result = _eval(tree.body)
    if not isinstance(result, int | float):
        raise ToolError("The expression did not produce a number.")
    return result


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError("Exponent too large.")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ToolError("Division by zero.") from exc
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ToolError("Keyword arguments are not supported.")
        try:
            return _FUNCTIONS[node.func.id](*(_eval(arg) for arg in node.args))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ToolError(f"{node.func.id}: {exc}.") from exc
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
)

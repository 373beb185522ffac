"""The plan language: model, parser (both dialects), evaluation of arguments."""

from .errors import (
    ArgumentError,
    DuplicateIdError,
    EmptyPlanError,
    FieldError,
    PlanError,
    PlanErrors,
    PlanReferenceError,
    PlanSyntaxError,
    UnknownFunctionError,
)
from .model import Arg, BinOp, Call, DictExpr, Dialect, Expr, ListExpr, Literal, Plan, Ref, Template
from . import render as _render  # installs Plan.to_text's renderer (see model.use_renderer)

__all__ = [
    "Arg", "BinOp", "Call", "DictExpr", "Dialect", "Expr", "ListExpr", "Literal", "Plan", "Ref",
    "Template", "PlanError", "PlanErrors", "PlanSyntaxError", "EmptyPlanError",
    "UnknownFunctionError", "ArgumentError", "PlanReferenceError", "DuplicateIdError", "FieldError",
]

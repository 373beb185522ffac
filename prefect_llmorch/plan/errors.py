"""Plan errors: classes with named fields, one subclass per kind.

`str(err)` is for people ("line 3, column 32: undefined reference `sl`; defined so far:
s1, s2"); the fields are for tests and for the LLM repair prompt.
"""

from __future__ import annotations

from typing import Sequence


class PlanError(ValueError):
    """A plan that cannot run, found before anything runs.

    Attributes:
        message: what is wrong, without the position.
        line: 1-based line of the offending text (0 when it has no position).
        column: 1-based column.
        context: the offending line with a caret under the column.
        expected: what would have been valid here, if known.
        pointer: for a JSON plan, the JSON pointer (RFC 6901) of the offending value,
            e.g. "/2/arguments/originSkyId" ("" for text plans).
        errors: every error found in the plan (this one first); a plan's errors are
            collected, not just the first.
        refs: the references with a path that the message names in the text form
            (`s1.distance`), as (call id, path): a repair prompt in the JSON form writes
            them as `{"ref": "s1", "path": ["distance"]}`, which a small model copies.
    """

    kind = "plan"

    def __init__(
        self,
        message: str,
        *,
        line: int = 0,
        column: int = 0,
        context: str = "",
        expected: list[str] | None = None,
        pointer: str = "",
        refs: Sequence[tuple[str, tuple[str | int, ...]]] = (),
    ) -> None:
        self.message = message
        self.refs = [(cid, tuple(path)) for cid, path in refs]
        self.pointer = pointer
        self.line = line
        self.column = column
        self.context = context
        self.expected = list(expected or [])
        self.errors: list[PlanError] = [self]
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.line else ""
        pointer = getattr(self, "pointer", "")
        if pointer:
            where += f" ({pointer})" if where else pointer
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Prefect pickles exceptions into states: rebuild from the fields, not from str().
        return (_rebuild, (type(self), self.__dict__.copy()))

    def to_dict(self) -> dict[str, object]:
        return {
            "line": self.line,
            "column": self.column,
            "kind": self.kind,
            "message": self.message,
            "expected": self.expected,
            "pointer": getattr(self, "pointer", ""),
        }

    def report(self) -> str:
        """Every error with its context, for people and for the LLM repair prompt."""
        parts = []
        for err in self.errors:
            parts.append(str(err) + (f"\n{err.context}" if err.context else ""))
        return "\n".join(parts)


def _rebuild(cls: type, fields: dict) -> "PlanError":
    err = cls.__new__(cls)
    err.__dict__.update(fields)
    Exception.__init__(err, cls.__str__(err))  # PlanErrors: all of them, as before pickling
    return err


#: How many errors a `PlanErrors` keeps and reports; the rest are counted (`omitted`). A plan
#: with thousands of broken references would otherwise make a message of hundreds of MB.
MAX_REPORTED = 20


class PlanErrors(PlanError):
    """Several errors in one plan; behaves as the first, lists the first `MAX_REPORTED` in
    `errors` and counts the others in `omitted` (`total` = both)."""

    def __init__(self, errors: list[PlanError]) -> None:
        if not errors:
            raise ValueError("PlanErrors needs at least one error")
        first = errors[0]
        super().__init__(
            first.message,
            line=first.line,
            column=first.column,
            context=first.context,
            expected=first.expected,
            pointer=getattr(first, "pointer", ""),
            refs=getattr(first, "refs", ()),
        )
        self.kind = first.kind
        self.errors = list(errors[:MAX_REPORTED])
        self.omitted = max(0, len(errors) - MAX_REPORTED)
        self.args = (self.__str__(),)  # every error in repr() and logs, not only the first

    @property
    def total(self) -> int:
        return len(self.errors) + getattr(self, "omitted", 0)

    def __str__(self) -> str:
        errors = getattr(self, "errors", None)
        if not errors or self.total == 1:
            return super().__str__()
        return f"{self.total} errors in plan:\n" + "\n".join(
            f"  {PlanError.__str__(e)}" for e in errors
        ) + _more(self)

    def report(self) -> str:
        return super().report() + _more(self)


def _more(err: PlanError) -> str:
    omitted = getattr(err, "omitted", 0)
    return f"\n  ... and {omitted} more error{'s' if omitted != 1 else ''}" if omitted else ""


class PlanSyntaxError(PlanError):
    kind = "syntax"


class EmptyPlanError(PlanError):
    kind = "empty"


class UnknownFunctionError(PlanError):
    kind = "unknown_function"


class ArgumentError(PlanError):
    """Wrong arity, keyword names or argument types for the function's signature."""

    kind = "arguments"


class ReferenceError_(PlanError):
    """Undefined or forward reference."""

    kind = "reference"


class DuplicateIdError(PlanError):
    kind = "duplicate_id"


class FieldError(PlanError):
    """A field or index that a call's declared result type does not have (`s1.skyId` where
    `s1`'s function returns a model without `skyId`)."""

    kind = "field"


# A readable public alias; `ReferenceError` is a builtin we must not shadow.
PlanReferenceError = ReferenceError_

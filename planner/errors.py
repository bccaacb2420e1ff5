"""The error tree, the issue record and the warning class shared by every layer.

Every error a user can cause is a :class:`HierFedLoraError`. Bad input is an
:class:`InvalidInputError` that carries *all* the problems found in one pass, each an
:class:`Issue` naming the field (a path into the object or file), what was expected and
what was given::

    fleet.json: devices[3].uplink_mbps must be a finite number > 0; got nan

Objects report paths relative to themselves; loaders add the prefix with
:meth:`InvalidInputError.with_prefix` and the file name with ``source``.

Examples
--------
>>> err = InvalidInputError([Issue("uplink_mbps", "a finite number > 0", float("nan"))])
>>> print(err.with_prefix("devices[3]", source="fleet.json"))
fleet.json: devices[3].uplink_mbps must be a finite number > 0; got nan
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

__all__ = [
    "HierFedLoraError",
    "HierFedLoraWarning",
    "InfeasibleError",
    "InvalidInputError",
    "Issue",
    "NoSolutionError",
    "ResumeMismatchError",
    "RunInterruptedError",
    "SolverFailedError",
    "StorageError",
    "raise_if_any",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Issue:
    """One problem with one field: where it is, what the rule wants, what was given.

    Parameters
    ----------
    path : str
        Dotted path to the field, with ``[i]`` for positions (``devices[3].uplink_mbps``).
    expected : str
        The whole rule, e.g. ``"a finite number > 0"``.
    got : object
        The offending value (shown with ``repr``, so ``nan`` and ``'fast'`` read clearly).
    hint : str, optional
        A suggestion, such as a "did you mean" for an unknown key.
    """

    path: str
    expected: str
    got: object
    hint: str = ""

    def __str__(self) -> str:
        got = _short_repr(self.got)
        text = f"{self.path} must be {self.expected}; got {got}"
        return f"{text} ({self.hint})" if self.hint else text

    def with_prefix(self, prefix: str) -> Issue:
        """Return this issue with ``prefix`` put before its path."""
        if not prefix:
            return self
        path = (
            prefix
            if not self.path
            else (f"{prefix}{self.path}" if self.path.startswith("[") else f"{prefix}.{self.path}")
        )
        return dataclasses.replace(self, path=path)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HierFedLoraError(Exception):
    """Base class of every error hierfedlora raises on purpose."""


class InvalidInputError(HierFedLoraError, ValueError):
    """One or more fields break their rules. ``issues`` lists every one of them.

    Parameters
    ----------
    issues : sequence of Issue
        All problems found, in the order found. Must not be empty.
    source : str, optional
        The file (or other origin) the input came from; put before every line.
    """

    def __init__(self, issues: Sequence[Issue] | Iterable[Issue], source: str | None = None) -> None:
        self.issues: tuple[Issue, ...] = tuple(issues)
        self.source = source
        if not self.issues:
            raise ValueError("InvalidInputError needs at least one Issue")  # internal misuse
        super().__init__(self._message())

    def _message(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{issue}" for issue in self.issues)

    def __str__(self) -> str:
        return self._message()

    def with_prefix(self, prefix: str, source: str | None = None) -> InvalidInputError:
        """Return a copy whose issue paths start with ``prefix`` (and whose source is ``source``)."""
        return InvalidInputError([issue.with_prefix(prefix) for issue in self.issues], source or self.source)

    def __reduce__(self) -> tuple[object, ...]:  # picklable across process boundaries (Ray, Flower)
        return (InvalidInputError, (self.issues, self.source))


def raise_if_any(issues: Iterable[Issue]) -> None:
    """Raise one :class:`InvalidInputError` carrying every issue, if there is any.

    >>> raise_if_any([])
    >>> try:
    ...     raise_if_any([Issue("rank", "an integer >= 1", 0)])
    ... except InvalidInputError as err:
    ...     print(err)
    rank must be an integer >= 1; got 0
    """
    found = list(issues)
    if found:
        raise InvalidInputError(found)


class InfeasibleError(HierFedLoraError):
    """No plan satisfies the constraints.

    Attributes
    ----------
    reason : str
        One sentence on why, with the numbers where arithmetic showed it.
    conflicting : tuple of str
        The constraint families that together admit no solution (from the deletion filter,
        or from the arithmetic check that fired), e.g. ``("memory", "round_budget")``.
    hint : str
        What to relax.
    """

    def __init__(self, reason: str, conflicting: Sequence[str] = (), hint: str = "") -> None:
        self.reason = reason
        self.conflicting: tuple[str, ...] = tuple(conflicting)
        self.hint = hint
        text = reason
        if self.conflicting:
            text += f" [conflicting: {', '.join(self.conflicting)}]"
        if hint:
            text += f" Hint: {hint}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (InfeasibleError, (self.reason, self.conflicting, self.hint))


class NoSolutionError(HierFedLoraError):
    """A solver limit was hit before any feasible plan was found."""

    def __init__(self, limit: object, solve_time_s: float, detail: str = "") -> None:
        self.limit = limit
        self.solve_time_s = solve_time_s
        self.detail = detail
        limit_name = getattr(limit, "name", str(limit))
        text = f"no feasible plan found before the {limit_name} limit ({solve_time_s:.2f} s)"
        super().__init__(f"{text}: {detail}" if detail else text)

    def __reduce__(self) -> tuple[object, ...]:
        return (NoSolutionError, (self.limit, self.solve_time_s, self.detail))


class SolverFailedError(HierFedLoraError):
    """A solver crashed or returned a status we cannot interpret."""

    def __init__(self, solver: str, detail: str, problem_size: str = "") -> None:
        self.solver = solver
        self.detail = detail
        self.problem_size = problem_size
        size = f" on {problem_size}" if problem_size else ""
        super().__init__(f"solver {solver} failed{size}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (SolverFailedError, (self.solver, self.detail, self.problem_size))


class ResumeMismatchError(HierFedLoraError):
    """A checkpoint does not belong to the run being resumed."""

    def __init__(self, field: str, expected: object, found: object) -> None:
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(f"cannot resume: checkpoint {field} is {found!r} but this run has {expected!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (ResumeMismatchError, (self.field, self.expected, self.found))


class RunInterruptedError(HierFedLoraError):
    """A run was interrupted after committing round ``last_committed_round``."""

    def __init__(self, last_committed_round: int, checkpoint_path: str) -> None:
        self.last_committed_round = last_committed_round
        self.checkpoint_path = checkpoint_path
        super().__init__(
            f"run interrupted after global round {last_committed_round} (committed in {checkpoint_path}); "
            "to continue, run the same command again with --resume added"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (RunInterruptedError, (self.last_committed_round, self.checkpoint_path))


class StorageError(HierFedLoraError, OSError):
    """A file or folder could not be read or written: a read-only file system, a full disk, no permission.

    Not the input's fault and not a bug: the message names the path and the system's reason, e.g.
    ``cannot write runs/a/plan.json: No space left on device``. It is an ``OSError`` too, so code
    that handles file-system failures keeps handling it.
    """

    def __init__(self, path: str, operation: str, reason: str, errno: int | None = None) -> None:
        self.path = path
        self.operation = operation
        self.reason = reason
        super().__init__(f"cannot {operation} {path}: {reason}")
        self.errno = errno

    @classmethod
    def from_os_error(cls, exc: OSError, path: object, operation: str) -> StorageError:
        """The error for ``exc`` raised while doing ``operation`` on ``path`` (``exc``'s own file first)."""
        named = exc.filename if exc.filename is not None else path
        return cls(str(named), operation, exc.strerror or str(exc), exc.errno)

    def __reduce__(self) -> tuple[object, ...]:
        return (StorageError, (self.path, self.operation, self.reason, self.errno))


class HierFedLoraWarning(UserWarning):
    """Legal but suspicious input or outcome (one group, a gap left open at a limit, ...)."""

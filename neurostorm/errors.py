"""The one exception type that user-facing commands turn into a one-line message."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad input: names the offending file and says what is wrong with it.

    ``str(err)`` is ``"<path>: <problem>"`` so the CLI can print it as one line.
    """

    def __init__(self, path: str | PathLike[str], problem: str | None = None) -> None:
        if problem is None:  # rebuilt from a message alone: PyTorch's DataLoader re-raising a worker's error
            path, problem = _said(str(path))
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        # rebuilt from both fields after pickling (worker processes, Dask); the default would pass one
        return type(self), (self.path, self.problem)


def _said(message: str) -> tuple[str, str]:
    """(path, problem) from a message whose last line is the worker's ``…InputError: <path>: <problem>``."""
    last = message.rstrip().splitlines()[-1] if message.strip() else ""
    text = last.split("InputError: ", 1)[-1]
    path, _, problem = text.partition(": ")
    return path, problem or "unreadable input"


class Interrupted(BaseException):
    """The command was stopped by a signal (Ctrl-C's SIGINT, a scheduler's SIGTERM).

    A ``BaseException``, like ``KeyboardInterrupt``, so that code which reports a failed run and goes on
    with the next never swallows it.
    """

    def __init__(self, signal_name: str) -> None:
        self.signal_name = signal_name
        super().__init__(signal_name)

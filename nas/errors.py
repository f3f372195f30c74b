"""The one exception type users see: it names the file, line and key path at fault."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class NasError(Exception):
    """A user-facing error: bad input, not a bug.

    The CLI prints ``nas: error: <file>:<line>: <key.path>: <message>`` and exits with code 2.
    ``file``, ``line`` and ``key`` are optional so the same type serves errors without a location.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message, self.file, self.line, self.key = message, file, line, key
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class Terminated(BaseException):
    """SIGTERM while a command waits for something outside it (a Ray head to answer): the CLI prints one line and
    exits with 143. A ``BaseException`` so that no ``except Exception`` on the way (Ray's retry loops) swallows it."""


def exit_with(main: Callable[[], int]) -> NoReturn:
    """``sys.exit(main())`` for a script (the benchmarks): a ``NasError`` is one ``nas: error:`` line and exit 2,
    as in the CLI."""
    try:
        code = main()
    except NasError as e:
        print(f"nas: error: {e.format()}", file=sys.stderr)
        code = 2
    sys.exit(code)

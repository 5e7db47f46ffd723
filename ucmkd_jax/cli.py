"""How the command-line programs end: one ``error: ...`` line for an anticipated error, the
traceback only on request (``--debug`` or ``UCMKD_DEBUG=1``), as pip, tfds and git do.

    if __name__ == "__main__":
        sys.exit(cli.run(main))

Anticipated: bad input and configuration (``ValueError``, which ``ConfigError`` is), missing
files, checkpoint problems, a loss that stopped being finite, a missing optional dependency, an
interrupt (exit 130: rerunning the same command resumes). Anything else is a bug: its traceback
is shown. Plain Python: ``data_prep`` uses it too.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["run", "DEBUG_FLAG", "DEBUG_ENV"]

DEBUG_FLAG, DEBUG_ENV = "--debug", "UCMKD_DEBUG"
_HINT = f"(add {DEBUG_FLAG}, or set {DEBUG_ENV}=1, to see the traceback)"


def _anticipated() -> tuple:
    kinds = [ValueError, OSError, ImportError, FloatingPointError]  # OSError: missing files, a full disk
    try:  # only if already imported: this module must not pull in JAX or Orbax
        kinds.append(sys.modules["ucmkd_jax.checkpoint"].CheckpointError)
    except KeyError:
        pass
    return tuple(kinds)


def run(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)`` and turn an anticipated error into one line on stderr. Returns the exit
    code: ``main``'s own when it returns an int, else 0; 1 (an error), 130 (interrupted), or the
    code of a ``SystemExit`` (usage errors: 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted below: anticipated ones become one line
        if debug or not isinstance(e, _anticipated()):
            raise
        print(f"error: {e}\n{_HINT}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0

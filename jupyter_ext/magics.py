"""The `%cellpipe` line magic (``%load_ext jupyter_ext``): debug a step of a run in this kernel.

``%cellpipe inputs RUN STEP`` (RUN: a run id or a unique prefix of one) runs the pipeline's imports and
functions cells, loads what the step read from the run (values of earlier steps, parameters) into the
kernel's namespace, prints what it loaded, and inserts the step's code as a new cell below, so
running that cell reproduces the step as it ran (its failure included). Gathering the inputs is
`converter.store.step_inputs`'s job; this module only talks to IPython. The lab's Debug command runs
this same line.

Bad arguments and anything that stops the loading are one line (IPython's UsageError), no traceback.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError

from converter.errors import CellpipeError

USAGE = "usage: %cellpipe inputs RUN STEP (RUN: a run id or a unique prefix of one)"


def load_ipython_extension(shell: Any) -> None:
    shell.register_magic_function(lambda line: cellpipe(shell, line), "line", "cellpipe")


def cellpipe(shell: Any, line: str) -> None:
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"{USAGE}: {error}") from None
    if not words:
        raise UsageError(USAGE)
    if words[0] != "inputs":
        raise UsageError(f"unknown %cellpipe command {words[0]!r}; {USAGE}")
    if len(words) != 3:
        raise UsageError(f"{USAGE}: got {len(words) - 1} argument(s) after 'inputs'")
    inputs(shell, words[1], words[2])


def inputs(shell: Any, run: str, step: str) -> None:
    from converter.store.step_inputs import read_step_inputs, restore_random_state

    try:
        loaded = read_step_inputs(run, step)
    except CellpipeError as error:
        raise UsageError(" ".join(str(error).split())) from None
    replayed, unreplayed = [], []
    for cell in loaded.setup:
        quiet = io.StringIO() if cell.role == "replay" else None  # replays run silently, as in the step
        try:
            with (
                contextlib.redirect_stdout(quiet or sys.stdout),
                contextlib.redirect_stderr(quiet or sys.stderr),
            ):
                shell.ex(cell.code)
        except Exception as error:
            why = f"{type(error).__name__}: {error}"
            if cell.role != "replay":
                raise UsageError(f"the {cell.role} cell {cell.index} failed here: {why}") from None
            unreplayed.append(f"cell {cell.index} of step {cell.step!r} ({why})")
        else:
            if cell.role == "replay":
                replayed.append(cell)
    if loaded.random_state is not None:  # after the shared cells, as the step runtime sets it
        restore_random_state(loaded.random_state)
    shell.push({value.name: value.value for value in loaded.values})
    state = loaded.state + (f": {loaded.message}" if loaded.message else "")
    print(f"cellpipe: step {loaded.step!r} of run {loaded.run_id} ({loaded.engine}, {state})")
    shared = [c for c in loaded.setup if c.role != "replay"]
    if shared:
        print("  ran " + ", ".join(f"the {c.role} cell {c.index}" for c in shared))
    if replayed:
        steps = sorted({str(c.step) for c in replayed})
        print(f"  replayed the imports and settings of earlier steps ({', '.join(steps)})")
    for where in unreplayed:
        print(f"  could not replay {where}")
    if loaded.random_state is not None:
        print("  set the random generators' state the step started with")
    width = max((len(v.name) for v in loaded.values), default=0)
    for value in loaded.values:
        shown = _describe(value.value)
        if value.origin == "parameter":
            print(f"  {value.name:<{width}}  {shown}  (parameter)")
        else:
            print(f"  {value.name:<{width}}  {shown}  from {value.origin}: {value.where}")
    if not loaded.values:
        print("  the step reads nothing from earlier steps or parameters")
    cells = ", ".join(str(i) for i in loaded.cells)
    print(f"  the step's code (cell{'s' * (len(loaded.cells) != 1)} {cells}) is in a new cell below")
    shell.set_next_input(loaded.code, replace=False)


def _describe(value: object) -> str:
    """The type, and the shape or length when the value has one: enough to recognise it."""
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"{kind} shape {shape}"
    if isinstance(value, str | bytes | list | tuple | dict | set):
        return f"{kind} of {len(value)}" if not isinstance(value, str) or len(value) > 40 else repr(value)
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return kind

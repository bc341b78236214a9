"""Which value a `serve:FRAMEWORK` step serves, decided while reading the notebook.

The served model is an output of its step whether or not a later step reads it (the usual last step,
``clf = LogisticRegression().fit(x, y)``, passes nothing on). The value is, in this order: the one
``serve:FRAMEWORK:VARIABLE`` names; the step's ``model``; the only value the step assigns (or changes
in place). When the step assigns several, reading the code cannot tell which is the model, so the step
runtime chooses when the step runs: the one value that is a model of FRAMEWORK (`converter.step.runtime`),
saved as the output ``model``.

`served_step`, `served_variable` and `problems` answer the same questions for a read pipeline: the
reader reports `problems` with every other tag problem; the KFP deploy step and ``cellpipe serve``
use the same choice of step and value.
"""

from __future__ import annotations

from collections.abc import Set

from converter.errors import CellpipeError
from converter.model import Pipeline, Problem, Step, StepSettings

DEFAULT_NAME = "model"


class NoModel(ValueError):
    """The step cannot serve anything as written; the message says why, for the serve: tag."""


def served_model(
    step: str, settings: StepSettings, assigns: Set[str], mutated_inputs: Set[str]
) -> tuple[str, tuple[str, ...]]:
    """(the output holding the model, the values the runtime chooses from: () when decided here).

    `assigns`: names the step binds (imports, functions and classes left out); `mutated_inputs`:
    inputs it may change in place (``model.fit(x, y)`` on a model made earlier).
    """
    values = set(assigns) | set(mutated_inputs)
    named = settings.serve_variable
    if named is not None:
        if named not in values:
            raise NoModel(
                f"step {step!r} never assigns {named!r}"
                + (f" (it assigns {', '.join(sorted(values))})" if values else "")
            )
        return named, ()
    if DEFAULT_NAME in values:
        return DEFAULT_NAME, ()
    if len(values) == 1:
        return next(iter(values)), ()
    if not values:
        raise NoModel(f"step {step!r} assigns no value to serve")
    return DEFAULT_NAME, tuple(sorted(values))


def served_step(pipeline: Pipeline, name: str | None = None) -> Step:
    """The step tagged serve:..., or the named step (which must be tagged)."""
    tagged = [s for s in pipeline.steps if s.settings.serve]
    if name is not None:
        try:
            step = pipeline.step(name)
        except KeyError:
            raise CellpipeError(f"no step {name!r} in {pipeline.notebook}") from None
        return step
    if not tagged:
        raise CellpipeError(f"{pipeline.notebook}: no step is tagged serve:FRAMEWORK")
    return tagged[-1]


def served_variable(step: Step) -> str:
    """The output holding the step's model (the reader decides it: `converter.notebook.served`)."""
    if step.model_output is None:
        raise CellpipeError(f"step {step.name!r} is not tagged serve:FRAMEWORK")
    return step.model_output


def problems(pipeline: Pipeline) -> list[Problem]:
    """What stops the served model from being deployed, as validation errors on the serve: tag.

    (A serve: step with nothing to serve is the reader's error, found with the step's data flow.)
    """
    served = [s for s in pipeline.steps if s.settings.serve]
    found = []
    if len(served) > 1:
        names = ", ".join(s.name for s in served)
        message = f"steps {names} are all tagged serve:; a pipeline deploys one model"
        for step in served:
            found.append(
                Problem(pipeline.notebook, step.first_cell, f"serve:{step.settings.serve}", "error", message)
            )
    return found

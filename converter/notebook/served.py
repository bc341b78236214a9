"""Which value a `serve:FRAMEWORK` step serves, decided while reading the notebook.

The served model is an output of its step whether or not a later step reads it (the usual last step,
``clf = LogisticRegression().fit(x, y)``, passes nothing on). The value is, in this order: the one
``serve:FRAMEWORK:VARIABLE`` names; the step's ``model``; the only value the step assigns (or changes
in place). When the step assigns several, reading the code cannot tell which is the model, so the step
runtime chooses when the step runs: the one value that is a model of FRAMEWORK (`converter.step.runtime`),
saved as the output ``model``.
"""

from __future__ import annotations

from collections.abc import Set

from converter.model import StepSettings

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

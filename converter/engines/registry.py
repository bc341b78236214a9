"""The one way to get an engine by name, for every face (CLI, server, widgets, tuning, papermill).

Engines come from the `cellpipe.engines` entry point group (the built-in ``local`` and ``kfp`` are
registered in cellpipe's own pyproject, so a plugin adds one the same way) or from `register` in this
process (a test's or a kernel's own engine; it wins over an entry point of the same name).

Engine options (``max_parallel`` and ``fit_resources`` for local; ``host``, ``namespace``,
``experiment``, ``auth`` for KFP...) are the engine factory's keyword arguments. They flow through
`get_engine` unchanged; an option the engine does not take is a clear error naming it, so a face
passes only what its user actually set (None means "not set" and is dropped).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points

from converter.engines.base import Engine
from converter.errors import CellpipeError

EngineFactory = Callable[..., Engine]
ENTRY_POINT_GROUP = "cellpipe.engines"
_IN_PROCESS: dict[str, EngineFactory] = {}


def register(name: str, factory: EngineFactory) -> None:
    """Make `name` build engines with `factory` in this process (over any entry point of that name)."""
    _IN_PROCESS[name] = factory


def unregister(name: str) -> None:
    _IN_PROCESS.pop(name, None)


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(_IN_PROCESS))


def options_of(name: str) -> list[str] | None:
    """The options engine `name` takes; None if it takes any (a ``**kwargs`` factory)."""
    return _accepted(_factory(name))


def get_engine(name: str, **options: object) -> Engine:
    """A new engine `name` built with `options`; options given as None are left out."""
    factory = _factory(name)
    given = {key: value for key, value in options.items() if value is not None}
    accepted = _accepted(factory)
    unknown = sorted(set(given) - set(accepted)) if accepted is not None else []
    if unknown:
        plural = "s" * (len(unknown) > 1)
        raise CellpipeError(
            f"the {name} engine has no option{plural} {', '.join(unknown)} "
            f"(it takes: {', '.join(accepted or []) or 'none'})"
        )
    engine: Engine = factory(**given)
    return engine


def _factory(name: str) -> EngineFactory:
    if name in _IN_PROCESS:
        return _IN_PROCESS[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory: EngineFactory = ep.load()
            return factory
    raise CellpipeError(f"unknown engine {name!r} (available: {', '.join(available()) or 'none'})")


def _accepted(factory: EngineFactory) -> list[str] | None:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the factory judge
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keywords]

"""Engines run pipeline models. They are found by name through the `cellpipe.engines` entry point group,
so a plugin can add one; the built-in ones are registered in cellpipe's own pyproject."""

from __future__ import annotations

from importlib.metadata import entry_points

from converter.engines.base import Engine
from converter.errors import CellpipeError


def available() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="cellpipe.engines"))


def get_engine(name: str, **options: object) -> Engine:
    for ep in entry_points(group="cellpipe.engines"):
        if ep.name == name:
            factory = ep.load()
            engine: Engine = factory(**options)
            return engine
    raise CellpipeError(f"unknown engine {name!r} (available: {', '.join(available()) or 'none'})")

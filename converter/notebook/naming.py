"""Names derived from a notebook's file name or settings: KFP-safe pipeline and step names."""

from __future__ import annotations

import re


def pipeline_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name or "pipeline"


def step_name_from_file(stem: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    if not name or not name[0].isalpha():
        name = "nb-" + name
    return name[:63].rstrip("-_")

"""Notebook-level settings: name, description, image, volumes, defaults (metadata.cellpipe), kernel."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converter.model import DEFAULT_IMAGE
from converter.notebook import kale, tags
from converter.notebook.drafts import Report
from converter.notebook.naming import pipeline_name


def notebook_settings(report: Report, nb: Mapping[str, Any]) -> dict[str, Any]:
    metadata = nb.get("metadata", {})
    check_language(report, metadata)
    stem = Path(report.notebook).stem
    meta: dict[str, Any] = {
        "name": pipeline_name(stem),
        "description": f"Pipeline compiled by cellpipe from {Path(report.notebook).name}",
        "experiment": None,
        "image": DEFAULT_IMAGE,
        "defaults": {},
        "volumes": [],
        "packages": [],
        "cache": True,
    }
    if "cellpipe" in metadata:
        settings, other = tags.parse_structured(
            report.notebook, None, metadata["cellpipe"], report.problems, where="metadata.cellpipe"
        )
        # At notebook level image, packages and volumes are pipeline-wide; step settings go in defaults.
        for key in ("name", "description", "experiment"):
            if key in other:
                meta[key] = str(other[key]) if key != "name" else pipeline_name(str(other[key]))
        if "image" in settings:
            meta["image"] = settings.pop("image")
        meta["packages"] = settings.pop("packages", [])
        meta["volumes"] = settings.pop("volumes", [])
        for key in sorted(settings):
            report.warn(
                None, f"metadata.cellpipe.{key}", f"put step settings under 'defaults'; {key!r} ignored"
            )
        if "defaults" in other:
            defaults, rest = tags.parse_structured(
                report.notebook, None, other["defaults"], report.problems, where="metadata.cellpipe.defaults"
            )
            for key in sorted(rest):
                report.warn(None, f"metadata.cellpipe.defaults.{key}", f"{key!r} is not a step setting")
            meta["defaults"] = defaults
    elif "kubeflow_notebook" in metadata:
        kale.settings(report, metadata["kubeflow_notebook"], meta)
    return meta


def check_language(report: Report, metadata: Mapping[str, Any]) -> None:
    """Steps run Python: a notebook written for another kernel (R, Julia...) is refused, not misread."""
    kernelspec = metadata.get("kernelspec") or {}
    language = str(kernelspec.get("language") or (metadata.get("language_info") or {}).get("name") or "")
    if language and language.lower() != "python":
        name = kernelspec.get("name") or language
        report.error(
            None,
            "kernelspec",
            f"this notebook is written for the {language} kernel {name!r}; cellpipe runs Python notebooks",
        )

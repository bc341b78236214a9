"""Kale compatibility: Kale's notebook metadata (kubeflow_notebook), so Kale notebooks convert unchanged."""

from __future__ import annotations

from typing import Any

from converter.model import VolumeMount
from converter.notebook import tags
from converter.notebook.drafts import Report
from converter.notebook.naming import pipeline_name


def settings(report: Report, kale: Any, meta: dict[str, Any]) -> None:
    """Kale's notebook metadata, so Kale notebooks convert unchanged."""
    if not isinstance(kale, dict):
        report.error(None, "metadata.kubeflow_notebook", "Kale metadata must be a JSON object")
        return
    if kale.get("pipeline_name"):
        meta["name"] = pipeline_name(str(kale["pipeline_name"]))
    if kale.get("pipeline_description"):
        meta["description"] = str(kale["pipeline_description"])
    if kale.get("experiment_name"):
        meta["experiment"] = str(kale["experiment_name"])
    if kale.get("docker_image") or kale.get("base_image"):
        meta["image"] = str(kale.get("docker_image") or kale.get("base_image"))
    if "enable_caching" in kale:
        meta["cache"] = bool(kale["enable_caching"])
    defaults = tags.parse_tags(report.notebook, -1, [str(t) for t in kale.get("steps_defaults") or []], [])
    meta["defaults"] = defaults.settings
    for volume in kale.get("volumes") or []:
        if isinstance(volume, dict) and volume.get("type", "pvc") in ("pvc", "pv") and volume.get("name"):
            meta["volumes"].append(VolumeMount(str(volume["name"]), str(volume.get("mount_point", "/data"))))
        else:
            report.warn(
                None, "metadata.kubeflow_notebook.volumes", f"volume {volume!r} not supported; ignored"
            )

"""Docker build contexts, one per distinct step image, so clusters need no pip at pod start.

Each context's requirements are pinned to the versions installed where cellpipe runs; the step
runtime only installs modules it cannot import, so a step on a built image installs nothing.
"""

from __future__ import annotations

import re

from converter.model import Pipeline
from converter.step import requirements as packaging


def image_slug(image: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", image.lower()).strip("-")


def build_context(pipeline: Pipeline) -> dict[str, str]:
    """Files under `build/<image>/`: a Dockerfile and a requirements.txt for each image the steps use."""
    by_image: dict[str, list[str]] = {}
    requirements: dict[str, set[str]] = {}
    for step in pipeline.steps:
        image = step.settings.image or pipeline.image
        by_image.setdefault(image, []).append(step.name)
        requirements.setdefault(image, set()).update(packaging.pinned(p) for p in step.packages)
    files: dict[str, str] = {}
    for image in sorted(by_image):
        folder = f"build/{image_slug(image)}"
        steps = ", ".join(by_image[image])
        files[f"{folder}/requirements.txt"] = "".join(f"{r}\n" for r in sorted(requirements[image]))
        files[f"{folder}/Dockerfile"] = (
            f"# Image for steps: {steps}\n"
            f"# Build and push it, then point the steps at it (image: tag or metadata.cellpipe.image).\n"
            f"FROM {image}\n"
            "COPY requirements.txt /tmp/cellpipe-requirements.txt\n"
            "RUN python3 -m pip install --no-cache-dir -r /tmp/cellpipe-requirements.txt \\\n"
            "    && rm /tmp/cellpipe-requirements.txt\n"
        )
    return files

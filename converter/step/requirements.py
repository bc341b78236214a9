"""Which pip distributions a step needs, from what it imports, pinned to what is installed here.

Pinning to the local versions makes a compiled pipeline reproduce the environment the
notebook was developed in, and lets `--build-context` build air-gapped images.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping

# Import names whose distribution name differs, for packages not installed here.
_KNOWN = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "skimage": "scikit-image",
    "dateutil": "python-dateutil",
    "google.cloud": "google-cloud",
    "IPython": "ipython",
    "attr": "attrs",
    "jwt": "pyjwt",
    "dotenv": "python-dotenv",
    "Crypto": "pycryptodome",
    "tensorflow_datasets": "tensorflow-datasets",
    "torch": "torch",
}
_REQUIREMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


@functools.cache
def _installed_map() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str | None:
    """The pip distribution that provides a top-level module, or None for the standard library."""
    if module in sys.stdlib_module_names or module in ("__future__", "__main__"):
        return None
    if module in _KNOWN:
        return _KNOWN[module]
    try:  # the common case, distribution named like the module: avoids scanning every installed package
        importlib.metadata.version(module)
        return module
    except importlib.metadata.PackageNotFoundError:
        pass
    dists = _installed_map().get(module)
    return sorted(dists)[0] if dists else module.replace("_", "-")


def pinned(requirement: str) -> str:
    """`name` -> `name==installed version` when installed here and not already constrained."""
    match = _REQUIREMENT_NAME.match(requirement)
    if match is None or match.end() != len(requirement):
        return requirement
    try:
        return f"{requirement}=={importlib.metadata.version(requirement)}"
    except importlib.metadata.PackageNotFoundError:
        return requirement


def requirements(
    modules: Iterable[str], notebook_packages: Iterable[str], step_packages: Iterable[str], uses_ipython: bool
) -> tuple[str, ...]:
    """Sorted, de-duplicated pip requirements of a step (one per distribution, explicit pins win)."""
    chosen: dict[str, str] = {}
    for module in sorted(set(modules) | ({"IPython"} if uses_ipython else set())):
        dist = distribution(module)
        if dist is not None:
            chosen[_key(dist)] = pinned(dist)
    for requirement in [*notebook_packages, *step_packages]:
        chosen[_key(requirement)] = pinned(requirement)
    return tuple(chosen[k] for k in sorted(chosen))


def module_requirements(modules: Iterable[str], packages: Iterable[str]) -> dict[str, str]:
    """Import name -> requirement, for the step runtime's install-only-what-is-missing check.

    A requirement no import explains (an extra `packages:` entry) is checked under its own
    name with dashes as underscores, the usual module name.
    """
    by_dist = {_key(p): p for p in packages}
    result: dict[str, str] = {}
    for module in sorted(set(modules)):
        dist = distribution(module)
        if dist is not None and _key(dist) in by_dist:
            result[module] = by_dist.pop(_key(dist))
    for key, requirement in by_dist.items():
        result[key.replace("-", "_")] = requirement
    return dict(sorted(result.items()))


def _key(requirement: str) -> str:
    match = _REQUIREMENT_NAME.match(requirement)
    name = match.group() if match else requirement
    return re.sub(r"[-_.]+", "-", name).lower()

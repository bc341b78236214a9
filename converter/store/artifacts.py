"""The local artifact store and step cache.

Step outputs are directories the step runtime writes (``value.<fmt>`` + ``meta.json``, the same
serializers as on a cluster). After a step succeeds, each output directory is *renamed* into
``artifacts/<2 hex>/<digest>/`` (same file system: no bytes copied) and from then on never changes;
downstream steps get that path as ``--input`` and only read it, so a cache hit or a reused input
copies nothing.

Addressing: a digest names an output by *how it was computed*, not by hashing its bytes (as Nix
does for derivations). The cache key of a step execution hashes its program text (runtime + cells),
the digests of its inputs, its parameter values, image, packages and environment; an output's
digest is ``blake2b(cache key, variable name)``. Because input digests are part of the key, a
digest stands for the whole upstream computation, which is exactly what a cache lookup needs.
Hashing content instead would read every output once more: on this class of machine blake2b runs
at ~0.85 GB/s while a 200 MB array already takes ~0.85 s to save and load, so content hashing would
cost about a fifth of the step-to-step throughput, for deduplication we do not need.

Executions whose result must not be shared (caching off for the step or the run) fold a unique
execution id into their digests, so a re-run of a non-deterministic step never overwrites what
another run is reading and its downstream steps get fresh cache keys. When two runs compute the same
cacheable output at once, the first rename wins and the other copy is dropped (same key, same
result: that is the caching contract).

The cache index maps a key to the output digests and metrics of the last successful execution, one
small JSON file per key written atomically, so concurrent runs need no lock. An entry whose
artifacts are gone is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_DIGEST_BYTES = 16


def _hash(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for part in parts:
        data = part.encode()
        digest.update(len(data).to_bytes(8, "little"))  # length-prefixed: no ambiguity between parts
        digest.update(data)
    return digest.hexdigest()


def cache_key(
    program: str,
    inputs: Mapping[str, str],
    parameters: Mapping[str, str | None],
    image: str,
    packages: Sequence[str],
    env: Sequence[tuple[str, str]] = (),
) -> str:
    """The key of a step execution: equal keys must give equal outputs for caching to be right.

    `inputs` maps variable -> input digest, `parameters` name -> value as rendered on the command line
    (None: an optional parameter left unset).
    """
    spec = {
        "inputs": dict(sorted(inputs.items())),
        "parameters": dict(sorted(parameters.items())),
        "image": image,
        "packages": sorted(packages),
        "env": sorted(env),
    }
    return _hash("cellpipe-step-v1", program, json.dumps(spec, sort_keys=True))


def output_digest(key: str, variable: str, execution: str | None = None) -> str:
    """Address of one output: shared between equal executions unless `execution` makes it unique."""
    return _hash("cellpipe-output-v1", key, variable, execution or "")


@dataclass(frozen=True)
class CacheEntry:
    """What a later run needs to reuse a step execution without running it."""

    outputs: dict[str, str]  # variable -> digest
    metrics: dict[str, float]
    folder: str  # the step folder (log, report, cell outputs) of the execution that computed it
    run_id: str
    step: str
    time: float = 0.0


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_dir()

    def staging(self, execution: str) -> Path:
        """A fresh empty folder for the outputs of a running step, on the store's file system."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{execution}.", dir=tmp))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def discard_run(self, run_id: str) -> None:
        """Drop what a run's unfinished steps left in staging (after its engine was killed)."""
        for staging in (self.root / "tmp").glob(f"{run_id}.*"):
            self.discard(staging)

    def commit(self, staged: Mapping[str, Path], key: str, execution: str | None) -> dict[str, str]:
        """Move each staged output folder into the store; variable -> digest.

        `execution` None gives shared (cacheable) addresses; an id gives addresses only this
        execution uses. Raises FileNotFoundError naming an output the step did not write.
        """
        for variable, folder in staged.items():
            if not folder.is_dir():
                raise FileNotFoundError(f"the step wrote no artifact for output {variable!r}")
        digests: dict[str, str] = {}
        for variable, folder in sorted(staged.items()):
            digest = output_digest(key, variable, execution)
            target = self.path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(folder, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(folder, ignore_errors=True)  # an equal execution got there first
            digests[variable] = digest
        return digests

    def _entry_path(self, key: str) -> Path:
        return self.root / "cache" / key[:2] / f"{key}.json"

    def lookup(self, key: str, outputs: Iterable[str]) -> CacheEntry | None:
        """The cached execution for `key`, if it produced every wanted output and they still exist."""
        try:
            entry = CacheEntry(**json.loads(self._entry_path(key).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        wanted = set(outputs)
        if not wanted <= entry.outputs.keys():
            return None
        if not all(self.exists(entry.outputs[name]) for name in wanted):
            return None
        return entry

    def remember(self, key: str, entry: CacheEntry) -> None:
        """Record a successful execution; written atomically, the latest one wins."""
        path = self._entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = asdict(entry)
        record["time"] = entry.time or time.time()
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(tmp, path)

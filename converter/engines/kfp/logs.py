"""Step logs of a KFP run, streamed from its pods with the official `kubernetes` client.

KFP labels every pod of a run ``pipeline/runid=<run id>``, and Argo names the workflow node each pod runs
in the annotation ``workflows.argoproj.io/node-name``: ``<workflow>.root.<task>.executor`` for a task's
executor pod (``executor(1)`` for a retry), ``<workflow>.root.<task>-driver`` for its driver. Executor
pods are mapped to steps by the segment before ``executor``; drivers and system pods are ignored. The
``main`` container's log is followed (``follow=true``) while the step runs; a stream that breaks is
reopened and the lines already seen are skipped. Kubernetes merges stdout and stderr, so every line is
reported as ``stdout``.

Without Kubernetes access (no kube config, not in a pod, or no permission to list pods) there are no
logs; the engine warns once and goes on.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

RUN_ID_LABEL = "pipeline/runid"
NODE_NAME_ANNOTATION = "workflows.argoproj.io/node-name"
CONTAINER = "main"
_ATTEMPT_SUFFIX = re.compile(r"\(\d+\)$")
_STARTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})
_RETRY_SECONDS = 1.0


def kube_configuration() -> Any | None:
    """The in-cluster configuration, else the kube config ($KUBECONFIG or ~/.kube/config); None without."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        return configuration
    except config.ConfigException:
        pass
    try:  # $KUBECONFIG read now: the kubernetes package reads it once, at import
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError):
        return None
    return configuration


def task_of(node_name: str, tasks: Mapping[str, str]) -> str | None:
    """The step whose executor runs in the Argo node `node_name`, or None for any other pod."""
    segments = [_ATTEMPT_SUFFIX.sub("", segment) for segment in node_name.split(".")]
    if len(segments) >= 2 and segments[-1] == "executor":
        return tasks.get(segments[-2])
    return None


class PodLogs:
    """Follows the executor pods of one run; `scan` after each poll starts followers for new pods."""

    def __init__(
        self,
        configuration: Any,
        namespace: str,
        run_id: str,
        tasks: Mapping[str, str],  # KFP task name -> step name
        on_line: Callable[[str, str], None],
        on_problem: Callable[[str], None],
    ):
        from kubernetes import client

        self.api = client.CoreV1Api(client.ApiClient(configuration))
        self.namespace, self.run_id, self.tasks = namespace, run_id, dict(tasks)
        self.on_line, self.on_problem = on_line, on_problem
        self.enabled = True
        self._stop = threading.Event()
        self._followers: dict[str, tuple[str, threading.Thread]] = {}  # pod -> (step, thread)
        self._responses: set[Any] = set()
        self._lock = threading.Lock()

    def scan(self) -> None:
        """Start following every executor pod of the run that has started and is not followed yet."""
        from kubernetes.client.exceptions import ApiException

        if not self.enabled:
            return
        try:
            pods = self.api.list_namespaced_pod(
                self.namespace, label_selector=f"{RUN_ID_LABEL}={self.run_id}", _request_timeout=10
            ).items
        except ApiException as error:
            if error.status in (401, 403):
                self.enabled = False
                self.on_problem(
                    f"no permission to list pods in namespace {self.namespace!r} "
                    f"(HTTP {error.status}): step logs are not streamed; they are in the KFP UI"
                )
            return
        except Exception:  # the API server is unreachable for now: try again after the next poll
            return
        for pod in pods:
            name = pod.metadata.name
            annotations = pod.metadata.annotations or {}
            step = task_of(annotations.get(NODE_NAME_ANNOTATION, ""), self.tasks)
            phase = pod.status.phase if pod.status else None
            if step is None or name in self._followers or phase not in _STARTED_PHASES:
                continue
            thread = threading.Thread(
                target=self._follow, args=(name, step), name=f"cellpipe-log-{name}", daemon=True
            )
            self._followers[name] = (step, thread)
            thread.start()

    def drain(self, step: str, timeout: float) -> None:
        """Wait (at most `timeout` s) until the step's log streams have ended: its last lines are in."""
        for follower_step, thread in list(self._followers.values()):
            if follower_step == step:
                thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            try:
                response.close()
            except Exception:  # already closed by its reader
                continue
        for _, thread in list(self._followers.values()):
            thread.join(2.0)

    def _follow(self, pod: str, step: str) -> None:
        from kubernetes.client.exceptions import ApiException

        seen = [0]  # lines reported so far: a reopened stream starts from the beginning again
        while not self._stop.is_set():
            try:
                response = self.api.read_namespaced_pod_log(
                    pod,
                    self.namespace,
                    container=CONTAINER,
                    follow=True,
                    _preload_content=False,
                    _request_timeout=(10, None),
                )
            except ApiException as error:
                if error.status in (401, 403, 404):  # not allowed, or the pod is gone
                    return
                self._stop.wait(_RETRY_SECONDS)  # 400: the container is still being created
                continue
            except Exception:
                self._stop.wait(_RETRY_SECONDS)
                continue
            with self._lock:
                self._responses.add(response)
            try:
                self._read(response, step, seen)
                return  # the stream ended: the container has finished
            except Exception:
                self._stop.wait(_RETRY_SECONDS)
            finally:
                with self._lock:
                    self._responses.discard(response)
                response.release_conn()

    def _read(self, response: Any, step: str, seen: list[int]) -> None:
        """Report the stream's lines after the first `seen[0]`, counting them in `seen` as they come."""
        count, pending = 0, b""
        for chunk in response.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                count += 1
                if count > seen[0]:
                    seen[0] = count
                    self.on_line(step, raw.decode("utf-8", "replace").rstrip("\r"))
        if pending and count + 1 > seen[0]:
            seen[0] = count + 1
            self.on_line(step, pending.decode("utf-8", "replace").rstrip("\r"))

"""`cellpipe serve RUN STEP --local`: serve the model a local run's step produced, over KServe's protocols."""

from __future__ import annotations

import argparse

from converter.cli.common import EXIT_OK, Command
from converter.errors import CellpipeError


def _serve(args: argparse.Namespace) -> int:
    if not args.local:
        raise CellpipeError(
            "only --local serving runs from here; on a cluster the compiled pipeline's serve step deploys "
            "the InferenceService (see docs/serving.md)"
        )
    import importlib.util

    if importlib.util.find_spec("kserve") is None:  # not imported here: kserve parses sys.argv on import
        raise CellpipeError("local serving needs KServe's model server: pip install 'cellpipe[serve]'")
    from converter.serving import kserve as serving

    model, run_id, variable = serving.load_run_model(args.run, args.step)
    name = args.name or args.step.replace("_", "-")
    base = f"http://127.0.0.1:{args.port}"
    print(f"serving {variable} of step {args.step} (run {run_id}) as model {name!r} on {base}", flush=True)
    print(f'  V1: POST {base}/v1/models/{name}:predict  {{"instances": [[...], ...]}}', flush=True)
    print(f"  V2: POST {base}/v2/models/{name}/infer", flush=True)
    serving.serve_local(model, name, args.port)
    return EXIT_OK


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run id, or a unique prefix of one")
    p.add_argument("step", help="the step that produced the model")
    p.add_argument("--local", action="store_true", help="serve on this machine (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--name", help="model name in the URLs (default: the step name)")


COMMANDS = [
    Command(
        "serve", "serve the model a step of a local run produced (KServe V1 and V2)", _serve_arguments, _serve
    ),
]

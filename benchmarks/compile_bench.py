"""How `cellpipe compile` scales with the number of steps, against the stock KFP DSL builder.

Generates notebooks of 10, 50, 100 and 500 steps (each step reads the previous step's
variable and one from a shared early step, with resource, retry and Kubernetes settings),
times the whole `cellpipe compile` process, and, as the baseline measured in the same run,
a hand-written KFP DSL pipeline of the same shape built with lightweight components and
resource setters (what a user or Kale would write).

    python benchmarks/compile_bench.py [--sizes 10,50,100,500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

TARGETS = {50: 1.5, 500: 6.0}


def make_notebook(steps: int, path: Path) -> None:
    cells = [
        nbformat.v4.new_code_cell("import math\nimport json", metadata={"tags": ["imports"]}),
        nbformat.v4.new_code_cell("scale = 2\nname = 'bench'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("base = [1, 2, 3]\nv0 = 0", metadata={"tags": ["step:s0"]}),
    ]
    for i in range(1, steps):
        tags = [
            f"step:s{i}",
            "cpu:500m",
            "cpu-limit:1",
            "memory:1Gi",
            "memory-limit:2Gi",
            "retries:2",
            "label:team:bench",
            "env:MODE=bench",
        ]
        source = f"v{i} = v{i - 1} + len(base) * scale\nprint(name, math.sqrt(v{i}))"
        cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    cells.append(nbformat.v4.new_code_cell(f"v{steps - 1}", metadata={"tags": ["metrics"]}))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))


STOCK_DSL = """
import sys
from kfp import compiler, dsl, kubernetes

N = int(sys.argv[1])

@dsl.component(base_image="python:3.11-slim")
def first() -> int:
    return 0

@dsl.component(base_image="python:3.11-slim")
def step(prev: int, base: list, scale: int) -> int:
    import math
    value = prev + len(base) * scale
    print(math.sqrt(value))
    return value

@dsl.pipeline(name="stock")
def pipeline(scale: int = 2):
    prev = first()
    for i in range(1, N):
        task = step(prev=prev.output, base=[1, 2, 3], scale=scale)
        task.set_cpu_request("500m").set_cpu_limit("1").set_memory_request("1Gi").set_memory_limit("2Gi")
        task.set_retry(2).set_env_variable("MODE", "bench")
        kubernetes.add_pod_label(task, "team", "bench")
        prev = task

compiler.Compiler().compile(pipeline, sys.argv[2])
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,100,500")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'steps':>6} {'cellpipe s':>11} {'s/step':>8} {'stock DSL s':>12} {'ratio':>6} {'target':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stock = folder / "stock.py"
        stock.write_text(STOCK_DSL)
        rows = []
        for n in sizes:
            notebook = folder / f"bench{n}.ipynb"
            make_notebook(n, notebook)
            ours = timed(
                [sys.executable, "-m", "converter.cli", "compile", "-q", str(notebook), "-o", str(folder)]
            )
            baseline = timed([sys.executable, str(stock), str(n), str(folder / f"stock{n}.yaml")])
            target = TARGETS.get(n)
            verdict = "" if target is None else (f"<{target}s " + ("ok" if ours < target else "MISSED"))
            rows.append((n, ours))
            print(
                f"{n:>6} {ours:>11.2f} {ours / n:>8.4f} {baseline:>12.2f} "
                f"{ours / baseline:>6.2f} {verdict:>8}"
            )
        if len(rows) >= 2:
            (n1, t1), (n2, t2) = rows[-2], rows[-1]
            print(
                f"marginal cost per step between {n1} and {n2} steps: {(t2 - t1) / (n2 - n1) * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()

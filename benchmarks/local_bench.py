"""Local engine benchmarks: the figures issue 3 promises, measured in one run on this machine.

    python benchmarks/local_bench.py

(a) the 4-step scikit-learn sample notebook, `cellpipe run` / `papermill` (both as the command a user
    types, so both pay their start-up), target <= 1.3;
(b) the same pipeline written as 4 lightweight KFP components under `kfp.local.SubprocessRunner`:
    cellpipe / kfp.local, target <= 0.3;
(c) a diamond DAG whose two middle steps sleep 2 s each: sequential (--max-parallel 1) / parallel,
    target >= 1.8;
(d) per-step overhead: a 20-step chain of `x = x + 1` steps, engine wall time / 20, target <= 100 ms;
(e) a 200 MB numpy array and a 1M-row DataFrame passed between two steps: MB/s from the end of the
    producer's last cell to the start of the consumer's first (save, hand-over, process start, load),
    target >= 300 MB/s for the array;
(f) two CPU-heavy scikit-learn steps that can run at once (KMeans, GaussianMixture on the same data,
    issue 10 item 10): `cellpipe run` / papermill, target <= 0.9, and `cellpipe run` /
    `cellpipe run --max-parallel 1`, target <= 1.0 (each running step gets its share of the CPUs,
    so running them together is never slower than one after another).

    python benchmarks/local_bench.py f    # only (f); any letters select figures

Every run uses a fresh CELLPIPE_HOME and --no-cache, so nothing is cached. Each wall time is the
best of a few repetitions (REPEAT): the machine is shared and one slow start says little.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SKLEARN_NOTEBOOK = ROOT / "sample_notebooks" / "sklearn_tabular.ipynb"
REPEAT = 2
ARRAY_BYTES = 200 * 1024 * 1024
FRAME_ROWS = 1_000_000

sys.path.insert(0, str(ROOT))  # run from a checkout without installing


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: float
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        """How far inside the target (> 1 is a pass), whichever way the target points."""
        if self.higher_is_better:
            return self.value / self.target
        return self.target / self.value if self.value else float("inf")

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def best_of(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def timed_command(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def fresh_env(tmp: Path, label: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CELLPIPE_HOME"] = str(tmp / f"home-{label}-{time.monotonic_ns()}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def cellpipe_command(notebook: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "converter.cli", "run", str(notebook), "--no-cache", "--quiet", *extra]


# ---------------------------------------------------------------- notebooks made for the benchmark


def code(source: str, *tags: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(source).strip(), metadata={"tags": list(tags)})


def write_notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def diamond_notebook(folder: Path) -> Path:
    return write_notebook(
        folder / "diamond.ipynb",
        [
            code("import time", "imports"),
            code("x = 1", "step:top"),
            code("time.sleep(2)\nleft = x + 1", "step:left"),
            code("time.sleep(2)\nright = x + 2", "step:right"),
            code("total = left + right\nprint(total)", "step:bottom"),
        ],
    )


def chain_notebook(folder: Path, steps: int) -> Path:
    cells = [code("x = 0", "step:s00")]
    cells += [code("x = x + 1", f"step:s{i:02d}") for i in range(1, steps)]
    return write_notebook(folder / "chain.ipynb", cells)


def threads_notebook(folder: Path) -> Path:
    """Two independent CPU-heavy scikit-learn steps after a data step (BLAS and OpenMP inside)."""
    return write_notebook(
        folder / "threads.ipynb",
        [
            code(
                """
                from sklearn.cluster import KMeans
                from sklearn.datasets import make_blobs
                from sklearn.mixture import GaussianMixture
                """,
                "imports",
            ),
            code(
                "X, _ = make_blobs(n_samples=150_000, n_features=16, centers=8, random_state=0)", "step:data"
            ),
            code(
                "inertia = float(KMeans(n_clusters=8, n_init=10, random_state=0).fit(X).inertia_)",
                "step:kmeans",
            ),
            code(
                """
                mixture = GaussianMixture(n_components=8, max_iter=100, tol=1e-9, random_state=0).fit(X)
                likelihood = float(mixture.score(X))
                """,
                "step:mixture",
            ),
            code("print(inertia, likelihood)", "step:report"),
        ],
    )


def transfer_notebook(folder: Path) -> Path:
    """Producer -> consumer twice (array, then frame), strictly one after another."""
    return write_notebook(
        folder / "transfer.ipynb",
        [
            code("import time\nimport numpy as np\nimport pandas as pd", "imports"),
            code(
                f"""
                array = np.random.default_rng(0).random({ARRAY_BYTES // 8})
                array_sent = time.time()
                """,
                "step:make_array",
            ),
            code(
                """
                array_seconds = time.time() - array_sent
                array_mb = array.nbytes / 2**20
                assert array.shape == (26214400,)
                """,
                "step:use_array",
            ),
            code(
                f"""
                rng = np.random.default_rng(1)
                frame = pd.DataFrame({{"id": np.arange({FRAME_ROWS}), "value": rng.random({FRAME_ROWS}),
                                      "group": rng.integers(0, 100, {FRAME_ROWS})}})
                frame_sent = time.time()
                """,
                "step:make_frame",
                "after:use_array",
            ),
            code(
                """
                frame_seconds = time.time() - frame_sent
                frame_mb = frame.memory_usage(deep=True).sum() / 2**20
                assert len(frame) == 1_000_000
                """,
                "step:use_frame",
            ),
            code("array_seconds\narray_mb\nframe_seconds\nframe_mb", "metrics"),
        ],
    )


# ---------------------------------------------------------------- the KFP equivalent of (a)

KFP_SCRIPT = """
import sys
from kfp import dsl, local
from kfp.dsl import Dataset, Input, Metrics, Model, Output

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1])


@dsl.component
def load_data(data: Output[Dataset]):
    from sklearn.datasets import load_breast_cancer

    dataset = load_breast_cancer(as_frame=True)
    frame = dataset.data.copy()
    frame["target"] = dataset.target
    frame.to_parquet(data.path)


@dsl.component
def preprocess(data: Input[Dataset], test_size: float, random_state: int, split: Output[Dataset]):
    import joblib
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    frame = pd.read_parquet(data.path)
    X, y = frame.drop(columns="target"), frame["target"]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=random_state, stratify=y
    )
    scaler = StandardScaler().fit(X_train)
    joblib.dump((scaler.transform(X_train), scaler.transform(X_test), y_train, y_test), split.path)


@dsl.component
def train(split: Input[Dataset], C: float, max_iter: int, random_state: int, model_kind: str,
          model: Output[Model]):
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X_train, _, y_train, _ = joblib.load(split.path)
    if model_kind == "logreg":
        fitted = LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)
    else:
        fitted = RandomForestClassifier(n_estimators=200, random_state=random_state, n_jobs=1)
    fitted.fit(X_train, y_train)
    print(f"{model_kind}: train accuracy {fitted.score(X_train, y_train):.3f}")
    joblib.dump(fitted, model.path)


@dsl.component
def evaluate(split: Input[Dataset], model: Input[Model], metrics: Output[Metrics]):
    import joblib
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    _, X_test, _, y_test = joblib.load(split.path)
    fitted = joblib.load(model.path)
    y_pred = fitted.predict(X_test)
    metrics.log_metric("accuracy", accuracy_score(y_test, y_pred))
    metrics.log_metric("f1", f1_score(y_test, y_pred))
    metrics.log_metric("roc_auc", roc_auc_score(y_test, fitted.predict_proba(X_test)[:, 1]))


@dsl.pipeline
def sklearn_tabular(test_size: float = 0.2, C: float = 1.0, max_iter: int = 500, random_state: int = 42,
                    model_kind: str = "logreg"):
    loaded = load_data()
    split = preprocess(data=loaded.outputs["data"], test_size=test_size, random_state=random_state)
    model = train(split=split.outputs["split"], C=C, max_iter=max_iter, random_state=random_state,
                  model_kind=model_kind)
    evaluate(split=split.outputs["split"], model=model.outputs["model"])


sklearn_tabular()
"""


# ---------------------------------------------------------------- measurements


def engine_run(notebook: Path, tmp: Path, max_parallel: int | None = None) -> tuple[float, dict[str, float]]:
    """Wall time of one run through the local engine in this process, and the run's metrics."""
    from converter.engines.base import RunRequest
    from converter.engines.local.engine import LocalEngine
    from converter.notebook.reader import read_notebook

    os.environ["CELLPIPE_HOME"] = str(tmp / f"home-engine-{time.monotonic_ns()}")
    pipeline = read_notebook(notebook)
    request = RunRequest(pipeline, notebook.resolve(), use_cache=False, max_parallel=max_parallel)
    started = time.perf_counter()
    result = LocalEngine(max_parallel=max_parallel).run(request, [])
    elapsed = time.perf_counter() - started
    if result.state != "succeeded":
        raise SystemExit(f"{notebook.name}: run {result.run_id} {result.state}: {result.step_states}")
    return elapsed, result.metrics


def wanted(letter: str) -> bool:
    """Figures picked on the command line (`local_bench.py a f`); all by default."""
    return not sys.argv[1:] or letter in sys.argv[1:]


def papermill_command(notebook: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "papermill",
        str(notebook),
        str(output),
        "-k",
        "python3",
        "--no-progress-bar",
        "--log-level",
        "WARNING",
    ]


def measure_threads(tmp: Path, work: Path) -> list[Figure]:
    print("(f) two parallel CPU-heavy scikit-learn steps ...", flush=True)
    notebook = threads_notebook(work)
    papermill = best_of(
        REPEAT,
        lambda: timed_command(papermill_command(notebook, tmp / "f-out.ipynb"), work, fresh_env(tmp, "f")),
    )
    default = best_of(REPEAT, lambda: timed_command(cellpipe_command(notebook), work, fresh_env(tmp, "f")))
    sequential = best_of(
        REPEAT,
        lambda: timed_command(cellpipe_command(notebook, "--max-parallel", "1"), work, fresh_env(tmp, "f")),
    )
    print(f"    cellpipe {default:.2f}s, --max-parallel 1 {sequential:.2f}s, papermill {papermill:.2f}s")
    return [
        Figure("(f) 2 parallel sklearn steps: cellpipe / papermill", default / papermill, "x", 0.9, False),
        Figure(
            "(f) 2 parallel sklearn steps: cellpipe / --max-parallel 1", default / sequential, "x", 1.0, False
        ),
    ]


def measure(tmp: Path) -> list[Figure]:
    figures: list[Figure] = []
    work = tmp / "notebooks"
    work.mkdir()
    if not any(wanted(letter) for letter in "abcde"):
        return measure_threads(tmp, work)
    notebook = work / SKLEARN_NOTEBOOK.name
    shutil.copy(SKLEARN_NOTEBOOK, notebook)  # steps run (and write files) in the notebook's folder

    print("(a) sklearn notebook: cellpipe run vs papermill ...", flush=True)
    papermill = best_of(
        REPEAT,
        lambda: timed_command(
            [
                sys.executable,
                "-m",
                "papermill",
                str(notebook),
                str(tmp / "papermill-out.ipynb"),
                "-k",
                "python3",
                "--no-progress-bar",
                "--log-level",
                "WARNING",
            ],
            work,
            fresh_env(tmp, "papermill"),
        ),
    )
    cellpipe = best_of(REPEAT, lambda: timed_command(cellpipe_command(notebook), work, fresh_env(tmp, "a")))
    print(f"    cellpipe {cellpipe:.2f}s, papermill {papermill:.2f}s", flush=True)
    figures.append(Figure("(a) sklearn 4 steps: cellpipe / papermill", cellpipe / papermill, "x", 1.3, False))

    print("(b) the same pipeline under kfp.local.SubprocessRunner ...", flush=True)
    script = tmp / "kfp_sklearn.py"
    script.write_text(KFP_SCRIPT)
    kfp_local = best_of(
        1,
        lambda: timed_command(
            [sys.executable, str(script), str(tmp / "kfp-root")], work, fresh_env(tmp, "kfp")
        ),
    )
    print(f"    kfp.local {kfp_local:.2f}s", flush=True)
    figures.append(Figure("(b) sklearn 4 steps: cellpipe / kfp.local", cellpipe / kfp_local, "x", 0.3, False))

    print("(c) diamond DAG, two 2 s steps in the middle ...", flush=True)
    diamond = diamond_notebook(work)
    parallel = best_of(REPEAT, lambda: engine_run(diamond, tmp)[0])
    sequential = best_of(REPEAT, lambda: engine_run(diamond, tmp, max_parallel=1)[0])
    print(f"    parallel {parallel:.2f}s, --max-parallel 1 {sequential:.2f}s", flush=True)
    figures.append(Figure("(c) diamond: sequential / parallel", sequential / parallel, "x", 1.8, True))

    print("(d) 20-step chain of x = x + 1 ...", flush=True)
    chain = chain_notebook(work, 20)
    per_step = best_of(REPEAT, lambda: engine_run(chain, tmp)[0]) / 20
    figures.append(Figure("(d) per-step overhead (20-step chain)", per_step * 1000, "ms", 100, False))

    print("(e) 200 MB array and 1M-row DataFrame between two steps ...", flush=True)
    transfer = transfer_notebook(work)
    runs = [engine_run(transfer, tmp)[1] for _ in range(REPEAT)]
    array = max(runs, key=lambda m: m["array_mb"] / m["array_seconds"])
    frame = max(runs, key=lambda m: m["frame_mb"] / m["frame_seconds"])
    array_rate = array["array_mb"] / array["array_seconds"]
    frame_rate = frame["frame_mb"] / frame["frame_seconds"]
    print(
        f"    array {array['array_mb']:.0f} MB in {array['array_seconds']:.2f}s, "
        f"frame {frame['frame_mb']:.0f} MB in {frame['frame_seconds']:.2f}s",
        flush=True,
    )
    figures.append(Figure("(e) 200 MB numpy array between steps", array_rate, "MB/s", 300, True))
    figures.append(Figure("(e) 1M-row DataFrame between steps (no target)", frame_rate, "MB/s", 0, True))
    if wanted("f"):
        figures += measure_threads(tmp, work)
    return figures


def print_table(figures: list[Figure]) -> None:
    rows = [("figure", "value", "target", "ratio", "result")]
    for f in figures:
        target = f"{'>=' if f.higher_is_better else '<='} {f.target:g} {f.unit}" if f.target else "-"
        ratio = f"{f.ratio:.2f}" if f.target else "-"
        result = ("pass" if f.passed else "FAIL") if f.target else "-"
        rows.append((f.name, f"{f.value:.3g} {f.unit}", target, ratio, result))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellpipe-bench-") as tmp:
        figures = measure(Path(tmp))
    print(f"\nmeasured in {time.perf_counter() - started:.0f}s on {os.cpu_count()} CPUs\n")
    print_table(figures)
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""What travels between steps besides values: imports and process-wide state, along the notebook's order.

In a notebook every cell runs in one process, so a cell sees every import and every piece of
process-wide state that the cells above it set up. A step is a process of its own; to see what the
notebook would, it gets:

* **replayed statements** (`replay_cells`): the top-level imports of the steps above it in the
  notebook (``import numpy as np`` in step ``a`` makes ``np`` usable in step ``b``: replayed, not
  pickled) and the statements that set process-wide state: ``pd.set_option``, ``os.chdir`` and
  ``%cd``, ``sys.path`` additions, ``os.environ`` and ``%env``, ``warnings`` filters, matplotlib
  ``rcParams``/``style``/``rc``, seaborn themes, numpy print options, ``%load_ext``, ``%config``,
  ``%matplotlib``. The runtime runs them silently after the imports and functions cells, before
  the step's own cells.
* **the global random state** (`RANDOM_STATE`): once a cell seeds ``random`` or ``numpy.random``,
  every later step that uses either global generator reads and passes on the generators' exact
  state as a value (ordering those steps as the notebook does), so seeded notebooks draw the same
  numbers as in one process.

What cannot be carried is listed by `uncarried` (for ``validate``): state set with values the
replay cannot know (``os.chdir(folder)``), and process-wide state outside the list above
(``torch.manual_seed``, ``logging.basicConfig``, ``locale.setlocale``, a module attribute changed
in place...).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass

from converter.model import CodeCell, Pipeline, Step

RANDOM_STATE = "cellpipe_random_state"  # the value carrying the global random generators' state

# Calls (on the module path their alias resolves to) that set state the replay carries.
_CARRIED_CALLS = frozenset(
    {
        "pandas.set_option",
        "pandas.reset_option",
        "os.chdir",
        "os.putenv",
        "os.environ.update",
        "os.environ.setdefault",
        "os.environ.pop",
        "sys.path.append",
        "sys.path.insert",
        "sys.path.extend",
        "warnings.filterwarnings",
        "warnings.simplefilter",
        "warnings.resetwarnings",
        "matplotlib.rc",
        "matplotlib.rcParams.update",
        "matplotlib.style.use",
        "matplotlib.pyplot.rc",
        "matplotlib.pyplot.rcParams.update",
        "matplotlib.pyplot.style.use",
        "seaborn.set",
        "seaborn.set_theme",
        "seaborn.set_style",
        "seaborn.set_context",
        "seaborn.set_palette",
        "numpy.set_printoptions",
        "numpy.seterr",
    }
)
# Assignments to these (``os.environ['X'] = ...``, ``pd.options.display.width = ...``) are carried.
_CARRIED_TARGETS = ("os.environ", "matplotlib.rcParams", "matplotlib.pyplot.rcParams", "pandas.options")
_CARRIED_MAGICS = frozenset({"cd", "env", "load_ext", "config", "matplotlib", "precision", "set_env"})
# Process-wide state the steps do not carry: named by `uncarried`.
_UNCARRIED_CALLS = frozenset(
    {
        "torch.manual_seed",
        "torch.cuda.manual_seed",
        "torch.cuda.manual_seed_all",
        "torch.set_default_dtype",
        "torch.set_num_threads",
        "tensorflow.random.set_seed",
        "tensorflow.keras.utils.set_random_seed",
        "logging.basicConfig",
        "locale.setlocale",
        "sys.setrecursionlimit",
        "socket.setdefaulttimeout",
        "decimal.getcontext",
        "sklearn.set_config",
    }
)
_UNCARRIED_MAGICS = frozenset({"autoreload", "alias", "xmode", "run", "store"})
_SEEDS = frozenset({"random.seed", "random.setstate", "numpy.random.seed", "numpy.random.set_state"})
# numpy.random names that make independent generators: they do not touch the global state.
_OWN_GENERATORS = frozenset(
    {"default_rng", "Generator", "RandomState", "SeedSequence", "BitGenerator", "PCG64", "MT19937", "Philox"}
)


@dataclass(frozen=True)
class Uncarried:
    """A statement setting process-wide state that later steps will not see."""

    step: str
    cell: int
    line: int
    what: str  # e.g. "torch.manual_seed(0)"
    why: str


def aliases(cells: Iterable[CodeCell]) -> dict[str, str]:
    """Local name -> module path, from every import in the cells (``np`` -> ``numpy``)."""
    names: dict[str, str] = {}
    for cell in cells:
        for node in ast.walk(_parse(cell.python)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        root = alias.name.split(".")[0]
                        names[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _parse(code: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """``np.random.seed`` -> ``numpy.random.seed`` (through the import aliases), else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in names:
        return None
    return ".".join([names[node.id], *reversed(parts)])


def _magic(node: ast.stmt) -> tuple[str, str] | None:
    """A transformed line magic ``get_ipython().run_line_magic('cd', 'data')`` -> ('cd', 'data')."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return None
    call = node.value
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "run_line_magic"):
        return None
    owner = func.value
    if not (
        isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "get_ipython"
    ):
        return None
    args = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return (args[0], args[1] if len(args) > 1 else "") if args else None


def _setting(node: ast.stmt, names: dict[str, str]) -> str | None:
    """The state a top-level statement sets, as a module path or magic name; None when it sets none."""
    magic = _magic(node)
    if magic is not None:
        name, line = magic
        if name == "env" and not any(c in line for c in "= "):
            return None  # `%env` or `%env NAME` only shows
        return f"%{name}"
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return _dotted(node.value.func, names)
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign | ast.Delete):
        targets = node.targets
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    for target in targets:
        # os.environ["X"] = ..., mpl.rcParams["x"] = ..., pd.options.display.width = ..., mod.attr = ...
        base = target.value if isinstance(target, ast.Subscript) else target
        path = (
            _dotted(base, names)
            if isinstance(base, ast.Attribute) or isinstance(target, ast.Subscript)
            else None
        )
        if path is not None:
            return f"{path}="
    return None


def _carried(setting: str) -> bool:
    if setting.startswith("%"):
        return setting[1:] in _CARRIED_MAGICS
    if setting.endswith("="):
        return setting[:-1].startswith(_CARRIED_TARGETS)
    return setting in _CARRIED_CALLS


def _free_names(node: ast.stmt, names: dict[str, str]) -> set[str]:
    """Names a statement reads that the replay may not know (not modules, not builtins)."""
    import builtins

    found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return {n for n in found if n not in names and n != "get_ipython" and not hasattr(builtins, n)}


def carried_statements(cell: CodeCell, names: dict[str, str]) -> list[str]:
    """The cell's top-level imports and state-setting statements the later steps replay."""
    kept: list[str] = []
    for node in _parse(cell.python).body:
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module != "__future__"):
            kept.append(ast.unparse(node))
            continue
        setting = _setting(node, names)
        if setting is not None and _carried(setting) and not _free_names(node, names):
            kept.append(ast.unparse(node))
    return kept


def sets_state(cells: Iterable[CodeCell], names: dict[str, str]) -> bool:
    """Whether the cells set process-wide state later steps replay (so those run after them)."""
    for cell in cells:
        for node in _parse(cell.python).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                continue
            setting = _setting(node, names)
            if setting is not None and _carried(setting):
                return True
    return False


def module_files(cells: Iterable[CodeCell]) -> tuple[set[str], set[str]]:
    """(written, imported): modules the cells write as ``NAME.py`` with ``%%writefile``, and top-level
    modules they import. A step importing a module an earlier step wrote runs after that step."""
    written: set[str] = set()
    imported: set[str] = set()
    for cell in cells:
        for node in ast.walk(_parse(cell.python)):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run_cell_magic"
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "writefile"
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                target = node.args[1].value.split()[-1] if node.args[1].value.split() else ""
                if target.endswith(".py") and "/" not in target:
                    written.add(target[:-3])
    return written, imported


def _notebook_order(pipeline: Pipeline) -> list[Step]:
    return sorted((s for s in pipeline.steps if s.cells), key=lambda s: s.cells[0].index)


def _all_cells(pipeline: Pipeline) -> list[CodeCell]:
    return [*pipeline.imports, *pipeline.functions, *(c for s in _notebook_order(pipeline) for c in s.cells)]


def replay_cells(pipeline: Pipeline, step: Step) -> list[dict[str, object]]:
    """What `step` replays from the steps above it in the notebook, as runtime cell specs."""
    if not step.cells:
        return []
    names = aliases(_all_cells(pipeline))
    replay: list[dict[str, object]] = []
    for earlier in _notebook_order(pipeline):
        if earlier.cells[0].index >= step.cells[0].index:
            break
        for cell in earlier.cells:
            statements = carried_statements(cell, names)
            if statements:
                code = "\n".join(statements) + "\n"
                replay.append({"index": cell.index, "role": "replay", "step": earlier.name, "code": code})
    return replay


def uncarried(pipeline: Pipeline) -> list[Uncarried]:
    """Statements setting process-wide state that steps after theirs will not see (for ``validate``).

    Only statements in a step followed by other steps count: the last step's state ends with it, and
    imports and functions cells run in every step anyway.
    """
    ordered = _notebook_order(pipeline)
    names = aliases(_all_cells(pipeline))
    found: list[Uncarried] = []
    for step in ordered[:-1]:
        for cell in step.cells:
            for node in _parse(cell.python).body:
                setting = _setting(node, names)
                if setting is None:
                    continue
                what = ast.unparse(node)
                magic = _magic(node)
                if magic is not None:
                    what = f"%{magic[0]} {magic[1]}".rstrip()
                if _carried(setting):
                    free = sorted(_free_names(node, names))
                    if free:
                        why = f"it reads {', '.join(free)}, which later steps' replay of it cannot know"
                        found.append(Uncarried(step.name, cell.index, node.lineno, what, why))
                elif setting in _SEEDS:
                    continue  # carried as the random state
                elif _uncarried(setting):
                    why = "process-wide state later steps do not get (they run in processes of their own)"
                    found.append(Uncarried(step.name, cell.index, node.lineno, what, why))
    return found


def _uncarried(setting: str) -> bool:
    if setting.startswith("%"):
        return setting[1:] in _UNCARRIED_MAGICS
    if setting.endswith("="):
        return True  # an attribute of an imported module changed: later steps get the module afresh
    return setting in _UNCARRIED_CALLS


def random_use(cells: Iterable[CodeCell], names: dict[str, str]) -> tuple[bool, bool]:
    """(seeds, uses): whether the cells seed ``random``/``numpy.random``, and use their global state."""
    seeds = uses = False
    for cell in cells:
        for node in ast.walk(_parse(cell.python)):
            if not isinstance(node, ast.Attribute | ast.Name):
                continue
            path = _dotted(node, names) if isinstance(node, ast.Attribute) else names.get(node.id)
            if path is None:
                continue
            if path in _SEEDS:
                seeds = uses = True
            elif path.startswith("random.") or (
                path.startswith("numpy.random.") and path.split(".")[2] not in _OWN_GENERATORS
            ):
                uses = True
    return seeds, uses

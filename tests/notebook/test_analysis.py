"""Tests for converter.notebook.analysis: what a notebook cell reads, binds, imports, mutates and touches."""

from __future__ import annotations

import ast
import contextlib
import dis
import importlib
import inspect
import pickle
import textwrap
import types
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.inputtransformer2 import TransformerManager

from converter.notebook.analysis import (
    BUILTIN_NAMES,
    CallSite,
    CellAnalysis,
    CellSyntaxError,
    analyze_cell,
    analyze_sequence,
    transform,
)


def cell(source: str) -> CellAnalysis:
    return analyze_cell(textwrap.dedent(source))


def reads(source: str) -> set[str]:
    return set(cell(source).reads)


# ----------------------------------------------------------------------------- order in a cell


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1; print(x)", set()),
        ("print(x); x = 1", {"x"}),
        ("x += 1", {"x"}),
        ("for i in data: total = total + i", {"data", "total"}),
        ("y = x\nx = 2", {"x"}),
        ("a, b = b, a", {"a", "b"}),
        ("x = x.strip()", {"x"}),
        ("assert ok, message", {"ok", "message"}),
        ("print(f'{value:>{width}}')", {"value", "width"}),
        ("raise Oops(reason) from cause", {"Oops", "reason", "cause"}),
        ("s = d[k][1:n]", {"d", "k", "n"}),
    ],
)
def test_reads_follow_execution_order(source: str, expected: set[str]) -> None:
    assert reads(source) == expected


def test_if_reads_the_test_and_assigns_conditionally() -> None:
    result = cell("if c: x = 1")
    assert result.reads == {"c"}
    assert result.assigns == {"x"}
    assert result.conditional_assigns == {"x"}


def test_name_bound_on_every_branch_is_definite() -> None:
    result = cell(
        """
        if c:
            x = 1
        elif d:
            x = 2
        else:
            x = 3
        print(x)
        """
    )
    assert result.reads == {"c", "d"}
    assert result.conditional_assigns == set()


def test_read_after_a_conditional_assignment_is_weak() -> None:
    # `if retrain: model = fit()` then `model.predict()`: model may come from an earlier step
    result = cell(
        """
        if retrain:
            model = fit()
        model.predict(X)
        """
    )
    assert {"model", "retrain", "fit", "X"} == result.reads
    assert result.weak_reads == {"model"}


def test_loop_accumulator_is_a_strong_read_but_loop_carried_value_is_weak() -> None:
    # the first iteration needs `total` from outside; `prev` is only read once an iteration set it
    result = cell(
        """
        for i, x in enumerate(xs):
            total = total + x
            if i:
                print(prev)
            prev = x
        print(last if xs else None)
        for last in xs:
            pass
        """
    )
    assert {"xs", "total", "prev", "last"} == result.reads
    assert result.weak_reads == {"prev"}


def test_value_bound_in_a_loop_is_weak_after_it() -> None:
    result = cell(
        """
        for epoch in range(n):
            loss = step()
        print(loss, epoch)
        """
    )
    assert result.weak_reads == {"loss", "epoch"}
    assert result.conditional_assigns == {"loss", "epoch"}


def test_raising_branch_does_not_weaken_the_other() -> None:
    result = cell(
        """
        if path is None:
            raise ValueError("no path")
        else:
            data = load(path)
        print(data)
        """
    )
    assert result.reads == {"path", "load"}
    assert result.conditional_assigns == set()


def test_try_import_fallback_is_definite() -> None:
    result = cell(
        """
        try:
            import ujson as json
        except ImportError:
            json = None
        json.dumps(1)
        """
    )
    assert result.reads == set()
    assert result.assigns == {"json"}
    assert result.conditional_assigns == set()


def test_loop_else_and_break() -> None:
    result = cell(
        """
        for x in xs:
            if good(x):
                found = x
                break
        else:
            found = None
        print(found)
        """
    )
    assert result.reads == {"xs", "good"}
    assert result.assigns == {"x", "found"}
    assert "found" not in result.conditional_assigns


def test_while_loop_reads_state_it_updates() -> None:
    assert reads("while n > 0:\n    n = n - step\n") == {"n", "step"}


# ----------------------------------------------------------------------------- binding forms


@pytest.mark.parametrize(
    ("source", "assigns", "expected_reads"),
    [
        ("with f() as g: g.x", {"g"}, {"f"}),
        ("with open(p) as (a, b): pass", {"a", "b"}, {"p"}),
        ("for k, (v, *rest) in items: pass", {"k", "v", "rest"}, {"items"}),
        ("import a.b", {"a"}, set()),
        ("import a.b as c", {"c"}, set()),
        ("from . import x", {"x"}, set()),
        ("from .sibling import y as z", {"z"}, set()),
        ("x: int = 3", {"x"}, set()),
        ("x: int", set(), set()),
        ("x: MyType = make()", {"x"}, {"MyType", "make"}),
        ("if (n := len(xs)) > 3: pass", {"n"}, {"xs"}),
        ("class A(Base, metaclass=Meta): pass", {"A"}, {"Base", "Meta"}),
        ("async def main(): await go()", {"main"}, set()),
        ("await asyncio.sleep(t)", set(), {"asyncio", "t"}),
    ],
)
def test_binding_forms(source: str, assigns: set[str], expected_reads: set[str]) -> None:
    result = cell(source)
    assert result.assigns == assigns
    assert result.reads == expected_reads


def test_future_annotations_are_not_evaluated() -> None:
    result = cell(
        """
        from __future__ import annotations
        x: MyType = 1
        def f(a: Other) -> Third: ...
        """
    )
    assert result.reads == set()
    assert "__future__" not in result.modules


def test_function_annotations_are_read_at_definition_time() -> None:
    assert reads("def f(a: Arg = default, *rest: Rest) -> Ret:\n    return a\n") == {
        "Arg",
        "default",
        "Rest",
        "Ret",
    }


def test_del_reads_the_name_and_unbinds_it() -> None:
    assert cell("del x").reads == {"x"}
    result = cell("tmp = 1\ndel tmp")
    assert result.reads == set()
    assert result.assigns == set()
    assert cell("x = 1\ndel x\nprint(x)").reads == {"x"}


def test_except_as_name_does_not_survive_the_handler() -> None:
    result = cell(
        """
        try:
            run()
        except (ValueError, MyError) as err:
            print(err)
        print(err)
        """
    )
    assert result.reads == {"run", "MyError", "err"}
    assert "err" not in result.assigns


def test_match_patterns() -> None:
    result = cell(
        """
        match event:
            case Click(x=0, y=yy) if yy > limit:
                where = yy
            case {"pos": pos, **others}:
                where = pos
            case [first, *_] | (first,):
                where = first
            case Color.RED:
                where = None
            case _:
                where = 0
        print(where)
        """
    )
    assert result.reads == {"event", "Click", "limit", "Color"}
    assert "where" not in result.conditional_assigns
    assert {"yy", "pos", "others", "first", "where"} <= result.assigns


def test_match_without_wildcard_may_bind_nothing() -> None:
    result = cell("match v:\n    case 1:\n        x = 1\nprint(x)\n")
    assert result.weak_reads == {"x"}


def test_imports_modules_and_rebinding() -> None:
    result = cell(
        """
        import numpy as np, os.path
        from sklearn.linear_model import LogisticRegression as LR
        from . import local_helper
        import importlib
        plugin = importlib.import_module("xgboost.sklearn")
        np = np.asarray
        """
    )
    assert result.modules == {"numpy", "os", "sklearn", "importlib", "xgboost"}
    assert result.imports == {"os", "LR", "local_helper", "importlib"}
    assert result.imports <= result.assigns
    assert "np" in result.assigns


def test_imports_inside_functions_count_as_modules_but_bind_locally() -> None:
    result = cell("def f():\n    import torch\n    return torch.zeros(n)\n")
    assert result.modules == {"torch"}
    assert result.assigns == {"f"}
    assert result.functions["f"] == {"n"}


def test_builtins_and_kernel_names_are_never_reads() -> None:
    assert reads("print(len(range(3)), display, get_ipython, In, Out, _, __name__, exit)") == set()
    assert {"print", "display", "get_ipython", "__builtins__"} <= BUILTIN_NAMES


# ----------------------------------------------------------------------------- scopes


def test_function_free_names_are_call_time_reads() -> None:
    result = cell(
        """
        @register(registry)
        def score(model, X=default_X, *, k=top_k):
            local = helper(X)
            return model.score(local) * weight
        """
    )
    assert result.reads == {"register", "registry", "default_X", "top_k"}
    assert result.functions == {"score": frozenset({"helper", "weight"})}


def test_locals_are_local_for_the_whole_body() -> None:
    # Python makes `x` local because it is assigned anywhere in the body
    assert cell("def f():\n    print(x)\n    x = 1\n").functions["f"] == frozenset()


def test_calling_a_function_of_the_cell_reads_its_free_names_there() -> None:
    assert cell("def f():\n    return data\ny = f()\n").reads == {"data"}
    assert cell("def f():\n    return data\ndata = 1\ny = f()\n").reads == set()
    assert cell("def f():\n    return data\n").reads == set()


def test_calls_are_expanded_transitively_within_a_cell() -> None:
    result = cell(
        """
        def inner():
            return k
        def outer():
            return inner() + j
        values = list(map(outer, xs))
        """
    )
    assert result.reads == {"k", "j", "xs"}
    assert result.functions["outer"] == {"inner", "j"}


def test_lambdas_assigned_are_functions_inline_ones_run_now() -> None:
    assert cell("f = lambda x: x + k").functions == {"f": frozenset({"k"})}
    assert cell("f = lambda x: x + k").reads == set()
    assert reads("ys = sorted(xs, key=lambda x: x + k)") == {"xs", "k"}


def test_comprehension_scopes() -> None:
    result = cell("y = [y for y in xs if y > lo]")
    assert result.reads == {"xs", "lo"}
    assert result.assigns == {"y"}
    assert cell("pairs = {a: b for a in xs for b in a}").assigns == {"pairs"}
    assert reads("pairs = {a: b for a in xs for b in a}") == {"xs"}


def test_walrus_in_a_comprehension_binds_in_the_enclosing_scope() -> None:
    result = cell("z = [w := v * 2 for v in xs]\n")
    assert result.assigns == {"z", "w"}
    assert result.conditional_assigns == {"w"}  # the comprehension may be empty
    assert cell("def f():\n    [w := v for v in xs]\n    return w\n").functions["f"] == {"xs"}


def test_class_body_runs_now_methods_later_and_do_not_see_class_names() -> None:
    result = cell(
        """
        class Model(Base):
            rate = default_rate
            scaled = rate * 2
            def predict(self, X):
                return X * rate + bias
            class Config:
                depth = max_depth
                def describe(self):
                    return fmt
        """
    )
    assert result.reads == {"Base", "default_rate", "max_depth"}
    assert result.functions["Model"] == {"rate", "bias", "fmt"}


def test_comprehension_in_a_class_body_skips_the_class_scope() -> None:
    assert reads("class A:\n    n = 3\n    xs = [n for _ in range(n)]\n") == {"n"}


def test_nested_function_closures_are_not_free() -> None:
    result = cell(
        """
        def outer():
            v = 1
            def inner():
                nonlocal v
                v += 1
                return v + w
            return inner
        """
    )
    assert result.functions["outer"] == {"w"}


def test_global_statement_in_a_function() -> None:
    result = cell(
        """
        def init():
            global counter, log
            counter = 0
            log.append(counter)
        """
    )
    # the body reads both (counter after setting it); the assignment is recorded separately
    assert result.functions["init"] == {"log", "counter"}
    assert result.function_assigns["init"] == {"counter"}
    assert result.function_mutates["init"] == {"log"}
    assert "counter" not in result.assigns
    called = cell(result.python + "init()\nprint(counter)\n")
    assert "counter" in called.assigns
    assert "log" in called.mutates
    assert "counter" not in called.reads - called.weak_reads


def test_deleting_a_global_in_a_function_does_not_make_it_local() -> None:
    assert cell("def f():\n    global x\n    del x\n    return x\n").functions["f"] == {"x"}


# ----------------------------------------------------------------------------- IPython


def test_transform_is_ipythons() -> None:
    manager = TransformerManager()
    for source in [
        "%time x = 1",
        "x = !ls",
        "!ls $d",
        "%%capture out\nx=1\n",
        "a?",
        "\n\n  x = 1\n  y = x\n",
    ]:
        assert transform(source) == manager.transform_cell(source)
    assert transform("x = 1") == "x = 1\n"


def test_line_magic_statements_are_code() -> None:
    result = cell("%time model = fit(X)")
    assert result.uses_ipython
    assert result.assigns == {"model"}
    assert result.reads == {"fit", "X"}
    assert "run_line_magic" in result.python
    assert cell("%prun -s cumulative -l 10 out = run(cfg)").assigns == {"out"}
    assert cell("%prun -s cumulative -l 10 out = run(cfg)").reads == {"run", "cfg"}
    assert cell("best = %time search(space)").assigns == {"best"}


def test_timeit_reads_but_binds_nothing() -> None:
    # IPython runs timeit code inside a function, so assignments do not leak
    result = cell("%timeit -n 10 -r 3 y = f(x)\nprint(y)\n")
    assert result.reads == {"f", "x", "y"}
    assert result.assigns == set()
    cell_mode = cell("%%timeit -n1 data = make(size)\nprocess(data)\n")
    assert cell_mode.reads == {"make", "size", "process"}
    assert cell_mode.assigns == set()


def test_cell_magic_bodies_are_code() -> None:
    result = cell("%%capture --no-stdout out\nx = train(a)\n%time y = x + b\n")
    assert result.assigns == {"out", "x", "y"}
    assert result.reads == {"train", "a", "b"}
    assert cell("%%time\nz = slow(w)\n").assigns == {"z"}
    assert cell("%%capture\n%%time\nq = f(p)\n").reads == {"f", "p"}


@pytest.mark.parametrize(
    "magic", ["bash", "sh", "html", "javascript", "markdown", "latex", "svg", "script bash"]
)
def test_non_python_cell_magics_have_no_names(magic: str) -> None:
    result = cell(f"%%{magic}\nnot python at all $x {{y}} (\n")
    assert result.reads == set()
    assert result.assigns == set()
    assert result.uses_ipython
    assert not result.opaque


def test_script_magic_output_variables() -> None:
    assert cell("%%bash --out stdout --err=stderr\necho hi\n").assigns == {"stdout", "stderr"}


def test_writefile_writes_its_path() -> None:
    result = cell("%%writefile src/train.py\nimport sys\nprint(sys.argv\n")
    assert result.paths_written == {"src/train.py"}
    assert result.reads == set()
    assert cell("%%writefile -a log.txt\nmore\n").paths_written == {"log.txt"}


def test_shell_escapes_interpolate_names() -> None:
    result = cell("!ls $data_dir {prefix + suffix} '$quoted'")
    assert result.reads == {"data_dir", "prefix", "suffix"}
    assert result.weak_reads == result.reads  # could be environment variables: never an error
    assert result.uses_ipython
    assert cell("files = !ls\nprint(files)").assigns == {"files"}
    assert cell("d = '/tmp'\n!ls $d").reads == set()
    assert cell("%pip install {package}").reads == {"package"}


def test_shell_command_ipython_cannot_expand_reads_nothing() -> None:
    # `{print $1}` is no Python expression: IPython leaves the whole command as is
    assert reads("!awk '{print $1}' $fname") == set()


@pytest.mark.parametrize(
    "source",
    [
        "%matplotlib inline",
        "%load_ext autoreload",
        "%autoreload 2",
        "%pip install xgboost",
        "%env A=1",
        "%cd /tmp",
    ],
)
def test_inert_magics_have_no_names(source: str) -> None:
    result = cell(source)
    assert (result.reads, result.assigns, result.opaque, result.uses_ipython) == (set(), set(), False, True)


def test_opaque_magics() -> None:
    run = cell("%run helpers.py")
    assert run.opaque
    assert run.paths_read == {"helpers.py"}
    assert cell("%pylab inline").opaque
    assert cell("%store -r model").opaque
    assert not cell("%store model").opaque
    assert cell("%%sql\nSELECT 1\n").opaque  # an extension's magic may define names
    assert cell("get_ipython().run_line_magic(name, line)").opaque


def test_help_syntax_uses_ipython_and_reads_nothing() -> None:
    result = cell("model.fit?")
    assert result.uses_ipython
    assert result.reads == set()


def test_magics_inside_functions_belong_to_the_function() -> None:
    result = cell("def f():\n    %time y = g(x)\n    !echo {y}\n    return y\n")
    assert result.functions["f"] == {"g", "x"}
    assert result.uses_ipython
    assert result.reads == set()


def test_direct_get_ipython_calls_are_understood() -> None:
    result = cell("get_ipython().run_line_magic('time', 'm = fit(X)')")
    assert result.assigns == {"m"}
    assert result.uses_ipython


def test_plain_cell_does_not_use_ipython() -> None:
    result = cell("s = '%d items' % n\nok = a != b\nprint('really?')\n")
    assert not result.uses_ipython
    assert result.reads == {"n", "a", "b"}
    assert result.python == "s = '%d items' % n\nok = a != b\nprint('really?')\n"


# ----------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("source", "lineno"),
    [
        ("x = (", 1),
        ("a = 1\nb = (\n", 2),
        ("\n\nx = 1\nx = (\n", 4),
        ("%%time\nok = 1\nbad = (\n", 3),
        ("x = 1\n%time y = (\n", 2),
        ("return 1", 1),
        ("x = 1\nnonlocal x\n", 2),
        ("def f():\n    yield from\n", 2),
        ("for x in y:\n  a\n    b\n", 3),
    ],
)
def test_syntax_errors_point_at_the_original_line(source: str, lineno: int) -> None:
    with pytest.raises(CellSyntaxError) as raised:
        analyze_cell(source)
    assert raised.value.lineno == lineno
    assert raised.value.message
    assert str(lineno) in str(raised.value)


def test_syntax_error_inside_a_magic_names_the_magic() -> None:
    with pytest.raises(CellSyntaxError, match=r"%%time"):
        analyze_cell("%%time\nbad = (\n")


def test_cell_syntax_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(CellSyntaxError("invalid syntax", 3)))
    assert (error.message, error.lineno) == ("invalid syntax", 3)


def test_top_level_await_is_valid() -> None:
    assert cell("result = await fetch(url)").reads == {"fetch", "url"}


# ----------------------------------------------------------------------------- mutation


@pytest.mark.parametrize(
    ("source", "mutated"),
    [
        ("df['a'] = 1", {"df"}),
        ("df.loc[mask, 'b'] = 0", {"df"}),
        ("cfg.lr = 0.1", {"cfg"}),
        ("cfg.opt.lr *= 2", {"cfg"}),
        ("del cache[key]", {"cache"}),
        ("items.append(x)", {"items"}),
        ("params.update(extra)", {"params"}),
        ("model.fit(X, y)", {"model"}),
        ("pipe.set_params(C=1)", {"pipe"}),
        ("df.rename(columns=m, inplace=True)", {"df"}),
        ("df['a'].fillna(0, inplace=True)", {"df"}),
        ("df.dropna(inplace=False)", set()),
        ("np.random.shuffle(order)", {"order"}),
        ("random.shuffle(order)", {"order"}),
        ("heapq.heappush(heap, 3)", {"heap"}),
        ("np.multiply(a, b, out=a)", {"a"}),
        ("pd.options.display.max_rows = 9", {"pd"}),  # module names appear: the reader intersects
        ("setattr(obj, 'x', 1)", {"obj"}),
        ("df.head().fillna(0, inplace=True)", set()),  # a new object, not df
        ("y = x.copy()\ny.append(1)", set()),
        ("xs = []\nxs.append(1)", set()),
        ("total = model.predict(X)", set()),
    ],
)
def test_mutation_heuristic(source: str, mutated: set[str]) -> None:
    assert cell(source).mutates == mutated


def test_mutation_through_a_function_called_in_the_cell() -> None:
    result = cell("def log(v):\n    history.append(v)\nlog(1)\n")
    assert result.mutates == {"history"}
    assert result.function_mutates == {"log": frozenset({"history"})}


def test_mutating_a_name_bound_only_on_some_paths_counts() -> None:
    assert cell("if fresh:\n    df = load()\ndf['x'] = 1\n").mutates == {"df"}


# ----------------------------------------------------------------------------- opaque cells


def test_exec_and_eval_of_literals_are_analysed() -> None:
    result = cell("exec('q = base + 1')\nprint(q)\nv = eval('w * 2')")
    assert result.assigns == {"q", "v"}
    assert result.reads == {"base", "w"}
    assert not result.opaque


def test_exec_of_unknown_code_is_opaque_unless_it_has_its_own_namespace() -> None:
    assert cell("exec(code)").opaque
    assert cell("exec(code, globals())").opaque
    assert not cell("ns = {}\nexec(code, ns)").opaque
    assert cell("exec('syntax error (')").opaque


def test_globals_writes() -> None:
    literal = cell("globals()['threshold'] = 0.5\nglobals().update({'a': 1}, )\nprint(threshold, a)")
    assert literal.assigns == {"threshold", "a"}
    assert literal.reads == set()
    assert not literal.opaque
    assert cell("for k, v in cfg.items():\n    globals()[k] = v\n").opaque
    assert cell("globals().update(cfg)").opaque
    assert cell("def f():\n    globals()['late'] = 1\n").function_assigns == {"f": frozenset({"late"})}


def test_star_import_is_opaque() -> None:
    result = cell("from pylab import *\nfrom os.path import join")
    assert result.star_imports == {"pylab"}
    assert result.opaque
    assert result.modules == {"pylab", "os"}


# ----------------------------------------------------------------------------- file paths


def test_file_paths() -> None:
    result = cell(
        """
        df = pd.read_csv("./data/raw.csv")
        df.to_parquet("data/clean.parquet")
        with open("notes.txt") as fh, open("out/log.txt", "a") as log:
            pass
        both = open("state.json", mode="r+")
        np.save("arrays/x.npy", x)
        y = np.load("arrays/y.npy")
        joblib.dump(model, "model.pkl")
        loaded = joblib.load("model.pkl")
        Path("report.md").write_text(text)
        config = pathlib.Path("config.yaml").read_text()
        plt.savefig("plot.png")
        remote = pd.read_csv("https://example.com/data.csv")
        dynamic = pd.read_csv(f"{folder}/x.csv")
        shutil.copy("a.bin", "b.bin")
        """
    )
    assert result.paths_read == {
        "data/raw.csv",
        "notes.txt",
        "state.json",
        "arrays/y.npy",
        "model.pkl",
        "config.yaml",
        "a.bin",
    }
    assert result.paths_written == {
        "data/clean.parquet",
        "out/log.txt",
        "state.json",
        "arrays/x.npy",
        "model.pkl",
        "report.md",
        "plot.png",
        "b.bin",
    }


def test_open_with_a_non_literal_mode_is_unknown() -> None:
    result = cell("f = open('x.txt', mode)")
    assert result.paths_read == result.paths_written == set()


# ----------------------------------------------------------------------------- sequences


def test_sequence_resolves_names_across_cells() -> None:
    combined = analyze_sequence([cell("x = load(src)"), cell("y = x + z"), cell("x = y")])
    assert combined.reads == {"load", "src", "z"}
    assert combined.assigns == {"x", "y"}
    assert combined.python == "x = load(src)\ny = x + z\nx = y\n"


def test_sequence_keeps_conditional_definitions_weak() -> None:
    combined = analyze_sequence([cell("if c:\n    m = fit()\n"), cell("m.predict(X)")])
    assert combined.weak_reads == {"m"}
    assert "m" in combined.reads
    assert combined.conditional_assigns == {"m"}


def test_sequence_mutates_only_what_came_from_outside() -> None:
    combined = analyze_sequence([cell("local = []"), cell("local.append(1)\nshared.append(2)")])
    assert combined.mutates == {"shared"}


def test_sequence_runs_functions_of_earlier_cells() -> None:
    combined = analyze_sequence(
        [cell("def f():\n    hist.append(1)\n    return data + g\n"), cell("g = 1\nr = f()")]
    )
    assert combined.reads == {"hist", "data", "g"}
    assert combined.weak_reads == {"g"}  # the cell binds g itself, maybe before the call
    assert combined.mutates == {"hist"}
    assert combined.functions == {"f": frozenset({"hist", "data", "g"})}


def test_sequence_rebinding_drops_imports_and_functions() -> None:
    combined = analyze_sequence([cell("import numpy as np\ndef f(): pass"), cell("np = 1\nf = 2")])
    assert combined.imports == set()
    assert combined.functions == {}
    assert combined.modules == {"numpy"}


def test_sequence_of_one_is_the_cell_and_empty_is_nothing() -> None:
    one = cell("import os\nif c:\n    x = os.getcwd()\nitems.append(x)\ndef f(): return y\n%time z = 1")
    assert analyze_sequence([one]) == one
    empty = analyze_sequence([])
    assert (empty.reads, empty.assigns, empty.python, empty.uses_ipython) == (set(), set(), "", False)


def test_analysis_is_hashable_and_cached() -> None:
    first = analyze_cell("a = b")
    assert analyze_cell("a = b") is first
    assert hash(first) == hash(analyze_cell.__wrapped__("a = b"))


# ----------------------------------------------------------------------------- properties

_MAGIC_LINES = st.sampled_from(
    [
        "%time x = 1",
        "%%capture out",
        "%%time",
        "%%bash",
        "%%writefile f.py",
        "!ls $d {e}",
        "x = !pwd",
        "%timeit -n 2",
        "%matplotlib inline",
        "%run nb.ipynb",
        "a?",
        "??b",
        "%%timeit -n1 a = (",
        "  %prun -s time f(",
        "In [1]: x",
        ">>> y = 2",
        "...: z",
        "\\",
        "%%!",
        "%%capture",
        "def f():",
        "    %time g(",
        "exec('q = (')",
        "globals()[k] = 1",
        "get_ipython().run_cell_magic('time', '', 'x = (')",
    ]
)
_TEXT = st.text(
    alphabet=st.sampled_from(list("xyz_ =+-*/%!?$;,.:()[]{}'\"#\\\t\n0189aeifordl@<>&|^~")), max_size=60
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_TEXT, _MAGIC_LINES), max_size=6))
def test_never_crashes(lines: list[str]) -> None:
    source = "\n".join(lines)
    try:
        result = analyze_cell(source)
    except CellSyntaxError as err:
        assert err.lineno is None or 1 <= err.lineno <= max(1, len(source.splitlines()))
    else:
        assert result.imports <= result.assigns
        assert result.weak_reads <= result.reads
        assert not result.reads & BUILTIN_NAMES


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_TEXT, _MAGIC_LINES, st.sampled_from(["x = 1", "...", "  y = 2", ""])), max_size=5))
def test_fast_path_matches_ipython_exactly(lines: list[str]) -> None:
    source = "\n".join(lines)
    try:
        expected = TransformerManager().transform_cell(source)
    except Exception:
        with pytest.raises(CellSyntaxError):
            transform(source)
    else:
        assert transform(source) == expected


# A runtime oracle: run generated programs in a namespace that records every lookup of a name the
# program has not set itself. Those lookups must be among the static reads.

_VALUES = ["a", "b", "c", "d"]
_FUNCS = ["f", "g"]


class _Recorder(dict[str, object]):
    def __init__(self, initial: dict[str, object]) -> None:
        super().__init__(initial)
        self.set_by_code: set[str] = set()
        self.outside: set[str] = set()
        self.completed = False  # False: a NameError stopped the code part way

    def __getitem__(self, name: str) -> object:
        if name not in self.set_by_code and not name.startswith("__"):
            self.outside.add(name)
        return super().__getitem__(name)

    def __setitem__(self, name: str, value: object) -> None:
        self.set_by_code.add(name)
        super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        self.set_by_code.discard(name)  # a later lookup needs the name from outside again
        super().__delitem__(name)


@st.composite
def _expressions(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from([*_VALUES, "1", "f()", "g()"]), min_size=1, max_size=3))
    return " + ".join(parts)


@st.composite
def _statements(draw: st.DrawFn, depth: int = 0) -> str:
    v = draw(st.sampled_from(_VALUES))
    fn = draw(st.sampled_from(_FUNCS))
    e = draw(_expressions())
    choices = [
        f"{v} = {e}",
        f"{v} += {e}",
        f"{v} = [{e} for _j in range(2)][0]",
        f"{v} = (lambda: {e})()",
        f"def {fn}():\n    return {draw(st.sampled_from(_VALUES))} + 1",
        f"if {e} > 3:\n    {v} = 1",
        f"del {v}",
        f"{v} = {e} if {e} else 0",
    ]
    if depth < 1:
        inner = textwrap.indent(draw(_statements(depth + 1)), "    ")
        choices += [
            f"for _i in range({draw(st.integers(0, 2))}):\n{inner}",
            f"try:\n{inner}\nexcept NameError:\n    pass",
            f"if {e} > 2:\n{inner}\nelse:\n    pass",
        ]
    return draw(st.sampled_from(choices))


def _run(source: str) -> _Recorder:
    namespace = _Recorder(
        {"a": 1, "b": 2, "c": 3, "d": 4, "f": lambda: 1, "g": lambda: 2, "__builtins__": __builtins__}
    )
    with contextlib.suppress(NameError):  # a deleted name: the lookups so far still count
        exec(compile(source, "<generated>", "exec"), namespace)
        namespace.completed = True
    return namespace


@settings(max_examples=300, deadline=None)
@given(st.lists(_statements(), min_size=1, max_size=6))
def test_runtime_reads_are_among_static_reads(statements: list[str]) -> None:
    source = "\n".join(statements) + "\n"
    static = analyze_cell(source)
    namespace = _run(source)
    assert namespace.outside - BUILTIN_NAMES <= static.reads, source
    if namespace.completed:  # stopped early, it may keep a name a later `del` would have removed
        assert {n for n in namespace.set_by_code if n in namespace} <= static.assigns, source


_STRAIGHT_LINE = st.lists(
    st.sampled_from(
        [
            "a = b + 1",
            "b = c * 2",
            "c += a",
            "d = f() + g()",
            "def f():\n    return a + 1",
            "def g():\n    return c + d",
            "a = [b for _j in range(2)][0]",
            "b = (lambda: d)()",
        ]
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(_STRAIGHT_LINE)
def test_straight_line_reads_are_exact(statements: list[str]) -> None:
    source = "\n".join(statements) + "\n"
    static = analyze_cell(source)
    namespace = _run(source)
    assert static.reads == namespace.outside - BUILTIN_NAMES, source
    assert static.assigns == namespace.set_by_code, source
    assert static.weak_reads == set()


@settings(max_examples=200, deadline=None)
@given(_STRAIGHT_LINE, _STRAIGHT_LINE)
def test_sequence_matches_the_concatenated_cell(first: list[str], second: list[str]) -> None:
    one, two = "\n".join(first) + "\n", "\n".join(second) + "\n"
    together = analyze_cell(one + two)
    combined = analyze_sequence([analyze_cell(one), analyze_cell(two)])
    assert combined.assigns == together.assigns
    assert combined.mutates == together.mutates
    assert combined.functions == together.functions
    # a function of the first cell called by the second may read names the second binds itself:
    # the sequence keeps those as weak reads rather than guess the order
    assert together.reads <= combined.reads
    assert combined.reads - together.reads <= combined.weak_reads


# A bytecode oracle: a function's free names are the globals its code (and nested code) loads.


def _loaded_globals(code: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _loaded_globals(const)
    return names


def _stdlib_functions() -> Iterator[tuple[str, str, set[str], set[str]]]:
    for module_name in ["textwrap", "shlex", "difflib", "posixpath", "inspect", "dataclasses", "tokenize"]:
        source = inspect.getsource(importlib.import_module(module_name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(source, module_name, "exec", dont_inherit=True)
        functions = {c.co_name: c for c in code.co_consts if isinstance(c, types.CodeType)}
        analysis = analyze_cell(source)
        defs = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]
        names = [node.name for node in defs]
        for node in defs:
            if names.count(node.name) == 1 and not any(isinstance(n, ast.ClassDef) for n in ast.walk(node)):
                expected = _loaded_globals(functions[node.name]) - BUILTIN_NAMES
                yield module_name, node.name, set(analysis.functions[node.name]), expected


def test_function_free_names_match_the_bytecode_of_stdlib_functions() -> None:
    checked = 0
    for module_name, name, found, expected in _stdlib_functions():
        assert found == expected, f"{module_name}.{name}"
        checked += 1
    assert checked > 100


# ----------------------------------------------------------------------------- changes through calls


def test_functions_that_change_their_parameters_are_known_by_parameter() -> None:
    c = cell(
        """
        def clean(df):
            df.dropna(inplace=True)

        def add(lst, value):
            lst.append(value)

        def fit(model, X, y=None, **options):
            model.fit(X, y)
            options["done"] = True
            return score(X)

        def pure(x):
            return x.copy()
        """
    )
    assert set(c.mutating_functions) == {"clean", "add", "fit"}
    assert c.mutating_functions["fit"].changed == {"model", "options"}
    site = CallSite(("m", "data"), (("y", "target"), ("verbose", "v")))
    assert c.mutating_functions["fit"].changed_by(site) == {"m", "v"}  # verbose lands in **options


def test_a_call_in_the_cell_changes_what_the_function_changes() -> None:
    c = cell(
        """
        def add(lst, value):
            lst.append(value)

        add(seen, total)
        """
    )
    assert c.mutates == {"seen"} and not c.calls


def test_calls_to_functions_from_elsewhere_and_unknown_methods_are_recorded() -> None:
    c = cell(
        """
        import helpers
        from tools import tidy
        clean(raw, key=other)
        tidy(kept)
        helpers.run(kept)
        raw.custom_normalise()
        raw.head()
        print(len(raw))
        local = []
        clean(local)
        """
    )
    assert c.calls == {"clean": (CallSite(("raw",), (("key", "other"),)),)}  # not clean(local)
    assert c.may_mutate == {"raw"}  # custom_normalise: unknown; head, len, print: harmless
    assert not c.mutates


def test_a_sequence_resolves_calls_to_its_own_functions() -> None:
    first = cell("def add(lst, v):\n    lst.append(v)\n")
    second = cell("add(seen, 1)\nother(thing)\n")
    block = analyze_sequence([first, second])
    assert block.mutates == {"seen"}
    assert set(block.calls) == {"other"} and set(block.mutating_functions) == {"add"}

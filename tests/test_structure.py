"""The project's structure: no import cycles, and a core that imports where
TensorFlow is not installed.

The import graph is read from the source (ast, nothing executed) and counts
every import, those inside functions included. TensorFlow's absence is
real: the subprocess below runs with an import hook under which `import
tensorflow` raises ImportError (tests/no_tensorflow.py). That the JAX step
also trains there: tests/test_bench_train_step.py runs bench/train_step.py
--backend=jax --smoke so.
"""
import ast
import pathlib
import subprocess
import sys

import no_tensorflow

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Folders of modules: the project's flat root, its package, and the
# scripts of the drivers and benchmarks (which import their neighbours).
FOLDERS = ("", "datasets", "experiments", "bench")
# What the JAX training step needs: these import and run without TensorFlow.
CORE = ("model", "resnet", "objective", "chunked_loss", "loss_views", "lars_optimizer",
        "metrics", "initializers", "autoencoder", "augment", "train_lib", "config", "errors",
        "run_flags", "trainers", "trainer_jax")
TENSORFLOW = no_tensorflow.BLOCKED

def module_files():
    """{module name: path} of every module of the project: root modules by
    their name, the package's as `datasets.<name>`, scripts as
    `<folder>/<name>`."""
    files = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            stem = path.stem
            if folder == "datasets":
                files["datasets" if stem == "__init__" else f"datasets.{stem}"] = path
            elif folder:
                files[f"{folder}/{stem}"] = path
            else:
                files[stem] = path
    return files


def imported_names(path):
    """(absolute names imported anywhere in the file, including inside
    functions; relative imports as (level, module, names))."""
    absolute, relative = [], []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            absolute += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.append((node.module, [alias.name for alias in node.names]))
            else:
                absolute += [node.module] + [f"{node.module}.{alias.name}"
                                             for alias in node.names]
    return absolute, relative


def import_graph():
    """{module: set of the project's modules it imports}. Importing a
    package's module imports the package too; a script's bare name is its
    neighbour in the same folder before a root module."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        folder = name.split("/")[0] if "/" in name else None
        absolute, relative = imported_names(path)
        edges = set()
        for imported in absolute:
            if folder and f"{folder}/{imported}" in files:
                edges.add(f"{folder}/{imported}")
            elif imported in files:
                edges.add(imported)
                if imported.startswith("datasets."):
                    edges.add("datasets")
        for module, names in relative:  # only the package uses them
            targets = [f"datasets.{module}"] if module else [f"datasets.{n}" for n in names]
            edges.update(t for t in targets if t in files)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"config", "checkpoint", "objective", "chunked_loss", "data",
            "train_lib", "datasets", "datasets.base", "bench/train_step"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The graph counts an import inside a function, and `cycles` reports
    the modules of a cycle and nothing else."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import c\n")
    (tmp_path / "c.py").write_text("from a import x\nimport d\n")
    (tmp_path / "d.py").write_text("")
    absolute = {name: set(imported_names(tmp_path / f"{name}.py")[0]) & {"a", "b", "c", "d"}
                for name in "abcd"}
    assert absolute == {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(absolute) == [["a", "b", "c"]]


def test_the_core_imports_no_tensorflow_module():
    """No module of the core reaches TensorFlow, tf.data's pipelines or the
    TensorFlow edges through any chain of imports (static)."""
    graph = import_graph()
    files = module_files()
    for module in CORE:
        reached, todo = set(), [module]
        while todo:
            for successor in graph[todo.pop()] - reached:
                reached.add(successor)
                todo.append(successor)
        edges = {m for m in reached | {module}
                 for imported in imported_names(files[m])[0]
                 if imported.split(".")[0] in TENSORFLOW}
        assert not edges, f"{module} reaches TensorFlow through {sorted(edges)}"


def test_the_core_imports_where_tensorflow_cannot(tmp_path):
    code = (f"import importlib, sys\n"
            f"for name in {CORE!r}:\n"
            f"    importlib.import_module(name)\n"
            f"try:\n"
            f"    import tensorflow\n"
            f"except ImportError:\n"
            f"    print('no tensorflow')\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TENSORFLOW!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=no_tensorflow.environment(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["no tensorflow", "[]"], done.stdout

"""The shape of toolkit/: its modules' imports (read with ast, lazy imports inside functions too)
point only down or sideways through the levels below, and never in a circle. A new module gets its
level here; an import that breaks the shape is named with the line it is on."""
import ast
import os
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toolkit")

# The levels of the house, lowest first: a module may import its own level's and lower ones'.
# A module's level is that of the longest name here it is, or lies under ("toolkit": itself only).
LEVELS = (
    ("base", ("toolkit", "toolkit.errors", "toolkit.atomic", "toolkit.cli", "toolkit.mxlog",
              "toolkit.imageops", "toolkit.registry", "toolkit.layers", "toolkit.summary", "toolkit.rules")),
    ("formats", ("toolkit.recordio", "toolkit.shards", "toolkit.lists", "toolkit.im2rec", "toolkit.verify",
                 "toolkit.toy", "toolkit.logparse", "toolkit.logscan", "toolkit.plots",
                 "toolkit.imagenet.devkit")),  # ImageNet's devkit files, read by lists
    ("data", ("toolkit.data", "toolkit.forkserver")),
    ("engine", ("toolkit.engine",)),
    ("capabilities", ("toolkit.transfer", "toolkit.inference", "toolkit.visualize", "toolkit.journal",
                      "toolkit.sweep", "toolkit.benchmarks", "toolkit.gpucheck", "toolkit.mxnet_import",
                      "toolkit.imagenet")),
    ("composition", ("toolkit.training",)),
)


def modules(root: str) -> dict:
    """Dotted module name -> file, for every .py under `root` (a package folder)."""
    base = os.path.dirname(root)
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _owner(name: str, known) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports(root: str) -> dict:
    """module -> {imported module of the same package: line}, lazy imports included."""
    known = modules(root)
    package = os.path.basename(root)
    graph = defaultdict(dict)
    for module, path in known.items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                origin = node.module or ""
                if node.level:  # relative: from the module's package
                    parts = module.split(".")[:len(module.split(".")) - node.level + path.endswith("__init__.py")]
                    origin = ".".join(parts + ([origin] if origin else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
            else:
                continue
            for target in targets:
                owner = _owner(target, known) if target.split(".")[0] == package else ""
                if owner and owner != module:
                    graph[module].setdefault(owner, node.lineno)
    return graph


def level_of(module: str) -> int:
    best, level = -1, None
    for i, (_, names) in enumerate(LEVELS):
        for name in names:
            under = module.startswith(name + ".") and name != "toolkit"  # the package root: itself only
            if (module == name or under) and len(name) > best:
                best, level = len(name), i
    return level


def upward(graph: dict) -> list:
    return [f"{m} (level {LEVELS[level_of(m)][0]}) imports {t} (level {LEVELS[level_of(t)][0]}), line {line}"
            for m, targets in sorted(graph.items()) for t, line in sorted(targets.items())
            if level_of(t) > level_of(m)]


def circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for targets in graph.values() for w in targets}):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_level():
    missing = [m for m in modules(ROOT) if level_of(m) is None]
    assert not missing, f"give these modules a level in tests/test_layers.py LEVELS: {missing}"


def test_no_import_points_up_a_level():
    found = upward(imports(ROOT))
    assert not found, "imports up the levels of tests/test_layers.py:\n" + "\n".join(found)


def test_no_import_circles():
    found = circles(imports(ROOT))
    assert not found, f"import circles: {found}"


def test_the_engine_knows_no_capability():
    """toolkit/engine/ imports nothing of transfer, inference, visualize or any other capability."""
    graph = imports(ROOT)
    above = [(m, t) for m, targets in graph.items() if m.startswith("toolkit.engine")
             for t in targets if level_of(t) > level_of("toolkit.engine")]
    assert not above and level_of("toolkit.engine") < level_of("toolkit.transfer")


def test_the_checks_see_lazy_upward_imports_and_circles(tmp_path):
    """The reader finds an import inside a function, a relative one, and a circle."""
    pkg = tmp_path / "toolkit"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "transfer").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "transfer" / "__init__.py").write_text("")
    (pkg / "engine" / "trainer.py").write_text("def f():\n    from toolkit.transfer import hook\n")
    (pkg / "transfer" / "hook.py").write_text("from ..engine import trainer\n")
    graph = imports(str(pkg))
    assert graph["toolkit.engine.trainer"] == {"toolkit.transfer.hook": 2}
    assert graph["toolkit.transfer.hook"] == {"toolkit.engine.trainer": 1}
    assert upward(graph) == ["toolkit.engine.trainer (level engine) imports toolkit.transfer.hook "
                             "(level capabilities), line 2"]
    assert circles(graph) == [["toolkit.engine.trainer", "toolkit.transfer.hook"]]

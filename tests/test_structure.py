"""Structure: no import cycle among keraslm's modules, function-level imports included."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keraslm")


def _module_graph():
    """module name -> the keraslm modules it imports anywhere in its source."""
    paths = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                paths[relative[: -len(".__init__")] if relative.endswith(".__init__") else relative] = path

    def resolve(name):
        while name not in paths and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in paths else None

    graph = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {resolve(alias.name) for alias in node.names if alias.name.startswith("keraslm")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keraslm"):
                imported |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
        imported.discard(None)
        imported.discard(name)
        imported.discard("keraslm")  # The package root only re-exports (errors, a lazy predict).
        graph[name] = imported
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = _module_graph()
    assert "keraslm.export" in graph and "keraslm.prediction.predictors" in graph
    assert _cycles(graph) == []


#: The layers of keraslm, lowest first (ARCHITECTURE.md draws them). A module may import modules
#: of lower layers, and of its own layer inside its own package; never a higher layer.
LAYERS = [
    ("errors", ["keraslm.errors"]),
    ("foundation", ["keraslm.files", "keraslm.cli"]),
    ("run folders", ["keraslm.run_folder"]),
    ("files on disk", ["keraslm.io"]),
    ("dataset records", ["keraslm.data"]),
    ("datasets", ["keraslm.datasets"]),
    ("tensors", ["keraslm.ops", "keraslm.models", "keraslm.preprocessing", "keraslm.precision",
                 "keraslm.calibration"]),
    ("model description", ["keraslm.spec"]),
    ("prediction", ["keraslm.prediction"]),
    ("engines", ["keraslm.training.trainer", "keraslm.training.pipeline", "keraslm.training.jit",
                 "keraslm.training.presets", "keraslm.training.plan", "keraslm.training.callbacks",
                 "keraslm.training.stages", "keraslm.evaluation.metrics",
                 "keraslm.evaluation.plots", "keraslm.evaluation.report", "keraslm.evaluation.tables",
                 "keraslm.export"]),
    ("clients", ["keraslm.serving"]),
    ("workflows", ["keraslm.training", "keraslm.evaluation"]),
    ("experiments", ["keraslm.experiments"]),
    ("commands", ["keraslm.commands"]),
    ("entry points", ["keraslm.__main__", "keraslm"]),
]


def _layer(module):
    """(rank, the layer entry that claims `module`: the longest matching prefix)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "keraslm" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (rank, prefix)
    assert best is not None, f"{module} is in no layer of tests/test_structure.py's LAYERS"
    return best


def _upward(graph):
    found = []
    for module, imported in graph.items():
        rank, owner = _layer(module)
        for other in imported:
            other_rank, other_owner = _layer(other)
            if other_rank > rank or (other_rank == rank and other_owner.split(".")[:2]
                                     != owner.split(".")[:2]):
                found.append(f"{module} ({LAYERS[rank][0]}) imports {other} "
                             f"({LAYERS[other_rank][0]})")
    return sorted(found)


def test_upward_finder_finds_an_upward_import():
    graph = {"keraslm.io.plain": {"keraslm.training.run"}, "keraslm.ops.heatmaps": {"keraslm.models"},
             "keraslm.training.run": {"keraslm.io.plain"}}
    assert _upward(graph) == [
        "keraslm.io.plain (files on disk) imports keraslm.training.run (workflows)",
        "keraslm.ops.heatmaps (tensors) imports keraslm.models (tensors)"]


def test_no_upward_imports():
    assert _upward(_module_graph()) == []


if __name__ == "__main__":  # `python tests/test_structure.py`: the module map, layer by layer.
    graph = _module_graph()
    by_layer = {}
    for module in graph:
        by_layer.setdefault(_layer(module)[0], []).append(module)
    for rank, (layer, _) in enumerate(LAYERS):
        print(f"{layer}:")
        for module in sorted(by_layer.get(rank, [])):
            relative = module.replace(".", os.sep)
            path = os.path.join(os.path.dirname(PACKAGE), relative + ".py")
            if not os.path.isfile(path):
                path = os.path.join(os.path.dirname(PACKAGE), relative, "__init__.py")
            with open(path, encoding="utf-8") as handle:
                lines = sum(1 for _ in handle)
            print(f"  {module:<40} {lines:5d}  -> {', '.join(sorted(graph[module])) or '-'}")
    print(f"cycles: {_cycles(graph)}; upward imports: {_upward(graph)}")

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
    assert "keraslm.export" in graph and "keraslm.inference" in graph
    assert _cycles(graph) == []

"""Architecture rules checked on the source: no import cycle inside the package, a LightningModule of bounded size.

Read with `ast`, nothing is imported, so these run in a second and fail before any behaviour test would.
"""

from __future__ import annotations

import ast
from collections import defaultdict, deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ema_lightning"
SOURCE = ROOT / PACKAGE
MAX_BASE_MODULE_LINES = 250  # CausalLMModule: the model, the losses' hooks; collaborators do the rest

Edges = dict[str, dict[str, list[str]]]  # importer -> imported -> ["file:line", ...]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(source: Path) -> dict[str, Path]:
    return {module_name(p, source.parent): p for p in sorted(source.rglob("*.py"))}


def _string_values(node: ast.AST, constants: dict[str, list[str]]) -> list[str]:
    """The strings an `import_module(...)` argument can be: a literal, `TABLE[key]` of a module-level
    dict of string literals (the lazy-export idiom), or an f-string of literals around one such lookup."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return constants.get(node.value.id, [])
    if isinstance(node, ast.JoinedStr):
        texts = [""]
        for part in node.values:
            if isinstance(part, ast.Constant):
                texts = [t + str(part.value) for t in texts]
            elif isinstance(part, ast.FormattedValue) and (values := _string_values(part.value, constants)):
                texts = [t + v for t in texts for v in values]
            else:
                return []
        return texts
    return []


def _dict_constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level `NAME = {...}` dicts whose values are all string literals: NAME -> the values."""
    out: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            values = node.value.values
            if values and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in values):
                for target in targets:
                    if isinstance(target, ast.Name):
                        out[target.id] = [v.value for v in values]
    return out


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported package module, line) for every import in the file: module level, in functions, under
    `if TYPE_CHECKING:`, relative ones resolved, `from a import b` as `a.b` where b is a submodule, and
    `importlib.import_module(...)` with a string the source spells out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    constants = _dict_constants(tree)
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from a import b`: loads a, and a.b too when b is a submodule; a name defined in
                # a/__init__ needs that __init__ (kept even where a is the importer's own package)
                found.append((submodule if submodule in modules else base, node.lineno))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args:
                found += [(text, node.lineno) for text in _string_values(node.args[0], constants)]
    return found


def import_graph(source: Path = SOURCE) -> Edges:
    """Edges between the package's modules. Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`:
    those count too, except the importer's own enclosing packages (already initialised before it runs)."""
    modules = package_modules(source)
    edges: Edges = defaultdict(lambda: defaultdict(list))
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(name)
        for target, line in imports_of(path, name, modules):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            parts = target.split(".")
            loaded = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            for module in loaded:
                if module not in modules or module == name:
                    continue
                if module in own_packages and module != target:
                    continue
                edges[name][module].append(f"{path.relative_to(source.parent)}:{line}")
    return edges


def strongly_connected(edges: Edges) -> list[list[str]]:
    """Tarjan: the strongly connected components with more than one module (every cycle lies in one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(set(edges) | {m for targets in edges.values() for m in targets}):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(edges: Edges, start: str, within: set[str]) -> list[str]:
    """A shortest cycle start -> ... -> start inside one component (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, {})):
            if nxt not in within:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if nxt not in seen:
                seen.add(nxt)
                parent[nxt] = node
                queue.append(nxt)
    return []


def describe_cycles(edges: Edges) -> list[str]:
    """One shortest cycle through each module of each component, with the import lines of every arrow."""
    lines: list[str] = []
    for component in strongly_connected(edges):
        lines.append(f"import cycle among {', '.join(component)}:")
        shown: set[tuple[str, ...]] = set()
        for start in component:
            cycle = shortest_cycle(edges, start, set(component))
            body = cycle[:-1]
            key = tuple(min(body[i:] + body[:i] for i in range(len(body))))
            if key in shown:
                continue
            shown.add(key)
            arrows = [f"{a} -> {b} ({', '.join(edges[a][b])})" for a, b in zip(cycle, cycle[1:])]
            lines.append("  " + "\n    ".join(arrows))
    return lines


def test_no_import_cycle_between_package_modules():
    edges = import_graph()
    assert edges, "no import found: the graph builder is broken"
    cycles = describe_cycles(edges)
    assert not cycles, "\n" + "\n".join(cycles)


def test_graph_builder_sees_relative_lazy_and_in_function_imports(tmp_path):
    """The checker itself: each kind of import it must see makes a cycle it reports."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text(  # the lazy-export idiom of the package's __init__ files
        'import importlib\n_LAZY = {"thing": "ema_lightning.sub.b"}\n'
        "def __getattr__(name):\n    return importlib.import_module(_LAZY[name])\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from ema_lightning.sub import b\n")  # in a function, submodule
    (package / "sub" / "b.py").write_text("from . import c\n")  # relative
    (package / "sub" / "c.py").write_text('import importlib\nimportlib.import_module("ema_lightning.a")\n')
    (package / "d.py").write_text("import ema_lightning.sub.e\n")  # runs sub/__init__ first
    (package / "sub" / "e.py").write_text("")
    edges = import_graph(package)
    assert set(edges["ema_lightning.a"]) == {"ema_lightning.sub", "ema_lightning.sub.b"}
    assert set(edges["ema_lightning.sub.b"]) == {"ema_lightning.sub.c"}
    assert set(edges["ema_lightning.sub.c"]) == {"ema_lightning.a"}
    assert set(edges["ema_lightning.d"]) == {"ema_lightning.sub", "ema_lightning.sub.e"}
    assert set(edges["ema_lightning"]) == {"ema_lightning.sub", "ema_lightning.sub.b"}  # the lazy table
    assert strongly_connected(edges) == [["ema_lightning.a", "ema_lightning.sub.b", "ema_lightning.sub.c"]]


def test_causal_lm_module_is_at_most_250_lines():
    found = [
        (path, node)
        for path in sorted(SOURCE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name == "CausalLMModule"
    ]
    assert len(found) == 1, f"expected one class CausalLMModule under {PACKAGE}/, found {[str(p) for p, _ in found]}"
    path, node = found[0]
    lines = node.end_lineno - node.lineno + 1
    assert lines <= MAX_BASE_MODULE_LINES, (
        f"{path.relative_to(ROOT)}:{node.lineno}: CausalLMModule is {lines} lines (at most {MAX_BASE_MODULE_LINES}); "
        "move evaluation, caching or export into collaborators it is handed"
    )

"""The data plane's import picture: the exchange and the two sides meet only through the small
protocols in proxy/dataplane/ports.py, so no module imports one that imports it back, not
even for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

DATAPLANE = Path(__file__).resolve().parent.parent / "proxy" / "dataplane"


def _imports(path: Path) -> tuple[set[str], bool]:
    """The dataplane modules `path` imports, and whether it has a TYPE_CHECKING block."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    type_checking = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("proxy.dataplane."):
                found.add(node.module.rsplit(".", 1)[1])
            elif node.module == "proxy.dataplane":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Name) and node.id == "TYPE_CHECKING":
            type_checking = True
    return found, type_checking


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] for p in DATAPLANE.glob("*.py") if p.stem != "__init__"}


def test_no_dataplane_module_hides_an_import_behind_type_checking() -> None:
    hiding = [p.name for p in DATAPLANE.glob("*.py") if _imports(p)[1]]
    assert hiding == []


def test_dataplane_imports_form_no_circle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for imported in graph.get(module, set()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert "exchange" in graph and "ports" in graph  # the walk saw the real package


def test_exchange_and_upstream_never_import_the_client_connection() -> None:
    graph = _graph()
    assert "connection" not in graph["exchange"]
    assert "connection" not in graph["upstream"] and "exchange" not in graph["upstream"]

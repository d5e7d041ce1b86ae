"""posttrain's modules form layers: no import cycle, counting imports inside functions, and a function-level
import only for a heavy or optional third-party library (never to hide a cycle between posttrain modules)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "posttrain"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str):
    """(imported posttrain module, line, at top level?) for every import in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` imports are module-level too (annotations only, still an edge)
        if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING":
            top |= {id(m) for m in n.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if t == "posttrain" or t.startswith("posttrain."):
                yield t, node.lineno, id(node) in top


def graph() -> dict[str, dict[str, tuple[int, bool]]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, dict[str, tuple[int, bool]]] = {m: {} for m in files}
    for name, path in files.items():
        for target, line, top in _imports(path, name):
            # `from posttrain import stages` names a module; `from posttrain.util import rank` names its module
            while target not in files and "." in target:
                target = target.rpartition(".")[0]
            if target in files and target != name and target != "posttrain":
                edges[name].setdefault(target, (line, top))
    return edges


def cycles(edges) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_posttrain_modules():
    found = cycles(graph())
    assert not found, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_function_level_imports_of_posttrain_are_gone():
    """A deferred import of a posttrain module hides a cycle or saves nothing: no posttrain module imports torch at
    the top, so importing one is cheap."""
    late = [f"{m} -> {t} (line {line})" for m, ts in graph().items() for t, (line, top) in ts.items() if not top]
    assert not late, "function-level imports of posttrain modules: " + ", ".join(late)


def test_the_scan_sees_cycles():
    assert cycles({"a": {"b": (1, True)}, "b": {"c": (1, False)}, "c": {"a": (1, True)}, "d": {}}) == [["a", "b", "c"]]



def test_a_fast_test_can_neither_spawn_nor_train():
    """conftest's guard: what `make test-fast` runs starts no process and takes no optimizer step."""
    import subprocess

    import pytest
    import torch
    from accelerate import Accelerator

    with pytest.raises(AssertionError, match="mark it @pytest.mark.slow"):
        subprocess.run(["true"])
    layer = torch.nn.Linear(2, 1)
    optimizer = Accelerator(cpu=True).prepare(torch.optim.SGD(layer.parameters(), lr=0.1))
    with pytest.raises(AssertionError, match="an optimizer step"):
        optimizer.step()

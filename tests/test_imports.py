"""Every kscale module imports first (issue 10: ``import kscale.tracking`` in a fresh interpreter
raised ImportError through a tracking -> sweep -> job cycle that only import order hid).

Import cycles between kscale modules depend only on which kscale module is imported first, so
each module is imported after removing every ``kscale`` module from ``sys.modules`` (third-party
packages stay loaded, which keeps this fast) in one fresh interpreter."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import kscale

SCRIPT = r"""
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "kscale" or m.startswith("kscale.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\n" + traceback.format_exc(limit=3))
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    root = Path(kscale.__file__).parent
    names = [m.name for m in pkgutil.walk_packages([str(root)], prefix="kscale.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_kscale_module_imports_first_in_a_fresh_interpreter():
    modules = _modules()
    assert {"kscale.tracking", "kscale.sweep.job", "kscale.quant.methods", "kscale.config"} <= set(modules)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def _kscale_imports(path: Path) -> set[str]:
    """Every ``kscale...`` module a source file imports, at its top or inside a function."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kscale"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("kscale"))
    return names


def _package(module: str) -> str:
    """``kscale.data.corpus`` -> ``kscale.data``: the unit the layering is about."""
    return ".".join(module.split(".")[:2])


def test_no_import_circle_between_kscale_packages():
    """Imports inside functions count too: a circle hidden in a function body is still a circle
    (data/corpus -> toy -> data/corpus was one, through a plug-in import). Plug-ins are imported
    by name (kscale.registry.PLUGIN_MODULES), which is not an import statement."""
    root = Path(kscale.__file__).parent
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "kscale":  # the lazy top-level namespace re-exports everything by design
            continue
        targets = {_package(t) for t in _kscale_imports(path) if _package(t) in {_package(m) for m in modules}}
        graph.setdefault(_package(name), set()).update(targets - {_package(name), "kscale"})

    def path_back(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return seen + (nxt,)
            if nxt not in seen:
                found = path_back(start, nxt, seen + (nxt,))
                if found:
                    return found
        return None

    circles = [" -> ".join(c) for p in sorted(graph) if (c := path_back(p, p, (p,)))]
    assert not circles, f"import circles between kscale packages: {circles}"


#: Modules that must stay importable without torch: Hydra imports the sweeper (and so the grid)
#: for every app it starts, notebooks read results without a model stack, and a plan is checked
#: and priced before any weight loads.
TORCH_FREE = ("kscale", "kscale.registry", "kscale.paths", "kscale.net", "kscale.results",
              "kscale.tracking", "kscale.sweep.grid", "kscale.sweep.plan", "kscale.data",
              "kscale.config", "kscale.estimate")


def test_torch_free_modules_import_without_torch():
    # one interpreter: as long as none of them imports torch, none is hidden by an earlier one
    script = ("import importlib, sys\nheavy = []\nfor name in sys.argv[1:]:\n"
              "    importlib.import_module(name)\n"
              "    heavy += [f'{name}: {m}' for m in ('torch', 'transformers') if m in sys.modules]\n"
              "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", script, *TORCH_FREE], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"imported torch/transformers at import time: {proc.stdout}"

"""Import contract: engine/ never imports Qt or app; app/ never imports torch (static and at run time)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_engine_imports_no_qt_and_no_app():
    bad = {p: n & {"PySide6", "PyQt5", "PyQt6", "qtpy", "shiboken6", "app"} for p, n in imported_roots("engine").items()}
    assert not {p: n for p, n in bad.items() if n}


def test_app_imports_no_torch():
    bad = {p: n & {"torch", "torchvision", "diffusers", "safetensors"} for p, n in imported_roots("app").items()}
    assert not {p: n for p, n in bad.items() if n}


def test_engine_api_import_does_not_load_torch_or_qt():
    code = "import sys, engine.api; print(sorted(m for m in ('torch','PySide6') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_contract_checker_sees_violations(tmp_path, monkeypatch):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "x.py").write_text("from PySide6 import QtCore\nimport importlib\nimportlib.import_module('app.main')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_roots("engine")["engine/x.py"] >= {"PySide6", "app"}

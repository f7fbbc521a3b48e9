"""The pod agent bundle: one reproducible zipapp of stdlib-only, Python 3.9-compatible modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers.agent import POD_PACKAGE, build_bundle, bundle_hash

STDLIB = set(sys.stdlib_module_names)


# the one pod module run by the RUN VENV's python (where checkout installs mlflow-skinny), never by the agent
RUN_VENV_IMPORTS = {POD_PACKAGE / "tracking" / "sidecar.py": {"mlflow"},
                    POD_PACKAGE / "tracking" / "mlflow_ops.py": {"mlflow"}}


def test_pod_modules_parse_as_python_39_and_import_only_stdlib():
    for path in sorted(POD_PACKAGE.rglob("*.py")):  # subpackages (pod/executors/) too
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            for name in names:
                assert name in STDLIB or name == "__future__" or name in RUN_VENV_IMPORTS.get(path, ()), (
                    f"{path.name} imports {name}: pods have only the stdlib")
        assert "from __future__ import annotations" in path.read_text() or path.name == "__init__.py", path.name


def test_bundle_is_reproducible_and_named_by_its_content():
    first, second = build_bundle(), build_bundle()
    assert first == second
    assert len(bundle_hash()) == 16 and bundle_hash() == bundle_hash()
    with zipfile.ZipFile(__import__("io").BytesIO(first)) as archive:
        names = set(archive.namelist())
    assert "__main__.py" in names and "entry.py" in names
    assert names - {"__main__.py", "entry.py"} == {
        f"pod/{p.relative_to(POD_PACKAGE).as_posix()}" for p in POD_PACKAGE.rglob("*.py")}


def test_bundle_runs_with_isolated_python_and_unpacks_beside_itself(tmp_path: Path):
    archive = tmp_path / f"agent-{bundle_hash()}.pyz"
    archive.write_bytes(build_bundle())
    request = json.dumps({"config": {"OPS_REMOTE_OUTPUTS_DIR": str(tmp_path / "out")}, "args": {}})
    for _ in range(2):  # the first run unpacks, the second reuses (and python caches bytecode there)
        result = subprocess.run([sys.executable, "-I", "-S", str(archive), "fsm-status"], input=request, text=True,
                                capture_output=True)
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert reply["ok"] and reply["result"]["state"] == "INIT"
    assert (tmp_path / f"agent-{bundle_hash()}.d" / "pod" / "fsm.py").is_file()
    # later calls run the unpacked entry.py as a plain script (no zipimport, no runpy)
    entry = tmp_path / f"agent-{bundle_hash()}.d" / "entry.py"
    probe = subprocess.run([sys.executable, "-I", "-S", str(entry), "fsm-status"], input=request, text=True,
                           capture_output=True)
    assert probe.returncode == 0 and json.loads(probe.stdout)["result"]["state"] == "INIT", probe.stderr
    traced = subprocess.run([sys.executable, "-X", "importtime", "-I", "-S", str(entry), "fsm-status"], input=request,
                            text=True, capture_output=True)
    assert traced.returncode == 0 and not [line for line in traced.stderr.splitlines() if line.endswith(" runpy")]
    unknown = subprocess.run([sys.executable, "-I", "-S", str(archive), "no-such-op"], input="{}", text=True,
                             capture_output=True)
    assert unknown.returncode == 2 and "unknown agent op" in json.loads(unknown.stdout)["error"]

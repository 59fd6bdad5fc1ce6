"""Airflow's plugin loader on the repo's plugins folder, in a fresh process as the api-server,
scheduler and workers run it: one plugin, no import errors, and no module of the package
registered a second time under its bare file name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from airflow._shared.plugins_manager.plugins_manager import (
        _load_plugins_from_plugin_directory,
    )
    folder = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(folder))  # as Airflow's settings put it on sys.path
    plugins, errors = _load_plugins_from_plugin_directory(str(folder), ignore_file_syntax="glob")
    package = folder / "imageindex_airflow"
    loaded = {
        name: str(Path(m.__file__).resolve().relative_to(package))
        for name, m in list(sys.modules.items())
        if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(package)
    }
    print(json.dumps({"plugins": [p.name for p in plugins], "errors": errors, "loaded": loaded}))
    """
)


def test_the_loader_imports_plugin_py_only_and_the_package_once():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(PLUGINS)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plugins"] == ["imageindex"] and result["errors"] == {}
    # Without plugins/imageindex_airflow/.airflowignore every file also became a top-level
    # module named after it: sys.modules["datasets"], ["search"], ["app"], ...
    bare = {name: path for name, path in result["loaded"].items() if "." not in name}
    assert bare == {"plugin": "plugin.py", "imageindex_airflow": "__init__.py"}
    assert "routers/datasets.py" in result["loaded"].values()

"""A built wheel carries the top-level static/ folder and serves it, with no source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PROBE = """
import gateway, sys
from gateway.intake.snippet import Snippet, static_text
assert gateway.__file__.startswith(sys.argv[1]), gateway.__file__
assert "<form" in static_text("demo.html")
print(len(Snippet.load(None).body))
"""


@pytest.mark.slow
def test_a_wheel_ships_the_snippet_and_the_demo_page(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("ct_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"gateway/static/snippet.js", "gateway/static/demo.html"} <= names
        assert "gateway/py.typed" in names
        archive.extractall(tmp_path / "site")
    # The unpacked wheel comes first on the path, ahead of the editable install of this tree.
    site = str(tmp_path / "site")
    served = subprocess.run(
        [sys.executable, "-c", _PROBE, site], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert served.returncode == 0, served.stderr
    assert int(served.stdout) > 1000

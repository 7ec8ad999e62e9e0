"""The README's first command: `make demo` prints the response it documents."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from harness.stack import REPO

pytestmark = pytest.mark.cluster


def test_the_demo_prints_the_response_shown_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    documented = json.loads(re.search(r"`make demo` prints.*?```json\n(.*?)```", readme, re.S)[1])

    result = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    printed = result.stdout[result.stdout.index("{") :]
    assert json.loads(printed) == documented

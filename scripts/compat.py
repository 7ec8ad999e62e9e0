"""Run the dispatcher's end-to-end modules on another Kubernetes version (make compat).

    make compat K8S_VERSION=v1.35.4    # build v1.35.4 (cached), bring the stack up on it, run
                                       # the modules, write its row in docs/compatibility.md
    make compat                        # the same on the pinned version (stack/versions.env)

The stack is brought up on that version (a running stack of another version is stopped first)
and left running; `make up` goes back to the pinned version. The run's row replaces the row of
the same version in the table, and the other rows stay. Exit status 1 when a module failed.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "compatibility.md"
MODULES = (
    "tests/e2e/test_dispatch.py",
    "tests/e2e/test_queueing.py",
    "tests/e2e/test_task_options.py",
    "tests/e2e/test_retries.py",
    "tests/e2e/test_resilience.py",
    "tests/e2e/test_kueue.py",
)
VERSION = re.compile(r"^v1\.\d+\.\d+$")
MARKER = "compat-table"


@dataclass(frozen=True)
class Module:
    path: str
    tests: int
    failed: int
    skipped: int
    seconds: float

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped

    def cell(self) -> str:
        name = Path(self.path).stem.removeprefix("test_").replace("_", " ")
        text = f"{name} {self.passed}/{self.tests}"
        if self.skipped:
            text += f" ({self.skipped} skipped)"
        return text


def pinned() -> dict[str, str]:
    lines = (REPO / "stack/versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def stack_env() -> dict[str, str]:
    env = {}
    for line in (REPO / ".local/env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key:
            env[key] = value
    return env


def run_module(path: str, env: dict[str, str]) -> Module:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        start = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "pytest", path, "-q", f"--junitxml={report}"],
            cwd=REPO,
            env=env,
            check=False,
        )
        seconds = time.monotonic() - start
        if not report.exists():
            return Module(path, tests=0, failed=1, skipped=0, seconds=seconds)
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        return Module(
            path,
            tests=int(suite.get("tests", 0)),
            failed=failed,
            skipped=int(suite.get("skipped", 0)),
            seconds=seconds,
        )


def row(version: str, default: bool, modules: list[Module], etcd: str, day: str) -> str:
    failed = sum(m.failed for m in modules)
    verdict = "all passed" if not failed else f"**{failed} failed**"
    name = f"{version} (default)" if default else version
    cells = " · ".join(m.cell() for m in modules)
    minutes = round(sum(m.seconds for m in modules) / 60)
    return f"| {name} | {etcd} | {cells} | {verdict} | {minutes} min | {day} |"


def write_row(version: str, line: str) -> None:
    """Put `line` in the table in place of the row of `version`; newest Kubernetes first."""
    text = DOC.read_text()
    pattern = re.compile(rf"(<!-- {MARKER}:[^\n]*\n)(.*?)(<!-- end {MARKER} -->)", re.S)
    match = pattern.search(text)
    if match is None:
        raise SystemExit(f"compat: no <!-- {MARKER}: ... --> block in {DOC}")
    lines = match[2].splitlines()
    header, rows = lines[:2], [r for r in lines[2:] if r.startswith("| v")]
    rows = [r for r in rows if r.split()[1] != version] + [line]

    def key(r: str) -> tuple[int, ...]:
        return tuple(-int(n) for n in r.split()[1].removeprefix("v").split("."))

    body = "\n".join([*header, *sorted(rows, key=key)]) + "\n"
    DOC.write_text(text[: match.start(2)] + body + text[match.end(2) :])


def main(argv: list[str]) -> int:
    versions = pinned()
    version = os.environ.get("K8S_VERSION") or versions["K8S_VERSION"]
    if not VERSION.match(version):
        print(f"compat: K8S_VERSION must look like v1.35.4, not {version!r}", file=sys.stderr)
        return 2
    stack = {**os.environ, "K8S_VERSION": version}
    subprocess.run(["bash", "stack/up.sh"], cwd=REPO, env=stack, check=True)
    subprocess.run(["bash", "stack/build-image.sh"], cwd=REPO, env=stack, check=True)
    subprocess.run(["bash", "stack/build-kueue.sh"], cwd=REPO, env=stack, check=True)
    env = {k: v for k, v in os.environ.items() if k != "K8S_VERSION"} | stack_env()
    if env.get("STACK_K8S_VERSION") != version:
        running = env.get("STACK_K8S_VERSION")
        print(f"compat: the stack runs {running}, not {version}", file=sys.stderr)
        return 1
    modules = [run_module(path, env) for path in MODULES]
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    line = row(version, version == versions["K8S_VERSION"], modules, versions["ETCD_VERSION"], day)
    print(line)
    if "--write" in argv:
        write_row(version, line)
        print(f"compat: wrote the {version} row of {DOC.relative_to(REPO)}")
    if version != versions["K8S_VERSION"]:
        default = versions["K8S_VERSION"]
        print(f"compat: the stack runs Kubernetes {version}; `make up` goes back to {default}")
    return 1 if any(m.failed for m in modules) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The package as producers install it: a wheel built with uv, `pip install`ed into a fresh venv,
gives the `dispatcher` command and the Python client without the worker's libraries (Celery,
lightkube, prometheus-client: the extra `worker`). Needs PyPI, not the local stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness.stack import REPO


def run(*argv: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel of this checkout installed, by pip, as the docs say."""
    root = tmp_path_factory.mktemp("wheel")
    built = run("bash", "scripts/uv.sh", "build", "--wheel", "--out-dir", root / "dist")
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("k8s_job_dispatcher-*.whl")
    venv = root / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    installed = run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_installed_command_runs_and_the_client_imports(fresh_venv: Path) -> None:
    helped = run(fresh_venv / "bin" / "dispatcher", "--help", cwd=fresh_venv)
    imported = run(
        fresh_venv / "bin" / "python",
        "-c",
        "from dispatcher.client import AsyncClient, Client; print(Client.__name__)",
        cwd=fresh_venv,
    )

    assert helped.returncode == 0, helped.stderr
    assert "submit" in helped.stdout
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "Client\n"


def test_the_base_install_leaves_out_the_workers_libraries(fresh_venv: Path) -> None:
    listed = run(fresh_venv / "bin" / "pip", "list", "--format=freeze", cwd=fresh_venv)
    worker = run(fresh_venv / "bin" / "dispatcher", "worker", cwd=fresh_venv)
    status = run(fresh_venv / "bin" / "dispatcher", "status", cwd=fresh_venv)

    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert {"kombu", "aio-pika", "k8s-job-dispatcher"} <= names
    assert not names & {"celery", "lightkube", "prometheus-client"}
    assert worker.returncode == 2
    assert worker.stderr == (
        "dispatcher: the worker needs celery, lightkube, prometheus_client, which the base "
        "install leaves out: pip install 'k8s-job-dispatcher[worker]'\n"
    )
    assert status.returncode == 2
    assert status.stderr == (
        "dispatcher: status needs lightkube, which the base install leaves out: "
        "pip install 'k8s-job-dispatcher[worker]'\n"
    )

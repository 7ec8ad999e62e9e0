"""docs/deploy.md works as written: every shell block runs, in order, in one shell, against the
local stack as if it were a remote cluster; the first task's answer is the one the guide shows,
and after the uninstall nothing of the release is left.

What the stack lacks, and what the test does in its place (the guide says so too):
- a registry: `docker build` takes the image `make image` built from the same Dockerfile, and
  `docker push` tags it under the registry's name in the node's containerd;
- a load balancer in front of the broker: producers reach the stack's broker on loopback
  (`rabbitmq.example.com` is 127.0.0.1 here);
- an NFS server, kube-proxy and namespaces nobody else uses: `helm install` and `helm upgrade`
  get one more values file, with the stack's host directory, the API server's address, the
  stack's broker nodes and the namespaces `guide` and `guide-jobs` (the guide's `dispatcher`
  and `dispatcher-jobs` belong to the stack's other tests);
- pulls: the guide's task image is the stack's own small image, tagged under the guide's name.
`rabbitmqctl` runs against the stack's first broker node; `kubectl` and `helm` are the stack's.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.stack import LOCAL, REPO, kubectl, kubectl_path, rabbitmqctl, stack_env

from tests.deploy.test_chart import app_version, ctr, drop_finalizer, helm

pytestmark = pytest.mark.cluster

DOC = REPO / "docs" / "deploy.md"
BUILT = f"localhost/k8s-job-dispatcher:{app_version()}"
TASK_IMAGE = "docker.io/library/busybox:1.36"
NAMESPACES = {"dispatcher": "guide", "dispatcher-jobs": "guide-jobs"}
VOLUME = "guide-pv"
USERS = ("dispatcher", "reports")
VHOST = "dispatcher"


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


def files() -> dict[str, str]:
    found = re.finditer(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", DOC.read_text(), re.S)
    return {m[1]: m[2] for m in found}


def shown_answer() -> dict[str, Any]:
    """The JSON block the guide shows after the first task."""
    text = DOC.read_text()
    block = re.search(r"It prints the answer.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/deploy.md shows no answer of the first task"
    answer: dict[str, Any] = json.loads(block[1])
    return answer


def on_the_stack(block: str) -> str:
    """A block of the guide with the stack's namespaces and the broker's address from outside."""
    block = block.replace("rabbitmq.example.com", "127.0.0.1")
    block = block.replace("dispatcher-jobs", NAMESPACES["dispatcher-jobs"])
    return re.sub(r"(-n|namespace) dispatcher\b", rf"\1 {NAMESPACES['dispatcher']}", block)


def stack_values() -> dict[str, Any]:
    """What `helm install` and `helm upgrade` get beyond the guide's values.yaml."""
    env = stack_env()
    return {
        "namespaces": {
            "dispatcher": NAMESPACES["dispatcher"],
            "jobs": NAMESPACES["dispatcher-jobs"],
        },
        "broker": {"hosts": env["POD_AMQP_HOST"].split(",")},
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": env["POD_KUBERNETES_SERVICE_HOST"]},
            {"name": "KUBERNETES_SERVICE_PORT", "value": env["POD_KUBERNETES_SERVICE_PORT"]},
        ],
        "persistence": {
            "volumeName": VOLUME,
            "volume": {
                "source": {
                    "nfs": None,
                    "hostPath": {
                        "path": "/var/lib/dispatcher-stack/pv/worker-pv-volume",
                        "type": "Directory",
                    },
                }
            },
        },
    }


SHIMS = {
    "docker": """#!/bin/bash
set -euo pipefail
case "$1" in
  build) [ "$2" = -t ] && [ "$4" = . ] || { echo "docker: expected build -t IMAGE ." >&2; exit 2; }
         echo "$3" >>"$GUIDE_STATE/built" ;;
  push) grep -qxF "$2" "$GUIDE_STATE/built" || { echo "docker push: $2 was not built" >&2; exit 1; }
        ctr --address "$GUIDE_SOCK" -n k8s.io images tag --force "$GUIDE_BUILT" "$2" >/dev/null
        echo "$2: pushed" ;;
  *) echo "docker: only build and push" >&2; exit 2 ;;
esac
""",
    "rabbitmqctl": '#!/bin/bash\nexec bash "$GUIDE_REPO/stack/rabbitmqctl.sh" 1 "$@"\n',
    "helm": """#!/bin/bash
case "$1" in
  install|upgrade) exec bash "$GUIDE_REPO/stack/helm.sh" "$@" -f "$GUIDE_STATE/stack-values.yaml" ;;
  *) exec bash "$GUIDE_REPO/stack/helm.sh" "$@" ;;
esac
""",
    "kubectl": '#!/bin/bash\nexec "$GUIDE_KUBECTL" "$@"\n',
}


def forget_the_guides_objects() -> None:
    """What a run of the guide leaves when it fails half-way (and nothing after a good one)."""
    helm("uninstall", "k8s-job-dispatcher", "-n", NAMESPACES["dispatcher"], check=False)
    jobs = kubectl("-n", NAMESPACES["dispatcher-jobs"], "get", "jobs", "-o", "json", check=False)
    for job in json.loads(jobs.stdout or '{"items": []}')["items"]:
        drop_finalizer(NAMESPACES["dispatcher-jobs"], job)
    kubectl("delete", "namespace", *NAMESPACES.values(), "--ignore-not-found", check=False)
    kubectl("delete", "pv", VOLUME, "--ignore-not-found", check=False)
    for what in (("delete_vhost", VHOST), *(("delete_user", user) for user in USERS)):
        with contextlib.suppress(subprocess.CalledProcessError):  # not there: nothing to do
            rabbitmqctl(*what)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """An operator's working directory: the chart, the guide's files, and the shims."""
    if ctr("images", "ls", "-q").stdout.split().count(BUILT) != 1:
        pytest.fail(f"{BUILT} is not in the stack's containerd: run `make image`")
    forget_the_guides_objects()
    (tmp_path / "charts").symlink_to(REPO / "charts")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, text in SHIMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / ".state").mkdir()
    (tmp_path / ".state" / "stack-values.yaml").write_text(yaml.safe_dump(stack_values()))
    ctr("images", "tag", "--force", stack_env()["TEST_IMAGE"], TASK_IMAGE)
    try:
        yield tmp_path
    finally:
        forget_the_guides_objects()
        for image in (TASK_IMAGE, *pushed(tmp_path)):
            ctr("images", "rm", image, check=False)


def pushed(workdir: Path) -> list[str]:
    built = workdir / ".state" / "built"
    return built.read_text().split() if built.exists() else []


def test_every_shell_block_of_the_deploy_guide_runs_as_written(workdir: Path) -> None:
    blocks = shell_blocks()
    assert len(blocks) >= 6, "the guide lost its shell blocks"
    for name, text in files().items():
        (workdir / name).write_text(text)
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        script += [f"echo '@@ block {number}'", on_the_stack(block)]
    env = {
        "PATH": f"{workdir / '.bin'}:{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir),
        "KUBECONFIG": str(LOCAL / "kubeconfig"),
        "GUIDE_REPO": str(REPO),
        "GUIDE_STATE": str(workdir / ".state"),
        "GUIDE_BUILT": BUILT,
        "GUIDE_SOCK": "/run/dispatcher-stack/containerd/containerd.sock",
        "GUIDE_KUBECTL": kubectl_path(),
    }
    ran = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )

    print(ran.stdout)  # what an operator sees, block by block (pytest -s)
    outputs = re.split(r"^@@ block \d+\n", ran.stdout, flags=re.M)[1:]
    assert ran.returncode == 0, (
        f"block {len(outputs) - 1} of docs/deploy.md failed:\n"
        f"{blocks[len(outputs) - 1]}\nstdout:\n{ran.stdout[-3000:]}\nstderr:\n{ran.stderr[-3000:]}"
    )
    assert len(outputs) == len(blocks)
    first_task = next(o for b, o in zip(blocks, outputs, strict=True) if "--id hello-1" in b)
    assert json.loads(first_task) == shown_answer()
    without_wait = next(o for b, o in zip(blocks, outputs, strict=True) if "--id hello-2" in b)
    published, answer = without_wait.splitlines()
    assert published.startswith("published task hello-2 ")
    assert json.loads(answer) == {"id": "hello-2", "output": "hello again\n", "exit": 0}
    upgrade = next(o for b, o in zip(blocks, outputs, strict=True) if "helm upgrade" in b)
    assert upgrade.splitlines()[-1] == "registry.example.com/platform/k8s-job-dispatcher:0.1.1"
    assert pushed(workdir) == [
        "registry.example.com/platform/k8s-job-dispatcher:0.1.0",
        "registry.example.com/platform/k8s-job-dispatcher:0.1.1",
    ]
    left = kubectl(
        "get", "namespace", *NAMESPACES.values(), "--ignore-not-found", "-o", "name", check=False
    )
    assert left.stdout == ""
    assert kubectl("get", "pv", VOLUME, "--ignore-not-found", "-o", "name").stdout == ""
    assert helm("list", "-n", NAMESPACES["dispatcher"], "-q").stdout == ""

"""Write the kustomize base (manifests/base) from the Helm chart, so that the two cannot drift:
`helm template` of charts/k8s-job-dispatcher with ci/base-values.yaml, one file per template.

What stays kustomize's own is in manifests/base/kustomization.yaml: the Secrets generated from
amqp.env and definitions.json, and the settings ConfigMap, generated from settings.env (which
this script writes from the chart's ConfigMap) so that its name carries a hash of its content
and overlays can merge settings into it; that hash rolls the pods where the chart's checksum
annotations do, so those are left out of the base.

    python scripts/render_base.py          # write manifests/base
    python scripts/render_base.py --check  # exit 1, naming the files, if they differ
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "k8s-job-dispatcher"
BASE = REPO / "manifests" / "base"
HEADER = (
    "# Rendered from charts/k8s-job-dispatcher with ci/base-values.yaml by `make manifests`\n"
    "# (scripts/render_base.py): change the chart, not this file.\n"
)
SOURCE = re.compile(r"^---\n# Source: k8s-job-dispatcher/templates/(\S+)\n", re.MULTILINE)
CHECKSUMS = re.compile(
    r"\n      annotations:\n        # A change of the settings[^\n]*\n"
    r"        checksum/settings: \S+\n        checksum/amqp: \S+"
)


def helm_template() -> str:
    return subprocess.run(
        [
            *("bash", str(REPO / "stack" / "helm.sh"), "template", "k8s-job-dispatcher"),
            *(str(CHART), "--values", str(CHART / "ci" / "base-values.yaml")),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def split(rendered: str) -> dict[str, list[str]]:
    """The documents of each template, in Helm's order."""
    parts = SOURCE.split(rendered)
    documents: dict[str, list[str]] = {}
    for template, text in zip(parts[1::2], parts[2::2], strict=True):
        documents.setdefault(template, []).append(text.strip() + "\n")
    return documents


def settings_env(documents: list[str]) -> str:
    (config_map,) = [yaml.safe_load(doc) for doc in documents]
    lines = [f"{key}={value}" for key, value in config_map["data"].items()]
    return (
        HEADER
        + "# The settings ConfigMap's data (kustomization.yaml generates it).\n"
        + ("\n".join(lines) + "\n")
    )


def render() -> dict[str, str]:
    """File name in manifests/base → its content."""
    files = {}
    for template, documents in split(helm_template()).items():
        if template == "settings.yaml":
            files["settings.env"] = settings_env(documents)
            continue
        text = HEADER + "---\n".join(documents)
        if template == "dispatcher.yaml":
            text, found = CHECKSUMS.subn("", text)
            if found != 1:
                raise SystemExit("render_base: the Deployment's checksum annotations changed")
        files[template] = text
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    files = render()
    if args.check:
        stale = [name for name, text in files.items() if _read(BASE / name) != text]
        if stale:
            sys.stderr.write(
                f"manifests/base differs from the chart's rendering: {', '.join(stale)}; "
                "run `make manifests`\n"
            )
            return 1
        return 0
    for name, text in files.items():
        (BASE / name).write_text(text)
    sys.stdout.write(f"render_base: wrote {', '.join(sorted(files))} in {BASE.relative_to(REPO)}\n")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())

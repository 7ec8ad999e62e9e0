"""Write the kustomize base (manifests/base) from the Helm chart, so that the two cannot drift:
`helm template` of charts/k8s-job-dispatcher with ci/base-values.yaml, one file per template.
The component manifests/components/monitoring is the same rendering's monitoring objects (the
metrics Service, ServiceMonitor, PrometheusRule of files/alerts.yaml, and the dashboard's
ConfigMap), turned on with MONITORING; its kustomization.yaml is kustomize's own.

What stays kustomize's own is in manifests/base/kustomization.yaml: the Secrets generated from
amqp.env and definitions.json, and the settings ConfigMap, generated from settings.env (which
this script writes from the chart's ConfigMap) so that its name carries a hash of its content
and overlays can merge settings into it; that hash rolls the pods where the chart's checksum
annotations do, so those are left out of the base.

    python scripts/render_base.py          # write manifests/base and the monitoring component
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
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
MONITORING = MANIFESTS / "components" / "monitoring"
MONITORING_VALUES = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.dashboard.enabled=true",
)
MONITORING_TEMPLATES = ("metrics.yaml", "dashboard.yaml")
HEADER = (
    "# Rendered from charts/k8s-job-dispatcher with ci/base-values.yaml by `make manifests`\n"
    "# (scripts/render_base.py): change the chart, not this file.\n"
)
SOURCE = re.compile(r"^---\n# Source: k8s-job-dispatcher/templates/(\S+)\n", re.MULTILINE)
CHECKSUMS = re.compile(
    r"\n      annotations:\n        # A change of the settings[^\n]*\n"
    r"        checksum/settings: \S+\n        checksum/amqp: \S+"
)


def helm_template(*sets: str) -> str:
    return subprocess.run(
        [
            *("bash", str(REPO / "stack" / "helm.sh"), "template", "k8s-job-dispatcher"),
            *(str(CHART), "--values", str(CHART / "ci" / "base-values.yaml")),
            *(arg for value in sets for arg in ("--set", value)),
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


def render() -> dict[Path, str]:
    """File in manifests/base or the monitoring component → its content."""
    files = {}
    for template, documents in split(helm_template()).items():
        if template == "settings.yaml":
            files[BASE / "settings.env"] = settings_env(documents)
            continue
        text = HEADER + "---\n".join(documents)
        if template == "dispatcher.yaml":
            text, found = CHECKSUMS.subn("", text)
            if found != 1:
                raise SystemExit("render_base: the Deployment's checksum annotations changed")
        files[BASE / template] = text
    monitoring = split(helm_template(*MONITORING_VALUES))
    for template in MONITORING_TEMPLATES:
        files[MONITORING / template] = HEADER + "---\n".join(monitoring[template])
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    files = render()
    if args.check:
        stale = [_name(path) for path, text in files.items() if _read(path) != text]
        if stale:
            sys.stderr.write(
                f"manifests/ differs from the chart's rendering: {', '.join(stale)}; "
                "run `make manifests`\n"
            )
            return 1
        return 0
    for path, text in files.items():
        path.write_text(text)
    sys.stdout.write(f"render_base: wrote {', '.join(sorted(map(_name, files)))}\n")
    return 0


def _name(path: Path) -> str:
    return str(path.relative_to(MANIFESTS))


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())

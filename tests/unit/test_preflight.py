"""The start-up check of the claim every Job mounts: one clear warning, never a crash."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dispatcher.core.preflight import preflight
from dispatcher.errors import ForbiddenError, KubeError
from tests.unit.fakes import NAMESPACE, SETTINGS


class Claims:
    """The `ClaimReader` port: one claim, none, or an error."""

    def __init__(self, answer: dict[str, Any] | KubeError | None) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def get_claim(self, name: str) -> dict[str, Any] | None:
        self.asked.append(name)
        if isinstance(self.answer, KubeError):
            raise self.answer
        return self.answer


def claim(volume: str | None, phase: str) -> dict[str, Any]:
    return {"spec": {"volumeName": volume} if volume else {}, "status": {"phase": phase}}


def test_a_claim_bound_to_pv_name_is_fine(caplog: pytest.LogCaptureFixture) -> None:
    claims = Claims(claim(SETTINGS.pv_name, "Bound"))

    assert preflight(claims, SETTINGS) is None
    assert claims.asked == [SETTINGS.pvc_name]
    assert caplog.records == []


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        pytest.param(
            None,
            f"PVC_NAME: PersistentVolumeClaim '{SETTINGS.pvc_name}' does not exist in namespace "
            f"'{NAMESPACE}'; every Job mounts it, so no task can start until it does",
            id="missing",
        ),
        pytest.param(
            claim("pvc-8a1f", "Bound"),
            f"PV_NAME: PersistentVolumeClaim '{SETTINGS.pvc_name}' is bound to PersistentVolume "
            f"'pvc-8a1f', not '{SETTINGS.pv_name}'",
            id="bound-elsewhere",
        ),
        pytest.param(
            claim(None, "Pending"),
            f"PVC_NAME: PersistentVolumeClaim '{SETTINGS.pvc_name}' is Pending; tasks wait "
            "until it is bound",
            id="pending",
        ),
        pytest.param(
            ForbiddenError("read PersistentVolumeClaim x: forbidden (HTTP 403)", 403),
            f"PVC_NAME: cannot check PersistentVolumeClaim '{SETTINGS.pvc_name}': read "
            "PersistentVolumeClaim x: forbidden (HTTP 403)",
            id="not-allowed",
        ),
    ],
)
def test_what_is_wrong_with_the_claim_is_one_warning_naming_the_setting(
    answer: dict[str, Any] | KubeError | None, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.core.preflight"):
        assert preflight(Claims(answer), SETTINGS) == warning
    assert caplog.messages == [warning]

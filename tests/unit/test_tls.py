"""AMQP over TLS: the settings, the options every connection gets, and files that cannot be used
named at start (against certificates made here with openssl; no broker)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from dispatcher.amqp.tls import tls_context
from dispatcher.config import Settings
from dispatcher.errors import ConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a client certificate it signed, with their keys."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=client")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "client.crt")  # fmt: skip
    run("genrsa", "-out", "other.key", "2048")
    return d


def test_without_tls_the_url_is_amqp_and_there_are_no_tls_options() -> None:
    settings = Settings.from_env({})

    assert settings.broker_url.startswith("amqp://")
    assert settings.broker_ssl is None


def test_with_tls_the_certificate_and_the_name_are_verified(pki: Path) -> None:
    settings = Settings.from_env(
        {
            "AMQP_TLS": "true",
            "AMQP_HOST": "broker.example.com",
            "AMQP_PORT": "5671",
            "AMQP_CA_FILE": str(pki / "ca.crt"),
        }
    )

    assert settings.broker_url.startswith("amqps://")
    assert settings.broker_ssl == {
        "ca_certs": str(pki / "ca.crt"),
        "certfile": None,
        "keyfile": None,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "broker.example.com",
    }
    assert tls_context(settings) is not None  # the files load


def test_the_name_checked_can_differ_from_the_host_dialled() -> None:
    settings = Settings.from_env(
        {"AMQP_TLS": "true", "AMQP_HOST": "10.0.0.7", "AMQP_SERVER_NAME": "rabbitmq.internal"}
    )

    assert settings.broker_ssl is not None
    assert settings.broker_ssl["server_hostname"] == "rabbitmq.internal"


def test_a_client_certificate_with_its_key_is_fine(pki: Path) -> None:
    settings = Settings.from_env(
        {
            "AMQP_TLS": "true",
            "AMQP_CA_FILE": str(pki / "ca.crt"),
            "AMQP_CERT_FILE": str(pki / "client.crt"),
            "AMQP_KEY_FILE": str(pki / "client.key"),
        }
    )

    assert tls_context(settings) is not None  # the files load


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        pytest.param({"AMQP_CA_FILE": "missing.crt"}, "AMQP_CA_FILE: ", id="missing-ca"),
        pytest.param({"AMQP_CA_FILE": "client.key"}, "AMQP_CA_FILE: ", id="not-a-certificate"),
        pytest.param(
            {"AMQP_CERT_FILE": "client.crt", "AMQP_KEY_FILE": "other.key"},
            "AMQP_CERT_FILE, AMQP_KEY_FILE: ",
            id="key-of-another-certificate",
        ),
    ],
)
def test_files_that_cannot_be_used_are_named(
    pki: Path, files: dict[str, str], problem: str
) -> None:
    env = {"AMQP_TLS": "true", **{k: str(pki / v) for k, v in files.items()}}

    with pytest.raises(ConfigError) as refused:
        tls_context(Settings.from_env(env))

    assert str(refused.value).startswith(problem)

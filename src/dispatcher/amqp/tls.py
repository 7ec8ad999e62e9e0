"""AMQP over TLS: the client context of AMQP_TLS, and its files checked before any connection
is tried.

A CA file that is missing or a key that does not match its certificate would otherwise surface
as a connection error retried for ever; here it is one line naming the variable."""

from __future__ import annotations

import ssl
from typing import Any

from dispatcher.config import Settings
from dispatcher.errors import ConfigError


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context of ``AMQP_TLS`` (None without TLS): the broker's certificate is
    verified against ``AMQP_CA_FILE`` (else the system's CAs) and for ``AMQP_SERVER_NAME``
    (else the host), with ``AMQP_CERT_FILE``/``AMQP_KEY_FILE`` presented when set. A file that
    cannot be used is a ConfigError naming its variable."""
    if not settings.amqp_tls:
        return None
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = settings.amqp_server_name or settings.broker_addresses[0][0]
    try:
        if settings.amqp_ca_file:
            context.load_verify_locations(cafile=settings.amqp_ca_file)
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "AMQP_CA_FILE", f"cannot be read as PEM CA certificates: {_why(exc)}"
        ) from exc
    if settings.amqp_cert_file:
        try:
            context.load_cert_chain(settings.amqp_cert_file, settings.amqp_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "AMQP_CERT_FILE, AMQP_KEY_FILE",
                f"cannot be read as a PEM certificate and its private key: {_why(exc)}",
            ) from exc
    return context


class _NamedContext(ssl.SSLContext):
    """A client TLS context that checks the broker's certificate for one name (which may differ
    from the host connected to) and sends it as SNI, whatever name its user passes."""

    server_name: str

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_bio(*args, **kwargs)


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)

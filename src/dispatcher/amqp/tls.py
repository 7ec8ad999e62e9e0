"""AMQP over TLS: the files AMQP_TLS needs, checked before any connection is tried.

A CA file that is missing or a key that does not match its certificate would otherwise surface
as a connection error retried for ever; here it is one line naming the variable."""

from __future__ import annotations

import ssl

from dispatcher.config import Settings


def tls_problem(settings: Settings) -> str | None:
    """What keeps the TLS files from being used, naming the variable (None: fine, or no TLS)."""
    if not settings.amqp_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.amqp_ca_file)
    except (OSError, ssl.SSLError) as exc:
        return f"AMQP_CA_FILE: cannot be read as PEM CA certificates: {_why(exc)}"
    if settings.amqp_cert_file:
        try:
            context.load_cert_chain(settings.amqp_cert_file, settings.amqp_key_file)
        except (OSError, ssl.SSLError) as exc:
            return (
                "AMQP_CERT_FILE, AMQP_KEY_FILE: cannot be read as a PEM certificate and its "
                f"private key: {_why(exc)}"
            )
    return None


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)

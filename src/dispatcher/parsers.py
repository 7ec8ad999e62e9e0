"""Parsers of raw setting values: each takes the text of one environment variable and returns
the typed value, or raises :class:`Rejected` with a one-line reason that shows the offending value
(bounded, printable) but never a secret. Also the Kubernetes quantity arithmetic that settings and
the capacity rules share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

Parser = Callable[[str], Any]


class Rejected(Exception):
    """A parser's verdict on one raw value; the caller adds the variable's name."""


_INTEGER = re.compile(r"-?[0-9]{1,20}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_QUANTITY_FACTOR: Final[Mapping[str, Decimal]] = MappingProxyType(
    {
        "": Decimal(1),
        "m": Decimal("0.001"),
        **{suffix: Decimal(1000) ** power for power, suffix in enumerate("kMGTPE", start=1)},
        **{f"{s}i": Decimal(1024) ** power for power, s in enumerate("KMGTPE", start=1)},
    }
)
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_SHOWN_MAX: Final = 80


def _items(raw: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated list, stripped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _quoted(raw: str) -> str:
    """Show a raw value in an error: plain quotes, one line, bounded length."""
    shown = "".join(char if char.isprintable() else "?" for char in raw[:_SHOWN_MAX])
    return f"'{shown}{'...' if len(raw) > _SHOWN_MAX else ''}'"


def integer(low: int, high: int) -> Parser:
    def parse(raw: str) -> int:
        text = raw.strip()
        if _INTEGER.fullmatch(text) and low <= int(text) <= high:
            return int(text)
        raise Rejected(f"must be a whole number from {low} to {high}, got {_quoted(raw)}")

    return parse


def boolean(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise Rejected(f"must be one of true, false, 1, 0, yes, no, got {_quoted(raw)}")


def choice(*options: str) -> Parser:
    """One of ``options``, matched without regard to case and returned as spelled there."""

    def parse(raw: str) -> str:
        text = raw.strip().lower()
        for option in options:
            if text == option.lower():
                return option
        raise Rejected(f"must be one of {', '.join(options)}, got {_quoted(raw)}")

    return parse


def amqp_name(*, allow_empty: bool) -> Parser:
    """An exchange, queue or routing-key name: printable, at most 255 bytes (AMQP shortstr)."""

    def parse(raw: str) -> str:
        if (raw or allow_empty) and raw.isprintable() and len(raw.encode()) <= 255:
            return raw
        size = "0 to 255" if allow_empty else "1 to 255"
        raise Rejected(f"must be {size} bytes of printable text, got {_quoted(raw)}")

    return parse


def text(raw: str) -> str:
    if raw and raw.isprintable():
        return raw
    raise Rejected(f"must be non-empty printable text, got {_quoted(raw)}")


def secret(raw: str) -> str:
    if raw and raw.isprintable():
        return raw
    raise Rejected("must be non-empty printable text (the value is not shown)")


def signing_keys(raw: str) -> tuple[str, ...]:
    """Comma-separated secret keys, each of at least 16 characters (none shown in an error)."""
    keys = _items(raw)
    for index, key in enumerate(keys, 1):
        if not key.isprintable() or len(key) < 16:
            raise Rejected(
                f"key {index} must be at least 16 printable characters (the value is not shown)"
            )
    return keys


def host(raw: str) -> str:
    if raw and raw.isprintable() and not any(char in raw for char in " /@?#"):
        return raw
    raise Rejected(f"must be a host name or IP address, got {_quoted(raw)}")


def address(raw: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (an IPv6 address without brackets: no port)."""
    item = raw.strip()
    port: str | None = None
    if item.startswith("["):
        name, _, rest = item[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            raise Rejected(f"must be host[:port], got {_quoted(item)}")
    elif item.count(":") == 1:
        name, _, port = item.partition(":")
    else:
        name = item
    host(name)
    if port is None:
        return name, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Rejected(f"the port of {_quoted(item)} must be a whole number from 1 to 65535")
    return name, int(port)


def hosts(raw: str) -> str:
    """One broker address or several, comma-separated: `host[:port],…` (each checked)."""
    items = [item.strip() for item in raw.split(",")]
    if not raw.strip() or not all(items):
        raise Rejected(f"must be host[:port] or a comma-separated list of them, got {_quoted(raw)}")
    for item in items:
        address(item)
    return ",".join(items)


def optional_host(raw: str) -> str | None:
    return host(raw) if raw else None


def dns_label(raw: str) -> str:
    if len(raw) <= 63 and _DNS_LABEL.fullmatch(raw):
        return raw
    raise Rejected(
        "must be an RFC 1123 label: 1 to 63 lower-case letters, digits or '-', starting and "
        f"ending with a letter or digit, got {_quoted(raw)}"
    )


def dns_subdomain(raw: str) -> str:
    if len(raw) <= 253 and _DNS_SUBDOMAIN.fullmatch(raw):
        return raw
    raise Rejected(
        "must be a Kubernetes object name (RFC 1123 subdomain): at most 253 lower-case letters, "
        f"digits, '-' or '.', starting and ending with a letter or digit, got {_quoted(raw)}"
    )


def optional_label_name(raw: str) -> str:
    """An object name that is also used as a label value (empty: none): an RFC 1123 subdomain of
    at most 63 characters."""
    if not raw:
        return ""
    if len(raw) > 63:
        raise Rejected(f"must be at most 63 characters (it is a label value), got {_quoted(raw)}")
    return dns_subdomain(raw)


def optional_path(raw: str) -> str | None:
    text = raw.strip()
    if text.isprintable():
        return text or None
    raise Rejected(f"must be a file path or empty, got {_quoted(raw)}")


def prefixes(raw: str) -> tuple[str, ...]:
    prefixes = _items(raw)
    for prefix in prefixes:
        if not prefix.isprintable() or " " in prefix:
            raise Rejected(f"must be comma-separated image prefixes, got {_quoted(prefix)}")
        if not prefix.endswith(
            "/"
        ):  # else 'registry.example.com' allows 'registry.example.com.evil.io/x'
            raise Rejected(f"each prefix must end with '/', got {_quoted(prefix)}")
    return prefixes


def queue_prefixes(raw: str) -> tuple[str, ...]:
    """Comma-separated AMQP queue-name prefixes (none: the empty tuple)."""
    found = _items(raw)
    for prefix in found:
        if not prefix.isprintable() or " " in prefix or len(prefix.encode()) > 255:
            raise Rejected(f"must be comma-separated queue name prefixes, got {_quoted(prefix)}")
    return found


def quantity(raw: str) -> str:
    text = raw.strip()
    if not text or _QUANTITY.fullmatch(text):
        return text
    raise Rejected(
        f"must be a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi (or empty for none), "
        f"got {_quoted(raw)}"
    )


def amount(quantity: str) -> Decimal:
    """The numeric value of a Kubernetes quantity (``100m`` is 0.1, ``1Ki`` is 1024); raises
    ValueError for anything :func:`quantity` would not accept."""
    match = _QUANTITY.fullmatch(quantity.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return Decimal(match[1]) * _QUANTITY_FACTOR[match[2] or ""]


_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _label_pair(item: str, what: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or len(key) > 316 or not _LABEL_KEY.fullmatch(key):
        raise Rejected(f"each {what} must be key=value with a label key, got {_quoted(item)}")
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise Rejected(f"{_quoted(value)} is not a label value (63 characters of [-A-Za-z0-9_.])")
    return key, value


def node_selector(raw: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value``: the labels a node must have to run the task pods."""
    items = [item for item in raw.split(",") if item.strip()]
    return tuple(_label_pair(item, "node selector entry") for item in items)


def tolerations(raw: str) -> tuple[tuple[str, str | None, str], ...]:
    """``key=value:Effect`` (Equal) or ``key:Effect`` (Exists), comma-separated: taints the task
    pods tolerate. Each is (key, value or None, effect)."""
    parsed: list[tuple[str, str | None, str]] = []
    for item in _items(raw):
        head, sep, effect = item.rpartition(":")
        if not sep or effect not in _EFFECTS:
            raise Rejected(
                f"each toleration must be key=value:Effect or key:Effect with Effect one of "
                f"{', '.join(_EFFECTS)}, got {_quoted(item)}"
            )
        if "=" in head:
            key, value = _label_pair(head, "toleration")
            parsed.append((key, value, effect))
        elif _LABEL_KEY.fullmatch(head):
            parsed.append((head, None, effect))
        else:
            raise Rejected(f"{_quoted(head)} is not a taint key")
    return tuple(parsed)

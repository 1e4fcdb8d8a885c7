"""Whether the gateway may start without keys: only where nobody else can reach it.

`MMRAG_AUTH` unset means off on a loopback address (the local default of `mmrag up`) and refuses to start on any
other: a gateway published without keys must be a choice, written `MMRAG_AUTH=off`, and it is logged as one.
"""

from __future__ import annotations

import ipaddress
import logging

from services.common.settings import ConfigurationError, Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def check_exposure(settings: Settings, host: str) -> None:
    """Raise ConfigurationError for a non-loopback bind with auth unset; warn when it is off by choice."""
    if settings.auth_required or is_loopback(host):
        return
    if settings.auth is None:
        raise ConfigurationError(
            f"the gateway would listen on {host}, reachable from other hosts, without API keys: set "
            'MMRAG_AUTH=required and MMRAG_BOOTSTRAP_ADMIN_KEY (README, "Keys and limits"), or MMRAG_AUTH=off '
            "if something in front of it checks every request"
        )
    log.warning(
        "MMRAG_AUTH=off on %s: anyone who can reach this address can read every job and change every index", host
    )

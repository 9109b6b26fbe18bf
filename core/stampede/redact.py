"""Credentials never leave a process in a message: URLs lose their password, whatever prints them.

Connection settings are URLs with the password inside (``postgresql://user:PW@host/db``,
``redis://:PW@host:6379/0``), and they reach messages by many roads: a settings error quoting the value,
a driver's parse error quoting the whole string, a log line with an exception. ``redact_url`` hides the
password of one URL; ``scrub`` hides every password of every URL in a text (and ``password=`` pairs of
keyword connection strings), and is applied to settings errors, the CLI's error lines and every log line.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@  — the password ends at the last '@' before a space or quote (it may hold ':').
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)@")
# password=… in a query string or a keyword/value conninfo.
_PASSWORD_PAIR = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|[^\s&'\"]+)", re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` with every URL password and ``password=`` value replaced by ``***``."""
    if "@" not in text and "assword" not in text.lower():
        return text  # the common case: nothing to hide, no regex run
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _PASSWORD_PAIR.sub(lambda m: f"{m['head']}{MASK}", text)


def redact_url(url: str) -> str:
    """One URL fit to print: its password (if any) is ``***``."""
    return scrub(url)

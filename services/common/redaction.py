"""Secrets out of what is printed: URLs with a password, and settings that hold a key or a token.

`mmrag up`, a bad-setting error and the embedder's Milvus errors print addresses; a Redis URL carries its password
(`redis://:secret@host:6379/0`, or `?password=secret`) and a Milvus URI may carry `user:password`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# Query parameters that hold a credential (redis-py reads `password`; others use token or key).
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|auth", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with its password and any credential-like query parameter replaced by ***; other text unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: say nothing of it rather than risk printing a secret
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        user_info, _, host = netloc.rpartition("@")
        user = user_info.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_PARAMETER.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

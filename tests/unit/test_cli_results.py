"""The CLI prints metadata and the VLM's reasons as plain text: no Rich markup, no terminal escape sequences."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.console import Console

from services.cli.results import print_search_result

LINK = "[link=https://evil.example]Best price[/link]"
# ESC ] 0 ; … BEL retitles the terminal; ESC [ 2 J clears it; a C1 CSI (U+009B) does what ESC [ does.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
# What Rich itself writes to colour text: Select Graphic Rendition sequences only.
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _job(title: str, explanation: str) -> dict[str, Any]:
    candidate = {"rank": 1, "vector_rank": 2, "score": 0.5, "id": "ab" * 32, "metadata": {"title": title}}
    return {
        "result": {
            "collection": "default",
            "model": "tiny-random",
            "candidates": [candidate],
            "rerank": {"status": "applied", "model": "fake-vlm-1", "explanation": explanation},
        },
        "timings_ms": {"total": 12.0},
    }


def _printed(job: dict[str, Any]) -> str:
    out = io.StringIO()
    # A real terminal as Rich sees it: colours and hyperlinks on, wide enough that nothing wraps.
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=400)
    print_search_result(job, console)
    return out.getvalue()


def test_markup_and_escape_bytes_in_metadata_and_reasons_are_printed_as_text() -> None:
    printed = _printed(_job(f"case {LINK} {ESCAPES}end", f"because {LINK}{ESCAPES}."))
    assert "\x1b]8;" not in printed  # no OSC 8 hyperlink was made
    # Shown literally, in the table and in the explanation (once Rich's own colour codes are taken out).
    assert _SGR.sub("", printed).count(LINK) == 2
    for sequence in ("\x1b]0;", "\x07", "\x1b[2J", "\x9b"):
        assert sequence not in printed, sequence
    assert "pwned" in printed  # the text around the control bytes is still shown

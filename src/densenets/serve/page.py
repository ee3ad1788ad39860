"""The web page at ``/``: static HTML, JavaScript and CSS shipped in the package (no CDN), which
call the same ``/v1`` API any client does and build the page with ``textContent`` only, so no
file name or class name is ever read as HTML."""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
INDEX = STATIC / "index.html"

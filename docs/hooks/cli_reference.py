"""MkDocs hook: the CLI reference page is the parser's own help, so it cannot drift from the code.

``docs/cli.md`` holds the marker ``<!-- cli-help -->``; at build time it is replaced by
``densenets --help`` and each subcommand's ``--help``.
"""

from __future__ import annotations

MARKER = "<!-- cli-help -->"


def _subparsers(parser):
    import argparse

    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _help_text() -> str:
    from densenets.cli.main import build_parser

    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in _subparsers(parser).items():
        parts += [f"## `densenets {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _help_text())

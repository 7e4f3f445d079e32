"""MkDocs hook: the CLI reference page is generated from the click application itself, so it always
says what ``editstore --help`` says."""

from __future__ import annotations

from typing import Any

import click

MARKER = "<!-- the CLI reference is generated here from the click application -->"


def _commands(group: click.Group, ctx: click.Context, prefix: str) -> list[tuple[str, click.Command, click.Context]]:
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        out.append((f"{prefix} {name}", command, sub))
        if isinstance(command, click.Group):
            out += _commands(command, sub, f"{prefix} {name}")
    return out


def cli_reference() -> str:
    from editstore_cli.main import cli

    root = click.Context(cli, info_name="editstore")
    parts = ["## editstore\n", "```text\n" + cli.get_help(root) + "\n```\n"]
    for path, command, ctx in _commands(cli, root, "editstore"):
        parts += [f"## {path}\n", "```text\n" + command.get_help(ctx) + "\n```\n"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown

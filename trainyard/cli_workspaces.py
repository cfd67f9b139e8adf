"""`trainyard workspace notify`: a workspace's webhook targets and signing key (admin), over its REST route."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from trainyard.cli_output import console, refuse
from trainyard.client import Client, SpecRejected

workspace_app = typer.Typer(help="Workspace settings (admin): webhook targets.", no_args_is_help=True)


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    targets = data.get("notify") or []
    console.print(f"workspace {data['workspace']}: {len(targets)} webhook target(s)", highlight=False)
    for target in targets:
        console.print(f"  {target['url']}  on {', '.join(target['events'])}", highlight=False, markup=False)
    console.print(f"signing key: {data['signing_key']}", highlight=False, markup=False)


@workspace_app.command("notify")
def workspace_notify(
    name: Annotated[str, typer.Argument(help="the workspace")],
    url: Annotated[list[str] | None, typer.Option("--url", help="a webhook URL (repeat for several)")] = None,
    events: Annotated[str, typer.Option(help="comma list: succeeded, failed, cancelled, ended")] = "ended",
    clear: Annotated[bool, typer.Option("--clear", help="remove every target")] = False,
    signing_key: Annotated[str | None, typer.Option(help="set the workspace's own signing key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the settings as JSON")] = False,
) -> None:
    """Show a workspace's webhook targets and signing key; with --url (or --clear), replace the targets."""
    try:
        client = Client()
        if url or clear or signing_key is not None:
            wanted = [{"url": u, "events": [e.strip() for e in events.split(",") if e.strip()]} for u in url or []]
            if not url and not clear:  # only a new key: keep the targets
                wanted = client.workspace_notify(name)["notify"]
            data = client.set_workspace_notify(name, wanted, signing_key)
        else:
            data = client.workspace_notify(name)
    except SpecRejected as exc:
        refuse("invalid workspace settings", exc.problems)
    _show(data, as_json)

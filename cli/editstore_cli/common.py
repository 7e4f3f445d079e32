"""Options and helpers every command module shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from editstore.store import Store

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                             help="Where to compute: auto is CUDA when available.")


def _device_map(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | dict[str, Any] | None:
    if value is None or value == "auto":
        return value
    from editstore.core.inputs import read_json

    mapping = read_json(Path(value), what="device map")
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in
                                                 mapping.items()):
        raise click.BadParameter(f"{value} is not a JSON object of module -> device (\"cpu\", \"disk\", a GPU index)",
                                 param=param)
    return mapping


device_map_option = click.option(
    "--device-map", callback=_device_map, metavar="auto|FILE.json",
    help="Spread the model over devices with accelerate: auto, or a JSON file of module -> cpu, disk or a GPU index.")


def requests_option(help: str) -> Any:
    return click.option("--requests", "requests_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help=help)


def open_store(ctx: click.Context) -> Store:
    """The store the group's ``--store`` (or ``$EDITSTORE_DIR``) names, else the nearest ``.editstore``
    upwards; closed when the command ends."""
    from editstore.store import Store

    store = Store.open(ctx.find_root().params.get("store_dir"))
    ctx.call_on_close(store.close)
    return store


def request_options(command: Any) -> Any:
    """--prompt/--subject/--target (or --suppress)/--target-true, or --requests FILE: one or more edit requests."""
    options = [
        click.option("--prompt", help="Prompt; {} marks the subject (else its first occurrence is used)."),
        click.option("--subject", help="The subject whose fact changes."),
        click.option("--target", help="The new target (target_new)."),
        click.option("--suppress", metavar="TEXT",
                     help="Instead of --target: stop producing TEXT for the prompt (a behaviour deletion)."),
        click.option("--target-true", help="The current answer, for efficacy measurements."),
        requests_option("JSONL of edit requests."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def read_requests(prompt: str | None, subject: str | None, target: str | None, suppress: str | None,
                  target_true: str | None, requests_file: Path | None, *, required: bool = True) -> list[dict[str, Any]]:
    """The requests the options give (none when ``required`` is False and no option is set)."""
    from editstore.behavior import load_requests
    from editstore.editing import make_request

    if suppress and (target or target_true):
        raise click.UsageError("--suppress deletes an output: give it without --target and --target-true")
    single = (prompt, subject, target or suppress)
    if requests_file and any(single):
        raise click.UsageError("give either --requests or --prompt/--subject/--target, not both")
    if requests_file:
        requests = load_requests(requests_file)
        if not requests:
            raise click.UsageError(f"{requests_file} holds no edit requests")
        return requests
    if not any(single) and not required:
        return []
    if not all(single):
        raise click.UsageError("give --prompt, --subject and --target or --suppress (or --requests FILE)")
    return [make_request(prompt, subject, target, target_true or suppress)]


def _layers(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        layers = tuple(int(x) for x in value.split(","))
    except ValueError:
        layers = ()
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of distinct layers, like 1,2,3", param=param)
    return layers


def layers_option(help: str) -> Any:
    """--layers 1,2,3: distinct layer numbers of the method's module template (None when not given)."""
    return click.option("--layers", callback=_layers, help=help)

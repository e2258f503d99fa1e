"""`ftctl datasets ...`: upload, list, show and preview datasets through the HTTP API (finetune_client)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ftctl.api import DEFAULT_URL, EXIT_CODES, ApiKey, ApiUrl, JsonOutput, connect, print_json

datasets = typer.Typer(
    help="Datasets, through the HTTP API (FT_API_URL and FT_API_KEY, or --api-url / --api-key).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)


def _line(dataset: dict) -> str:
    return (
        f"{dataset['id']}  {dataset['format']:<8} {dataset['rows']:>8} rows  {dataset['size_bytes']:>12,} B  "
        f"{dataset['name']}"
    )


@datasets.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(help="JSONL, JSON array, CSV, TSV or Parquet.", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="A name to know it by (default: the file's name).")] = None,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Upload FILE; prints the dataset's id (the same file again gives the dataset that already holds it)."""
    with connect(api_url, api_key) as client:
        dataset = client.datasets.upload(file, name=name)
    if as_json:
        print_json(dataset)
        return
    typer.echo(f"{dataset['rows']} rows, columns {', '.join(dataset['columns'])}", err=True)
    typer.echo(dataset["id"])


@datasets.command("list")
def datasets_list(
    limit: Annotated[int, typer.Option(help="How many, newest first (0: all).")] = 50,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Your datasets, newest first: id, format, rows, size, name."""
    with connect(api_url, api_key) as client:
        found = []
        for dataset in client.datasets.list(page_size=min(limit or 100, 500)):
            found.append(dataset)
            if not as_json:
                typer.echo(_line(dataset))
            if len(found) == limit:
                break
    if as_json:
        print_json(found)


@datasets.command("get")
def datasets_get(
    dataset_id: str, as_json: JsonOutput = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = ""
) -> None:
    """One dataset: a summary line and its columns, or with --json the whole record."""
    with connect(api_url, api_key) as client:
        dataset = client.datasets.get(dataset_id)
    if as_json:
        print_json(dataset)
    else:
        typer.echo(_line(dataset))
        typer.echo(f"  columns: {', '.join(dataset['columns'])}")


@datasets.command("preview")
def datasets_preview(
    dataset_id: str,
    limit: Annotated[int, typer.Option(help="How many rows, from the first.")] = 10,
    as_json: JsonOutput = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """The first rows as stored (what training reads), one JSON object per line."""
    with connect(api_url, api_key) as client:
        preview = client.datasets.preview(dataset_id, limit)
    if as_json:
        print_json(preview)
        return
    typer.echo(f"{preview['rows']} rows; columns {', '.join(preview['columns'])}", err=True)
    for row in preview["data"]:
        typer.echo(json.dumps(row, ensure_ascii=False))

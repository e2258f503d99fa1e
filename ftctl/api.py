"""What every command that talks to the API shares: its options, the client, and errors turned into exit codes."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from finetune_client import Client, FinetuneError, NotFound, RateLimited, ServerError, Unreachable
from finetune_client.connection import DEFAULT_URL

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES = (
    "Exit codes: 0 done; 1 the job failed or was cancelled (--wait, --follow); 2 usage: a bad option, no API key, "
    "an unreadable spec file; 3 not found (404); 4 the API refused the request (401, 403, 409, 413, 422, 429); "
    "5 the API could not be reached or failed (5xx), or a download did not match its checksum."
)

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="FT_API_URL", help="The API's base URL.")]
KEY_HELP = "An API key (`ftctl keys create NAME`)."
ApiKey = Annotated[str, typer.Option("--api-key", envvar="FT_API_KEY", help=KEY_HELP, show_default=False)]
JsonOutput = Annotated[bool, typer.Option("--json", help="Machine output: JSON on stdout, nothing else.")]


def exit_code(error: FinetuneError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, Unreachable | ServerError) or error.status is None:
        return EXIT_UNREACHABLE
    return EXIT_REFUSED


def report(error: FinetuneError) -> None:
    """The API's own words on stderr: its detail, each field that did not validate, and when to retry."""
    typer.echo(f"error: {error}", err=True)
    for problem in error.problems:
        typer.echo(f"  {problem.get('field', '?')}: {problem.get('message', '')}", err=True)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        typer.echo(f"  retry in {error.retry_after:.0f}s", err=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def connect(api_url: str, api_key: str) -> Iterator[Client]:
    """A client for one command; an API error ends the command with its message and exit code."""
    if not api_key:
        raise fail("no API key: set FT_API_KEY or pass --api-key (make one with `ftctl keys create NAME`)")
    try:
        with Client(api_url or DEFAULT_URL, api_key) as client:
            yield client
    except FinetuneError as error:
        report(error)
        raise typer.Exit(exit_code(error)) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))

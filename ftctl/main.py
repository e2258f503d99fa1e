"""ftctl: admin commands (talk to the database), the API's datasets and jobs (over HTTP), and the demo."""

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from ftctl.api import EXIT_CODES
from ftctl.datasets import datasets
from ftctl.jobs import jobs
from ftctl.secrets import secrets

app = typer.Typer(
    help="finetune-service control: datasets and jobs through the API (FT_API_URL, FT_API_KEY); API keys and "
    "local models on this host; the demo.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)
keys = typer.Typer(help="API keys (stored hashed; shown once).", no_args_is_help=True)
models = typer.Typer(help="Local base models in FT_MODELS_DIR.", no_args_is_help=True)
app.add_typer(keys, name="keys")
app.add_typer(models, name="models")
app.add_typer(datasets, name="datasets")  # talks to the API over HTTP
app.add_typer(jobs, name="jobs")  # talks to the API over HTTP
app.add_typer(secrets, name="secrets")  # on this host's database, like `keys`


def _print_version(value: bool) -> None:
    if value:
        from finetune_client import __version__

        typer.echo(f"ftctl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """finetune-service control."""


@keys.command("create")
def keys_create(
    name: str,
    tenant: Annotated[str | None, typer.Option(help="The team the key acts for (default: NAME).")] = None,
    admin: Annotated[bool, typer.Option(help="May see and revoke across tenants.")] = False,
) -> None:
    """Make an API key; the key is the last line printed, and is never shown again."""
    from app.core.db import session_scope
    from app.tenants.auth import TENANT_NAME, create_key

    if not TENANT_NAME.fullmatch(tenant or name):
        raise typer.BadParameter("a tenant is letters, digits, `.`, `_` and `-`, starting with a letter or digit")
    with session_scope() as session:
        key = create_key(session, name=name, tenant=tenant, is_admin=admin)
    typer.echo(f"created key {name!r} for tenant {tenant or name!r}; store it now, it is not shown again:", err=True)
    typer.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Keys with their tenant and state (never the key itself)."""
    from app.core.db import session_scope
    from app.models import ApiKey

    with session_scope() as session:
        for key in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            role = "  admin" if key.is_admin else ""
            typer.echo(f"{key.id}  ft_{key.prefix}_…  {key.name}  tenant={key.tenant}{role}  {state}")


@keys.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (from `ftctl keys list`)."""
    from app.core.db import session_scope
    from app.models import ApiKey, utcnow

    with session_scope() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise typer.BadParameter(f"no key with id {key_id!r}; see `ftctl keys list`")
        key.revoked_at = key.revoked_at or utcnow()
    typer.echo(f"revoked {key_id}")


@models.command("make-tiny")
def models_make_tiny(
    directory: Path,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 512,
    chat_template: Annotated[
        str,
        typer.Option(help="`tiny` (renders tools), a built-in name (`qwen2.5`, `llama3`, `chatml`, ...) or `none`."),
    ] = "tiny",
) -> None:
    """Write a tiny random-weight Llama model and tokenizer (Hugging Face format) into DIRECTORY."""
    from worker.training.tiny import make_tiny_model

    template = None if chat_template == "none" else chat_template
    path = make_tiny_model(directory, vocab_size=vocab_size, chat_template=template)
    typer.echo(f"tiny model written to {path}")


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Training steps.")] = 30,
    keep_running: Annotated[bool, typer.Option(help="Leave the API and worker running afterwards.")] = False,
) -> None:
    """Start the service on its embedded defaults and train a real QLoRA job end to end."""
    from ftctl.demo import run_demo

    raise typer.Exit(run_demo(steps=steps, keep_running=keep_running))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

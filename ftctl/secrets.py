"""`ftctl secrets ...`: the key tenant secrets are encrypted with (FT_SECRETS_KEY), on this host's database."""

from typing import Annotated

import typer

secrets = typer.Typer(
    help="Tenant secrets at rest: make an encryption key, re-encrypt every secret after a key rotation.",
    no_args_is_help=True,
)


@secrets.command("make-key")
def secrets_make_key() -> None:
    """Print a new Fernet key for FT_SECRETS_KEY (to rotate: `FT_SECRETS_KEY=new,old`, then `reencrypt`)."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())


@secrets.command("reencrypt")
def secrets_reencrypt(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's secrets (default: every tenant's).")] = None,
) -> None:
    """Encrypt every tenant secret under FT_SECRETS_KEY's first key: rows still in clear, and rows under an older
    key, which can then be dropped from FT_SECRETS_KEY. Nothing is written if any row cannot be decrypted."""
    from app.core.db import session_scope
    from app.tenants import secret_box
    from app.tenants.secrets import reencrypt_all

    with session_scope() as session:
        changed, total = reencrypt_all(session, tenant)
    typer.echo(f"re-encrypted {changed} of {total} tenant secrets with the first key of {secret_box.key_source()}")

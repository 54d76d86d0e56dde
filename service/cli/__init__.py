"""The `social-api` command: serve the API, and the admin tasks an operator runs by hand.

This package holds the Typer app and what its commands share; the commands live in modules by
theme (serve.py, accounts.py, data.py, outbox.py) and are registered below, in one block, in
the order `social-api --help` lists them.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import typer
from beanie import Document
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure

from service import db
from service.config import ConfigurationError, Settings

app = typer.Typer(
    help="The Social API: serve it, and manage its MongoDB data.",
    no_args_is_help=True,
    add_completion=False,
)


def fail(message: str) -> NoReturn:
    # Plain echo, not rich: one unwrapped line, and no markup read into the message.
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def load_settings() -> Settings:
    """The settings from the environment, or one line on what is wrong with them."""
    try:
        return Settings()
    except ValidationError as error:
        fail(
            "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        )


def run(task: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async command, turning the failures an operator can fix into one clear line."""
    try:
        asyncio.run(task())
    except ConfigurationError as error:
        fail(str(error))
    except ConnectionFailure as error:
        fail(f"cannot reach MongoDB: {error}")
    except OSError as error:
        fail(str(error))


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[db.Database]:
    """The service's database, initialised as the service does it (validators, indexes)."""
    async with db.connect(settings) as connected:
        await db.initialise(connected)
        yield connected


def collection_name(document: type[Document]) -> str:
    name: str = document.Settings.name
    return name


def printable(text: str) -> str:
    """`text` as one line of printable characters (for what comes from outside: an address
    typed on the command line, an SMTP server's answer)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def main() -> None:
    app()


# The commands. Imported after the helpers above, which their modules import from here.
from service.cli import accounts, data, outbox, serve  # noqa: E402

app.command()(serve.serve)
app.command("create-user")(accounts.create_user)
app.command("set-role")(accounts.set_role)
app.command()(data.seed)
app.command("export")(data.export_data)
app.command("import")(data.import_data)
app.command()(data.recount)
app.command()(data.indexes)
app.command()(outbox.outbox)

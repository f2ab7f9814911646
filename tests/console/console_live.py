"""A console on a real server, as the pilot and restart tests open it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from dagnats.api.client import Client
from tui.app import ConsoleApp


@asynccontextmanager
async def live_console(data_dir: Path) -> AsyncIterator[ConsoleApp]:
    """A console on the server of `data_dir`, wired as `dagnats tui` wires it: its client tells
    it when the server goes away and comes back. The client is closed afterwards."""
    holder: list[ConsoleApp] = []

    async def lost() -> None:
        await holder[0].disconnected()

    async def back() -> None:
        await holder[0].reconnected()

    client = await Client.connect(
        data_dir=str(data_dir), long_lived=True, on_disconnect=lost, on_reconnect=back
    )
    holder.append(ConsoleApp(client))
    try:
        yield holder[0]
    finally:
        await client.close()

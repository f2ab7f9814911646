"""The embedded server's configuration: it starts with and without fsync-always."""

from __future__ import annotations

import pytest

from dagnats.nats.datadir import Credentials
from dagnats.nats.embedded import EmbeddedServer

from conftest import free_port


@pytest.mark.parametrize("sync_always", [False, True])
def test_embedded_server_starts(tmp_path, sync_always):
    server = EmbeddedServer(tmp_path, free_port(), Credentials("op", "wk"), sync_always=sync_always)
    server.start()
    try:
        assert server.proc is not None and server.proc.poll() is None
        conf = (tmp_path / "nats-server.conf").read_text()
        assert ("sync_interval: always" in conf) == sync_always
        assert 'listen: "127.0.0.1:' in conf
    finally:
        server.stop()
    assert not (tmp_path / "nats-server.pid").exists()

"""The data directory: where the embedded server keeps its store, secret and address."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from dagnats.errors import UserError

SERVER_FILE = "server.json"
WORKER_FILE = "worker.json"
SECRET_FILE = "secret"
LOCK_FILE = "serve.lock"


def default_data_dir() -> Path:
    env = os.environ.get("DAGNATS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "dagnats"


def resolve(data_dir: str | os.PathLike[str] | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, replacing it atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Credentials:
    """Passwords of the embedded server's two NATS users."""

    operator: str  # full access: serve's engine, the CLI, the console
    worker: str  # tasks only: pull work, report results, read state; never approve or steer

    @classmethod
    def generate(cls) -> Credentials:
        return cls(operator=secrets.token_urlsafe(32), worker=secrets.token_urlsafe(32))


def load_or_create_credentials(path: Path) -> Credentials:
    secret_path = path / SECRET_FILE
    if secret_path.exists():
        try:
            raw = json.loads(secret_path.read_text())
            return Credentials(operator=raw["operator"], worker=raw["worker"])
        except (ValueError, KeyError, TypeError):
            pass  # an older single-token secret: replace it with a pair of credentials
    creds = Credentials.generate()
    write_private(secret_path, json.dumps({"operator": creds.operator, "worker": creds.worker}))
    return creds


@dataclass(frozen=True)
class ServerInfo:
    url: str
    user: str | None
    password: str | None
    pid: int | None = None


def write_server_info(path: Path, url: str, creds: Credentials) -> None:
    """server.json lets operators' clients find the server; worker.json does the same for workers."""
    pid = os.getpid()
    write_private(
        path / SERVER_FILE,
        json.dumps({"url": url, "user": "operator", "password": creds.operator, "pid": pid}),
    )
    write_private(
        path / WORKER_FILE, json.dumps({"url": url, "user": "worker", "password": creds.worker, "pid": pid})
    )


def read_server_info(path: Path, role: str = "operator") -> ServerInfo:
    file = path / (SERVER_FILE if role == "operator" else WORKER_FILE)
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(
            f"no dagnats server is running for data dir {path}: start one with `dagnats serve`, "
            "or pass --nats URL"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    return ServerInfo(url=raw["url"], user=raw.get("user"), password=raw.get("password"), pid=raw.get("pid"))


def remove_server_info(path: Path) -> None:
    for name in (SERVER_FILE, WORKER_FILE):
        try:
            (path / name).unlink()
        except FileNotFoundError:
            pass

"""The instance folder: private to Ferry's user (0700), holding the generated secret key and the SQLite file (0600)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from flask import Flask
from sqlalchemy.engine import make_url

SECRET_KEY_FILE = "secret_key"


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) with mode 0700; leave an existing folder's mode alone."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask; be exact
    return path


def _create_private_file(path: Path, content: str = "") -> None:
    """Create `path` with mode 0600 and `content`; raise FileExistsError when it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def secret_key(instance: Path) -> str:
    """Return the instance's secret key, creating a random one (mode 0600) on first use.

    Every process started from this instance folder (gunicorn workers, RQ workers, the CLI) reads the same
    key. Processes starting at once race safely: each writes a complete candidate to its own temporary
    file and hard-links it to the final name, which only the first link creates.
    """
    path = instance / SECRET_KEY_FILE
    if not path.exists():
        private_dir(instance)
        candidate = instance / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        _create_private_file(candidate, secrets.token_hex(32) + "\n")
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process won: use its key
        finally:
            candidate.unlink()
    key = path.read_text().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path} holds no usable secret key; remove it to have a new one generated")
    if stat.S_IMODE(path.stat().st_mode) & 0o077 and path.stat().st_uid == os.getuid():
        os.chmod(path, 0o600)  # e.g. written by hand: nobody else may read the key
    return key


def sqlite_file(uri: str, instance: Path) -> None:
    """Create a SQLite database file with mode 0600 before SQLite would create it world-readable.

    SQLite gives its journal and WAL files the database file's mode, so they stay private too. The file
    of the default database lives in the instance folder, which is created (0700) when missing.
    """
    url = make_url(uri)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return
    if url.database.startswith("file:"):
        return  # a URI filename: SQLite's own syntax, left to it
    path = Path(url.database)
    if path.parent == instance:
        private_dir(instance)
    if path.parent.is_dir():
        try:
            _create_private_file(path)  # an empty file is an empty SQLite database
        except FileExistsError:
            pass


def init_app(app: Flask) -> None:
    """Give the app its secret key (from SECRET_KEY, else the instance folder's) and a private SQLite file."""
    instance = Path(app.instance_path)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(instance)
    sqlite_file(app.config["SQLALCHEMY_DATABASE_URI"], instance)

"""Validation of what users type: SVN paths, revisions, reasons, names."""

from __future__ import annotations

import re

from .errors import BadInput

MAX_REASON = 4000
MAX_PATHS = 200
MAX_PATH_LEN = 1024
# Letters, digits and a few punctuation marks that SVN paths of web projects use; no shell metacharacters.
_PATH_CHARS = re.compile(r"^[\w.@+,=~% /-]+$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def svn_path(raw: object) -> str:
    """Return a clean relative SVN path or raise BadInput naming the field."""
    if not isinstance(raw, str):
        raise BadInput("svn_paths: each path must be a string", "svn_paths")
    path = raw.strip().strip("/") if raw.strip() not in ("", "/") else "."
    if len(path) > MAX_PATH_LEN:
        raise BadInput("svn_paths: path too long", "svn_paths")
    if raw.strip().startswith("/"):
        raise BadInput(f"svn_paths: {raw!r} must be relative to the working copy", "svn_paths")
    if not _PATH_CHARS.match(path):
        raise BadInput(f"svn_paths: {raw!r} contains characters that are not allowed", "svn_paths")
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise BadInput(f"svn_paths: {raw!r} may not contain '..'", "svn_paths")
    if any(p.startswith("-") for p in parts):
        raise BadInput(f"svn_paths: {raw!r} may not start with '-'", "svn_paths")
    if any(p == "" for p in parts):
        raise BadInput(f"svn_paths: {raw!r} has an empty segment", "svn_paths")
    return path


def svn_paths(raw: object) -> list[str]:
    """Return a de-duplicated list of clean SVN paths; empty means the whole working copy."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [line for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, list):
        raise BadInput("svn_paths: must be a list of strings", "svn_paths")
    if len(raw) > MAX_PATHS:
        raise BadInput(f"svn_paths: at most {MAX_PATHS} paths", "svn_paths")
    clean: list[str] = []
    for item in raw:
        p = svn_path(item)
        if p == ".":
            return []
        if p not in clean:
            clean.append(p)
    return clean


def svn_revision(raw: object) -> int | None:
    """Return a positive revision number, or None for HEAD."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise BadInput("svn_revision: must be a positive integer", "svn_revision")
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if not isinstance(raw, int) or raw < 1:
        raise BadInput("svn_revision: must be a positive integer", "svn_revision")
    return raw


def reason(raw: object, field: str = "reason") -> str:
    """Return a non-empty reason text of bounded length."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput(f"{field}: required", field)
    if len(raw) > MAX_REASON:
        raise BadInput(f"{field}: at most {MAX_REASON} characters", field)
    return raw.strip()


def comment(raw: object) -> str:
    """Return an optional comment of bounded length."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise BadInput("comment: must be a string", "comment")
    if len(raw) > MAX_REASON:
        raise BadInput(f"comment: at most {MAX_REASON} characters", "comment")
    return raw.strip()


def name(raw: object, field: str = "name") -> str:
    """Return a lowercase identifier used for users and projects."""
    if not isinstance(raw, str) or not _NAME.match(raw):
        raise BadInput(f"{field}: use 1-64 lowercase letters, digits, '-' or '_'", field)
    return raw

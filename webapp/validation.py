"""Validation of what users type: SVN paths, revisions, whole numbers, free text, names."""

from __future__ import annotations

import re

from .errors import BadInput

MAX_REASON = 4000
MAX_PATHS = 200
MAX_PATH_LEN = 1024
# The largest value an INTEGER column holds on every database Ferry runs on (PostgreSQL's is 32-bit);
# also the largest id a URL may name.
MAX_INT = 2**31 - 1
# Letters, digits and a few punctuation marks that SVN paths of web projects use; no shell metacharacters.
_PATH_CHARS = re.compile(r"[\w.@+,=~% /-]+")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# ASCII digits only: str.isdigit() also accepts "²" and Arabic-Indic digits, which int() then refuses or reads.
_DIGITS = re.compile(r"[0-9]{1,30}")
# C0 controls but tab and newline, DEL, and C1 controls: NUL breaks svn and git, ESC starts ANSI/OSC sequences.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def integer(raw: object, field: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """Return a whole number in [minimum, maximum] from an int or a string of ASCII digits, or raise BadInput."""
    if isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
        value = int(raw.strip())
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise BadInput(
            "%(field)s: must be a whole number from %(low)s to %(high)s", field, field=field, low=minimum, high=maximum
        )
    if not minimum <= value <= maximum:
        raise BadInput(
            "%(field)s: must be a whole number from %(low)s to %(high)s", field, field=field, low=minimum, high=maximum
        )
    return value


def plain_text(raw: str, field: str, single_line: bool = False) -> str:
    """Return `raw` with CRLF line ends made LF, or raise BadInput when it holds a control character.

    Newline and tab are allowed in multi-line text; `single_line` refuses them too.
    """
    text = raw.replace("\r\n", "\n")
    bad = (_CONTROL_OR_LINE if single_line else _CONTROL).search(text)
    if bad:
        raise BadInput(
            "%(field)s: control character U+%(code)04X is not allowed", field, field=field, code=ord(bad.group())
        )
    return text


def svn_path(raw: object, field: str = "svn_paths") -> str:
    """Return a clean relative SVN path ("." for the whole tree) or raise BadInput naming `field`."""
    if not isinstance(raw, str):
        raise BadInput("%(field)s: each path must be a string", field, field=field)
    path = raw.strip().strip("/") if raw.strip() not in ("", "/") else "."
    if len(path) > MAX_PATH_LEN:
        raise BadInput("%(field)s: path too long", field, field=field)
    if raw.strip().startswith("/"):
        raise BadInput("%(field)s: %(path)r must be relative to the working copy", field, field=field, path=raw)
    if not _PATH_CHARS.fullmatch(path):
        raise BadInput("%(field)s: %(path)r contains characters that are not allowed", field, field=field, path=raw)
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise BadInput("%(field)s: %(path)r may not contain '..'", field, field=field, path=raw)
    if any(p.startswith("-") for p in parts):
        raise BadInput("%(field)s: %(path)r may not start with '-'", field, field=field, path=raw)
    if any(p == "" for p in parts):
        raise BadInput("%(field)s: %(path)r has an empty segment", field, field=field, path=raw)
    return path


def _path_list(raw: object, field: str) -> list:
    """Return a list of raw path entries from a list or newline-separated text (blank lines dropped)."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [line for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, list):
        raise BadInput("%(field)s: must be a list of strings", field, field=field)
    if len(raw) > MAX_PATHS:
        raise BadInput("%(field)s: at most %(n)s paths", field, field=field, n=MAX_PATHS)
    return raw


def svn_paths(raw: object) -> list[str]:
    """Return a de-duplicated list of clean SVN paths; empty means the whole working copy."""
    clean: list[str] = []
    for item in _path_list(raw, "svn_paths"):
        p = svn_path(item)
        if p == ".":
            return []
        if p not in clean:
            clean.append(p)
    return clean


def shared_paths(raw: object) -> list[str]:
    """Return a project's shared paths: each a file or directory inside the release, never the whole tree."""
    clean: list[str] = []
    for item in _path_list(raw, "shared_paths"):
        if isinstance(item, str) and not item.strip():
            raise BadInput(
                "shared_paths: an empty entry would share the whole release; name a path inside it", "shared_paths"
            )
        if isinstance(item, str) and item.strip() in (".", "/", "./"):
            raise BadInput(
                "shared_paths: %(path)r would share the whole release; name a path inside it", "shared_paths", path=item
            )
        p = svn_path(item, "shared_paths")
        if "." in p.split("/"):
            raise BadInput(
                "shared_paths: %(path)r must name a path inside the release, without '.'", "shared_paths", path=item
            )
        if p not in clean:
            clean.append(p)
    return clean


def svn_revision(raw: object) -> int | None:
    """Return a positive revision number, or None for HEAD."""
    if raw is None or raw == "":
        return None
    return integer(raw, "svn_revision", minimum=1)


def reason(raw: object, field: str = "reason") -> str:
    """Return a non-empty reason text of bounded length, without control characters."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput("%(field)s: required", field, field=field)
    if len(raw) > MAX_REASON:
        raise BadInput("%(field)s: at most %(n)s characters", field, field=field, n=MAX_REASON)
    return plain_text(raw, field).strip()


def comment(raw: object) -> str:
    """Return an optional comment of bounded length, without control characters."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise BadInput("comment: must be a string", "comment")
    if len(raw) > MAX_REASON:
        raise BadInput("comment: at most %(n)s characters", "comment", n=MAX_REASON)
    return plain_text(raw, "comment").strip()


def name(raw: object, field: str = "name") -> str:
    """Return a lowercase identifier used for users and projects."""
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        raise BadInput("%(field)s: use 1-64 lowercase letters, digits, '-' or '_'", field, field=field)
    return raw

"""Company logins: check a user name and password against the company's LDAP directory (ldap3).

The flow: bind with the service account, search the user (the typed name escaped into
FERRY_LDAP_USER_FILTER, so `*)(uid=*` matches nobody), then bind as the user's DN with the password. An
empty password is refused before any bind (LDAP treats a DN with an empty password as an anonymous bind,
which "succeeds"). Members of FERRY_LDAP_ADMIN_GROUPS (group `member`/`uniqueMember`/`memberUid`, or the
user's `memberOf`) are admins. The first login creates the local user without a password.
"""

from __future__ import annotations

from dataclasses import dataclass

import ldap3
from flask import current_app
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError
from ldap3.utils.conv import escape_filter_chars
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import validation
from .errors import BadInput
from .models import User

UNREACHABLE = "company directory unreachable"


class DirectoryUnreachable(Exception):
    """The directory did not answer (down, timed out) or the service account could not bind."""


@dataclass(frozen=True)
class DirectoryUser:
    """A person the directory vouched for."""

    dn: str
    username: str
    is_admin: bool


def enabled() -> bool:
    """Tell whether company logins are configured (FERRY_LDAP_URL)."""
    return bool(current_app.config.get("FERRY_LDAP_URL"))


def admin_groups() -> list[str]:
    """Return the admin group DNs (FERRY_LDAP_ADMIN_GROUPS, separated by ";": DNs contain commas)."""
    raw = current_app.config.get("FERRY_LDAP_ADMIN_GROUPS") or ""
    return [g.strip() for g in raw.split(";") if g.strip()]


def _server() -> ldap3.Server:
    """Return the configured directory server."""
    timeout = int(current_app.config.get("FERRY_LDAP_TIMEOUT", 5))
    url = current_app.config["FERRY_LDAP_URL"].strip().rstrip("/")  # ldap3 refuses "ldap://host:389/"
    return ldap3.Server(url, connect_timeout=timeout, get_info=ldap3.NONE)


def _connection(server: ldap3.Server, dn: str | None, password: str | None) -> ldap3.Connection:
    """Return an unbound connection with the configured timeout."""
    timeout = int(current_app.config.get("FERRY_LDAP_TIMEOUT", 5))
    return ldap3.Connection(server, user=dn, password=password, receive_timeout=timeout, raise_exceptions=False)


def authenticate(username: str, password: str) -> DirectoryUser | None:
    """Return the directory user when `password` is theirs, None when not; raise DirectoryUnreachable."""
    if not username or not password:
        return None  # an empty password would be an anonymous bind, which LDAP servers accept
    config = current_app.config
    try:
        server = _server()
        service = _connection(server, config["FERRY_LDAP_BIND_DN"] or None, config["FERRY_LDAP_BIND_PASSWORD"] or None)
        try:
            if not service.bind():
                current_app.logger.error("LDAP service bind failed: %s", (service.result or {}).get("description"))
                raise DirectoryUnreachable(UNREACHABLE)
            query = config["FERRY_LDAP_USER_FILTER"].format(username=escape_filter_chars(username))
            attr = config.get("FERRY_LDAP_USERNAME_ATTR") or "uid"
            service.search(
                config["FERRY_LDAP_USER_BASE"], query, ldap3.SUBTREE, attributes=[attr, "memberOf"], size_limit=2
            )
            entries = list(service.entries)
            if len(entries) != 1:
                return None  # unknown, or ambiguous: never guess which person this is
            entry = entries[0]
            dn = entry.entry_dn
            user_conn = _connection(server, dn, password)
            try:
                if not user_conn.bind():
                    return None
            finally:
                _close(user_conn)
            values = entry.entry_attributes_as_dict
            name = (values.get(attr) or [username])[0]
            member_of = {str(g).lower() for g in values.get("memberOf") or []}
            return DirectoryUser(dn=dn, username=str(name), is_admin=_is_admin(service, dn, str(name), member_of))
        finally:
            _close(service)
    except (LDAPSocketOpenError, LDAPException) as e:
        current_app.logger.warning("LDAP login for %r: directory error %s", username, type(e).__name__)
        raise DirectoryUnreachable(UNREACHABLE) from e


def _close(conn: ldap3.Connection) -> None:
    """Unbind and close the socket (ldap3 leaves it open when connecting failed)."""
    try:
        conn.unbind()
    finally:
        if conn.socket is not None:
            conn.socket.close()


def _is_admin(service: ldap3.Connection, dn: str, name: str, member_of: set[str]) -> bool:
    """Tell whether the user belongs to one of the admin groups."""
    for group in admin_groups():
        if group.lower() in member_of:
            return True
        query = (
            f"(|(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)})"
            f"(memberUid={escape_filter_chars(name)}))"
        )
        if service.search(group, query, ldap3.BASE, attributes=["cn"]) and service.entries:
            return True
    return False


def sync_user(session: Session, found: DirectoryUser) -> User | None:
    """Return the local user for a directory login: created on the first one, admin flag from the groups.

    None when a local account (with a Ferry password) has that name: the directory never logs into it.
    """
    try:
        username = validation.name(found.username.lower(), "username")
    except BadInput as e:
        raise BadInput(
            "username: the directory name %(name)r cannot be a Ferry user name", "username", name=found.username
        ) from e
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, password_hash="", auth_source="ldap", is_admin=found.is_admin)
        session.add(user)
    elif user.auth_source != "ldap":
        return None
    else:
        user.is_admin = found.is_admin
    session.flush()
    return user

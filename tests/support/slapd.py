"""A real OpenLDAP server for tests: slapd on a free local port, an mdb database in a temp dir, seeded by ldapadd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SUFFIX = "dc=example,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-pw-for-tests"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=ferry,{SUFFIX}"
SERVICE_PW = "service-pw"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


@dataclass
class Directory:
    """A running slapd: its URL, the service account and the seeded people and groups."""

    url: str
    port: int
    process: subprocess.Popen
    admin_group: str
    staff_group: str

    def user_dn(self, uid: str) -> str:
        """Return a seeded person's DN."""
        return f"uid={uid},{PEOPLE}"

    def stop(self) -> None:
        """Stop slapd (the server-down case)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def _in_ci() -> bool:
    """Tell whether we run under CI (env CI set to anything but empty/0/false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    """Return a local TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed(people: dict[str, str]) -> str:
    """Return the LDIF of the tree: base, people (uid: password), an admin group and a staff group."""
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: ferry\n"
        f"userPassword: {SERVICE_PW}",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
    ]
    for uid, password in people.items():
        entries.append(
            f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
            f"mail: {uid}@example.test\nuserPassword: {password}"
        )
    entries.append(
        f"dn: cn=ferry-admins,{GROUPS}\nobjectClass: groupOfNames\ncn: ferry-admins\nmember: uid=boss,{PEOPLE}"
    )
    entries.append(
        f"dn: cn=staff,{GROUPS}\nobjectClass: groupOfUniqueNames\ncn: staff\nuniqueMember: uid=alice,{PEOPLE}"
    )
    return "\n\n".join(entries) + "\n"


PEOPLE_PASSWORDS = {"alice": "alice-pw-1", "boss": "boss-pw-1", "carol": "carol-pw-1", "admin": "dir-admin-pw"}


def start_slapd(workdir: Path) -> Directory:
    """Start slapd with a generated slapd.conf and mdb database under `workdir`, seeded; fail loudly."""
    slapd = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    ldapadd = shutil.which("ldapadd")
    if not slapd or not ldapadd:
        message = "slapd/ldap-utils missing (apt-get install slapd ldap-utils; scripts/install --dev does)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the LDAP tests", pytrace=False)
        pytest.skip(message)
    db_dir = workdir / "db"
    db_dir.mkdir(parents=True)
    includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
    conf = workdir / "slapd.conf"
    conf.write_text(
        f"{includes}\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {workdir / 'slapd.pid'}\n"
        f'database mdb\nsuffix "{SUFFIX}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PW}\n'
        f"directory {db_dir}\nmaxsize 10485760\n"
        # Users may bind (auth) but read nothing; the service account reads everything.
        f'access to attrs=userPassword by dn.exact="{SERVICE_DN}" none by anonymous auth by * none\n'
        f'access to * by dn.exact="{SERVICE_DN}" read by * none\n'
    )
    port = _free_port()
    url = f"ldap://127.0.0.1:{port}/"
    with open(workdir / "slapd.log", "w") as log:  # slapd keeps its own copy of the descriptor
        process = subprocess.Popen([slapd, "-h", url, "-f", str(conf), "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"slapd did not start: {(workdir / 'slapd.log').read_text()[-2000:]}", pytrace=False)
            time.sleep(0.05)
    seeded = subprocess.run(
        [ldapadd, "-x", "-H", url, "-D", ROOT_DN, "-w", ROOT_PW],
        input=_seed(PEOPLE_PASSWORDS),
        text=True,
        capture_output=True,
    )
    if seeded.returncode != 0:
        process.kill()
        pytest.fail(f"ldapadd failed: {seeded.stderr}", pytrace=False)
    return Directory(
        url=url,
        port=port,
        process=process,
        admin_group=f"cn=ferry-admins,{GROUPS}",
        staff_group=f"cn=staff,{GROUPS}",
    )


@pytest.fixture
def directory_server(tmp_path):
    """Return a running, seeded slapd (stopped afterwards)."""
    server = start_slapd(tmp_path / "slapd")
    yield server
    server.stop()

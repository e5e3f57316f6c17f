"""Driving tickets through the JSON API in tests."""

from __future__ import annotations


class Flow:
    """Shortcuts for filing and moving tickets through the API as the world's users."""

    def __init__(self, client, world) -> None:
        self.client = client
        self.world = world

    def file(self, paths=None, reason="change", user="dev", project="site") -> int:
        """File a ticket and return its id."""
        body = {"project": project, "reason": reason, "svn_paths": paths or []}
        r = self.client.post("/api/tickets", json=body, headers=self.world.headers(user))
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

    def act(self, tid: int, action: str, user: str = "dev", expect: int = 200, **body) -> dict:
        """Fire an action and check the status code."""
        r = self.client.post(f"/api/tickets/{tid}/{action}", json=body, headers=self.world.headers(user))
        assert r.status_code == expect, (action, r.get_json())
        return r.get_json()

    def get(self, tid: int, user: str = "dev") -> dict:
        """Return a ticket's JSON."""
        return self.client.get(f"/api/tickets/{tid}", headers=self.world.headers(user)).get_json()

    def staged(self, paths=None, reason="change") -> int:
        """File a ticket and run its staging update; return the id of the ticket now in testing."""
        tid = self.file(paths, reason)
        self.world.work()
        assert self.get(tid)["state"] == "testing", self.get(tid)["last_error"]
        return tid

    def approve(self, tid: int) -> None:
        """Mark test passed and approve as the lead."""
        self.act(tid, "test-passed")
        self.act(tid, "approve", user="lead")

    def release(self, tid: int) -> dict:
        """Release an approved ticket, run the worker, and return the ticket."""
        self.act(tid, "release")
        self.world.work()
        return self.get(tid)

    def ship(self, files: dict, reason="change") -> dict:
        """Commit files to svn, then file, stage, approve and release a ticket for them; return it."""
        self.world.svn.commit(files, reason)
        tid = self.staged(reason=reason)
        self.approve(tid)
        t = self.release(tid)
        assert t["state"] == "released", t["last_error"]
        return t

    def rollback(self, version: int, reason="bad release", user="dev") -> int:
        """File a rollback ticket and return its id."""
        r = self.client.post(
            "/api/rollbacks",
            json={"project": "site", "version": version, "reason": reason},
            headers=self.world.headers(user),
        )
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

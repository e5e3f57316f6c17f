"""Ansible filter `ferry_fleet`: what the hosts' results of a release run say about the fleet.

release.yml's last plays ask it whether anything failed once a host had switched (then every host goes back
to the live version). The same questions in Jinja (selectattr over every host's hostvars, once per variable)
cost ~50 ms of templating per release even when nothing failed; here they are one pass over the hosts that
only looks at whether a result exists and whether it carries Ferry's `ferry` key.
"""

from __future__ import annotations


def _get(hostvars, host: str, name: str):
    """Return one variable of a host, or None when the host has no such variable."""
    try:
        values = hostvars[host]
        return values[name] if name in values else None
    except KeyError:
        return None


def fleet(hostvars, hosts, batched=False, mode="atomic", phase="full", switch_hosts=()) -> dict:
    """Count the hosts that staged and switched N, and tell what broke.

    - switch_broken: all at once, some hosts switched and others did not (a switch failed or a host was lost);
    - hook_broken / batch_broken: a hook, or a gray-release batch (switch, hooks, health check), failed somewhere;
    - batch_lost: a gray batch host dropped out (unreachable) while others went live.
    """
    staged = switched = 0
    hook_broken = batch_broken = False
    for host in hosts or []:
        stage, switch = _get(hostvars, host, "ferry_stage"), _get(hostvars, host, "ferry_switch")
        staged += isinstance(stage, dict) and "ferry" in stage
        switched += isinstance(switch, dict) and "ferry" in switch
        hook_broken = hook_broken or _get(hostvars, host, "ferry_hook_error") is not None
        batch_broken = batch_broken or _get(hostvars, host, "ferry_batch_error") is not None
    done = switched if mode == "atomic" else staged
    return {
        "staged": staged,
        "switched": switched,
        "switch_broken": not batched and 0 < switched < staged,
        "hook_broken": hook_broken,
        "batch_broken": batch_broken,
        "batch_lost": bool(batched) and phase != "abort" and done < len(switch_hosts or []),
    }


class FilterModule:
    """Register the filter."""

    def filters(self):
        """Return the filters of this module."""
        return {"ferry_fleet": fleet}

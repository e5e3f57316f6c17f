"""Reading which hosts a project's inventory group holds."""

from __future__ import annotations

from pathlib import Path


def group_hosts(inventory_file: Path, group: str) -> list[str]:
    """Return the host names of `group` in an Ansible inventory file (any format Ansible reads)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory_file)])
    if group not in manager.groups:
        return []
    return sorted(h.name for h in manager.groups[group].get_hosts())

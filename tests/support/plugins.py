"""Import Ferry's Ansible plugins (playbooks/*_plugins) by path, as Ansible itself loads them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PLAYBOOKS = Path(__file__).resolve().parent.parent.parent / "playbooks"


def load_plugin(name: str, kind: str = "action_plugins") -> ModuleType:
    """Import playbooks/<kind>/<name>.py under a test-only module name (once per name)."""
    module_name = f"ferry_test_{kind}_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, PLAYBOOKS / kind / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module

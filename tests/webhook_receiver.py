"""The receiver's side of a webhook's signatures, for the tests: the example receiver that
account owners are pointed to, ``docs/webhook_receiver.py`` (standard library only, no code of
the service), loaded as a module so that the tests check that script as well."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "webhook_receiver.py"
_spec = importlib.util.spec_from_file_location("webhook_receiver", _SCRIPT)
assert _spec is not None and _spec.loader is not None
receiver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(receiver)

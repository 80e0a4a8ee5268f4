"""One router per resource, combined in ``enforcement.api.app``."""

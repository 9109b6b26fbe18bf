"""Falcon resources, one module per concern; each receives the process's Services in ``__init__``."""

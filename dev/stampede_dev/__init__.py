"""Stampede's tooling: the ``stampede`` command, the local stack, the demo, the burst and the sale audit.

It may import the core and every component; neither the core nor any component imports it (import-linter
enforces both), so nothing a Pod runs depends on the tooling.
"""

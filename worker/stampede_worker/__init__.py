"""The settle worker: procrastinate jobs that turn pending reservations into orders or compensations.

``settle`` holds the logic as plain functions (testable without a queue), ``tasks`` registers it with the
project's procrastinate App, ``__main__`` is the worker process (``python -m stampede_worker``)."""

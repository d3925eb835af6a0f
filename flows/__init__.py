"""regionrank flows: Prefect orchestration of the library stages, and the `regionrank` CLI.

The only package that imports prefect. Library loggers (``extractors``, ``encoders``,
``index``, ``storage``) are attached to flow-run logs through Prefect's
``logging.extra_loggers`` setting; their level is raised to INFO here so that their
progress messages reach the run logs (Prefect copies handlers, not levels).
"""

import logging

LIBRARY_LOGGERS = ("regionrank.extractors", "regionrank.encoders", "regionrank.index", "regionrank.storage")

for _name in LIBRARY_LOGGERS:
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(logging.INFO)

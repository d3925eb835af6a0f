"""Benchmarks, one module per stage, each printing its figures next to a baseline measured in the same run.

Run them from the repository root as modules (``python -m bench.storage --quick``); they import only
``regionrank`` public names, need no import-path edits, and each has ``--help``.
"""

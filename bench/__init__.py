"""Benchmarks, one module per stage, each printing its figures next to a baseline measured in the same run.

Run them from the repository root as modules (``python -m bench.storage --quick``); they import only
``regionrank`` public names, never edit ``sys.path``, and each has ``--help``.
"""

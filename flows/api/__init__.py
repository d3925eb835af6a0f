"""The regionrank search service: an HTTP API and a web page over a workspace's index (``regionrank api``).

``engine`` keeps the current index version open and switches versions hot; ``backend`` is the one
door into the library; ``app`` holds the routes; ``service`` runs it; ``client`` is what
``regionrank search`` uses to find and query a running service. The page lives in ``web/``.
"""

"""The supervisor: runs a session's workers, watches them, restarts them, stops them in order.

``supervisor`` holds the lifecycle (start levels, ordered stop, restarts),
``controller`` answers control requests (one handler per request, each
docstring its spec), ``process`` is one worker's OS process and its restart
arithmetic.
"""

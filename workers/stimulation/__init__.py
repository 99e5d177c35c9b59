"""Stimulation (issue 6, in progress): so far only the safety checks in :mod:`.safety`.

No worker kind is defined here yet; the config cannot name ``stimulation`` until
the worker, its backends and its control-plane commands exist.
"""

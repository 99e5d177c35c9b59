"""What the operating system gives a process, one small module each.

``identity`` (a process's pid + start time, and whether it still lives), ``clock`` (the one
host clock every timestamp uses), ``timer`` (fine sleeps), ``scheduling`` (real-time
priority), ``console`` (a closed Windows console), ``files`` (atomic replace with retries) and
``output`` (writing to a terminal that may stop reading). Nothing here imports the rest of
``pipeline`` but ``errors``: every other layer may use these.
"""

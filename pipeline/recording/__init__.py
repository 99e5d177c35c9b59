"""The recording format and everything that reads it; no running rig needed.

``format`` defines the files (constants, record types, the manifest, crash
repair); ``readback`` opens a recording (``pipeline.open_recording``) as
``views`` that ``selection`` indexes and ``prefetch`` reads ahead; ``inspect``
checks a recording; ``nwb`` exports it. The recorder that writes the format is
the ``workers.recording`` worker. Nothing here imports the control plane.
"""

"""The Lab Streaming Layer bridge (extra ``lsl``): two worker kinds.

- ``lsl_outlet`` (:mod:`~workers.lsl.outlet`): streams of the rig out to LSL;
- ``lsl_inlet`` (:mod:`~workers.lsl.inlet`): an LSL stream from the network into a ring.

What they share (pylsl, formats, the clock map) is :mod:`~workers.lsl.common`. A package
with several kinds names each ``<NAME>_WORKER``; its kinds are ``<package>_<name>``.
"""

from workers.lsl.inlet import WORKER as INLET_WORKER
from workers.lsl.outlet import WORKER as OUTLET_WORKER

__all__ = ["INLET_WORKER", "OUTLET_WORKER"]

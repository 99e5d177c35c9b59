"""The control plane: the wire and the discovery file.

``messages`` is the protocol (one tagged union of msgspec Structs), ``bus`` the
ZeroMQ sockets that carry it (the supervisor's ROUTER + PUB, a client's DEALER +
SUB), ``session`` the discovery file by which clients find a running rig.
"""

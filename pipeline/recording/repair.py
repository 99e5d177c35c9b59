"""Repair of a segment whose writer crashed (or hit a full disk), so plain h5py opens it.

A segment whose writer was killed while in SWMR mode keeps the "open for write"
flags in its superblock, and plain ``h5py.File(path)`` refuses it.
:func:`clear_consistency_flags` clears those flags in place and rewrites the
superblock checksum (HDF5's own ``lookup3``), which is what HDF5's ``h5clear -s``
does; :func:`repair` then cuts what was never flushed. The data is whatever the
writer had flushed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.recording.format import FLAGS_AT, SIGNATURE, open_for_update

_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum HDF5 puts in its metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    pos = 0
    while length > 12:
        x, y, z = struct.unpack_from("<III", data, pos)
        a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
        a = (a - c) & _M32 ^ _rot(c, 4)
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rot(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rot(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32 ^ _rot(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32 ^ _rot(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32 ^ _rot(b, 4)
        b = (b + a) & _M32
        length -= 12
        pos += 12
    if length == 0:
        return c
    x, y, z = struct.unpack("<III", data[pos:] + bytes(12 - length))
    a, b, c = (a + x) & _M32, (b + y) & _M32, (c + z) & _M32
    c = (c ^ b) - _rot(b, 14) & _M32
    a = (a ^ c) - _rot(c, 11) & _M32
    b = (b ^ a) - _rot(a, 25) & _M32
    c = (c ^ b) - _rot(b, 16) & _M32
    a = (a ^ c) - _rot(c, 4) & _M32
    b = (b ^ a) - _rot(a, 14) & _M32
    c = (c ^ b) - _rot(b, 24) & _M32
    return c


def stored_end_of_file(path: Path) -> int:
    """The end-of-file address the superblock records (version 2/3 superblocks)."""
    with open(path, "rb") as f:
        head = f.read(12 + 4 * 8)
    size_of_offsets = head[9]
    at = 12 + 2 * size_of_offsets  # after the base and superblock-extension addresses
    return int.from_bytes(head[at : at + size_of_offsets], "little")


#: The tables of a version 1 segment, and the field that is never 0 in a row really written.
_V1_TABLES = (("events", "time_ns"), ("gaps", "end_ns"), ("provenance/restarts", "time_ns"))


def repair(path: Path) -> list[str]:
    """Make a segment whose writer crashed (or hit a full disk) open with plain h5py.

    1. Clear the "open for write / SWMR" flags (as ``h5clear -s``).
    2. If a failed write left the file shorter than its superblock says, extend
       it to that length (the missing bytes read as zeros).
    3. Cut rows that were never flushed: every table back to the row count the
       writer stored in ``/flushed`` at its last flush. (Version 1 files have no
       counts: there only trailing rows that are all zero are cut.) Rows are
       never cut for what they hold: timestamps that go backwards are data.

    Returns what was done, for the log and the manifest.
    """

    done = []
    if clear_consistency_flags(path):
        done.append("cleared the open-for-write flags")
    end = stored_end_of_file(path)
    if os.path.getsize(path) < end:
        os.truncate(path, end)
        done.append(f"extended to the recorded end of file ({end} bytes)")
    with open_for_update(path) as file:
        if "flushed" in file:
            targets = [(row["dataset"].decode(), int(row["rows"])) for row in file["flushed"][:]]
        else:
            targets = _v1_written_rows(file)
        for name, rows in targets:
            dataset = file.get(name)
            if dataset is None or len(dataset) <= rows:
                continue
            before = len(dataset)
            dataset.resize(rows, axis=0)
            if name.endswith("/data"):
                file[name[: -len("data")] + "timestamps_ns"].resize(rows, axis=0)
            done.append(f"cut {name} from {before} to {rows} rows (never flushed)")
    return done


def _v1_written_rows(file: Any) -> list[tuple[str, int]]:
    """Version 1 segments: per table, the rows up to its last one that is not all zero."""
    columns = [
        (group["data"].name.lstrip("/"), group["timestamps_ns"][:])
        for group in file.get("streams", {}).values()
    ]
    columns += [(table, file[table][key]) for table, key in _V1_TABLES if table in file]
    targets = []
    for name, values in columns:
        nonzero = np.flatnonzero(values)
        targets.append((name, int(nonzero[-1]) + 1 if len(nonzero) else 0))
    return targets


def clear_consistency_flags(path: Path) -> bool:
    """Clear a crashed writer's "open for write / SWMR" flags, as ``h5clear -s`` does.

    Returns False when the flags were already clear. Only superblock versions
    2 and 3 (what ``libver="latest"`` writes) carry these flags.
    """
    with open(path, "r+b") as f:
        head = f.read(16)
        if head[:8] != SIGNATURE or head[8] not in (2, 3):
            raise ValueError(f"{path} is not an HDF5 file with a version 2/3 superblock")
        if head[FLAGS_AT] == 0:
            return False
        size_of_offsets = head[9]
        checksum_at = 12 + 4 * size_of_offsets
        f.seek(0)
        superblock = bytearray(f.read(checksum_at + 4))
        stored = struct.unpack_from("<I", superblock, checksum_at)[0]
        if lookup3(bytes(superblock[:checksum_at])) != stored:
            raise ValueError(f"{path}: the superblock checksum does not match; not repairing")
        superblock[FLAGS_AT] = 0
        struct.pack_into("<I", superblock, checksum_at, lookup3(bytes(superblock[:checksum_at])))
        f.seek(0)
        f.write(superblock)
        f.flush()
        os.fsync(f.fileno())
    return True

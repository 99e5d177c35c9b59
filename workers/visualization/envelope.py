"""The scope's picture as numpy arrays: a sweeping min/max column buffer, rasterized.

A stream is shown as ``width`` columns covering ``window_s``; each column keeps
the minimum and maximum of every channel over the frames that fall in it
(min/max decimation, so a one-sample spike still shows). New frames overwrite
columns from left to right and wrap around (a envelope, as on an oscilloscope),
so each refresh costs only the frames that arrived since the last one.
:func:`rasterize` turns a page of channels into an image (``Format_RGB32`` pixels, one
uint32 each): stacked traces,
each channel in its own band, plus spike ticks, stimulation markers, and red
band edges where a trace goes past its band (clipped by the gain).
"""

from __future__ import annotations

import numpy as np


def rgb32(r: int, g: int, b: int) -> np.uint32:
    """One opaque pixel as Qt's ``Format_RGB32`` holds it: the uint32 ``0xffRRGGBB``.

    Qt draws an image in that format onto a window without converting a pixel
    (an RGBA image is converted whole, every frame), and a uint32 value is the
    same pixel on either byte order."""
    return np.uint32(0xFF000000 | r << 16 | g << 8 | b)


def rgb(pixel: np.uint32) -> tuple[int, int, int]:
    """The (red, green, blue) of a ``Format_RGB32`` pixel."""
    value = int(pixel)
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


TRACE = rgb32(40, 220, 90)
SPIKE = rgb32(255, 200, 40)
MARKER = rgb32(255, 60, 60)
CURSOR = rgb32(90, 90, 90)
CLIP = rgb32(255, 0, 0)  # a band's edge where its trace goes past it
BACKGROUND = rgb32(0, 0, 0)


class Envelope:
    """Per-column min/max of every channel over the last ``window_s``."""

    def __init__(self, channels: int, sample_rate: float, window_s: float, width: int) -> None:
        self.channels = channels
        self.sample_rate = sample_rate
        self.width = width
        self.frames_per_column = max(1.0, window_s * sample_rate / width)
        self.low = np.zeros((width, channels), np.float32)
        self.high = np.zeros((width, channels), np.float32)
        self.filled = np.zeros(width, bool)
        self.spikes = np.zeros((width, channels), bool)
        self.markers = np.zeros(width, bool)
        self.dirty = np.ones(width, bool)  # columns changed since the last picture
        self.frame = 0  # frames seen since this envelope began

    @property
    def column(self) -> int:
        """The column the next frame goes into (the envelope's cursor)."""
        return int(self.frame // self.frames_per_column) % self.width

    def add(self, data: np.ndarray, first_channel: int = 0) -> None:
        """Fold ``data`` (frames x channels) into its columns: every channel, or (a display
        filter's page) the channels from ``first_channel`` on; the others keep what they
        held."""
        n = len(data)
        if n == 0:
            return
        shown = slice(first_channel, first_channel + data.shape[1])
        absolute = ((self.frame + np.arange(n)) // self.frames_per_column).astype(np.int64)
        starts = np.flatnonzero(np.concatenate(([True], absolute[1:] != absolute[:-1])))
        low, high = _min_max(data, starts)
        touched = absolute[starts] % self.width
        # A run that begins a column replaces what the column held one envelope ago.
        fresh = np.ones(len(starts), bool)
        if self.frame > 0:
            fresh[0] = absolute[0] != (self.frame - 1) // self.frames_per_column
        keep = ~fresh[:, None]
        held_low, held_high = self.low[touched, shown], self.high[touched, shown]
        self.low[touched, shown] = np.where(keep, np.minimum(held_low, low), low)
        self.high[touched, shown] = np.where(keep, np.maximum(held_high, high), high)
        self.spikes[touched[fresh]] = False
        self.markers[touched[fresh]] = False
        self.filled[touched] = True
        self.dirty[touched] = True
        self.dirty[self.column] = True  # the cursor moved off its old column...
        self.frame += n
        self.dirty[self.column] = True  # ...and onto a new one

    def clear(self) -> None:
        """Forget every column (what it showed no longer means the same: a filter restarted)."""
        self.low[:] = 0
        self.high[:] = 0
        self.filled[:] = False
        self.dirty[:] = True

    def mark_spike(self, frame_offset: int, channel: int) -> None:
        """A spike ``frame_offset`` frames before the newest frame, on ``channel`` (0-based)."""
        self.mark_spikes(np.array([frame_offset]), np.array([channel]))

    def mark_spikes(self, frame_offsets: np.ndarray, channels: np.ndarray) -> None:
        """Spikes, each ``frame_offsets[i]`` frames before the newest frame on ``channels[i]``
        (0-based); those of channels the envelope does not have, or after its newest frame
        (a negative offset), are left out."""
        shown = (channels >= 0) & (channels < self.channels) & (frame_offsets >= 0)
        columns = self._columns_of(frame_offsets[shown])
        self.spikes[columns, channels[shown]] = True
        self.dirty[columns] = True

    def mark(self, frame_offsets: np.ndarray) -> None:
        """Stimulation markers ``frame_offsets`` frames before the newest frame (negative
        offsets, after it, are left out)."""
        columns = self._columns_of(frame_offsets[frame_offsets >= 0])
        self.markers[columns] = True
        self.dirty[columns] = True

    def _columns_of(self, frame_offsets: np.ndarray) -> np.ndarray:
        frames = np.maximum(0, self.frame - 1 - frame_offsets)
        return (frames // self.frames_per_column).astype(np.int64) % self.width


def stream_columns(channel_ids: np.ndarray, stream_ids: list[int]) -> np.ndarray:
    """The sweep's channels (0-based columns of the stream) of device channel ids, by
    the stream's ``channel_ids`` (a Blackrock stream's); an id not in them, or any id
    when the stream has none, is taken as the column itself."""
    ids = np.asarray(stream_ids, np.int64)
    channels = np.asarray(channel_ids, np.int64)
    if not len(ids) or not len(channels):
        return channels
    order = np.argsort(ids, kind="stable")
    place = np.minimum(np.searchsorted(ids, channels, sorter=order), len(ids) - 1)
    return np.where(ids[order[place]] == channels, order[place], channels)


#: Up to this many columns in one add, each is reduced on its own; beyond, reduceat.
_LOOP_COLUMNS = 256


def _min_max(data: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-run minimum and maximum of every channel (runs of rows begin at ``starts``), as
    float32. A contiguous block's ``min(axis=0)`` is 20-40x faster than
    ``minimum.reduceat(axis=0)`` (which walks the channels of each row one by one): at
    1024 channels x 30 kHz that was 70 % of the scope's time."""
    if len(starts) > _LOOP_COLUMNS:
        low = np.minimum.reduceat(data, starts, axis=0)
        high = np.maximum.reduceat(data, starts, axis=0)
        return low.astype(np.float32, copy=False), high.astype(np.float32, copy=False)
    low = np.empty((len(starts), *data.shape[1:]), np.float32)
    high = np.empty_like(low)
    ends = [*starts[1:].tolist(), len(data)]
    for run, (start, end) in enumerate(zip(starts.tolist(), ends, strict=True)):
        block = data[start:end]
        low[run] = block.min(axis=0)
        high[run] = block.max(axis=0)
    return low, high


class Picture:
    """The scope's image of a envelope, redrawn column by column as the envelope changes.

    After :meth:`draw`, ``changed`` lists the runs of columns drawn again, as
    ``(first, stop)`` pairs: only those need painting on screen.
    """

    def __init__(self) -> None:
        self.pixels: np.ndarray | None = None
        self.layout: tuple | None = None
        self.changed: list[tuple[int, int]] = []

    def draw(
        self, envelope: Envelope, first: int, count: int, height: int, span: float, gain: float
    ) -> np.ndarray:
        """The image (height x width, ``Format_RGB32`` uint32) of channels ``first .. first
        + count``: the same array from call to call while the layout stays.

        Only the columns the envelope changed since the last call are drawn again,
        unless the layout (channels, size, span, gain, envelope) changed.
        """
        layout = (id(envelope), first, count, height, span, gain)
        if layout != self.layout or self.pixels is None:
            self.pixels = np.empty((height, envelope.width), np.uint32)
            self.layout = layout
            envelope.dirty[:] = True
        columns = np.flatnonzero(envelope.dirty)
        envelope.dirty[:] = False
        if len(columns):
            self.pixels[:, columns] = rasterize(envelope, first, count, height, span, gain, columns)
        self.changed = runs(columns)
        return self.pixels


def runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """Sorted column numbers as runs of neighbours: [2, 3, 4, 9] -> [(2, 5), (9, 10)]."""
    if not len(columns):
        return []
    breaks = np.flatnonzero(np.diff(columns) != 1) + 1
    starts = [int(columns[0]), *columns[breaks].tolist()]
    stops = [*(columns[breaks - 1] + 1).tolist(), int(columns[-1]) + 1]
    return list(zip(starts, stops, strict=True))


def rasterize(
    envelope: Envelope,
    first: int,
    count: int,
    height: int,
    span: float,
    gain: float,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels (height x len(columns), ``Format_RGB32``) of channels ``first .. first + count``.

    Channel ``first + k`` is drawn in band ``k`` from the top, each band
    ``height // count`` rows; ``span`` is the value range that fills a band at
    gain 1 (larger values are drawn at the band's edge). ``columns`` are the
    sweep's columns to draw (all when None).
    """
    columns = np.arange(envelope.width) if columns is None else columns
    count = max(1, min(count, envelope.channels - first))
    band = max(2, height // count)
    chans = slice(first, first + count)
    centers = (np.arange(count) * band + band // 2)[None, :]
    scale = gain * band / max(span, 1e-12)
    bands_top = centers - band // 2
    bands_bottom = bands_top + band - 1
    # Larger values go up: rows count downward from the top. Values past the band
    # are drawn at its edge.
    raw_top = np.rint(centers - envelope.high[columns, chans] * scale)
    raw_bottom = np.rint(centers - envelope.low[columns, chans] * scale)
    filled_columns = envelope.filled[columns][:, None]
    # Past its band by more than a row (a value at exactly +-span/2 may round one row out).
    clipped_top = (raw_top < bands_top - 1) & filled_columns
    clipped_bottom = (raw_bottom > bands_bottom + 1) & filled_columns
    top = np.clip(raw_top, bands_top, bands_bottom).astype(np.int64)
    bottom = np.clip(raw_bottom, bands_top, bands_bottom).astype(np.int64)
    drawn = column_runs(top, bottom, filled_columns & (bottom >= top) & (bottom < height), height)
    image = np.where(drawn, TRACE, BACKGROUND)
    spike_cols, spike_chans = np.nonzero(envelope.spikes[columns, chans])
    for dy in range(max(1, band // 6)):
        image[np.minimum(bands_top[0, spike_chans] + dy, height - 1), spike_cols] = SPIKE
    for clipped, edge in ((clipped_top, bands_top), (clipped_bottom, bands_bottom)):
        clip_cols, clip_chans = np.nonzero(clipped)
        image[np.minimum(edge[0, clip_chans], height - 1), clip_cols] = CLIP
    # A stimulation marker goes behind what is drawn: the stimulus and the first
    # milliseconds of the response under it are what a closed loop is looked at for.
    marked = image[:, envelope.markers[columns]]
    image[:, envelope.markers[columns]] = np.where(marked == BACKGROUND, MARKER, marked)
    image[:, columns == envelope.column] = CURSOR
    return image


def column_runs(top: np.ndarray, bottom: np.ndarray, filled: np.ndarray, height: int) -> np.ndarray:
    """The pixels (height x width, True where drawn) of runs of rows: in column ``c``, rows
    ``top[c, k]`` to ``bottom[c, k]`` (inclusive) for every ``k`` where ``filled[c, k]``."""
    width = top.shape[0]
    index = np.broadcast_to(np.arange(width)[:, None], top.shape)
    # Paint each run: +1 at its top, -1 after its bottom, then a running sum down the column.
    size = (height + 1) * width
    starts = np.bincount((top * width + index)[filled], minlength=size)
    ends = np.bincount(((bottom + 1) * width + index)[filled], minlength=size)
    edges = (starts - ends).astype(np.int16).reshape(height + 1, width)
    return np.cumsum(edges, axis=0, dtype=np.int16)[:height] > 0


def raster_image(envelope: Envelope, first: int, count: int, height: int) -> np.ndarray:
    """A spike raster of channels ``first .. first + count`` over the window: one row
    band per channel (top to bottom), a tick in each column that holds a spike
    (height x width, ``Format_RGB32`` uint32)."""
    count = max(1, min(count, envelope.channels - first))
    rows = np.minimum(np.arange(height) * count // height, count - 1)  # pixel row -> channel
    spikes = envelope.spikes[:, first : first + count]  # (width, count)
    image = np.where(spikes[:, rows].T, SPIKE, BACKGROUND).astype(np.uint32)
    image[:, envelope.column] = CURSOR
    return image

"""ezmsg pub/sub between two processes, for bench/ring.py (run as a subprocess).

    python bench/ezmsg_pubsub.py SAMPLES RATE_HZ CHANNELS SECONDS

Prints one JSON line: nbytes, seconds, latencies_us, cpu_s (subscriber side).
"""

import asyncio
import json
import sys
import time

import ezmsg.core as ez
import numpy as np

SAMPLES, RATE, CHANNELS, SECONDS = (
    int(sys.argv[1]),
    float(sys.argv[2]),
    int(sys.argv[3]),
    float(sys.argv[4]),
)
END = -1


def _stamp(chunk: np.ndarray, value: int) -> np.ndarray:
    chunk.reshape(-1)[:4].view(np.int64)[0] = value
    return chunk


class Pub(ez.Unit):
    OUTPUT = ez.OutputStream(np.ndarray)

    @ez.publisher(OUTPUT)
    async def generate(self):
        await asyncio.sleep(1.5)  # let the subscriber connect
        template = np.random.default_rng(0).integers(-2000, 2000, (SAMPLES, CHANNELS), np.int16)
        start = time.perf_counter()
        i = 0
        while time.perf_counter() < start + SECONDS:
            yield self.OUTPUT, _stamp(template.copy(), time.perf_counter_ns())
            i += 1
            delay = start + i / RATE - time.perf_counter() if RATE else 0.0
            await asyncio.sleep(max(0.0, delay))
        yield self.OUTPUT, _stamp(template.copy(), END)


class Sub(ez.Unit):
    INPUT = ez.InputStream(np.ndarray)

    async def initialize(self) -> None:
        self.latencies: list[float] = []
        self.nbytes = 0
        self.t0 = None
        self.cpu0 = 0.0

    @ez.subscriber(INPUT, zero_copy=True)
    async def on_chunk(self, chunk: np.ndarray) -> None:
        now = time.perf_counter_ns()  # in hand: before the stamp is read out
        stamp = int(chunk.reshape(-1)[:4].view(np.int64)[0])
        if stamp == END:
            report = {
                "nbytes": self.nbytes,
                "seconds": time.perf_counter() - self.t0,
                "latencies_us": self.latencies,
                "cpu_s": time.process_time() - self.cpu0,
            }
            print(json.dumps(report), flush=True)
            raise ez.NormalTermination
        if self.t0 is None:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.latencies.append((now - stamp) / 1e3)
        self.nbytes += chunk.nbytes


class Pair(ez.Collection):
    PUB = Pub()
    SUB = Sub()

    def network(self):
        return ((self.PUB.OUTPUT, self.SUB.INPUT),)

    def process_components(self):
        return (self.PUB, self.SUB)


if __name__ == "__main__":
    ez.run(PAIR=Pair())

"""The shelf controllers of ``shelfcast bench e2e``, in their own process (no GIL shared with the node).

Plays protocol v1 on pty masters inherited from the bench (``--fds``): HELLO,
steady SAMPLES until stdin says ``go``, then the pick schedule (one slot at a
time loses one unit, ``PERIOD`` frames apart per slot) at the requested rate,
then steady frames again until stdin closes. ``--arrivals lockstep`` (the default) writes the four
controllers' frames of one round back to back, so the picks of a round reach the node together (the hardest
pattern: four shoppers completing a pick within the same 50 ms frame, every pick round); ``staggered`` gives
each controller its own clock phase (controller i writes i/N of a round later), as independent controllers
with their own crystals do: the same frames and picks, spread over the round. Prints the write time
(``perf_counter_ns``: CLOCK_MONOTONIC, shared by every process) of every frame
of the schedule as JSON on stdout: ``{"picks": N, "writes": [[controller, t_ms, ns], ...]}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time

from firmware_bridge import protocol as P

SLOTS = 8
PERIOD = 20  # frames between two picks on one slot (the detector needs ~15 at 20 Hz)
FRAME_MS = 50  # controller clock per frame (20 Hz)


class Controllers:
    def __init__(self, fds: list[int], units_g: list[list[float]]) -> None:
        self.fds = fds
        self.units_g = units_g
        self.stock = [[400] * SLOTS for _ in fds]
        self.t_ms = 0
        self.seq = 1
        self.picks = 0
        self.writes: list[tuple[int, int, int]] = []
        self.recording = False

    def frame(self, i: int) -> bytes:
        mg = tuple(int(self.stock[i][j] * self.units_g[i][j] * 1000) for j in range(SLOTS))
        self.seq = self.seq % 255 + 1
        return P.Samples(self.t_ms, 0, mg).frame(self.seq)

    def drain(self) -> None:
        """Read (and ignore) what the node sent (HELLO requests, commands) so its writes never block."""
        ready, _, _ = select.select(self.fds, [], [], 0)
        for fd in ready:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)

    def hello(self) -> None:
        for i, fd in enumerate(self.fds):
            os.write(fd, P.Hello(f"bench-{i}", "SC-LC8-r2", (1, 0, 0), SLOTS, 1000 // FRAME_MS).frame(1))

    def steady(self) -> None:
        self.t_ms += FRAME_MS
        for i, fd in enumerate(self.fds):
            frame = self.frame(i)
            if self.recording:  # after the schedule: the frames that complete its last picks
                self.writes.append((i, self.t_ms, time.perf_counter_ns()))
            os.write(fd, frame)
        self.drain()

    def schedule(self, rate: float, duration: float, arrivals: str = "lockstep") -> None:
        dt = 1.0 / (rate / (len(self.fds) * SLOTS / PERIOD))  # wall seconds between frame rounds
        # staggered: controller i writes i/N of a round after controller 0 (its own clock phase)
        lag = [i * dt / len(self.fds) if arrivals == "staggered" else 0.0 for i in range(len(self.fds))]
        rounds = int(duration / dt)
        offsets = [j * PERIOD // SLOTS for j in range(SLOTS)]
        t0 = time.perf_counter()
        for k in range(rounds):
            target = t0 + k * dt
            delay = target - time.perf_counter()
            if delay > 0:  # sleep, never spin: the node under test needs the cores
                time.sleep(delay)
            self.t_ms += FRAME_MS
            phase = k % PERIOD
            for i, fd in enumerate(self.fds):
                for j in range(SLOTS):
                    if offsets[j] == phase:
                        self.stock[i][j] -= 1
                        self.picks += 1
                        if self.stock[i][j] < 20:
                            self.stock[i][j] = 400  # restocked (a big put: detected, not measured)
                if lag[i]:
                    delay = target + lag[i] - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                frame = self.frame(i)
                self.writes.append((i, self.t_ms, time.perf_counter_ns()))
                os.write(fd, frame)
            if k % 64 == 0:
                self.drain()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fds", required=True)
    p.add_argument("--units", required=True, help="JSON: grams per unit, per controller and slot")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--arrivals", choices=("lockstep", "staggered"), default="lockstep")
    args = p.parse_args()
    fds = [int(x) for x in args.fds.split(",")]
    for fd in fds:  # blocking writes: a node that reads slowly slows the controllers, it never loses a frame
        os.set_blocking(fd, True)
    c = Controllers(fds, json.loads(args.units))
    for _ in range(10):
        c.hello()
        for _ in range(2):
            c.steady()
            time.sleep(0.05)
    for _ in range(40):  # the detectors' first stable levels
        c.steady()
        time.sleep(0.01)
    sys.stderr.write("warm\n")
    sys.stderr.flush()
    stdin = sys.stdin.fileno()
    phase = "wait"
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        if ready:
            line = os.read(stdin, 64)
            if not line:
                break
            if phase == "wait" and b"go" in line:
                c.schedule(args.rate, args.duration, args.arrivals)
                c.recording = True
                sys.stderr.write(f"done {c.picks}\n")
                sys.stderr.flush()
                phase = "after"
                continue
        c.steady()
    sys.stdout.write(json.dumps({"picks": c.picks, "writes": c.writes}))


if __name__ == "__main__":
    main()

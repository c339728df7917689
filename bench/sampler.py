"""Memory and CPU of the benchmark's whole process tree, sampled while the pipeline runs.

Business purpose: the throughput targets of issue 8 hold only if the workflow also fits the machine's
memory; the benchmark reports each stage's peak footprint and the cores it (and everybody else) used.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil


class TreeMemorySampler(threading.Thread):
    """Samples RSS and PSS summed over this process, its descendants and the PostgreSQL server.

    The server is not our child (pg_ctl daemonizes it), so it is found by its data directory's
    postmaster.pid. Summed RSS counts shared pages (PostgreSQL's shared_buffers) once per process
    that touched them; summed PSS splits them, so it is the tree's real footprint. Both are kept.
    """

    def __init__(self, pg_data_dir: Path, interval: float = 0.1):
        super().__init__(daemon=True, name="tree-memory-sampler")
        self.pg_data_dir = pg_data_dir
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (unix time, rss bytes, pss bytes)
        # (unix time, CPU seconds of the tree, busy CPU seconds of the whole machine)
        self.cpu: list[tuple[float, float, float]] = []
        self.python: list[tuple[float, int]] = []  # (unix time, PSS of the tree without the server)
        self._halt = threading.Event()
        self._me = psutil.Process()
        self._postmaster_pid = -1

    def _processes(self) -> tuple[list[psutil.Process], set[int]]:
        """This process and its children, then the server's processes; and the server's pids (one walk)."""
        processes = [self._me, *self._me.children(recursive=True)]
        try:
            postmaster = int((self.pg_data_dir / "postmaster.pid").read_text().split()[0])
            server = psutil.Process(postmaster)
            self._postmaster_pid = postmaster
            server_processes = [server, *server.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.Error):
            return processes, set()  # not started yet, or stopping
        return processes + server_processes, {process.pid for process in server_processes}

    def python_peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Peak PSS (MB) of this process and its children, the PostgreSQL server left out."""
        inside = [p for t, p in self.python if start <= t <= end]
        return max(inside) / 2**20 if inside else 0.0

    def sample(self) -> None:
        rss = pss = python_pss = 0
        cpu = 0.0
        seen = set()
        processes, server = self._processes()
        for process in processes:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                info = process.memory_full_info()
                times = process.cpu_times()
            except psutil.Error:
                continue  # exited between listing and reading
            rss += info.rss
            pss += info.pss
            if process.pid not in server:
                python_pss += info.pss
            cpu += times.user + times.system
            if process.pid in (self._me.pid, self._postmaster_pid):
                # exited children (PostgreSQL backends end with their connection) are counted here
                cpu += times.children_user + times.children_system
        machine = psutil.cpu_times()
        now = time.time()
        self.samples.append((now, rss, pss))
        self.python.append((now, python_pss))
        self.cpu.append((now, cpu, machine.user + machine.system + machine.nice + getattr(machine, "irq", 0)
                         + getattr(machine, "softirq", 0) + getattr(machine, "steal", 0)))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """(CPU seconds used by the tree, CPU seconds used by every other process) in [start, end]."""
        def at(moment: float) -> tuple[float, float]:
            before = [c for c in self.cpu if c[0] <= moment]
            chosen = before[-1] if before else self.cpu[0]
            return chosen[1], chosen[2]
        if not self.cpu:
            return 0.0, 0.0
        tree_start, machine_start = at(start)
        tree_end, machine_end = at(end)
        tree = max(tree_end - tree_start, 0.0)
        return tree, max(machine_end - machine_start - tree, 0.0)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> tuple[float, float]:
        """(peak RSS MB, peak PSS MB) over the samples taken in [start, end]."""
        inside = [(r, p) for t, r, p in self.samples if start <= t <= end]
        if not inside:
            return 0.0, 0.0
        return max(r for r, _ in inside) / 2**20, max(p for _, p in inside) / 2**20

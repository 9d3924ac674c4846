#!/usr/bin/env python3
"""Interleaved A/B of short commands: runs each command N times in turn (A, B, C, A, B, C, ...)
and prints, per command, the median and minimum CPU time (user + sys, from wait4) and the
median, mean and minimum wall time. Interleaving keeps a changing machine load from favouring
one command. Usage: python3 benches/ab_cpu.py N 'CMD A' 'CMD B' ...  (stdout goes to /dev/null)
"""
import os
import shlex
import statistics
import sys
import time


def main():
    n = int(sys.argv[1])
    cmds = [shlex.split(c) for c in sys.argv[2:]]
    devnull = os.open(os.devnull, os.O_WRONLY)
    cpu = [[] for _ in cmds]
    wall = [[] for _ in cmds]
    for _ in range(n):
        for k, c in enumerate(cmds):
            t0 = time.perf_counter()
            pid = os.posix_spawn(c[0], c, os.environ,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
            _, status, ru = os.wait4(pid, 0)
            t1 = time.perf_counter()
            if status != 0:
                sys.exit(f"{sys.argv[2 + k]}: exit status {status}")
            cpu[k].append((ru.ru_utime + ru.ru_stime) * 1e3)
            wall[k].append((t1 - t0) * 1e3)
    for c, cs, ws in zip(sys.argv[2:], cpu, wall):
        print(f"cpu median {statistics.median(cs):.3f} min {min(cs):.3f} ms | wall median "
              f"{statistics.median(ws):.3f} mean {statistics.mean(ws):.3f} min {min(ws):.3f} ms | {c}")


if __name__ == "__main__":
    main()

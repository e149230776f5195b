#!/usr/bin/env python3
"""memory.py LABEL ROOT_PID -> one MEMORY line per process under ROOT_PID: its role, RSS and PSS in MiB.

Reads /proc/PID/smaps_rollup (Linux). RSS counts every page a process maps, shared ones included, so the
workers' RSS double-counts what they share (the interpreter, libraries); PSS splits each shared page between its
sharers, so the PSS of all processes adds up to what the gateway really holds. Stdlib only.
"""

import os
import sys


def parents() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    kids, out, todo = parents(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return sorted(out)


def role(pid: int, root: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if pid == root:
        return "supervisor"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    return "worker" if "spawn_main" in cmd or "multiprocessing" in cmd else "other"


def rollup(pid: int) -> dict[str, int]:
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return fields


def main() -> None:
    label, root = sys.argv[1], int(sys.argv[2])
    for pid in tree(root):
        m = rollup(pid)
        if not m:
            continue
        print(
            f"MEMORY label={label} pid={pid} role={role(pid, root)} rss_mb={m.get('Rss', 0) / 1024:.1f} "
            f"pss_mb={m.get('Pss', 0) / 1024:.1f} anon_mb={m.get('Anonymous', 0) / 1024:.1f}"
        )


if __name__ == "__main__":
    main()

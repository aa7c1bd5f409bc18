"""``shmdiag ls``, ``rm`` and ``clear``: the rings on this machine."""

from __future__ import annotations

import argparse

from shmdiag.cli._common import (
    attached_recorder,
    check_name,
    out,
    print_json,
)


# -- ls / rm -------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    from shmdiag.cli.format import human_count, human_duration, table
    from shmdiag.core.rings import list_rings

    rings = list_rings()
    if args.json:
        from shmdiag.export.dicts import rings_to_dict

        print_json(rings_to_dict(rings))
        return 0
    if not rings:
        out("no shmdiag rings in /dev/shm")
        return 0
    rows = []
    for r in rings:
        owner = "-" if r.owner_pid is None else f"{r.owner_pid} ({'alive' if r.owner_alive else 'dead'})"
        collector = ("-" if r.collector_pid is None
                     else f"{r.collector_pid} ({'alive' if r.collector_alive else 'dead'})")
        rows.append([r.name, owner, human_count(r.capacity), human_count(r.retained), human_count(r.total_events),
                     "-" if r.live_writers is None else r.live_writers, collector, human_duration(r.age), r.note])
    out(table(["NAME", "OWNER", "CAPACITY", "RETAINED", "TOTAL", "WRITERS", "COLLECTOR", "AGE", "NOTE"], rows,
               right=(2, 3, 4, 5, 7)))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from shmdiag.core.rings import remove_ring

    info = remove_ring(check_name(args.name), force=args.force)
    if info is not None and info.owner_alive:
        out(f"removed ring {args.name!r} (pid {info.owner_pid}, which uses it, is still running)")
    else:
        out(f"removed ring {args.name!r}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    with attached_recorder(args.name) as rec:
        n = rec.count_retained()
        rec.clear_events()
    out(f"cleared ring {args.name!r}: {n} retained events dropped, stats zeroed")
    return 0

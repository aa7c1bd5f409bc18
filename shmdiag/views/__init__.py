"""Read models over the core's snapshots: stats, peers, latency and health.

They compute figures from copies of the shared tables (``core.snapshot``) and never touch the
segment themselves, so each costs the same on a ring of a thousand events or of millions.
"""

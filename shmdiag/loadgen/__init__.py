"""Writers that record a simulated Bitcoin node: the load generator and the demo, one traffic
profile (``profile``) for both. A program on top of the public API, not part of the core."""

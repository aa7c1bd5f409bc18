"""Human output, shared by the CLI and the load generator: aligned tables and key-value lines
(no dependency for a few columns), terminal-safe text, and the one set of human-unit formatters
(counts, rates, bytes, durations)."""

from __future__ import annotations

from collections.abc import Sequence

# Text read from a ring is untrusted: control characters (an escape sequence, a NUL) must not
# reach the terminal. They are shown escaped, like repr() would.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def clean(text: object) -> str:
    """``text`` for a terminal: control characters escaped."""
    return str(text).translate(_CONTROL)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = (),
          indent: str = "") -> str:
    """Rows under headers, columns padded to their widest cell; columns in ``right`` (indices) are
    right-aligned, which is what numbers want. The last column is never padded on the right."""
    cells = [[clean(h) for h in headers]] + [["" if c is None else clean(c) for c in r] for r in rows]
    ncol = len(headers)
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]
    lines = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            if i in right:
                parts.append(c.rjust(widths[i]))
            elif i == ncol - 1:
                parts.append(c)
            else:
                parts.append(c.ljust(widths[i]))
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def kv(pairs: Sequence[tuple[str, object]], indent: str = "") -> str:
    """``key  value`` lines with the keys padded to one width."""
    if not pairs:
        return ""
    w = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k + ':':<{w + 1}}  {v}" for k, v in pairs)


def human_count(n: float | None) -> str:
    """1234 -> '1234', 12345 -> '12.3k', 1234567 -> '1.23M': fits a narrow column; '-' for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit, div, at_least in (("G", 1e9, 1e9), ("M", 1e6, 1e6), ("k", 1e3, 1e4)):
        if abs(n) >= at_least:
            v = n / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def human_rate(per_second: float | None) -> str:
    """Events (or anything) per second as human_count shows it, to a tenth; '-' for None."""
    return human_count(None if per_second is None else round(per_second, 1))


def human_bytes(n: float | None) -> str:
    """1023 -> '1023 B', 1536 -> '1.5 KiB', ... up to TiB; '-' for None."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """Seconds as '850ms', '12.3s', '4m05s', '3h12m', '2d04h'; '-' for None."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 0:
        s = 0.0
    if s < 1e-3:
        return f"{s * 1e6:.0f}us"
    if s < 1:
        return f"{s * 1e3:.3g}ms"
    if s < 60:
        return f"{s:.3g}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"

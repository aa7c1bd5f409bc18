"""The one table of event kinds: what each kind of record stores, and how its text reads.

A record's ``kind`` byte says which helper wrote it. The helpers store typed fields, not text:
a slot has five text fields (``event_type``, ``peer_id``, ``f1``, ``f2``, ``f3``), one int64
``value`` and a byte of ``flags`` (layout: ``core/layout.py``). :data:`KINDS` says, for every
kind, what those mean and how they become an event: its event type, its severity, each stored
field by name, the message template, the metadata keys and the error.

Everything that renders a record derives from this table: ``core/reader.decode`` (events read
back), ``export/templates`` (the numpy exporter, which cuts each template into literal text and
per-row columns) and ``Recorder``'s log lines. Rewording a message is an edit of its template
here; adding a kind is a :class:`Kind` here plus the helper that writes it.
``tests/test_kinds.py`` checks that the three renderings agree for every kind.

This module imports nothing from shmdiag but the models, so ``core/layout`` can take the kind
codes, the record flags and ``BUILTIN_TYPES`` from it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shmdiag.core.models import Severity

# Record flags (the slot's ``flags`` byte).
F_TRUNCATED = 1        # a field was cut to fit (or, read back, stored metadata did not parse)
F_OUTBOUND = 2         # message: the direction is outbound
F_HAS_ERROR = 4        # event, latency: the error field is present
F_HAS_METADATA = 8     # event: the metadata field holds JSON
F_LIFE_CONNECT = 16    # a peer's connect: the writer updates the peer's lifecycle word
F_LIFE_DISCONNECT = 32  # a peer's disconnect: likewise
F_CONTINUED = 64       # the event goes on in continuation slots after this one (core/layout.py, CONT)

# Where a field is stored: one of the slot's text fields (by index in the slot's ``lens``),
# its int64 ``value`` or a bit of its ``flags``.
TEXT_FIELDS = ("event_type", "peer_id", "f1", "f2", "f3")
VALUE, FLAGS = "value", "flags"


@dataclass(frozen=True)
class Field:
    """One stored value of a kind, by the name its template and metadata use.

    ``stored``: ``"event_type"``, ``"f1"``, ``"f2"``, ``"f3"`` (text, read as UTF-8 with invalid
    bytes replaced), ``"value"`` (the int64, as is, or ``convert(value)``) or ``"flags"``
    (``words[0]`` when the bit ``flag`` is clear, ``words[1]`` when set). ``json``: the text is
    JSON (record_event's metadata). ``when``: the field is present only when this flag is set
    (None otherwise); 0: always present.
    """

    name: str
    stored: str
    meaning: str
    convert: Callable[[int], float] | None = None
    flag: int = 0
    words: tuple[str, str] = ("", "")
    json: bool = False
    when: int = 0

    @property
    def text_index(self) -> int:
        """Index of a text field among the slot's five (ValueError for a value or flag field)."""
        return TEXT_FIELDS.index(self.stored)

    @property
    def is_text(self) -> bool:
        return self.stored in TEXT_FIELDS


@dataclass(frozen=True)
class Kind:
    """One kind of record: how the writer stores it and how it reads back.

    * ``code``: the ``kind`` byte the writer stores;
    * ``event_type``: the event type, or None when the record stores its own (field
      ``event_type``); the types of the kinds that fix one are counted at fixed indices in
      every shard (:data:`BUILTIN_TYPES`);
    * ``severity``: the severity the helper always records, or None (``severity_rule`` says what
      decides it);
    * ``fields``: every stored value, by name;
    * ``template``: the event's message, a ``str.format`` template over the fields' names;
    * ``metadata``: the metadata keys (field names, in order), or None: the ``metadata`` field's
      stored JSON, when present, is the metadata;
    * ``error``: the field that is the event's ``error``, if any (present as its ``when`` says);
    * ``log``: the log line the recorder writes when it records one, over the fields' names
      plus ``message`` (the rendered template); ``log_rule`` says when it writes one;
    * ``flags``: flags the writer always sets.
    """

    code: int
    name: str
    event_type: str | None
    severity: Severity | None
    fields: tuple[Field, ...]
    template: str
    metadata: tuple[str, ...] | None
    error: str | None = None
    log: str = "{message}"
    flags: int = 0
    severity_rule: str = ""
    log_rule: str = "every record at or above log_level, at its severity"
    # the template cut into (literal text, field name or None, format spec), for the exporter
    pieces: tuple[tuple[str, str | None, str], ...] = field(init=False, repr=False, compare=False)
    # the slot text indices of f1, f2, f3 in the order the writer gives them room (see text_order)
    text_order: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    _log_needs_message: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {f.name for f in self.fields}
        pieces = []
        for lit, name, spec, conv in string.Formatter().parse(self.template):
            if name is not None and name not in names:
                raise ValueError(f"kind {self.name!r}: template field {{{name}}} is not one of {sorted(names)}")
            if conv:
                raise ValueError(f"kind {self.name!r}: no !{conv} conversions in templates")
            pieces.append((lit, name, spec or ""))
        object.__setattr__(self, "pieces", tuple(pieces))
        # Room goes first to the fields the message is made of (in template order), then to the
        # error, then to the rest: a long error or metadata never cuts the operator's message.
        free = ("f1", "f2", "f3")
        by_name = {f.name: f.stored for f in self.fields}
        first = [by_name[name] for _, name, _, _ in string.Formatter().parse(self.template)
                 if name is not None and by_name.get(name) in free]
        if self.error is not None:
            first.append(by_name[self.error])
        order = list(dict.fromkeys([*first, *free]))
        object.__setattr__(self, "text_order", tuple(TEXT_FIELDS.index(s) for s in order))
        log_names = {name for _, name, _, _ in string.Formatter().parse(self.log) if name is not None}
        if not log_names <= names | {"message"}:
            raise ValueError(f"kind {self.name!r}: log line names {sorted(log_names - names - {'message'})}")
        object.__setattr__(self, "_log_needs_message", "message" in log_names and "message" not in names)
        for key in self.metadata or ():
            if key not in names:
                raise ValueError(f"kind {self.name!r}: metadata key {key!r} is not one of its fields")
        if self.error is not None and self.error not in names:
            raise ValueError(f"kind {self.name!r}: error field {self.error!r} is not one of its fields")
        if self.event_type is None and "event_type" not in names:
            raise ValueError(f"kind {self.name!r}: no event type, and no event_type field")
        if self.event_type is not None and self.event_type != self.name:
            raise ValueError(f"kind {self.name!r}: a kind with a type of its own is named by it")

    def field_named(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def message(self, values: Mapping[str, object]) -> str:
        """The event's message for these field values."""
        return self.template.format_map(values)

    def log_line(self, **values: object) -> str:
        """The recorder's log line for these field values (only the ones the line names are needed)."""
        if self._log_needs_message:
            values["message"] = self.template.format_map(values)
        return self.log.format_map(values)


_ms: Callable[[int], float] = lambda ns: ns / 1e9 * 1e3  # noqa: E731 (as seconds, then scaled: the same float)

EVENT = Kind(
    code=0, name="event", event_type=None, severity=None,
    fields=(
        Field("event_type", "event_type", "the caller's event type"),
        Field("metadata", "f1", "the caller's metadata, as JSON (keys that did not fit dropped)", json=True,
              when=F_HAS_METADATA),
        Field("error", "f2", "the caller's error text", when=F_HAS_ERROR),
        Field("message", "f3", "the caller's message"),
    ),
    template="{message}", metadata=None, error="error",
    severity_rule="the caller's",
)
CONNECT = Kind(
    code=1, name="peer_connected", event_type="peer_connected", severity=Severity.INFO,
    fields=(Field("address", "f1", "the peer's address"),),
    template="Peer connected: {address}", metadata=("address",), flags=F_LIFE_CONNECT,
)
DISCONNECT = Kind(
    code=2, name="peer_disconnected", event_type="peer_disconnected", severity=Severity.WARNING,
    fields=(Field("address", "f1", "the peer's address"), Field("reason", "f2", "why it went")),
    template="Peer disconnected: {address} ({reason})", metadata=("address", "reason"), flags=F_LIFE_DISCONNECT,
)
MESSAGE = Kind(
    code=3, name="message", event_type="message", severity=Severity.DEBUG,
    fields=(
        Field("message_type", "f1", "the protocol message's type (inv, tx, ...)"),
        Field("direction", FLAGS, "inbound or outbound", flag=F_OUTBOUND, words=("inbound", "outbound")),
        Field("size", VALUE, "the message's size in bytes"),
    ),
    template="Message {direction}: {message_type} ({size} bytes)", metadata=("message_type", "direction", "size"),
    log_rule="every record, when log_level is debug (the hot path builds no text otherwise)",
)
ERROR = Kind(
    code=4, name="error", event_type="error", severity=None,
    fields=(Field("operation", "f1", "what failed"), Field("error", "f2", "the error's text")),
    template="Error in {operation}", metadata=("operation",), error="error", log="{message}: {error}",
    severity_rule="ERROR for a peer's error, CRITICAL without a peer id (node-wide)",
)
LATENCY = Kind(
    code=5, name="latency", event_type="latency", severity=None,
    fields=(
        Field("op", "f1", "the timed operation"),
        Field("error", "f2", "the exception a span raised: 'Type: text'", when=F_HAS_ERROR),
        Field("seconds", VALUE, "the duration (stored in ns)", convert=lambda ns: ns / 1e9),
        Field("ms", VALUE, "the duration in ms, for the message", convert=_ms),
    ),
    template="{op} took {ms:.3f} ms", metadata=("op", "seconds"), error="error", log="{op} failed: {error}",
    severity_rule="DEBUG; ERROR for a span that raised", log_rule="only a span that raised, at ERROR",
)

KINDS: tuple[Kind, ...] = (EVENT, CONNECT, DISCONNECT, MESSAGE, ERROR, LATENCY)
BY_CODE: dict[int, Kind] = {k.code: k for k in KINDS}
assert sorted(BY_CODE) == list(range(len(KINDS))), "kind codes are 0..n-1"

KIND_EVENT, KIND_CONNECT, KIND_DISCONNECT = EVENT.code, CONNECT.code, DISCONNECT.code
KIND_MESSAGE, KIND_ERROR, KIND_LATENCY = MESSAGE.code, ERROR.code, LATENCY.code
KIND_MAX = max(BY_CODE)
# Not a kind of event: a slot that continues the text of the event in the slot before it, in the same
# writer's run (an event longer than one slot). Every reader skips it as an event of its own.
KIND_CONTINUATION = 255

# Event types each shard counts at fixed indices (BUILTIN_TYPES.index(t)), in code order.
BUILTIN_TYPES: tuple[str, ...] = tuple(k.event_type for k in KINDS if k.event_type is not None)

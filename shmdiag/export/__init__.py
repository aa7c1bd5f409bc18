"""Export and serialisation: read models and retained events as JSON. One module per job:

* ``schema``: ``SCHEMA_VERSION`` and the JSON Schemas shipped in ``shmdiag/schemas``;
* ``dicts``: model -> dict, the one place JSON names are chosen (``event_to_dict``,
  ``gap_to_dict``, ``stats_to_dict``, ``health_to_dict``, ``network_to_dict``,
  ``rings_to_dict``, ``export_head``, ...; ``docs/json.md``) and the per-event export
  ``export_json``, the reference the fast path is tested against;
* ``rowtext``: the numpy byte toolkit: decimal digits, timestamps, word tables, text fields
  gathered from records and JSON-escaped, rows assembled from literal bytes and per-row cells;
* ``templates``: the JSON of each kind of record, derived from the kinds table
  (``core/kinds.py``), rendered for a chunk of records at once (``render_events``);
* ``stream``: the streaming driver: ``write_export``, ``export_bytes``, ``check_format``,
  ``ExportCount``.

This layer reads through ``core`` (and the read models in ``views``) and writes nothing to a ring.
"""

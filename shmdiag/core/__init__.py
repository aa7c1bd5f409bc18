"""The ring: everything that knows the segment's bytes.

The binary layout (``layout``) and the table of event kinds (``kinds``) are the one source of
truth for the C writer (``_native``) and the numpy readers. Only this package maps, reads or
writes the segment; it imports nothing from the layers above it (``tests/test_layers.py``).
"""

"""The ``editstore`` command line: a thin click layer over the :mod:`editstore` library."""

"""JSON Schemas (2020-12) of editstore's documents; installed as ``editstore.schemas``."""

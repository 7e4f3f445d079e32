"""Edit methods: each computes a :class:`editstore.Delta` and leaves the model it is given unchanged."""

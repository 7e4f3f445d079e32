"""The fact world: a synthetic knowledge base and small LMs trained on it (DESIGN.md §7)."""

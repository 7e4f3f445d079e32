"""Remotes: a store's history shared through S3-compatible object storage or a shared directory
(:mod:`.sync` for clone, fetch, pull and push; :mod:`.backends` for where the files go)."""

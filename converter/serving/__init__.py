"""Serving a step's model with KServe: manifests, the deploy step, and a local model server."""

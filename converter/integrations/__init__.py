"""cellpipe inside other tools (papermill's engine entry point)."""

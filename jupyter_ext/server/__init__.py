"""The Jupyter server extension: REST handlers and live event streams under /cellpipe/api/."""

"""The local engine: runs the step programs as processes on this machine (fork server, resource
scheduling, caching through the store)."""

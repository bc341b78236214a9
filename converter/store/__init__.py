"""What runs leave on disk: the workspace folder, the run store (SQLite) and the artifact store."""

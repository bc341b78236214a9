"""What runs leave on disk: the workspace folder, the run store (SQLite: `runstore` reads and writes,
`tables` holds the schema and how an event lands in it, through the `RunView` fold) and the artifact store."""

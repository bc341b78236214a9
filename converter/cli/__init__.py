"""The `cellpipe` command line: one table of commands (`main.COMMANDS`), one module per command group.

`pipeline` (validate, compile, graph), `kfp` (schedule; KFP connection flags), `run` (run, runs), `serve`,
`tune`. Each lists its `Command`s and imports only `common` (exit codes, shared options); `main` assembles
the table, so no module imports `main` and the command line has no import circle.
"""

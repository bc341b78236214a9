"""The Jupyter server extension under /cellpipe/api/: `handlers` (endpoints and `setup`), `base` (the
base handler), `paths` (what a request may name and send), `service` (shared state, live feeds, run JSON),
`events` (the SSE stream), `cells` and `results` (the lab's step form and run results), `endpoints`
(named KFP endpoints)."""

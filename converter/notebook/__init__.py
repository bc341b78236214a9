"""Reading a notebook into the pipeline model. Imports no kfp and no engine.

`reader` runs the stages, each in its own module: `structure` (notebook JSON), `settings` and `kale`
(notebook metadata), `cells` and `cellsettings` (tags and metadata per cell, the code analysed by
`analysis/`), `grouping` (cells -> steps and roles), `parameter_cells`, `dataflow` (inputs, outputs,
changes in place), `metrics`, `order` (edges, files, topological order), `boundaries` (values that
cannot travel), `served`; `drafts` holds the working data and the problem `Report`. `tags` is the one
tag vocabulary; `parameters` checks run-time values; `search_space` parses sweep ranges.
"""

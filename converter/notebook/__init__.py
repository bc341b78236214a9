"""Reading a notebook into the pipeline model: tags, grouping cells into steps, parameters, data flow
(analysis of what each cell reads and writes), search spaces. Imports no kfp and no engine."""

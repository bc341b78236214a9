"""KFP as one output: the readable DSL, compiling it to IR YAML, build contexts, and talking to a KFP
cluster's REST API (connection, cluster client). The only package besides engines/kfp that imports kfp."""

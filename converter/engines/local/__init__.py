"""The local engine: runs the step programs as processes on this machine.

`engine` (the scheduler), `caching` (cache hits, --resume), `launch` (one attempt's files and argv),
`processes` and `zygote` (step processes, the fork server), `resources` (CPU, memory, GPUs), `steprun`.
"""

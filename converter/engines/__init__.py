"""Engines run pipeline models behind one protocol (`base`) and one event stream.

`registry` finds them by name, with their options (entry points + in-process); `lifecycle` is the one
way a run goes from run_started to run_finished; `runner` runs an engine on a thread, cancellable (every
face uses it). `local/` runs steps as processes here, `kfp/` on a Kubeflow Pipelines deployment.
"""

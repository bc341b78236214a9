"""The step program both engines run ("run what you ship"): the runtime that executes a step's cells
and passes values, how a step's program is assembled (stepcode), and the packages it needs."""

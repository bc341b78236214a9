"""cellpipe's converter: tagged notebook -> pipeline model -> KFP pipeline, local runs, reports.

Layers, each importing only those below (tests/test_house.py): faces (`cli`, `reports`, `integrations`;
`jupyter_ext` outside) -> `engines` (found through `engines.registry`) -> `notebook`, `step`, `kfp`, `store`,
`serving`, `tuning` -> the core: `model`, `errors`, `events` (the event stream and its one fold,
`RunView`). Pure Python; needs no Jupyter server. The model never imports kfp.
"""

__version__ = "0.1.0"

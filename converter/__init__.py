"""cellpipe's converter: tagged notebook -> pipeline model -> KFP pipeline, graphs and step programs.

Pure Python; needs no Jupyter server. The model (`converter.model`) never imports kfp.
"""

__version__ = "0.1.0"

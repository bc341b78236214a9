"""Engines run pipeline models behind one protocol (`base`) and one event stream; `registry` finds them."""

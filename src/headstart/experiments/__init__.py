"""Experiments built on ``fit``: they train many models and write their measurements to a folder.

- :mod:`.curve`: ``headstart curve``, test accuracy against the number of labels, transfer vs. scratch.

They sit above ``fitting`` (they call it); :mod:`headstart.evaluate` only reads and reports what they saved.
"""

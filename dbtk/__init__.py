"""dbtk: train, evaluate and ship DBNet text detectors.

Importing this package must stay cheap: it is on the path of every CLI command, including ``--help``.
"""

__version__ = "0.1.0"

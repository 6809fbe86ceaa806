"""HistoDash engine: all computation behind the dashboard and the CLI.

Importing :mod:`engine` is cheap: TensorFlow is imported lazily by the modules that need it
(:mod:`engine.architectures`, :mod:`engine.registry`, :mod:`engine.predict`), never here.
"""

__version__ = "0.1.0"

"""HistoDash engine: all computation behind the dashboard and the CLI.

Importing :mod:`engine` is cheap: TensorFlow is imported lazily by the modules that need it
(:mod:`engine.architectures`, :mod:`engine.registry`, :mod:`engine.predict`), never here.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notes, absl info lines) is noise in a CLI and in job logs;
# set before any submodule imports TensorFlow. An explicit setting by the user wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""The ``cas`` command line (see :mod:`cas.cli.main`): everyday commands in
``everyday``, maintenance and transfer in ``admin``, what is shown in ``output``."""

from cas.cli.main import main, run

__all__ = ["main", "run"]

"""``__version__`` of the installed fastmlp, in a module of its own so that any module can read it.

(Reading it from the package, ``from fastmlp import __version__``, would import the
whole core first.)
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastmlp")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]

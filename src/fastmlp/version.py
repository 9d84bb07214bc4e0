"""``__version__`` of fastmlp, in a module of its own so that any module can read it.

The one place the version is written: ``pyproject.toml`` reads it from here at build
time. (Asking ``importlib.metadata`` at run time would import that package and the
email parser behind it in every run; reading it from the package,
``from fastmlp import __version__``, would import the whole core first.)
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

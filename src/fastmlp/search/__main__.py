"""``python -m fastmlp.search``."""
from fastmlp.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

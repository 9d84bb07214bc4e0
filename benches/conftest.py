import sys
from pathlib import Path

# The benchmark modules import their shared helpers (_steps.py) by plain name.
sys.path.insert(0, str(Path(__file__).parent))

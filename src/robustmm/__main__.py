"""`python -m robustmm`: the same command line as `robustmm`."""

from .cli import main

main()

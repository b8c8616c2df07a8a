"""``python -m s2e_jax``: the command line (:mod:`s2e_jax.cli`)."""
import sys

from s2e_jax.cli import main

sys.exit(main())

import sys

from s2e_jax.cli import main

sys.exit(main())

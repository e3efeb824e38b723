"""``python -m latent_transforms``: the ``latent-transforms`` command, for where its script is not on the PATH."""
import sys

from latent_transforms.cli import main

sys.exit(main())

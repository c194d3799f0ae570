"""``python -m serve.client``: the same as the ``sluice`` command."""

import sys

from serve.client.cli import main

sys.exit(main())

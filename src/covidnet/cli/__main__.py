"""``python -m covidnet.cli``: the ``covidnet`` command."""

import sys

from covidnet.cli.main import main

sys.exit(main())

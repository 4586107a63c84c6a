import sys

from quantbench.cli.main import main

sys.exit(main())

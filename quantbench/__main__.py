import sys

from quantbench.cli import main

sys.exit(main())

import sys

from squishy.cli import main

sys.exit(main())

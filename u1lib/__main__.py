import sys

from u1lib.cli import main

sys.exit(main())

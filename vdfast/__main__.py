import sys

from vdfast.cli import main

sys.exit(main())

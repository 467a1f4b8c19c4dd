import sys

from include.pgmaint.watchdog.cli import main

sys.exit(main())

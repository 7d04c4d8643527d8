import sys

from wmjax.cli import main

sys.exit(main())

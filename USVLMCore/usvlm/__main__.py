import sys

from usvlm.cli import main

sys.exit(main())

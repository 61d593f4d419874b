"""python -m hivedata"""

import sys

from hivedata.cli import main

sys.exit(main())

import sys

from detector.app.cli import main

sys.exit(main())

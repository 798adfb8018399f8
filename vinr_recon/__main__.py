import sys

from vinr_recon.cli import main

sys.exit(main())

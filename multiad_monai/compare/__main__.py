import logging
import sys

from multiad_monai.compare.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()

import sys

from maskrcnn.scale.commands import main

if __name__ == "__main__":
    sys.exit(main())

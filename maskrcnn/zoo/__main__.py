"""``python -m maskrcnn.zoo export|list``: see ``maskrcnn.zoo.export``."""
import sys

from maskrcnn.zoo.export import main

if __name__ == "__main__":
    sys.exit(main())

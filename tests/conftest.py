import os
import sys

# The reference model lives beside the tests and is imported as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

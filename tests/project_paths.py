"""Where the project and the shared ISBI 2012 data are, for the tests in every folder of tests/."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISBI = os.path.join(os.path.dirname(ROOT), "shared", "data", "isbi2012")

"""pysim's test: the environment provides tinycalc, at the version the base machine had."""
import sys

import tinycalc

print("tinycalc", tinycalc.VERSION, "from", tinycalc.__file__)
assert tinycalc.add(2, 3) == 5
sys.exit(0 if tinycalc.VERSION == "1.0" else 1)

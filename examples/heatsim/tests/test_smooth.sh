#!/bin/sh
# Unit test: one smoothing step spreads the heat to the neighbours.
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(sh "$here/heatsim.sh" 1)
[ "$out" = "0 33 33 33 0" ] || { echo "FAIL: got '$out'"; exit 1; }
echo "ok: smoothing step"

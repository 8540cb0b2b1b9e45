#!/bin/sh
# Smoke test: the environment's tools are on PATH and report their versions.
gridcalc --version || exit 1
heatplot --version || exit 1
echo "ok: tools present"

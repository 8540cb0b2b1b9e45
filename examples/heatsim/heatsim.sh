#!/bin/sh
# heatsim: a toy "scientific" program for pm's demo and tests.
# Steps a 1-D heat equation on integer cells with the gridcalc tool of its conda environment.
steps=${1:-3}
cells="0 0 100 0 0"
i=0
while [ "$i" -lt "$steps" ]; do
    cells=$(gridcalc smooth $cells)
    i=$((i + 1))
done
echo "$cells"

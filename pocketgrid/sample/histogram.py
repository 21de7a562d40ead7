#!/usr/bin/env python3
"""Sample analysis: histogram the numbers in one input file.

usage: histogram.py INPUT OUTPUT.json [BINS] [LOW] [HIGH]
Writes {"input", "bins", "low", "high", "counts", "n", "underflow", "overflow"}.
"""
import json
import sys


def main() -> int:
    src, dest = sys.argv[1], sys.argv[2]
    bins = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    low = float(sys.argv[4]) if len(sys.argv) > 4 else -4.0
    high = float(sys.argv[5]) if len(sys.argv) > 5 else 4.0
    counts = [0] * bins
    under = over = n = 0
    width = (high - low) / bins
    with open(src) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            x = float(line)  # a bad line fails the job with a traceback in stderr
            n += 1
            if x < low:
                under += 1
            elif x >= high:
                over += 1
            else:
                counts[int((x - low) / width)] += 1
    with open(dest, "w") as out:
        json.dump({"input": src, "bins": bins, "low": low, "high": high, "counts": counts,
                   "n": n, "underflow": under, "overflow": over}, out)
    print(f"{src}: {n} values histogrammed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

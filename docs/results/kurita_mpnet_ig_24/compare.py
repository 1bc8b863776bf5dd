"""Per sentence, the largest change of an IG weight between the fixed and the adaptive rule, relative to the sentence's largest fixed-rule weight."""
import json
from collections import defaultdict
import numpy as np
fixed = json.load(open("/work/bg/mpnet24/fixed/weighting.json"))["records"]
adaptive = json.load(open("/work/bg/mpnet24/adaptive/weighting.json"))["records"]
assert [(r["sentence"], r["token"]) for r in fixed] == [(r["sentence"], r["token"]) for r in adaptive]
by = defaultdict(list)
for f, a in zip(fixed, adaptive):
    by[f["sentence"]].append((f["weights"]["ig"], a["weights"]["ig"]))
moves = []
for s, pairs in by.items():
    f, a = np.array(pairs).T
    moves.append(np.abs(a - f).max() / np.abs(f).max())
moves = np.array(moves)
print(f"{len(moves)} sentences; largest move relative to the sentence's largest fixed-rule weight: median {np.median(moves):.1%}, min {moves.min():.1%}, max {moves.max():.1%}")

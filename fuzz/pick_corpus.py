#!/usr/bin/env python3
"""Picks a small regression corpus from a fuzzing corpus: at most N inputs covering the most paths.

Usage (from fuzz/, after building the targets with `RUSTC_BOOTSTRAP=1 cargo fuzz build -O`):

    python3 pick_corpus.py request_side [N]

It has libFuzzer merge `corpus/<target>` into an empty directory with a control file, which records
the code edges (COV) and finer features (FT: edges with hit counts) of every input, then picks
greedily: the input adding the most edges not yet covered, then the most new features, the smaller
one on a tie, until N are picked or nothing new is added. The picks replace the earlier picks in
`../tests/fuzz-corpus/<target>/`, named by their SHA-1 as libFuzzer names them; inputs written by
hand, named in words, are kept.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile


def main():
    target = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    binary = f"target/x86_64-unknown-linux-gnu/release/{target}"
    work = tempfile.mkdtemp(prefix=f"pick-{target}-")
    control = os.path.join(work, "control")
    os.mkdir(os.path.join(work, "out"))
    subprocess.run(
        [binary, "-merge=1", f"-merge_control_file={control}", "-max_len=20000",
         os.path.join(work, "out"), f"corpus/{target}"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with open(control) as f:
        lines = f.read().splitlines()
    count = int(lines[0])
    paths = lines[2:2 + count]
    edges, features = {}, {}
    for line in lines[2 + count:]:
        kind, _, rest = line.partition(" ")
        if kind in ("COV", "FT"):
            index, *values = rest.split()
            (edges if kind == "COV" else features)[int(index)] = set(values)
    candidates = sorted(set(edges) | set(features))
    sizes = {i: os.path.getsize(paths[i]) for i in candidates}

    picked, seen_edges, seen_features = [], set(), set()
    while len(picked) < limit:
        def gain(i):
            new_edges = len(edges.get(i, set()) - seen_edges)
            new_features = len(features.get(i, set()) - seen_features)
            return (new_edges, new_features, -sizes[i])
        best = max((i for i in candidates if i not in picked), key=gain, default=None)
        if best is None or gain(best)[:2] == (0, 0):
            break
        picked.append(best)
        seen_edges |= edges.get(best, set())
        seen_features |= features.get(best, set())

    all_edges = set().union(*edges.values()) if edges else set()
    print(f"{target}: {len(picked)} inputs of {len(candidates)}, "
          f"{len(seen_edges)}/{len(all_edges)} edges, {sum(sizes[i] for i in picked)} bytes")
    dest = os.path.join("..", "tests", "fuzz-corpus", target)
    os.makedirs(dest, exist_ok=True)
    # Earlier picks go; inputs written by hand (named in words, not by hash) stay.
    for name in os.listdir(dest):
        if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
            os.remove(os.path.join(dest, name))
    for i in picked:
        with open(paths[i], "rb") as f:
            data = f.read()
        with open(os.path.join(dest, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""Writes self-describing blocks to an NBD export and records which writes were acknowledged;
later checks that every acknowledged write is on the disk (restart and crash tests).

  nbd-writer.py write URI LOG --first N --blocks N [--bs B] [--qd Q] [--count C | --seconds S] [--seed S]
  nbd-writer.py verify URI LOG

Each block carries a header (magic, block index, generation, seed) and a payload derived from
them. `write` picks random blocks in [first, first + blocks), writes generation g + 1 of each,
up to QD at a time, and stops after COUNT writes, SECONDS, or the first error (e.g. the server
went away); it then saves for every block the newest acknowledged generation and the newest one
issued, prints one JSON line and exits 0. `verify` reads the whole region back and checks each
block: a block never issued must read as zeros; a block issued but never acknowledged may hold
any generation it was issued with (or zeros); an acknowledged block must hold a generation at
least as new as the newest acknowledgement and no newer than issued, with the right payload.
Exit status 1 and one line per bad block (at most 20) when the check fails.
Needs Debian's python3-libnbd (`/usr/bin/python3`).
"""

import argparse
import hashlib
import json
import random
import struct
import sys
import time

import nbd

MAGIC = b"VRIOBLK1"
HEADER = struct.Struct(">8sQQQ")  # magic, block index, generation, seed


def block(index, gen, seed, bs):
    head = HEADER.pack(MAGIC, index, gen, seed)
    stream = hashlib.shake_128(head).digest(bs - HEADER.size)
    return head + stream


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def write(a):
    rng = random.Random(a.seed)
    issued = {}
    acked = {}
    busy = set()
    state = {"done": 0, "error": None}
    deadline = time.monotonic() + a.seconds if a.seconds else None
    sent = 0

    def completed(index, gen, err):
        busy.discard(index)
        if err.value != 0:
            state["error"] = f"write of block {index} failed: errno {err.value}"
            return 1
        acked[index] = max(acked.get(index, 0), gen)
        state["done"] += 1
        if state["done"] == 1:
            print("first-ack", file=sys.stderr, flush=True)  # the test may stop a daemon from now on
        return 1

    try:
        h = connect(a.uri)
        while state["error"] is None:
            if a.count and sent >= a.count:
                break
            if deadline and time.monotonic() > deadline:
                break
            while h.aio_in_flight() < a.qd and state["error"] is None:
                if a.count and sent >= a.count:
                    break
                index = a.first + rng.randrange(a.blocks)
                if index in busy:  # one write per block at a time: the order of acks is then the order of data
                    continue
                gen = issued.get(index, 0) + 1
                issued[index] = gen
                busy.add(index)
                buf = nbd.Buffer.from_bytearray(bytearray(block(index, gen, a.seed, a.bs)))
                h.aio_pwrite(buf, index * a.bs, lambda err, i=index, g=gen: completed(i, g, err))
                sent += 1
            h.poll(-1)
        while h.aio_in_flight() > 0 and state["error"] is None:
            h.poll(-1)
        if state["error"] is None:
            h.flush()
    except nbd.Error as e:
        state["error"] = str(e)
    with open(a.log, "w") as f:
        json.dump(
            {
                "bs": a.bs,
                "first": a.first,
                "blocks": a.blocks,
                "seed": a.seed,
                "issued": issued,
                "acked": acked,
            },
            f,
        )
    print(json.dumps({"sent": sent, "acked": state["done"], "error": state["error"]}))


def verify(a):
    with open(a.log) as f:
        log = json.load(f)
    bs, first, blocks, seed = log["bs"], log["first"], log["blocks"], log["seed"]
    issued = {int(k): v for k, v in log["issued"].items()}
    acked = {int(k): v for k, v in log["acked"].items()}
    h = connect(a.uri)
    bad = []
    zero = bytes(bs)
    chunk = 256
    for start in range(first, first + blocks, chunk):
        n = min(chunk, first + blocks - start)
        data = h.pread(n * bs, start * bs)
        for i in range(n):
            index = start + i
            got = data[i * bs : (i + 1) * bs]
            low, high = acked.get(index, 0), issued.get(index, 0)
            if got == zero:
                if low > 0:
                    bad.append(f"block {index}: zeros, but generation {low} was acknowledged")
                continue
            magic, at, gen, s = HEADER.unpack_from(got)
            if magic != MAGIC or at != index or s != seed:
                bad.append(f"block {index}: foreign data (header {got[:HEADER.size].hex()})")
            elif not (max(low, 1) <= gen <= high):
                bad.append(f"block {index}: generation {gen}, want {low}..{high} (acknowledged..issued)")
            elif got != block(index, gen, seed, bs):
                bad.append(f"block {index}: generation {gen} with a corrupt payload")
    h.shutdown()
    print(json.dumps({"blocks": blocks, "acked": len(acked), "bad": len(bad)}))
    for line in bad[:20]:
        print(line, file=sys.stderr)
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["write", "verify"])
    p.add_argument("uri")
    p.add_argument("log")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--blocks", type=int, default=4096)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--qd", type=int, default=16)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    write(a) if a.mode == "write" else verify(a)


if __name__ == "__main__":
    main()

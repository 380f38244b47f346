#!/usr/bin/env python3
"""A long computation that speaks ferry's checkpoint protocol
(docs/checkpointing.md): sums a deterministic sequence over STEPS steps and
prints "result N". Usage: checkpoint.py [STEPS] [DELAY_SECONDS]"""
import os, signal, sys, time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.002
i, x, total = 0, 1, 0
if os.environ.get("FERRY_RESTORE") == "1":
    with open(os.path.join(os.environ["FERRY_RESTORE_DIR"], "state")) as f:
        i, x, total = map(int, f.read().split())
    print("restored at step", i, flush=True)

requested = False
def on_request(signum, frame):
    global requested
    requested = True
signal.signal(signal.SIGUSR2, on_request)

while i < steps:
    if requested:
        d = os.environ["FERRY_CHECKPOINT_DIR"]
        with open(os.path.join(d, "state"), "w") as f:
            f.write(f"{i} {x} {total}\n")
        if not os.path.exists(os.path.join(d, "FERRY_CHECKPOINT_CONTINUE")):
            sys.exit(int(os.environ.get("FERRY_CHECKPOINT_EXIT_CODE", "85")))
        open(os.path.join(d, "FERRY_CHECKPOINT_DONE"), "w").close()
        requested = False
    i += 1
    x = (x * 1103515245 + 12345) % 2147483648
    total = (total + x) % 1000000007
    if i % 50 == 0:
        print("step", i, flush=True)
    time.sleep(delay)
print("result", total, flush=True)

"""How the limiter fills Pipedrive's window: figure 4's traffic, with every 2xx arrival kept.

`python -m bench.ratelimit_cycles [DATABASE_URL]`: 600 updates over 50 chats into the service,
the stand-in limited to 80 per rolling 2 s; prints the 2xx arrivals per second, the count in
the 2 s after each arrival (max and median), where each refill cycle starts, and the rate figure
4 used to print (a rate between the 20th and 80th percentile arrival).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.e2e import SECRET, stack, update
from bench.loadgen import Plans, Target


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tmp}/cycles.db"
        with stack(Path(tmp), url, "cycles", 80) as s:
            headers = {"x-telegram-bot-api-secret-token": SECRET}
            target = Target(s.port, "/webhooks/telegram/bench-channel", update, headers)
            asyncio.run(s.standin("POST", "/_bench/reset"))
            asyncio.run(target.blast(Plans().make(600, 50), 32))
            receipts = asyncio.run(s.drain(600, 120))
    ok = sorted(r[0] for r in receipts if r[4] < 300)
    print(f"2xx {len(ok)}, 429 {sum(1 for r in receipts if r[4] == 429)}")
    ahead = sorted(bisect.bisect_right(ok, t + 2.0) - i for i, t in enumerate(ok))
    print(f"2xx in the 2 s after an arrival: max {ahead[-1]}, median {ahead[len(ahead) // 2]}")
    per_second = Counter(int(t - ok[0]) for t in ok)
    print("2xx per second:", [per_second[i] for i in range(int(ok[-1] - ok[0]) + 1)])
    starts = [ok[0]] + [b for a, b in itertools.pairwise(ok) if b - a > 0.3]
    print("refill cycles start at (s):", [round(t - ok[0], 3) for t in starts])
    lo, hi = len(ok) // 5, len(ok) * 4 // 5
    rate = (hi - lo) / (ok[hi] - ok[lo])
    print(f"rate between the 20th and 80th percentile arrival: {rate:.1f}/s")


if __name__ == "__main__":
    main()

"""Where a folded py-spy profile's samples go, by what the code is for, not by library.

`python -m bench.profile_costs FILE...` (bench/profiles/*.txt or results/*.folded.gz). Each
sample goes to the innermost frame of its stack that names a purpose: the Pipedrive call (httpx2,
httpcore2, h11, our transport), the database (asyncpg, SQLAlchemy, sqlite3, service/store), the
rate limiter, the ledger, the queue (arq and service/queue.py), the web (uvicorn, Starlette, the
handlers). Redis's client is transparent: its samples go to the caller found further out, else to
"Redis, caller not in the sample" (py-spy often sees a coroutine from where it was resumed).
"""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from pathlib import Path

PURPOSES = (
    ("Pipedrive call (httpx2 and below)",
     ("httpx2/", "httpcore2/", "h11/", "http_transport.py", "PipedriveClient._send")),
    ("database", ("asyncpg/", "sqlalchemy/", "sqlite3", "(service/store/", "aiosqlite/")),
    ("rate limiter (Redis script)", ("ratelimit.py",)),
    ("API ledger", ("ledger.py",)),
    ("queue: arq's job bookkeeping, group scripts (Redis)", ("(arq/", "(service/queue.py")),
    ("web: uvicorn, Starlette, middleware, handlers",
     ("(uvicorn/", "(starlette/", "(handlers/", "middleware.py")),
    ("logging", ("(structlog/",)),
)  # fmt: skip
REDIS = ("(redis/", "StreamWriter.writelines")


def purpose(stack: str) -> str:
    frames = stack.split(";")
    saw_redis = False
    for frame in reversed(frames):
        if any(p in frame for p in REDIS):
            saw_redis = True
            continue
        for name, patterns in PURPOSES:
            if any(p in frame for p in patterns):
                return name
    return "Redis, caller not in the sample" if saw_redis else "event loop, our code, other"


def costs(path: Path) -> tuple[int, list[tuple[str, float]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    counts: Counter[str] = Counter()
    with opener(path, "rt") as lines:
        for line in lines:
            stack, _, samples = line.rstrip().rpartition(" ")
            counts[purpose(stack)] += int(samples)
    total = sum(counts.values()) or 1
    return total, [(name, n / total) for name, n in counts.most_common()]


def main() -> None:
    for name in sys.argv[1:]:
        total, shares = costs(Path(name))
        print(f"{name}: {total} samples")
        for what, share in shares:
            print(f"  {share * 100:5.1f}%  {what}")


if __name__ == "__main__":
    main()

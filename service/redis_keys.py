"""Every Redis key and key prefix the service writes, in one place (arq's own keys aside).

arq keeps its jobs under `arq:job:`, `arq:result:`, `arq:retry:` and `arq:in-progress:`; the
queue names below are sorted sets in that scheme.
"""

#: Latency-sensitive work: inbound relays, outbound deliveries, status updates.
QUEUE_DEFAULT = "pdbridge:queue"
#: Counters of job outcomes, a hash `{function}:{outcome}` -> count, read by /metrics.
JOB_OUTCOMES = "pdbridge:metrics:job-outcomes"
#: Per-token rate limiter: `{prefix}{key}:log` (sorted set of sends) and `{prefix}{key}:state`
#: (hash: limit, blocked_until, parked_until, all in milliseconds of Redis time).
RATE_LIMIT = "pdbridge:ratelimit:"
#: Single-flight token refresh, one lock per installation.
REFRESH_LOCK = "pdbridge:lock:refresh:"
#: One authorization-code exchange at a time per code (double-submitted callbacks).
CODE_LOCK = "pdbridge:lock:oauth-code:"
#: Set while a daily-budget probe is scheduled for an installation, so only one is.
BUDGET_PROBE = "pdbridge:budget-probe:"
#: One relay at a time per conversation, so messages reach Pipedrive in order.
CONVERSATION_LOCK = "pdbridge:lock:conversation:"
#: Cached approved templates per channel (WhatsApp), JSON, a few minutes.
TEMPLATES = "pdbridge:templates:"
#: Per channel: when the last backfill ran (ISO time).
BACKFILL_MARK = "pdbridge:backfill:"
#: Statuses that arrived before their message's provider id was stored (a list, short-lived).
EARLY_STATUS = "pdbridge:early-status:"

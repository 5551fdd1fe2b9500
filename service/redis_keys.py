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
#: A coalesced job group (a conversation's relay or outbox) that has a drain queued or running:
#: the value is that job's id, trusted only while the job exists. Lifetime: a day at most.
GROUP_MARK = "pdbridge:group:"
#: Set when work arrives for a group whose drain is already queued or running; the drain reads
#: and clears it before it lets the group go. Same lifetime as the mark.
GROUP_DIRTY = "pdbridge:group-dirty:"
#: Cached approved templates per channel (WhatsApp), JSON, a few minutes.
TEMPLATES = "pdbridge:templates:"
#: Per channel: when the last backfill ran (ISO time).
BACKFILL_MARK = "pdbridge:backfill:"
#: Statuses that arrived before their message's provider id was stored (a list, short-lived).
EARLY_STATUS = "pdbridge:early-status:"
#: API cost ledger (service.pipedrive.ledger), per UTC day: `{prefix}{day}:{company_id}` is a hash
#: (tokens, calls, the daily-budget headers last seen, plan_budget, rolled) and
#: `{prefix}{day}:companies` the set of companies that called that day. Kept a few days; the
#: sweeper rolls each day up into the database.
API_LEDGER = "pdbridge:ledger:"
#: Tokens and calls of every company together by endpoint family (two hashes, no expiry), which
#: /metrics exposes as counters.
API_LEDGER_FAMILY_TOKENS = "pdbridge:ledger-family:tokens"
API_LEDGER_FAMILY_CALLS = "pdbridge:ledger-family:calls"
#: How many channels `auto` moved from the Channels API to notes (a counter, read by /metrics).
SINK_MOVES = "pdbridge:metrics:sink-moves"
#: Notes sink: a customer address matched to a Pipedrive person, `{company}:{kind}:{value}` ->
#: person id; lives NOTES_MATCH_TTL_SECONDS.
PERSON_MATCH = "pdbridge:person-match:"
#: An install `state` once a callback used it, holding that callback's code hash (replays refused).
OAUTH_STATE_USED = "pdbridge:oauth-state:"
#: Per client IP: token exchanges for codes we did not know, in the current minute.
OAUTH_EXCHANGES = "pdbridge:oauth-exchanges:"
#: Operator console sessions (handlers/console.py): `{prefix}{session id}` -> JSON with the CSRF
#: token and a hash of the admin token it was opened with; lives as long as the session cookie.
CONSOLE_SESSION = "pdbridge:console-session:"
#: Per client IP: failed console logins in the current minute (a counter that expires).
CONSOLE_LOGIN_FAILURES = "pdbridge:console-login-failures:"
#: Pub/sub channel: a process that changed a cached kind of row ("channel", "installation")
#: names it here, and every process drops its copies at once (service.coordination).
CACHE_INVALIDATED = "pdbridge:cache-invalidated"

"""Every Redis key and key prefix the service writes, in one place (arq's own keys aside).

arq keeps its jobs under `arq:job:`, `arq:result:`, `arq:retry:` and `arq:in-progress:`; the
queue names below are sorted sets in that scheme.
"""

#: Latency-sensitive work: inbound relays, outbound deliveries, status updates.
QUEUE_DEFAULT = "pdbridge:queue"
#: Counters of job outcomes, a hash `{function}:{outcome}` -> count, read by /metrics.
JOB_OUTCOMES = "pdbridge:metrics:job-outcomes"

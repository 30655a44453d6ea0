"""Writes ace_llamaindex/data/team_memories.json: the demo dataset of ``make demo`` (synthetic, deterministic).

A fictional logistics team's agent memories, every text written for this project. The memories are written the
way an agent or a runbook writes them: formal service names and symptoms ("The payments ledger service
(ledger-api) returns HTTP 503 errors ..."). The queries are written the way the team talks: service nicknames
("kraken", "pigeon"), on-call slang ("is 503ing", "keeps getting reaped"), ticket shorthand. The base model has
never seen that vocabulary; the vocabulary is shared across memories (each service has problems of every kind,
each kind of problem happens to every service), so what is learnt from queries about some memories carries over
to memories no training query touched, as it does in a real team's logs.

Labels: ``difficulty`` easy (the memory's own words, reworded), medium (one of service or symptom in slang),
hard (both in slang, or no service named at all: only the symptom in slang and when it was seen); ``category``
the kind of problem. 300 memories (20 services x 15 kinds of problem), 4 queries each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (formal name, short formal name, nicknames the team uses, env prefix)
SERVICES = [
    ("the payments ledger service (ledger-api)", "payments ledger", ["kraken", "the kraken"], "LEDGER"),
    ("the customer notification service (notify-svc)", "notification service", ["pigeon", "the pigeon"], "NOTIFY"),
    ("the search indexing pipeline (indexer)", "search indexer", ["hoover", "the hoover"], "INDEXER"),
    ("the warehouse inventory service (stock-api)", "inventory service", ["larder", "the larder"], "STOCK"),
    ("the route planning engine (routing)", "route planner", ["compass", "old compass"], "ROUTING"),
    ("the authentication gateway (auth-gw)", "auth gateway", ["bouncer", "the bouncer"], "AUTHGW"),
    ("the nightly data warehouse export (dwh-export)", "warehouse export job", ["night train", "the night train"], "DWH"),
    ("the driver mobile backend (driver-bff)", "driver app backend", ["wheelhouse", "the wheelhouse"], "DRIVER"),
    ("the invoice generator (invoicer)", "invoice generator", ["paperboy", "the paperboy"], "INVOICER"),
    ("the feature flag service (flagd)", "feature flag service", ["semaphore", "sema"], "FLAGD"),
    ("the RabbitMQ message broker cluster", "message broker", ["the bus", "bus"], "AMQP"),
    ("the image thumbnail service (thumbs)", "thumbnail service", ["polaroid", "the polaroid"], "THUMBS"),
    ("the customer support dashboard (support-ui)", "support dashboard", ["switchboard", "the switchboard"], "SUPPORT"),
    ("the API rate limiter (throttle)", "rate limiter", ["valve", "the valve"], "THROTTLE"),
    ("the order intake API (orders-api)", "orders API", ["front door", "the front door"], "ORDERS"),
    ("the tracking webhook dispatcher (hooks)", "webhook dispatcher", ["town crier", "crier"], "HOOKS"),
    ("the CI build runners", "CI runners", ["the farm", "farm"], "RUNNER"),
    ("the staging Kubernetes cluster", "staging cluster", ["sandbox", "the sandbox"], "STAGING"),
    ("the primary Postgres database (pg-main)", "main Postgres database", ["mothership", "the mothership"], "PGMAIN"),
    ("the Redis cache cluster (cache-01)", "Redis cache", ["scratchpad", "the scratchpad"], "CACHE"),
]

# (category, formal symptom, short formal symptom, slang phrasings, cause and fix with {env})
PROBLEMS = [
    ("errors", "returns HTTP 503 errors under load", "503 errors under load", ["is 503ing", "keeps throwing 503s"],
     "its connection pool is exhausted; raise {env}_POOL_MAX to {n} and restart the pods one at a time"),
    ("latency", "responds slowly, with p99 latency above two seconds", "slow responses", ["is crawling", "is molasses today"],
     "a missing index on the hot lookup; run the {env}_reindex job and check the slow-query log"),
    ("resources", "runs out of memory and is killed by the OOM killer", "out of memory kills",
     ["keeps getting reaped", "fell over on memory again"],
     "an unbounded in-process cache; set {env}_CACHE_ITEMS to {n} and redeploy"),
    ("data", "processes the same job twice", "duplicate processing", ["is double-dipping", "did everything twice"],
     "acknowledgements are sent after the visibility timeout; raise {env}_ACK_TIMEOUT to {n} seconds"),
    ("queues", "stops consuming messages from its queue", "queue consumer stalls", ["went quiet", "is asleep at the wheel"],
     "the consumer lost its channel after a broker failover; restart it and enable {env}_AUTO_RECOVER"),
    ("deploys", "fails its health check right after a deployment", "failing health checks after deploy",
     ["flaps after a ship", "goes red every time we ship"],
     "the readiness probe starts before warm-up ends; set {env}_WARMUP_SECONDS to {n}"),
    ("auth", "rejects valid requests with HTTP 401", "401 on valid requests", ["is locking people out", "says nope to good tokens"],
     "the signing key rotated and the old key was dropped too early; keep both keys in {env}_JWKS for a day"),
    ("data", "writes timestamps in the wrong time zone", "wrong time zone in timestamps",
     ["is living in the wrong timezone", "has the clocks all off"],
     "it uses the host time zone; set {env}_TZ=UTC and convert at the edge"),
    ("resources", "fills the disk with debug logs", "disk full of logs", ["is eating the disk", "ate all the disk again"],
     "debug logging was left on; set {env}_LOG_LEVEL=info and rotate logs at {n} MB"),
    ("security", "serves an expired TLS certificate", "expired TLS certificate", ["cert went stale", "has a dead cert"],
     "the renewal job lost its DNS credentials; re-run {env}_cert_renew with the rotated token"),
    ("queues", "loses messages while it restarts", "messages lost on restart", ["drops stuff on bounce", "eats messages on restart"],
     "messages are acknowledged before they are stored; turn on {env}_CONFIRM_PUBLISH and drain before stopping"),
    ("data", "deadlocks under concurrent writes", "deadlocks on concurrent writes", ["gets wedged", "locks itself up"],
     "two writers take row locks in different orders; lock rows sorted by id and cap {env}_WORKERS at {n}"),
    ("data", "returns stale data after an update", "stale reads after updates", ["serves yesterday's news", "shows old stuff"],
     "the cache is not invalidated on write; publish an invalidation and lower {env}_TTL to {n} seconds"),
    ("errors", "hits the upstream provider's rate limit", "upstream rate limit errors", ["gets throttled upstream", "is hitting the ceiling"],
     "retries have no backoff; use exponential backoff and set {env}_MAX_RETRIES to {n}"),
    ("deploys", "crash-loops on startup after a configuration change", "crash loop after config change",
     ["boot-loops", "won't stay up after the config push"],
     "a required setting was renamed; add {env}_CONFIG_VERSION={n} and re-apply the config map"),
]

CONTEXTS = ["Seen during the Monday morning peak", "Happened after the autumn release", "Reported by the night on-call",
            "First noticed in the quarterly load test", "Came up during the warehouse migration",
            "Found while onboarding a new carrier", "Surfaced in the incident review", "Seen after a region failover"]

HARD = ["{nick} {slang}", "why is {nick} {slang_bare}", "{nick} {slang} since this morning, what do we do",
        "on-call: {nick} {slang}", "{nick} {slang} again, fix?", "ticket: {nick} {slang}"]
MEDIUM_NICK = ["{nick} {short_problem}", "{short_problem} on {nick}", "{nick}: {short_problem}, what to do"]
MEDIUM_SLANG = ["{short_service} {slang}", "the {short_service} {slang}", "{short_service} {slang}, how to fix"]
EASY = ["{short_service} {short_problem}", "how to fix {short_problem} in the {short_service}"]
# No service named at all, only the symptom in slang and when it was seen: as vague as real reports get.
VAGUE = ["something {slang} - {context}", "{context}: a service {slang}", "{slang}, {context}, which runbook?"]


def _bare(slang: str) -> str:
    return slang[3:] if slang.startswith("is ") else slang


def build(seed: int = 7) -> dict:
    """The dataset as a test-suite JSON object: ``{"memories": [...], "tests": [...]}``."""
    rng = random.Random(seed)
    memories, tests = [], []
    for si, (formal, short_service, nicks, env) in enumerate(SERVICES):
        for pi, (category, symptom, short_problem, slangs, fix) in enumerate(PROBLEMS):
            mem_id = f"t{si:02d}{pi:02d}"
            cause = fix.format(env=env, n=rng.choice([8, 16, 30, 45, 60, 90, 120, 200, 500]))
            context = rng.choice(CONTEXTS)
            text = f"{formal[0].upper()}{formal[1:]} {symptom}. {context}. Cause: {cause}."
            memories.append({"id": mem_id, "text": text, "category": category})
            fill = {"short_service": short_service, "short_problem": short_problem, "context": context.lower()}
            picks = [("easy", rng.choice(EASY)), ("medium", rng.choice(MEDIUM_NICK + MEDIUM_SLANG)),
                     ("hard", rng.choice(HARD)), ("hard", rng.choice(VAGUE))]
            seen = set()
            for difficulty, template in picks:
                slang = rng.choice(slangs)
                query = template.format(nick=rng.choice(nicks), slang=slang, slang_bare=_bare(slang), **fill)
                if query not in seen:
                    seen.add(query)
                    tests.append({"query": query, "expected_memory_id": mem_id, "difficulty": difficulty, "category": category})
    return {"memories": memories, "tests": tests}


def render(data: dict) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "ace_llamaindex" / "data" / "team_memories.json"
    data = build()
    out.write_text(render(data), encoding="utf-8")
    print(f"{len(data['memories'])} memories, {len(data['tests'])} queries -> {out}")


if __name__ == "__main__":
    main()

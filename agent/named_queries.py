"""The queries shipped with gamsa (`gamsa query --list`, `--named NAME`): the questions
internal audit asks most, written over the views of agent/query.py. Plain data, so
`--list` needs no DuckDB. Each names the evidence behind every row: `bundle` and
`line` (or the first such record of a group), as `gamsa prove` and export take them.
Record fields are those of docs/COLLECTORS.md."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str


_LATEST_ACCOUNTS = """
WITH latest AS (
    SELECT host, arg_max(bundle, started_at) AS bundle FROM collectors
    WHERE name = 'accounts' AND status IN ('ok', 'partial') GROUP BY host)
"""

NAMED_QUERIES: dict[str, NamedQuery] = {q.name: q for q in (
    NamedQuery(
        "privileged-accounts",
        "Accounts with uid 0 or a sudo rule, per host, as of each host's newest "
        "accounts collection in scope; the sudoers rules that grant (`principal`) beside.",
        _LATEST_ACCOUNTS + """
SELECT r.host, r.key AS account, (r.data->>'uid')::BIGINT AS uid,
       coalesce((r.data->>'sudo')::BOOLEAN, false) AS sudo,
       (r.data->>'login_allowed')::BOOLEAN AS login_allowed, r.data->>'shell' AS shell,
       r.observed_at, r.bundle, r.line
FROM records r JOIN latest USING (host, bundle)
WHERE r.collector = 'accounts' AND r.type = 'user'
  AND ((r.data->>'uid')::BIGINT = 0 OR coalesce((r.data->>'sudo')::BOOLEAN, false))
UNION ALL
SELECT r.host, r.data->>'principal' AS account, NULL, true, NULL,
       'sudoers ' || r.key || ': ' || (r.data->>'text'), r.observed_at, r.bundle, r.line
FROM records r JOIN latest USING (host, bundle)
WHERE r.collector = 'accounts' AND r.type = 'sudoers_rule'
  AND r.data->>'rule_type' = 'rule' AND coalesce((r.data->>'included')::BOOLEAN, true)
ORDER BY host, account, bundle, line
"""),
    NamedQuery(
        "ai-egress",
        "Connections to configured AI endpoints by host, process and endpoint: the "
        "daemon's watch (ai_egress) and the network snapshots (network ai_egress), with "
        "the first record of each group.",
        """
WITH seen AS (
    SELECT host, 'watch' AS seen_by, data->>'endpoint' AS endpoint,
           coalesce(data->>'process_name', '(unknown)') AS process, data->>'exe' AS exe,
           (data->>'count')::BIGINT AS connections, key,
           (data->>'first_seen')::TIMESTAMP AS first_seen,
           (data->>'last_seen')::TIMESTAMP AS last_seen, bundle, line
    FROM records WHERE collector = 'ai_egress' AND type = 'ai_egress_observed'
    UNION ALL
    -- a snapshot sees a connection as long as it lasts: count each (its key) once
    SELECT host, 'snapshot', data->'matched'->>0,
           coalesce(data->>'process_name', '(unknown)'), data->>'exe', NULL, key,
           observed_at, observed_at, bundle, line
    FROM records WHERE collector = 'network' AND type = 'ai_egress')
SELECT host, process, exe, endpoint, seen_by,
       CASE WHEN seen_by = 'watch' THEN sum(connections)
            ELSE count(DISTINCT key) END::BIGINT AS connections,
       min(first_seen) AS first_seen, max(last_seen) AS last_seen, count(*) AS records,
       arg_min(bundle, first_seen) AS bundle, arg_min(line, first_seen) AS line
FROM seen GROUP BY host, process, exe, endpoint, seen_by
ORDER BY host, process, endpoint, seen_by
"""),
    NamedQuery(
        "failed-logins",
        "Failed logins and refused privilege use: sshd, sudo and su from the logs, and "
        "btmp's failed logins (each once, at the first bundle that holds it).",
        """
SELECT host, (data->>'time')::TIMESTAMP AS time, data->>'account' AS account,
       data->>'source' AS source, data->>'action' AS action,
       data->>'target_account' AS target_account, bundle, line
FROM records WHERE collector = 'logs' AND type = 'access'
  AND data->>'action' IN ('ssh_login_failed', 'ssh_invalid_user', 'sudo_failed',
                           'sudo_denied', 'su_failed')
UNION ALL
-- btmp is read whole by every sessions run: each entry once, where first sealed.
SELECT host, time, account, source, action, NULL, bundle, line FROM (
    SELECT host, (data->>'time')::TIMESTAMP AS time, data->>'user' AS account,
           coalesce(data->>'address', data->>'host') AS source,
           'failed_login' AS action, bundle, line, observed_at, key
    FROM records WHERE collector = 'sessions' AND type = 'failed_login'
    QUALIFY row_number() OVER (PARTITION BY host, key ORDER BY observed_at, line) = 1)
ORDER BY host, time, bundle, line
"""),
    NamedQuery(
        "config-changes",
        "Changes to watched files (created, modified, removed), from the full sweeps and "
        "the daemon's file watching, in time order.",
        """
SELECT host, observed_at, data->>'change' AS change, key AS path,
       array_to_string(from_json(data->'changed_fields', '["VARCHAR"]'), ',')
           AS changed_fields,
       data->>'detected_by' AS detected_by, data->>'sha256' AS sha256, bundle, line
FROM records WHERE collector = 'files' AND type = 'file_change'
ORDER BY host, observed_at, bundle, line
"""),
)}

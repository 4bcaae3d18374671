-- Version 6: what a purge left held behind a dead job before purges buried it (version 5 and
-- before) is buried now, as a purge does today (postgres_sql._BURY_ORPHANS): dead, its
-- payload purged, from when its wait became hopeless. Without it such a job, a deal's update
-- behind a create that died, stays held for ever with its personal data.
WITH RECURSIVE orphans (id, done_at) AS (
    SELECT h.id, GREATEST(h.created_at, p.done_at) FROM jobs AS p
    JOIN jobs AS h ON h.after = p.id AND h.state = 'held'
    WHERE p.state = 'dead' AND p.payload IS NULL
    UNION
    SELECT h.id, GREATEST(h.created_at, o.done_at) FROM orphans AS o
    JOIN jobs AS h ON h.after = o.id AND h.state = 'held'
)
UPDATE jobs SET state = 'dead', payload = NULL, done_at = orphans.done_at,
    last_error = 'parent_dead: the job it waits for was dead and has been purged'
FROM orphans WHERE jobs.id = orphans.id AND jobs.state = 'held';

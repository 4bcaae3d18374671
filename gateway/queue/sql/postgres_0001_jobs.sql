-- Version 1: the jobs, the counts by state that stats() reads, and the work notifications.
-- Run by gateway/queue/postgres_schema.py in one transaction, under its advisory lock.

CREATE TABLE jobs (
    id          text PRIMARY KEY,
    kind        text NOT NULL,
    state       text NOT NULL
                CHECK (state IN ('ready', 'leased', 'delayed', 'delivered', 'dead')),
    payload     bytea,
    dedup_key   text,
    created_at  double precision NOT NULL,
    visible_at  double precision NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    lease       integer NOT NULL DEFAULT 0,
    last_error  text,
    upstream_id text,
    done_at     double precision,
    site        text NOT NULL DEFAULT 'default'
);

CREATE UNIQUE INDEX jobs_site_dedup ON jobs (site, kind, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX jobs_visible ON jobs (kind, visible_at)
    WHERE state IN ('ready', 'leased', 'delayed');
CREATE INDEX jobs_age ON jobs (created_at)
    WHERE state IN ('ready', 'leased', 'delayed');
CREATE INDEX jobs_done ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead');
-- Purged rows leave it, so a purge never walks over the history of earlier ones.
CREATE INDEX jobs_purge ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL;

-- Each count is spread over 16 slots, picked by the writing backend: two transactions (one
-- gateway's puts, another's acks) then seldom wait on the same row lock until they commit.
-- The rows are rewritten all the time; room on their pages keeps the updates HOT.
CREATE TABLE job_counts (
    site  text NOT NULL,
    kind  text NOT NULL,
    state text NOT NULL,
    slot  integer NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (site, kind, state, slot)
) WITH (fillfactor = 50);

-- Once a statement, over its transition tables: a group commit of 300 puts is one upsert
-- per (site, kind, state), in key order, so two writers never lock counts in opposite orders.
-- New work (a put, a retry, a release, a replay) notifies ctgw_work with its kind; the
-- notification goes out when the transaction commits, to every gateway listening.
CREATE FUNCTION jobs_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts AS c (site, kind, state, slot, n)
        SELECT site, kind, state, pg_backend_pid() % 16, count(*) FROM new_rows
        GROUP BY site, kind, state ORDER BY site, kind, state
        ON CONFLICT (site, kind, state, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO job_counts AS c (site, kind, state, slot, n)
        SELECT site, kind, state, pg_backend_pid() % 16, sum(delta) FROM (
            SELECT site, kind, state, 1 AS delta FROM new_rows
            UNION ALL
            SELECT site, kind, state, -1 AS delta FROM old_rows
        ) AS moved
        GROUP BY site, kind, state HAVING sum(delta) <> 0 ORDER BY site, kind, state
        ON CONFLICT (site, kind, state, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO job_counts AS c (site, kind, state, slot, n)
        SELECT site, kind, state, pg_backend_pid() % 16, -count(*) FROM old_rows
        GROUP BY site, kind, state ORDER BY site, kind, state
        ON CONFLICT (site, kind, state, slot) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('ctgw_work', kind)
        FROM (SELECT DISTINCT kind FROM new_rows WHERE state IN ('ready', 'delayed')) AS woken;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_counted_in AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted();
CREATE TRIGGER jobs_counted_move AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted();
CREATE TRIGGER jobs_counted_out AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted();

-- Version 3: links between jobs. A job held for another (after) until that one is delivered,
-- the upstream id it was released with, its place in a chain (one deal's calls, in order),
-- and what its answer said (details, JSON, nothing personal).
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('ready', 'leased', 'delayed', 'delivered', 'dead', 'spam', 'held'));
ALTER TABLE jobs ADD COLUMN after text;
ALTER TABLE jobs ADD COLUMN after_upstream text;
ALTER TABLE jobs ADD COLUMN chain text;
ALTER TABLE jobs ADD COLUMN chain_seq integer;
ALTER TABLE jobs ADD COLUMN details text;
CREATE INDEX jobs_held ON jobs (after) WHERE state = 'held';
CREATE INDEX jobs_chain ON jobs (site, chain, chain_seq) WHERE chain IS NOT NULL;

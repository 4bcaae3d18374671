-- Version 2: quarantined spam, a state of its own that is never leased nor pending.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('ready', 'leased', 'delayed', 'delivered', 'dead', 'spam'));
CREATE INDEX jobs_spam ON jobs (created_at) WHERE state = 'spam';

-- Version 4: the API points each site spent in each of its hours and days, every gateway's
-- (gateway.queue.points_sql). A window is named by the moment it ends.
CREATE TABLE points_spent (
    site   text NOT NULL,
    span   text NOT NULL CHECK (span IN ('hour', 'day')),
    ends   double precision NOT NULL,
    points integer NOT NULL,
    bulk   integer NOT NULL,
    PRIMARY KEY (site, span, ends)
);

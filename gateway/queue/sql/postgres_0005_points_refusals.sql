-- Version 5: an hour's latest refusal for API points and latest call passed after one, as any
-- gateway heard them (gateway.relay.points): the site is refused while refused > resumed.
ALTER TABLE points_spent
    ADD COLUMN refused double precision NOT NULL DEFAULT 0,
    ADD COLUMN resumed double precision NOT NULL DEFAULT 0;

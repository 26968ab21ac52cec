-- Who holds a delivery's or a ping's claim (`host/pid/process start`): a claim whose
-- holder is gone (a daemon killed mid-delivery) is taken back at once instead of when it
-- runs out, so the next agent to deliver sends it.
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE pings ADD COLUMN claimed_by TEXT;

-- Which version of its key each projected row holds: the Kafka timestamp of the message it
-- came from (when its producer sent it), then that message's offset. A write changes a row
-- only with a newer version, so the tables hold the newest message of every key whatever
-- order the messages arrive in: a replay, a stage that published a key twice, or a batch
-- written late by an instance that has lost its partition in a rebalance changes nothing.
-- Rows from before this migration rank below every message.

ALTER TABLE bars
    ADD COLUMN produced_at   timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_offset bigint NOT NULL DEFAULT -1;
ALTER TABLE predictions
    ADD COLUMN produced_at   timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_offset bigint NOT NULL DEFAULT -1;
ALTER TABLE prediction_outcomes
    ADD COLUMN produced_at   timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN source_offset bigint NOT NULL DEFAULT -1;

-- symbol_latest's bar and prediction halves each keep the version of what they show (null
-- while the half is empty).
ALTER TABLE symbol_latest
    ADD COLUMN bar_produced_at          timestamptz,
    ADD COLUMN bar_source_offset        bigint,
    ADD COLUMN prediction_produced_at   timestamptz,
    ADD COLUMN prediction_source_offset bigint;
UPDATE symbol_latest SET bar_produced_at = '-infinity', bar_source_offset = -1
    WHERE bar_start IS NOT NULL;
UPDATE symbol_latest SET prediction_produced_at = '-infinity', prediction_source_offset = -1
    WHERE prediction_bar_start IS NOT NULL;

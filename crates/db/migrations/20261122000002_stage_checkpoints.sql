-- Checkpoints of stateful stages (aggregate): for each input partition, the offset to
-- resume from, the watermark there, and the last offset whose outputs were delivered.
-- Written about once a second; read when a partition is assigned.
CREATE TABLE stage_checkpoints (
    consumer_group       text NOT NULL,
    topic                text NOT NULL,
    partition            integer NOT NULL CHECK (partition >= 0),
    resume_offset        bigint NOT NULL CHECK (resume_offset >= 0),
    watermark_ms         bigint NOT NULL,
    acknowledged_through bigint NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

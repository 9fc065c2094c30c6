-- The model registry: every trained version with what reproduces and judges it, and the
-- aliases `champion` (serves) and `challenger` (judged beside it), one version each. Every
-- move of an alias is a row in model_alias_moves: who or what moved it, and why.

CREATE TABLE model_versions (
    version           integer PRIMARY KEY CHECK (version > 0),
    name              text NOT NULL,
    -- The artifact as the trainer wrote it, and the SHA-256 of that text.
    artifact          jsonb NOT NULL,
    artifact_sha256   text NOT NULL CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    training_command  text NOT NULL,
    -- Event time of the bars it was trained on (null: not trained on stored bars, e.g. the
    -- committed model, trained on the simulator).
    data_start        timestamptz,
    data_end          timestamptz,
    heldout           jsonb NOT NULL,
    -- The training data binned per feature and for the output probability.
    reference_profile jsonb NOT NULL,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (data_start IS NULL OR data_end IS NULL OR data_end > data_start)
);

CREATE TABLE model_aliases (
    alias    text PRIMARY KEY CHECK (alias IN ('champion', 'challenger')),
    version  integer NOT NULL REFERENCES model_versions (version),
    moved_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_alias_moves (
    id           bigserial PRIMARY KEY,
    alias        text NOT NULL CHECK (alias IN ('champion', 'challenger')),
    -- Null: the alias pointed nowhere before (or is cleared by the move).
    from_version integer REFERENCES model_versions (version),
    to_version   integer REFERENCES model_versions (version),
    actor        text NOT NULL,
    reason       text NOT NULL,
    moved_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_alias_moves_by_alias ON model_alias_moves (alias, id);

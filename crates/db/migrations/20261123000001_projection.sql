-- The projection (service `project`): closed bars, predictions and their observed
-- outcomes, and the latest state per symbol. Every write is a keyed upsert that leaves a
-- row untouched when nothing changed, so replaying the topics leaves every table as it
-- was, `updated_at` included.

CREATE TABLE bars (
    symbol           text NOT NULL,
    interval_seconds integer NOT NULL CHECK (interval_seconds > 0),
    start_time       timestamptz NOT NULL,
    end_time         timestamptz NOT NULL,
    open             double precision NOT NULL,
    high             double precision NOT NULL,
    low              double precision NOT NULL,
    close            double precision NOT NULL,
    volume           double precision NOT NULL CHECK (volume >= 0),
    vwap             double precision NOT NULL,
    trade_count      bigint NOT NULL CHECK (trade_count > 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, interval_seconds, start_time),
    CHECK (end_time > start_time),
    CHECK (low <= high)
);

CREATE TABLE predictions (
    symbol             text NOT NULL,
    bar_start          timestamptz NOT NULL,
    bar_end            timestamptz NOT NULL,
    horizon_minutes    integer NOT NULL CHECK (horizon_minutes > 0),
    model_version      text NOT NULL,
    variant            text NOT NULL,
    probability        double precision NOT NULL CHECK (probability BETWEEN 0 AND 1),
    spike              boolean NOT NULL,
    online_probability double precision NOT NULL CHECK (online_probability BETWEEN 0 AND 1),
    online_spike       boolean NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bar_start)
);

-- What happened over each prediction's horizon (keyed like the prediction it judges; it
-- may arrive before the prediction, so there is no foreign key).
CREATE TABLE prediction_outcomes (
    symbol              text NOT NULL,
    bar_start           timestamptz NOT NULL,
    horizon_minutes     integer NOT NULL CHECK (horizon_minutes > 0),
    judged_by_bar_start timestamptz NOT NULL,
    realised_volatility double precision NOT NULL,
    spike_threshold     double precision NOT NULL,
    spike               boolean NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, bar_start)
);

-- One row per symbol: its newest bar and newest prediction. Only ever moves forward in
-- time, so replayed or reordered input cannot turn it back.
CREATE TABLE symbol_latest (
    symbol                text PRIMARY KEY,
    bar_interval_seconds  integer,
    bar_start             timestamptz,
    bar_end               timestamptz,
    open                  double precision,
    high                  double precision,
    low                   double precision,
    close                 double precision,
    volume                double precision,
    vwap                  double precision,
    trade_count           bigint,
    prediction_bar_start  timestamptz,
    prediction_variant    text,
    prediction_model_version text,
    prediction_probability double precision,
    prediction_spike      boolean,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

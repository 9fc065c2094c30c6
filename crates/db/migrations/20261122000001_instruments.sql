-- Instrument reference data, read by enrich. Prices and sizes are in the instrument's
-- quote and base units; the price band is the range a print is plausible in.
CREATE TABLE instruments (
    symbol          text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9]+(-[A-Z0-9]+)?$'),
    asset_class     text NOT NULL CHECK (asset_class IN ('crypto', 'equity', 'fx')),
    base            text NOT NULL,
    quote           text NOT NULL,
    tick_size       double precision NOT NULL CHECK (tick_size > 0),
    lot_size        double precision NOT NULL CHECK (lot_size > 0),
    price_band_low  double precision NOT NULL CHECK (price_band_low > 0),
    price_band_high double precision NOT NULL,
    -- Median trade size: the yardstick for outsized trades.
    typical_size    double precision NOT NULL CHECK (typical_size > 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (price_band_high > price_band_low)
);

-- The simulator's symbols. Bands are half to twice the simulator's base price.
INSERT INTO instruments
    (symbol, asset_class, base, quote, tick_size, lot_size, price_band_low, price_band_high, typical_size)
VALUES
    ('BTC-USD', 'crypto', 'BTC', 'USD', 0.01, 0.00001, 32500, 130000, 0.05),
    ('ETH-USD', 'crypto', 'ETH', 'USD', 0.01, 0.0001, 1600, 6400, 0.8),
    ('SOL-USD', 'crypto', 'SOL', 'USD', 0.001, 0.001, 75, 300, 12),
    ('XRP-USD', 'crypto', 'XRP', 'USD', 0.00001, 1, 0.275, 1.1, 2500),
    ('AAPL', 'equity', 'AAPL', 'USD', 0.01, 1, 95, 380, 100),
    ('EUR-USD', 'fx', 'EUR', 'USD', 0.00001, 1000, 0.54, 2.16, 100000);

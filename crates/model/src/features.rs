//! Model inputs: one-minute bars built from trades, and the rolling features computed from
//! them. The aggregate stage and the trainer use this same code, so the model is served the
//! features it was trained on.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Feature names in the order of [`Features::to_array`] and the artifact's weights.
pub const FEATURE_NAMES: [&str; 6] = [
    "ret_1m",
    "ret_5m",
    "vol_5m",
    "vol_15m",
    "volume_z",
    "trade_rate",
];

/// Bars of history needed before the first feature vector: 15 one-minute returns.
pub const WARMUP_BARS: usize = 16;
/// Bars over which volume is standardised.
const VOLUME_WINDOW: usize = 30;
/// Bars a [`FeatureBuilder`] remembers: pushing this many bars into a fresh builder gives
/// it exactly the state of one that saw the whole history.
pub const HISTORY_BARS: usize = VOLUME_WINDOW + 1;

/// The model's input for one symbol at the close of one minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Features {
    /// Log return over the last minute.
    pub ret_1m: f64,
    /// Log return over the last five minutes.
    pub ret_5m: f64,
    /// Realised volatility (root mean square of one-minute log returns) over five minutes.
    pub vol_5m: f64,
    /// Realised volatility over fifteen minutes.
    pub vol_15m: f64,
    /// Last minute's volume as a z-score against the previous thirty minutes.
    pub volume_z: f64,
    /// Trades per second in the last minute.
    pub trade_rate: f64,
}

impl Features {
    pub fn to_array(&self) -> [f64; 6] {
        [
            self.ret_1m,
            self.ret_5m,
            self.vol_5m,
            self.vol_15m,
            self.volume_z,
            self.trade_rate,
        ]
    }
}

/// One closed one-minute OHLC bar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub start_ms: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub trades: u64,
}

impl Bar {
    /// Starts a bar with its first trade.
    pub fn open_at(start_ms: i64, price: f64, size: f64) -> Self {
        Self {
            start_ms,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: size,
            trades: 1,
        }
    }

    /// Adds a later trade of the same minute.
    pub fn add(&mut self, price: f64, size: f64) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume += size;
        self.trades += 1;
    }
}

/// Realised volatility of a series of log returns: the root mean square (zero-mean
/// convention, standard for high-frequency returns).
pub fn realised_vol(returns: &[f64]) -> f64 {
    if returns.is_empty() {
        return 0.0;
    }
    (returns.iter().map(|r| r * r).sum::<f64>() / returns.len() as f64).sqrt()
}

/// Rolling feature state of one symbol: push each closed bar, get features once warm.
#[derive(Debug, Clone, Default)]
pub struct FeatureBuilder {
    closes: VecDeque<f64>,
    volumes: VecDeque<f64>,
}

impl FeatureBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next closed bar; returns its features once [`WARMUP_BARS`] bars were seen.
    pub fn push(&mut self, bar: &Bar) -> Option<Features> {
        self.closes.push_back(bar.close);
        if self.closes.len() > WARMUP_BARS {
            self.closes.pop_front();
        }
        self.volumes.push_back(bar.volume);
        if self.volumes.len() > VOLUME_WINDOW + 1 {
            self.volumes.pop_front();
        }
        if self.closes.len() < WARMUP_BARS {
            return None;
        }
        let returns: Vec<f64> = self
            .closes
            .iter()
            .zip(self.closes.iter().skip(1))
            .map(|(a, b)| (b / a).ln())
            .collect();
        let n = returns.len();
        let last = self.closes[self.closes.len() - 1];
        let previous: Vec<f64> = self
            .volumes
            .iter()
            .take(self.volumes.len() - 1)
            .copied()
            .collect();
        let mean = previous.iter().sum::<f64>() / previous.len() as f64;
        let sd = (previous.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / previous.len() as f64)
            .sqrt();
        let volume_z = if sd > 0.0 {
            (bar.volume - mean) / sd
        } else {
            0.0
        };
        Some(Features {
            ret_1m: returns[n - 1],
            ret_5m: (last / self.closes[self.closes.len() - 6]).ln(),
            vol_5m: realised_vol(&returns[n - 5..]),
            vol_15m: realised_vol(&returns),
            volume_z,
            trade_rate: bar.trades as f64 / 60.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(i: i64, close: f64, volume: f64) -> Bar {
        Bar {
            start_ms: i * 60_000,
            open: close,
            high: close,
            low: close,
            close,
            volume,
            trades: 120,
        }
    }

    #[test]
    fn features_appear_after_warmup_and_match_a_hand_computation() {
        let mut builder = FeatureBuilder::new();
        let closes: Vec<f64> = (0..16).map(|i| 100.0 * (0.001 * i as f64).exp()).collect();
        let mut out = None;
        for (i, c) in closes.iter().enumerate() {
            out = builder.push(&bar(i as i64, *c, 10.0));
            if i < 15 {
                assert!(out.is_none(), "no features before warm-up (bar {i})");
            }
        }
        let f = out.expect("features after 16 bars");
        assert!((f.ret_1m - 0.001).abs() < 1e-12);
        assert!((f.ret_5m - 0.005).abs() < 1e-12);
        assert!((f.vol_5m - 0.001).abs() < 1e-12);
        assert!((f.vol_15m - 0.001).abs() < 1e-12);
        assert_eq!(f.volume_z, 0.0, "constant volume has no z-score");
        assert_eq!(f.trade_rate, 2.0);
    }

    #[test]
    fn a_volume_burst_gives_a_large_z_score() {
        let mut builder = FeatureBuilder::new();
        for i in 0..30 {
            builder.push(&bar(i, 100.0, if i % 2 == 0 { 9.0 } else { 11.0 }));
        }
        let f = builder.push(&bar(30, 100.0, 30.0)).expect("warm");
        assert!(f.volume_z > 10.0, "z = {}", f.volume_z);
    }
}

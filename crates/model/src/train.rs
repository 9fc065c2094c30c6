//! The reproducible trainer: simulate a market, build features and labels, fit a logistic
//! regression by Newton's method, tune the baseline rule, and score both on held-out data.
//!
//! Everything is deterministic for a given [`TrainConfig`]: the same command writes the same
//! artifact byte for byte, which a test checks against the committed file.

use tidewatch_market_sim::{Market, MarketConfig};

use crate::artifact::{
    BaselineRule, HeldOut, ModelArtifact, Scaler, Scores, TrainingMetadata, Transform,
    SCHEMA_VERSION,
};
use crate::features::{realised_vol, Bar, FeatureBuilder, FEATURE_NAMES};
use crate::profile::ReferenceProfile;
use crate::{Features, Model, Variant};

const TRANSFORMS: [Transform; 6] = [
    Transform::Identity,
    Transform::Identity,
    Transform::Log,
    Transform::Log,
    Transform::Identity,
    Transform::Log1p,
];

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub name: String,
    pub version: String,
    pub seed: u64,
    /// Simulated minutes per symbol.
    pub minutes: u64,
    /// Minutes ahead over which the label's realised volatility is measured.
    pub horizon: u64,
    pub spike_threshold: f64,
    /// Trailing share of each symbol's minutes held out for scoring.
    pub test_fraction: f64,
    pub l2: f64,
    pub max_iterations: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            name: "volatility-spike-logreg".into(),
            version: "1.0.0".into(),
            seed: 42,
            minutes: 7 * 24 * 60,
            horizon: 5,
            spike_threshold: 0.0025,
            test_fraction: 0.2,
            l2: 1.0,
            max_iterations: 50,
        }
    }
}

impl TrainConfig {
    /// The command line that reproduces this configuration.
    pub fn command(&self) -> String {
        format!(
            "cargo run --release -p tidewatch-model --bin train -- --seed {} --minutes {} --horizon {} --spike-threshold {} --model-version {} --out models/volatility-spike.json --profile-out models/volatility-spike.profile.json",
            self.seed, self.minutes, self.horizon, self.spike_threshold, self.version
        )
    }
}

/// One labelled example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Example {
    pub features: Features,
    pub spike: bool,
}

/// Simulates the market and returns (train, test) examples, split by time per symbol with a
/// gap of one horizon so no training label overlaps a test feature window.
pub fn dataset(config: &TrainConfig) -> (Vec<Example>, Vec<Example>) {
    let market_config = MarketConfig::new(config.seed);
    let symbols = market_config.symbols.len();
    let mut market = Market::new(&market_config);
    let mut bars: Vec<Vec<Bar>> = vec![Vec::with_capacity(config.minutes as usize); symbols];
    for _ in 0..config.minutes {
        let start = market.now_ms();
        let mut current: Vec<Option<Bar>> = vec![None; symbols];
        for trade in market.next_minute() {
            let i = market_config
                .symbols
                .iter()
                .position(|s| s.symbol == trade.symbol)
                .unwrap_or(0);
            match &mut current[i] {
                Some(bar) => bar.add(trade.price, trade.size),
                slot => *slot = Some(Bar::open_at(start, trade.price, trade.size)),
            }
        }
        for (i, bar) in current.into_iter().enumerate() {
            if let Some(bar) = bar {
                bars[i].push(bar);
            }
        }
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for series in &bars {
        let cut = (series.len() as f64 * (1.0 - config.test_fraction)) as usize;
        let cut_ms = series.get(cut).map_or(i64::MAX, |b| b.start_ms);
        let labels = Labels {
            horizon: config.horizon as usize,
            spike_threshold: config.spike_threshold,
            interval_ms: None,
        };
        labels.split(series, cut_ms, &mut train, &mut test);
    }
    (train, test)
}

/// How examples are labelled from a symbol's bars.
#[derive(Debug, Clone, Copy)]
struct Labels {
    horizon: usize,
    spike_threshold: f64,
    /// Bars this far apart are consecutive; a larger step is a gap, which restarts the
    /// rolling features (they assume consecutive minutes) and no label spans it. None:
    /// every bar follows the one before (the simulator's series).
    interval_ms: Option<i64>,
}

impl Labels {
    /// Labels every bar whose features and horizon lie within one run of consecutive bars,
    /// into `train` when its horizon ends before `cut_ms` and into `test` when it starts at
    /// or after it (so no training label overlaps a test feature window).
    fn split(
        &self,
        series: &[Bar],
        cut_ms: i64,
        train: &mut Vec<Example>,
        test: &mut Vec<Example>,
    ) {
        let mut start = 0;
        while start < series.len() {
            let mut end = start + 1;
            if let Some(step) = self.interval_ms {
                while end < series.len() && series[end].start_ms == series[end - 1].start_ms + step
                {
                    end += 1;
                }
            } else {
                end = series.len();
            }
            let run = &series[start..end];
            let mut builder = FeatureBuilder::new();
            for t in 0..run.len() {
                let Some(features) = builder.push(&run[t]) else {
                    continue;
                };
                if t + self.horizon >= run.len() {
                    break;
                }
                let future: Vec<f64> = (t + 1..=t + self.horizon)
                    .map(|k| (run[k].close / run[k - 1].close).ln())
                    .collect();
                let example = Example {
                    features,
                    spike: realised_vol(&future) > self.spike_threshold,
                };
                if run[t + self.horizon].start_ms < cut_ms {
                    train.push(example);
                } else if run[t].start_ms >= cut_ms {
                    test.push(example);
                }
            }
            start = end;
        }
    }
}

fn design_row(f: &Features) -> [f64; 6] {
    let x = f.to_array();
    std::array::from_fn(|i| TRANSFORMS[i].apply(x[i]))
}

/// Fits standardised logistic regression with an L2 penalty (not on the intercept) by
/// Newton's method; returns scaler, weights, intercept and the iterations used.
pub fn fit(examples: &[Example], l2: f64, max_iterations: u64) -> (Scaler, Vec<f64>, f64, u64) {
    const D: usize = 7;
    let n = examples.len().max(1) as f64;
    let rows: Vec<[f64; 6]> = examples.iter().map(|e| design_row(&e.features)).collect();
    let mean: Vec<f64> = (0..6)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let std: Vec<f64> = (0..6)
        .map(|j| {
            let s = (rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt();
            if s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    let xs: Vec<[f64; D]> = rows
        .iter()
        .map(|r| {
            let mut x = [1.0; D];
            for j in 0..6 {
                x[j + 1] = (r[j] - mean[j]) / std[j];
            }
            x
        })
        .collect();
    let mut w = [0.0; D];
    let mut used = 0;
    for _ in 0..max_iterations {
        used += 1;
        let mut grad = [0.0; D];
        let mut hess = [[0.0; D]; D];
        for (x, e) in xs.iter().zip(examples) {
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let y = if e.spike { 1.0 } else { 0.0 };
            let s = p * (1.0 - p);
            for a in 0..D {
                grad[a] += (p - y) * x[a];
                for b in 0..D {
                    hess[a][b] += s * x[a] * x[b];
                }
            }
        }
        for a in 1..D {
            grad[a] += l2 * w[a];
            hess[a][a] += l2;
        }
        let Some(step) = solve(hess, grad) else { break };
        for a in 0..D {
            w[a] -= step[a];
        }
        if step.iter().all(|s| s.abs() < 1e-10) {
            break;
        }
    }
    (Scaler { mean, std }, w[1..].to_vec(), w[0], used)
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None` if singular.
fn solve<const D: usize>(mut a: [[f64; D]; D], mut b: [f64; D]) -> Option<[f64; D]> {
    for col in 0..D {
        let pivot = (col..D).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..D {
            let f = a[row][col] / pivot_row[col];
            for (cell, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *cell -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; D];
    for row in (0..D).rev() {
        let s: f64 = (row + 1..D).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

/// Accuracy, precision, recall and F1 at `threshold`, and the area under the ROC curve.
pub fn score(probabilities: &[f64], labels: &[bool], threshold: f64) -> Scores {
    let (mut tp, mut fp, mut tn, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    for (p, y) in probabilities.iter().zip(labels) {
        match (*p >= threshold, *y) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, false) => tn += 1.0,
            (false, true) => fn_ += 1.0,
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    Scores {
        accuracy: ratio(tp + tn, tp + tn + fp + fn_),
        precision,
        recall,
        f1: ratio(2.0 * precision * recall, precision + recall),
        auc: auc(probabilities, labels),
    }
}

/// Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties counted half.
pub fn auc(probabilities: &[f64], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = probabilities
        .iter()
        .copied()
        .zip(labels.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mid_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += pairs[i..j].iter().filter(|p| p.1).count() as f64 * mid_rank;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Picks the volatility-ratio threshold with the best training F1.
fn fit_baseline(model_for: impl Fn(BaselineRule) -> Model, train: &[Example]) -> BaselineRule {
    let labels: Vec<bool> = train.iter().map(|e| e.spike).collect();
    (0..=40)
        .map(|i| BaselineRule {
            ratio_threshold: (800.0 + 25.0 * i as f64) / 1000.0,
            steepness: 8.0,
        })
        .map(|rule| {
            let model = model_for(rule);
            let probs: Vec<f64> = train
                .iter()
                .map(|e| model.predict(Variant::Baseline, &e.features).probability)
                .collect();
            (rule, score(&probs, &labels, 0.5).f1)
        })
        .fold(None::<(BaselineRule, f64)>, |best, (rule, f1)| match best {
            Some((_, best_f1)) if best_f1 >= f1 => best,
            _ => Some((rule, f1)),
        })
        .map_or(
            BaselineRule {
                ratio_threshold: 1.25,
                steepness: 8.0,
            },
            |(rule, _)| rule,
        )
}

/// Trains both variants and returns the complete artifact.
pub fn train(config: &TrainConfig) -> ModelArtifact {
    train_with_profile(config).0
}

/// [`train`], and the reference profile of its training rows: every feature and the `ml`
/// variant's probability, binned (what live data is compared with for drift).
pub fn train_with_profile(config: &TrainConfig) -> (ModelArtifact, ReferenceProfile) {
    let (train_set, test_set) = dataset(config);
    let fit = Fit {
        name: &config.name,
        version: &config.version,
        l2: config.l2,
        max_iterations: config.max_iterations,
    };
    let metadata = TrainingMetadata {
        command: config.command(),
        seed: config.seed,
        symbols: MarketConfig::new(config.seed)
            .symbols
            .iter()
            .map(|s| s.symbol.to_string())
            .collect(),
        minutes_per_symbol: config.minutes,
        horizon_minutes: config.horizon,
        spike_threshold: config.spike_threshold,
        train_rows: 0,
        test_rows: 0,
        train_positive_rate: 0.0,
        test_positive_rate: 0.0,
        l2: config.l2,
        newton_iterations: 0,
    };
    fit.run(metadata, &train_set, &test_set)
}

/// Training on bars a running system stored (the `trainer` service's input).
#[derive(Debug, Clone, PartialEq)]
pub struct BarsConfig {
    pub name: String,
    pub version: String,
    /// Recorded in the artifact: what trained it, on which bars.
    pub command: String,
    pub interval_ms: i64,
    pub horizon: u64,
    pub spike_threshold: f64,
    /// Trailing share of each symbol's bars held out for scoring.
    pub test_fraction: f64,
    pub l2: f64,
    pub max_iterations: u64,
    /// Fewer training rows than this (or one class only) is no training.
    pub min_train_rows: usize,
}

impl BarsConfig {
    /// The committed model's settings for everything but the data.
    pub fn like(base: &TrainConfig, version: String, command: String) -> Self {
        Self {
            name: base.name.clone(),
            version,
            command,
            interval_ms: 60_000,
            horizon: base.horizon,
            spike_threshold: base.spike_threshold,
            test_fraction: base.test_fraction,
            l2: base.l2,
            max_iterations: base.max_iterations,
            min_train_rows: 500,
        }
    }
}

/// Trains on stored bars, one series per symbol (oldest first; gaps allowed: the rolling
/// features restart after one and no label spans it). Each symbol's trailing
/// `test_fraction` is held out. Fails, saying why, when the bars make too few examples or
/// only one class.
pub fn train_on_bars(
    series: &[(String, Vec<Bar>)],
    config: &BarsConfig,
) -> Result<(ModelArtifact, ReferenceProfile), String> {
    let labels = Labels {
        horizon: config.horizon as usize,
        spike_threshold: config.spike_threshold,
        interval_ms: Some(config.interval_ms),
    };
    let (mut train_set, mut test_set) = (Vec::new(), Vec::new());
    for (_, bars) in series {
        let cut = (bars.len() as f64 * (1.0 - config.test_fraction)) as usize;
        let cut_ms = bars.get(cut).map_or(i64::MAX, |b| b.start_ms);
        labels.split(bars, cut_ms, &mut train_set, &mut test_set);
    }
    let positives = train_set.iter().filter(|e| e.spike).count();
    if train_set.len() < config.min_train_rows.max(1) || test_set.is_empty() {
        return Err(format!(
            "{} bars make {} training and {} held-out examples; at least {} and 1 are needed",
            series.iter().map(|(_, b)| b.len()).sum::<usize>(),
            train_set.len(),
            test_set.len(),
            config.min_train_rows.max(1)
        ));
    }
    if positives == 0 || positives == train_set.len() {
        return Err(format!(
            "all {} training examples have the same label (spike: {})",
            train_set.len(),
            positives > 0
        ));
    }
    let fit = Fit {
        name: &config.name,
        version: &config.version,
        l2: config.l2,
        max_iterations: config.max_iterations,
    };
    let metadata = TrainingMetadata {
        command: config.command.clone(),
        seed: 0,
        symbols: series.iter().map(|(s, _)| s.clone()).collect(),
        minutes_per_symbol: series
            .iter()
            .map(|(_, b)| b.len() as u64)
            .max()
            .unwrap_or(0),
        horizon_minutes: config.horizon,
        spike_threshold: config.spike_threshold,
        train_rows: 0,
        test_rows: 0,
        train_positive_rate: 0.0,
        test_positive_rate: 0.0,
        l2: config.l2,
        newton_iterations: 0,
    };
    Ok(fit.run(metadata, &train_set, &test_set))
}

/// What fitting needs besides the data.
struct Fit<'a> {
    name: &'a str,
    version: &'a str,
    l2: f64,
    max_iterations: u64,
}

impl Fit<'_> {
    /// Fits both variants on `train_set`, scores them on `test_set` and profiles the
    /// training rows; `metadata`'s row counts and iterations are filled in here.
    fn run(
        &self,
        mut metadata: TrainingMetadata,
        train_set: &[Example],
        test_set: &[Example],
    ) -> (ModelArtifact, ReferenceProfile) {
        let (scaler, weights, intercept, iterations) = fit(train_set, self.l2, self.max_iterations);
        let positive_rate = |set: &[Example]| {
            set.iter().filter(|e| e.spike).count() as f64 / set.len().max(1) as f64
        };
        metadata.train_rows = train_set.len() as u64;
        metadata.test_rows = test_set.len() as u64;
        metadata.train_positive_rate = round(positive_rate(train_set));
        metadata.test_positive_rate = round(positive_rate(test_set));
        metadata.newton_iterations = iterations;
        let zero = Scores {
            accuracy: 0.0,
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
            auc: 0.0,
        };
        let mut artifact = ModelArtifact {
            schema_version: SCHEMA_VERSION,
            name: self.name.to_owned(),
            version: self.version.to_owned(),
            features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            transforms: TRANSFORMS.to_vec(),
            scaler,
            weights,
            intercept,
            threshold: 0.5,
            baseline: BaselineRule {
                ratio_threshold: 1.25,
                steepness: 8.0,
            },
            training: metadata,
            heldout: HeldOut {
                ml: zero,
                baseline: zero,
            },
        };
        let with_rule = |rule| {
            let mut a = artifact.clone();
            a.baseline = rule;
            Model::new(a)
        };
        artifact.baseline = fit_baseline(with_rule, train_set);
        let model = Model::new(artifact.clone());
        let labels: Vec<bool> = test_set.iter().map(|e| e.spike).collect();
        let heldout = |variant| {
            let probs: Vec<f64> = test_set
                .iter()
                .map(|e| model.predict(variant, &e.features).probability)
                .collect();
            let s = score(
                &probs,
                &labels,
                if variant == Variant::Ml {
                    artifact.threshold
                } else {
                    0.5
                },
            );
            Scores {
                accuracy: round(s.accuracy),
                precision: round(s.precision),
                recall: round(s.recall),
                f1: round(s.f1),
                auc: round(s.auc),
            }
        };
        artifact.heldout = HeldOut {
            ml: heldout(Variant::Ml),
            baseline: heldout(Variant::Baseline),
        };
        let rows: Vec<[f64; 6]> = train_set.iter().map(|e| e.features.to_array()).collect();
        let probabilities: Vec<f64> = train_set
            .iter()
            .map(|e| model.predict(Variant::Ml, &e.features).probability)
            .collect();
        let profile = ReferenceProfile::build(&artifact.version, &rows, &probabilities);
        (artifact, profile)
    }
}

/// Scores are reported to four decimals; more would be noise.
fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_a_perfect_ranking_and_half_for_ties() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), 0.5);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
    }

    #[test]
    fn scores_match_a_hand_counted_confusion_matrix() {
        // tp=2, fp=1, tn=1, fn=1
        let s = score(
            &[0.9, 0.8, 0.7, 0.2, 0.1],
            &[true, true, false, false, true],
            0.5,
        );
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn newton_recovers_the_weights_of_a_known_logistic_model() {
        // Labels drawn deterministically from p = sigmoid(2 * standardised vol_5m feature).
        let mut examples = Vec::new();
        let mut state = 12345u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u1 = (state >> 11) as f64 / (1u64 << 53) as f64;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u2 = (state >> 11) as f64 / (1u64 << 53) as f64;
            let ret = u1 - 0.5;
            let p = 1.0 / (1.0 + (-(4.0 * ret)).exp());
            let features = Features {
                ret_1m: ret,
                ret_5m: 0.0,
                vol_5m: 0.001,
                vol_15m: 0.001,
                volume_z: 0.0,
                trade_rate: 1.0,
            };
            examples.push(Example {
                features,
                spike: u2 < p,
            });
        }
        // A tiny penalty keeps the constant columns from making the Hessian singular.
        let (scaler, weights, intercept, _) = fit(&examples, 1e-6, 50);
        let slope = weights[0] / scaler.std[0];
        assert!((slope - 4.0).abs() < 0.4, "slope {slope}");
        assert!(intercept.abs() < 0.1, "intercept {intercept}");
    }

    #[test]
    fn a_small_training_run_beats_chance_and_the_baseline_on_held_out_data() {
        let config = TrainConfig {
            minutes: 1_500,
            ..TrainConfig::default()
        };
        let artifact = train(&config);
        assert!(artifact.training.test_rows > 1_000);
        assert!(artifact.heldout.ml.auc > 0.75, "{:?}", artifact.heldout);
        assert!(
            artifact.heldout.ml.auc > artifact.heldout.baseline.auc,
            "{:?}",
            artifact.heldout
        );
        assert_eq!(train(&config), artifact, "training is deterministic");
    }
}

#[cfg(test)]
mod bars_tests {
    use super::*;
    use tidewatch_market_sim::Regime;

    /// Minute bars per symbol from the seeded market held in `regime`.
    fn bars(seed: u64, minutes: u64, regime: Option<Regime>) -> Vec<(String, Vec<Bar>)> {
        let config = MarketConfig::new(seed);
        let mut market = Market::new(&config);
        market.hold_regime(regime);
        let names: Vec<&str> = config.symbols.iter().map(|s| s.symbol).collect();
        let mut out: Vec<(String, Vec<Bar>)> =
            names.iter().map(|s| (s.to_string(), Vec::new())).collect();
        for _ in 0..minutes {
            let start = market.now_ms();
            let mut current: Vec<Option<Bar>> = vec![None; names.len()];
            for trade in market.next_minute() {
                let i = names.iter().position(|s| *s == trade.symbol).unwrap();
                match &mut current[i] {
                    Some(bar) => bar.add(trade.price, trade.size),
                    slot => *slot = Some(Bar::open_at(start, trade.price, trade.size)),
                }
            }
            for (i, bar) in current.into_iter().enumerate() {
                out[i].1.extend(bar);
            }
        }
        out
    }

    fn config() -> BarsConfig {
        BarsConfig::like(&TrainConfig::default(), "2".into(), "test".into())
    }

    fn f1_on(model: &Model, series: &[(String, Vec<Bar>)]) -> f64 {
        let labels = Labels {
            horizon: 5,
            spike_threshold: TrainConfig::default().spike_threshold,
            interval_ms: Some(60_000),
        };
        let (mut all, mut none) = (Vec::new(), Vec::new());
        for (_, b) in series {
            labels.split(b, i64::MAX, &mut all, &mut none);
        }
        let probs: Vec<f64> = all
            .iter()
            .map(|e| model.predict(Variant::Ml, &e.features).probability)
            .collect();
        let y: Vec<bool> = all.iter().map(|e| e.spike).collect();
        score(&probs, &y, 0.5).f1
    }

    #[test]
    fn a_model_retrained_on_a_new_regime_beats_the_old_one_there() {
        let old = Model::new(train(&TrainConfig {
            minutes: 3_000,
            ..TrainConfig::default()
        }));
        let recent = bars(7, 1_000, Some(Regime::Turbulent));
        let (artifact, profile) = train_on_bars(&recent, &config()).unwrap();
        assert_eq!(profile.model_version, "2");
        let new = Model::new(artifact);
        let later = bars(8, 600, Some(Regime::Turbulent));
        let (f_old, f_new) = (f1_on(&old, &later), f1_on(&new, &later));
        eprintln!("F1 on turbulent bars: old {f_old:.3}, retrained {f_new:.3}");
        assert!(f_new > f_old, "old {f_old}, new {f_new}");
    }

    #[test]
    fn no_example_spans_a_gap_and_too_little_data_is_refused() {
        let mut series = bars(3, 400, None);
        let full = {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (_, s) in &series {
                Labels {
                    horizon: 5,
                    spike_threshold: 0.0025,
                    interval_ms: Some(60_000),
                }
                .split(s, i64::MAX, &mut a, &mut b);
            }
            a.len()
        };
        // Cut a ten-minute hole into every symbol: the features restart after it (15
        // warm-up bars) and the five labels before it cannot be judged.
        for (_, s) in &mut series {
            s.drain(200..210);
        }
        let (mut with_gap, mut none) = (Vec::new(), Vec::new());
        for (_, s) in &series {
            Labels {
                horizon: 5,
                spike_threshold: 0.0025,
                interval_ms: Some(60_000),
            }
            .split(s, i64::MAX, &mut with_gap, &mut none);
        }
        assert!(
            with_gap.len() < full - series.len() * 10,
            "{} vs {full}",
            with_gap.len()
        );
        let err = train_on_bars(&bars(3, 30, None), &config()).unwrap_err();
        assert!(err.contains("training"), "{err}");
    }
}

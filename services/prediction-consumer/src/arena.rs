//! Champion and challenger judged on the same live outcomes, and the decisions that follow:
//! promote the challenger when it beats the champion by a margin over enough judgements with
//! no drift alarm of its own, reject it when it does not, and roll back to the previous
//! champion when the champion falls behind it. Pure state (no I/O): the registry task
//! carries the decisions out.

use std::collections::VecDeque;

use metrics::{Counter, Gauge};
use tidewatch_model::feature_drift::FeatureDriftTracker;
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::{Model, Variant};
use tidewatch_telemetry::catalog;

use crate::scores::{cell, Scores};

/// A registry version, loaded: number, model, reference profile.
pub type Loaded = (i32, Model, ReferenceProfile);

/// The three places a version can hold, as metric labels.
pub const ROLES: [&str; 3] = ["champion", "challenger", "previous"];

/// When a decision is taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// Judgements a version needs (on the same outcomes as the one it is compared with).
    pub min_judgements: usize,
    /// F1 a challenger must gain over the champion; also what the champion may lose to the
    /// previous champion before it is rolled back.
    pub margin: f64,
}

/// What the registry should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Promote { version: i32, reason: String },
    Reject { version: i32, reason: String },
    RollBack { to: i32, reason: String },
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Promote { .. } => "promoted",
            Decision::Reject { .. } => "rejected",
            Decision::RollBack { .. } => "rolled_back",
        }
    }
}

/// One version being judged: its model and its last `min_judgements` (predicted, actual).
pub struct Contender {
    pub version: i32,
    pub model: Model,
    recent: VecDeque<(bool, bool)>,
    counts: [u64; 4],
    judged: u64,
    /// Live features against its own training data.
    features: FeatureDriftTracker,
}

impl std::fmt::Debug for Contender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("version", &self.version)
            .field("judged", &self.judged)
            .finish_non_exhaustive()
    }
}

impl Contender {
    /// `window`: the live vectors (and how many before statistics) compared with `profile`.
    pub fn new(
        version: i32,
        model: Model,
        profile: ReferenceProfile,
        window: (usize, usize),
    ) -> Self {
        Self {
            version,
            model,
            recent: VecDeque::new(),
            counts: [0; 4],
            judged: 0,
            features: FeatureDriftTracker::unexported(profile, window.0, window.1),
        }
    }

    fn predict(&mut self, bar_start_ms: i64, features: &tidewatch_model::Features) -> bool {
        let p = self.model.predict(Variant::Ml, features);
        self.features.push(bar_start_ms, features, p.probability);
        p.spike
    }

    fn record(&mut self, predicted: bool, actual: bool, window: usize) {
        let i = cell(predicted, actual);
        self.counts[i] += 1;
        self.recent.push_back((predicted, actual));
        while self.recent.len() > window.max(1) {
            if let Some((p, a)) = self.recent.pop_front() {
                self.counts[cell(p, a)] -= 1;
            }
        }
        self.judged += 1;
    }

    /// Scores over the last `min_judgements` judgements.
    pub fn scores(&self) -> Scores {
        Scores::from_counts(self.counts)
    }

    pub fn judged(&self) -> u64 {
        self.judged
    }

    /// Whether the live window has drifted from its training data (dataset drift: at least
    /// half the features and the probability at PSI 0.25 or more).
    pub fn drifted(&self) -> bool {
        self.features.report().dataset_drift
    }
}

/// Champion, challenger and previous champion, their scores and the decisions due.
pub struct Arena {
    gate: Gate,
    /// Each contender's feature-drift window (vectors, minimum before statistics).
    window: (usize, usize),
    pub champion: Contender,
    pub challenger: Option<Contender>,
    pub previous: Option<Contender>,
    /// A decision was sent for the current line-up: no second until the registry answers
    /// with a new one.
    decided: bool,
    /// Per role: accuracy, precision, recall, F1.
    gauges: [[Gauge; 4]; 3],
    decisions: [Counter; 3],
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("champion", &self.champion)
            .field("challenger", &self.challenger)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

impl Arena {
    pub fn new(gate: Gate, window: (usize, usize), champion: Contender) -> Self {
        let gauges = ROLES.map(|role| {
            ["accuracy", "precision", "recall", "f1"]
                .map(|m| catalog::MODEL_ROLE_ROLLING_SCORE.gauge(&[("role", role), ("metric", m)]))
        });
        let decisions = ["promoted", "rejected", "rolled_back"].map(|d| {
            let c = catalog::MODEL_DECISIONS.counter(&[("decision", d)]);
            c.absolute(0);
            c
        });
        let arena = Self {
            gate,
            window,
            champion,
            challenger: None,
            previous: None,
            decided: false,
            gauges,
            decisions,
        };
        arena.export();
        arena
    }

    /// A new line-up from the registry. A version already judged keeps its judgements
    /// whatever its new role (a promoted challenger, a champion rolled back to).
    pub fn replace(
        &mut self,
        champion: Loaded,
        challenger: Option<Loaded>,
        previous: Option<Loaded>,
    ) {
        let mut pool: Vec<Contender> = [self.challenger.take(), self.previous.take()]
            .into_iter()
            .flatten()
            .collect();
        let window = self.window;
        let placeholder =
            Contender::new(champion.0, champion.1.clone(), champion.2.clone(), window);
        pool.push(std::mem::replace(&mut self.champion, placeholder));
        let mut take = |(v, model, profile): Loaded| -> Contender {
            match pool.iter().position(|c| c.version == v) {
                Some(i) => pool.swap_remove(i),
                None => Contender::new(v, model, profile, window),
            }
        };
        let champion = take(champion);
        self.challenger = challenger.map(&mut take);
        self.previous = previous.map(&mut take);
        self.champion = champion;
        self.decided = false;
        self.export();
    }

    fn export(&self) {
        let roles = [
            Some(&self.champion),
            self.challenger.as_ref(),
            self.previous.as_ref(),
        ];
        for (i, c) in roles.into_iter().enumerate() {
            if c.is_none() {
                for g in &self.gauges[i] {
                    g.set(0.0);
                }
            }
        }
    }

    /// Each role's version and prediction for one feature vector.
    pub fn predict(
        &mut self,
        bar_start_ms: i64,
        features: &tidewatch_model::Features,
    ) -> [Option<(i32, bool)>; 3] {
        [
            Some(&mut self.champion),
            self.challenger.as_mut(),
            self.previous.as_mut(),
        ]
        .map(|c| c.map(|c| (c.version, c.predict(bar_start_ms, features))))
    }

    /// Judges the predictions made for one vector (by version, so a prediction made before a
    /// line-up change is credited to the version that made it) and returns a decision if
    /// one is due.
    pub fn judge(&mut self, predicted: [Option<(i32, bool)>; 3], actual: bool) -> Option<Decision> {
        let window = self.gate.min_judgements;
        for (version, p) in predicted.into_iter().flatten() {
            for (i, c) in [
                Some(&mut self.champion),
                self.challenger.as_mut(),
                self.previous.as_mut(),
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(c) = c.filter(|c| c.version == version) {
                    c.record(p, actual, window);
                    let s = c.scores();
                    for (g, v) in
                        self.gauges[i]
                            .iter()
                            .zip([s.accuracy, s.precision, s.recall, s.f1])
                    {
                        g.set(v);
                    }
                }
            }
        }
        if self.decided {
            return None;
        }
        let decision = self.decide()?;
        self.decided = true;
        let i = match decision {
            Decision::Promote { .. } => 0,
            Decision::Reject { .. } => 1,
            Decision::RollBack { .. } => 2,
        };
        self.decisions[i].increment(1);
        Some(decision)
    }

    fn decide(&self) -> Option<Decision> {
        let n = self.gate.min_judgements as u64;
        let champion = &self.champion;
        let margin = self.gate.margin;
        if let Some(prev) = &self.previous {
            if champion.judged >= n && prev.judged >= n {
                let (c, p) = (champion.scores().f1, prev.scores().f1);
                if c < p - margin {
                    return Some(Decision::RollBack {
                        to: prev.version,
                        reason: format!(
                            "champion {} F1 {c:.4} fell below the previous champion {}'s {p:.4} by more than {margin} over the last {n} outcomes",
                            champion.version, prev.version
                        ),
                    });
                }
            }
        }
        let ch = self.challenger.as_ref()?;
        if ch.judged < n || champion.judged < n {
            return None;
        }
        let (c, f) = (champion.scores().f1, ch.scores().f1);
        let over = format!("over the same last {n} outcomes");
        if ch.drifted() {
            return Some(Decision::Reject {
                version: ch.version,
                reason: format!(
                    "challenger {}'s training data differs from the live features (dataset drift); F1 {f:.4} against champion {}'s {c:.4} {over}",
                    ch.version, champion.version
                ),
            });
        }
        if f >= c + margin {
            Some(Decision::Promote {
                version: ch.version,
                reason: format!(
                    "challenger {} F1 {f:.4} beat champion {}'s {c:.4} by at least {margin} {over}",
                    ch.version, champion.version
                ),
            })
        } else {
            Some(Decision::Reject {
                version: ch.version,
                reason: format!(
                    "challenger {} F1 {f:.4} did not beat champion {}'s {c:.4} by {margin} {over}",
                    ch.version, champion.version
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Loaded {
        let read = |f: &str| {
            std::fs::read_to_string(format!("{}/../../models/{f}", env!("CARGO_MANIFEST_DIR")))
                .expect("committed file")
        };
        let artifact = tidewatch_model::ModelArtifact::from_json(&read("volatility-spike.json"))
            .expect("valid");
        let profile =
            ReferenceProfile::from_json(&read("volatility-spike.profile.json")).expect("valid");
        (1, Model::new(artifact), profile)
    }

    fn v(version: i32) -> Loaded {
        let (_, m, p) = model();
        (version, m, p)
    }

    fn arena() -> Arena {
        let (_, m, p) = model();
        Arena::new(gate(), (100, 100), Contender::new(1, m, p, (100, 100)))
    }

    fn gate() -> Gate {
        Gate {
            min_judgements: 100,
            margin: 0.05,
        }
    }

    /// Feeds `n` outcomes: the champion right with probability `pc`, the challenger with
    /// `pch` (deterministic pattern), actual alternating.
    fn feed(arena: &mut Arena, n: usize, right: impl Fn(usize) -> [bool; 3]) -> Vec<Decision> {
        let mut out = Vec::new();
        for i in 0..n {
            let actual = i % 2 == 0;
            let r = right(i);
            let versions = [
                Some(arena.champion.version),
                arena.challenger.as_ref().map(|c| c.version),
                arena.previous.as_ref().map(|c| c.version),
            ];
            let predicted = std::array::from_fn(|k| {
                versions[k].map(|v| (v, if r[k] { actual } else { !actual }))
            });
            out.extend(arena.judge(predicted, actual));
        }
        out
    }

    #[test]
    fn a_better_challenger_is_promoted_once_after_enough_judgements() {
        let mut arena = arena();
        arena.replace(v(1), Some(v(2)), None);
        // Champion right 3 times in 4, challenger always.
        let d = feed(&mut arena, 99, |i| [i % 4 != 0, true, true]);
        assert!(d.is_empty(), "not before 100 judgements: {d:?}");
        let d = feed(&mut arena, 50, |i| [i % 4 != 0, true, true]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            matches!(&d[0], Decision::Promote { version: 2, .. }),
            "{d:?}"
        );
    }

    #[test]
    fn a_challenger_that_does_not_win_by_the_margin_is_rejected() {
        let mut arena = arena();
        arena.replace(v(1), Some(v(2)), None);
        let d = feed(&mut arena, 200, |_| [true, true, true]);
        assert!(
            matches!(&d[..], [Decision::Reject { version: 2, .. }]),
            "{d:?}"
        );
    }

    #[test]
    fn a_champion_behind_the_previous_one_is_rolled_back_and_judgements_follow_versions() {
        let mut arena = arena();
        // Version 2 was promoted; 1 is the previous champion.
        arena.replace(v(2), None, Some(v(1)));
        let d = feed(&mut arena, 150, |i| [i % 2 == 0, true, true]);
        assert!(
            matches!(&d[..], [Decision::RollBack { to: 1, .. }]),
            "{d:?}"
        );
        // The registry answers: 1 is champion again, 2 previous. A prediction made by
        // version 2 as champion is still credited to 2.
        arena.replace(v(1), None, Some(v(2)));
        assert_eq!(
            arena.champion.judged(),
            150,
            "1 keeps its judgements as previous"
        );
        arena.judge([Some((2, true)), None, None], true);
        assert_eq!(arena.previous.as_ref().map(Contender::judged), Some(151));
    }
}

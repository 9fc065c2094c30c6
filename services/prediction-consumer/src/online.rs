//! The online-learning variant: the static model's logistic regression, starting from its
//! weights, updated by one stochastic gradient step per judged prediction.

use tidewatch_model::Model;

#[derive(Debug, Clone)]
pub struct OnlineModel {
    weights: [f64; 6],
    intercept: f64,
    learning_rate: f64,
    l2: f64,
    threshold: f64,
    updates: u64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl OnlineModel {
    pub fn from_static(model: &Model, learning_rate: f64) -> Self {
        let a = model.artifact();
        let mut weights = [0.0; 6];
        for (w, v) in weights.iter_mut().zip(&a.weights) {
            *w = *v;
        }
        Self {
            weights,
            intercept: a.intercept,
            learning_rate,
            l2: 1e-4,
            threshold: a.threshold,
            updates: 0,
        }
    }

    /// Probability of a spike for standardised inputs ([`Model::inputs`]).
    pub fn probability(&self, x: &[f64; 6]) -> f64 {
        let z = self.intercept + self.weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
        let p = sigmoid(z);
        if p.is_finite() {
            p
        } else {
            0.5
        }
    }

    pub fn predict(&self, x: &[f64; 6]) -> (f64, bool) {
        let p = self.probability(x);
        (p, p >= self.threshold)
    }

    /// One gradient step of the log loss towards `actual`.
    pub fn learn(&mut self, x: &[f64; 6], actual: bool) {
        if x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let error = self.probability(x) - f64::from(u8::from(actual));
        for (w, xi) in self.weights.iter_mut().zip(x) {
            *w -= self.learning_rate * (error * xi + self.l2 * *w);
        }
        self.intercept -= self.learning_rate * error;
        self.updates += 1;
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }
}

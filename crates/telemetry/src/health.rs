//! Component health: components register checks, endpoints report them.
//!
//! `GET /health` answers the overall status (`healthy | degraded | unhealthy`) with every
//! component's status and reason; `GET /health/live` says the process answers at all;
//! `GET /health/ready` says whether it should get traffic: no critical component unhealthy
//! and no shutdown under way. A component that is not critical can only degrade the service.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::Gauge;
use serde::Serialize;

use crate::catalog;

/// A check that takes longer than this counts as unhealthy: probes must answer quickly.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    const ALL: [Status; 3] = [Status::Healthy, Status::Degraded, Status::Unhealthy];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    pub status: Status,
    pub reason: String,
}

impl ComponentHealth {
    pub fn healthy(reason: impl Into<String>) -> Self {
        Self {
            status: Status::Healthy,
            reason: reason.into(),
        }
    }
    pub fn degraded(reason: impl Into<String>) -> Self {
        Self {
            status: Status::Degraded,
            reason: reason.into(),
        }
    }
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self {
            status: Status::Unhealthy,
            reason: reason.into(),
        }
    }
}

/// Whether a component's failure makes the whole service unready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Critical,
    NonCritical,
}

type CheckFn = dyn Fn() -> Pin<Box<dyn Future<Output = ComponentHealth> + Send>> + Send + Sync;

struct Component {
    name: &'static str,
    criticality: Criticality,
    check: Arc<CheckFn>,
    gauges: [Gauge; 3],
}

/// The registry of health checks of one service. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    components: Arc<RwLock<Vec<Arc<Component>>>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.read().iter().map(|c| c.name).collect();
        f.debug_struct("Health")
            .field("components", &names)
            .finish_non_exhaustive()
    }
}

/// A push-style component: its owner sets the state, the check reads it.
#[derive(Clone, Debug)]
pub struct HealthHandle {
    state: Arc<RwLock<ComponentHealth>>,
}

impl HealthHandle {
    pub fn set(&self, health: ComponentHealth) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = health;
    }
    pub fn get(&self) -> ComponentHealth {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One evaluation of every check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub ready: bool,
    pub draining: bool,
    pub components: Vec<ComponentReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub name: &'static str,
    pub criticality: Criticality,
    #[serde(flatten)]
    pub health: ComponentHealth,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Component>>> {
        self.components.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a pull-style check, run on every health request (with a timeout).
    pub fn register<F, Fut>(&self, name: &'static str, criticality: Criticality, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ComponentHealth> + Send + 'static,
    {
        let gauges = Status::ALL
            .map(|s| catalog::HEALTH_STATUS.gauge(&[("component", name), ("status", s.as_str())]));
        let component = Component {
            name,
            criticality,
            check: Arc::new(move || Box::pin(check())),
            gauges,
        };
        self.components
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(component));
    }

    /// Registers a push-style component that starts in `initial`.
    pub fn handle(
        &self,
        name: &'static str,
        criticality: Criticality,
        initial: ComponentHealth,
    ) -> HealthHandle {
        let handle = HealthHandle {
            state: Arc::new(RwLock::new(initial)),
        };
        let reader = handle.clone();
        self.register(name, criticality, move || {
            let health = reader.get();
            async move { health }
        });
        handle
    }

    /// Marks the service as shutting down: readiness fails so load balancers stop sending work.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check concurrently and updates the health-status gauges.
    pub async fn report(&self) -> Report {
        let components: Vec<_> = self.read().clone();
        let checks = components.iter().map(|c| {
            let check = c.check.clone();
            async move {
                match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(health) => health,
                    Err(_) => ComponentHealth::unhealthy(format!(
                        "check timed out after {CHECK_TIMEOUT:?}"
                    )),
                }
            }
        });
        let results = futures::future::join_all(checks).await;
        let mut status = Status::Healthy;
        let mut ready = true;
        let mut reports = Vec::with_capacity(components.len());
        for (component, health) in components.iter().zip(results) {
            for (gauge, s) in component.gauges.iter().zip(Status::ALL) {
                gauge.set(if s == health.status { 1.0 } else { 0.0 });
            }
            let effective = match (component.criticality, health.status) {
                (Criticality::NonCritical, Status::Unhealthy) => Status::Degraded,
                (_, s) => s,
            };
            status = status.max(effective);
            if component.criticality == Criticality::Critical && health.status == Status::Unhealthy
            {
                ready = false;
            }
            reports.push(ComponentReport {
                name: component.name,
                criticality: component.criticality,
                health,
            });
        }
        let draining = self.draining.load(Ordering::SeqCst);
        Report {
            status,
            ready: ready && !draining,
            draining,
            components: reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_critical_component_makes_the_service_unhealthy_and_unready() {
        let health = Health::new();
        let db = health.handle(
            "database",
            Criticality::Critical,
            ComponentHealth::healthy("connected"),
        );
        health.handle(
            "cache",
            Criticality::NonCritical,
            ComponentHealth::healthy("warm"),
        );

        db.set(ComponentHealth::unhealthy("connection refused"));
        let report = health.report().await;

        assert_eq!(report.status, Status::Unhealthy);
        assert!(!report.ready);
        assert_eq!(report.components[0].health.reason, "connection refused");
    }

    #[tokio::test]
    async fn a_failing_non_critical_component_only_degrades() {
        let health = Health::new();
        health.handle(
            "database",
            Criticality::Critical,
            ComponentHealth::healthy("connected"),
        );
        let cache = health.handle(
            "cache",
            Criticality::NonCritical,
            ComponentHealth::healthy("warm"),
        );

        cache.set(ComponentHealth::unhealthy("evicted"));
        let report = health.report().await;

        assert_eq!(report.status, Status::Degraded);
        assert!(report.ready);
    }

    #[tokio::test]
    async fn draining_fails_readiness_but_not_health() {
        let health = Health::new();
        health.handle(
            "model",
            Criticality::Critical,
            ComponentHealth::healthy("loaded"),
        );

        health.set_draining();
        let report = health.report().await;

        assert_eq!(report.status, Status::Healthy);
        assert!(!report.ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_is_reported_unhealthy() {
        let health = Health::new();
        health.register("broker", Criticality::Critical, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            ComponentHealth::healthy("never")
        });

        let report = health.report().await;

        assert_eq!(report.components[0].health.status, Status::Unhealthy);
        assert!(report.components[0].health.reason.contains("timed out"));
    }
}

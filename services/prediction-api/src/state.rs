//! Shared request state: the loaded model, the active variant, the admin token, metrics.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use secrecy::SecretString;
use tidewatch_model::monitor::DriftMonitor;
use tidewatch_model::{Model, Variant};
use tidewatch_telemetry::{BuildInfo, Metrics};
use tidewatch_web::{AdminAuth, BodyLimit, Fault, Faults};

use crate::events::ApiMetrics;
use crate::settings::PublicSettings;

#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The model serving now, where it came from and since when.
#[derive(Debug)]
pub struct Served {
    pub model: Model,
    /// Its registry version (None: the file given at start, no registry).
    pub registry_version: Option<i32>,
    pub since: time::OffsetDateTime,
}

#[derive(Debug)]
struct Inner {
    /// Swapped whole by the registry poller; a request takes one snapshot.
    model: RwLock<Arc<Served>>,
    variant: AtomicU8,
    admin: Arc<AdminAuth>,
    faults: Faults,
    max_body_bytes: usize,
    metrics: ApiMetrics,
    build: BuildInfo,
    process: Option<Metrics>,
    settings: PublicSettings,
    /// Drift over the outcomes clients report (`POST /v1/drift/update`).
    drift: Mutex<DriftMonitor>,
}

fn encode(v: Variant) -> u8 {
    match v {
        Variant::Ml => 0,
        Variant::Baseline => 1,
    }
}

fn decode(v: u8) -> Variant {
    if v == 1 {
        Variant::Baseline
    } else {
        Variant::Ml
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Model,
        variant: Variant,
        admin_token: Option<SecretString>,
        max_body_bytes: usize,
        metrics: ApiMetrics,
        build: BuildInfo,
        process: Option<Metrics>,
        settings: PublicSettings,
    ) -> Self {
        metrics.variant_active(variant);
        Self {
            inner: Arc::new(Inner {
                model: RwLock::new(Arc::new(Served {
                    model,
                    registry_version: None,
                    since: time::OffsetDateTime::now_utc(),
                })),
                variant: AtomicU8::new(encode(variant)),
                admin: Arc::new(AdminAuth::new(admin_token)),
                faults: Faults::new(&Fault::API),
                max_body_bytes,
                metrics,
                build,
                process,
                settings,
                drift: Mutex::default(),
            }),
        }
    }

    /// The model serving now (a snapshot: a swap does not change it under the caller).
    pub fn model(&self) -> Arc<Served> {
        self.inner
            .model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves `model` (registry version `version`) from the next request on.
    pub fn serve(&self, model: Model, version: i32) {
        let served = Arc::new(Served {
            model,
            registry_version: Some(version),
            since: time::OffsetDateTime::now_utc(),
        });
        let previous = std::mem::replace(
            &mut *self.inner.model.write().unwrap_or_else(|e| e.into_inner()),
            served.clone(),
        );
        self.inner
            .metrics
            .model_changed(previous.model.artifact(), served.model.artifact());
    }

    pub fn variant(&self) -> Variant {
        decode(self.inner.variant.load(Ordering::Acquire))
    }

    /// Switches the serving variant; returns the previous one.
    pub fn set_variant(&self, variant: Variant) -> Variant {
        let previous = decode(self.inner.variant.swap(encode(variant), Ordering::AcqRel));
        self.inner.metrics.variant_active(variant);
        self.inner.metrics.variant_switched();
        previous
    }

    pub fn admin(&self) -> &AdminAuth {
        &self.inner.admin
    }

    /// The admin token check, shared with the fault-injection routes.
    pub fn admin_handle(&self) -> Arc<AdminAuth> {
        self.inner.admin.clone()
    }

    /// The API's fault switches (error rate, latency, readiness).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }

    pub fn build(&self) -> &BuildInfo {
        &self.inner.build
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.inner
            .process
            .as_ref()
            .map_or(0, |m| m.uptime().as_secs())
    }

    /// The drift monitor; held only for one update or one read, never across an await.
    pub fn drift(&self) -> MutexGuard<'_, DriftMonitor> {
        self.inner.drift.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> &PublicSettings {
        &self.inner.settings
    }
}

impl BodyLimit for AppState {
    fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }
}

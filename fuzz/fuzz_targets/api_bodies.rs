//! The JSON body of every endpoint that takes one, through the service's real router
//! (extractor, validation, handler), in-process: the prediction API's predict, batch,
//! drift update and variant switch, the fault switches every service shares, the
//! generator's run-time controls and the alert receiver's webhook. The first byte picks
//! the endpoint; the rest is the body, sent as `application/json` with the admin token.
//! Beyond not panicking: no 5xx, and every refusal is the error body naming its field.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::Router;
use clap::Parser as _;
use http::{header, Method, Request};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use tidewatch_web::{AdminAuth, Fault, Faults};

/// The admin token the services are configured with and every request sends.
const TOKEN: &str = "fuzz-admin-token";

struct Services {
    runtime: tokio::runtime::Runtime,
    prediction: Router,
    faults: Router,
    generator: Router,
    alerts: Router,
}

/// (service, method, path) of every endpoint with a JSON body.
const ENDPOINTS: &[(usize, Method, &str)] = &[
    (0, Method::POST, "/v1/predict"),
    (0, Method::POST, "/v1/predict/batch"),
    (0, Method::POST, "/v1/drift/update"),
    (0, Method::PUT, "/v1/admin/model/variant"),
    (1, Method::PUT, "/v1/admin/faults"),
    (2, Method::PUT, "/v1/admin/rate"),
    (2, Method::PUT, "/v1/admin/bad-records"),
    (2, Method::PUT, "/v1/admin/anomalies"),
    (2, Method::PUT, "/v1/admin/regime"),
    (3, Method::POST, "/v1/webhook/default"),
];

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let runtime = common::runtime();
        let built = runtime.block_on(async {
            let model_path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/volatility-spike.json"
            );
            let settings = prediction_api::settings::Settings::parse_from([
                "prediction-api",
                "--model",
                model_path,
                "--admin-token",
                TOKEN,
            ]);
            let model =
                tidewatch_model::Model::load(std::path::Path::new(model_path)).expect("the model");
            let state = prediction_api::state::AppState::new(
                model,
                settings.variant,
                settings.admin_token().cloned(),
                settings.max_body_bytes,
                prediction_api::events::ApiMetrics::disabled(),
                tidewatch_telemetry::BuildInfo::new("fuzz", env!("CARGO_PKG_VERSION")),
                None,
                settings.public_view(),
            );
            // The API without its fault switches: a switch the fault endpoint turns on
            // must not make the next input's prediction a 500. The fault endpoint gets
            // switches of its own, reset after every input.
            let prediction = prediction_api::api(state).0;
            let admin = Arc::new(AdminAuth::new(Some(SecretString::from(TOKEN))));
            let faults = Faults::new(&[
                Fault::ErrorRate,
                Fault::LatencyMs,
                Fault::SlowdownMs,
                Fault::NotReady,
                Fault::DatabaseUnreachable,
            ]);
            let faults_router = Router::from(tidewatch_web::faults::router(
                faults,
                admin.clone(),
                1024 * 1024,
            ));
            let shared = Arc::new(generator::Shared {
                control: generator::control::Control::new(
                    100,
                    0.0,
                    (0.0, tidewatch_market_sim::AnomalySeverity::Mild),
                ),
                progress: Mutex::new(Default::default()),
                settings: serde_json::json!({}),
            });
            let generator = Router::from(generator::routes::router(
                generator::routes::AppState::new(shared, admin, 1024 * 1024),
            ));
            let alerts = common::alert_receiver();
            (prediction, faults_router, generator, alerts)
        });
        let (prediction, faults, generator, alerts) = built;
        Services {
            runtime,
            prediction,
            faults,
            generator,
            alerts,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let s = services();
    let (service, method, path) = &ENDPOINTS[pick as usize % ENDPOINTS.len()];
    let router = [&s.prediction, &s.faults, &s.generator, &s.alerts][*service];
    let request = Request::builder()
        .method(method.clone())
        .uri(*path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {}", TOKEN))
        .body(Body::from(body.to_vec()))
        .expect("a request");
    s.runtime.block_on(async {
        let (status, answer) = common::send(router, request).await;
        common::check_answer(&format!("{method} {path}"), status, &answer, true);
        if *service == 1 && status.is_success() {
            // The next input starts with every switch off (and no injected latency).
            let reset = Request::builder()
                .method(Method::DELETE)
                .uri("/v1/admin/faults")
                .header(header::AUTHORIZATION, format!("Bearer {}", TOKEN))
                .body(Body::empty())
                .expect("a request");
            let (status, answer) = common::send(router, reset).await;
            assert!(
                status.is_success(),
                "resetting the faults: {status} {answer}"
            );
        }
    });
});

//! The query strings (and the symbol path segment) of the read API, `project`'s
//! `/v1/symbols`, `/v1/symbols/{symbol}/latest`, `/v1/bars` and `/v1/predictions`, and the
//! alert receiver's `/v1/notifications`, through the real routers in-process. The first
//! byte picks the endpoint; the rest is the raw query (for `latest`, the path segment up to
//! the first `?`, then the query). Input that is no valid URI never reaches a router (the
//! HTTP server refuses it), so it is skipped. The read API's database is unreachable (its
//! fault switch on, no connection ever made): a query that passes every check gets a 503,
//! one that does not gets a 4xx naming the parameter, and nothing gets a 500 or a 200.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use tidewatch_web::faults::FaultState;
use tidewatch_web::{Fault, Faults};

struct Services {
    runtime: tokio::runtime::Runtime,
    read: Router,
    alerts: Router,
}

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let runtime = common::runtime();
        let (read, alerts) = runtime.block_on(async {
            // Never connected to: the fault switch answers first.
            let pool = sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://fuzz@127.0.0.1:1/none")
                .expect("a lazy pool");
            let faults = Faults::new(&[Fault::DatabaseUnreachable]);
            faults
                .apply(&FaultState {
                    database_unreachable: Some(true),
                    ..FaultState::default()
                })
                .expect("the switch");
            let read = project::api::router(project::store::Store::new(pool).with_faults(faults));
            let alerts = common::alert_receiver();
            (read, alerts)
        });
        Services {
            runtime,
            read,
            alerts,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let (uri, read_api) = match pick % 5 {
        0 => (format!("/v1/bars?{rest}"), true),
        1 => (format!("/v1/predictions?{rest}"), true),
        2 => (format!("/v1/symbols?{rest}"), true),
        3 => {
            let (symbol, query) = rest.split_once('?').unwrap_or((rest, ""));
            (format!("/v1/symbols/{symbol}/latest?{query}"), true)
        }
        _ => (format!("/v1/notifications?{rest}"), false),
    };
    let Ok(uri) = Uri::try_from(uri) else {
        return;
    };
    let s = services();
    let router = if read_api { &s.read } else { &s.alerts };
    let request = Request::get(uri.clone())
        .body(Body::empty())
        .expect("a request");
    s.runtime.block_on(async {
        let (status, body) = common::send(router, request).await;
        let what = format!("GET {uri}");
        if read_api {
            assert!(
                status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{what}: {status} with the database unreachable: {body}"
            );
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(
                    body["error"]["code"], "database_unavailable",
                    "{what}: {body}"
                );
                return;
            }
        }
        // A 404 of an unknown path (a segment with a `/` in it) names no field.
        common::check_answer(&what, status, &body, status != StatusCode::NOT_FOUND);
    });
});

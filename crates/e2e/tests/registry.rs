//! The model registry on a real PostgreSQL: the committed model seeds version 1 as champion
//! exactly once however many callers race to seed; versions are numbered consecutively
//! under concurrent registration; every alias move leaves an audit row; a promotion moves
//! champion and clears challenger in one step, and the previous champion is what a rollback
//! returns to. The schema refuses what it should (an alias outside the two, a bad hash).

use sha2::{Digest as _, Sha256};
use tidewatch_db::registry::{Alias, Documents, NewVersion, Registry};

fn committed(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../models/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("committed model file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_aliases_and_their_audit_trail() {
    let url = tidewatch_e2e::fresh_database("registry")
        .await
        .expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    tidewatch_db::MIGRATOR.run(&pool).await.expect("migrations");
    let registry = Registry::new(pool.clone());

    let artifact = committed("volatility-spike.json");
    let profile = committed("volatility-spike.profile.json");
    let parsed: serde_json::Value = serde_json::from_str(&artifact).expect("artifact json");
    let heldout = parsed["heldout"].to_string();
    let command = parsed["training"]["command"].as_str().expect("command");
    let v1 = NewVersion {
        name: "volatility-spike-logreg",
        training_command: command,
        data_window: None,
        created_by: "seed",
    };
    let documents = Documents {
        artifact: artifact.clone(),
        heldout,
        reference_profile: profile,
    };

    // Eight services starting at once: one seeds.
    let seeds = futures::future::join_all((0..8).map(|_| {
        registry.seed(
            &v1,
            &documents,
            "the committed models/volatility-spike.json",
        )
    }))
    .await;
    let seeded: Vec<bool> = seeds.into_iter().map(|r| r.expect("seed")).collect();
    assert_eq!(seeded.iter().filter(|s| **s).count(), 1, "{seeded:?}");
    let champion = registry
        .alias(Alias::Champion)
        .await
        .expect("read")
        .expect("a champion");
    assert_eq!(champion.version, 1);
    assert_eq!(
        champion.artifact_sha256,
        format!("{:x}", Sha256::digest(artifact.as_bytes())),
        "the hash of the artifact's text"
    );
    let stored: serde_json::Value = serde_json::from_str(&champion.artifact).expect("json");
    assert_eq!(stored, parsed, "the artifact comes back as it went in");
    assert_eq!(champion.training_command, command);
    assert!(registry
        .alias(Alias::Challenger)
        .await
        .expect("read")
        .is_none());

    // Concurrent registrations get consecutive numbers.
    let at = |s| time::OffsetDateTime::from_unix_timestamp(s).expect("time");
    let (start, end) = (at(1_767_225_600), at(1_767_312_000));
    let v = NewVersion {
        data_window: Some((start, end)),
        created_by: "trainer",
        ..v1.clone()
    };
    let registered =
        futures::future::join_all((0..4).map(|_| registry.register(&v, &documents))).await;
    let mut numbers: Vec<i32> = registered
        .into_iter()
        .map(|r| r.expect("register"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [2, 3, 4, 5]);
    let five = registry.version(5).await.expect("read").expect("version 5");
    assert_eq!((five.data_start, five.data_end), (Some(start), Some(end)));

    // Challenger, promotion, rollback.
    let moved = registry
        .move_alias(
            Alias::Challenger,
            Some(5),
            "trainer",
            "retrained after drift",
        )
        .await
        .expect("move")
        .expect("a move");
    assert_eq!((moved.from_version, moved.to_version), (None, Some(5)));
    assert!(
        registry
            .move_alias(Alias::Challenger, Some(5), "trainer", "again")
            .await
            .expect("move")
            .is_none(),
        "moving to where it points is no move"
    );
    assert_eq!(
        registry
            .promote_challenger(
                "prediction-consumer",
                "F1 0.71 against 0.58 over 500 judgements"
            )
            .await
            .expect("promote"),
        Some(5)
    );
    assert_eq!(
        registry
            .alias(Alias::Champion)
            .await
            .expect("read")
            .map(|v| v.version),
        Some(5)
    );
    assert!(registry
        .alias(Alias::Challenger)
        .await
        .expect("read")
        .is_none());
    assert_eq!(registry.previous_champion().await.expect("read"), Some(1));
    assert_eq!(
        registry
            .promote_challenger("x", "no challenger")
            .await
            .expect("promote"),
        None
    );
    let back = registry
        .roll_back(1, "prediction-consumer", "F1 fell")
        .await
        .expect("rollback")
        .expect("a move");
    assert_eq!(back.reason, "rollback: F1 fell");
    assert_eq!(
        registry.previous_champion().await.expect("read"),
        None,
        "a version rolled back from is not a rollback target"
    );
    let trail: Vec<(String, Option<i32>, Option<i32>, String)> = registry
        .moves()
        .await
        .expect("moves")
        .into_iter()
        .map(|m| (m.alias, m.from_version, m.to_version, m.actor))
        .collect();
    let row = |a: &str, f, t, who: &str| (a.to_owned(), f, t, who.to_owned());
    assert_eq!(
        trail,
        [
            row("champion", None, Some(1), "seed"),
            row("challenger", None, Some(5), "trainer"),
            row("champion", Some(1), Some(5), "prediction-consumer"),
            row("challenger", Some(5), None, "prediction-consumer"),
            row("champion", Some(5), Some(1), "prediction-consumer"),
        ]
    );

    // The schema's own guards.
    for bad in [
        "INSERT INTO model_aliases (alias, version) VALUES ('shadow', 1)",
        "INSERT INTO model_aliases (alias, version) VALUES ('champion', 99) \
         ON CONFLICT (alias) DO UPDATE SET version = 99",
        "UPDATE model_versions SET artifact_sha256 = 'abc' WHERE version = 1",
        "UPDATE model_versions SET data_end = data_start WHERE version = 2",
    ] {
        assert!(sqlx::query(bad).execute(&pool).await.is_err(), "{bad}");
    }
}

//! The private PostgreSQL cluster the pipeline test restarts: what is committed before a
//! fast shutdown is there after the restart, and a client sees the server go away.

use tidewatch_e2e::PrivatePostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_a_restart_and_the_outage_is_visible() {
    let postgres = tokio::task::block_in_place(PrivatePostgres::start).expect("cluster starts");
    let pool = sqlx::PgPool::connect(&postgres.url())
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE kept (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("create");
    sqlx::query("INSERT INTO kept SELECT generate_series(1, 100)")
        .execute(&pool)
        .await
        .expect("insert");
    pool.close().await;

    tokio::task::block_in_place(|| postgres.stop_server()).expect("stops");
    let down = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres.url()).await;
    assert!(down.is_err(), "connected to a stopped server");

    tokio::task::block_in_place(|| postgres.start_server()).expect("starts again");
    let pool = sqlx::PgPool::connect(&postgres.url())
        .await
        .expect("reconnect");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM kept")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 100);
}

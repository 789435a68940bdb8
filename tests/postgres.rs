//! The throwaway PostgreSQL server the PostgreSQL tests and the bench run against: a real server,
//! started privately per run and removed after.

use otpgate::throwaway_pg::ThrowawayPostgres;

async fn server() -> Option<ThrowawayPostgres> {
    ThrowawayPostgres::for_tests().await.expect("a throwaway PostgreSQL server starts")
}

#[tokio::test]
async fn a_private_server_takes_queries_and_is_gone_after_drop() {
    let Some(db) = server().await else { return };
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.expect("connects");
    let connection = tokio::spawn(connection);
    let row = client.query_one("select current_user::text, current_setting('port')::int", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "otpgate");
    assert_eq!(row.get::<_, i32>(1), i32::from(db.addr().port()));
    drop(client);
    let _ = connection.await;
    let addr = db.addr();
    drop(db);
    assert!(std::net::TcpStream::connect(addr).is_err(), "the server still listens after drop");
}

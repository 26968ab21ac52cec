//! The readers, on a SQLite file.

use super::*;
use crate::db::fixture::{counting_pool, pool, settled};
use sqlx::sqlite::{SqliteArguments, SqlitePool};
use sqlx::{Row, Sqlite};
use std::sync::atomic::Ordering;

type Reader = super::Reader<Sqlite>;

async fn insert(p: &SqlitePool, x: i64) {
    sqlx::query("INSERT INTO t (x) VALUES ($1)")
        .bind(x)
        .execute(p)
        .await
        .unwrap();
}

async fn read(r: &Reader, p: &SqlitePool, fetch: Fetch) -> Vec<i64> {
    r.read(
        p,
        "SELECT x FROM t ORDER BY x".into(),
        SqliteArguments::default(),
        fetch,
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<i64, _>(0))
    .collect()
}

#[tokio::test]
async fn a_reader_keeps_its_connection_between_reads_and_hands_it_back_when_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (p, released) = counting_pool(&dir).await;
    insert(&p, 1).await;
    let before = settled(&p, &released).await;
    let r = Reader::holding(&p, 1, Duration::from_secs(3600));
    for _ in 0..50 {
        assert_eq!(read(&r, &p, Fetch::All).await, vec![1]);
    }
    assert_eq!(
        released.load(Ordering::SeqCst),
        before,
        "no connection handed back (and tested) between reads"
    );
    assert_eq!(p.size() as usize - p.num_idle(), 1, "the reader keeps one");
    // Closing waits for every connection, the reader's too.
    tokio::time::timeout(Duration::from_secs(60), p.close())
        .await
        .expect("the pool closed while a reader kept a connection");

    let dir = tempfile::tempdir().unwrap();
    let (p, released) = counting_pool(&dir).await;
    let before = settled(&p, &released).await;
    let r = Reader::holding(&p, 1, Duration::from_millis(10));
    read(&r, &p, Fetch::All).await;
    assert!(
        settled(&p, &released).await > before,
        "handed back once reads stopped"
    );
}

#[tokio::test]
async fn a_read_sees_every_write_committed_before_it_on_the_connection_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    // One reader: every read below runs on the same kept connection.
    let r = Reader::holding(&p, 1, Duration::from_secs(3600));
    for x in [1, 2, 3] {
        insert(&p, x).await;
    }
    // A read that stops at its first row must not leave its statement open (a read
    // transaction still open would show the later reads this moment's rows).
    assert_eq!(read(&r, &p, Fetch::First).await, vec![1]);
    insert(&p, 4).await;
    assert_eq!(read(&r, &p, Fetch::All).await, vec![1, 2, 3, 4]);
    // Nor one whose caller stopped waiting.
    let mut given_up = Box::pin(read(&r, &p, Fetch::All));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        given_up.as_mut().poll(&mut cx).is_pending(),
        "asked, not yet answered"
    );
    drop(given_up);
    insert(&p, 5).await;
    assert_eq!(read(&r, &p, Fetch::All).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(read(&r, &p, Fetch::First).await, vec![1]);
}

#[tokio::test]
async fn reads_are_shared_among_the_readers_and_each_answered_with_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    for x in 0..20 {
        insert(&p, x).await;
    }
    let r = Reader::holding(&p, 3, Duration::from_secs(3600));
    let reads = (0..60i64).map(|i| {
        let (r, p) = (r.clone(), p.clone());
        tokio::spawn(async move {
            let mut a = SqliteArguments::default();
            sqlx::Arguments::add(&mut a, i % 20).unwrap();
            let rows = r
                .read(&p, "SELECT x FROM t WHERE x = $1".into(), a, Fetch::All)
                .await
                .unwrap();
            (i, rows.iter().map(|row| row.get::<i64, _>(0)).collect())
        })
    });
    for read in reads.collect::<Vec<_>>() {
        let (i, xs): (i64, Vec<i64>) = read.await.unwrap();
        assert_eq!(xs, vec![i % 20], "read {i}");
    }
    assert!(
        p.size() as usize - p.num_idle() <= 3,
        "the readers keep at most one connection each"
    );
}

#[tokio::test]
async fn a_failed_read_is_answered_with_its_error_and_the_next_one_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    insert(&p, 7).await;
    let r = Reader::holding(&p, 1, Duration::from_secs(3600));
    let e = r
        .read(
            &p,
            "SELECT nothing FROM t".into(),
            SqliteArguments::default(),
            Fetch::All,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nothing"), "{e}");
    assert_eq!(read(&r, &p, Fetch::All).await, vec![7]);
}

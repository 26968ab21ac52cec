//! The writer's group commit, on a SQLite file.

use super::*;
use crate::db::fixture::{counting_pool, pool, pool_waiting, settled};
use sqlx::Arguments;
use sqlx::sqlite::{SqliteArguments, SqlitePool};

type Writer = super::Writer<Sqlite>;
type Write = super::Write<Sqlite>;
type Written = super::Written<Sqlite>;
type Statement = super::Statement<Sqlite>;

fn args(x: i64) -> SqliteArguments {
    let mut a = SqliteArguments::default();
    a.add(x).unwrap();
    a
}

fn inserting(x: i64) -> Statement {
    Statement {
        sql: "INSERT INTO t (x) VALUES ($1) RETURNING id".into(),
        args: args(x),
        want: Want::Rows,
        or_stop: false,
    }
}

async fn insert(w: &Writer, p: &SqlitePool, x: i64) -> sqlx::Result<i64> {
    id_of(w.write(p, vec![inserting(x)]).await)
}

async fn xs(p: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT x FROM t ORDER BY x")
        .fetch_all(p)
        .await
        .unwrap()
}

type Answer = oneshot::Receiver<sqlx::Result<Vec<Written>>>;

/// A group as the writer task would have gathered it (a unit per entry of `units`),
/// and where each answer arrives.
fn group_of(units: Vec<Vec<Statement>>) -> (Vec<Write>, Vec<Answer>) {
    units
        .into_iter()
        .map(|unit| {
            let (answer, answered) = oneshot::channel();
            (Write { unit, answer }, answered)
        })
        .unzip()
}

fn group(values: &[i64]) -> (Vec<Write>, Vec<Answer>) {
    group_of(values.iter().map(|&x| vec![inserting(x)]).collect())
}

fn id_of(answer: sqlx::Result<Vec<Written>>) -> sqlx::Result<i64> {
    match answer?.first() {
        Some(Written::Rows(rows)) => Ok(sqlx::FromRow::from_row(&rows[0]).map(|(id,): (i64,)| id)?),
        _ => panic!("asked for rows"),
    }
}

#[tokio::test]
async fn a_failing_write_is_answered_with_its_error_and_the_rest_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    // -1 breaks the CHECK: the second and the fifth of the group fail.
    let (mut g, answers) = group(&[1, -1, 2, 3, -1, 4]);
    commit(&mut Held::new(p.clone()), &mut g).await;
    let mut failed = 0;
    for a in answers {
        match id_of(a.await.unwrap()) {
            Ok(_) => {}
            Err(e) => {
                assert!(e.to_string().contains("CHECK"), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 2);
    assert_eq!(
        xs(&p).await,
        vec![1, 2, 3, 4],
        "the others written, each once"
    );
}

#[tokio::test]
async fn a_unit_is_kept_whole_or_not_at_all_and_stops_where_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    let nothing = Statement {
        sql: "UPDATE t SET x = x WHERE id = $1".into(),
        args: args(999),
        want: Want::Count,
        or_stop: true,
    };
    let (mut g, answers) = group_of(vec![
        // Its second statement fails: its first is not kept either.
        vec![inserting(10), inserting(-1)],
        vec![inserting(20)],
        // Its first changes no row: its second is not run.
        vec![nothing, inserting(30)],
        vec![inserting(40), inserting(41)],
    ]);
    commit(&mut Held::new(p.clone()), &mut g).await;
    let mut answers = answers.into_iter();
    let half = answers.next().unwrap().await.unwrap();
    assert!(half.is_err_and(|e| e.to_string().contains("CHECK")));
    assert_eq!(answers.next().unwrap().await.unwrap().unwrap().len(), 1);
    let stopped = answers.next().unwrap().await.unwrap().unwrap();
    assert_eq!(
        stopped.len(),
        1,
        "only the statement that changed nothing ran"
    );
    assert_eq!(stopped[0].changed(), 0);
    assert_eq!(answers.next().unwrap().await.unwrap().unwrap().len(), 2);
    assert_eq!(xs(&p).await, vec![20, 40, 41]);
}

#[tokio::test]
async fn a_write_whose_caller_stopped_waiting_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    let (mut g, mut answers) = group(&[1, 2, 3]);
    drop(answers.remove(1));
    commit(&mut Held::new(p.clone()), &mut g).await;
    for a in answers {
        id_of(a.await.unwrap()).unwrap();
    }
    assert_eq!(xs(&p).await, vec![1, 3]);
}

#[tokio::test]
async fn a_group_that_cannot_begin_is_written_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool_waiting(&dir, Duration::ZERO).await;
    // Another process holds the write lock: BEGIN IMMEDIATE is refused at once
    // (busy timeout 0 on this pool), and so is each write alone.
    let mut other = p.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let (mut g, answers) = group(&[1, 2]);
    commit(&mut Held::new(p.clone()), &mut g).await;
    for a in answers {
        let e = id_of(a.await.unwrap()).unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
    }
    sqlx::query("ROLLBACK").execute(&mut *other).await.unwrap();
    drop(other);
    assert!(xs(&p).await.is_empty());
}

#[test]
fn a_writer_whose_runtime_ended_still_writes() {
    let dir = tempfile::tempdir().unwrap();
    let first = tokio::runtime::Runtime::new().unwrap();
    let (p, w) = first.block_on(async {
        let p = pool(&dir).await;
        let w = Writer::start(&p);
        (p, w)
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        insert(&w, &p, 7).await.unwrap();
        assert_eq!(xs(&p).await, vec![7]);
    });
}

#[tokio::test]
async fn each_write_is_answered_after_its_commit_with_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    let w = Writer::start(&p);
    let tasks: Vec<_> = (0..200)
        .map(|x| {
            let (w, p) = (w.clone(), p.clone());
            tokio::spawn(async move {
                let id = insert(&w, &p, x).await.unwrap();
                // Answered: on disk, seen by any other connection.
                let seen: i64 = sqlx::query_scalar("SELECT x FROM t WHERE id = $1")
                    .bind(id)
                    .fetch_one(&p)
                    .await
                    .unwrap();
                assert_eq!(seen, x, "row {id} is not this write's");
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every write got its own row");
    assert_eq!(
        xs(&p).await,
        (0..200).collect::<Vec<_>>(),
        "each written once"
    );
}

#[tokio::test]
async fn the_writer_keeps_its_connection_between_groups_and_hands_it_back_after_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    let mut held = Held::new(p.clone());
    for values in [&[1, 2][..], &[3], &[4, 5]] {
        let (mut g, answers) = group(values);
        commit(&mut held, &mut g).await;
        for a in answers {
            id_of(a.await.unwrap()).unwrap();
        }
        assert!(held.holds(), "kept after the commit of {values:?}");
    }
    let (mut g, answers) = group(&[-1]);
    commit(&mut held, &mut g).await;
    for a in answers {
        id_of(a.await.unwrap()).unwrap_err();
    }
    assert!(!held.holds(), "handed back after an error");
    assert_eq!(xs(&p).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_closing_pool_gets_the_writers_connection_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(&dir).await;
    let w = Writer::holding(&p, Duration::from_secs(3600));
    insert(&w, &p, 1).await.unwrap();
    // Closing waits for every connection, the writer's too.
    tokio::time::timeout(Duration::from_secs(60), p.close())
        .await
        .expect("the pool closed while the writer held a connection");
}

#[tokio::test]
async fn the_writer_hands_its_connection_back_when_writes_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (p, released) = counting_pool(&dir).await;
    let before = settled(&p, &released).await;
    let w = Writer::holding(&p, Duration::from_millis(10));
    insert(&w, &p, 1).await.unwrap();
    assert!(settled(&p, &released).await > before);
}

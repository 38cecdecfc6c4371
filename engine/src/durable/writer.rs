//! The durable store's writes, as units: a unit is one caller's work on
//! the writer connection (one statement, or a transaction of its own),
//! answered once it is committed.
//!
//! On SQLite there is one writer connection, and a purchase is a dozen
//! small units from several requests. Taken from the pool one by one, each
//! paid a hand-over (sqlx pings a connection every time it is given back)
//! and a commit of its own (BENCHMARKS.md, "The money path"). Here a task
//! takes every unit queued (up to `sqlite.group_commit_max`), runs them one
//! after another inside one transaction, commits once and then answers
//! every caller ("group commit"):
//!
//! - a unit is what it would be on a connection of its own: one statement
//!   (SQLite undoes a statement that fails, and only it), or a transaction
//!   it begins itself (a savepoint inside the group's transaction), so a
//!   unit that fails leaves nothing behind and the others commit without
//!   it; every compare-and-set still decides alone, on the state the units
//!   before it left;
//! - a unit is answered only after the commit that made it durable; if
//!   that commit fails, every unit of the group is answered with
//!   [`DurableError::GroupCommit`] (nothing of it was written);
//! - an error after which SQLite may have rolled the whole transaction
//!   back itself (I/O, a full disk, a lock: anything but a constraint a
//!   statement broke) ends the group: it is rolled back, every unit of it
//!   is answered with that failure, and the connection is replaced.
//!
//! A unit alone in the queue runs outside any group transaction, exactly as
//! on a pooled connection, so a quiet store answers as fast as before. On
//! Postgres each unit runs on a pooled connection as before: Postgres has
//! many connections and commits concurrently.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use super::DurableError;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a unit returns: its answer, once committed.
pub type UnitFuture<'c, T> = BoxFuture<'c, Result<T, DurableError>>;

/// How long the queue of units waiting for the writer task may grow; a
/// caller beyond it waits for room (back-pressure, not an error).
const QUEUE_LEN: usize = 4096;

/// A unit in the writer task's queue.
trait Job: Send {
    /// Runs the unit; what it left is committed or rolled back by the task.
    fn run<'c>(self: Box<Self>, conn: &'c mut AnyConnection) -> BoxFuture<'c, Ran>;
    /// Answers the unit without running it.
    fn refuse(self: Box<Self>, why: String);
}

/// Sends a unit's answer, given whether its group committed.
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A unit that ran, and its answer to send once the fate of its group is
/// known.
struct Ran {
    /// The unit failed in a way that may have ended the transaction.
    fatal: Option<String>,
    answer: Answer,
}

struct Unit<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T, DurableError>>,
}

impl<F, T> Job for Unit<F, T>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> UnitFuture<'c, T> + Send + 'static,
    T: Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut AnyConnection) -> BoxFuture<'c, Ran> {
        let Unit { f, reply } = *self;
        Box::pin(async move {
            let result = f(conn).await;
            let fatal = match &result {
                Err(e) if ends_transaction(e) => Some(e.to_string()),
                _ => None,
            };
            Ran {
                fatal,
                answer: Box::new(move |batch: Result<(), String>| {
                    let answer = match (result, batch) {
                        (Ok(v), Ok(())) => Ok(v),
                        (Ok(_), Err(why)) => Err(DurableError::GroupCommit(why)),
                        // Refused on its own: nothing of it was kept anyway.
                        (Err(e), _) => Err(e),
                    };
                    // The caller may have gone (its request was dropped).
                    let _ = reply.send(answer);
                }),
            }
        })
    }

    fn refuse(self: Box<Self>, why: String) {
        let _ = self.reply.send(Err(DurableError::GroupCommit(why)));
    }
}

/// Whether SQLite may have rolled the whole transaction back after `e`
/// (its documented cases: I/O errors, a full disk, out of memory, a busy
/// lock, an interrupt). A broken constraint undoes only its statement;
/// errors of rush's own (funds, invariants, conflicts) are no SQL error.
fn ends_transaction(e: &DurableError) -> bool {
    match e {
        DurableError::Db(sqlx::Error::Database(d)) => {
            // The primary result code is the low byte of the extended one;
            // 19 is SQLITE_CONSTRAINT.
            let code: i64 = d.code().and_then(|c| c.parse().ok()).unwrap_or(0);
            code & 0xff != 19
        }
        DurableError::Db(_) | DurableError::GroupCommit(_) => true,
        _ => false,
    }
}

/// The durable store's writer (see the module's notes).
#[derive(Clone)]
pub struct Writer {
    pool: AnyPool,
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    stats: Arc<Stats>,
}

/// What the writer task has done, for tests and figures.
#[derive(Debug, Default)]
pub struct Stats {
    /// Units run.
    pub units: AtomicU64,
    /// Transactions they were committed in (a unit alone counts as one).
    pub commits: AtomicU64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("grouped", &self.queue.is_some()).finish()
    }
}

impl Writer {
    /// Each unit on a connection of `pool` (Postgres).
    pub fn pooled(pool: AnyPool) -> Writer {
        Writer { pool, queue: None, stats: Arc::default() }
    }

    /// Units committed in groups of up to `group_max` by a task holding
    /// `pool`'s connection for each group (SQLite's one writer).
    pub fn grouped(pool: AnyPool, group_max: u32) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let stats = Arc::<Stats>::default();
        tokio::spawn(run_queue(pool.clone(), rx, group_max.max(1) as usize, stats.clone()));
        Writer { pool, queue: Some(tx), stats }
    }

    /// Units and commits so far (zero when units run on a pool).
    pub fn stats(&self) -> (u64, u64) {
        (self.stats.units.load(Ordering::Relaxed), self.stats.commits.load(Ordering::Relaxed))
    }

    /// Runs a unit on the writer connection and answers once what it did
    /// is committed. The unit must leave nothing behind when it fails: one
    /// statement, or a transaction of its own (`conn.begin()`). Reads go
    /// here too when their caller decides on them: they see every write
    /// answered before.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DurableError>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> UnitFuture<'c, T> + Send + 'static,
        T: Send + 'static,
    {
        let Some(queue) = &self.queue else {
            let mut conn = self.pool.acquire().await?;
            return f(&mut conn).await;
        };
        let (reply, answer) = oneshot::channel();
        let gone = || DurableError::GroupCommit("the durable store's writer has stopped".into());
        queue.send(Box::new(Unit { f, reply })).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// One statement as a unit: `sql` with the binds `bind` adds; the rows
    /// it changed.
    pub async fn execute<F>(&self, sql: impl Into<String>, bind: F) -> Result<u64, DurableError>
    where
        F: for<'q> FnOnce(Query<'q, Any, AnyArguments<'q>>) -> Query<'q, Any, AnyArguments<'q>> + Send + 'static,
    {
        let sql = sql.into();
        self.run(move |c| Box::pin(async move { Ok(bind(sqlx::query(&sql)).execute(&mut *c).await?.rows_affected()) }))
            .await
    }
}

async fn run_queue(pool: AnyPool, mut rx: mpsc::Receiver<Box<dyn Job>>, group_max: usize, stats: Arc<Stats>) {
    let mut jobs: Vec<Box<dyn Job>> = Vec::with_capacity(group_max);
    while rx.recv_many(&mut jobs, group_max).await > 0 {
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                let why = format!("no writer connection: {e}");
                for job in jobs.drain(..) {
                    job.refuse(why.clone());
                }
                continue;
            }
        };
        // The connection is kept while units keep coming, and given back
        // to the pool (for migrations, tests, tools) once the queue is dry.
        loop {
            stats.units.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            let sound = if jobs.len() == 1 {
                run_alone(&mut conn, &mut jobs).await
            } else {
                commit_group(&mut conn, &mut jobs).await
            };
            if !sound {
                // SQLite may have ended the transaction behind sqlx's back:
                // a fresh connection, not one whose bookkeeping may be off.
                conn.close_on_drop();
                break;
            }
            if rx.is_empty() || rx.recv_many(&mut jobs, group_max).await == 0 {
                break;
            }
        }
    }
}

/// A unit alone runs as it would on a pooled connection: its own
/// transaction, if it has one, is the transaction.
async fn run_alone(conn: &mut AnyConnection, jobs: &mut Vec<Box<dyn Job>>) -> bool {
    let mut sound = true;
    for job in jobs.drain(..) {
        let ran = job.run(conn).await;
        sound &= ran.fatal.is_none();
        (ran.answer)(Ok(()));
    }
    sound
}

/// One transaction for every job. False if the connection is no longer
/// to be trusted.
async fn commit_group(conn: &mut AnyConnection, jobs: &mut Vec<Box<dyn Job>>) -> bool {
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            let why = format!("cannot begin: {e}");
            for job in jobs.drain(..) {
                job.refuse(why.clone());
            }
            return false;
        }
    };
    let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
    let mut failed: Option<String> = None;
    let mut pending = jobs.drain(..);
    for job in pending.by_ref() {
        let ran = job.run(&mut tx).await;
        answers.push(ran.answer);
        if ran.fatal.is_some() {
            failed = ran.fatal;
            break;
        }
    }
    let outcome = match failed {
        Some(why) => {
            for job in pending {
                job.refuse(why.clone());
            }
            Err(why)
        }
        None => {
            drop(pending);
            tx.commit().await.map_err(|e| format!("commit: {e}"))
        }
    };
    let sound = outcome.is_ok();
    for answer in answers {
        answer(outcome.clone());
    }
    sound
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx::{Connection, Row};
    use tokio::sync::oneshot;

    use super::Writer;
    use crate::config::SqliteConfig;
    use crate::durable::{DurableError, Pools};

    async fn store() -> (tempfile::TempDir, Pools) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pools = Pools::sqlite(dir.path(), &SqliteConfig::default()).await.expect("sqlite");
        // On the pool: the writer gives its connection back when idle.
        sqlx::raw_sql(
            "CREATE TABLE claims (k INTEGER PRIMARY KEY, owner INTEGER NOT NULL); \
             CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
             INSERT INTO counter (id, n) VALUES (1, 0); \
             CREATE TABLE junk (id INTEGER PRIMARY KEY);",
        )
        .execute(&pools.write)
        .await
        .expect("schema");
        (dir, pools)
    }

    /// Holds the writer inside a unit until the returned sender fires, so
    /// everything submitted meanwhile queues up into one group.
    async fn hold_writer(w: &Writer) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, wait) = oneshot::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let w = w.clone();
        let blocker = tokio::spawn(async move {
            let _ = w
                .run(move |_c| {
                    Box::pin(async move {
                        let _ = started.send(());
                        let _ = wait.await;
                        Ok(())
                    })
                })
                .await;
        });
        running.await.expect("the blocker runs");
        (release, blocker)
    }

    async fn count(pools: &Pools, sql: &str) -> i64 {
        sqlx::query(sql).fetch_one(&pools.read).await.expect("count").try_get::<i64, _>(0).expect("n")
    }

    /// Many callers, one hot row and one claim: in a group, every
    /// compare-and-set still decides alone and no increment is lost; a
    /// unit that fails half-way leaves nothing, and the rest commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_claim_wins_no_update_is_lost_a_failed_unit_leaves_nothing() {
        let (_dir, pools) = store().await;
        let w = pools.writer.clone();
        let (release, blocker) = hold_writer(&w).await;
        let mut tasks = Vec::new();
        for me in 0..300i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.run(move |c| {
                    Box::pin(async move {
                        let mut tx = c.begin().await?;
                        sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1").execute(&mut *tx).await?;
                        if me % 10 == 7 {
                            // Half done, then a broken constraint: all of
                            // it must go.
                            sqlx::query("INSERT INTO junk (id) VALUES ($1)").bind(me).execute(&mut *tx).await?;
                            sqlx::query("INSERT INTO junk (id) VALUES ($1)").bind(me).execute(&mut *tx).await?;
                        }
                        let won =
                            sqlx::query("INSERT INTO claims (k, owner) VALUES (1, $1) ON CONFLICT (k) DO NOTHING")
                                .bind(me)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                                == 1;
                        tx.commit().await?;
                        Ok(won)
                    })
                })
                .await
                .map(|won| (me, won))
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = release.send(());
        blocker.await.expect("blocker");
        let (mut winners, mut refused, mut kept) = (Vec::new(), 0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok((me, true)) => {
                    winners.push(me);
                    kept += 1;
                }
                Ok((_, false)) => kept += 1,
                Err(DurableError::Db(sqlx::Error::Database(d))) if d.is_unique_violation() => refused += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(refused, 30, "every unit that broke a constraint is refused");
        assert_eq!(winners.len(), 1, "one claim wins: {winners:?}");
        let owner = count(&pools, "SELECT owner FROM claims WHERE k = 1").await;
        assert_eq!(owner, winners[0]);
        assert_eq!(count(&pools, "SELECT n FROM counter WHERE id = 1").await, kept, "no increment lost or kept twice");
        assert_eq!(count(&pools, "SELECT COUNT(*) FROM junk").await, 0, "a refused unit leaves nothing");
        let (units, commits) = w.stats();
        assert!(commits < units / 10, "the queued units were committed in groups: {units} units, {commits} commits");
    }

    /// Every answer comes after the commit: another connection sees the
    /// write as soon as its caller is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answered_write_is_committed() {
        let (_dir, pools) = store().await;
        let pools = Arc::new(pools);
        let mut tasks = Vec::new();
        for id in 0..200i64 {
            let pools = pools.clone();
            tasks.push(tokio::spawn(async move {
                pools
                    .writer
                    .run(move |c| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO junk (id) VALUES ($1)").bind(id).execute(&mut *c).await?;
                            Ok(())
                        })
                    })
                    .await
                    .expect("insert");
                let seen = sqlx::query("SELECT COUNT(*) FROM junk WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pools.read)
                    .await
                    .expect("read")
                    .try_get::<i64, _>(0)
                    .expect("n");
                assert_eq!(seen, 1, "row {id} answered but not visible to a reader");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }

    /// A unit that fails in a way that may end SQLite's transaction takes
    /// its group down: nothing of the group is written, every unit is told,
    /// and the writer goes on with a fresh connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_failure_fails_its_whole_group_and_the_writer_goes_on() {
        let (_dir, pools) = store().await;
        let w = pools.writer.clone();
        let (release, blocker) = hold_writer(&w).await;
        let mut tasks = Vec::new();
        for id in 0..20i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.run(move |c| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO junk (id) VALUES ($1)").bind(id).execute(&mut *c).await?;
                        if id == 10 {
                            return Err(DurableError::Db(sqlx::Error::Protocol("the disk went away".into())));
                        }
                        Ok(())
                    })
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = release.send(());
        blocker.await.expect("blocker");
        for t in tasks {
            match t.await.expect("task") {
                Err(e) => assert!(e.is_transient(), "retryable: {e}"),
                Ok(()) => panic!("a unit of the failed group was answered as written"),
            }
        }
        assert_eq!(count(&pools, "SELECT COUNT(*) FROM junk").await, 0, "nothing of the group is kept");
        w.run(|c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO junk (id) VALUES (99)").execute(&mut *c).await?;
                Ok(())
            })
        })
        .await
        .expect("the writer goes on");
        assert_eq!(count(&pools, "SELECT COUNT(*) FROM junk").await, 1);
    }
}

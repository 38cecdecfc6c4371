//! Group commit for the embedded hot store.
//!
//! SQLite has one writer. Instead of each actor paying for its own
//! transaction, every store call describes its writes as a [`WriteSet`] and
//! hands it to the committer task, which takes all the write sets waiting,
//! applies them in order in one transaction, appends all their outbox events
//! with one multi-row statement, commits, and only then answers each caller.
//! Many entities' batches thus share one commit: a flash sale spread over
//! many packets costs about what one hot packet costs.
//!
//! If the transaction fails, every write set in it fails (nothing of them
//! is written) and each caller drops its mirror and re-reads the file.

use std::sync::Arc;

use sqlx::{Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot, Notify};

use super::db::Db;
use super::StoreError;
use crate::domain::IdGen;
use crate::domain::{DomainEvent, Envelope};

/// Rows per multi-row statement, well under SQLite's bound variables.
pub const ROWS_PER_STATEMENT: usize = 500;
/// Write sets queued for the committer before callers wait: bounds memory;
/// actors' mailboxes already bound how many can be in flight.
const QUEUE_LEN_MAX: usize = 4096;
/// Write sets applied in one transaction: bounds one commit's duration.
const GROUP_LEN_MAX: usize = 512;

/// A value bound to a statement.
#[derive(Clone, Debug)]
pub enum Val {
    I(i64),
    S(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::I(v)
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::S(v.to_string())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::S(v)
    }
}

#[derive(Debug)]
pub struct Stmt {
    sql: String,
    binds: Vec<Val>,
}

/// One statement with `?` placeholders.
pub fn stmt(sql: &str, binds: Vec<Val>) -> Stmt {
    Stmt { sql: sql.to_string(), binds }
}

/// `INSERT INTO {into} VALUES (…), (…)` in chunks; `into` names the columns.
pub fn insert_rows(into: &str, rows: Vec<Vec<Val>>) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Val>> = rows.by_ref().take(ROWS_PER_STATEMENT).collect();
        let width = chunk[0].len();
        let one = format!("({})", vec!["?"; width].join(", "));
        let sql = format!("INSERT INTO {into} VALUES {}", vec![one; chunk.len()].join(", "));
        out.push(Stmt { sql, binds: chunk.into_iter().flatten().collect() });
    }
    out
}

/// The writes of one store call, applied in order, and its outbox events.
#[derive(Debug, Default)]
pub struct WriteSet {
    pub stmts: Vec<Stmt>,
    pub events: Vec<DomainEvent>,
}

struct Job {
    set: WriteSet,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the committer task on the current runtime.
    pub fn spawn(db: Db, ids: Arc<IdGen>, appended: Arc<Notify>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_LEN_MAX);
        tokio::spawn(run(rx, db, ids, appended));
        Committer { tx }
    }

    /// Applies `set` durably; returns once its transaction has committed.
    pub async fn commit(&self, set: WriteSet) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { set, done })
            .await
            .map_err(|_| StoreError::Unavailable("hot store committer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("hot store committer stopped".into()))?
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, db: Db, ids: Arc<IdGen>, appended: Arc<Notify>) {
    let mut jobs = Vec::with_capacity(GROUP_LEN_MAX);
    while rx.recv_many(&mut jobs, GROUP_LEN_MAX).await > 0 {
        let result = apply(&db, &ids, &jobs).await;
        let appended_any = jobs.iter().any(|j| !j.set.events.is_empty());
        for job in jobs.drain(..) {
            let _ = job.done.send(result.clone());
        }
        if result.is_ok() && appended_any {
            appended.notify_one();
        }
    }
}

async fn apply(db: &Db, ids: &IdGen, jobs: &[Job]) -> Result<(), StoreError> {
    let unavailable = |e: sqlx::Error| StoreError::Unavailable(e.to_string());
    let mut tx = db.write.begin().await.map_err(unavailable)?;
    for job in jobs {
        for s in &job.set.stmts {
            execute(&mut tx, s).await.map_err(unavailable)?;
        }
    }
    let mut outbox = Vec::new();
    for event in jobs.iter().flat_map(|j| &j.set.events) {
        let env = Envelope {
            position: 0,
            event_id: ids.next(0),
            partition: event.entity_id().partition(),
            event: event.clone(),
        };
        let body = serde_json::to_string(&env).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        outbox.push(vec![Val::I(env.event_id.raw()), Val::I(i64::from(env.partition)), Val::S(body)]);
    }
    for s in insert_rows("outbox (event_id, partition, body)", outbox) {
        execute(&mut tx, &s).await.map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)
}

async fn execute(conn: &mut SqliteConnection, s: &Stmt) -> Result<(), sqlx::Error> {
    let mut q = sqlx::query::<Sqlite>(&s.sql);
    for b in &s.binds {
        q = match b {
            Val::I(v) => q.bind(*v),
            Val::S(v) => q.bind(v.as_str()),
        };
    }
    q.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_split_into_bounded_statements() {
        let rows: Vec<Vec<Val>> = (0..1001).map(|i| vec![Val::I(i), Val::S("x".into())]).collect();
        let stmts = insert_rows("t (a, b)", rows);
        assert_eq!(stmts.len(), 3);
        assert_eq!(stmts[0].binds.len(), 2 * ROWS_PER_STATEMENT);
        assert_eq!(stmts[2].binds.len(), 2);
        assert_eq!(stmts[2].sql, "INSERT INTO t (a, b) VALUES (?, ?)");
        assert!(insert_rows("t (a)", vec![]).is_empty());
    }
}

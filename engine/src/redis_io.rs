//! Running Redis commands that live in different slots. A cluster refuses
//! a pipeline across slots, so per-partition reads and writes are separate
//! commands, sent concurrently (on a multiplexed connection they still
//! share round trips).

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult};
use tokio::task::JoinSet;

/// Runs `cmds` concurrently; answers in their order.
pub async fn concurrently<C, T>(conn: &C, cmds: Vec<redis::Cmd>) -> RedisResult<Vec<T>>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
    T: FromRedisValue + Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, cmd) in cmds.into_iter().enumerate() {
        let mut conn = conn.clone();
        set.spawn(async move { (i, cmd.query_async::<T>(&mut conn).await) });
    }
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(set.len()).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| std::io::Error::other(e.to_string()))?;
        out[i] = Some(r?);
    }
    out.into_iter().map(|r| r.ok_or_else(|| std::io::Error::other("a command gave no answer").into())).collect()
}

//! Fleet mode: which clusters a run evaluates, and how a scheduled run too big for one
//! invocation is spread over parallel ones.
//!
//! The clusters are the registered ones ([`pgdaemon_core::Store::list_clusters`], entered by the
//! agents) plus any named in `PGDAEMON_CLUSTERS`. A scheduled run that finds more than
//! `PGDAEMON_CLUSTERS_PER_INVOCATION` splits them into `k` shards by a stable hash of the name,
//! evaluates shard 0 itself and invokes the function asynchronously once per other shard
//! (`{"action": "evaluate", "shard": i, "shards": k}`). Each shard run lists the registry again
//! and keeps its own clusters, so nothing but the shard numbers travels in the event, and a
//! cluster registered meanwhile lands in exactly one shard. A shard whose invocation fails is
//! evaluated by the scheduled run itself, after its own: a failed fan-out costs time, never a
//! skipped cluster. Evaluating a cluster twice is harmless: the coordinator lock lets one
//! coordinator act at a time.

use async_trait::async_trait;

/// Starts the evaluation of one shard in a parallel invocation.
///
/// Obligation: `Ok` only once the invocation was accepted (Lambda's asynchronous `Invoke`
/// answered 202); it does not wait for the shard's run. An `Err` names the cause.
#[async_trait]
pub trait ShardInvoker: Send + Sync {
    async fn invoke_shard(&self, shard: Shard) -> Result<(), String>;
}

/// One of `of` parts of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    pub index: usize,
    pub of: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, of: 1 };

    /// Whether `cluster` belongs to this shard (FNV-1a of the name, so every invocation and
    /// every release agrees without coordination).
    pub fn contains(&self, cluster: &str) -> bool {
        self.of <= 1 || (fnv1a(cluster) % self.of as u64) as usize == self.index
    }

    /// The payload that makes an invocation evaluate this shard.
    pub fn event(&self) -> serde_json::Value {
        serde_json::json!({ "action": "evaluate", "shard": self.index, "shards": self.of })
    }
}

/// How many shards `clusters` need at `per_invocation` each.
pub fn shards_needed(clusters: usize, per_invocation: usize) -> usize {
    clusters.div_ceil(per_invocation.max(1)).max(1)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The configured clusters followed by the registered ones, each once, sorted.
pub fn merge(configured: &[String], registered: Vec<String>) -> Vec<String> {
    let mut all: Vec<String> = configured.iter().cloned().chain(registered).collect();
    all.sort();
    all.dedup();
    all
}

/// Invokes this same function asynchronously through the Lambda API.
#[derive(Clone)]
pub struct LambdaShardInvoker {
    client: aws_sdk_lambda::Client,
    /// The function's name (`AWS_LAMBDA_FUNCTION_NAME`): shards run on its unqualified
    /// version, whatever alias the scheduled event came through.
    function: String,
}

impl LambdaShardInvoker {
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        LambdaShardInvoker { client, function: function.into() }
    }
}

#[async_trait]
impl ShardInvoker for LambdaShardInvoker {
    async fn invoke_shard(&self, shard: Shard) -> Result<(), String> {
        use aws_sdk_lambda::error::DisplayErrorContext;
        use aws_sdk_lambda::primitives::Blob;
        use aws_sdk_lambda::types::InvocationType;
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(shard.event().to_string()))
            .send()
            .await
            .map_err(|e| {
                format!("invoking {} for shard {}/{}: {}", self.function, shard.index, shard.of, DisplayErrorContext(&e))
            })?;
        match out.status_code() {
            202 => Ok(()),
            code => Err(format!("invoking {} for shard {}/{}: status {code}", self.function, shard.index, shard.of)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_fleet_evenly_enough() {
        let names: Vec<String> = (0..1000).map(|i| format!("cluster-{i:04}")).collect();
        let of = shards_needed(names.len(), 250);
        assert_eq!(of, 4);
        let mut sizes = vec![0; of];
        for n in &names {
            let owners: Vec<usize> = (0..of).filter(|&i| Shard { index: i, of }.contains(n)).collect();
            assert_eq!(owners.len(), 1, "{n} belongs to exactly one shard: {owners:?}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&s| (200..=300).contains(&s)), "{sizes:?}");
        assert!(names.iter().all(|n| Shard::WHOLE.contains(n)));
    }

    #[test]
    fn shard_counts_and_merging() {
        assert_eq!((shards_needed(0, 250), shards_needed(250, 250), shards_needed(251, 250)), (1, 1, 2));
        assert_eq!(shards_needed(5, 0), 5, "a zero bound is treated as one");
        let merged = merge(&["b".into(), "a".into()], vec!["c".into(), "a".into()]);
        assert_eq!(merged, vec!["a", "b", "c"]);
        assert_eq!(Shard { index: 2, of: 3 }.event(), serde_json::json!({"action": "evaluate", "shard": 2, "shards": 3}));
    }
}

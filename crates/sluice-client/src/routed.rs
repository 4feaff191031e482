//! Client-side routing for producer-framed puts ([`Client::put_routed`]).
//!
//! The client keeps, per stream, the hash ranges of its open partitions (from `DescribeStream`)
//! and frames each partition's records as the batch the server stores. A table goes stale when
//! a split or merge closes partitions; the server then refuses the batches for the closed ones,
//! and the client describes the stream again and routes those records anew. A table is also
//! dropped after [`ROUTES_MAX_AGE`] and after any error, so that a stream deleted and created
//! again under the same name (whose partition ids mean other ranges) is described afresh; Kafka
//! producers refresh their metadata on the same two triggers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_protocol::ErrorCode;
use sluice_protocol::batch::{
    BatchAck, BatchBuilder, BatchError, FramedBatch, RECORD_HEADER_LEN, hash_key,
};
use sluice_protocol::message::{PutAck, PutRecord, StreamInfo};

use crate::client::Client;
use crate::error::ClientError;

/// How long a stream's routing table is used before it is described again.
pub const ROUTES_MAX_AGE: Duration = Duration::from_secs(60);

/// Rounds of routing again after a reshard before a put gives up (each follows a fresh
/// description, so only reshards that keep closing the new partitions use them up).
const REROUTES_MAX: usize = 8;

/// A stream's routing table: its open partitions, by the start of their hash range. Built from
/// a `DescribeStream` answer; [`Client::put_routed`] keeps one per stream by itself, and a
/// caller that frames puts ahead of time (a load generator) can use one directly.
#[derive(Debug)]
pub struct Router {
    /// `(hash_start, hash_end, partition)`, sorted by `hash_start`, covering the hash space.
    open: Vec<(u128, u128, u32)>,
    fetched: Instant,
}

impl Router {
    /// The routing table of a described stream.
    pub fn new(info: &StreamInfo) -> Self {
        let mut open: Vec<(u128, u128, u32)> = info
            .partitions
            .iter()
            .filter(|p| p.open)
            .map(|p| (p.hash_start, p.hash_end, p.id))
            .collect();
        open.sort_unstable();
        Self {
            open,
            fetched: Instant::now(),
        }
    }

    /// The open partition whose range holds `hash`.
    pub fn route(&self, hash: u128) -> Option<u32> {
        let i = self.open.partition_point(|(start, _, _)| *start <= hash);
        let (start, end, id) = *self.open.get(i.checked_sub(1)?)?;
        (start <= hash && hash <= end).then_some(id)
    }
}

impl Router {
    /// Routes `records` and frames one batch per partition, each holding its records in input
    /// order: what [`Client::put_routed`] sends, ready for [`Client::put_batches`] or
    /// [`EncodedBatches`](crate::EncodedBatches).
    pub fn frame(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<FramedBatch>, ClientError> {
        let hashes: Vec<u128> = records.iter().map(record_hash).collect();
        let all: Vec<usize> = (0..records.len()).collect();
        Ok(frame(records, &hashes, &all, self, stream)?.0)
    }
}

fn record_hash(r: &PutRecord) -> u128 {
    r.explicit_hash_key
        .unwrap_or_else(|| hash_key(&r.partition_key))
}

/// Routing tables by stream name, shared by a client's clones.
#[derive(Debug, Default)]
pub(crate) struct RouteCache(Mutex<HashMap<String, Arc<Router>>>);

impl RouteCache {
    fn get(&self, stream: &str) -> Option<Arc<Router>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(stream)
            .filter(|r| r.fetched.elapsed() < ROUTES_MAX_AGE)
            .cloned()
    }

    fn put(&self, stream: &str, routes: Arc<Router>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(stream.to_owned(), routes);
    }

    pub(crate) fn forget(&self, stream: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(stream);
    }
}

impl Client {
    async fn routes(&self, stream: &str, fresh: bool) -> Result<Arc<Router>, ClientError> {
        if !fresh && let Some(r) = self.route_cache().get(stream) {
            return Ok(r);
        }
        let routes = Arc::new(Router::new(&self.describe_stream(stream).await?));
        self.route_cache().put(stream, Arc::clone(&routes));
        Ok(routes)
    }

    /// Appends records the fast way: routes each one to its partition here (the MD5 of its key,
    /// or its explicit hash key, against the stream's hash ranges, the server's own rule),
    /// frames one batch per partition, and sends them in one `PutBatches` request, which the
    /// server writes without decoding or copying the records. Returns one acknowledgement per
    /// record, in input order, like [`Client::put`], under the same limits (500 records and
    /// 5 MiB per call by default).
    ///
    /// After a split or merge the client's routing table is stale: the server refuses the
    /// batches for closed partitions, having written nothing of them, and this call describes
    /// the stream again and sends those records to the partitions that now own them. Per-key
    /// order holds within a call and between calls made one after another. Two calls in flight
    /// at once that both meet a reshard may land in either order, as with a Kafka producer that
    /// has several requests in flight and retries; keep one call in flight per key when that
    /// matters. As with [`Client::put`], an error after the request was sent (a timeout, a lost
    /// connection, `StorageUnavailable`) may leave some batches written, and so may an error in
    /// a later round after a reshard (the first round's batches stay written): a caller that
    /// retries the whole call can store those records twice (at least once).
    ///
    /// The routing table is trusted for up to [`ROUTES_MAX_AGE`]: a stream deleted and created
    /// again under the same name within that time reuses partition ids for other hash ranges, and
    /// this client's records would land in a partition that does not own their keys (stored, but
    /// out of order with the key's other records) until the table is refreshed.
    pub async fn put_routed(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<PutAck>, ClientError> {
        let hashes: Vec<u128> = records.iter().map(record_hash).collect();
        let mut acks: Vec<Option<PutAck>> = vec![None; records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut fresh = false;
        for _ in 0..REROUTES_MAX {
            let routes = self.routes(stream, fresh).await?;
            let (batches, members) = frame(records, &hashes, &pending, &routes, stream)?;
            let answer = match self.put_batches(stream, batches).await {
                Ok(a) => a,
                // A closed partition that retention removed is gone from the stream: the table
                // is stale, and the request wrote nothing, so route again once.
                Err(e) if e.code() == Some(ErrorCode::PartitionNotFound) && !fresh => {
                    fresh = true;
                    continue;
                }
                Err(e) => {
                    // Whatever went wrong, the next call starts from a fresh description.
                    self.route_cache().forget(stream);
                    return Err(e);
                }
            };
            pending.clear();
            for (ack, indices) in answer.iter().zip(members) {
                if ack.is_written() {
                    for (n, i) in indices.into_iter().enumerate() {
                        if let Some(slot) = acks.get_mut(i) {
                            *slot = Some(PutAck {
                                partition: ack.partition,
                                offset: ack.base_offset + n as u64,
                            });
                        }
                    }
                } else {
                    pending.extend(indices);
                }
            }
            if pending.is_empty() {
                return Ok(acks.into_iter().flatten().collect());
            }
            // Records keep their input order within each retried partition.
            pending.sort_unstable();
            fresh = true;
        }
        self.route_cache().forget(stream);
        Err(ClientError::Server {
            code: ErrorCode::PartitionClosed.as_u16(),
            kind: Some(ErrorCode::PartitionClosed),
            message: format!(
                "stream {stream:?} was resharded {REROUTES_MAX} times while this put was routed"
            ),
        })
    }
}

/// Frames `pending` records (indices into `records`, in order) into one batch per partition.
/// Returns the batches and, for each, the indices of its records.
fn frame(
    records: &[PutRecord],
    hashes: &[u128],
    pending: &[usize],
    routes: &Router,
    stream: &str,
) -> Result<(Vec<FramedBatch>, Vec<Vec<usize>>), ClientError> {
    let mut by_partition: Vec<(u32, Vec<usize>)> = Vec::new();
    for &i in pending {
        let hash = hashes.get(i).copied().unwrap_or(0);
        let Some(p) = routes.route(hash) else {
            // Open partitions always cover the hash space; a gap means a table caught mid-way
            // through a reshard, which the server would not have described.
            return Err(ClientError::Server {
                code: ErrorCode::PartitionNotFound.as_u16(),
                kind: Some(ErrorCode::PartitionNotFound),
                message: format!("no open partition of stream {stream:?} holds hash key {hash}"),
            });
        };
        match by_partition.iter_mut().find(|(id, _)| *id == p) {
            Some((_, v)) => v.push(i),
            None => by_partition.push((p, vec![i])),
        }
    }
    let mut batches = Vec::with_capacity(by_partition.len());
    let mut members = Vec::with_capacity(by_partition.len());
    for (p, indices) in by_partition {
        let size = indices
            .iter()
            .filter_map(|i| records.get(*i))
            .map(|r| RECORD_HEADER_LEN + r.partition_key.len() + r.value.len())
            .sum();
        let mut b = BatchBuilder::with_capacity(p, size);
        for r in indices.iter().filter_map(|i| records.get(*i)) {
            // Refused here, before anything is sent, with the code the server would give.
            b.push(&r.partition_key, &r.value).map_err(|e| {
                let code = match e {
                    BatchError::KeyTooLong { .. } => ErrorCode::InvalidPartitionKey,
                    BatchError::TooLarge => ErrorCode::PutTooLarge,
                };
                ClientError::Server {
                    code: code.as_u16(),
                    kind: Some(code),
                    message: format!("refused by the client: {e}"),
                }
            })?;
        }
        if let Some(batch) = b.finish() {
            batches.push(batch);
            members.push(indices);
        }
    }
    Ok((batches, members))
}

/// Checks a `PutBatches` answer against its request: one acknowledgement per batch, for the
/// same partition and record count.
pub(crate) fn check_answer(batches: &[(u32, u32)], acks: &[BatchAck]) -> bool {
    acks.len() == batches.len()
        && acks
            .iter()
            .zip(batches)
            .all(|(a, (p, n))| a.partition == *p && a.record_count == *n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_protocol::message::PartitionInfo;

    fn info(parts: &[(u32, bool, u128, u128)]) -> StreamInfo {
        StreamInfo {
            name: "s".into(),
            retention_ms: 1,
            partition_bytes_max: None,
            record_bytes_max: 1,
            partitions: parts
                .iter()
                .map(|&(id, open, hash_start, hash_end)| PartitionInfo {
                    id,
                    open,
                    hash_start,
                    hash_end,
                    parents: vec![],
                    start_offset: 0,
                    end_offset: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn routes_follow_the_open_ranges_only() {
        let mid = u128::MAX / 2;
        let r = Router::new(&info(&[
            (0, false, 0, u128::MAX),
            (2, true, mid + 1, u128::MAX),
            (1, true, 0, mid),
        ]));
        assert_eq!(r.route(0), Some(1));
        assert_eq!(r.route(mid), Some(1));
        assert_eq!(r.route(mid + 1), Some(2));
        assert_eq!(r.route(u128::MAX), Some(2));
        let gap = Router::new(&info(&[(1, true, 0, mid)]));
        assert_eq!(gap.route(mid + 1), None);
    }
}

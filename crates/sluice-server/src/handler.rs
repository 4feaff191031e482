//! Executes requests against the broker. Broker calls block (disk I/O, fsync), so none runs on a
//! thread that serves other connections: a put's write runs on its connection's own thread,
//! which keeps the connection's puts in order (see `connection.rs`), and every other call, fsync
//! waits included, on the server runtime's blocking pool, where a dropped request future does
//! not cancel a call already handed over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_broker::{
    FramedPut, PendingAck, PutRecord as BrokerRecord, StreamConfig, SubmittedBatches, SubmittedPut,
};
use sluice_log::ReadLimits;
use sluice_protocol::ErrorCode;
use sluice_protocol::batch::{BATCH_HEADER_LEN, BatchAck, FramedBatch, RECORD_HEADER_LEN};
use sluice_protocol::message::{
    ErrorResponse, GroupInfo, GroupPartitionInfo, GroupSummary, InitialPosition, Joined, LeaseInfo,
    MemberInfo, PartitionInfo, PutRecord, ReadFrom, ReadRequest, ReadResponse, Request, Response,
    StreamInfo, WireRecord,
};

use crate::errors::to_wire;
use crate::server::Shared;

type Answer = Result<Response, ErrorResponse>;

/// Runs a blocking broker call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, sluice_broker::Error> + Send + 'static,
) -> Result<T, ErrorResponse> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| to_wire(&e)),
        Err(e) => Err(ErrorResponse::new(
            ErrorCode::Internal,
            format!("request task failed: {e}"),
        )),
    }
}

fn info(d: sluice_broker::StreamDescription) -> StreamInfo {
    StreamInfo {
        name: d.name,
        retention_ms: d.retention_ms,
        partition_bytes_max: d.partition_bytes_max,
        record_bytes_max: d.record_bytes_max,
        partitions: d
            .partitions
            .into_iter()
            .map(|p| PartitionInfo {
                id: p.id,
                open: p.state == sluice_broker::PartitionState::Open,
                hash_start: p.range.start,
                hash_end: p.range.end,
                parents: p.parents,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
            })
            .collect(),
    }
}

fn broker_initial(i: InitialPosition) -> sluice_broker::InitialPosition {
    match i {
        InitialPosition::Earliest => sluice_broker::InitialPosition::Earliest,
        InitialPosition::Latest => sluice_broker::InitialPosition::Latest,
    }
}

fn group_info(d: sluice_broker::GroupDescription) -> GroupInfo {
    GroupInfo {
        group: d.group,
        stream: d.stream,
        initial: match d.initial {
            sluice_broker::InitialPosition::Earliest => InitialPosition::Earliest,
            sluice_broker::InitialPosition::Latest => InitialPosition::Latest,
        },
        members: d
            .members
            .into_iter()
            .map(|m| MemberInfo {
                member_id: m.member_id,
                name: m.name,
                session_timeout_ms: u32::try_from(m.session_timeout_ms).unwrap_or(u32::MAX),
                last_seen_ms_ago: m.last_seen_ms_ago,
                partitions: m.partitions,
            })
            .collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| GroupPartitionInfo {
                partition: p.partition,
                open: p.open,
                state: p.state.as_str().to_owned(),
                owner: p.owner,
                epoch: p.epoch,
                checkpoint: p.checkpoint,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                lag_records: p.lag_records,
                lag_ms: p.lag_ms,
            })
            .collect(),
    }
}

/// Handles every request but `Hello` and `Put` (which the connection orders itself).
pub(crate) async fn handle(shared: Arc<Shared>, req: Request) -> Answer {
    let b = Arc::clone(&shared.broker);
    match req {
        Request::CreateStream(c) => {
            let config = StreamConfig {
                partitions: c.partitions,
                retention: Duration::from_millis(c.retention_ms),
                partition_bytes_max: c.partition_bytes_max,
                record_bytes_max: c
                    .record_bytes_max
                    .unwrap_or(StreamConfig::default().record_bytes_max),
            };
            let d = blocking(move || b.create_stream(&c.name, config)).await?;
            Ok(Response::CreateStream(info(d)))
        }
        Request::DeleteStream { name } => {
            blocking(move || b.delete_stream(&name)).await?;
            Ok(Response::DeleteStream)
        }
        Request::ListStreams => Ok(Response::ListStreams(b.list_streams())),
        Request::DescribeStream { name } => {
            let d = blocking(move || b.describe_stream(&name)).await?;
            Ok(Response::DescribeStream(info(d)))
        }
        Request::Read(r) => read(shared, r).await,
        Request::Split { target, at } => {
            let ids = blocking(move || b.split(&target.stream, target.partition, at)).await?;
            Ok(Response::Split(ids))
        }
        Request::Merge {
            stream,
            a,
            b: other,
        } => {
            let id = blocking(move || b.merge(&stream, a, other)).await?;
            Ok(Response::Merge(id))
        }
        Request::SetRetention {
            stream,
            retention_ms,
        } => {
            blocking(move || b.set_retention(&stream, Duration::from_millis(retention_ms))).await?;
            Ok(Response::SetRetention)
        }
        Request::CommitCheckpoint {
            group,
            target,
            offset,
        } => {
            blocking(move || b.commit_checkpoint(&group, &target.stream, target.partition, offset))
                .await?;
            Ok(Response::CommitCheckpoint)
        }
        Request::FetchCheckpoint { group, target } => {
            let o = blocking(move || b.fetch_checkpoint(&group, &target.stream, target.partition))
                .await?;
            Ok(Response::FetchCheckpoint(o))
        }
        Request::JoinGroup(j) => {
            let timeout = Duration::from_millis(u64::from(j.session_timeout_ms));
            let initial = broker_initial(j.initial);
            let member_id = blocking(move || {
                b.join_group(&j.group, &j.stream, &j.member_name, timeout, initial)
            })
            .await?;
            Ok(Response::JoinGroup(Joined {
                member_id,
                heartbeat_interval_ms: (j.session_timeout_ms / 3).max(1),
            }))
        }
        Request::Heartbeat(h) => {
            let leases = blocking(move || {
                let m = &h.member;
                b.heartbeat(&m.group, &m.stream, &m.member_id, &h.released)
            })
            .await?;
            Ok(Response::Heartbeat(
                leases
                    .into_iter()
                    .map(|l| LeaseInfo {
                        partition: l.partition,
                        epoch: l.epoch,
                        start_offset: l.start_offset,
                        revoking: l.revoking,
                    })
                    .collect(),
            ))
        }
        Request::CommitLease(c) => {
            blocking(move || {
                let m = &c.member;
                b.commit_lease(
                    &m.group,
                    &m.stream,
                    &m.member_id,
                    c.partition,
                    c.epoch,
                    c.offset,
                )
            })
            .await?;
            Ok(Response::CommitLease)
        }
        Request::LeaveGroup(m) => {
            blocking(move || b.leave_group(&m.group, &m.stream, &m.member_id)).await?;
            Ok(Response::LeaveGroup)
        }
        Request::DescribeGroup { group, stream } => {
            let d = blocking(move || b.describe_group(&group, &stream)).await?;
            Ok(Response::DescribeGroup(group_info(d)))
        }
        Request::ListGroups => {
            let groups = blocking(move || b.list_groups()).await?;
            Ok(Response::ListGroups(
                groups
                    .into_iter()
                    .map(|g| GroupSummary {
                        group: g.group,
                        stream: g.stream,
                        members: u32::try_from(g.members).unwrap_or(u32::MAX),
                        checkpoints: u32::try_from(g.checkpoints).unwrap_or(u32::MAX),
                    })
                    .collect(),
            ))
        }
        Request::Stats => {
            let io = tokio::task::spawn_blocking(move || b.io_stats())
                .await
                .unwrap_or_default();
            Ok(Response::Stats(shared.stats.snapshot(io)))
        }
        Request::Hello { .. } | Request::Put { .. } | Request::PutBatches { .. } => Err(
            ErrorResponse::new(ErrorCode::Internal, "handled by the connection"),
        ),
        _ => Err(ErrorResponse::new(
            ErrorCode::UnknownKind,
            "request kind not served",
        )),
    }
}

/// A put that is written and waits for its acknowledgement (its fsync under `fsync=always`).
pub(crate) struct WrittenPut {
    stream: String,
    submitted: Submitted,
    records: u64,
    bytes: u64,
}

enum Submitted {
    /// A `Put`: acknowledged per record.
    Records(SubmittedPut),
    /// A `PutBatches`: acknowledged per batch; `bytes` holds each batch's key and value bytes.
    Batches(SubmittedBatches, Vec<u64>),
}

impl WrittenPut {
    /// Whether it is acknowledged already, so that [`finish_put`] would not wait.
    pub(crate) fn is_acknowledged(&self) -> bool {
        match &self.submitted {
            Submitted::Records(s) => s.is_acknowledged(),
            Submitted::Batches(s, _) => s.is_acknowledged(),
        }
    }
}

/// Writes a put (validated, routed, in the connection's order) and returns a handle to wait for
/// its acknowledgement. It blocks on disk I/O: the caller runs it on the connection's own thread,
/// never on one that serves other connections.
pub(crate) fn submit_put(
    shared: &Shared,
    stream: String,
    records: Vec<PutRecord>,
) -> Result<WrittenPut, ErrorResponse> {
    let records: Vec<BrokerRecord> = records
        .into_iter()
        .map(|r| BrokerRecord {
            partition_key: r.partition_key,
            explicit_hash_key: r.explicit_hash_key,
            value: r.value,
        })
        .collect();
    let bytes: u64 = records
        .iter()
        .map(|r| (r.partition_key.len() + r.value.len()) as u64)
        .sum();
    let submitted = shared
        .broker
        .submit_put(&stream, &records)
        .map_err(|e| to_wire(&e))?;
    Ok(WrittenPut {
        stream,
        submitted: Submitted::Records(submitted),
        records: records.len() as u64,
        bytes,
    })
}

/// [`submit_put`] for `PutBatches` requests, producer-framed batches checked and then written
/// where they arrived, several of one connection at once, in order: each
/// consecutive run of them to the same stream goes to the broker together, which writes each
/// partition's batches from all of them at once (`Broker::submit_batches_many`). Each request
/// still succeeds or fails on its own. Returns one result per request, in order.
pub(crate) fn submit_batches_many(
    shared: &Shared,
    puts: Vec<(String, Vec<FramedBatch>)>,
) -> Vec<Result<WrittenPut, ErrorResponse>> {
    let mut out = Vec::with_capacity(puts.len());
    let mut puts = puts.into_iter().peekable();
    while let Some((stream, batches)) = puts.next() {
        let mut run = vec![batches];
        while let Some((_, more)) = puts.next_if(|(next, _)| *next == stream) {
            run.push(more);
        }
        // Key and value bytes per batch, for the statistics: the batch less its headers.
        let bytes: Vec<Vec<u64>> = run
            .iter()
            .map(|batches| {
                batches
                    .iter()
                    .map(|b| {
                        (b.batch.len() as u64)
                            .saturating_sub(BATCH_HEADER_LEN as u64)
                            .saturating_sub(u64::from(b.record_count()) * RECORD_HEADER_LEN as u64)
                    })
                    .collect()
            })
            .collect();
        let framed = run
            .into_iter()
            .map(|batches| {
                batches
                    .into_iter()
                    .map(|b| FramedPut {
                        partition: b.partition,
                        records_crc: b.records_crc,
                        batch: b.batch,
                    })
                    .collect()
            })
            .collect();
        let submitted = shared.broker.submit_batches_many(&stream, framed);
        for (result, bytes) in submitted.into_iter().zip(bytes) {
            out.push(
                result
                    .map(|submitted| WrittenPut {
                        stream: stream.clone(),
                        submitted: Submitted::Batches(submitted, bytes),
                        records: 0,
                        bytes: 0,
                    })
                    .map_err(|e| to_wire(&e)),
            );
        }
    }
    out
}

/// A written put taken apart: the fsync waits it still needs, and what to answer and publish once
/// they have returned.
struct Settling {
    pending: Vec<PendingAck>,
    answer: Response,
    stream: String,
    touched: Vec<u32>,
    records: u64,
    bytes: u64,
}

impl Settling {
    fn of(put: WrittenPut) -> Self {
        let WrittenPut {
            stream,
            submitted,
            mut records,
            mut bytes,
        } = put;
        let (pending, answer, touched) = match submitted {
            Submitted::Records(s) => {
                let (pending, acks) = s.into_parts();
                let touched: Vec<u32> = acks.iter().map(|a| a.partition).collect();
                let answer = Response::Put(
                    acks.into_iter()
                        .map(|a| sluice_protocol::message::PutAck {
                            partition: a.partition,
                            offset: a.offset,
                        })
                        .collect(),
                );
                (pending, answer, touched)
            }
            Submitted::Batches(s, batch_bytes) => {
                let (pending, outcomes) = s.into_parts();
                let mut touched = Vec::new();
                for (o, b) in outcomes.iter().zip(batch_bytes) {
                    if o.first_offset.is_some() {
                        touched.push(o.partition);
                        records += u64::from(o.record_count);
                        bytes += b;
                    }
                }
                let answer = Response::PutBatches(
                    outcomes
                        .into_iter()
                        .map(|o| BatchAck {
                            partition: o.partition,
                            status: if o.first_offset.is_some() {
                                0
                            } else {
                                ErrorCode::PartitionClosed.as_u16()
                            },
                            record_count: o.record_count,
                            base_offset: o.first_offset.unwrap_or(0),
                        })
                        .collect(),
                );
                (pending, answer, touched)
            }
        };
        Self {
            pending,
            answer,
            stream,
            touched,
            records,
            bytes,
        }
    }

    /// Once every wait has returned `Ok`: wakes the long polls of the put's partitions, counts
    /// the put, and gives its answer.
    fn publish(self, shared: &Shared, started: Instant) -> Answer {
        let Self {
            answer,
            stream,
            mut touched,
            records,
            bytes,
            ..
        } = self;
        touched.sort_unstable();
        touched.dedup();
        for p in touched {
            shared.notify.notify(&stream, p);
        }
        shared
            .stats
            .record_put(&stream, records, bytes, started.elapsed());
        Ok(answer)
    }
}

/// Waits for a written put's acknowledgement, then wakes the long polls of its partitions.
pub(crate) async fn finish_put(shared: &Arc<Shared>, put: WrittenPut, started: Instant) -> Answer {
    let mut settling = Settling::of(put);
    // Each partition's fsync wait runs on the blocking pool, whose threads are reused, so the
    // partitions' fsyncs overlap; none at all when the records are already acknowledged (any
    // policy but `always`, or an fsync that already covered them).
    let waits: Vec<_> = std::mem::take(&mut settling.pending)
        .into_iter()
        .map(|part| tokio::task::spawn_blocking(move || part.wait()))
        .collect();
    for w in waits {
        match w.await {
            Ok(r) => r.map_err(|e| to_wire(&e))?,
            Err(e) => {
                return Err(ErrorResponse::new(
                    ErrorCode::Internal,
                    format!("request task failed: {e}"),
                ));
            }
        }
    }
    settling.publish(shared, started)
}

/// [`finish_put`] on the calling thread, for a put that [`WrittenPut::is_acknowledged`] says
/// needs no wait. A partition once acknowledged stays so, so nothing is left to wait for; the
/// loop below only keeps the answer honest should that ever change (it would wait, one partition
/// after another, rather than acknowledge early).
pub(crate) fn finish_acknowledged(shared: &Shared, put: WrittenPut, started: Instant) -> Answer {
    let mut settling = Settling::of(put);
    for part in std::mem::take(&mut settling.pending) {
        part.wait().map_err(|e| to_wire(&e))?;
    }
    settling.publish(shared, started)
}

/// A read, long-polling for up to `max_wait_ms` when there is nothing to return yet.
async fn read(shared: Arc<Shared>, r: ReadRequest) -> Answer {
    let b = Arc::clone(&shared.broker);
    let wait = Duration::from_millis(u64::from(r.max_wait_ms)).min(shared.config.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let (stream, partition) = (r.stream.clone(), r.partition);
    let from = {
        let b = Arc::clone(&b);
        let (stream, from) = (stream.clone(), r.from);
        blocking(move || {
            // Every branch asks the broker, so a read of a partition that does not exist fails
            // here, before the notifier learns of it.
            let bounds = b.partition_bounds(&stream, partition)?;
            Ok(match from {
                ReadFrom::Offset(o) => o,
                ReadFrom::Earliest => bounds.0,
                ReadFrom::Latest => bounds.1,
                ReadFrom::Timestamp(t) => b
                    .offset_for_timestamp(&stream, partition, t)?
                    .unwrap_or(bounds.1),
            })
        })
        .await?
    };
    // Subscribe before the first read, so a put acknowledged in between still wakes us. (Only
    // now: resolving the start checked that the partition exists, so no request can make the
    // notifier track partitions that do not.)
    let mut changes = shared.notify.subscribe(&stream, partition);
    // A read answer must fit in a frame, whatever the request asks.
    let bytes_max = (r.max_bytes as usize)
        .min(shared.config.max_frame_bytes as usize / 2)
        .max(1);
    let limits = ReadLimits {
        records_max: (r.max_records as usize).clamp(1, 100_000),
        bytes_max,
    };
    loop {
        changes.borrow_and_update();
        let (records, (start_offset, end_offset)) = {
            let b = Arc::clone(&b);
            let stream = stream.clone();
            blocking(move || {
                let records = b.read(&stream, partition, from, limits)?;
                let bounds = b.partition_bounds(&stream, partition)?;
                Ok((records, bounds))
            })
            .await?
        };
        if !records.is_empty() || tokio::time::Instant::now() >= deadline {
            let next_offset = records.last().map_or(from, |r| r.offset + 1);
            let bytes: u64 = records
                .iter()
                .map(|r| (r.key.len() + r.value.len()) as u64)
                .sum();
            shared
                .stats
                .record_read(&stream, records.len() as u64, bytes);
            return Ok(Response::Read(ReadResponse {
                start_offset,
                end_offset,
                next_offset,
                records: records
                    .into_iter()
                    .map(|r| WireRecord {
                        offset: r.offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key,
                        value: r.value,
                    })
                    .collect(),
            }));
        }
        // Nothing yet: sleep until the partition changes, the deadline passes, or the server
        // shuts down (the shutdown watch ends long polls early with what there is: nothing).
        let mut shutdown = shared.shutdown_rx();
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.wait_for(|s| *s) => {
                return Ok(Response::Read(ReadResponse { start_offset, end_offset, next_offset: from, records: Vec::new() }));
            }
        }
    }
}

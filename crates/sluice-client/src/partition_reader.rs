//! A reader that follows one partition's tail.

use std::collections::VecDeque;
use std::time::Duration;

use sluice_protocol::WireError;
use sluice_protocol::message::{ReadFrom, ReadRequest, ReadResponse, WireRecord};

use crate::client::Client;
use crate::error::ClientError;

/// Settings of a [`PartitionReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderConfig {
    /// Most records one read returns. Default: 1000.
    pub max_records: u32,
    /// Most key and value bytes one read returns (the server returns at least one record when
    /// there is one). Keep it below the client's frame limit. Default: 4 MiB.
    pub max_bytes: u32,
    /// How long the server holds a read that finds no new records (a long poll). Default: 5 s.
    pub max_wait: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 4 << 20,
            max_wait: Duration::from_secs(5),
        }
    }
}

impl ReaderConfig {
    /// Sets [`max_records`](Self::max_records). Default: 1000.
    #[must_use]
    pub fn max_records(mut self, records: u32) -> Self {
        self.max_records = records;
        self
    }

    /// Sets [`max_bytes`](Self::max_bytes). Default: 4 MiB.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u32) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`max_wait`](Self::max_wait). Default: 5 s.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }
}

/// Reads one partition record by record, following its tail.
///
/// The first read resolves the starting point (`Earliest`, `Latest` or a timestamp) on the
/// server; every later read continues at the offset the previous response gave as
/// `next_offset`. Records arrive in batches and are handed out one at a time.
#[derive(Debug)]
pub struct PartitionReader {
    client: Client,
    stream: String,
    partition: u32,
    /// Where the next read starts: the caller's choice until the first response, an offset
    /// from then on.
    from: ReadFrom,
    config: ReaderConfig,
    buffered: VecDeque<WireRecord>,
}

impl PartitionReader {
    /// A reader of `partition` of `stream` starting at `from`. Nothing is sent until the first
    /// [`next`](Self::next).
    pub fn new(
        client: Client,
        stream: impl Into<String>,
        partition: u32,
        from: ReadFrom,
        config: ReaderConfig,
    ) -> Self {
        Self {
            client,
            stream: stream.into(),
            partition,
            from,
            config,
            buffered: VecDeque::new(),
        }
    }

    /// The next record, waiting as long as it takes for one to be written.
    ///
    /// Cancel safe: the position only moves when a response has been received in full, so a
    /// dropped call (say, raced against a timer in `select!`) loses nothing; the next call
    /// reads the same records again.
    pub async fn next(&mut self) -> Result<WireRecord, ClientError> {
        loop {
            if let Some(record) = self.buffered.pop_front() {
                return Ok(record);
            }
            self.fill().await?;
        }
    }

    /// Where the next record comes from: the offset of the next buffered record, or where the
    /// next read starts (the starting point as given, until the first read resolves it).
    pub fn position(&self) -> ReadFrom {
        match self.buffered.front() {
            Some(record) => ReadFrom::Offset(record.offset),
            None => self.from,
        }
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    async fn fill(&mut self) -> Result<(), ClientError> {
        let response = self
            .client
            .read(ReadRequest {
                stream: self.stream.clone(),
                partition: self.partition,
                from: self.from,
                max_records: self.config.max_records,
                max_bytes: self.config.max_bytes,
                max_wait_ms: u32::try_from(self.config.max_wait.as_millis()).unwrap_or(u32::MAX),
            })
            .await?;
        check_offsets(self.from, &response)?;
        self.from = ReadFrom::Offset(response.next_offset);
        self.buffered.extend(response.records);
        Ok(())
    }
}

/// Checks that a response moves forward: records in increasing offsets, none before where the
/// read asked to start, and `next_offset` past the last. A reader that went backwards would
/// hand out records twice.
fn check_offsets(from: ReadFrom, response: &ReadResponse) -> Result<(), ClientError> {
    let mut floor = match from {
        ReadFrom::Offset(offset) => offset,
        _ => 0,
    };
    if response.next_offset < floor {
        return Err(WireError::Invalid("read response next offset").into());
    }
    for record in &response.records {
        if record.offset < floor {
            return Err(WireError::Invalid("read response record offset").into());
        }
        floor = record.offset.saturating_add(1);
    }
    if response.next_offset < floor {
        return Err(WireError::Invalid("read response next offset").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn response(next_offset: u64, offsets: &[u64]) -> ReadResponse {
        ReadResponse {
            start_offset: 0,
            end_offset: next_offset,
            next_offset,
            records: offsets
                .iter()
                .map(|&offset| WireRecord {
                    offset,
                    timestamp_ms: 0,
                    key: Bytes::from_static(b"k"),
                    value: Bytes::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn offsets_must_move_forward() {
        assert!(check_offsets(ReadFrom::Offset(3), &response(5, &[3, 4])).is_ok());
        assert!(check_offsets(ReadFrom::Latest, &response(9, &[])).is_ok());
        assert!(check_offsets(ReadFrom::Offset(3), &response(3, &[])).is_ok());
        assert!(check_offsets(ReadFrom::Offset(3), &response(2, &[])).is_err());
        assert!(check_offsets(ReadFrom::Offset(3), &response(5, &[2, 3])).is_err());
        assert!(check_offsets(ReadFrom::Offset(3), &response(5, &[4, 4])).is_err());
        assert!(check_offsets(ReadFrom::Offset(3), &response(4, &[3, 4])).is_err());
    }
}

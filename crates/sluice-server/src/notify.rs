//! Wake-ups for long polls: one watch channel per partition, bumped after every acknowledged put
//! to it. A reader subscribes before it reads, so a put landing between its read and its wait
//! still wakes it: no busy polling, no fixed sleeps.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Debug, Default)]
pub(crate) struct Notifier {
    partitions: Mutex<HashMap<(String, u32), watch::Sender<u64>>>,
}

impl Notifier {
    /// A receiver that changes when `stream`'s `partition` gets new acknowledged records.
    pub fn subscribe(&self, stream: &str, partition: u32) -> watch::Receiver<u64> {
        let mut m = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((stream.to_owned(), partition))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the readers waiting on a partition.
    pub fn notify(&self, stream: &str, partition: u32) {
        let m = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = m.get(&(stream.to_owned(), partition)) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Forgets partitions nobody waits on, so the map does not grow with every partition ever
    /// read.
    pub fn prune(&self) {
        let mut m = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, tx| tx.receiver_count() > 0);
    }
}

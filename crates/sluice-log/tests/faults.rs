//! I/O faults while running: a failed fsync poisons the log (never retried, every later write
//! refused with a typed error until reopened); a failed or short write is taken back so the log
//! stays consistent and, once space is available again, writing simply works; a block
//! reservation the file system refuses changes nothing.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::*;
use sluice_log::io::sim::SimFs;
use sluice_log::{Error, FsyncPolicy, LogOptions, ReadLimits, Record};

#[test]
fn a_failed_fsync_poisons_the_log_until_reopened() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default());
    log.append(&[record(0, 10)]).unwrap();
    fs.fail_sync_after(0, ErrorKind::Other);
    let syncs_before = fs.sync_data_calls();
    match log.append(&[record(1, 10)]) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("00000000000000000000.log")),
        other => panic!("expected the fsync error, got {other:?}"),
    }
    // Every later write, sync and close is refused without touching the disk again.
    for _ in 0..3 {
        assert!(matches!(
            log.append(&[record(2, 10)]),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(log.sync(), Err(Error::Poisoned { .. })));
    }
    assert_eq!(
        fs.sync_data_calls(),
        syncs_before + 1,
        "a failed fsync is never retried"
    );
    // Reads of acknowledged data still work; the unacknowledged record is not served under
    // `Always`, since it was never made durable.
    assert_eq!(log.read_from(0, ReadLimits::default()).unwrap().len(), 1);
    assert_eq!(log.readable_end(), 1);
    let err = log.append(&[record(3, 10)]).unwrap_err().to_string();
    assert!(err.contains("reopen"), "{err}");
    assert!(matches!(log.close(), Err(Error::Poisoned { .. })));

    // After the disk is healthy again, a reopen recovers and writing works.
    fs.fail_sync_after(u64::MAX, ErrorKind::Other);
    let log = open_sim(&fs, LogOptions::default());
    let end = log.end_offset();
    assert!(
        end == 1 || end == 2,
        "the unacknowledged record may or may not be there"
    );
    assert_eq!(log.append(&[record(9, 10)]).unwrap(), end);
}

#[test]
fn a_failed_fsync_wakes_every_waiting_appender_with_an_error() {
    let fs = SimFs::new();
    let log = std::sync::Arc::new(open_sim(&fs, LogOptions::default()));
    fs.fail_sync_after(0, ErrorKind::Other);
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let log = log.clone();
            std::thread::spawn(move || log.append(&[record(i, 10)]))
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().is_err());
    }
}

#[test]
fn a_full_disk_fails_the_append_and_writing_resumes_when_space_returns() {
    for short in [false, true] {
        let fs = SimFs::new();
        let log = open_sim(&fs, LogOptions::default());
        log.append(&[record(0, 100)]).unwrap();
        fs.fail_writes(ErrorKind::StorageFull, short);
        match log.append(&[record(1, 100)]) {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), ErrorKind::StorageFull),
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        assert_eq!(log.end_offset(), 1, "a failed append assigns no offsets");
        fs.clear_write_error();
        // No restart needed: the half-written batch was taken back.
        assert_eq!(log.append(&[record(2, 100)]).unwrap(), 1);
        let all = read_all(&log);
        assert_eq!(all.len(), 2);
        assert_same(&all[1], 1, &record(2, 100));
        drop(log);
        let log = open_sim(&fs, LogOptions::default());
        assert_eq!(read_all(&log), all);
    }
}

#[test]
fn interval_policy_flushes_in_the_background_and_acks_before_the_flush() {
    // With an interval far longer than the test, no flush can run: the append was acknowledged
    // without one, and readers see the record at once.
    let fs = SimFs::new();
    let log = open_sim(
        &fs,
        LogOptions::default().fsync(FsyncPolicy::Interval(Duration::from_secs(3600))),
    );
    let before = fs.sync_data_calls();
    log.append(&[Record::new("k", "v")]).unwrap();
    assert_eq!(fs.sync_data_calls(), before);
    assert_eq!(log.read_from(0, ReadLimits::default()).unwrap().len(), 1);
    // A power loss now may lose it: it was never synced.
    let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
    assert_eq!(open_sim(&img, LogOptions::default()).end_offset(), 0);
    drop(log);

    // With a short interval, the background flush makes it durable without anyone asking.
    let fs = SimFs::new();
    let log = open_sim(
        &fs,
        LogOptions::default().fsync(FsyncPolicy::Interval(Duration::from_millis(20))),
    );
    let before = fs.sync_data_calls();
    log.append(&[Record::new("k", "v")]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.sync_data_calls() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no background flush within 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let img = fs.crash_image(sluice_log::io::sim::CrashMode::DropUnsynced, 0);
    let log2 = open_sim(&img, LogOptions::default());
    assert_eq!(log2.end_offset(), 1);
    log.close().unwrap();
}

#[test]
fn never_policy_does_not_sync_on_append() {
    let fs = SimFs::new();
    let log = open_sim(&fs, LogOptions::default().fsync(FsyncPolicy::Never));
    let before = fs.sync_data_calls();
    for i in 0..50 {
        log.append(&[record(i, 10)]).unwrap();
    }
    assert_eq!(fs.sync_data_calls(), before);
    log.sync().unwrap();
    assert_eq!(fs.sync_data_calls(), before + 1);
}

/// A segment roll that waited for a group-commit fsync which then failed must not fsync the
/// same descriptor and call the lost records durable: the log is poisoned, nothing of the
/// failed fsync is acknowledged or readable, and the rolling write fails too.
#[test]
fn a_roll_waiting_on_a_failed_fsync_acknowledges_nothing() {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (entered_tx, release_rx) = (
        std::sync::Mutex::new(entered_tx),
        std::sync::Mutex::new(release_rx),
    );
    let trigger = std::sync::Arc::clone(&armed);
    // Once armed, the next fsync waits for the test to let it go and then fails; every later
    // one succeeds, as the kernel reports a writeback error once per open file description.
    let fs = std::sync::Arc::new(SyncHookFs::new(move |_, sync| {
        if trigger.swap(false, std::sync::atomic::Ordering::SeqCst) {
            entered_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            return Err(std::io::Error::other("EIO on writeback"));
        }
        sync()
    }));
    let log = std::sync::Arc::new(
        sluice_log::Log::open_with_fs(
            fs.clone(),
            dir(),
            LogOptions::default()
                .fsync(FsyncPolicy::Always)
                .segment_bytes_max(4096),
        )
        .unwrap(),
    );
    let a = log.write(&[Record::new("a", vec![0u8; 3000])]).unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let acking = {
        let log = log.clone();
        std::thread::spawn(move || log.acknowledge(a))
    };
    entered.recv().unwrap();
    // The next write does not fit the segment: it rolls, and the roll waits for the fsync.
    let rolling = {
        let log = log.clone();
        std::thread::spawn(move || log.write(&[Record::new("b", vec![0u8; 3000])]))
    };
    std::thread::sleep(Duration::from_millis(200));
    release.send(()).unwrap();
    assert!(acking.join().unwrap().is_err(), "the failed fsync's waiter");
    assert!(
        matches!(rolling.join().unwrap(), Err(Error::Poisoned { .. })),
        "the roll must not fsync again after the failure"
    );
    assert!(!log.is_acknowledged(a));
    assert!(log.acknowledge(a).is_err());
    assert_eq!(
        log.read_from(0, ReadLimits::default()).unwrap().len(),
        0,
        "nothing unacknowledged is readable under `always`"
    );
}

#[test]
fn appends_go_on_when_blocks_cannot_be_reserved_ahead() {
    // A file system without `fallocate`, or a disk too full for a whole step: the reservation
    // is only a hint, so every append still lands and reads back, and reserving resumes.
    for kind in [ErrorKind::Unsupported, ErrorKind::StorageFull] {
        let fs = SimFs::new();
        let log = open_sim(&fs, LogOptions::default().preallocate_bytes(1024));
        let seg = dir().join("00000000000000000000.log");
        fs.fail_preallocate(Some(kind));
        let written: Vec<Record> = (0..10).map(|i| record(i, 300)).collect();
        for (i, r) in written.iter().enumerate() {
            assert_eq!(log.append(std::slice::from_ref(r)).unwrap(), i as u64);
        }
        assert_eq!(fs.reserved_past_end(&seg), Some(0), "{kind:?}");
        // The next step is tried once the appends reach it: within 1024 bytes, three records.
        fs.fail_preallocate(None);
        for i in 10..13 {
            log.append(&[record(i, 300)]).unwrap();
        }
        assert!(fs.reserved_past_end(&seg).unwrap() > 0, "{kind:?}");
        let all = read_all(&log);
        assert_eq!(all.len(), 13);
        for (i, r) in written.iter().enumerate() {
            assert_same(&all[i], i as u64, r);
        }
    }
}
